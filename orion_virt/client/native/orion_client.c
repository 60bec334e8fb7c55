/* The native client's runtime: one session with oriond per process, over a shared-memory device
 * channel (orion_shm.c) or TCP.
 *
 * Environment over client.conf (as orion_virt/config.py resolves them): ORION_ENABLE_NET, ORION_SHM_PATH_BASE,
 * ORION_SHM_DEVICE, ORION_SERVER=HOST:PORT, ORION_VGPU (required), ORION_GMEM (MiB), ORION_RATIO
 * (%), ORION_CONNECT_TIMEOUT (s, default 5); with ORION_CONTROLLER (or client.conf's
 * controller_addr) the controller grants the vGPUs, the server and the token (orion_ctl.c).
 *
 * cuInit claims a channel or connects (TCP_NODELAY, keepalive probes and a 5 s user timeout so a dead peer is
 * noticed), sends HELLO with the controller's token (empty in direct mode) and waits at most the connect timeout
 * for WELCOME. Every later call goes through orion_call under one mutex. An ERROR frame ends the
 * session: its status is what the call (and every later one) returns, its reason is printed
 * once. A reply that breaks the protocol ends the session with CUDA_ERROR_UNKNOWN, a broken
 * connection with CUDA_ERROR_DEVICE_UNAVAILABLE; nothing is read that a checked header did not
 * announce. BYE at exit.
 *
 * Hand-written here (the calls in tools/gen_native.py's C_CUSTOM): cuInit, cuDriverGetVersion
 * (answered before cuInit), the context calls (the client knows the current context),
 * cuModuleLoadData (the image's length), cuModuleGetFunction (the parameter layout, cached per
 * function) and cuLaunchKernel (kernelParams packed per that layout); and the client-side
 * cuGetErrorName, cuGetErrorString, cuCtxGetCurrent.
 */
#define _GNU_SOURCE
#include "orion_client.h"
#include "orion_conf.h"
#include "orion_log.h"
#include "orion_ptx.h"
#include "calls_gen.h"
#include "orion_shm.h"
#include "orion_procaddr.h"
#include "orion_ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---- state ---------------------------------------------------------------------------------- */

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;  /* taken before call_lock */
static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t fn_lock = PTHREAD_MUTEX_INITIALIZER;

/* One session with one oriond. A cross-node allocation (ORION_CROSS_NODE=1, vGPUs on several
 * nodes) has one per node; every other session has links[0] only. */
typedef struct {
    int fd;                           /* the TCP socket, or -1 */
    orion_shm *shm;                   /* the shared-memory channel, when the session uses one */
    char name[600];                   /* "TCP to HOST:PORT" or "shm PATH#N" */
    char why[600];                    /* why the shared-memory link broke */
    char addr[300];                   /* the server's HOST:PORT */
    uint32_t seq;
    CUcontext ctx;                    /* the server's current context, as this client names it */
    int ctx_known;
} orion_link;

#define MAX_LINKS ORION_CTL_MAX_NODES
static orion_link links[MAX_LINKS] = {[0 ... MAX_LINKS - 1] = {.fd = -1, .ctx_known = 1}};
static int nlinks = 1;
static orion_link *lk = links;        /* the link of the call in progress (call_lock) */
static volatile int initialized;      /* the session is open (set once, under both locks) */
static int init_tried;                /* cuInit ran (its outcome is init_status) */
static CUresult init_status;
static CUresult ended;                /* non-zero: the session is over, every call returns this */
static int said_failure;
static char allocation_id[40];
static int exit_hooked;
static int forked_child;              /* this process is a fork of the one that opened the session */

static void say(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const char *level, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    orion_log_line(level, line);
}

size_t orion_copy_chunk(void)
{
    static size_t chunk;
    if (!chunk) {
        const char *e = getenv("ORION_COPY_CHUNK_MIB");
        long mib = e && *e ? atol(e) : 0;
        size_t c = mib >= 1 && (uint64_t)mib < (ORION_MAX_COPY >> 20) ? (size_t)mib << 20 : (size_t)ORION_MAX_COPY;
        chunk = c;
    }
    return chunk;
}

void orion_log(const char *level, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    orion_log_line(level, line);
}

/* ---- I/O ------------------------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 0 ok, -1 error (errno), the whole iovec array written. */
static int send_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)n;
        ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        size_t left = (size_t)w;
        while (n > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

/* 0 ok, -1 error (errno), -2 end of stream, -3 deadline passed (deadline 0: none). */
static int recv_all(int fd, void *buf, size_t n, double deadline)
{
    char *p = buf;
    while (n > 0) {
        if (deadline > 0) {
            double left = deadline - now_s();
            if (left <= 0) return -3;
            struct pollfd pfd = {fd, POLLIN, 0};
            int r = poll(&pfd, 1, (int)(left * 1000) + 1);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) return -1;
            if (r == 0) return -3;
        }
        ssize_t got = recv(fd, p, n, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (got == 0) return -2;
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

/* The session's carrier: the shared-memory channel or the TCP socket. Same results as
 * send_all/recv_all, plus -4 for a shared-memory peer that is gone (lk->why says how). */
static int link_send(struct iovec *iov, int n)
{
    if (lk->shm) return orion_shm_send(lk->shm, iov, n, lk->why, sizeof lk->why);
    return send_all(lk->fd, iov, n);
}

static int link_recv(void *buf, size_t n, double deadline)
{
    if (lk->shm) return orion_shm_recv(lk->shm, buf, n, deadline, lk->why, sizeof lk->why);
    return recv_all(lk->fd, buf, n, deadline);
}

static int link_skip(uint64_t n)
{
    char sink[4096];
    while (n > 0) {
        size_t k = n < sizeof sink ? (size_t)n : sizeof sink;
        int r = link_recv(sink, k, 0);
        if (r) return r;
        n -= k;
    }
    return 0;
}

static void close_link(void)
{
    if (lk->shm) {
        orion_shm_close(lk->shm);
        lk->shm = NULL;
    }
    if (lk->fd >= 0) {
        shutdown(lk->fd, SHUT_RDWR);
        close(lk->fd);
        lk->fd = -1;
    }
}

/* Every link closes: a server lost mid-session ends the whole session, as with one server. */
static void close_session(CUresult why)
{
    orion_link *was = lk;
    for (int i = 0; i < nlinks; i++) {
        lk = &links[i];
        close_link();
    }
    lk = was;
    ended = why;
}

typedef struct {
    uint32_t length;
    uint8_t kind, flags;
    uint16_t code;
    uint32_t seq;
    int32_t status;
} header;

static void pack_header(unsigned char *p, uint32_t length, uint8_t kind, uint8_t flags, uint16_t code,
                        uint32_t sq, int32_t status)
{
    orion_put_u32(p, length);
    orion_put_u8(p + 4, kind);
    orion_put_u8(p + 5, flags);
    orion_put_u16(p + 6, code);
    orion_put_u32(p + 8, sq);
    orion_put_i32(p + 12, status);
}

static header unpack_header(const unsigned char *p)
{
    header h = {orion_get_u32(p), orion_get_u8(p + 4), orion_get_u8(p + 5), orion_get_u16(p + 6),
                orion_get_u32(p + 8), orion_get_i32(p + 12)};
    return h;
}

static const char *kind_name(uint8_t k)
{
    static const char *names[] = {"?", "HELLO", "WELCOME", "CALL", "REPLY", "ERROR", "BYE", "RENEW"};
    return k < 8 ? names[k] : "an unknown message kind";
}

/* ---- the call path -------------------------------------------------------------------------- */

static CUresult protocol_verror(const char *fmt, va_list ap)
{
    char why[1024];
    vsnprintf(why, sizeof why, fmt, ap);
    if (!said_failure) {
        said_failure = 1;
        say("ERROR", "oriond sent an invalid reply, the session is closed: %s", why);
    }
    close_session(CUDA_ERROR_UNKNOWN);
    return CUDA_ERROR_UNKNOWN;
}

/* A reply that breaks the protocol, call_lock held: the session is over. */
static CUresult protocol_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static CUresult protocol_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    CUresult st = protocol_verror(fmt, ap);
    va_end(ap);
    return st;
}

/* The same, outside the call path (a reply that was well framed but cannot be right). */
static CUresult protocol_error_public(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static CUresult protocol_error_public(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&call_lock);
    CUresult st = protocol_verror(fmt, ap);
    pthread_mutex_unlock(&call_lock);
    va_end(ap);
    return st;
}

static CUresult transport_error(const char *what, int r)
{
    if (!said_failure) {
        said_failure = 1;
        say("ERROR", "lost the connection to oriond: %s (%s, during %s)",
            r == -4 ? lk->why : r == -2 ? "it closed the connection" : strerror(errno), lk->name, what);
    }
    close_session(CUDA_ERROR_DEVICE_UNAVAILABLE);
    return CUDA_ERROR_DEVICE_UNAVAILABLE;
}

/* An ERROR frame whose header was read: its reason, printed once; its status ends the session. */
static CUresult error_frame(header h)
{
    char reason[1024];
    uint32_t keep = h.length < sizeof reason - 1 ? h.length : (uint32_t)sizeof reason - 1;
    if (h.code || h.flags || h.length > ORION_MAX_CONTROL_BODY)
        return protocol_error("an ERROR frame with code %u, flags 0x%02x, %u bytes", h.code, h.flags, h.length);
    int r = link_recv(reason, keep, 0);
    if (!r) r = link_skip(h.length - keep);
    if (r) return transport_error("an ERROR frame", r);
    reason[keep] = '\0';
    CUresult st = h.status ? (CUresult)h.status : CUDA_ERROR_UNKNOWN;
    if (!said_failure) {
        said_failure = 1;
        say("ERROR", "oriond ended the session: %s", reason);
    }
    close_session(st);
    return st;
}

static CUresult sync_context(const orion_msg *m);

/* One call on the link lk (call_lock held). */
static CUresult link_call(orion_msg *m)
{
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (ended) return ended;
    CUresult cst = sync_context(m);
    if (cst != CUDA_SUCCESS) return cst;
    uint64_t body = (uint64_t)m->req_len + m->blob_len;
    if (body > 0xFFFFFFFFu) return CUDA_ERROR_INVALID_VALUE;  /* a body's length is a u32 */
    uint32_t sq = ++lk->seq;
    unsigned char head[ORION_HEADER_SIZE];
    pack_header(head, (uint32_t)body, ORION_CALL, m->flags, m->code, sq, 0);
    int r;
    struct iovec iov[3] = {{head, sizeof head}, {(void *)m->req, m->req_len}, {(void *)m->blob, (size_t)m->blob_len}};
    if ((r = link_send(iov, m->blob_len ? 3 : 2))) return transport_error(m->name, r);
    if (m->flags & ORION_NO_REPLY) return CUDA_SUCCESS;

    unsigned char raw[ORION_HEADER_SIZE];
    r = link_recv(raw, sizeof raw, 0);
    if (r) return transport_error(m->name, r);
    header h = unpack_header(raw);
    if (h.kind == ORION_ERROR) return error_frame(h);
    if (h.kind != ORION_REPLY || h.code != m->code || h.seq != sq || h.flags)
        return protocol_error("%s code %u seq %u does not answer %s seq %u", kind_name(h.kind), h.code, h.seq,
                              m->name, sq);
    uint64_t n = 0;
    if (h.length != m->resp_len) {
        if (m->resp_blob_off < 0 || h.length < m->resp_len)
            return protocol_error("%s: reply body of %u bytes, its layout has %u", m->name, h.length, m->resp_len);
        if (h.status)
            return protocol_error("%s: a failed reply (status %d) carries a blob", m->name, h.status);
        n = h.length - m->resp_len;
        if (n > m->out_cap)
            return protocol_error("%s: reply blob of %llu bytes, the buffer holds %llu", m->name,
                                  (unsigned long long)n, (unsigned long long)m->out_cap);
    }
    if (m->resp_len && (r = link_recv(m->resp, m->resp_len, 0))) return transport_error(m->name, r);
    if (m->resp_blob_off >= 0 && !h.status) {
        uint64_t declared = orion_get_u64((const unsigned char *)m->resp + m->resp_blob_off);
        if (declared != n)
            return protocol_error("%s: reply blob of %llu bytes, its length field says %llu", m->name,
                                  (unsigned long long)n, (unsigned long long)declared);
        if (n && (r = link_recv(m->out, (size_t)n, 0))) return transport_error(m->name, r);
    }
    m->out_len = n;
    return (CUresult)h.status;
}

/* ---- cross-node routing ----------------------------------------------------------------------
 * From the routes of the call
 * spec (orion_routes, generated from orion_virt/wire/routes.py): device ordinals are global (the
 * allocation's vGPUs in order), each mapped to (link, local ordinal); a call naming a device goes
 * to that device's server, one naming a handle to the server that issued it (other handles of
 * the call must come from the same server: CUDA_ERROR_INVALID_HANDLE otherwise), anything else to
 * the server of the thread's current context; cuInit and cuDeviceGetCount go to every server.
 * Servers number their handles independently, so a handle carries its server in the top byte,
 * (link + 1) << 56 | value. Device pointers pass unchanged: each server checks them against its
 * own session. Nothing changes for a session with one server. */

#define TAG_SHIFT 56
#define VALUE_MASK ((UINT64_C(1) << TAG_SHIFT) - 1)

static struct { unsigned char link; int local; } dev_map[ORION_CTL_MAX_VGPUS];
static int ndevs;

/* The link and server value of a client handle: 0, or -1 when it is none of ours. */
static int untag(uint64_t h, int *link, uint64_t *value)
{
    uint64_t top = h >> TAG_SHIFT;
    if (!top || top > (uint64_t)nlinks) return -1;
    *link = (int)top - 1;
    *value = h & VALUE_MASK;
    return 0;
}

/* The link of a context (links[0] for none, or for a session with one server). */
static orion_link *link_of(CUcontext ctx)
{
    int l;
    uint64_t v;
    if (nlinks == 1 || untag((uint64_t)(uintptr_t)ctx, &l, &v)) return links;
    return &links[l];
}

static CUcontext tl_current(void);

static int current_link(void) { return (int)(link_of(tl_current()) - links); }

static CUresult broadcast(orion_msg *m, int merge)
{
    unsigned char first[64], r[64];
    if (m->resp_len > sizeof r) return CUDA_ERROR_INVALID_VALUE;
    int64_t acc = 0;
    for (int i = 0; i < nlinks; i++) {
        orion_msg s = *m;
        s.resp = i ? r : first;
        lk = &links[i];
        CUresult st = link_call(&s);
        if (st != CUDA_SUCCESS) return st;
        if (m->resp_len < 4) continue;
        int32_t v = orion_get_i32(s.resp);
        if (merge == ORION_MERGE_SUM) acc += v;
        else if (merge == ORION_MERGE_MIN) acc = i && acc < v ? acc : v;
        else if (merge == ORION_MERGE_OR) acc |= (uint32_t)v;
    }
    memcpy(m->resp, first, m->resp_len);
    if (m->resp_len >= 4 && merge != ORION_MERGE_FIRST)
        orion_put_i32(m->resp, (int32_t)(acc > INT32_MAX ? INT32_MAX : acc));
    return CUDA_SUCCESS;
}

static CUresult route_call(orion_msg *m)
{
    if (m->code >= ORION_ROUTE_COUNT) return CUDA_ERROR_INVALID_VALUE;
    const orion_route *rt = &orion_routes[m->code];
    if (rt->merge) return broadcast(m, rt->merge);
    unsigned char req[512];
    if (m->req_len > sizeof req) return CUDA_ERROR_INVALID_VALUE;
    memcpy(req, m->req, m->req_len);
    int l;
    uint64_t v;
    if (rt->dev >= 0) {
        int32_t g = orion_get_i32(req + rt->dev);
        if (g < 0 || g >= ndevs) return CUDA_ERROR_INVALID_DEVICE;
        l = dev_map[g].link;
        orion_put_i32(req + rt->dev, dev_map[g].local);
        if (m->code == ORION_CODE_cuDeviceCanAccessPeer) {  /* the peer: the other device argument */
            int32_t p = orion_get_i32(req + 4);
            if (p < 0 || p >= ndevs) return CUDA_ERROR_INVALID_DEVICE;
            if (dev_map[p].link != l) {  /* another node's memory is reached through the host only */
                orion_put_i32(m->resp, 0);
                return CUDA_SUCCESS;
            }
            orion_put_i32(req + 4, dev_map[p].local);
        }
    } else if (rt->owner >= 0) {
        uint64_t h = orion_get_u64(req + rt->owner);
        if (!h) {
            l = current_link();
        } else {
            if (untag(h, &l, &v)) return rt->context_call ? CUDA_ERROR_INVALID_CONTEXT : CUDA_ERROR_INVALID_HANDLE;
            orion_put_u64(req + rt->owner, v);
        }
        if (m->code == ORION_CODE_cuCtxEnablePeerAccess && l != current_link())
            return CUDA_ERROR_PEER_ACCESS_UNSUPPORTED;  /* contexts of two nodes */
        for (int k = 0; k < 3 && rt->same[k] >= 0; k++) {
            uint64_t o = orion_get_u64(req + rt->same[k]);
            int ol;
            if (!o) continue;
            if (untag(o, &ol, &v) || ol != l) return CUDA_ERROR_INVALID_HANDLE;
            orion_put_u64(req + rt->same[k], v);
        }
    } else {
        l = current_link();
    }
    orion_msg s = *m;
    s.req = req;
    lk = &links[l];
    CUresult st = link_call(&s);
    m->out_len = s.out_len;
    if (st != CUDA_SUCCESS || (m->flags & ORION_NO_REPLY)) return st;
    if (m->code == ORION_CODE_cuDeviceGet && m->resp_len >= 4) {
        int32_t local = orion_get_i32(m->resp);
        for (int g = 0; g < ndevs; g++)
            if (dev_map[g].link == l && dev_map[g].local == local) {
                orion_put_i32(m->resp, g);
                break;
            }
    } else if (rt->reply_handle && m->resp_len >= 8) {
        v = orion_get_u64(m->resp);
        if (v > VALUE_MASK)
            return protocol_error("%s: oriond at %s answered a handle of more than 56 bits (0x%llx)", m->name,
                                  links[l].name, (unsigned long long)v);
        if (v) orion_put_u64(m->resp, ((uint64_t)(l + 1) << TAG_SHIFT) | v);
    }
    return st;
}

static CUresult call_locked(orion_msg *m)
{
    if (nlinks > 1) return route_call(m);
    return link_call(m);
}

CUresult orion_call(orion_msg *m)
{
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    pthread_mutex_lock(&call_lock);
    CUresult st = call_locked(m);
    pthread_mutex_unlock(&call_lock);
    return st;
}

/* ---- session -------------------------------------------------------------------------------- */

static void make_allocation_id(char *out)
{
    unsigned char b[16];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, b, sizeof b) : -1;
    if (fd >= 0) close(fd);
    if (got != (ssize_t)sizeof b) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
        for (int i = 0; i < 16; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            b[i] = (unsigned char)(x >> 56);
        }
    }
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);  /* a version 4 UUID, as uuid.uuid4() */
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static size_t program_name(char *out, size_t cap)
{
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, out, cap);
    close(fd);
    if (n <= 0) return 0;
    while (n > 0 && out[n - 1] == '\0') n--;
    for (ssize_t i = 0; i < n; i++)
        if (out[i] == '\0') out[i] = ' ';
    return (size_t)n;
}

