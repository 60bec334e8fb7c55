/* The native client's runtime, as the generated marshalling (calls_gen.c) sees it.
 *
 * One session with oriond per process, opened by cuInit (orion_client.c). Every remoted call is
 * one orion_msg: the generated code packs the fixed request fields little-endian exactly as the
 * wire layout says (orion_virt/wire/calls.py), orion_call sends header, fields and blob, and for
 * a call that waits reads and checks the reply (kind, code, seq, flags, length, blob length)
 * before a body byte lands anywhere.
 */
#ifndef ORION_CLIENT_H
#define ORION_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* cuda.h, with the legacy and per-thread-stream spellings declared under their own names (as
 * NVIDIA's driver is built): every definition here is checked against its declaration there.
 * Everything cuda.h declares is exported; everything else is hidden (-fvisibility=hidden). */
#define __CUDA_API_VERSION_INTERNAL 1
#pragma GCC visibility push(default)
#include <cuda.h>
#pragma GCC visibility pop

#define ORION_API __attribute__((visibility("default")))

/* Frame kinds and flags (docs/protocol.md, "Framing"). */
enum {
    ORION_HELLO = 1, ORION_WELCOME = 2, ORION_CALL = 3, ORION_REPLY = 4, ORION_ERROR = 5,
    ORION_BYE = 6, ORION_RENEW = 7,
};
#define ORION_NO_REPLY 1u
#define ORION_HEADER_SIZE 16u

typedef struct {
    uint16_t code;
    uint8_t flags;          /* ORION_NO_REPLY: sent without waiting */
    const char *name;
    const void *req;        /* fixed request fields, packed */
    uint32_t req_len;
    const void *blob;       /* request blob (the rest of the body) */
    uint64_t blob_len;
    void *resp;             /* fixed reply fields, unpacked by the caller */
    uint32_t resp_len;
    int resp_blob_off;      /* offset in resp of the u64 reply-blob length field, -1: none */
    void *out;              /* where the reply blob goes */
    uint64_t out_cap;
    uint64_t out_len;       /* set by orion_call: reply blob bytes received */
} orion_msg;

/* Send one call; for one that waits, receive and check its reply. Returns the reply's status, or
 * CUDA_ERROR_NOT_INITIALIZED before cuInit, the status of an ERROR frame (the session is over,
 * the reason is printed once), CUDA_ERROR_UNKNOWN for a reply that breaks the protocol and
 * CUDA_ERROR_DEVICE_UNAVAILABLE for a broken connection (both end the session), and
 * CUDA_ERROR_INVALID_VALUE for a message that does not fit the wire. Thread-safe. */
CUresult orion_call(orion_msg *m);

/* The function a handle names: a CUkernel (cuLibraryGetKernel) is resolved to its function in
 * the current context; a CUfunction is itself. */
CUfunction orion_function(CUfunction f);

/* The largest piece of a copy sent in one message: ORION_MAX_COPY (a body's limit), or
 * ORION_COPY_CHUNK_MIB MiB when that is set (at least 1). */
size_t orion_copy_chunk(void);

/* One log line on stderr, "[LEVEL] text" (DEBUG only when ORION_LOG_LEVEL=DEBUG). */
void orion_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Little-endian packing (the wire's byte order, whatever the host's). */
static inline void orion_put_u8(unsigned char *p, uint8_t v) { p[0] = v; }
static inline void orion_put_u16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); }
static inline void orion_put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void orion_put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void orion_put_i32(unsigned char *p, int32_t v) { orion_put_u32(p, (uint32_t)v); }
static inline void orion_put_f32(unsigned char *p, float v) { uint32_t u; memcpy(&u, &v, 4); orion_put_u32(p, u); }
static inline uint8_t orion_get_u8(const unsigned char *p) { return p[0]; }
static inline uint16_t orion_get_u16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t orion_get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline uint64_t orion_get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline int32_t orion_get_i32(const unsigned char *p) { return (int32_t)orion_get_u32(p); }
static inline float orion_get_f32(const unsigned char *p) { uint32_t u = orion_get_u32(p); float f; memcpy(&f, &u, 4); return f; }

#endif
