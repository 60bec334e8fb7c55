/* The shared-memory transport of the native client: a channel of an Orion device file
 * (<ORION_SHM_PATH_BASE>/orionsock<N>, or ORION_SHM_DEVICE) as ivshmem/LAYOUT.md describes it and
 * orion_virt/transport/shmdev.py and ring.py implement it: header checks, the claim (an fcntl
 * lock on the channel's first byte, owner fields, generation, state), and the two SPSC rings
 * with their 64-bit head/tail counters. A wait for a reply spins for a short window, then sleeps
 * on a futex on the response head that oriond wakes (ivshmem/LAYOUT.md, "Waking"); on a VM's BAR,
 * where no futex crosses the VM boundary, it sleeps on the ivshmem-doorbell's MSI-X interrupt
 * (orion_doorbell.c) when the domain has that model, the guest can take the interrupt (vfio-pci
 * and a vIOMMU) and oriond's worker rings; else it yields, then sleeps growing to 5 ms. Every wait
 * checks the peer as it goes (channel dead or taken over, server heartbeat stale for 5 s): never
 * a hang.
 */
#define _GNU_SOURCE
#include "orion_shm.h"
#include "orion_conf.h"

#include "orion_copy.h"
#include "orion_doorbell.h"
#include "orion_log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <linux/futex.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define LAYOUT_VERSION 1u
#define H_SIZE 2
#define H_NCH_FLAGS 3
#define H_STRIDE 4
#define H_RING 5
#define H_SERVER_EPOCH 7
#define H_SERVER_BEAT 8
#define H_CLAIM_BELL 10
#define HOSTPATH_OFF 1280  /* the path the device was created at on the host, NUL-padded */
#define HOSTPATH_LEN 256
#define C_STATE 0
#define C_GEN 1
#define C_SERVED_GEN 2
#define C_CLIENT_BEAT 3
#define C_OWNER_PID 4
#define C_OWNER_NONCE 5
#define C_OWNER_NS 6
#define C_REQ_HEAD 16
#define C_REQ_TAIL 24
#define C_RESP_HEAD 32
#define C_RESP_TAIL 40
#define C_REASON 48
#define C_REQ_WAIT 56
#define C_RESP_WAIT 64
#define C_DB_PEER 72      /* our ivshmem peer id + 1: we ring oriond when C_REQ_WAIT is set */
#define C_DB_SERVER 73    /* the worker sleeps on / rings the doorbell */
#define FLAG_VM 1u
#define FLAG_DOORBELL 2u
#define CLAIM_VECTOR 0u   /* transport/doorbell.py: CLAIM_VECTOR, channel_vector() */
#define CHECK_S 0.5
/* Bulk data crosses a ring in steps of at most this many bytes, each published at once: the
 * peer copies one step while we copy the next (a whole ring's worth in one memcpy would make it
 * wait for all of it), and a step is large enough to be split between copy threads (orion_copy). */
#define STEP ((size_t)4 << 20)
enum { FREE, CLAIMED, SERVING, CLOSED, DEAD };
#define SERVER_STALE_S 5.0
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