/* A positive integer from the environment: 1 set, 0 unset, -1 malformed. */
static int env_long(const char *name, long lo, long hi, long *out)
{
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < lo || x > hi) return -1;
    *out = x;
    return 1;
}

/* Connect and handshake (init_lock and call_lock held). Returns CUDA_SUCCESS or cuInit's status. */
/* Connect to HOST:PORT within timeout seconds: the socket, or -1 (said on stderr). */
static int tcp_open(const char *addr, double timeout, const char *shm_note)
{
    snprintf(lk->addr, sizeof lk->addr, "%s", addr);
    char host[256], port[16] = "9960";
    const char *colon = strrchr(addr, ':');
    size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
    if (hl >= sizeof host || (colon && strlen(colon + 1) >= sizeof port)) {
        say("ERROR", "ORION_SERVER=%s: expected HOST:PORT", addr);
        return -1;
    }
    memcpy(host, addr, hl);
    host[hl] = '\0';
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {  /* [v6]:port */
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    if (colon) snprintf(port, sizeof port, "%s", colon + 1);

    double deadline = now_s() + timeout;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai) {
        say("ERROR", "%s: cannot connect to oriond at %s: %s%s", ORION_MSG_CONNECT, lk->addr, gai_strerror(gai),
            shm_note);
        return -1;
    }
    int fd = -1, err = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) { err = errno; continue; }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) && errno != EINPROGRESS) {
            err = errno;
            close(fd);
            fd = -1;
            continue;
        }
        struct pollfd pfd = {fd, POLLOUT, 0};
        double left = deadline - now_s();
        int pr;
        do pr = poll(&pfd, 1, left > 0 ? (int)(left * 1000) + 1 : 0); while (pr < 0 && errno == EINTR);
        socklen_t el = sizeof err;
        if (pr <= 0) err = ETIMEDOUT;
        else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el)) err = errno;
        if (err) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        say("ERROR", "%s: cannot connect to oriond at %s: %s%s", ORION_MSG_CONNECT, lk->addr,
            err == ETIMEDOUT ? "no answer within the connect timeout" : strerror(err), shm_note);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    int one = 1, idle = 2, intvl = 1, cnt = 3;
    unsigned int user_timeout = 5000;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
    return fd;
}

/* The transport and the handshake (init_lock and call_lock held): a shared-memory channel unless
 * enable_net, else TCP to addr; HELLO with the grant (token: empty in direct mode); WELCOME.
 * CUDA_SUCCESS, or cuInit's status with the reason in why (empty: already said). *over_shm: the
 * handshake went over a shared-memory channel. `because`: why TCP, when the caller knows better
 * than the device search (a retry after a device's oriond refused the grant); else NULL.
 * The client log's "transport: TCP to ADDR because WHY"; on
 * the screen, once the session is open, "using TCP: WHY" unless nothing was there to try under
 * the default shm_path_base (a remote client: no noise); a connect error names the devices' reasons. */
