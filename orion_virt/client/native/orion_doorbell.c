/* Guest side of the ivshmem-doorbell device; see orion_doorbell.h. */
#define _GNU_SOURCE
#include "orion_doorbell.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/vfio.h>

#define IVSHMEM_VENDOR 0x1af4u
#define IVSHMEM_DEVICE 0x1110u
#define REG_IVPOSITION 2 /* u32 index: byte offset 8 */
#define REG_DOORBELL 3   /* byte offset 12 */
#define BAR0_MAP 4096

static struct {
    int open;
    volatile uint32_t *regs; /* BAR0 through sysfs resource0, or NULL */
    int dev_fd;              /* vfio device, or -1 */
    int group_fd, container_fd;
    uint64_t bar0_off;       /* vfio region offset of BAR0 (when regs is NULL) */
    int efd;                 /* MSI-X vector 0 -> eventfd, or -1 */
    const char *reason;
} db = {0, NULL, -1, -1, -1, 0, -1, "not opened"};

/* out = dir/name; -1 (ENAMETOOLONG) when it does not fit */
static int join(char *out, size_t len, const char *dir, const char *name) {
    int n = snprintf(out, len, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= len) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

static int read_hex(const char *dir, const char *name, unsigned long *out) {
    char p[PATH_MAX], buf[64];
    if (join(p, sizeof p, dir, name) < 0) return -1;
    FILE *f = fopen(p, "re");
    if (!f) return -1;
    int ok = fgets(buf, sizeof buf, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    *out = strtoul(buf, NULL, 0);
    return 0;
}

static int write_str(const char *path, const char *s) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, s, strlen(s));
    int e = errno;
    close(fd);
    errno = e;
    return n == (ssize_t)strlen(s) ? 0 : -1;
}