struct orion_shm {
    int fd;
    int lock_fd;                     /* the claim locks: the device file, or (ivshmem) a guest-local file */
    int vm;                          /* an ivshmem PCI device's BAR2 */
    int wakes;                       /* futex wake-ups with oriond (a file mapping on one kernel) */
    int woke_server;                 /* the last request had to wake oriond: its reply comes late */
    int db;                          /* doorbell device open: we ring oriond (BAR0) when its worker sleeps */
    int db_irq;                      /* ... and can be rung (MSI-X through vfio-pci) */
    int db_sleep;                    /* the worker rings us: sleep on the doorbell for replies */
    int db_self;                     /* our ivshmem peer id */
    unsigned db_vector;              /* the vector of our channel's worker */
    const char *db_note;             /* what the doorbell does for this channel (for the link name) */
    unsigned char *base;
    size_t size;
    uint64_t nch, ring, stride;
    unsigned index;
    uint64_t gen;
    volatile uint64_t *hdr, *ctrl;
    unsigned char *req, *resp;       /* request ring (we produce), response ring (we consume) */
    uint64_t tx_head, tx_limit, rx_tail;
    uint64_t server_beat;
    double server_beat_at;
    pthread_t beat_thread;
    volatile int beat_stop;
    int beat_started;
    char path[512];
};

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t load(volatile uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store(volatile uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static void append(char *why, size_t wl, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char *why, size_t wl, const char *fmt, ...)
{
    size_t used = strlen(why);
    if (used + 3 >= wl) return;
    if (used) {
        memcpy(why + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why + used, wl - used, fmt, ap);
    va_end(ap);
}

static int lock_byte(int fd, off_t off, int type)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = (short)type;
    fl.l_whence = SEEK_SET;
    fl.l_start = off;
    fl.l_len = 1;
    return fcntl(fd, F_SETLK, &fl);
}

static uint64_t own_ns(void)
{
    struct stat st;
    return stat("/proc/self/ns/mnt", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

static uint64_t random_u63(void)
{
    uint64_t x = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, &x, sizeof x) != (ssize_t)sizeof x) x = (uint64_t)mono() * 1000003u ^ (uint64_t)getpid();
    if (fd >= 0) close(fd);
    return x >> 1;
}

static void unmap(orion_shm *s)
{
    if (s->db) orion_doorbell_close();
    if (s->base) munmap(s->base, s->size);
    if (s->lock_fd >= 0 && s->lock_fd != s->fd) close(s->lock_fd);
    if (s->fd >= 0) close(s->fd);
    free(s);
}

/* The channel's reason text (state dead). */
static void reason_of(orion_shm *s, char *out, size_t cap)
{
    const char *r = (const char *)(s->ctrl + C_REASON);
    size_t n = strnlen(r, 64);
    if (n >= cap) n = cap - 1;
    memcpy(out, r, n);
    out[n] = '\0';
}

/* 0: the session can go on; -4: it cannot (why says so). */
static int check(orion_shm *s, char *why, size_t wl)
{
    if (load(s->ctrl + C_GEN) != s->gen) {
        snprintf(why, wl, "%s: channel %u was taken over by another client", s->path, s->index);
        return -4;
    }
    if (load(s->ctrl + C_STATE) == DEAD) {
        char r[65];
        reason_of(s, r, sizeof r);
        snprintf(why, wl, "%s: %s", s->path, r[0] ? r : "session ended by oriond");
        return -4;
    }
    uint64_t beat = load(s->hdr + H_SERVER_BEAT);
    double now = mono();
    if (beat != s->server_beat) {
        s->server_beat = beat;
        s->server_beat_at = now;
    } else if (now - s->server_beat_at > SERVER_STALE_S) {
        snprintf(why, wl, "%s: oriond stopped serving this device (no heartbeat for 5 s); check "
                          "`systemctl status oriond` and /var/log/orion/server.log", s->path);
        return -4;
    }
    return 0;
}

/* How long a waiter spins before it sleeps: a futex sleep and wake-up costs a few microseconds
 * to tens (orion-bench measures it), so a reply due sooner is cheaper to spin for. A request that
 * woke oriond spins up to WAKE_SPIN_S: oriond's own wake-up (~0.1 ms from deep idle, measured on
 * the 2-core VM) is then on the reply's path, and a second wake-up of ours would double it. */
#define WAKE_SPIN_S 0.002
static double spin_s(void)
{
    static double v = -1;
    if (v < 0) {
        const char *e = getenv("ORION_SPIN_US");
        double us = e && *e ? strtod(e, NULL) : 50.0;
        v = (us >= 0 && us <= 1e6 ? us : 50.0) / 1e6;
    }
    return v;
}

static void futex_wait(volatile uint64_t *word, uint64_t seen, double seconds)
{
    if (seconds < 0) seconds = 0;
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, (uint32_t)seen, &ts, NULL, 0);
}

/* After publishing the request head: wake oriond if it sleeps on it (full fence, then one load):
 * a futex wake on the host and in containers, a doorbell ring (one MMIO write) from a VM. */
static void wake_server(orion_shm *s)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (load(s->ctrl + C_REQ_WAIT)) {
        if (s->wakes)
            syscall(SYS_futex, (uint32_t *)(s->ctrl + C_REQ_HEAD), FUTEX_WAKE, 1, NULL, NULL, 0);
        else
            orion_doorbell_ring(0, s->db_vector);
        s->woke_server = 1;
    }
}