static CUresult hello_session(int enable_net, const char *addr, double timeout, long vgpu, long gmem, long ratio,
                              const char *token, const char *because, char *why, size_t wl, int *over_shm)
{
    int r;
    char shm_why[2048] = "", note[2100] = "";
    const char *where = lk->name;
    int fd = -1;
    int sr = enable_net ? -2 : orion_shm_open(timeout, &lk->shm, lk->name, sizeof lk->name, shm_why, sizeof shm_why);
    *over_shm = sr == 0;
    if (because) snprintf(shm_why, sizeof shm_why, "%s", because);
    if (sr != 0 && shm_why[0]) snprintf(note, sizeof note, " (shared memory unusable: %s)", shm_why);
    if (sr != 0) {
        lk->shm = NULL;
        fd = tcp_open(addr, timeout, note);
        if (fd < 0) {
            if (sr == -5) say("ERROR", "%s", ORION_MSG_VM_NOT_SERVED);
            return CUDA_ERROR_NO_DEVICE;
        }
        lk->fd = fd;
        snprintf(lk->name, sizeof lk->name, "TCP to %s", lk->addr);
        where = lk->addr;
    }
    double deadline = now_s() + timeout;

    /* HELLO: docs/protocol.md, "Session" */
    char prog[200];
    size_t pl = program_name(prog, sizeof prog);
    size_t al = strlen(allocation_id), tl = strlen(token);
    unsigned char *hello = malloc(ORION_HEADER_SIZE + 28 + sizeof prog + sizeof allocation_id + tl);
    if (!hello || tl > 0xFFFF) {
        free(hello);
        close_link();
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    unsigned char *b = hello + ORION_HEADER_SIZE;
    orion_put_u32(b, ORION_HELLO_MAGIC);
    orion_put_u16(b + 4, ORION_PROTO_MAJOR);
    orion_put_u16(b + 6, ORION_PROTO_MINOR);
    orion_put_u32(b + 8, (uint32_t)getpid());
    orion_put_u16(b + 12, (uint16_t)vgpu);
    orion_put_u16(b + 14, (uint16_t)ratio);
    orion_put_u32(b + 16, (uint32_t)gmem);
    orion_put_u16(b + 20, (uint16_t)tl);
    orion_put_u16(b + 22, (uint16_t)pl);
    orion_put_u16(b + 24, (uint16_t)al);
    orion_put_u16(b + 26, 0);
    memcpy(b + 28, token, tl);
    memcpy(b + 28 + tl, prog, pl);
    memcpy(b + 28 + tl + pl, allocation_id, al);
    uint32_t body = (uint32_t)(28 + tl + pl + al);
    pack_header(hello, body, ORION_HELLO, 0, 0, 0, 0);
    struct iovec iov = {hello, ORION_HEADER_SIZE + body};
    r = link_send(&iov, 1);
    int err = errno;
    free(hello);
    if (r) {
        snprintf(why, wl, "cannot send HELLO to oriond at %s: %s", where, r == -4 ? lk->why : strerror(err));
        close_link();
        return CUDA_ERROR_NO_DEVICE;
    }
    unsigned char raw[ORION_HEADER_SIZE];
    size_t got = 0;
    r = 0;
    while (got < sizeof raw) {  /* byte-wise progress so a timeout can say what arrived */
        r = link_recv(raw + got, 1, deadline);
        if (r) break;
        got++;
    }
    if (r) {
        if (r == -3 && !got)
            snprintf(why, wl, "%s: no answer to HELLO within %g s (the port accepts connections but nothing "
                              "answered: is it oriond's port, 9960 by default?)", where, timeout);
        else if (r == -3)
            snprintf(why, wl, "%s: no answer to HELLO within %g s (it sent %zu bytes)", where, timeout, got);
        else
            snprintf(why, wl, "%s closed the connection after HELLO%s (is it oriond's port?)", where,
                     got ? " after sending a few bytes" : "");
        close_link();
        return CUDA_ERROR_NO_DEVICE;
    }
    header h = unpack_header(raw);
    if ((h.kind != ORION_WELCOME && h.kind != ORION_ERROR) || h.code || h.flags || h.length > ORION_MAX_CONTROL_BODY) {
        char shown[17];
        for (size_t i = 0; i < 16; i++) shown[i] = raw[i] >= 32 && raw[i] < 127 ? (char)raw[i] : '.';
        shown[16] = '\0';
        snprintf(why, wl, "%s is not an Orion Server: it answered '%s'%s", where, shown,
                 memcmp(raw, "HTTP/", 5) == 0 ? " (an HTTP server: is this the controller's port?)" : "");
        close_link();
        return CUDA_ERROR_NO_DEVICE;
    }
    char *text = malloc(h.length + 1u);
    if (!text) {
        close_link();
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    r = link_recv(text, h.length, deadline);
    if (r) {
        snprintf(why, wl, "%s: the answer to HELLO was cut short (%s)", where,
                 r == -3 ? "timed out" : r == -2 ? "connection closed" : r == -4 ? lk->why : strerror(errno));
        free(text);
        close_link();
        return CUDA_ERROR_NO_DEVICE;
    }
    text[h.length] = '\0';
    if (h.kind == ORION_ERROR) {
        CUresult st = h.status ? (CUresult)h.status : CUDA_ERROR_UNKNOWN;
        snprintf(why, wl, "oriond at %s refused the session: %s", where, text);
        free(text);
        close_link();
        return st;
    }
    /* WELCOME: u16 major, u16 minor, u64 session id, u16 backend length, backend */
    const unsigned char *w = (const unsigned char *)text;
    if (h.length < 14 || 14u + orion_get_u16(w + 12) != h.length || orion_get_u16(w) != ORION_PROTO_MAJOR) {
        snprintf(why, wl, "%s: a WELCOME this client cannot use (%u bytes, protocol %u)", where, h.length,
                 h.length >= 2 ? orion_get_u16(w) : 0);
        free(text);
        close_link();
        return CUDA_ERROR_NO_DEVICE;
    }
    free(text);
    char line[2900];
    const char *sp = strchr(lk->name, ' '), *hash = strrchr(lk->name, '#');
    if (lk->shm && sp && hash && hash > sp)  /* "shm PATH#N" -> "shm device PATH channel N" */
        snprintf(line, sizeof line, "transport: %.*s device %.*s channel %s", (int)(sp - lk->name), lk->name,
                 (int)(hash - sp - 1), sp + 1, hash + 1);
    else if (lk->shm)
        snprintf(line, sizeof line, "transport: %s", lk->name);
    else
        snprintf(line, sizeof line, "transport: TCP to %s%s%s", lk->addr, shm_why[0] ? " because " : "", shm_why);
    orion_log_file("INFO", line);
    if (!lk->shm && !enable_net && shm_why[0] && !strstr(shm_why, "no shared-memory device"))
        say("INFO", "using TCP: %s", shm_why);
    return CUDA_SUCCESS;
}

static CUresult open_session(void)
{
    long vgpu = 0, gmem = 0, ratio = 0;
    double timeout = 5.0;
    int r = env_long("ORION_VGPU", 1, 64, &vgpu);
    if (r == 0) {
        say("ERROR", "ORION_VGPU is not set: export ORION_VGPU=<number of vGPUs this application needs>");
        return CUDA_ERROR_NO_DEVICE;
    }
    if (r < 0) {
        say("ERROR", "ORION_VGPU=%s: expected a number of vGPUs from 1 to 64", getenv("ORION_VGPU"));
        return CUDA_ERROR_NO_DEVICE;
    }
    const char *gv = getenv("ORION_GMEM");
    if (gv && *gv && orion_parse_mib(gv, &gmem) < 0) {
        say("ERROR", "ORION_GMEM=%s: expected a size in MiB such as 4096, 4096M or 4G", gv);
        return CUDA_ERROR_NO_DEVICE;
    }
    if (env_long("ORION_RATIO", 0, 100, &ratio) < 0) {
        say("ERROR", "ORION_RATIO=%s: expected a percentage from 1 to 100", getenv("ORION_RATIO"));
        return CUDA_ERROR_NO_DEVICE;
    }
    char val[1024], origin[600];
    if (orion_conf_setting("ORION_CONNECT_TIMEOUT", "client", "connect_timeout", val, sizeof val, origin,
                           sizeof origin)) {
        char *end;
        double x = strtod(val, &end);
        if (*end || !(x > 0)) {
            say("ERROR", "connect_timeout = '%s' (from %s): expected a positive number of seconds", val, origin);
            return CUDA_ERROR_NO_DEVICE;
        }
        timeout = x;
    }
    int enable_net = 0;
    if (orion_conf_setting("ORION_ENABLE_NET", "client", "enable_net", val, sizeof val, origin, sizeof origin) &&
        (enable_net = orion_conf_bool(val)) < 0) {
        say("ERROR", "enable_net = '%s' (from %s): expected true or false", val, origin);
        return CUDA_ERROR_NO_DEVICE;
    }
    static char server[300];
    snprintf(server, sizeof server, "127.0.0.1:9960");
    if (orion_conf_setting("ORION_SERVER", "client", "server_addr", val, sizeof val, origin, sizeof origin)) {
        if (strlen(val) >= sizeof server || !strrchr(val, ':')) {
            say("ERROR", "server_addr = '%.200s' (from %s): expected HOST:PORT", val, origin);
            return CUDA_ERROR_NO_DEVICE;
        }
        memcpy(server, val, strlen(val) + 1);
    }
    const char *addr = server;

    if (orion_log_on_screen("INFO")) {
        fprintf(stderr, "%s\n", ORION_BANNER);
        fflush(stderr);
    }
    orion_log_file("INFO", ORION_BANNER " starting (native client)");

    /* controller mode (orion_ctl.c): the controller names the server, the vGPUs, the token and
     * the allocation id, and the lease is renewed from now on; else direct mode */
    const orion_grant *g = NULL;
    int ctl = orion_ctl_configured();
    if (ctl < 0) return CUDA_ERROR_NO_DEVICE;
    if (ctl) {
        if (!(g = orion_ctl_obtain(vgpu, timeout))) return CUDA_ERROR_NO_DEVICE;
        snprintf(allocation_id, sizeof allocation_id, "%s", g->allocation_id);
        ratio = g->ratio;
        orion_ctl_start_renewal();
    } else {
        make_allocation_id(allocation_id);
    }

    /* one session per node of the grant (one in direct mode) */
    int parts = g ? g->nparts : 1;
    CUresult st = CUDA_SUCCESS;
    char why[2200] = "";
    for (int p = 0; p < parts && st == CUDA_SUCCESS; p++) {
        const orion_grant_part *gp = g ? &g->parts[p] : NULL;
        const char *paddr = gp ? gp->server : addr, *token = gp ? gp->token : "";
        long pv = gp ? gp->vgpu_count : vgpu, pm = gp ? (long)gp->gmem_mib : gmem;
        int over_shm = 0;
        lk = &links[p];
        nlinks = p + 1;
        st = hello_session(enable_net, paddr, timeout, pv, pm, ratio, token, NULL, why, sizeof why, &over_shm);
        if (st != CUDA_SUCCESS && g && over_shm) {
            /* the device's oriond is not the allocated node (it refused the token): TCP to that node */
            char first[2200], line[3000];
            snprintf(first, sizeof first, "%s", why);
            snprintf(line, sizeof line, "handshake over %s failed: %s", lk->name, first);
            orion_log_file("ERROR", line);
            snprintf(line, sizeof line, "retrying over TCP to the allocated server %s", paddr);
            orion_log_file("INFO", line);
            why[0] = '\0';
            st = hello_session(1, paddr, timeout, pv, pm, ratio, token, first, why, sizeof why, &over_shm);
            if (st == CUDA_SUCCESS) say("INFO", "using TCP: TCP to %s because %s", paddr, first);
        }
        if (st == CUDA_SUCCESS && parts > 1) {
            char line[1000];
            snprintf(line, sizeof line, "node %s: session over %s, %ld vGPU(s)", gp->node_id, lk->name, pv);
            orion_log_file("INFO", line);
        }
        lk->seq = 0;
    }
    if (st != CUDA_SUCCESS) {
        if (why[0]) say("ERROR", "%s", why);
        for (int p = 0; p + 1 < nlinks; p++) {  /* the nodes already in session hear a goodbye */
            unsigned char head[ORION_HEADER_SIZE];
            pack_header(head, 0, ORION_BYE, 0, 0, 0, 0);
            struct iovec iov = {head, sizeof head};
            lk = &links[p];
            (void)link_send(&iov, 1);
            close_link();
        }
        lk = links;
        nlinks = 1;
        if (g) {  /* give the vGPUs back now; the exit line still names the allocation */
            orion_ctl_stop();
            orion_ctl_release();
        }
        return st;
    }
    lk = links;
    ndevs = 0;
    if (g && nlinks > 1) {
        int seen[MAX_LINKS] = {0};
        for (int v = 0; v < g->vgpu_count; v++) {
            int p = g->part_of[v];
            dev_map[ndevs].link = (unsigned char)p;
            dev_map[ndevs++].local = seen[p]++;
        }
    }
    ended = CUDA_SUCCESS;
    said_failure = 0;
    initialized = 1;
    return CUDA_SUCCESS;
}

static void bye(void)
{
    /* Bounded: a thread stuck in a call must not keep the process from exiting. */
    int locked = 0;
    for (int i = 0; i < 100 && !(locked = !pthread_mutex_trylock(&call_lock)); i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int open = 0;
    for (int i = 0; i < nlinks; i++) {
        if (links[i].fd < 0 && !links[i].shm) continue;
        open = 1;
        if (locked && !ended) {
            unsigned char head[ORION_HEADER_SIZE];
            pack_header(head, 0, ORION_BYE, 0, 0, 0, 0);
            struct iovec iov = {head, sizeof head};
            lk = &links[i];
            (void)link_send(&iov, 1);
        }
    }
    if (open) close_session(CUDA_ERROR_DEINITIALIZED);
    if (locked) pthread_mutex_unlock(&call_lock);
}

static void on_exit_hook(void)
{
    static int done;
    if (done || !init_tried || forked_child) return;
    done = 1;
    orion_ctl_stop();                               /* controller: no renewal from here on */
    int had = initialized || orion_ctl_obtained();  /* a controller allocation is named even if the session failed */
    bye();
    orion_ctl_release();                            /* controller: give the vGPUs back */
    if (had)
        say("INFO", ORION_MSG_EXIT_WITH, allocation_id);
    else
        say("INFO", "%s", ORION_MSG_NO_ALLOCATION);
}

__attribute__((destructor)) static void orion_fini(void) { on_exit_hook(); }

/* ---- controller hooks (orion_ctl.c's renewal thread) ------------------------------------------ */

/* call_lock, unless the process is exiting: a thread stuck in a call must not hold up the exit. */
static int lock_for_controller(void)
{
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (!pthread_mutex_timedlock(&call_lock, &ts)) return 1;
        if (orion_ctl_stopping()) return 0;
    }
}

int orion_send_renew(int part, const void *body, uint32_t len)
{
    if (len > ORION_MAX_CONTROL_BODY || part < 0 || !lock_for_controller()) return -1;
    int r = -1;
    if (initialized && !ended && !forked_child && !orion_ctl_stopping() && part < nlinks) {
        lk = &links[part];
        unsigned char head[ORION_HEADER_SIZE];
        pack_header(head, len, ORION_RENEW, 0, 0, 0, 0);
        struct iovec iov[2] = {{head, sizeof head}, {(void *)body, len}};
        r = link_send(iov, 2);
        if (r) transport_error("RENEW", r);
    }
    pthread_mutex_unlock(&call_lock);
    return r ? -1 : 0;
}

void orion_session_lost(void)
{
    if (!lock_for_controller()) return;
    if (initialized && !ended && !forked_child) {
        unsigned char head[ORION_HEADER_SIZE];
        pack_header(head, 0, ORION_BYE, 0, 0, 0, 0);
        for (int i = 0; i < nlinks; i++) {
            struct iovec iov = {head, sizeof head};
            lk = &links[i];
            (void)link_send(&iov, 1);
        }
        said_failure = 1;
        close_session(CUDA_ERROR_DEINITIALIZED);
    }
    pthread_mutex_unlock(&call_lock);
}

/* fork: the child must not speak on its parent's session (the server would see two clients'
 * calls interleaved); it gets CUDA_ERROR_NOT_INITIALIZED, as after fork with NVIDIA's driver. */
static void fork_prepare(void) { pthread_mutex_lock(&init_lock); pthread_mutex_lock(&call_lock); }
static void fork_parent(void) { pthread_mutex_unlock(&call_lock); pthread_mutex_unlock(&init_lock); }
static void fork_child(void)
{
    forked_child = 1;
    for (int i = 0; i < nlinks; i++) {
        if (links[i].fd >= 0) {
            close(links[i].fd);  /* no shutdown: that would end the parent's connection too */
            links[i].fd = -1;
        }
        if (links[i].shm) {
            orion_shm_forget(links[i].shm);
            links[i].shm = NULL;
        }
    }
    if (initialized) ended = CUDA_ERROR_NOT_INITIALIZED;
    pthread_mutex_unlock(&call_lock);
    pthread_mutex_unlock(&init_lock);
}

/* ---- hand-written calls ------------------------------------------------------------------- */

CUresult orion_custom_cuInit(unsigned int Flags)
{
    pthread_mutex_lock(&init_lock);
    if (!init_tried) {
        init_tried = 1;
        if (!exit_hooked) {
            exit_hooked = 1;
            atexit(on_exit_hook);
            pthread_atfork(fork_prepare, fork_parent, fork_child);
        }
        pthread_mutex_lock(&call_lock);
        init_status = open_session();
        pthread_mutex_unlock(&call_lock);
    }
    CUresult st = init_status;
    pthread_mutex_unlock(&init_lock);
    if (st != CUDA_SUCCESS) return st;
    return orion_wire_cuInit(Flags);
}

/* The version of the driver API this library implements (the table cuGetProcAddress answers
 * from), before and after cuInit alike: NVIDIA's runtime checks it and hashes it. The driver
 * behind oriond may be older or newer; what it lacks fails there, call by call. */
CUresult orion_custom_cuDriverGetVersion(int *driverVersion)
{
    if (!driverVersion) return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = orion_driver_version;
    return CUDA_SUCCESS;
}

/* ---- contexts ------------------------------------------------------------------------------
 * The current context is per thread, a stack as in CUDA (cuCtxSetCurrent replaces its top,
 * push and pop move it). oriond has one current context per session: before a call is sent, a
 * thread whose context is not the server's sends cuCtxSetCurrent first (call_locked). The
 * device of each context and the primary contexts' retain counts are kept here, so the calls
 * NVIDIA's runtime makes thousands of times (cuCtxGetDevice, cuDevicePrimaryCtxGetState) cost
 * no round trip. */

#define CTX_STACK 16
#define MAX_CTX 256
#define MAX_DEV 64
static __thread CUcontext tl_stack[CTX_STACK];
static __thread int tl_depth;        /* 0: no context; else tl_stack[tl_depth - 1] is current */
static struct { CUcontext ctx; CUdevice dev; } ctx_devs[MAX_CTX];
static int primary_refs[MAX_DEV];
static unsigned primary_flags[MAX_DEV];
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;

static CUcontext tl_current(void) { return tl_depth ? tl_stack[tl_depth - 1] : NULL; }

static void ctx_remember(CUcontext ctx, CUdevice dev)
{
    pthread_mutex_lock(&ctx_lock);
    int slot = -1;
    for (int i = 0; i < MAX_CTX; i++) {
        if (ctx_devs[i].ctx == ctx) { slot = i; break; }
        if (!ctx_devs[i].ctx && slot < 0) slot = i;
    }
    if (slot >= 0) { ctx_devs[slot].ctx = ctx; ctx_devs[slot].dev = dev; }
    pthread_mutex_unlock(&ctx_lock);
}

static int ctx_device(CUcontext ctx, CUdevice *dev)
{
    int found = 0;
    pthread_mutex_lock(&ctx_lock);
    for (int i = 0; i < MAX_CTX && !found; i++)
        if (ctx && ctx_devs[i].ctx == ctx) { *dev = ctx_devs[i].dev; found = 1; }
    pthread_mutex_unlock(&ctx_lock);
    return found;
}

/* Called with call_lock held, before a call other than cuCtxSetCurrent is sent. */
static CUresult sync_context(const orion_msg *m)
{
    CUcontext want = tl_current();
    if (m->code == ORION_CODE_cuCtxSetCurrent || (lk->ctx_known && want == lk->ctx)) return CUDA_SUCCESS;
    uint64_t value = (uint64_t)(uintptr_t)want;
    if (nlinks > 1 && want) {  /* another server's context leaves this server's as it is */
        int l;
        if (untag(value, &l, &value) || &links[l] != lk) return CUDA_SUCCESS;
    }
    unsigned char req[8];
    orion_put_u64(req, value);
    orion_msg set = {ORION_CODE_cuCtxSetCurrent, ORION_NO_REPLY, "cuCtxSetCurrent", req, 8, NULL, 0, NULL, 0, -1,
                     NULL, 0, 0};
    CUresult st = link_call(&set);
    if (st == CUDA_SUCCESS) { lk->ctx = want; lk->ctx_known = 1; }
    return st;
}

static void set_top(CUcontext ctx)
{
    if (!tl_depth) tl_depth = 1;
    tl_stack[tl_depth - 1] = ctx;
}

CUresult orion_custom_cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    CUresult st = orion_wire_cuCtxCreate(pctx, flags, dev);
    if (st != CUDA_SUCCESS) return st;
    ctx_remember(*pctx, dev);
    if (tl_depth < CTX_STACK) tl_stack[tl_depth++] = *pctx;  /* a created context is pushed */
    else set_top(*pctx);
    pthread_mutex_lock(&call_lock);
    orion_link *l = link_of(*pctx);
    l->ctx = *pctx;  /* oriond made it current too */
    l->ctx_known = 1;
    pthread_mutex_unlock(&call_lock);
    return CUDA_SUCCESS;
}

CUresult orion_custom_cuCtxDestroy(CUcontext ctx)
{
    CUresult st = orion_wire_cuCtxDestroy(ctx);
    if (st != CUDA_SUCCESS) return st;
    for (int i = 0; i < tl_depth; i++)
        if (tl_stack[i] == ctx) tl_stack[i] = NULL;
    while (tl_depth && !tl_stack[tl_depth - 1]) tl_depth--;
    pthread_mutex_lock(&call_lock);
    orion_link *l = link_of(ctx);
    if (l->ctx == ctx) l->ctx_known = 0;
    pthread_mutex_unlock(&call_lock);
    return CUDA_SUCCESS;
}

CUresult orion_custom_cuCtxSetCurrent(CUcontext ctx)
{
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (ctx && !ctx_device(ctx, &(CUdevice){0})) return CUDA_ERROR_INVALID_CONTEXT;
    if (ctx) set_top(ctx);
    else if (tl_depth) tl_depth--;  /* NULL: as CUDA, the top is popped */
    return CUDA_SUCCESS;
}

CUresult orion_custom_cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    CUresult st = orion_wire_cuDevicePrimaryCtxRetain(pctx, dev);
    if (st != CUDA_SUCCESS) return st;
    ctx_remember(*pctx, dev);
    pthread_mutex_lock(&ctx_lock);
    if (dev >= 0 && dev < MAX_DEV) primary_refs[dev]++;
    pthread_mutex_unlock(&ctx_lock);
    return CUDA_SUCCESS;
}