/* BAR1 (the MSI-X table) exists only on the doorbell model. */
static int has_bar1(const char *dir) {
    char p[PATH_MAX], line[128];
    if (join(p, sizeof p, dir, "resource") < 0) return -1;
    FILE *f = fopen(p, "re");
    if (!f) return -1;
    unsigned long long start = 0, end = 0;
    int i = 0, found = 0;
    while (fgets(line, sizeof line, f)) {
        if (i++ == 1) {
            found = sscanf(line, "%llx %llx", &start, &end) == 2;
            break;
        }
    }
    fclose(f);
    return found && end > start;
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static int link_base(const char *dir, const char *name, char *out, size_t len) {
    char p[PATH_MAX], t[PATH_MAX];
    if (join(p, sizeof p, dir, name) < 0) return -1;
    ssize_t n = readlink(p, t, sizeof t - 1);
    if (n < 0) return -1;
    t[n] = 0;
    const char *b = base_name(t);
    if (strlen(b) >= len) return -1;
    memcpy(out, b, strlen(b) + 1);
    return 0;
}

static int bind_vfio(const char *dir, const char *bdf) {
    char p[PATH_MAX], drv[64];
    if (link_base(dir, "driver", drv, sizeof drv) == 0) {
        if (strcmp(drv, "vfio-pci") == 0) return 0;
        if (join(p, sizeof p, dir, "driver/unbind") < 0 || write_str(p, bdf) < 0) return -1;
    }
    if (join(p, sizeof p, dir, "driver_override") < 0 || write_str(p, "vfio-pci") < 0) return -1;
    if (write_str("/sys/bus/pci/drivers_probe", bdf) < 0) return -1;
    return link_base(dir, "driver", drv, sizeof drv) == 0 && strcmp(drv, "vfio-pci") == 0 ? 0 : -1;
}

static void close_vfio(void) {
    if (db.efd >= 0) close(db.efd);
    if (db.dev_fd >= 0) close(db.dev_fd);
    if (db.group_fd >= 0) close(db.group_fd);
    if (db.container_fd >= 0) close(db.container_fd);
    db.efd = db.dev_fd = db.group_fd = db.container_fd = -1;
}

/* MSI-X vector 0 -> eventfd through vfio-pci. 0 on success, else db.reason says why. */
static int setup_vfio(const char *dir, const char *bdf, unsigned flags) {
    char drv[64] = "", grp[64], p[PATH_MAX];
    if (link_base(dir, "driver", drv, sizeof drv) < 0 || strcmp(drv, "vfio-pci") != 0) {
        if (!(flags & ORION_DB_BIND_VFIO)) {
            db.reason = "device not bound to vfio-pci (pass ORION_DB_BIND_VFIO, or bind it)";
            return -1;
        }
        if (bind_vfio(dir, bdf) < 0) {
            db.reason = "cannot bind the device to vfio-pci (vfio-pci module not loaded?)";
            return -1;
        }
    }
    if (link_base(dir, "iommu_group", grp, sizeof grp) < 0) {
        db.reason = "device has no IOMMU group: the VM needs a vIOMMU (intel-iommu, intel_iommu=on)";
        return -1;
    }
    if (join(p, sizeof p, "/dev/vfio", grp) == 0) db.group_fd = open(p, O_RDWR | O_CLOEXEC);
    if (db.group_fd < 0 && snprintf(p, sizeof p, "/dev/vfio/noiommu-%s", grp) < (int)sizeof p)
        db.group_fd = open(p, O_RDWR | O_CLOEXEC);
    if (db.group_fd < 0) {
        db.reason = "cannot open /dev/vfio/<group>";
        return -1;
    }
    db.container_fd = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    if (db.container_fd < 0 || ioctl(db.container_fd, VFIO_GET_API_VERSION) != VFIO_API_VERSION) {
        db.reason = "cannot open /dev/vfio/vfio (or its API version differs)";
        return -1;
    }
    struct vfio_group_status st = {.argsz = sizeof st};
    if (ioctl(db.group_fd, VFIO_GROUP_GET_STATUS, &st) < 0 || !(st.flags & VFIO_GROUP_FLAGS_VIABLE)) {
        db.reason = "IOMMU group not viable (another device in it is not bound to vfio-pci)";
        return -1;
    }
    if (ioctl(db.group_fd, VFIO_GROUP_SET_CONTAINER, &db.container_fd) < 0) {
        db.reason = "VFIO_GROUP_SET_CONTAINER failed";
        return -1;
    }
    static const int types[] = {VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU, VFIO_NOIOMMU_IOMMU};
    int set = 0, eperm = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0] && !set; i++) {
        if (ioctl(db.container_fd, VFIO_CHECK_EXTENSION, types[i]) <= 0) continue;
        if (ioctl(db.container_fd, VFIO_SET_IOMMU, types[i]) == 0) set = 1;
        else if (errno == EPERM) eperm = 1;
    }
    if (!set) {
        db.reason = eperm ? "VFIO_SET_IOMMU: no interrupt remapping (enable intremap on the vIOMMU, "
                            "or vfio_iommu_type1 allow_unsafe_interrupts=1)"
                          : "VFIO_SET_IOMMU failed (vfio_iommu_type1 not loaded?)";
        return -1;
    }
    db.dev_fd = ioctl(db.group_fd, VFIO_GROUP_GET_DEVICE_FD, bdf);
    if (db.dev_fd < 0) {
        db.reason = "VFIO_GROUP_GET_DEVICE_FD failed";
        return -1;
    }
    struct vfio_irq_info ii = {.argsz = sizeof ii, .index = VFIO_PCI_MSIX_IRQ_INDEX};
    if (ioctl(db.dev_fd, VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0 || ii.count < 1) {
        db.reason = "device has no MSI-X vector (an ivshmem-plain device?)";
        return -1;
    }
    struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX};
    if (ioctl(db.dev_fd, VFIO_DEVICE_GET_REGION_INFO, &ri) == 0) db.bar0_off = ri.offset;
    /* An MSI is a memory write by the device: without Bus Master in the command register
     * QEMU drops it (no guest driver sets it for us here). */
    struct vfio_region_info ci = {.argsz = sizeof ci, .index = VFIO_PCI_CONFIG_REGION_INDEX};
    uint16_t cmd = 0;
    if (ioctl(db.dev_fd, VFIO_DEVICE_GET_REGION_INFO, &ci) < 0 ||
        pread(db.dev_fd, &cmd, 2, (off_t)(ci.offset + 4)) != 2) {
        db.reason = "cannot read the PCI command register through vfio";
        return -1;
    }
    cmd |= 0x4 | 0x2; /* bus master, memory space */
    if (pwrite(db.dev_fd, &cmd, 2, (off_t)(ci.offset + 4)) != 2) {
        db.reason = "cannot enable bus mastering through vfio";
        return -1;
    }
    db.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (db.efd < 0) {
        db.reason = "eventfd failed";
        return -1;
    }
    union {
        struct vfio_irq_set s;
        char b[sizeof(struct vfio_irq_set) + sizeof(int32_t)];
    } u;
    memset(&u, 0, sizeof u);
    u.s.argsz = sizeof u.b;
    u.s.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    u.s.index = VFIO_PCI_MSIX_IRQ_INDEX;
    u.s.start = 0;
    u.s.count = 1;
    int32_t fd32 = db.efd;
    memcpy(u.s.data, &fd32, sizeof fd32);
    if (ioctl(db.dev_fd, VFIO_DEVICE_SET_IRQS, &u.s) < 0) {
        db.reason = "VFIO_DEVICE_SET_IRQS (MSI-X) failed";
        return -1;
    }
    return 0;
}