/* Sleep until the response head moves past rx_tail (a futex, or the doorbell's interrupt in a VM).
 * 0: data, or (doorbell) the interrupt path failed and the caller polls; -3: deadline; -4: peer
 * gone. */
static int sleep_for_reply(orion_shm *s, double deadline, char *why, size_t wl)
{
    volatile uint64_t *head = s->ctrl + C_RESP_HEAD, *flag = s->ctrl + C_RESP_WAIT;
    double next_check = 0;
    int r = 0;
    for (;;) {
        double now = mono();
        if (now >= next_check) {
            next_check = now + CHECK_S;
            if ((r = check(s, why, wl))) break;
        }
        if (deadline > 0 && now > deadline) {
            r = -3;
            break;
        }
        __atomic_store_n(flag, 1, __ATOMIC_SEQ_CST);
        uint64_t h = load(head);
        if (h != s->rx_tail) break;
        double until = deadline > 0 && deadline < next_check ? deadline : next_check;
        if (s->wakes) {
            futex_wait(head, h, until - now);
        } else {
            int w = orion_doorbell_wait(until - now);
            if (w != ORION_DB_OK && w != ORION_DB_TIMEOUT) {
                s->db_sleep = 0; /* no interrupt after all: poll from now on */
                break;
            }
        }
        if (load(head) != s->rx_tail) break;
    }
    store(flag, 0);
    return r;
}

typedef struct {
    unsigned n;
    double start, next_check;
} backoff;

/* One step of waiting: spin, then yield, then sleep growing to 5 ms; checks the peer every
 * 0.5 ms. 0: go on polling; -3: deadline passed; -4: the peer is gone. */
static int wait_step(orion_shm *s, backoff *b, double deadline, char *why, size_t wl)
{
    b->n++;
    if (b->n < 2000) return 0;  /* spin: a short call's reply comes in microseconds */
    double now = mono();
    if (b->start == 0) b->start = now;
    if (now >= b->next_check) {
        b->next_check = now + 0.0005;
        int r = check(s, why, wl);
        if (r) return r;
        if (deadline > 0 && now > deadline) return -3;
    }
    double idle = now - b->start;
    if (idle < 0.001) {
        sched_yield();
    } else {
        double pause = idle / 10 < 0.005 ? idle / 10 : 0.005;
        struct timespec ts = {0, (long)(pause * 1e9)};
        nanosleep(&ts, NULL);
    }
    return 0;
}

int orion_shm_send(orion_shm *s, const struct iovec *iov, int n, char *why, size_t wl)
{
    const uint64_t mask = s->ring - 1;
    for (int i = 0; i < n; i++) {
        const unsigned char *p = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left) {
            if (s->tx_limit == s->tx_head) {
                backoff b = {0, 0, 0};
                for (;;) {
                    s->tx_limit = load(s->ctrl + C_REQ_TAIL) + s->ring;
                    if (s->tx_limit > s->tx_head) break;
                    int r = wait_step(s, &b, 0, why, wl);
                    if (r) return r;
                }
            }
            uint64_t pos = s->tx_head & mask;
            size_t k = (size_t)(s->tx_limit - s->tx_head);
            if (k > left) k = left;
            if (k > s->ring - pos) k = (size_t)(s->ring - pos);
            if (k > STEP) k = STEP;
            orion_copy(s->req + pos, p, k);
            s->tx_head += k;
            store(s->ctrl + C_REQ_HEAD, s->tx_head);
            if (s->wakes | s->db) wake_server(s);
            p += k;
            left -= k;
        }
    }
    return 0;
}