CUresult orion_custom_cuDevicePrimaryCtxRelease(CUdevice dev)
{
    CUresult st = orion_wire_cuDevicePrimaryCtxRelease(dev);
    if (st != CUDA_SUCCESS) return st;
    pthread_mutex_lock(&ctx_lock);
    if (dev >= 0 && dev < MAX_DEV && primary_refs[dev] > 0) primary_refs[dev]--;
    pthread_mutex_unlock(&ctx_lock);
    return CUDA_SUCCESS;
}

ORION_API CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx || !ctx_device(ctx, &(CUdevice){0})) return CUDA_ERROR_INVALID_CONTEXT;
    if (tl_depth == CTX_STACK) return CUDA_ERROR_INVALID_VALUE;
    tl_stack[tl_depth++] = ctx;
    return CUDA_SUCCESS;
}

ORION_API CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!tl_depth) return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext top = tl_stack[--tl_depth];
    if (pctx) *pctx = top;
    return CUDA_SUCCESS;
}

ORION_API CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    *pctx = tl_current();
    return CUDA_SUCCESS;
}

ORION_API CUresult cuCtxGetDevice_v2(CUdevice *device, CUcontext ctx)
{
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx) ctx = tl_current();
    return ctx_device(ctx, device) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

/* CUDA 13: synchronise a given context (NULL: the current one). */
ORION_API CUresult cuCtxSynchronize_v2(CUcontext ctx)
{
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx || ctx == tl_current()) return cuCtxSynchronize();
    if (!ctx_device(ctx, &(CUdevice){0})) return CUDA_ERROR_INVALID_CONTEXT;
    CUresult st = cuCtxPushCurrent_v2(ctx);
    if (st != CUDA_SUCCESS) return st;
    st = cuCtxSynchronize();
    tl_depth--;
    return st;
}

ORION_API CUresult cuCtxGetDevice(CUdevice *device) { return cuCtxGetDevice_v2(device, NULL); }

ORION_API CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
{
    if (!flags || !active) return CUDA_ERROR_INVALID_VALUE;
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    int n = 0;
    CUresult st = cuDeviceGetCount(&n);
    if (st != CUDA_SUCCESS) return st;
    if (dev < 0 || dev >= n || dev >= MAX_DEV) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&ctx_lock);
    *flags = primary_flags[dev];
    *active = primary_refs[dev] > 0;
    pthread_mutex_unlock(&ctx_lock);
    return CUDA_SUCCESS;
}

/* CUDA 13's cuCtxCreate (cuda.h maps cuCtxCreate to it): the same call when no execution
 * affinity or CIG parameters are asked for; those are not remoted. */
ORION_API CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *ctxCreateParams, unsigned int flags, CUdevice dev)
{
    if (ctxCreateParams && (ctxCreateParams->execAffinityParams || ctxCreateParams->numExecAffinityParams ||
                            ctxCreateParams->cigParams))
        return CUDA_ERROR_NOT_SUPPORTED;
    return orion_custom_cuCtxCreate(pctx, flags, dev);
}