int orion_doorbell_open(const char *pci_dir, unsigned flags) {
    orion_doorbell_close();
    if (!pci_dir || !*pci_dir) return ORION_DB_EINVAL;
    char dir[PATH_MAX];
    if (!realpath(pci_dir, dir)) {
        db.reason = "no such PCI device directory";
        return ORION_DB_ENODEV;
    }
    unsigned long v = 0, d = 0;
    if (read_hex(dir, "vendor", &v) < 0 || read_hex(dir, "device", &d) < 0 || v != IVSHMEM_VENDOR ||
        d != IVSHMEM_DEVICE) {
        db.reason = "not an ivshmem device (PCI 1af4:1110)";
        return ORION_DB_ENODEV;
    }
    int b1 = has_bar1(dir);
    if (b1 == 0) {
        db.reason = "an ivshmem-plain device: it has no doorbell";
        return ORION_DB_PLAIN;
    }
    const char *bdf = base_name(dir);
    char p[PATH_MAX];
    int irq = 0;
    if (flags & ORION_DB_NO_IRQ) {
        db.reason = "interrupts not requested (ORION_DB_NO_IRQ)";
    } else if (setup_vfio(dir, bdf, flags) == 0) {
        irq = 1;
    } else {
        const char *why = db.reason;
        close_vfio();
        db.reason = why;
    }
    if (join(p, sizeof p, dir, "enable") == 0)
        (void)write_str(p, "1"); /* memory decoding on; already on (vfio) or not permitted: try anyway */
    int fd = join(p, sizeof p, dir, "resource0") == 0 ? open(p, O_RDWR | O_SYNC | O_CLOEXEC) : -1;
    if (fd >= 0) {
        void *m = mmap(NULL, BAR0_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (m != MAP_FAILED) db.regs = (volatile uint32_t *)m;
    }
    if (!db.regs && db.dev_fd < 0) {
        const char *why = db.reason;
        close_vfio();
        db.reason = irq ? why : "cannot map BAR0 (resource0): not root?";
        return ORION_DB_ENODEV;
    }
    db.open = 1;
    if (irq) {
        db.reason = "ok";
        return ORION_DB_OK;
    }
    return ORION_DB_NOIRQ;
}

static int reg_read(unsigned idx, uint32_t *out) {
    if (db.regs) {
        *out = db.regs[idx];
        return 0;
    }
    return pread(db.dev_fd, out, 4, (off_t)(db.bar0_off + 4u * idx)) == 4 ? 0 : -1;
}

static int reg_write(unsigned idx, uint32_t val) {
    if (db.regs) {
        db.regs[idx] = val;
        return 0;
    }
    return pwrite(db.dev_fd, &val, 4, (off_t)(db.bar0_off + 4u * idx)) == 4 ? 0 : -1;
}

int orion_doorbell_self(void) {
    if (!db.open) return ORION_DB_NOTOPEN;
    uint32_t v;
    if (reg_read(REG_IVPOSITION, &v) < 0) return ORION_DB_ESYS;
    return v <= 0xffffu ? (int)v : ORION_DB_ENODEV; /* all ones: device disabled or gone */
}

int orion_doorbell_ring(unsigned peer, unsigned vector) {
    if (!db.open) return ORION_DB_NOTOPEN;
    if (peer > 0xffffu || vector > 0xffffu) return ORION_DB_EINVAL;
    return reg_write(REG_DOORBELL, (uint32_t)(peer << 16 | vector)) == 0 ? ORION_DB_OK : ORION_DB_ESYS;
}

int orion_doorbell_fd(void) { return db.open ? db.efd : -1; }

int orion_doorbell_wait(double timeout_s) {
    if (!db.open) return ORION_DB_NOTOPEN;
    if (db.efd < 0) return ORION_DB_NOIRQ;
    struct timespec now, end = {0, 0};
    int forever = timeout_s < 0;
    if (!forever) {
        clock_gettime(CLOCK_MONOTONIC, &end);
        double whole = (double)(long long)timeout_s;
        end.tv_sec += (time_t)whole;
        end.tv_nsec += (long)((timeout_s - whole) * 1e9);
        if (end.tv_nsec >= 1000000000L) {
            end.tv_sec++;
            end.tv_nsec -= 1000000000L;
        }
    }
    for (;;) {
        uint64_t n;
        if (read(db.efd, &n, sizeof n) == (ssize_t)sizeof n) return ORION_DB_OK;
        if (errno != EAGAIN && errno != EINTR) return ORION_DB_ESYS;
        struct timespec left, *tp = NULL;
        if (!forever) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            left.tv_sec = end.tv_sec - now.tv_sec;
            left.tv_nsec = end.tv_nsec - now.tv_nsec;
            if (left.tv_nsec < 0) {
                left.tv_sec--;
                left.tv_nsec += 1000000000L;
            }
            if (left.tv_sec < 0) return ORION_DB_TIMEOUT;
            tp = &left;
        }
        struct pollfd pfd = {.fd = db.efd, .events = POLLIN};
        int r = ppoll(&pfd, 1, tp, NULL);
        if (r < 0 && errno != EINTR) return ORION_DB_ESYS;
        if (r == 0) {
            if (read(db.efd, &n, sizeof n) == (ssize_t)sizeof n) return ORION_DB_OK;
            return ORION_DB_TIMEOUT;
        }
    }
}

const char *orion_doorbell_reason(void) { return db.reason ? db.reason : ""; }

void orion_doorbell_close(void) {
    if (db.regs) munmap((void *)db.regs, BAR0_MAP);
    db.regs = NULL;
    close_vfio();
    db.open = 0;
    db.bar0_off = 0;
    db.reason = "not opened";
}