int orion_shm_recv(orion_shm *s, void *buf, size_t n, double deadline, char *why, size_t wl)
{
    const uint64_t mask = s->ring - 1;
    unsigned char *p = buf;
    while (n) {
        uint64_t avail = load(s->ctrl + C_RESP_HEAD) - s->rx_tail;
        if (!avail) {
            /* after ringing oriond's doorbell from a VM, do not spin long: a vCPU that spins
             * keeps the host core busy, and the woken worker may wait behind it for a time
             * slice (measured: a 1.4 ms first call after idle with the 2 ms spin, TCG) */
            double spin_end = mono() + (s->woke_server && s->wakes ? WAKE_SPIN_S : spin_s());
            s->woke_server = 0;
            for (unsigned i = 1; !(avail = load(s->ctrl + C_RESP_HEAD) - s->rx_tail); i++)
                if (!(i & 255) && mono() > spin_end) break;
        }
        if (!avail && (s->wakes | s->db_sleep)) {
            int r = sleep_for_reply(s, deadline, why, wl);
            if (r) return r;
            avail = load(s->ctrl + C_RESP_HEAD) - s->rx_tail;
        }
        if (!avail) {
            backoff b = {2000, 0, 0};
            while (!(avail = load(s->ctrl + C_RESP_HEAD) - s->rx_tail)) {
                int r = wait_step(s, &b, deadline, why, wl);
                if (r) return r;
            }
        }
        if (avail > s->ring) {
            snprintf(why, wl, "%s: the response ring's counters are corrupt", s->path);
            return -4;
        }
        uint64_t pos = s->rx_tail & mask;
        size_t k = avail < n ? (size_t)avail : n;
        if (k > s->ring - pos) k = (size_t)(s->ring - pos);
        if (k > STEP) k = STEP;
        orion_copy(p, s->resp + pos, k);
        s->rx_tail += k;
        store(s->ctrl + C_RESP_TAIL, s->rx_tail);
        p += k;
        n -= k;
    }
    return 0;
}