ORION_API CUresult cuGetErrorName(CUresult error, const char **pStr)
{
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    *pStr = orion_error_name(error);
    return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

ORION_API CUresult cuGetErrorString(CUresult error, const char **pStr)
{
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    *pStr = orion_error_string(error);
    return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

typedef struct orion_kernel orion_kernel;
static orion_kernel *as_kernel(const void *h);
static CUresult kernel_function(orion_kernel *k, CUfunction *fn);
static size_t nkernel_objs;

/* ---- modules: image length ---------------------------------------------------------------- */

#define FATBIN_MAGIC 0xBA55ED50u
#define FATBINC_MAGIC 0x466243B1u

/* The byte length of a module image, which cuModuleLoadData receives without one: an ELF
 * (cubin) ends with its section header table, a fatbin says its size in its header, a fatbinc
 * wrapper points at a fatbin, anything else is NUL-terminated PTX text. 0: not an image. */
static size_t image_length(const void **image)
{
    const unsigned char *p = *image;
    if (memcmp(p, "\x7f" "ELF", 4) == 0) {
        if (p[4] == 2) {  /* ELFCLASS64 */
            uint64_t shoff = orion_get_u64(p + 0x28);
            return (size_t)(shoff + (uint64_t)orion_get_u16(p + 0x3A) * orion_get_u16(p + 0x3C));
        }
        uint32_t shoff = orion_get_u32(p + 0x20);
        return (size_t)shoff + (size_t)orion_get_u16(p + 0x2E) * orion_get_u16(p + 0x30);
    }
    if (orion_get_u32(p) == FATBINC_MAGIC) {
        const unsigned char *data;
        memcpy(&data, p + 8, sizeof data);
        if (!data) return 0;
        *image = data;
        p = data;
    }
    if (orion_get_u32(p) == FATBIN_MAGIC) return (size_t)(orion_get_u16(p + 6) + orion_get_u64(p + 8));
    return strnlen((const char *)p, (size_t)ORION_MAX_IMAGE + 1);
}

/* The PTX text of each module loaded from PTX, so that the parameter layout oriond answers for
 * one of its kernels is checked against what the module itself declares (a hostile or broken
 * oriond must not make cuLaunchKernel read past the caller's arguments). Cubins and fatbins are
 * not read here: their layouts are oriond's word. */
typedef struct ptx_module {
    uint64_t handle;
    char *text;
    size_t len;
    struct ptx_module *next;
} ptx_module;
static ptx_module *ptx_modules;
static pthread_mutex_t ptx_lock = PTHREAD_MUTEX_INITIALIZER;

static void remember_ptx(CUmodule mod, const void *image, size_t n)
{
    if (!mod || !orion_ptx_is_text(image, n)) return;
    ptx_module *m = malloc(sizeof *m);
    char *t = malloc(n ? n : 1);
    if (!m || !t) {
        free(m);
        free(t);
        return;
    }
    memcpy(t, image, n);
    *m = (ptx_module){(uint64_t)(uintptr_t)mod, t, n, NULL};
    pthread_mutex_lock(&ptx_lock);
    m->next = ptx_modules;
    ptx_modules = m;
    pthread_mutex_unlock(&ptx_lock);
}

/* The parameter sizes module `mod` declares for kernel `name`: the count, or -1 (not PTX, or
 * not understood: nothing to check). */
static int ptx_param_sizes(CUmodule mod, const char *name, uint32_t *sizes, int cap)
{
    int r = -1;
    pthread_mutex_lock(&ptx_lock);
    for (ptx_module *m = ptx_modules; m; m = m->next)
        if (m->handle == (uint64_t)(uintptr_t)mod) {
            r = orion_ptx_param_sizes(m->text, m->len, name, sizes, cap);
            break;
        }
    pthread_mutex_unlock(&ptx_lock);
    return r;
}

static CUresult load_module(CUmodule *module, const void *image, size_t n)
{
    CUresult st = orion_wire_cuModuleLoadData(module, image, (uint32_t)n);
    if (st == CUDA_SUCCESS) remember_ptx(*module, image, n);
    return st;
}

CUresult orion_custom_cuModuleLoadData(CUmodule *module, const void *image)
{
    if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
    size_t n = image_length(&image);
    if (!n) return CUDA_ERROR_INVALID_IMAGE;
    if (n > ORION_MAX_IMAGE) return CUDA_ERROR_INVALID_VALUE;
    return load_module(module, image, n);
}

/* ---- functions: parameter layouts --------------------------------------------------------- */

#define ORION_PTX_CHECK_MAX 4096  /* parameters of a PTX kernel checked against oriond's layout */

typedef struct {
    uint64_t handle;   /* 0: empty slot */
    uint32_t count;
    uint32_t total;    /* bytes of the packed parameter buffer */
    uint32_t *layout;  /* count pairs: offset, size */
} kernel_info;

static kernel_info *kernels;
static size_t kernels_cap, kernels_used;

static size_t slot_of(uint64_t h, size_t cap)
{
    uint64_t x = h * 0x9E3779B97F4A7C15ull;
    return (size_t)(x >> 17) & (cap - 1);
}

/* fn_lock held. */
static int kernels_put(kernel_info k)
{
    if ((kernels_used + 1) * 2 > kernels_cap) {
        size_t cap = kernels_cap ? kernels_cap * 2 : 64;
        kernel_info *t = calloc(cap, sizeof *t);
        if (!t) return -1;
        for (size_t i = 0; i < kernels_cap; i++) {
            if (!kernels[i].handle) continue;
            size_t j = slot_of(kernels[i].handle, cap);
            while (t[j].handle) j = (j + 1) & (cap - 1);
            t[j] = kernels[i];
        }
        free(kernels);
        kernels = t;
        kernels_cap = cap;
    }
    size_t j = slot_of(k.handle, kernels_cap);
    while (kernels[j].handle && kernels[j].handle != k.handle) j = (j + 1) & (kernels_cap - 1);
    if (kernels[j].handle) {
        free(kernels[j].layout);  /* the same handle again: a fresh layout */
    } else {
        kernels_used++;
    }
    kernels[j] = k;
    return 0;
}

/* fn_lock held. */
static kernel_info *kernels_get(uint64_t h)
{
    if (!kernels_cap || !h) return NULL;
    size_t j = slot_of(h, kernels_cap);
    while (kernels[j].handle) {
        if (kernels[j].handle == h) return &kernels[j];
        j = (j + 1) & (kernels_cap - 1);
    }
    return NULL;
}

CUresult orion_custom_cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name)
{
    if (!hfunc || !name) return CUDA_ERROR_INVALID_VALUE;
    size_t n = strnlen(name, (size_t)ORION_MAX_NAME + 1);
    if (n > ORION_MAX_NAME) return CUDA_ERROR_INVALID_VALUE;
    uint64_t cap = 8ull * ORION_MAX_PARAMS, got = 0;
    uint32_t *raw = malloc((size_t)cap);
    if (!raw) return CUDA_ERROR_OUT_OF_MEMORY;
    CUfunction f = NULL;
    CUresult st = orion_wire_cuModuleGetFunction(&f, hmod, name, (uint32_t)n, raw, cap, &got);
    if (st != CUDA_SUCCESS) {
        free(raw);
        return st;
    }
    /* the reply blob: u32 offset, u32 size per parameter */
    kernel_info k = {(uint64_t)(uintptr_t)f, (uint32_t)(got / 8), 0, NULL};
    if (got % 8 || !k.handle) {
        free(raw);
        return protocol_error_public("cuModuleGetFunction: a parameter layout of %llu bytes", (unsigned long long)got);
    }
    const unsigned char *b = (const unsigned char *)raw;
    k.layout = malloc(got ? (size_t)got : 1);
    if (!k.layout) {
        free(raw);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    for (uint32_t i = 0; i < k.count; i++) {
        uint32_t off = orion_get_u32(b + 8 * i), size = orion_get_u32(b + 8 * i + 4);
        if ((uint64_t)off + size > ORION_MAX_PARAMS) {
            free(raw);
            free(k.layout);
            return protocol_error_public("cuModuleGetFunction: parameter %u at %u, %u bytes, lies beyond %u bytes",
                                         i, off, size, ORION_MAX_PARAMS);
        }
        k.layout[2 * i] = off;
        k.layout[2 * i + 1] = size;
        if (off + size > k.total) k.total = off + size;
    }
    free(raw);
    uint32_t declared[ORION_PTX_CHECK_MAX];
    int nd = ptx_param_sizes(hmod, name, declared, ORION_PTX_CHECK_MAX);
    if (nd >= 0) {
        int same = (uint32_t)nd == k.count && nd <= ORION_PTX_CHECK_MAX;
        for (uint32_t i = 0; same && i < k.count; i++) same = declared[i] == k.layout[2 * i + 1];
        if (!same) {
            free(k.layout);
            return protocol_error_public("cuModuleGetFunction(%s): oriond's parameter layout (%u parameters, %u bytes) "
                                         "is not the one the module's PTX declares (%d parameters)",
                                         name, k.count, k.total, nd);
        }
    }
    pthread_mutex_lock(&fn_lock);
    int bad = kernels_put(k);
    pthread_mutex_unlock(&fn_lock);
    if (bad) {
        free(k.layout);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *hfunc = f;
    return CUDA_SUCCESS;
}

/* A launch's parameters packed as cuModuleGetFunction's layout said, from kernelParams or from
 * extra's packed buffer (then *data points into the caller's buffer). A CUkernel becomes its
 * function in the current context. */
static CUresult launch_params(CUfunction *pf, void **kernelParams, void **extra, unsigned char *buf,
                              const void **data, uint32_t *size)
{
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (nkernel_objs) {
        orion_kernel *ko = as_kernel(*pf);
        if (ko) {
            CUresult st = kernel_function(ko, pf);
            if (st != CUDA_SUCCESS) return st;
        }
    }
    pthread_mutex_lock(&fn_lock);
    kernel_info *k = kernels_get((uint64_t)(uintptr_t)*pf);
    if (!k) {
        pthread_mutex_unlock(&fn_lock);
        return CUDA_ERROR_INVALID_HANDLE;
    }
    uint32_t total = k->total;
    *size = total;
    if (extra) {  /* the packed buffer: {BUFFER_POINTER, p, BUFFER_SIZE, &size, END} in any order */
        pthread_mutex_unlock(&fn_lock);
        if (kernelParams) return CUDA_ERROR_INVALID_VALUE;
        const void *p = NULL;
        size_t n = 0;
        for (int i = 0; extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
            if (i > 16) return CUDA_ERROR_INVALID_VALUE;
            if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) p = extra[i + 1];
            else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE && extra[i + 1]) n = *(size_t *)extra[i + 1];
            else return CUDA_ERROR_INVALID_VALUE;
        }
        if ((n && !p) || n > ORION_MAX_PARAMS || n < total) return CUDA_ERROR_INVALID_VALUE;
        *data = p;
        return CUDA_SUCCESS;
    }
    if (k->count && !kernelParams) {
        pthread_mutex_unlock(&fn_lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    memset(buf, 0, total);
    for (uint32_t i = 0; i < k->count; i++) {
        if (!kernelParams[i]) {
            pthread_mutex_unlock(&fn_lock);
            return CUDA_ERROR_INVALID_VALUE;
        }
        memcpy(buf + k->layout[2 * i], kernelParams[i], k->layout[2 * i + 1]);
    }
    pthread_mutex_unlock(&fn_lock);
    *data = buf;
    return CUDA_SUCCESS;
}

CUresult orion_custom_cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                                     unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                                     unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra)
{
    unsigned char buf[ORION_MAX_PARAMS];
    const void *data;
    uint32_t size;
    CUresult st = launch_params(&f, kernelParams, extra, buf, &data, &size);
    if (st != CUDA_SUCCESS) return st;
    return orion_wire_cuLaunchKernel(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes,
                                     hStream, data, size);
}

/* ---- answered in the client ----------------------------------------------------------------- */

/* Modules are loaded when cuModuleLoadData* is called (oriond loads them at once). */
ORION_API CUresult cuModuleGetLoadingMode(CUmoduleLoadingMode *mode)
{
    if (!mode) return CUDA_ERROR_INVALID_VALUE;
    *mode = CU_MODULE_EAGER_LOADING;
    return CUDA_SUCCESS;
}

/* ---- libraries and kernels -------------------------------------------------------------------
 * What NVIDIA's runtime uses for the kernels a program registers (CUDA 12+). A library belongs
 * to no context: cuLibraryLoadData keeps a copy of the image here, and the image is loaded as a
 * module into a context the first time one of its kernels is used there (cuLaunchKernel,
 * cuKernelGetFunction, cuLibraryGetModule). A CUkernel is accepted wherever a CUfunction is.
 * JIT options are the server's to choose (the image is compiled there); library options
 * (binary preservation) do not apply. */

#define LIB_CTX 8
typedef struct { CUcontext ctx; void *h; } per_ctx;  /* a module or function per context */

typedef struct orion_library {
    void *image;
    size_t len;
    per_ctx mods[LIB_CTX];
} orion_library;

typedef struct orion_kernel {
    uint32_t magic;
    orion_library *lib;
    char *name;
    per_ctx fns[LIB_CTX];
} orion_kernel;

#define KERNEL_MAGIC 0x4B524E4Cu
#define MAX_KERNELS 65536
static orion_kernel *kernel_objs[MAX_KERNELS];
static pthread_mutex_t lib_lock = PTHREAD_MUTEX_INITIALIZER;

static orion_kernel *as_kernel(const void *h)
{
    orion_kernel *k = NULL;
    pthread_mutex_lock(&lib_lock);
    for (size_t i = 0; i < nkernel_objs; i++)
        if (kernel_objs[i] == h) { k = kernel_objs[i]; break; }
    pthread_mutex_unlock(&lib_lock);
    return k;
}

static void *per_ctx_get(const per_ctx *c, CUcontext ctx)
{
    void *h = NULL;
    pthread_mutex_lock(&lib_lock);
    for (int i = 0; i < LIB_CTX && !h; i++)
        if (c[i].ctx == ctx) h = c[i].h;
    pthread_mutex_unlock(&lib_lock);
    return h;
}

static void per_ctx_put(per_ctx *c, CUcontext ctx, void *h)
{
    pthread_mutex_lock(&lib_lock);
    for (int i = 0; i < LIB_CTX; i++)
        if (!c[i].ctx) { c[i].ctx = ctx; c[i].h = h; break; }
    pthread_mutex_unlock(&lib_lock);
}

/* The module of lib in the current context (loaded there on first use). */
static CUresult library_module(orion_library *lib, CUmodule *mod)
{
    CUcontext ctx = tl_current();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    if ((*mod = per_ctx_get(lib->mods, ctx))) return CUDA_SUCCESS;
    CUresult st = load_module(mod, lib->image, lib->len);
    if (st == CUDA_SUCCESS) per_ctx_put(lib->mods, ctx, *mod);
    return st;
}

/* The function of kernel k in the current context (its module loaded there first). */
static CUresult kernel_function(orion_kernel *k, CUfunction *fn)
{
    CUcontext ctx = tl_current();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    if ((*fn = per_ctx_get(k->fns, ctx))) return CUDA_SUCCESS;
    CUmodule mod;
    CUresult st = library_module(k->lib, &mod);
    if (st == CUDA_SUCCESS) st = orion_custom_cuModuleGetFunction(fn, mod, k->name);
    if (st == CUDA_SUCCESS) per_ctx_put(k->fns, ctx, *fn);
    return st;
}

ORION_API CUresult cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option *jitOptions,
                                     void **jitOptionsValues, unsigned int numJitOptions,
                                     CUlibraryOption *libraryOptions, void **libraryOptionValues,
                                     unsigned int numLibraryOptions)
{
    (void)jitOptions; (void)jitOptionsValues; (void)numJitOptions;
    (void)libraryOptions; (void)libraryOptionValues; (void)numLibraryOptions;
    if (!library || !code) return CUDA_ERROR_INVALID_VALUE;
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    size_t n = image_length(&code);
    if (!n) return CUDA_ERROR_INVALID_IMAGE;
    if (n > ORION_MAX_IMAGE) return CUDA_ERROR_INVALID_VALUE;
    orion_library *lib = calloc(1, sizeof *lib);
    if (!lib || !(lib->image = malloc(n))) { free(lib); return CUDA_ERROR_OUT_OF_MEMORY; }
    memcpy(lib->image, code, n);
    lib->len = n;
    *library = (CUlibrary)lib;
    return CUDA_SUCCESS;
}

ORION_API CUresult cuLibraryUnload(CUlibrary library)
{
    orion_library *lib = (orion_library *)library;
    if (!lib) return CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&lib_lock);
    for (size_t i = 0; i < nkernel_objs;) {
        if (kernel_objs[i]->lib == lib) {
            kernel_objs[i]->magic = 0;
            free(kernel_objs[i]->name);
            free(kernel_objs[i]);
            kernel_objs[i] = kernel_objs[--nkernel_objs];
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&lib_lock);
    for (int i = 0; i < LIB_CTX; i++)
        if (lib->mods[i].ctx) (void)cuModuleUnload((CUmodule)lib->mods[i].h);
    free(lib->image);
    free(lib);
    return CUDA_SUCCESS;
}

ORION_API CUresult cuLibraryGetKernel(CUkernel *pKernel, CUlibrary library, const char *name)
{
    if (!pKernel || !library || !name) return CUDA_ERROR_INVALID_VALUE;
    orion_kernel *k = calloc(1, sizeof *k);
    if (!k || !(k->name = strdup(name))) { free(k); return CUDA_ERROR_OUT_OF_MEMORY; }
    k->magic = KERNEL_MAGIC;
    k->lib = (orion_library *)library;
    pthread_mutex_lock(&lib_lock);
    if (nkernel_objs == MAX_KERNELS) {
        pthread_mutex_unlock(&lib_lock);
        free(k->name);
        free(k);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    kernel_objs[nkernel_objs++] = k;
    pthread_mutex_unlock(&lib_lock);
    *pKernel = (CUkernel)k;
    return CUDA_SUCCESS;
}

ORION_API CUresult cuLibraryGetModule(CUmodule *pMod, CUlibrary library)
{
    if (!pMod || !library) return CUDA_ERROR_INVALID_VALUE;
    return library_module((orion_library *)library, pMod);
}

ORION_API CUresult cuKernelGetFunction(CUfunction *pFunc, CUkernel kernel)
{
    if (!pFunc) return CUDA_ERROR_INVALID_VALUE;
    orion_kernel *k = as_kernel(kernel);
    if (!k) return CUDA_ERROR_INVALID_HANDLE;
    return kernel_function(k, pFunc);
}

ORION_API CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                                      CUjit_option *options, void **optionValues)
{
    (void)numOptions; (void)options; (void)optionValues;
    return orion_custom_cuModuleLoadData(module, image);
}

/* cuLaunchKernelEx: the attributes oriond passes on to the driver (clusters and their scheduling
 * policy, cooperative, programmatic stream serialisation, priority) go with orionLaunchKernelEx; a
 * launch with none of them set is a plain cuLaunchKernel. Attributes that name client memory or
 * events (access policy windows, programmatic and completion events, memory sync domains) are
 * refused with their number. */
typedef struct {
    unsigned cluster[3], policy, cooperative, programmatic;
    int priority;
} launch_attrs;

static CUresult read_attrs(const CUlaunchConfig *config, launch_attrs *la, int *plain)
{
    memset(la, 0, sizeof *la);
    *plain = 1;
    if (config->numAttrs && !config->attrs) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < config->numAttrs; i++) {
        const CUlaunchAttribute *a = &config->attrs[i];
        switch (a->id) {
        case CU_LAUNCH_ATTRIBUTE_IGNORE:
            break;
        case CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION:
            la->cluster[0] = a->value.clusterDim.x;
            la->cluster[1] = a->value.clusterDim.y;
            la->cluster[2] = a->value.clusterDim.z;
            break;
        case CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE:
            la->policy = (unsigned)a->value.clusterSchedulingPolicyPreference;
            break;
        case CU_LAUNCH_ATTRIBUTE_COOPERATIVE:
            la->cooperative = a->value.cooperative ? 1u : 0u;
            break;
        case CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION:
            la->programmatic = a->value.programmaticStreamSerializationAllowed ? 1u : 0u;
            break;
        case CU_LAUNCH_ATTRIBUTE_PRIORITY:
            la->priority = a->value.priority;
            break;
        default:
            orion_log("WARN", "cuLaunchKernelEx: launch attribute %d is not supported by the orion_virt client",
                      (int)a->id);
            return CUDA_ERROR_NOT_SUPPORTED;
        }
    }
    unsigned cx = la->cluster[0] | la->cluster[1] | la->cluster[2];
    if (cx && (!la->cluster[0] || !la->cluster[1] || !la->cluster[2])) return CUDA_ERROR_INVALID_VALUE;
    if (cx && la->cluster[0] * la->cluster[1] * la->cluster[2] == 1) memset(la->cluster, 0, sizeof la->cluster);
    *plain = !la->cluster[0] && !la->policy && !la->cooperative && !la->programmatic && !la->priority;
    return CUDA_SUCCESS;
}

