/* The controller path of the native client: allocation at cuInit, lease renewal, release at exit.
 *
 * The controller's HTTP API (docs/controller-api.md; orion_virt/controller/client.py is the
 * Python side the tools use):
 *   GET /version                              the seeds' two lines when it cannot be reached
 *   POST /api/v1/allocations                  {"vgpu", "gmem_mib", "ratio", "cross_node", "group_id", "owner", "cmdline"}
 *   POST /api/v1/allocations/<id>/renew       every lease/3; the new token goes to oriond (RENEW)
 *   DELETE /api/v1/allocations/<id>           at exit, and on SIGTERM/SIGINT
 * The version, the placement, renewals and releases go to ORION_LOG_LEVEL=DEBUG here (the
 * renewal's lines also to the log file, at its levels); what it says on the screen is said here
 * with the same words.
 *
 * The network is untrusted: a minimal blocking HTTP/1.1 client (connect and read timeouts of
 * ORION_CONNECT_TIMEOUT seconds, headers at most 16 KiB, bodies at most 1 MiB, Content-Length or
 * chunked or up to the close) and a strict JSON reader (RFC 8259 grammar, UTF-8 checked, no
 * recursion: an explicit stack of depth 8, at most 4096 values; strings are unescaped into
 * buffers whose size is checked first).
 */
#define _GNU_SOURCE
#include "orion_ctl.h"
#include "calls_gen.h"
#include "orion_conf.h"
#include "orion_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- request authentication (orion_virt/controller/auth.py) --------------------------------------
 * The allocation is signed with the client key (X-Orion-Auth, HMAC-SHA256 over method, path, time,
 * nonce and the body's SHA-256); renewal and release carry the allocation's secret that the
 * allocation answered (X-Orion-Allocation-Secret). SHA-256 per FIPS 180-4. */
typedef struct { uint32_t h[8]; uint64_t n; unsigned char buf[64]; size_t bl; } sha256_ctx;
static const uint32_t K256[64] = {
    0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,0xd807aa98,0x12835b01,
    0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,
    0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,
    0x06ca6351,0x14292967,0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
    0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,0x19a4c116,0x1e376c08,
    0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,
    0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2};
#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
static void sha256_block(sha256_ctx *c, const unsigned char *p)
{
    uint32_t w[64], a[8];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4*i] << 24 | (uint32_t)p[4*i+1] << 16 | (uint32_t)p[4*i+2] << 8 | p[4*i+3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR32(w[i-15], 7) ^ ROR32(w[i-15], 18) ^ (w[i-15] >> 3);
        uint32_t s1 = ROR32(w[i-2], 17) ^ ROR32(w[i-2], 19) ^ (w[i-2] >> 10);
        w[i] = w[i-16] + s0 + w[i-7] + s1;
    }
    memcpy(a, c->h, sizeof a);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = a[7] + (ROR32(a[4], 6) ^ ROR32(a[4], 11) ^ ROR32(a[4], 25)) + ((a[4] & a[5]) ^ (~a[4] & a[6])) + K256[i] + w[i];
        uint32_t t2 = (ROR32(a[0], 2) ^ ROR32(a[0], 13) ^ ROR32(a[0], 22)) + ((a[0] & a[1]) ^ (a[0] & a[2]) ^ (a[1] & a[2]));
        memmove(a + 1, a, 7 * sizeof a[0]);
        a[4] += t1;
        a[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) c->h[i] += a[i];
}
static void sha256_init(sha256_ctx *c)
{
    static const uint32_t h0[8] = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->n = 0;
    c->bl = 0;
}
static void sha256_update(sha256_ctx *c, const void *data, size_t len)
{
    const unsigned char *p = data;
    c->n += len;
    while (len) {
        size_t take = 64 - c->bl < len ? 64 - c->bl : len;
        memcpy(c->buf + c->bl, p, take);
        c->bl += take, p += take, len -= take;
        if (c->bl == 64) sha256_block(c, c->buf), c->bl = 0;
    }
}
static void sha256_final(sha256_ctx *c, unsigned char out[32])
{
    uint64_t bits = c->n * 8;
    unsigned char pad = 0x80, zero = 0, lenb[8];
    sha256_update(c, &pad, 1);
    while (c->bl != 56) sha256_update(c, &zero, 1);
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(c, lenb, 8);
    for (int i = 0; i < 8; i++) out[4*i] = (unsigned char)(c->h[i] >> 24), out[4*i+1] = (unsigned char)(c->h[i] >> 16),
                                out[4*i+2] = (unsigned char)(c->h[i] >> 8), out[4*i+3] = (unsigned char)c->h[i];
}
static void hex32(const unsigned char d[32], char out[65])
{
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}
static void hmac_sha256(const unsigned char *key, size_t kl, const char *msg, size_t ml, unsigned char out[32])
{
    unsigned char k[64] = {0}, ipad[64], opad[64], inner[32];
    if (kl > 64) {
        sha256_ctx c;
        sha256_init(&c), sha256_update(&c, key, kl), sha256_final(&c, k);
    } else memcpy(k, key, kl);
    for (int i = 0; i < 64; i++) ipad[i] = k[i] ^ 0x36, opad[i] = k[i] ^ 0x5c;
    sha256_ctx c;
    sha256_init(&c), sha256_update(&c, ipad, 64), sha256_update(&c, msg, ml), sha256_final(&c, inner);
    sha256_init(&c), sha256_update(&c, opad, 64), sha256_update(&c, inner, 32), sha256_final(&c, out);
}

static unsigned char client_key[256];
static size_t client_key_len;           /* 0: no client key (the allocation goes unsigned) */
static char alloc_secret[128];          /* the allocation's secret, once allocated */

/* Hex text into client_key (at most its size, stopping at the first non-hex pair). */
static void parse_client_key(const char *text, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i + 1 < n && k < sizeof client_key; i += 2) {
        unsigned v;
        if (text[i] == '\n' || text[i] == ' ' || sscanf(text + i, "%2x", &v) != 1) break;
        client_key[k++] = (unsigned char)v;
    }
    client_key_len = k >= 16 ? k : 0;
}

/* The client key: ORION_CLIENT_KEY_FILE, else /etc/orion/client.key (hex text, as load_key); in a
 * VM without that file, the key orion-virt attach put in the fw_cfg entry (client_key=<hex>). */
static void load_client_key(void)
{
    const char *path = getenv("ORION_CLIENT_KEY_FILE");
    if (!path || !*path) path = "/etc/orion/client.key";
    FILE *f = fopen(path, "r");
    client_key_len = 0;
    char text[600];
    if (!f) {
        char why[300] = "";
        if (orion_conf_fwcfg("client_key", text, sizeof text, why, sizeof why) == 1) {
            parse_client_key(text, strlen(text));
            if (client_key_len) orion_log("DEBUG", "client key from " ORION_FWCFG_ORIGIN " (no %s)", path);
        }
        return;
    }
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    parse_client_key(text, n);
}

/* The auth headers of one request into out ("" when none apply). */
static void auth_headers(const char *method, const char *path, const char *body, char *out, size_t ol)
{
    out[0] = 0;
    if (!strcmp(method, "POST") && !strcmp(path, "/api/v1/allocations")) {
        if (!client_key_len) return;
        unsigned char d[32], nb[12];
        char bodyhex[65], nonce[25], mac[65], msg[600];
        sha256_ctx c;
        sha256_init(&c), sha256_update(&c, body ? body : "", body ? strlen(body) : 0), sha256_final(&c, d);
        hex32(d, bodyhex);
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || read(fd, nb, sizeof nb) != (ssize_t)sizeof nb) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            for (size_t i = 0; i < sizeof nb; i++) nb[i] = (unsigned char)((ts.tv_nsec >> (i % 4 * 8)) ^ getpid() ^ i);
        }
        if (fd >= 0) close(fd);
        for (size_t i = 0; i < sizeof nb; i++) snprintf(nonce + 2 * i, 3, "%02x", nb[i]);
        long t = (long)time(NULL);
        int ml = snprintf(msg, sizeof msg, "orion-auth-v1\n%s\n%s\n%ld\n%s\n%s", method, path, t, nonce, bodyhex);
        if (ml < 0 || (size_t)ml >= sizeof msg) return;
        hmac_sha256(client_key, client_key_len, msg, (size_t)ml, d);
        hex32(d, mac);
        snprintf(out, ol, "X-Orion-Auth: client %ld %s %s\r\n", t, nonce, mac);
    } else if (alloc_secret[0] && !strncmp(path, "/api/v1/allocations/", 20)) {
        snprintf(out, ol, "X-Orion-Allocation-Secret: %s\r\n", alloc_secret);
    }
}

