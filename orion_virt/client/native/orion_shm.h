/* The shared-memory transport of the native client (orion_shm.c): one claimed channel of an Orion
 * device, its request ring written and its response ring read as a byte stream. */
#ifndef ORION_SHM_H
#define ORION_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

typedef struct orion_shm orion_shm;

/* Claim a channel of an ivshmem PCI device (in a VM), else of ORION_SHM_DEVICE, else of the
 * first device under ORION_SHM_PATH_BASE (default /dev/shm) that oriond serves, waiting at most
 * timeout seconds for oriond to take it up. 0: claimed (name says which); -1: every device
 * failed, why lists each reason; -2: there is no device at all; -5: as -1, and a VM device was
 * there but no oriond serves it (the seeds' "Fail to finish system initialization."). */
int orion_shm_open(double timeout, orion_shm **out, char *name, size_t nl, char *why, size_t wl);
/* 0, or -4 when the session cannot progress (why says why). Never returns before every byte is in
 * the ring or the peer is known to be gone. */
int orion_shm_send(orion_shm *s, const struct iovec *iov, int n, char *why, size_t wl);
/* 0, -3 past deadline (0: none), or -4 as above. */
int orion_shm_recv(orion_shm *s, void *buf, size_t n, double deadline, char *why, size_t wl);
/* Release the claim (state closed, lock dropped) and unmap. */
void orion_shm_close(orion_shm *s);
/* 1 when the channel is an ivshmem device of a VM (its memory is not this kernel's). */
int orion_shm_is_vm(const orion_shm *s);
/* In a forked child: unmap without touching the parent's claim. */
void orion_shm_forget(orion_shm *s);

#endif