static CUresult launch_ex(const CUlaunchConfig *config, const launch_attrs *la, int plain, CUfunction f,
                          void **kernelParams, void **extra)
{
    unsigned char buf[ORION_MAX_PARAMS];
    const void *data;
    uint32_t size;
    CUresult st = launch_params(&f, kernelParams, extra, buf, &data, &size);
    if (st != CUDA_SUCCESS) return st;
    if (plain)
        return orion_wire_cuLaunchKernel(f, config->gridDimX, config->gridDimY, config->gridDimZ, config->blockDimX,
                                         config->blockDimY, config->blockDimZ, config->sharedMemBytes,
                                         config->hStream, data, size);
    return orion_wire_orionLaunchKernelEx(f, config->gridDimX, config->gridDimY, config->gridDimZ, config->blockDimX,
                                          config->blockDimY, config->blockDimZ, config->sharedMemBytes,
                                          config->hStream, la->cluster[0], la->cluster[1], la->cluster[2],
                                          la->policy, la->cooperative, la->programmatic, la->priority, data, size);
}

ORION_API CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra)
{
    if (!config) return CUDA_ERROR_INVALID_VALUE;
    launch_attrs la;
    int plain;
    CUresult st = read_attrs(config, &la, &plain);
    if (st != CUDA_SUCCESS) return st;
    return launch_ex(config, &la, plain, f, kernelParams, extra);
}

ORION_API CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                                         void **extra)
{
    return cuLaunchKernelEx(config, f, kernelParams, extra);
}

ORION_API CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                             unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                             unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                                             void **kernelParams)
{
    CUlaunchConfig config = {gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream,
                             NULL, 0};
    launch_attrs la = {.cooperative = 1};
    return launch_ex(&config, &la, 0, f, kernelParams, NULL);
}

ORION_API CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                                  unsigned int gridDimZ, unsigned int blockDimX,
                                                  unsigned int blockDimY, unsigned int blockDimZ,
                                                  unsigned int sharedMemBytes, CUstream hStream, void **kernelParams)
{
    return cuLaunchCooperativeKernel(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes,
                                     hStream, kernelParams);
}

/* ---- stream capture ------------------------------------------------------------------------
 * oriond records a captured stream's work into a graph and replays it at cuGraphLaunch; the
 * client asks it whether a stream is capturing. Graph nodes are not remoted: a captured graph
 * is seen whole (its node count only), its dependencies are the stream's order. */

ORION_API CUresult cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    if (!captureStatus) return CUDA_ERROR_INVALID_VALUE;
    cuuint64_t id;
    return orion_wire_cuStreamGetCaptureInfo(hStream, captureStatus, &id);
}

ORION_API CUresult cuStreamIsCapturing_ptsz(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    return cuStreamIsCapturing(hStream, captureStatus);
}

ORION_API CUresult cuStreamGetCaptureInfo_v3(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                             cuuint64_t *id_out, CUgraph *graph_out,
                                             const CUgraphNode **dependencies_out, const CUgraphEdgeData **edgeData_out,
                                             size_t *numDependencies_out)
{
    if (!captureStatus_out) return CUDA_ERROR_INVALID_VALUE;
    cuuint64_t id = 0;
    CUresult st = orion_wire_cuStreamGetCaptureInfo(hStream, captureStatus_out, &id);
    if (st != CUDA_SUCCESS) return st;
    if (id_out) *id_out = id;
    if (graph_out) *graph_out = NULL;  /* the graph under construction is oriond's */
    if (dependencies_out) *dependencies_out = NULL;
    if (edgeData_out) *edgeData_out = NULL;
    if (numDependencies_out) *numDependencies_out = 0;
    return CUDA_SUCCESS;
}

ORION_API CUresult cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                             cuuint64_t *id_out, CUgraph *graph_out,
                                             const CUgraphNode **dependencies_out, size_t *numDependencies_out)
{
    return cuStreamGetCaptureInfo_v3(hStream, captureStatus_out, id_out, graph_out, dependencies_out, NULL,
                                     numDependencies_out);
}

ORION_API CUresult cuGraphGetNodes(CUgraph hGraph, CUgraphNode *nodes, size_t *numNodes)
{
    if (!numNodes) return CUDA_ERROR_INVALID_VALUE;
    if (nodes) return CUDA_ERROR_NOT_SUPPORTED;  /* the nodes themselves are not remoted */
    return orion_wire_cuGraphGetNodeCount(hGraph, numNodes);
}

static __thread CUstreamCaptureMode tl_capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

ORION_API CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode)
{
    if (!mode) return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureMode old = tl_capture_mode;
    tl_capture_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}

/* cuEventRecordWithFlags: flag 0 is cuEventRecord; CU_EVENT_RECORD_EXTERNAL is for graphs. */
ORION_API CUresult cuEventRecordWithFlags(CUevent hEvent, CUstream hStream, unsigned int flags)
{
    if (flags) return CUDA_ERROR_NOT_SUPPORTED;
    return cuEventRecord(hEvent, hStream);
}

ORION_API CUresult cuEventRecordWithFlags_ptsz(CUevent hEvent, CUstream hStream, unsigned int flags)
{
    return cuEventRecordWithFlags(hEvent, hStream, flags);
}

/* ---- globals, attributes, occupancy ---------------------------------------------------------- */

CUresult orion_custom_cuModuleGetGlobal(CUdeviceptr *dptr, size_t *bytes, CUmodule hmod, const char *name)
{
    if (!name) return CUDA_ERROR_INVALID_VALUE;
    size_t n = strnlen(name, (size_t)ORION_MAX_NAME + 1);
    if (n > ORION_MAX_NAME) return CUDA_ERROR_INVALID_VALUE;
    CUdeviceptr p = 0;
    size_t sz = 0;
    CUresult st = orion_wire_cuModuleGetGlobal(&p, &sz, hmod, name, (uint32_t)n);
    if (st != CUDA_SUCCESS) return st;
    if (dptr) *dptr = p;
    if (bytes) *bytes = sz;
    return CUDA_SUCCESS;
}

ORION_API CUresult cuLibraryGetGlobal(CUdeviceptr *dptr, size_t *bytes, CUlibrary library, const char *name)
{
    if (!library) return CUDA_ERROR_INVALID_HANDLE;
    CUmodule mod;
    CUresult st = library_module((orion_library *)library, &mod);
    return st != CUDA_SUCCESS ? st : orion_custom_cuModuleGetGlobal(dptr, bytes, mod, name);
}