#define HTTP_MAX_HEADER (16u << 10)
#define HTTP_MAX_BODY (1u << 20)
#define J_MAX_DEPTH 8
#define J_MAX_TOKENS 4096u

/* ---- state ---------------------------------------------------------------------------------- */

static char ctl_addr[300];          /* as configured: the messages name it so */
static char ctl_origin[1200];        /* "environment ORION_CONTROLLER", or the client.conf that set it */
static char ctl_host[256];          /* to connect to (scheme, brackets and a final '/' removed) */
static char ctl_port[8];
static char ctl_hostport[300];      /* "host:port" as the messages print it */
static char ctl_hosthdr[300];       /* the Host header: "[v6]:port" */
static char cfg_server[300];        /* ORION_SERVER / [client] server_addr: this client's view of the server */
static double ctl_timeout = 5.0;

static orion_grant grant;
static int obtained;
static atomic_int held;             /* the allocation is ours to give back */
static atomic_int stopping;

/* for the signal handlers: what a release needs, made before they are installed */
static struct sockaddr_storage ctl_sa;
static socklen_t ctl_salen;
static char release_req[700];
static size_t release_len;
static char exit_line[128];
static size_t exit_len;
static pid_t owner_pid;

/* ---- small helpers -------------------------------------------------------------------------- */

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Text from the network, fit for a terminal: control characters become '?'. */
static void sanitize(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f) *s = '?';
}


/* HOST:PORT as orion_virt/config.py's parse_addr accepts it: a
 * non-empty host, a port 1..65535 after the last ':'. Writes "host:port" to out. */
static int valid_addr(const char *text, char *out, size_t cap)
{
    char buf[300];
    if (strlen(text) >= sizeof buf) return -1;
    snprintf(buf, sizeof buf, "%s", text);
    char *t = orion_conf_trim(buf);
    char *colon = strrchr(t, ':');
    if (!colon || colon == t || !colon[1] || strlen(colon + 1) > 5) return -1;
    long port = 0;
    for (const char *p = colon + 1; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        port = port * 10 + (*p - '0');
    }
    if (port < 1 || port > 65535) return -1;
    for (const char *p = t; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f) return -1;
    if (strlen(t) >= cap) return -1;
    snprintf(out, cap, "%s", t);
    return 0;
}

/* ---- configuration: ORION_CONTROLLER (ORION_OCNTROLLER), client.conf -------------------------- */

/* An address from the environment (first of names set), else the client.conf files (home over
 * /etc), else the host agent's fw_cfg entry in a VM (same key): 1 found (value, origin), 0 none,
 * -1 malformed (said). */
static int config_addr(const char *const *names, const char *section, const char *key, char *out, size_t cap,
                       char *origin, size_t ocap)
{
    for (; *names; names++) {
        const char *v = getenv(*names);
        if (!v) continue;
        char tmp[300];
        snprintf(tmp, sizeof tmp, "%s", v);
        if (!*orion_conf_trim(tmp)) continue;
        if (valid_addr(v, out, cap)) {
            orion_log("ERROR", "environment variable %s='%s': expected HOST:PORT", *names, v);
            return -1;
        }
        snprintf(origin, ocap, "environment %s", *names);
        return 1;
    }
    char paths[2][600];
    orion_conf_paths(paths);
    int found = 0;
    for (int i = 0; i < 2; i++) {
        char raw[600];
        if (!paths[i][0] || !orion_conf_lookup(paths[i], section, key, raw, sizeof raw)) continue;
        if (valid_addr(raw, out, cap)) {
            orion_log("ERROR", "%s: [%s] %s = '%s': expected HOST:PORT", paths[i], section, key, raw);
            return -1;
        }
        snprintf(origin, ocap, "%s", paths[i]);
        found = 1;
    }
    if (found) return 1;
    /* lowest: what the host agent gave this VM (orion_virt/hostagent_addrs.py) */
    char raw[600], why[900];
    int r = orion_conf_fwcfg(key, raw, sizeof raw, why, sizeof why);
    if (r == -2) orion_log("DEBUG", "%s", why);
    if (r == -1) {
        orion_log("ERROR", "%s (set %s in client.conf or the environment to override it)", why, key);
        return -1;
    }
    if (r <= 0) return 0;
    if (valid_addr(raw, out, cap)) {
        orion_log("ERROR", "%s (" ORION_FWCFG_ORIGIN "): %s='%.80s': expected HOST:PORT (set %s in client.conf "
                  "or the environment to override it)", why, key, raw, key);
        return -1;
    }
    snprintf(origin, ocap, ORION_FWCFG_ORIGIN);
    return 1;
}

int orion_ctl_configured(void)
{
    static const char *const ctl_names[] = {"ORION_CONTROLLER", "ORION_OCNTROLLER", NULL};
    static const char *const server_names[] = {"ORION_SERVER", NULL};
    int r = config_addr(ctl_names, "controller", "controller_addr", ctl_addr, sizeof ctl_addr, ctl_origin,
                        sizeof ctl_origin);
    if (r <= 0) return r;
    char origin[600];
    int rs = config_addr(server_names, "client", "server_addr", cfg_server, sizeof cfg_server, origin, sizeof origin);
    if (rs < 0) return -1;
    orion_log("DEBUG", "controller %s (from %s)", ctl_addr, ctl_origin);
    if (rs) orion_log("DEBUG", "server %s (from %s)", cfg_server, origin);
    /* where to connect (orion_virt/controller/client.py _split) */
    char a[300];
    snprintf(a, sizeof a, "%s", ctl_addr);
    char *p = a;
    if (!strncmp(p, "http://", 7)) p += 7;
    if (!strncmp(p, "https://", 8)) p += 8;
    size_t n = strlen(p);
    while (n && p[n - 1] == '/') p[--n] = '\0';
    char *colon = strrchr(p, ':');
    if (!colon) {
        orion_log("ERROR", "controller address '%s' is not HOST:PORT", ctl_addr);
        return -1;
    }
    *colon = '\0';
    snprintf(ctl_port, sizeof ctl_port, "%s", colon + 1);
    char *h = p;
    while (*h == '[') h++;
    n = strlen(h);
    while (n && h[n - 1] == ']') h[--n] = '\0';
    if (n >= sizeof ctl_host) {
        orion_log("ERROR", "controller address '%s': host name too long", ctl_addr);
        return -1;
    }
    memcpy(ctl_host, h, n + 1);
    snprintf(ctl_hostport, sizeof ctl_hostport, "%s:%s", ctl_host, ctl_port);
    int v6 = strchr(ctl_host, ':') != NULL;
    snprintf(ctl_hosthdr, sizeof ctl_hosthdr, "%s%s%s:%s", v6 ? "[" : "", ctl_host, v6 ? "]" : "", ctl_port);
    return 1;
}

/* ---- JSON ------------------------------------------------------------------------------------ */

enum { J_OBJ = 1, J_ARR, J_STR, J_NUM, J_LIT };

typedef struct {
    uint8_t type;
    uint32_t start, end;   /* the text [start, end); a string's without its quotes */
    uint32_t next;         /* the index of the token after this value and everything in it */
} jtok;

typedef struct {
    const char *s;
    size_t n;
    jtok *t;
    uint32_t nt;
} jdoc;

