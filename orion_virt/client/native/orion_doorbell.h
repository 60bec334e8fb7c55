/* Guest side of the ivshmem-doorbell device: ring oriond, and sleep until oriond rings us.
 *
 * The device (PCI 1af4:1110 with a BAR1, i.e. the doorbell model; ivshmem-plain has none) has
 * BAR0 registers: IVPosition at offset 8 (our own peer id, given by oriond's ivshmem server) and
 * Doorbell at offset 12 (write (peer << 16) | vector to interrupt that peer). Ringing needs only
 * BAR0, mapped from sysfs. Being rung arrives as an MSI-X interrupt: QEMU's ivshmem-doorbell has
 * no INTx path (no msi=off), so uio_pci_generic cannot deliver it; this module takes it through
 * vfio-pci, the MSI-X vector routed to an eventfd. vfio-pci needs an IOMMU group: the Debian 12
 * guest kernel has no VFIO_NOIOMMU, so the VM needs a vIOMMU (libvirt <iommu model='intel'/>,
 * q35, guest kernel intel_iommu=on) and the vfio, vfio_iommu_type1 and vfio-pci modules. Where
 * any of that is missing, open() still succeeds for ringing and reports ORION_DB_NOIRQ, and
 * orion_doorbell_wait() answers ORION_DB_NOIRQ at once: the caller keeps polling its ring.
 *
 * One device per process (the functions keep their state in this module); not thread-safe
 * against concurrent open/close, but ring() and wait() may run in different threads.
 * C11, Linux only, no dependencies beyond the kernel UAPI headers.
 */
#ifndef ORION_DOORBELL_H
#define ORION_DOORBELL_H

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes (>= 0: success). */
enum {
    ORION_DB_OK = 0,
    ORION_DB_TIMEOUT = 1,     /* wait(): nobody rang within the timeout */
    ORION_DB_NOIRQ = 2,       /* open() succeeded for ringing only; wait() cannot sleep: poll */
    ORION_DB_ENODEV = -1,     /* not an ivshmem device, or cannot map its registers */
    ORION_DB_PLAIN = -2,      /* an ivshmem-plain device: no doorbell at all */
    ORION_DB_EINVAL = -3,     /* bad argument */
    ORION_DB_NOTOPEN = -4,    /* open() first */
    ORION_DB_ESYS = -5,       /* a system call failed; errno says which way */
};

/* open() flags */
#define ORION_DB_BIND_VFIO 1u  /* bind the device to vfio-pci first (driver_override) if needed */
#define ORION_DB_NO_IRQ    2u  /* do not try interrupts at all (ring only) */

/* Open the device at pci_dir (/sys/bus/pci/devices/0000:00:03.0). Returns ORION_DB_OK (ring
 * and wait work), ORION_DB_NOIRQ (ring works, wait does not; orion_doorbell_reason() says why),
 * or a negative status. Opening again closes the previous device first. */
int orion_doorbell_open(const char *pci_dir, unsigned flags);
/* Our own peer id (IVPosition), or a negative status. */
int orion_doorbell_self(void);
/* Interrupt peer `peer` (oriond is 0) on `vector`; ORION_DB_OK or a negative status. The write
 * is dropped by QEMU if no such peer/vector is connected (the device cannot tell). */
int orion_doorbell_ring(unsigned peer, unsigned vector);
/* Sleep until a peer rings us or timeout_s passes (< 0: forever, 0: just look). Returns
 * ORION_DB_OK (rung; every ring since the last call is consumed), ORION_DB_TIMEOUT,
 * ORION_DB_NOIRQ (no interrupt path: poll instead) or a negative status. */
int orion_doorbell_wait(double timeout_s);
/* The eventfd that becomes readable on a ring (for the caller's own poll), or -1. */
int orion_doorbell_fd(void);
/* Why the last open() gave ORION_DB_NOIRQ or failed (static text, never NULL). */
const char *orion_doorbell_reason(void);
void orion_doorbell_close(void);

#ifdef __cplusplus
}
#endif
#endif