ORION_API CUresult cuKernelGetAttribute(int *pi, CUfunction_attribute attrib, CUkernel kernel, CUdevice dev)
{
    (void)dev;  /* the kernel's function in the current context (a kernel is the same on every vGPU) */
    orion_kernel *k = as_kernel(kernel);
    if (!k) return CUDA_ERROR_INVALID_HANDLE;
    CUfunction f;
    CUresult st = kernel_function(k, &f);
    return st != CUDA_SUCCESS ? st : cuFuncGetAttribute(pi, attrib, f);
}

ORION_API CUresult cuKernelSetAttribute(CUfunction_attribute attrib, int val, CUkernel kernel, CUdevice dev)
{
    (void)dev;
    orion_kernel *k = as_kernel(kernel);
    if (!k) return CUDA_ERROR_INVALID_HANDLE;
    CUfunction f;
    CUresult st = kernel_function(k, &f);
    return st != CUDA_SUCCESS ? st : cuFuncSetAttribute(f, attrib, val);
}

CUfunction orion_function(CUfunction f)
{
    orion_kernel *k = nkernel_objs ? as_kernel(f) : NULL;
    CUfunction out = f;
    if (k && kernel_function(k, &out) != CUDA_SUCCESS) return f;
    return out;
}

ORION_API CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, CUfunction func, int blockSize,
                                                               size_t dynamicSMemSize)
{
    return cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(numBlocks, func, blockSize,
                                                                dynamicSMemSize, CU_OCCUPANCY_DEFAULT);
}

ORION_API CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned int *version)
{
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx) ctx = tl_current();
    if (!ctx || !ctx_device(ctx, &(CUdevice){0})) return CUDA_ERROR_INVALID_CONTEXT;
    *version = 3020;  /* contexts are made by cuCtxCreate_v2 / cuDevicePrimaryCtxRetain */
    return CUDA_SUCCESS;
}

static int host_find(const void *p, size_t *n, unsigned *flags);

/* Pointer attributes: oriond answers for device memory of this session; any other pointer is
 * not device memory (cuPointerGetAttributes then reports it as unregistered, as the driver does). */
static size_t pointer_attribute_size(CUpointer_attribute a)
{
    switch (a) {
    case CU_POINTER_ATTRIBUTE_CONTEXT: case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
    case CU_POINTER_ATTRIBUTE_HOST_POINTER: case CU_POINTER_ATTRIBUTE_BUFFER_ID:
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE:
        return 8;
    case CU_POINTER_ATTRIBUTE_P2P_TOKENS:
        return 0;
    default:
        return 4;
    }
}

ORION_API CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr)
{
    if (!data) return CUDA_ERROR_INVALID_VALUE;
    size_t size = pointer_attribute_size(attribute);
    if (!size) return CUDA_ERROR_NOT_SUPPORTED;
    unsigned long long v = 0;
    CUresult st = orion_wire_cuPointerGetAttribute(&v, attribute, ptr);
    if (st != CUDA_SUCCESS) return st;
    if (size == 8) memcpy(data, &v, 8);
    else { uint32_t w = (uint32_t)v; memcpy(data, &w, 4); }
    return CUDA_SUCCESS;
}

ORION_API CUresult cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute *attributes, void **data,
                                          CUdeviceptr ptr)
{
    if (!attributes || !data) return CUDA_ERROR_INVALID_VALUE;
    CUresult first = CUDA_SUCCESS;
    for (unsigned i = 0; i < numAttributes; i++) {
        if (!data[i]) continue;
        size_t size = pointer_attribute_size(attributes[i]);
        CUresult st = size ? cuPointerGetAttribute(data[i], attributes[i], ptr) : CUDA_ERROR_NOT_SUPPORTED;
        if (st == CUDA_ERROR_INVALID_VALUE && host_find((const void *)(uintptr_t)ptr, NULL, NULL)) {
            uint64_t v = 0;  /* page-locked memory of this client */
            if (attributes[i] == CU_POINTER_ATTRIBUTE_MEMORY_TYPE) v = CU_MEMORYTYPE_HOST;
            else if (attributes[i] == CU_POINTER_ATTRIBUTE_HOST_POINTER) v = ptr;
            else if (attributes[i] == CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL) v = (uint64_t)-2;
            if (size == 8) memcpy(data[i], &v, 8);
            else { uint32_t w = (uint32_t)v; memcpy(data[i], &w, 4); }
            continue;
        }
        if (st == CUDA_ERROR_INVALID_VALUE || st == CUDA_ERROR_NOT_SUPPORTED) {
            memset(data[i], 0, size ? size : 8);  /* not device memory of the session: zeroes */
            if (attributes[i] == CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL) { int m = -2; memcpy(data[i], &m, 4); }
        } else if (st != CUDA_SUCCESS && first == CUDA_SUCCESS) {
            first = st;
        }
    }
    return first;
}

CUresult orion_custom_cuMemFree(CUdeviceptr dptr)
{
    if (!dptr) return initialized ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;  /* as the driver: a no-op */
    return orion_wire_cuMemFree(dptr);
}

/* ---- host memory -------------------------------------------------------------------------------
 * Page-locked host memory is the client's own. Over a shared-memory channel of this host or of a
 * container it is shared with oriond: each block is a memfd sealed against shrinking, mapped here
 * and by oriond (orionHostShare, which takes the descriptor from this process), and registered
 * with the GPU there, so a copy from or to it is one DMA and its bytes never cross the ring; an
 * asynchronous copy is sent without waiting. Elsewhere (TCP, a VM, ORION_SHARE_HOST=0, or oriond
 * refused: said once) it is page-aligned memory here and copies go through the transport.
 * Shared memory is also mapped into the device address space (cuMemHostGetDevicePointer). */

#define MAX_HOST 4096
/* p, n: the program's range; base, mapped: the pages shared with oriond (mapped 0: not shared);
 * reg: registered by cuMemHostRegister (the program's memory, never freed here). */
static struct { void *p; size_t n; void *base; size_t mapped; unsigned flags; int reg; } host_allocs[MAX_HOST];
static pthread_mutex_t host_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int shared_count;    /* host_allocs entries shared with oriond (mapped != 0) */
static int share_off;                /* set once sharing is known not to work for this session */

static int host_find(const void *p, size_t *n, unsigned *flags)
{
    int found = 0;
    pthread_mutex_lock(&host_lock);
    for (int i = 0; i < MAX_HOST && !found; i++)
        if (host_allocs[i].p && (const char *)p >= (char *)host_allocs[i].p &&
            (const char *)p < (char *)host_allocs[i].p + host_allocs[i].n) {
            if (n) *n = host_allocs[i].n;
            if (flags) *flags = host_allocs[i].flags;
            found = 1;
        }
    pthread_mutex_unlock(&host_lock);
    return found;
}

/* 1 when [p, p + n) lies in one block shared with oriond. */
static int host_shared(const void *p, size_t n)
{
    if (!shared_count || !n) return 0;
    int found = 0;
    const char *c = p;
    pthread_mutex_lock(&host_lock);
    for (int i = 0, seen = 0; i < MAX_HOST && seen < shared_count && !found; i++) {
        if (!host_allocs[i].mapped) continue;
        seen++;
        const char *b = host_allocs[i].p;
        found = c >= b && n <= host_allocs[i].n && (size_t)(c - b) <= host_allocs[i].n - n;
    }
    pthread_mutex_unlock(&host_lock);
    return found;
}

static int share_wanted(void)
{
    const char *v = getenv("ORION_SHARE_HOST");
    return !share_off && nlinks == 1 && lk->shm && !orion_shm_is_vm(lk->shm) && !(v && !strcmp(v, "0"));
}

/* A block of n bytes (whole pages) shared with oriond, or NULL (the reason said once). */
static void *share_block(size_t n)
{
    int fd = memfd_create("orion-pinned", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        orion_log("INFO", "page-locked memory stays in this process (memfd_create: %s)", strerror(errno));
        share_off = 1;
        return NULL;
    }
    void *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)n) == 0 && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
        p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return NULL;  /* out of memory: the caller's fallback fails the same way or not */
    }
    CUresult st = orion_wire_orionHostShare(fd, (cuuint64_t)(uintptr_t)p, n);
    close(fd);
    if (st != CUDA_SUCCESS) {
        munmap(p, n);
        const char *name = "?";
        cuGetErrorName(st, &name);
        orion_log("INFO", "page-locked memory stays in this process, copies go through %s (oriond refused "
                          "to share it: %s; see its session log)", lk->name, name);
        if (st != CUDA_ERROR_OUT_OF_MEMORY) share_off = 1;
        return NULL;
    }
    static int said;
    if (!said++) orion_log("DEBUG", "page-locked memory is shared with oriond over %s: copies from and to it "
                                    "are one DMA", lk->name);
    return p;
}

ORION_API CUresult cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags)
{
    if (!pp || !bytesize) return CUDA_ERROR_INVALID_VALUE;
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    size_t pages = (bytesize + 4095) & ~(size_t)4095;
    if (pages < bytesize) return CUDA_ERROR_OUT_OF_MEMORY;
    void *p = share_wanted() ? share_block(pages) : NULL;
    size_t mapped = p ? pages : 0;
    if (!p && posix_memalign(&p, 4096, bytesize)) return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&host_lock);
    int slot = -1;
    for (int i = 0; i < MAX_HOST && slot < 0; i++)
        if (!host_allocs[i].p) slot = i;
    if (slot >= 0) {
        host_allocs[slot].p = host_allocs[slot].base = p;
        host_allocs[slot].n = bytesize;
        host_allocs[slot].mapped = mapped;
        host_allocs[slot].flags = Flags;
        host_allocs[slot].reg = 0;
        if (mapped) shared_count++;
    }
    pthread_mutex_unlock(&host_lock);
    if (slot < 0) {
        if (mapped) {
            (void)orion_wire_orionHostUnshare((cuuint64_t)(uintptr_t)p);
            munmap(p, mapped);
        } else {
            free(p);
        }
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *pp = p;
    return CUDA_SUCCESS;
}

ORION_API CUresult cuMemAllocHost_v2(void **pp, size_t bytesize) { return cuMemHostAlloc(pp, bytesize, 0); }

ORION_API CUresult cuMemAllocHost(void **pp, unsigned int bytesize) { return cuMemHostAlloc(pp, bytesize, 0); }

/* Forget the entry that starts at p (a cuMemHostAlloc block, or with reg a registration): 1 when
 * there was one, with its shared pages in *base and *mapped (0: not shared). */
static int host_take(const void *p, int reg, void **base, size_t *mapped)
{
    int found = 0;
    pthread_mutex_lock(&host_lock);
    for (int i = 0; i < MAX_HOST && !found; i++)
        if (p && host_allocs[i].p == p && host_allocs[i].reg == reg) {
            *base = host_allocs[i].base;
            *mapped = host_allocs[i].mapped;
            if (*mapped) shared_count--;
            host_allocs[i].p = NULL;
            host_allocs[i].mapped = 0;
            found = 1;
        }
    pthread_mutex_unlock(&host_lock);
    return found;
}

ORION_API CUresult cuMemFreeHost(void *p)
{
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    void *base;
    size_t mapped;
    if (!host_take(p, 0, &base, &mapped)) return CUDA_ERROR_INVALID_VALUE;
    if (!mapped) {
        free(p);
        return CUDA_SUCCESS;
    }
    /* oriond lets go of its mapping first (its copies are done: calls run in order) */
    CUresult st = orion_wire_orionHostUnshare((cuuint64_t)(uintptr_t)p);
    munmap(p, mapped);
    return st == CUDA_ERROR_DEVICE_UNAVAILABLE || st == CUDA_ERROR_DEINITIALIZED ? CUDA_SUCCESS : st;
}

/* ---- cuMemHostRegister ------------------------------------------------------------------------
 * Memory the program registers is shared with oriond as cuMemHostAlloc's is, in place: where its
 * pages are private anonymous memory of this process (the heap, an anonymous mapping), their bytes
 * are copied into a sealed memfd that is mapped over the same addresses (MAP_FIXED), so pointers
 * into it stay valid, and the memfd goes to oriond. cuMemHostUnregister puts private anonymous
 * pages with the same bytes back. While either runs, another thread must not write those pages (as
 * it must not free them); a child forked while registered shares them. Elsewhere (file-backed or
 * stack pages, pages of another shared block, TCP, a VM) registration is recorded and copies go
 * through the transport. */

/* 1 when every page of [a, b) is private anonymous read-write memory of this process. */
static int anonymous_private(uintptr_t a, uintptr_t b)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f) return 0;
    char line[512];
    uintptr_t at = a;
    while (at < b && fgets(line, sizeof line, f)) {
        unsigned long lo, hi, inode;
        char perms[8], path[256] = "";
        int n = sscanf(line, "%lx-%lx %7s %*s %*s %lu %255s", &lo, &hi, perms, &inode, path);
        if (n < 4 || hi <= at) continue;
        if (lo > at || strcmp(perms, "rw-p") || inode || (path[0] && strcmp(path, "[heap]"))) break;
        at = hi;
    }
    fclose(f);
    return at >= b;
}

