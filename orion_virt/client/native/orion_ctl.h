/* The controller path of the native client (orion_ctl.c): the controller's HTTP API
 * (docs/controller-api.md), in C with libc and pthreads only.
 *
 * With ORION_CONTROLLER (or the seeds' ORION_OCNTROLLER, or [controller] controller_addr of
 * ~/.orion/client.conf or /etc/orion/client.conf) set, cuInit asks the Orion Controller for the
 * vGPUs (GET /version, then POST /api/v1/allocations), opens the session with the server and the
 * token it names, renews the lease every lease/3 (passing each renewed token to oriond as a RENEW
 * frame) and gives the vGPUs back at exit (atexit, and SIGTERM/SIGINT when the program has no
 * handler of its own). Every byte from the network is untrusted: bounded HTTP headers (16 KiB)
 * and bodies (1 MiB), a JSON reader without recursion (depth 8, 4096 values), every string
 * length checked before it is copied.
 */
#ifndef ORION_CTL_H
#define ORION_CTL_H

#include <stddef.h>
#include <stdint.h>

/* The seeds' lines (orion_virt/compat.py MSG_CONNECT, MSG_VERSION), byte for byte; a test pins them. */
#define ORION_MSG_CONNECT "Could not connect to server"
#define ORION_MSG_VERSION "Fail to get version information from Orion Controller."

#define ORION_CTL_MAX_TOKEN 16384u   /* a token is under 1 KiB for 32 vGPUs */
#define ORION_CTL_MAX_ID 39u         /* allocation ids are UUIDs (36 characters) */

#define ORION_CTL_MAX_NODES 8         /* nodes of one cross-node allocation */
#define ORION_CTL_MAX_VGPUS 64

/* The vGPUs of a grant on one node: where to connect and the token to present there. */
typedef struct {
    char node_id[257];
    char server[300];                /* HOST:PORT to connect to, after the server_for rule */
    char registered[300];            /* the address the node registered */
    char token[ORION_CTL_MAX_TOKEN + 1];
    int vgpu_count;
    uint32_t gmem_mib;               /* of its first vGPU, as HELLO carries it */
} orion_grant_part;

/* What the controller granted: the vGPUs in the allocation's order, grouped by node (parts in
 * the order of each node's first vGPU; more than one only for ORION_CROSS_NODE=1). */
typedef struct {
    char allocation_id[ORION_CTL_MAX_ID + 1];
    double lease_seconds;
    int vgpu_count;
    uint32_t ratio;
    int nparts;
    orion_grant_part parts[ORION_CTL_MAX_NODES];
    unsigned char part_of[ORION_CTL_MAX_VGPUS];   /* vGPU i's part */
} orion_grant;

/* Whether a controller is configured: 1 yes, 0 no (direct mode), -1 a malformed address (said). */
int orion_ctl_configured(void);

/* Ask the controller for ORION_VGPU vGPUs (ORION_GMEM, ORION_RATIO, ORION_CROSS_NODE,
 * ORION_GROUP_ID), waiting at most timeout seconds per step.
 * The grant, or NULL with the reason printed (the seeds' lines for an unreachable controller).
 * After a grant, SIGTERM/SIGINT handlers are installed where the program has none. */
const orion_grant *orion_ctl_obtain(long vgpu, double timeout);

/* The renewal thread: renews every lease/3 and passes each renewed token to orion_send_renew. */
void orion_ctl_start_renewal(void);
/* Stop renewing (bounded wait for the thread); from here on orion_ctl_stopping() is true. */
void orion_ctl_stop(void);
int orion_ctl_stopping(void);
/* Give the allocation back (once; errors are logged: the lease expires anyway). */
void orion_ctl_release(void);
/* 1 once a grant was accepted (the exit line then names its allocation id). */
int orion_ctl_obtained(void);

/* Provided by orion_client.c, called from the renewal thread. */
/* Send a RENEW frame (body: the renewed token) to the session of grant part ``part`` under the
 * call lock: 0 sent, -1 not sent (no open session, or stopping). */
int orion_send_renew(int part, const void *body, uint32_t len);
/* The controller no longer holds the allocation: say BYE and end the session (calls then return
 * CUDA_ERROR_DEINITIALIZED). */
void orion_session_lost(void);

/* For tests (tests/integration/test_native_controller.py builds this file with a driver): check
 * text as a controller answer to an allocation. 0 ok (the grant filled), -1 malformed (why). */
int orion_ctl_parse_grant(const char *body, size_t n, orion_grant *g, char *why, size_t wl);

#endif