static void *beat_main(void *arg)
{
    orion_shm *s = arg;
    uint64_t beat = 0;
    while (!s->beat_stop) {
        store(s->ctrl + C_CLIENT_BEAT, ++beat);
        for (int i = 0; i < 10 && !s->beat_stop; i++) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* A device file bound into a container at another path than the one it was created at on the
 * host (orion-shm writes that path into the header): said once per device as orion-check
 * says it (select.py); the device is still used. A path that does not exist here (the host's)
 * is compared as written. */
static void warn_other_host_path(const orion_shm *s)
{
    char host[HOSTPATH_LEN], real_host[PATH_MAX], real_dev[PATH_MAX];
    memcpy(host, s->base + HOSTPATH_OFF, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    if (!host[0] || !strcmp(host, s->path)) return;
    const char *rh = realpath(host, real_host) ? real_host : host;
    const char *rd = realpath(s->path, real_dev) ? real_dev : s->path;
    if (!strcmp(rh, rd)) return;
    char line[1600];
    snprintf(line, sizeof line, "warning: %s was created on the host as %s; mount it at the same path (docker run "
             "-v %s:%s:rw) as the Orion documentation requires", s->path, host, host, host);
    orion_log_line("WARN", line);
}

/* Open, validate and claim a channel of one device. 0: claimed and served; -1: reason in why. */
static int try_device(const char *path, const char *lock_path, const char *pci_dir, double timeout,
                      orion_shm **out, char *why, size_t wl)
{
    orion_shm *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->fd = -1;
    s->lock_fd = -1;
    s->vm = lock_path != NULL;
    s->wakes = !s->vm;
    snprintf(s->path, sizeof s->path, "%s", path);
    s->fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (s->fd >= 0 && lock_path) {
        s->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (s->lock_fd < 0) {
            append(why, wl, "%s: lock file %s: %s", path, lock_path, strerror(errno));
            unmap(s);
            return -1;
        }
    } else {
        s->lock_fd = s->fd;
    }
    if (s->fd < 0) {
        append(why, wl, "%s: %s", path, errno == EACCES ? "permission denied (check its owner and mode)"
                                        : errno == ENOENT ? "no such device (create it on the host with orion-shm)"
                                        : strerror(errno));
        unmap(s);
        return -1;
    }
    struct stat st;
    if (fstat(s->fd, &st)) {
        append(why, wl, "%s: fstat: %s", path, strerror(errno));
        unmap(s);
        return -1;
    }
    if (st.st_size < (off_t)PAGE) {
        append(why, wl, "%s: %lld bytes is too small to be an Orion device (recreate it with orion-shm)", path,
               (long long)st.st_size);
        unmap(s);
        return -1;
    }
    s->size = (size_t)st.st_size;
    void *m = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (m == MAP_FAILED) {
        append(why, wl, "%s: mmap: %s", path, strerror(errno));
        s->base = NULL;
        unmap(s);
        return -1;
    }
    s->base = m;
    s->hdr = (volatile uint64_t *)s->base;
    uint32_t version, hsize;
    memcpy(&version, s->base + 8, 4);
    memcpy(&hsize, s->base + 12, 4);
    if (memcmp(s->base, "ORIONSHM", 8) != 0) {
        append(why, wl, "%s: not an Orion device (no header); create it with orion-shm or let the libvirt hook "
                        "prepare it", path);
        unmap(s);
        return -1;
    }
    if (version != LAYOUT_VERSION || hsize != PAGE) {
        append(why, wl, "%s: layout version %u, this client speaks %u: upgrade the client or recreate the device "
                        "with this oriond's orion-shm", path, version, LAYOUT_VERSION);
        unmap(s);
        return -1;
    }
    if (s->hdr[H_SIZE] != s->size) {
        append(why, wl, "%s: header says %llu bytes but the device has %zu: recreate it with orion-shm (and remount "
                        "it into the container)", path,
               (unsigned long long)s->hdr[H_SIZE], s->size);
        unmap(s);
        return -1;
    }
    /* the layout plan of shmdev.plan_layout */
    uint64_t nch = s->size / (4u << 20);
    nch = nch < 1 ? 1 : nch > 8 ? 8 : nch;
    uint64_t per_ring = (s->size - PAGE - nch * PAGE) / (2 * nch), ring = 1;
    while (ring * 2 <= per_ring) ring *= 2;
    if (s->size % PAGE || s->size < (1u << 20) || (s->hdr[H_NCH_FLAGS] & 0xFFFFFFFFu) != nch ||
        s->hdr[H_RING] != ring || s->hdr[H_STRIDE] != PAGE + 2 * ring) {
        append(why, wl, "%s: corrupt channel table; recreate it with orion-shm", path);
        unmap(s);
        return -1;
    }
    if (!s->vm) warn_other_host_path(s);
    uint64_t flags = s->hdr[H_NCH_FLAGS] >> 32;
    if (flags & FLAG_VM) s->wakes = 0;  /* a VM's device: no futex crosses the VM boundary */
    if (s->vm && pci_dir && (flags & FLAG_DOORBELL)) {
        const char *e = getenv("ORION_DOORBELL");
        if (e && !strcmp(e, "0")) {
            s->db_note = "doorbell off (ORION_DOORBELL=0): polling";
        } else {
            int rc = orion_doorbell_open(pci_dir, ORION_DB_BIND_VFIO);
            int self = rc >= 0 ? orion_doorbell_self() : -1;
            if (rc >= 0 && self >= 1) {
                s->db = 1;
                s->db_irq = rc == ORION_DB_OK;
                s->db_self = self;
                s->db_note = s->db_irq ? "doorbell" : orion_doorbell_reason();
            } else {
                if (rc >= 0) orion_doorbell_close();
                s->db_note = rc >= 0 ? "doorbell: no peer id (is oriond's ivshmem server up?)" : orion_doorbell_reason();
            }
        }
    }
    s->nch = nch;
    s->ring = ring;
    s->stride = PAGE + 2 * ring;
    double settle = mono() + (timeout < 1.0 ? timeout : 1.0);
    while (load(s->hdr + H_SERVER_EPOCH) == 0) {
        if (mono() > settle) {
            int vm = s->vm;
            if (vm)
                append(why, wl, "ivshmem device %s is not served by oriond (enable_kvm is off on the host?)", path);
            else
                append(why, wl, "%s: no oriond is serving this device (start oriond with enable_shm=true; for VMs "
                                "also enable_kvm=true)", path);
            unmap(s);
            return vm ? -5 : -1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    uint64_t me = own_ns();
    for (uint64_t i = 0; i < nch; i++) {  /* another container's live claim: refuse the device */
        volatile uint64_t *c = (volatile uint64_t *)(s->base + PAGE + i * s->stride);
        uint64_t state = load(c + C_STATE), ns = load(c + C_OWNER_NS);
        off_t off = (off_t)(PAGE + i * s->stride);
        if (!s->vm && (state == CLAIMED || state == SERVING) && ns != 0 && ns != me) {
            if (lock_byte(s->lock_fd, off, F_WRLCK) == 0) {
                lock_byte(s->lock_fd, off, F_UNLCK);
            } else {
                append(why, wl, "%s is already in use by another container (mount namespace %llu): every "
                                "container needs its own device \u2014 create one with `orion-shm -i N` and mount it "
                                "with `docker run -v /dev/shm/orionsockN:/dev/shm/orionsockN:rw`", path,
                       (unsigned long long)ns);
                unmap(s);
                return -1;
            }
        }
    }
    for (uint64_t i = 0; i < nch; i++) {
        off_t off = (off_t)(PAGE + i * s->stride);
        if (lock_byte(s->lock_fd, off, F_WRLCK)) continue;
        s->index = (unsigned)i;
        s->ctrl = (volatile uint64_t *)(s->base + off);
        s->req = s->base + off + PAGE;
        s->resp = s->req + ring;
        if (madvise(s->base + off, (size_t)s->stride, MADV_POPULATE_WRITE)) {
            for (uint64_t p = 0; p < s->stride; p += PAGE) {  /* fault the pages in once */
                volatile unsigned char *b = s->base + off + p;
                *b = *b;
            }
        }
        uint64_t gen = load(s->ctrl + C_GEN) + 1;
        store(s->ctrl + C_OWNER_PID, (uint64_t)getpid());
        store(s->ctrl + C_OWNER_NONCE, random_u63());
        store(s->ctrl + C_OWNER_NS, me);
        store(s->ctrl + C_CLIENT_BEAT, 0);
        if (s->vm) store(s->ctrl + C_DB_PEER, s->db ? (uint64_t)s->db_self + 1 : 0);
        store(s->ctrl + C_GEN, gen);
        store(s->ctrl + C_STATE, CLAIMED);
        store(s->hdr + H_CLAIM_BELL, (load(s->hdr + H_CLAIM_BELL) + 1) & 0xFFFFFFFFu);
        if (s->wakes) syscall(SYS_futex, (uint32_t *)(s->hdr + H_CLAIM_BELL), FUTEX_WAKE, 1, NULL, NULL, 0);
        if (s->db) {  /* oriond's main loop sleeps on the claim vector of a doorbell device */
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            orion_doorbell_ring(0, CLAIM_VECTOR);
        }
        s->gen = gen;
        double deadline = mono() + timeout;
        while (!(load(s->ctrl + C_STATE) == SERVING && load(s->ctrl + C_SERVED_GEN) == gen)) {
            if (load(s->ctrl + C_STATE) == DEAD && load(s->ctrl + C_SERVED_GEN) == gen) {
                char r[65];
                reason_of(s, r, sizeof r);
                append(why, wl, "%s: oriond refused the channel: %s", path, r);
                lock_byte(s->lock_fd, off, F_UNLCK);
                unmap(s);
                return -1;
            }
            if (mono() > deadline) {
                store(s->ctrl + C_STATE, CLOSED);
                append(why, wl, "%s: oriond did not take up the channel within %.0f s (is oriond running and "
                                "serving this device?)", path, timeout);
                lock_byte(s->lock_fd, off, F_UNLCK);
                unmap(s);
                return -1;
            }
            struct timespec ts = {0, 500 * 1000};
            nanosleep(&ts, NULL);
        }
        s->db_vector = 1u + (unsigned)i;
        if (s->db) {
            int served = load(s->ctrl + C_DB_SERVER) == 1;
            s->db_sleep = s->db_irq && served;
            /* served without an interrupt: we ring oriond, and poll for replies */
            if (!served) s->db_note = "doorbell: oriond's worker polls";
        }
        s->tx_head = load(s->ctrl + C_REQ_HEAD);
        s->tx_limit = load(s->ctrl + C_REQ_TAIL) + ring;
        s->rx_tail = load(s->ctrl + C_RESP_TAIL);
        s->server_beat = load(s->hdr + H_SERVER_BEAT);
        s->server_beat_at = mono();
        store(s->ctrl + C_CLIENT_BEAT, 1);
        /* oriond watches a VM client's heartbeat (it cannot see a guest's lock); elsewhere it
         * watches the claim lock, and no thread needs to wake this process while it is idle */
        if (!s->wakes) s->beat_started = pthread_create(&s->beat_thread, NULL, beat_main, s) == 0;
        *out = s;
        return 0;
    }
    append(why, wl, "%s: all %llu channels are in use; create another device with `orion-shm -i N`", path,
           (unsigned long long)nch);
    unmap(s);
    return -1;
}

static int by_number(const struct dirent **a, const struct dirent **b)
{
    long x = atol((*a)->d_name + 9), y = atol((*b)->d_name + 9);
    return x < y ? -1 : x > y;
}

static int is_device_name(const struct dirent *d)
{
    if (strncmp(d->d_name, "orionsock", 9) || !d->d_name[9]) return 0;
    for (const char *p = d->d_name + 9; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    return 1;
}

static int read_line(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    int ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

static const char *lock_dir(void)
{
    static const char *dirs[] = {"/run/orion", "/tmp/orion-locks"};
    for (int i = 0; i < 2; i++) {
        mkdir(dirs[i], 01777);
        struct stat st;
        if (!stat(dirs[i], &st) && S_ISDIR(st.st_mode) && !access(dirs[i], W_OK)) return dirs[i];
    }
    return NULL;
}

/* The ivshmem PCI devices of a VM, in address order: 0 claimed, -5 only unserved ones, -2 none,
 * -1 every one failed. */
static int open_ivshmem(double timeout, orion_shm **out, char *why, size_t wl)
{
    const char *root = getenv("ORION_SYSFS_PCI");
    if (!root || !*root) root = "/sys/bus/pci/devices";
    struct dirent **list = NULL;
    int n = scandir(root, &list, NULL, alphasort), got = -2, unserved = 0;
    for (int i = 0; i < n; i++) {
        char p[1024], v[32] = "", d[32] = "", bar[1100], lock[600];
        const char *e = list[i]->d_name;
        if (e[0] != '.' && got != 0) {
            snprintf(p, sizeof p, "%s/%s/vendor", root, e);
            read_line(p, v, sizeof v);
            snprintf(p, sizeof p, "%s/%s/device", root, e);
            read_line(p, d, sizeof d);
            if (!strcmp(v, "0x1af4") && !strcmp(d, "0x1110")) {
                snprintf(p, sizeof p, "%s/%s/enable", root, e);
                FILE *f = fopen(p, "we");
                if (f) { fputs("1", f); fclose(f); }
                snprintf(bar, sizeof bar, "%s/%s/resource2_wc", root, e);
                if (access(bar, F_OK)) snprintf(bar, sizeof bar, "%s/%s/resource2", root, e);
                const char *ld = lock_dir();
                if (!ld) {
                    append(why, wl, "cannot create a lock directory in /run/orion or /tmp");
                    got = -1;
                } else {
                    char safe[256];
                    snprintf(safe, sizeof safe, "%s", e);
                    for (char *c = safe; *c; c++) if (*c == ':') *c = '_';
                    snprintf(lock, sizeof lock, "%s/ivshmem-%s.lock", ld, safe);
                    snprintf(p, sizeof p, "%s/%s", root, e);
                    int r = try_device(bar, lock, p, timeout, out, why, wl);
                    if (r == -5) unserved = 1;
                    got = r == 0 ? 0 : -1;
                }
            }
        }
        free(list[i]);
    }
    free(list);
    return got == -1 && unserved ? -5 : got;
}

int orion_shm_open(double timeout, orion_shm **out, char *name, size_t nl, char *why, size_t wl)
{
    why[0] = '\0';
    int vm = open_ivshmem(timeout, out, why, wl);
    if (vm == 0) {
        if ((*out)->db_note)
            snprintf(name, nl, "ivshmem %s#%u (%s)", (*out)->path, (*out)->index,
                     (*out)->db_sleep ? "doorbell: sleeps on MSI-X" : (*out)->db_note);
        else
            snprintf(name, nl, "ivshmem %s#%u", (*out)->path, (*out)->index);
        return 0;
    }
    char one[1024], base[1000], origin[600];
    if (orion_conf_setting("ORION_SHM_DEVICE", "client-shm", "shm_device", one, sizeof one, origin, sizeof origin)) {
        if (try_device(one, NULL, NULL, timeout, out, why, wl) == 0) goto found;
        return vm == -5 ? -5 : -1;
    }
    int configured = orion_conf_setting("ORION_SHM_PATH_BASE", "client-shm", "shm_path_base", base, sizeof base,
                                        origin, sizeof origin);
    if (!configured) snprintf(base, sizeof base, "/dev/shm");
    struct dirent **list = NULL;
    int n = scandir(base, &list, is_device_name, by_number);
    if (n <= 0) {
        if (configured)
            append(why, wl, "shm_path_base %s (from %s) holds no Orion device: create "
                   "one on the host with `orion-shm -i N` and mount it into the container at the same path "
                   "(docker run -v %s/orionsockN:%s/orionsockN:rw)", base, origin, base, base);
        else
            append(why, wl, "no shared-memory device under %s", base);
        free(list);
        return vm == -5 ? -5 : vm == -1 ? -1 : -2;  /* nothing to try: not worth a word */
    }
    int got = -1;
    for (int i = 0; i < n; i++) {
        char path[1300];
        snprintf(path, sizeof path, "%s/%s", base, list[i]->d_name);
        if (got) got = try_device(path, NULL, NULL, timeout, out, why, wl);
        free(list[i]);
    }
    free(list);
    if (got) return vm == -5 ? -5 : -1;
found:
    snprintf(name, nl, "shm %s#%u", (*out)->path, (*out)->index);
    return 0;
}

void orion_shm_close(orion_shm *s)
{
    if (!s) return;
    if (s->beat_started) {
        s->beat_stop = 1;
        pthread_join(s->beat_thread, NULL);
    }
    if (load(s->ctrl + C_GEN) == s->gen && load(s->ctrl + C_STATE) != DEAD) store(s->ctrl + C_STATE, CLOSED);
    lock_byte(s->lock_fd, (off_t)(PAGE + s->index * s->stride), F_UNLCK);
    unmap(s);
}

int orion_shm_is_vm(const orion_shm *s)
{
    return s && s->vm;
}

void orion_shm_forget(orion_shm *s)
{
    /* a forked child: the claim (lock, heartbeat thread) belongs to the parent */
    if (!s) return;
    munmap(s->base, s->size);
    if (s->lock_fd != s->fd) close(s->lock_fd);
    close(s->fd);
}