static int jfail(char *why, size_t wl, const char *what, size_t at)
{
    snprintf(why, wl, "%s at byte %zu", what, at);
    return -1;
}

static size_t jfail0(char *why, size_t wl, const char *what, size_t at)
{
    jfail(why, wl, what, at);
    return 0;
}

/* The length of the valid UTF-8 sequence at p (at most left bytes), 0 if there is none. */
static size_t utf8_len(const unsigned char *p, size_t left)
{
    unsigned c = p[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;  /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if (left < n || p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A string starting at s[i] == '"': the index of its closing quote, or 0 (why). */
static size_t scan_string(const char *s, size_t n, size_t i, char *why, size_t wl)
{
    for (i++; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') return i;
        if (c < 0x20) return jfail0(why, wl, "a control character in a string", i);
        if (c == '\\') {
            if (i + 1 >= n) break;
            char e = s[i + 1];
            if (e == 'u') {
                if (i + 6 > n) break;
                for (int k = 2; k < 6; k++)
                    if (hexval(s[i + k]) < 0) return jfail0(why, wl, "a bad \\u escape", i);
                i += 6;
            } else if (strchr("\"\\/bfnrt", e) && e) {
                i += 2;
            } else {
                return jfail0(why, wl, "a bad escape", i);
            }
            continue;
        }
        size_t k = utf8_len((const unsigned char *)s + i, n - i);
        if (!k) return jfail0(why, wl, "invalid UTF-8", i);
        i += k;
    }
    return jfail0(why, wl, "an unterminated string", n);
}

static size_t scan_number(const char *s, size_t n, size_t i)
{
#define DIG(j) ((j) < n && s[j] >= '0' && s[j] <= '9')
    size_t j = i;
    if (j < n && s[j] == '-') j++;
    if (j < n && s[j] == '0') j++;
    else if (DIG(j)) while (DIG(j)) j++;
    else return 0;
    if (j < n && s[j] == '.') {
        j++;
        if (!DIG(j)) return 0;
        while (DIG(j)) j++;
    }
    if (j < n && (s[j] == 'e' || s[j] == 'E')) {
        j++;
        if (j < n && (s[j] == '+' || s[j] == '-')) j++;
        if (!DIG(j)) return 0;
        while (DIG(j)) j++;
    }
    return j;
#undef DIG
}

/* Parse the whole of s[0..n) as one JSON value. 0 ok (d->t malloc'd: jdoc_free), -1 (why). */
static int json_parse(jdoc *d, const char *s, size_t n, char *why, size_t wl)
{
    d->s = s;
    d->n = n;
    d->nt = 0;
    d->t = NULL;
    if (n > HTTP_MAX_BODY) return jfail(why, wl, "a document over 1 MiB", 0);
    d->t = malloc(J_MAX_TOKENS * sizeof *d->t);
    if (!d->t) return jfail(why, wl, "out of memory", 0);
    uint32_t stack[J_MAX_DEPTH];
    int depth = 0;
    enum { VALUE, VALUE_OR_CLOSE, KEY, KEY_OR_CLOSE, COLON, COMMA_OR_CLOSE, DONE } st = VALUE;
    size_t i = 0;
    for (;;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
        if (i == n) {
            if (st == DONE) return 0;
            return jfail(why, wl, "the text ends early", i);
        }
        char c = s[i];
        if (st == DONE) return jfail(why, wl, "text after the value", i);
        if (st == COLON) {
            if (c != ':') return jfail(why, wl, "expected ':'", i);
            i++;
            st = VALUE;
            continue;
        }
        if (st == COMMA_OR_CLOSE) {
            uint8_t pt = d->t[stack[depth - 1]].type;
            if (c == ',') {
                i++;
                st = pt == J_OBJ ? KEY : VALUE;
                continue;
            }
            if (!((c == '}' && pt == J_OBJ) || (c == ']' && pt == J_ARR)))
                return jfail(why, wl, "expected ',' or the end of the container", i);
        }
        if (st == COMMA_OR_CLOSE || (st == KEY_OR_CLOSE && c == '}') || (st == VALUE_OR_CLOSE && c == ']')) {
            jtok *p = &d->t[stack[--depth]];
            p->end = (uint32_t)(i + 1);
            p->next = d->nt;
            i++;
            st = depth ? COMMA_OR_CLOSE : DONE;
            continue;
        }
        if (d->nt == J_MAX_TOKENS) return jfail(why, wl, "more than 4096 values", i);
        uint32_t k = d->nt++;
        jtok *t = &d->t[k];
        t->start = (uint32_t)i;
        t->next = k + 1;
        if (st == KEY || st == KEY_OR_CLOSE) {
            if (c != '"') return jfail(why, wl, "expected a string key", i);
            size_t e = scan_string(s, n, i, why, wl);
            if (!e) return -1;
            t->type = J_STR;
            t->start = (uint32_t)(i + 1);
            t->end = (uint32_t)e;
            i = e + 1;
            st = COLON;
            continue;
        }
        if (c == '{' || c == '[') {
            if (depth == J_MAX_DEPTH) return jfail(why, wl, "nested deeper than 8", i);
            t->type = c == '{' ? J_OBJ : J_ARR;
            stack[depth++] = k;
            i++;
            st = c == '{' ? KEY_OR_CLOSE : VALUE_OR_CLOSE;
            continue;
        }
        if (c == '"') {
            size_t e = scan_string(s, n, i, why, wl);
            if (!e) return -1;
            t->type = J_STR;
            t->start = (uint32_t)(i + 1);
            t->end = (uint32_t)e;
            i = e + 1;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t e = scan_number(s, n, i);
            if (!e) return jfail(why, wl, "a malformed number", i);
            t->type = J_NUM;
            t->end = (uint32_t)e;
            i = e;
        } else {
            static const char *const lits[] = {"true", "false", "null"};
            size_t len = 0;
            for (int l = 0; l < 3 && !len; l++) {
                size_t ll = strlen(lits[l]);
                if (n - i >= ll && !memcmp(s + i, lits[l], ll)) len = ll;
            }
            if (!len) return jfail(why, wl, "an unexpected character", i);
            t->type = J_LIT;
            t->end = (uint32_t)(i + len);
            i += len;
        }
        st = depth ? COMMA_OR_CLOSE : DONE;
    }
}

static void jdoc_free(jdoc *d)
{
    free(d->t);
    d->t = NULL;
    d->nt = 0;
}

static void put_utf8(char *o, size_t *k, unsigned cp)
{
    if (cp < 0x80) o[(*k)++] = (char)cp;
    else if (cp < 0x800) {
        o[(*k)++] = (char)(0xC0 | (cp >> 6));
        o[(*k)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        o[(*k)++] = (char)(0xE0 | (cp >> 12));
        o[(*k)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[(*k)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        o[(*k)++] = (char)(0xF0 | (cp >> 18));
        o[(*k)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        o[(*k)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[(*k)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static unsigned hex4(const char *p)
{
    return (unsigned)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

/* The string token k unescaped into out (NUL-terminated): its length, or -1 when k is not a
 * string, holds a NUL, or does not fit cap. */
static long jstr(const jdoc *d, uint32_t k, char *out, size_t cap)
{
    if (k >= d->nt || d->t[k].type != J_STR || !cap) return -1;
    const char *s = d->s;
    size_t i = d->t[k].start, e = d->t[k].end, o = 0;
    while (i < e) {
        if (o + 5 > cap) return -1;  /* room for one code point and the NUL */
        char c = s[i];
        if (c != '\\') {
            out[o++] = c;
            i++;
            continue;
        }
        char x = s[i + 1];
        i += 2;
        switch (x) {
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            unsigned cp = hex4(s + i);
            i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 <= e && s[i] == '\\' && s[i + 1] == 'u') {
                unsigned lo = hex4(s + i + 2);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  /* a lone surrogate */
            if (cp == 0) return -1;
            put_utf8(out, &o, cp);
            break;
        }
        default: out[o++] = x; break;  /* " \ / */
        }
    }
    out[o] = '\0';
    return (long)o;
}

/* Token k as text: a string unescaped, else its JSON text (cut to cap), control characters '?'. */
static void jraw(const jdoc *d, uint32_t k, char *out, size_t cap)
{
    if (jstr(d, k, out, cap) < 0) {
        size_t l = k && k < d->nt ? d->t[k].end - d->t[k].start : 0;
        if (l >= cap) l = cap - 1;
        memcpy(out, d->s + (l ? d->t[k].start : 0), l);
        out[l] = '\0';
    }
    sanitize(out);
}

/* The value of member `key` of object token obj (the last one, as Python's json), 0 if none. */
static uint32_t jget(const jdoc *d, uint32_t obj, const char *key)
{
    if (obj >= d->nt || d->t[obj].type != J_OBJ) return 0;
    uint32_t found = 0;
    char k[128];
    for (uint32_t i = obj + 1; i < d->t[obj].next; i = d->t[i + 1].next)
        if (jstr(d, i, k, sizeof k) >= 0 && !strcmp(k, key)) found = i + 1;
    return found;
}

/* An integer token within [lo, hi]: 0 ok, -1 otherwise (a fraction or exponent included). */
static int jint(const jdoc *d, uint32_t k, long long lo, long long hi, long long *out)
{
    if (!k || k >= d->nt || d->t[k].type != J_NUM) return -1;
    const char *p = d->s + d->t[k].start, *e = d->s + d->t[k].end;
    int neg = *p == '-';
    if (neg) p++;
    if (e - p > 18) return -1;
    long long v = 0;
    for (; p < e; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    if (neg) v = -v;
    if (v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* A number token as a double (locale-independent): 0 ok, -1 not a number. */
static int jnum(const jdoc *d, uint32_t k, double *out)
{
    if (!k || k >= d->nt || d->t[k].type != J_NUM) return -1;
    const char *p = d->s + d->t[k].start, *e = d->s + d->t[k].end;
    int neg = *p == '-';
    if (neg) p++;
    double m = 0;
    long ex = 0;
    for (; p < e && *p >= '0' && *p <= '9'; p++) m = m * 10 + (*p - '0');
    if (p < e && *p == '.')
        for (p++; p < e && *p >= '0' && *p <= '9'; p++) {
            m = m * 10 + (*p - '0');
            ex--;
        }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = *p == '-';
        if (*p == '+' || *p == '-') p++;
        long x = 0;
        for (; p < e; p++) x = x < 100000 ? x * 10 + (*p - '0') : x;
        ex += eneg ? -x : x;
    }
    if (ex > 400) ex = 400;
    if (ex < -400) ex = -400;
    for (; ex > 0; ex--) m *= 10;
    for (; ex < 0; ex++) m /= 10;
    *out = neg ? -m : m;
    return 0;
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

/* Wait for fd (POLLIN/POLLOUT) at most the connect timeout and until deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short ev, double deadline)
{
    for (;;) {
        double left = deadline - mono_s();
        if (left > ctl_timeout) left = ctl_timeout;
        if (left <= 0) return 0;
        struct pollfd p = {fd, ev, 0};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR) continue;
        return r < 0 ? -1 : r > 0;
    }
}

/* Connect to the controller within the timeout: the socket (non-blocking), or -1 (why). With
 * remember, the address that answered is kept for the signal handlers. */
static int ctl_connect(int remember, char *why, size_t wl)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(ctl_host, ctl_port, &hints, &res);
    if (gai) {
        snprintf(why, wl, "%s", gai_strerror(gai));
        return -1;
    }
    double deadline = mono_s() + ctl_timeout;
    int fd = -1, err = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) && errno != EINPROGRESS) {
            err = errno;
        } else {
            int w = wait_fd(fd, POLLOUT, deadline);
            socklen_t el = sizeof err;
            if (w == 0) err = ETIMEDOUT;
            else if (w < 0) err = errno;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el)) err = errno;
            if (!err && remember && ai->ai_addrlen <= sizeof ctl_sa) {
                memcpy(&ctl_sa, ai->ai_addr, ai->ai_addrlen);
                ctl_salen = ai->ai_addrlen;
            }
        }
        if (err) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) snprintf(why, wl, "%s", err == ETIMEDOUT ? "timed out" : strerror(err));
    return fd;
}

static int send_bytes(int fd, const char *p, size_t n, double deadline, char *why, size_t wl)
{
    while (n > 0) {
        int w = wait_fd(fd, POLLOUT, deadline);
        if (w <= 0) {
            snprintf(why, wl, "%s", w == 0 ? "timed out" : strerror(errno));
            return -1;
        }
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            snprintf(why, wl, "%s", strerror(errno));
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* The status line and headers of head[0..n) (n includes the empty line): 0, or -1 (why). */
static int parse_head(const char *head, size_t n, int *status, long long *clen, int *chunked, char *why, size_t wl)
{
    if (n < 14 || memcmp(head, "HTTP/1.", 7) || head[7] < '0' || head[7] > '9' || head[8] != ' ' ||
        head[9] < '1' || head[9] > '5' || head[10] < '0' || head[10] > '9' || head[11] < '0' || head[11] > '9' ||
        (head[12] != ' ' && head[12] != '\r')) {
        snprintf(why, wl, "not an HTTP answer");
        return -1;
    }
    *status = (head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0');
    *clen = -1;
    *chunked = 0;
    const char *p = memchr(head, '\n', n);
    const char *end = head + n;
    for (p = p ? p + 1 : end; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) break;
        size_t len = (size_t)(eol - p);
        if (len && p[len - 1] == '\r') len--;
        if (!len) break;  /* the empty line */
        const char *colon = memchr(p, ':', len);
        if (!colon || colon == p) {
            snprintf(why, wl, "a malformed HTTP header");
            return -1;
        }
        char val[256];
        size_t nl = (size_t)(colon - p), vl = len - nl - 1;
        if (vl >= sizeof val) vl = sizeof val - 1;
        memcpy(val, colon + 1, vl);
        val[vl] = '\0';
        char *v = orion_conf_trim(val);
        if (nl == 14 && !strncasecmp(p, "Content-Length", 14)) {
            long long x = 0;
            if (!*v || strlen(v) > 10) {
                snprintf(why, wl, "a malformed Content-Length");
                return -1;
            }
            for (const char *q = v; *q; q++) {
                if (*q < '0' || *q > '9') {
                    snprintf(why, wl, "a malformed Content-Length");
                    return -1;
                }
                x = x * 10 + (*q - '0');
            }
            if (*clen >= 0 && *clen != x) {
                snprintf(why, wl, "two Content-Length headers that differ");
                return -1;
            }
            if (x > HTTP_MAX_BODY) {
                snprintf(why, wl, "an answer of %lld bytes, over 1 MiB", x);
                return -1;
            }
            *clen = x;
        } else if (nl == 17 && !strncasecmp(p, "Transfer-Encoding", 17)) {
            if (!strcasecmp(v, "chunked")) *chunked = 1;
            else if (strcasecmp(v, "identity")) {
                snprintf(why, wl, "an unsupported transfer encoding");
                return -1;
            }
        }
        p = eol + 1;
    }
    if (*chunked) *clen = -1;
    return 0;
}

/* A chunked body in p[0..n): 1 complete (with out: decoded to out, which may be p, length
 * *outlen), 0 incomplete, -1 malformed. */
static int dechunk(char *p, size_t n, char *out, size_t *outlen)
{
    size_t i = 0, o = 0;
    for (;;) {
        size_t size = 0, digits = 0;
        while (i < n && hexval(p[i]) >= 0) {
            if (++digits > 8) return -1;
            size = size * 16 + (size_t)hexval(p[i++]);
        }
        if (i == n) return 0;
        if (!digits) return -1;
        char *eol = memchr(p + i, '\n', n - i);  /* chunk extensions are skipped */
        if (!eol) return n - i > 256 ? -1 : 0;
        if ((size_t)(eol - (p + i)) > 256) return -1;
        i = (size_t)(eol - p) + 1;
        if (size == 0) {  /* trailers, then the empty line */
            for (;;) {
                eol = memchr(p + i, '\n', n - i);
                if (!eol) return 0;
                size_t len = (size_t)(eol - (p + i));
                i += len + 1;
                if (len == 0 || (len == 1 && p[i - 2] == '\r')) {
                    if (outlen) *outlen = o;
                    return 1;
                }
            }
        }
        if (size > HTTP_MAX_BODY || o + size > HTTP_MAX_BODY) return -1;
        if (n - i < size + 2) return 0;
        if (p[i + size] == '\r' ? p[i + size + 1] != '\n' : p[i + size] != '\n') return -1;
        if (out) memmove(out + o, p + i, size);
        o += size;
        i += size + (p[i + size] == '\r' ? 2 : 1);
    }
}

/* One HTTP/1.1 exchange with the controller. 0: an answer (status, body malloc'd and
 * NUL-terminated); -1: no exchange was possible (why). */
static int http_exchange(const char *method, const char *path, const char *body, int remember, int *status,
                         char **out, size_t *outlen, char *why, size_t wl)
{
    *out = NULL;
    *outlen = 0;
    int fd = ctl_connect(remember, why, wl);
    if (fd < 0) return -1;
    size_t bl = body ? strlen(body) : 0;
    char head[1600], authh[300];
    auth_headers(method, path, body, authh, sizeof authh);
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: %s\r\nAccept-Encoding: identity\r\n"
                      "Content-Type: application/json\r\nAccept: application/json\r\n%s"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      method, path, ctl_hosthdr, authh, bl);
    double deadline = mono_s() + 4 * ctl_timeout;  /* and at most the timeout per wait */
    if (hl < 0 || (size_t)hl >= sizeof head) {
        snprintf(why, wl, "request too long");
        close(fd);
        return -1;
    }
    if (send_bytes(fd, head, (size_t)hl, deadline, why, wl) || send_bytes(fd, body ? body : "", bl, deadline, why, wl)) {
        close(fd);
        return -1;
    }
    size_t cap = 16384, len = 0, hdr = 0, blen = 0;
    const size_t maxcap = HTTP_MAX_HEADER + 2 * (size_t)HTTP_MAX_BODY;  /* chunk framing included */
    long long clen = -1;
    int chunked = 0, rc = -1;
    char *b = malloc(cap + 1);
    if (!b) {
        snprintf(why, wl, "out of memory");
        close(fd);
        return -1;
    }
    for (;;) {
        if (len >= 5 && memcmp(b, "HTTP/", 5)) {
            snprintf(why, wl, "not an HTTP answer");
            break;
        }
        if (!hdr) {
            char *e = memmem(b, len, "\r\n\r\n", 4);
            if (e) {
                hdr = (size_t)(e - b) + 4;
                if (parse_head(b, hdr, status, &clen, &chunked, why, wl)) break;
            } else if (len >= HTTP_MAX_HEADER) {
                snprintf(why, wl, "HTTP headers over 16 KiB");
                break;
            }
        }
        if (hdr) {
            size_t have = len - hdr;
            if (clen >= 0 && have >= (size_t)clen) {
                blen = (size_t)clen;
                rc = 0;
                break;
            }
            if (chunked) {
                int c = dechunk(b + hdr, have, NULL, NULL);
                if (c < 0) {
                    snprintf(why, wl, "a malformed chunked answer");
                    break;
                }
                if (c > 0) {
                    dechunk(b + hdr, have, b + hdr, &blen);
                    rc = 0;
                    break;
                }
            } else if (have > HTTP_MAX_BODY) {
                snprintf(why, wl, "an answer over 1 MiB");
                break;
            }
        }
        if (len == cap) {
            size_t nc = cap * 2 > maxcap ? maxcap : cap * 2;
            char *nb = nc > cap ? realloc(b, nc + 1) : NULL;
            if (!nb) {
                snprintf(why, wl, "an answer over 1 MiB");
                break;
            }
            b = nb;
            cap = nc;
        }
        int w = wait_fd(fd, POLLIN, deadline);
        if (w <= 0) {
            snprintf(why, wl, "%s", w == 0 ? "timed out" : strerror(errno));
            break;
        }
        ssize_t k = recv(fd, b + len, cap - len, 0);
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            snprintf(why, wl, "%s", strerror(errno));
            break;
        }
        if (k == 0) {
            if (!hdr)
                snprintf(why, wl, "%s", len ? "the answer was cut short" : "Remote end closed connection without response");
            else if (clen >= 0 || chunked)
                snprintf(why, wl, "the answer was cut short");
            else {
                blen = len - hdr;  /* the body runs to the close */
                rc = 0;
            }
            break;
        }
        len += (size_t)k;
    }
    close(fd);
    if (rc) {
        free(b);
        return -1;
    }
    memmove(b, b + hdr, blen);
    b[blen] = '\0';
    *out = b;
    *outlen = blen;
    return 0;
}

/* ---- controller calls (orion_virt/controller/client.py request) ------------------------------- */

enum { CTL_OK, CTL_UNREACHABLE, CTL_BAD_REQUEST, CTL_NOT_FOUND, CTL_REFUSED, CTL_ERROR };

typedef struct {
    int kind;
    int status;
    char msg[1400];   /* CTL_UNREACHABLE: "Could not connect to server HOST:PORT: why"; else the error */
    char *body;
    jdoc doc;         /* CTL_OK: the answer (doc.nt == 0: an empty body) */
} ctl_result;

static void ctl_result_free(ctl_result *r)
{
    jdoc_free(&r->doc);
    free(r->body);
    r->body = NULL;
}

static void ctl_request(const char *method, const char *path, const char *body, int remember, ctl_result *r)
{
    memset(r, 0, sizeof *r);
    char why[600];
    size_t n;
    if (http_exchange(method, path, body, remember, &r->status, &r->body, &n, why, sizeof why)) {
        r->kind = CTL_UNREACHABLE;
        snprintf(r->msg, sizeof r->msg, "%s %s: %s", ORION_MSG_CONNECT, ctl_hostport, why);
        return;
    }
    char jwhy[200];
    if (n && json_parse(&r->doc, r->body, n, jwhy, sizeof jwhy)) {
        jdoc_free(&r->doc);
        r->kind = CTL_ERROR;
        snprintf(r->msg, sizeof r->msg, "controller at %s answered HTTP %d with non-JSON", ctl_addr, r->status);
        orion_log("DEBUG", "controller at %s: %s", ctl_addr, jwhy);
        return;
    }
    if (r->status >= 200 && r->status < 300) {
        r->kind = CTL_OK;
        return;
    }
    char msg[1000];
    snprintf(msg, sizeof msg, "HTTP %d", r->status);
    uint32_t e = r->doc.nt ? jget(&r->doc, 0, "error") : 0;
    if (e) jraw(&r->doc, e, msg, sizeof msg);  /* not a string: its JSON text */
    r->kind = r->status == 400 ? CTL_BAD_REQUEST : r->status == 404 ? CTL_NOT_FOUND
            : r->status == 409 ? CTL_REFUSED : CTL_ERROR;
    if (r->kind == CTL_ERROR)
        snprintf(r->msg, sizeof r->msg, "controller at %s: HTTP %d: %s", ctl_addr, r->status, msg);
    else
        snprintf(r->msg, sizeof r->msg, "%s", msg);
}

/* ---- the grant -------------------------------------------------------------------------------- */

static int bad_field(char *why, size_t wl, const char *field, int index)
{
    if (index >= 0) snprintf(why, wl, "malformed allocation from controller: vgpus[%d].%s is missing or invalid", index, field);
    else snprintf(why, wl, "malformed allocation from controller: '%s' is missing or invalid", field);
    return -1;
}

static int printable(const char *s, int allow_space)
{
    for (; *s; s++)
        if ((unsigned char)*s < (allow_space ? 0x20 : 0x21) || (unsigned char)*s > 0x7e) return 0;
    return 1;
}

/* An allocation answer (allocate, renew) into g: the vGPUs grouped by node, each node with its
 * registered address and token. 0, or -1 (why). */
static int grant_parse(const jdoc *d, orion_grant *g, char *why, size_t wl)
{
    memset(g, 0, sizeof *g);
    if (!d->nt || d->t[0].type != J_OBJ) {
        snprintf(why, wl, "malformed allocation from controller: not a JSON object");
        return -1;
    }
    long n = jstr(d, jget(d, 0, "allocation_id"), g->allocation_id, sizeof g->allocation_id);
    if (n < 1 || strspn(g->allocation_id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~") != (size_t)n)
        return bad_field(why, wl, "allocation_id", -1);
    double expires;
    if (jnum(d, jget(d, 0, "lease_seconds"), &g->lease_seconds) || !(g->lease_seconds > 0 && g->lease_seconds < 1e9))
        return bad_field(why, wl, "lease_seconds", -1);
    if (jnum(d, jget(d, 0, "expires_at"), &expires)) return bad_field(why, wl, "expires_at", -1);
    uint32_t vs = jget(d, 0, "vgpus"), tokens = jget(d, 0, "tokens");
    if (!vs || d->t[vs].type != J_ARR) return bad_field(why, wl, "vgpus", -1);
    if (!tokens || d->t[tokens].type != J_OBJ) return bad_field(why, wl, "tokens", -1);
    static const char *const keys[] = {"index", "node_id", "server", "gpu_index", "gpu_uuid", "gpu_name", "slot",
                                       "memory_mib", "ratio", "token"};
    int count = 0;
    for (uint32_t v = vs + 1; v < d->t[vs].next; v = d->t[v].next, count++) {
        if (count == ORION_CTL_MAX_VGPUS) {
            snprintf(why, wl, "malformed allocation from controller: more than %d vGPUs", ORION_CTL_MAX_VGPUS);
            return -1;
        }
        if (d->t[v].type != J_OBJ) return bad_field(why, wl, "(an object)", count);
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
            if (!jget(d, v, keys[k])) return bad_field(why, wl, keys[k], count);
        char node[sizeof g->parts[0].node_id];
        if (jstr(d, jget(d, v, "node_id"), node, sizeof node) < 1) return bad_field(why, wl, "node_id", count);
        long long mem, ratio;
        if (jint(d, jget(d, v, "memory_mib"), 1, 0xFFFFFFFFll, &mem)) return bad_field(why, wl, "memory_mib", count);
        if (jint(d, jget(d, v, "ratio"), 0, 100, &ratio)) return bad_field(why, wl, "ratio", count);
        int p = 0;
        while (p < g->nparts && strcmp(g->parts[p].node_id, node)) p++;
        if (p == g->nparts) {
            if (p == ORION_CTL_MAX_NODES) {
                snprintf(why, wl, "malformed allocation from controller: vGPUs on more than %d nodes",
                         ORION_CTL_MAX_NODES);
                return -1;
            }
            orion_grant_part *gp = &g->parts[g->nparts++];
            char server[sizeof gp->registered];
            if (jstr(d, jget(d, v, "server"), server, sizeof server) < 1 ||
                valid_addr(server, gp->registered, sizeof gp->registered))
                return bad_field(why, wl, "server", count);
            snprintf(gp->node_id, sizeof gp->node_id, "%s", node);
            gp->gmem_mib = (uint32_t)mem;
            uint32_t t = jget(d, tokens, node);
            long tl = jstr(d, t, gp->token, sizeof gp->token);
            if (tl < 1 || !printable(gp->token, 0)) {
                snprintf(why, wl, "malformed allocation from controller: no token for node '%s'", node);
                sanitize(why);
                return -1;
            }
        }
        if (count == 0) g->ratio = (uint32_t)ratio;
        g->parts[p].vgpu_count++;
        g->part_of[count] = (unsigned char)p;
    }
    g->vgpu_count = count;
    return 0;
}

int orion_ctl_parse_grant(const char *body, size_t n, orion_grant *g, char *why, size_t wl)
{
    jdoc d;
    if (json_parse(&d, body, n, why, wl)) {
        jdoc_free(&d);
        return -1;
    }
    int r = grant_parse(&d, g, why, wl);
    jdoc_free(&d);
    return r;
}

/* ---- obtain ----------------------------------------------------------------------------------- */

static int local_only(const char *hostport)
{
    char h[300];
    snprintf(h, sizeof h, "%s", hostport);
    char *colon = strrchr(h, ':');
    if (colon) *colon = '\0';
    char *p = h;
    while (*p == '[') p++;
    size_t n = strlen(p);
    while (n && p[n - 1] == ']') p[--n] = '\0';
    if (!*p || !strcmp(p, "localhost")) return 1;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, p, &a4) == 1) {
        uint32_t x = ntohl(a4.s_addr);
        return (x >> 24) == 127 || x == 0;
    }
    if (inet_pton(AF_INET6, p, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6) || IN6_IS_ADDR_UNSPECIFIED(&a6);
    return 0;
}

static void release_id(const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/allocations/%s", id);
    ctl_result r;
    ctl_request("DELETE", path, NULL, 0, &r);
    if (r.kind == CTL_OK) orion_log("DEBUG", "allocation %s released", id);
    else if (r.kind == CTL_NOT_FOUND)
        orion_log("DEBUG", "allocation %s was already released (its session ended at the server, its lease expired "
                           "or its node went down)", id);
    else orion_log("DEBUG", "could not release allocation %s (its lease will expire): %s", id, r.msg);
    ctl_result_free(&r);
}

static void on_signal(int sig);

static void install_handlers(void)
{
    int sigs[] = {SIGTERM, SIGINT};
    for (size_t i = 0; i < 2; i++) {
        struct sigaction old, sa;
        if (sigaction(sigs[i], NULL, &old)) continue;
        if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) continue;  /* the program's own */
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(sigs[i], &sa, NULL);
    }
}

/* An environment boolean as orion_virt/config.py parse_bool: 1, 0, -1 unset, -2 malformed. */
static int env_bool(const char *name)
{
    const char *v = getenv(name);
    if (!v) return -1;
    char b[32];
    snprintf(b, sizeof b, "%s", v);
    char *t = orion_conf_trim(b);
    if (!*t) return -1;
    if (!strcasecmp(t, "1") || !strcasecmp(t, "true") || !strcasecmp(t, "yes") || !strcasecmp(t, "on")) return 1;
    if (!strcasecmp(t, "0") || !strcasecmp(t, "false") || !strcasecmp(t, "no") || !strcasecmp(t, "off")) return 0;
    return -2;
}

/* ORION_GROUP_ID as a JSON string body (quotes excluded): 0, or -1 when it is too long. */
static int json_escape(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (o + 7 > cap) return -1;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    return 0;
}

/* ``n`` bytes of ``src`` as printable ASCII (anything else becomes '?'), cut to ``limit``
 * characters with "...";
 * out must hold limit + 1. The controller refuses control characters in owner and cmdline. */
static void printable_copy(const char *src, size_t n, char *out, size_t limit)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o < limit; i++) {
        unsigned char c = (unsigned char)src[i];
        out[o++] = c == 0 ? ' ' : (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    if (n > limit) memcpy(out + limit - 3, "...", 3);
    out[o] = '\0';
}

/* The owner (user@host) and command line (/proc/self/cmdline) as JSON string bodies, bounded
 * as the controller requires (model.OWNER_MAX 200, model.CMDLINE_MAX 1000). */
static void who_and_what(char *oesc, size_t ocap, char *cesc, size_t ccap)
{
    char raw[1100], host[256] = "", text[1001];
    struct passwd *pw = getpwuid(geteuid());
    gethostname(host, sizeof host - 1);
    int n = snprintf(raw, sizeof raw, "%s@%s", pw ? pw->pw_name : "?", host);
    printable_copy(raw, n < 0 ? 0 : (size_t)n < sizeof raw ? (size_t)n : sizeof raw - 1, text, 200);
    if (json_escape(text, oesc, ocap)) oesc[0] = 0;
    size_t len = 0;
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t r;
        while (len < sizeof raw && (r = read(fd, raw + len, sizeof raw - len)) > 0) len += (size_t)r;
        close(fd);
    }
    while (len && raw[len - 1] == 0) len--;
    printable_copy(raw, len, text, 1000);
    if (json_escape(text, cesc, ccap)) cesc[0] = 0;
}

const orion_grant *orion_ctl_obtain(long vgpu, double timeout)
{
    ctl_timeout = timeout > 0 ? timeout : 5.0;
    char where[1600];
    snprintf(where, sizeof where, "Orion Controller %s (from %s)", ctl_addr, ctl_origin);

    /* the request, as orion_virt/config.py reads the environment */
    int cross = env_bool("ORION_CROSS_NODE");
    if (cross == -2) {
        orion_log("ERROR", "environment variable ORION_CROSS_NODE='%s': expected true/false, got '%s'",
                  getenv("ORION_CROSS_NODE"), getenv("ORION_CROSS_NODE"));
        return NULL;
    }
    char gmem[24] = "null", ratio[24] = "null";
    const char *gv = getenv("ORION_GMEM"), *rv = getenv("ORION_RATIO");
    long gm = 0;
    if (gv && *gv && orion_parse_mib(gv, &gm) == 0) snprintf(gmem, sizeof gmem, "%ld", gm);  /* refused by open_session otherwise */
    long rn = rv && *rv ? strtol(rv, NULL, 10) : -1;
    if (rn >= 0) snprintf(ratio, sizeof ratio, "%ld", rn < 1 ? 1 : rn);
    if (cross == 1 && rn >= 0 && (rn < 1 ? 1 : rn) != 100) {
        orion_log("ERROR", "ORION_CROSS_NODE=1 requires ORION_RATIO=100");
        return NULL;
    }
    char group[1001] = "", gesc[6100];
    const char *gid = getenv("ORION_GROUP_ID");
    if (gid) snprintf(group, sizeof group, "%s", gid);
    if ((gid && strlen(gid) >= sizeof group) || json_escape(orion_conf_trim(group), gesc, sizeof gesc)) {
        orion_log("ERROR", "ORION_GROUP_ID is longer than 1000 bytes");
        return NULL;
    }

    /* 1. the version */
    ctl_result r;
    ctl_request("GET", "/version", NULL, 1, &r);
    if (r.kind == CTL_OK && (!jget(&r.doc, 0, "data_version") || !jget(&r.doc, 0, "api_version"))) {
        r.kind = CTL_ERROR;
        snprintf(r.msg, sizeof r.msg, "%s did not answer version information", ctl_addr);
    }
    if (r.kind == CTL_UNREACHABLE) {
        const char *tail = r.msg;  /* the part after the last ": " */
        for (const char *p = r.msg; (p = strstr(p, ": ")); p += 2) tail = p + 2;
        orion_log("DEBUG", "%s unreachable: %s", where, r.msg);
        orion_log("ERROR", "%s", ORION_MSG_CONNECT);
        orion_log("ERROR", "%s", ORION_MSG_VERSION);
        orion_log("ERROR", "%s: %s", where, tail);
        ctl_result_free(&r);
        return NULL;
    }
    if (r.kind != CTL_OK) {
        orion_log("DEBUG", "%s answered no version: %s", where, r.msg);
        orion_log("ERROR", "%s", ORION_MSG_VERSION);
        orion_log("ERROR", "%s: %s", where, r.msg);
        ctl_result_free(&r);
        return NULL;
    }
    char dv[64], av[64];
    jraw(&r.doc, jget(&r.doc, 0, "data_version"), dv, sizeof dv);
    jraw(&r.doc, jget(&r.doc, 0, "api_version"), av, sizeof av);
    orion_log("DEBUG", "%s: data_version=%s,api_version=%s", where, dv, av);
    ctl_result_free(&r);

    /* 2. the allocation */
    char body[6400 + 1500 + 7000], oesc[1500], cesc[7000];
    who_and_what(oesc, sizeof oesc, cesc, sizeof cesc);
    snprintf(body, sizeof body,
             "{\"vgpu\": %ld, \"gmem_mib\": %s, \"ratio\": %s, \"cross_node\": %s, \"group_id\": \"%s\", "
             "\"owner\": \"%s\", \"cmdline\": \"%s\"}",
             vgpu, gmem, ratio, cross == 1 ? "true" : "false", gesc, oesc, cesc);
    load_client_key();
    ctl_request("POST", "/api/v1/allocations", body, 1, &r);
    static orion_grant g;
    if (r.kind == CTL_OK) {
        char why[400];
        if (grant_parse(&r.doc, &g, why, sizeof why)) {
            r.kind = CTL_ERROR;
            snprintf(r.msg, sizeof r.msg, "%s", why);
        } else {
            long sl = jstr(&r.doc, jget(&r.doc, 0, "secret"), alloc_secret, sizeof alloc_secret);
            if (sl < 1 || strspn(alloc_secret, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != (size_t)sl)
                alloc_secret[0] = 0;  /* an older controller: renew and release unauthenticated */
        }
    }
    switch (r.kind) {
    case CTL_OK: break;
    case CTL_UNREACHABLE:
        orion_log("DEBUG", "allocation failed: %s", r.msg);
        orion_log("ERROR", "%s", ORION_MSG_CONNECT);
        orion_log("ERROR", "%s: allocation failed: %s", where, r.msg);
        ctl_result_free(&r);
        return NULL;
    case CTL_REFUSED:
        orion_log("DEBUG", "allocation refused: %s", r.msg);
        orion_log("ERROR", "Orion Controller %s refused %ld vGPU(s): %s", ctl_addr, vgpu, r.msg);
        ctl_result_free(&r);
        return NULL;
    default:
        orion_log("DEBUG", "allocation failed: %s", r.msg);
        orion_log("ERROR", "Orion Controller %s could not allocate %ld vGPU(s): %s", ctl_addr, vgpu, r.msg);
        ctl_result_free(&r);
        return NULL;
    }
    ctl_result_free(&r);
    orion_log("DEBUG", "allocation %s: lease %.0fs; %d vGPU(s) on %d node(s), %u%%", g.allocation_id,
              g.lease_seconds, g.vgpu_count, g.nparts, g.ratio);
    if (!g.vgpu_count) {
        release_id(g.allocation_id);
        orion_log("ERROR", "the Orion Controller allocated no vGPU");
        return NULL;
    }
    /* a node registered with a loopback or
     * unspecified address is reached through this client's own view of the server, if it has one;
     * with several nodes, that view's host with each node's own port */
    for (int p = 0; p < g.nparts; p++) {
        orion_grant_part *gp = &g.parts[p];
        _Static_assert(sizeof gp->server == sizeof gp->registered, "server and registered hold the same");
        memcpy(gp->server, gp->registered, sizeof gp->server);
        if (local_only(gp->registered) && cfg_server[0]) {
            if (g.nparts > 1) {
                const char *hc = strrchr(cfg_server, ':'), *pc = strrchr(gp->registered, ':');
                int hl = hc ? (int)(hc - cfg_server) : (int)strlen(cfg_server);
                snprintf(gp->server, sizeof gp->server, "%.*s%s", hl, cfg_server, pc ? pc : "");
            } else {
                snprintf(gp->server, sizeof gp->server, "%s", cfg_server);
            }
            orion_log("DEBUG", "node %s registered as %s (local to its host); using %s", gp->node_id,
                      gp->registered, gp->server);
        }
        orion_log("DEBUG", "node %s (%s): %d vGPU(s), %u MiB", gp->node_id, gp->server, gp->vgpu_count, gp->gmem_mib);
    }
    if (g.nparts > 1) {
        char list[1200] = "";
        size_t o = 0;
        for (int p = 0; p < g.nparts && o < sizeof list; p++)
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%s (%s): %d vGPU(s)", p ? ", " : "",
                                  g.parts[p].node_id, g.parts[p].server, g.parts[p].vgpu_count);
        char line[1300];
        snprintf(line, sizeof line, "cross-node allocation: %s", list);
        orion_log_file("INFO", line);
    }

    grant = g;
    owner_pid = getpid();
    int rl = snprintf(release_req, sizeof release_req,
                      "DELETE /api/v1/allocations/%s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n"
                      "X-Orion-Allocation-Secret: %s\r\nConnection: close\r\n\r\n", grant.allocation_id,
                      ctl_hosthdr, alloc_secret);
    release_len = rl > 0 && (size_t)rl < sizeof release_req ? (size_t)rl : 0;
    int el = snprintf(exit_line, sizeof exit_line, "[INFO] " ORION_MSG_EXIT_WITH "\n", grant.allocation_id);
    exit_len = el > 0 && (size_t)el < sizeof exit_line ? (size_t)el : 0;
    obtained = 1;
    atomic_store(&held, 1);
    install_handlers();
    return &grant;
}

int orion_ctl_obtained(void) { return obtained; }

/* ---- renewal ---------------------------------------------------------------------------------- */

static pthread_mutex_t renew_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t renew_cv;
static pthread_t renew_thread;
static int renew_started, renew_done;

int orion_ctl_stopping(void) { return atomic_load(&stopping); }

/* A renewal line: in the log file at `level` (tests and users grep "allocation ID lost:"), and
 * on the screen with ORION_LOG_LEVEL=DEBUG (a file_log_level of DEBUG gets it twice). */
static void renew_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void renew_log(const char *level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    orion_log_file(level, line);
    orion_log("DEBUG", "%s", line);
}

/* One renewal: 1 go on, 0 the allocation is gone. */
static int renew_once(const char *path, int *failing, double interval)
{
    static orion_grant fresh;  /* this thread's only */
    ctl_result r;
    ctl_request("POST", path, "{}", 0, &r);
    char why[400];
    if (r.kind == CTL_OK && grant_parse(&r.doc, &fresh, why, sizeof why)) {
        r.kind = CTL_ERROR;
        snprintf(r.msg, sizeof r.msg, "%s", why);
    }
    if (r.kind == CTL_NOT_FOUND) {
        renew_log("ERROR", "allocation %s lost: %s", grant.allocation_id, r.msg);
        if (!orion_ctl_stopping()) {
            atomic_store(&held, 0);  /* nothing left to give back */
            orion_log("ERROR", "Orion vGPU allocation %s was released by the Orion Controller (%s); CUDA calls "
                      "fail from now on", grant.allocation_id, r.msg);
            orion_session_lost();
        }
        ctl_result_free(&r);
        return 0;
    }
    if (r.kind != CTL_OK) {
        if (!*failing)
            renew_log("WARNING", "could not renew allocation %s (retrying every %.1fs): %s", grant.allocation_id,
                      interval, r.msg);
        *failing = 1;
        ctl_result_free(&r);
        return 1;
    }
    ctl_result_free(&r);
    if (*failing) renew_log("INFO", "lease renewal of %s works again", grant.allocation_id);
    *failing = 0;
    for (int p = 0; p < grant.nparts; p++) {
        const char *token = NULL;
        for (int q = 0; q < fresh.nparts && !token; q++)
            if (!strcmp(fresh.parts[q].node_id, grant.parts[p].node_id)) token = fresh.parts[q].token;
        if (!token) {
            orion_log("DEBUG", "the renewed allocation %s names no token for node %s", grant.allocation_id,
                      grant.parts[p].node_id);
            continue;
        }
        if (orion_send_renew(p, token, (uint32_t)strlen(token)) && !orion_ctl_stopping())
            renew_log("WARNING", "could not pass the renewed token to node %s", grant.parts[p].node_id);
    }
    return 1;
}

static void *renew_main(void *arg)
{
    (void)arg;
    double interval = grant.lease_seconds / 3;
    if (interval < 0.2) interval = 0.2;
    char path[128];
    snprintf(path, sizeof path, "/api/v1/allocations/%s/renew", grant.allocation_id);
    int failing = 0;
    pthread_mutex_lock(&renew_mu);
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double at = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + interval;
        ts.tv_sec = (time_t)at;
        ts.tv_nsec = (long)((at - (double)ts.tv_sec) * 1e9);
        while (!atomic_load(&stopping) && pthread_cond_timedwait(&renew_cv, &renew_mu, &ts) != ETIMEDOUT) {
        }
        if (atomic_load(&stopping)) break;
        pthread_mutex_unlock(&renew_mu);
        int go_on = renew_once(path, &failing, interval);
        pthread_mutex_lock(&renew_mu);
        if (!go_on) break;
    }
    renew_done = 1;
    pthread_cond_broadcast(&renew_cv);
    pthread_mutex_unlock(&renew_mu);
    return NULL;
}

void orion_ctl_start_renewal(void)
{
    if (!obtained || renew_started) return;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&renew_cv, &ca);
    pthread_condattr_destroy(&ca);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);  /* signals go to the program's threads */
    if (!pthread_create(&renew_thread, NULL, renew_main, NULL)) renew_started = 1;
    else orion_log("WARN", "could not start the lease renewal thread: the lease of allocation %s will expire",
                   grant.allocation_id);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void orion_ctl_stop(void)
{
    atomic_store(&stopping, 1);
    if (!renew_started) return;
    renew_started = 0;
    pthread_mutex_lock(&renew_mu);
    pthread_cond_broadcast(&renew_cv);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += 1;  /* a renewal in flight may take the connect timeout: wait one second for it */
    while (!renew_done && pthread_cond_timedwait(&renew_cv, &renew_mu, &ts) != ETIMEDOUT) {
    }
    int done = renew_done;
    pthread_mutex_unlock(&renew_mu);
    if (done) pthread_join(renew_thread, NULL);
    else pthread_detach(renew_thread);
}

/* ---- release ---------------------------------------------------------------------------------- */

void orion_ctl_release(void)
{
    if (!obtained || getpid() != owner_pid || !atomic_exchange(&held, 0)) return;
    release_id(grant.allocation_id);
}

/* The release from a signal handler: only async-signal-safe calls, on what obtain prepared. */
static void release_signal_safe(void)
{
    if (!release_len || !ctl_salen) return;
    int fd = socket(ctl_sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return;
    int ms = (int)(ctl_timeout * 1000) + 1;
    struct pollfd p = {fd, POLLOUT, 0};
    if (connect(fd, (struct sockaddr *)&ctl_sa, ctl_salen) && errno != EINPROGRESS) goto out;
    if (poll(&p, 1, ms) <= 0) goto out;
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) || err) goto out;
    for (size_t off = 0; off < release_len;) {
        if (poll(&p, 1, ms) <= 0) goto out;
        ssize_t w = send(fd, release_req + off, release_len - off, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) goto out;
        if (w > 0) off += (size_t)w;
    }
    /* the controller has released when it answers: wait for the answer (or the close) */
    p.events = POLLIN;
    char sink[512];
    for (int i = 0; i < 64 && poll(&p, 1, ms) > 0; i++) {
        ssize_t k = recv(fd, sink, sizeof sink, 0);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) break;
    }
out:
    close(fd);
}

static void on_signal(int sig)
{
    int saved = errno;
    if (getpid() == owner_pid && atomic_exchange(&held, 0)) {
        release_signal_safe();
        if (exit_len) {
            ssize_t w = write(STDERR_FILENO, exit_line, exit_len);
            (void)w;
        }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
    errno = saved;
    raise(sig);  /* delivered when the handler returns: the default action, as without us */
}