/* Private anonymous pages with the bytes of [a, a + len) mapped back over it; 0 on success. */
static int unshare_in_place(void *a, size_t len)
{
    void *tmp = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (tmp == MAP_FAILED) return -1;
    memcpy(tmp, a, len);
    void *q = mmap(a, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (q != MAP_FAILED) memcpy(a, tmp, len);
    munmap(tmp, len);
    return q == MAP_FAILED ? -1 : 0;
}

/* Share the pages [a, a + len) with oriond in place; 0 on success (else they are as they were). */
static int share_in_place(void *a, size_t len)
{
    int fd = memfd_create("orion-registered", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -1;
    void *tmp = MAP_FAILED;
    if (ftruncate(fd, (off_t)len) == 0 && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
        tmp = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (tmp == MAP_FAILED) {
        close(fd);
        return -1;
    }
    memcpy(tmp, a, len);
    void *q = mmap(a, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    munmap(tmp, len);
    if (q == MAP_FAILED) {
        close(fd);
        return -1;
    }
    CUresult st = orion_wire_orionHostShare(fd, (cuuint64_t)(uintptr_t)a, len);
    close(fd);
    if (st == CUDA_SUCCESS) return 0;
    const char *name = "?";
    cuGetErrorName(st, &name);
    orion_log("INFO", "registered host memory stays in this process, copies go through %s (oriond refused to "
                      "share it: %s; see its session log)", lk->name, name);
    if (st != CUDA_ERROR_OUT_OF_MEMORY) share_off = 1;
    (void)unshare_in_place(a, len);
    return -1;
}

ORION_API CUresult cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags)
{
    if (!p || !bytesize || (Flags & ~(unsigned)(CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP |
                                                CU_MEMHOSTREGISTER_IOMEMORY | CU_MEMHOSTREGISTER_READ_ONLY)))
        return CUDA_ERROR_INVALID_VALUE;
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (Flags & CU_MEMHOSTREGISTER_IOMEMORY) {
        orion_log("WARN", "cuMemHostRegister: CU_MEMHOSTREGISTER_IOMEMORY (device memory of another PCI device) is "
                          "not supported by the orion_virt client: CUDA_ERROR_NOT_SUPPORTED");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    uintptr_t lo = (uintptr_t)p, hi = lo + bytesize;
    if (hi < lo) return CUDA_ERROR_INVALID_VALUE;
    uintptr_t a = lo & ~(uintptr_t)4095, b = (hi + 4095) & ~(uintptr_t)4095;
    pthread_mutex_lock(&host_lock);
    int slot = -1, pages_free = 1;
    for (int i = 0; i < MAX_HOST; i++) {
        if (!host_allocs[i].p) {
            if (slot < 0) slot = i;
            continue;
        }
        uintptr_t q = (uintptr_t)host_allocs[i].p, m = (uintptr_t)host_allocs[i].base;
        if (lo < q + host_allocs[i].n && q < hi) {
            pthread_mutex_unlock(&host_lock);
            return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
        }
        if (host_allocs[i].mapped && a < m + host_allocs[i].mapped && m < b) pages_free = 0;
    }
    if (slot < 0) {
        pthread_mutex_unlock(&host_lock);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    /* the slot is taken under the lock, so two registrations of the same pages cannot both share them */
    host_allocs[slot].p = p;
    host_allocs[slot].n = bytesize;
    host_allocs[slot].base = (void *)a;
    host_allocs[slot].mapped = 0;
    host_allocs[slot].flags = Flags;
    host_allocs[slot].reg = 1;
    pthread_mutex_unlock(&host_lock);
    if (!share_wanted()) return CUDA_SUCCESS;
    const char *why = !pages_free ? "its pages hold another shared block"
                      : !anonymous_private(a, b) ? "its pages are not private anonymous memory (a file, the stack)"
                                                 : NULL;
    if (why) {
        static int said;
        if (!said++) orion_log("INFO", "registered host memory at %p stays in this process, copies go through %s: %s",
                               p, lk->name, why);
    } else if (share_in_place((void *)a, b - a) == 0) {
        pthread_mutex_lock(&host_lock);
        host_allocs[slot].mapped = b - a;
        shared_count++;
        pthread_mutex_unlock(&host_lock);
    }
    return CUDA_SUCCESS;
}

ORION_API CUresult cuMemHostRegister(void *p, size_t bytesize, unsigned int Flags)
{
    return cuMemHostRegister_v2(p, bytesize, Flags);
}

ORION_API CUresult cuMemHostUnregister(void *p)
{
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    void *base;
    size_t mapped;
    if (!host_take(p, 1, &base, &mapped)) return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
    if (!mapped) return CUDA_SUCCESS;
    CUresult st = orion_wire_orionHostUnshare((cuuint64_t)(uintptr_t)base);
    if (unshare_in_place(base, mapped))
        orion_log("WARN", "cuMemHostUnregister: the pages at %p stay shared memory (mmap: %s)", base, strerror(errno));
    return st == CUDA_ERROR_DEVICE_UNAVAILABLE || st == CUDA_ERROR_DEINITIALIZED ? CUDA_SUCCESS : st;
}

/* The device's address of page-locked memory: only for memory shared with oriond, which mapped it
 * at the same address where it could (then, as under UVA natively, it is p itself). */
ORION_API CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *pdptr, void *p, unsigned int Flags)
{
    if (!pdptr || !p || Flags) return CUDA_ERROR_INVALID_VALUE;
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!host_shared(p, 1)) {
        static int said;
        if (host_find(p, NULL, NULL) && !said++)
            orion_log("WARN", "cuMemHostGetDevicePointer: page-locked memory has a device address only when it is "
                              "shared with oriond (a shared-memory device of this host or of a container): "
                              "CUDA_ERROR_NOT_SUPPORTED");
        return host_find(p, NULL, NULL) ? CUDA_ERROR_NOT_SUPPORTED : CUDA_ERROR_INVALID_VALUE;
    }
    return orion_wire_orionHostDevicePointer(pdptr, (cuuint64_t)(uintptr_t)p);
}

ORION_API CUresult cuMemHostGetDevicePointer(CUdeviceptr_v1 *pdptr, void *p, unsigned int Flags)
{
    if (!pdptr) return CUDA_ERROR_INVALID_VALUE;
    CUdeviceptr wide = 0;
    CUresult st = cuMemHostGetDevicePointer_v2(&wide, p, Flags);
    if (st != CUDA_SUCCESS) return st;
    if (wide > 0xFFFFFFFFu) return CUDA_ERROR_OUT_OF_MEMORY;  /* the 32-bit API cannot address it */
    *pdptr = (CUdeviceptr_v1)wide;
    return CUDA_SUCCESS;
}

CUresult orion_custom_cuMemcpyHtoD(CUdeviceptr dst, const void *src, size_t n)
{
    if (host_shared(src, n)) return orion_wire_orionMemcpyHtoDShared(dst, (cuuint64_t)(uintptr_t)src, n);
    return orion_wire_cuMemcpyHtoD(dst, src, n);
}

CUresult orion_custom_cuMemcpyDtoH(void *dst, CUdeviceptr src, size_t n)
{
    if (host_shared(dst, n)) return orion_wire_orionMemcpyDtoHShared((cuuint64_t)(uintptr_t)dst, src, n);
    return orion_wire_cuMemcpyDtoH(dst, src, n);
}

CUresult orion_custom_cuMemcpyHtoDAsync(CUdeviceptr dst, const void *src, size_t n, CUstream s)
{
    if (host_shared(src, n)) return orion_wire_orionMemcpyHtoDSharedAsync(dst, (cuuint64_t)(uintptr_t)src, n, s);
    return orion_wire_cuMemcpyHtoDAsync(dst, src, n, s);
}

CUresult orion_custom_cuMemcpyDtoHAsync(void *dst, CUdeviceptr src, size_t n, CUstream s)
{
    if (host_shared(dst, n)) return orion_wire_orionMemcpyDtoHSharedAsync((cuuint64_t)(uintptr_t)dst, src, n, s);
    return orion_wire_cuMemcpyDtoHAsync(dst, src, n, s);
}

ORION_API CUresult cuMemHostGetFlags(unsigned int *pFlags, void *p)
{
    if (!pFlags) return CUDA_ERROR_INVALID_VALUE;
    return host_find(p, NULL, pFlags) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---- stream-ordered allocation -------------------------------------------------------------------
 * Each device has one pool, its default; an allocation from it is a cuMemAlloc in the current
 * context and counts against the vGPU's quota like any other, a free is a cuMemFree (which waits
 * for the device's work, so stream order holds). Pool attributes that tune the pool's caching
 * are kept and reported back; the usage counters are not tracked (refused). */

#define POOL_BASE ((uintptr_t)0x0ea1000000000000ull)
static cuuint64_t pool_threshold[MAX_DEV];
static int pool_reuse_off[MAX_DEV][3];  /* the reuse policies, all on by default */

static int pool_device(CUmemoryPool pool)
{
    uintptr_t v = (uintptr_t)pool;
    return v >= POOL_BASE && v < POOL_BASE + MAX_DEV ? (int)(v - POOL_BASE) : -1;
}

ORION_API CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev)
{
    if (!pool_out) return CUDA_ERROR_INVALID_VALUE;
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    int n = 0;
    CUresult st = cuDeviceGetCount(&n);
    if (st != CUDA_SUCCESS) return st;
    if (dev < 0 || dev >= n || dev >= MAX_DEV) return CUDA_ERROR_INVALID_DEVICE;
    *pool_out = (CUmemoryPool)(POOL_BASE + (uintptr_t)dev);
    return CUDA_SUCCESS;
}

ORION_API CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev) { return cuDeviceGetDefaultMemPool(pool, dev); }

ORION_API CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    (void)hStream;
    return cuMemAlloc_v2(dptr, bytesize);
}

ORION_API CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    return cuMemAllocAsync(dptr, bytesize, hStream);
}

ORION_API CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream)
{
    CUdevice dev;
    int want = pool_device(pool);
    if (want < 0) return CUDA_ERROR_INVALID_VALUE;
    CUresult st = cuCtxGetDevice_v2(&dev, NULL);
    if (st != CUDA_SUCCESS) return st;
    if (dev != want) return CUDA_ERROR_INVALID_VALUE;  /* a pool of another vGPU than the current one */
    return cuMemAllocAsync(dptr, bytesize, hStream);
}

ORION_API CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                                CUstream hStream)
{
    return cuMemAllocFromPoolAsync(dptr, bytesize, pool, hStream);
}

ORION_API CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    (void)hStream;
    return orion_custom_cuMemFree(dptr);
}

ORION_API CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) { return cuMemFreeAsync(dptr, hStream); }

ORION_API CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    int d = pool_device(pool);
    if (d < 0 || !value) return CUDA_ERROR_INVALID_VALUE;
    switch (attr) {
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: pool_threshold[d] = *(cuuint64_t *)value; return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES: pool_reuse_off[d][0] = !*(int *)value; return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC: pool_reuse_off[d][1] = !*(int *)value; return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: pool_reuse_off[d][2] = !*(int *)value; return CUDA_SUCCESS;
    default: return CUDA_ERROR_NOT_SUPPORTED;
    }
}

ORION_API CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    int d = pool_device(pool);
    if (d < 0 || !value) return CUDA_ERROR_INVALID_VALUE;
    switch (attr) {
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *(cuuint64_t *)value = pool_threshold[d]; return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES: *(int *)value = !pool_reuse_off[d][0]; return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC: *(int *)value = !pool_reuse_off[d][1]; return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: *(int *)value = !pool_reuse_off[d][2]; return CUDA_SUCCESS;
    default:
        orion_log("WARN", "cuMemPoolGetAttribute: attribute %d is not tracked by the orion_virt client", (int)attr);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
}

ORION_API CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep)
{
    (void)minBytesToKeep;  /* the pool holds nothing beyond its live allocations */
    return pool_device(pool) < 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

ORION_API CUresult cuOccupancyMaxActiveClusters(int *numClusters, CUfunction func, const CUlaunchConfig *config)
{
    if (!numClusters || !config) return CUDA_ERROR_INVALID_VALUE;
    unsigned cx = 0, cy = 0, cz = 0;
    for (unsigned i = 0; i < config->numAttrs; i++)
        if (config->attrs[i].id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION) {
            cx = config->attrs[i].value.clusterDim.x;
            cy = config->attrs[i].value.clusterDim.y;
            cz = config->attrs[i].value.clusterDim.z;
        }
    return orion_wire_cuOccupancyMaxActiveClusters(numClusters, func, config->gridDimX, config->gridDimY,
                                                   config->gridDimZ, config->blockDimX, config->blockDimY,
                                                   config->blockDimZ, config->sharedMemBytes, cx, cy, cz);
}
