/* Guest half of tests/integration/test_vm_doorbell.py (built static on the host).
 *
 *   doorbell_guest insmod FILE.ko [PARAMS]   load a module (the test rootfs has no kmod)
 *   doorbell_guest find                      print the sysfs dir of the ivshmem-doorbell device
 *   doorbell_guest run PCI_DIR               the ping protocol below, through orion_doorbell.c
 *
 * Protocol: u64 words in the last page of BAR2 (the host maps the same page of
 * /dev/shm/orionsock<N>). The host writes MAGIC and N; the guest reports its open status and
 * peer id, then
 *   host -> guest, N times: guest stores READY=i and sleeps in orion_doorbell_wait(); the host
 *     waits a little (so the guest really sleeps), rings it and times until ACK=i (host clock);
 *     then N times more with the guest spinning on orion_doorbell_wait(0) (the interrupt path
 *     without the guest's wake from idle);
 *   guest -> host, N times: host stores SLEEP=i and sleeps in its DoorbellServer.wait(); the
 *     guest waits 2 ms, rings oriond (peer 0) and times until the host's HACK=i (guest clock);
 *   ping-pong, N times, nobody spinning: the host rings the sleeping guest, which rings the
 *     sleeping host back at once; the host times the round trip.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "orion_doorbell.h"

enum { W_MAGIC, W_N, W_PEER, W_STATUS, W_READY, W_ACK, W_SLEEP, W_HACK, W_DONE, W_TIMEOUT_OK, W_WORDS };
#define MAGIC 0x31305453544244ull /* "DBTST01" */
#define MAXN 1000

static volatile uint64_t *w;

static uint64_t ld(int i) { return __atomic_load_n(&w[i], __ATOMIC_ACQUIRE); }
static void st(int i, uint64_t v) { __atomic_store_n(&w[i], v, __ATOMIC_RELEASE); }

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int spin_until(int i, uint64_t v, double timeout_us) {
    double end = now_us() + timeout_us;
    while (ld(i) != v)
        if (now_us() > end) return -1;
    return 0;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int do_insmod(const char *path, const char *params) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    if (syscall(SYS_finit_module, fd, params ? params : "", 0) != 0 && errno != EEXIST) {
        fprintf(stderr, "insmod %s: %s\n", path, strerror(errno));
        return 1;
    }
    close(fd);
    return 0;
}

static int do_find(void) {
    DIR *d = opendir("/sys/bus/pci/devices");
    if (!d) return 1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[512], buf[32];
        unsigned long v = 0, id = 0;
        FILE *f;
        snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/vendor", e->d_name);
        if ((f = fopen(p, "r"))) { if (fgets(buf, sizeof buf, f)) v = strtoul(buf, 0, 0); fclose(f); }
        snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/device", e->d_name);
        if ((f = fopen(p, "r"))) { if (fgets(buf, sizeof buf, f)) id = strtoul(buf, 0, 0); fclose(f); }
        if (v == 0x1af4 && id == 0x1110) {
            printf("/sys/bus/pci/devices/%s\n", e->d_name);
            closedir(d);
            return 0;
        }
    }
    closedir(d);
    fprintf(stderr, "no ivshmem device\n");
    return 1;
}

static void stats(const char *what, double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    printf("%s n=%d median_us=%.1f p10_us=%.1f p90_us=%.1f min_us=%.1f\n", what, n, v[n / 2], v[n / 10],
           v[n * 9 / 10], v[0]);
}

static int do_run(const char *dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/resource2", dir);
    int fd = open(p, O_RDWR | O_SYNC);
    if (fd < 0) { perror(p); return 2; }
    struct stat sb;
    fstat(fd, &sb);
    long pg = sysconf(_SC_PAGESIZE);
    void *m = mmap(NULL, (size_t)pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, sb.st_size - pg);
    if (m == MAP_FAILED) { perror("mmap resource2"); return 2; }
    w = m;

    double t0 = now_us();
    int rc = orion_doorbell_open(dir, ORION_DB_BIND_VFIO);
    printf("OPEN rc=%d reason=%s open_ms=%.1f\n", rc, orion_doorbell_reason(), (now_us() - t0) / 1e3);
    int self = orion_doorbell_self();
    printf("SELF %d\n", self);
    fflush(stdout);
    if (spin_until(W_MAGIC, MAGIC, 60e6) < 0) { printf("host never wrote MAGIC\n"); return 3; }
    int n = (int)ld(W_N);
    if (n < 1 || n > MAXN) return 3;
    st(W_STATUS, (uint64_t)(rc + 100));
    if (rc != ORION_DB_OK) { st(W_DONE, 1); return 4; }
    /* nobody rang yet: a short wait must time out */
    int t = orion_doorbell_wait(0.05);
    st(W_TIMEOUT_OK, t == ORION_DB_TIMEOUT ? 1 : 2);
    st(W_PEER, (uint64_t)self + 1);

    for (int i = 1; i <= n; i++) { /* host -> guest, guest asleep: the host times it */
        st(W_READY, (uint64_t)i);
        int r = orion_doorbell_wait(20.0);
        if (r != ORION_DB_OK) { printf("wait %d: rc=%d\n", i, r); return 5; }
        st(W_ACK, (uint64_t)i);
    }
    for (int i = n + 1; i <= 2 * n; i++) { /* the same with the guest spinning on wait(0) */
        st(W_READY, (uint64_t)i);
        double end = now_us() + 20e6;
        while (orion_doorbell_wait(0) != ORION_DB_OK)
            if (now_us() > end) { printf("spin wait %d timed out\n", i); return 5; }
        st(W_ACK, (uint64_t)i);
    }
    static double lat[MAXN];
    for (int i = 1; i <= n; i++) { /* guest -> host: we time it */
        if (spin_until(W_SLEEP, (uint64_t)i, 20e6) < 0) { printf("host SLEEP %d missing\n", i); return 6; }
        double s = now_us();
        while (now_us() - s < 2000.0) {} /* let the host fall asleep */
        double a = now_us();
        if (orion_doorbell_ring(0, 0) != ORION_DB_OK) return 7;
        if (spin_until(W_HACK, (uint64_t)i, 20e6) < 0) { printf("host HACK %d missing\n", i); return 8; }
        lat[i - 1] = now_us() - a;
    }
    stats("GUEST_TO_HOST", lat, n);
    for (int i = 1; i <= n; i++) { /* ping-pong, both asleep: host rings, we ring back at once */
        st(W_READY, (uint64_t)(2 * n + i));
        int r = orion_doorbell_wait(20.0);
        if (r != ORION_DB_OK) { printf("pong wait %d: rc=%d\n", i, r); return 9; }
        if (orion_doorbell_ring(0, 0) != ORION_DB_OK) return 9;
    }
    st(W_DONE, 1);
    orion_doorbell_close();
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "insmod")) return do_insmod(argv[2], argc > 3 ? argv[3] : "");
    if (argc == 2 && !strcmp(argv[1], "find")) return do_find();
    if (argc == 3 && !strcmp(argv[1], "run")) return do_run(argv[2]);
    fprintf(stderr, "usage: %s insmod FILE [PARAMS] | find | run PCI_DIR\n", argv[0]);
    return 64;
}
