/*
 * client_internal.h: what the files of libtally share and nothing else: the client, its
 * calls and its connection as structs, the bounds, and the functions that cross files,
 * each named client__... (the public API is tally_... in tally.h; everything else in the
 * library is static to its file).
 *
 * The files, by concern: client.c (configuration, open/close, stats, submitting a call),
 * calls.c (building every call, validation, copying answers, results), io.c (the I/O
 * thread: loop, deadline heap, pending list, sent table, answers), conn.c (the connection:
 * endpoints, connect, TLS, HELLO, frames) and status.c (tally_status(): the same
 * connection, driven once on the caller's thread).
 */
#ifndef TALLY_CLIENT_INTERNAL_H
#define TALLY_CLIENT_INTERNAL_H

#include "client/tally.h"
#include "wire/wire.h"

#include <netdb.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

/* ---- Bounds and defaults. ---- */
#define DEFAULT_DEADLINE_MS 2000
#define DEFAULT_CONNECT_TIMEOUT_MS 1000
#define DEFAULT_MAX_INFLIGHT 4096
#define MAX_INFLIGHT_LIMIT (1u << 20)
#define DEFAULT_VOID_DEADLINE_MS 30000 /* accepted, no longer a give-up (tally.h) */
#define VOID_BACKOFF_MIN_MS 100        /* a background void retries after 100 ms, */
#define VOID_BACKOFF_MAX_MS 5000       /* doubling to 5 s, until it is answered */
#define DEFAULT_BACKOFF_MIN_MS 10
#define DEFAULT_BACKOFF_MAX_MS 200
#define DURATION_MAX_MS (24LL * 3600 * 1000) /* any configured or per-call time budget */
#define UNAVAILABLE_STREAK_ROTATE 3 /* "no quorum" answers in a row before trying elsewhere */
#define VOID_NOTFOUND_RETRIES 2     /* a void may overtake its reserve: look again */
#define VOID_NOTFOUND_DELAY_MS 1000
#define READS_PER_WAKE 16 /* bounded read loop: deadlines and writes get their turn */
#define READ_CHUNK 65536
#define WHY_MAX 256
#define WHY_MESSAGE_MAX 150     /* of a server message quoted in a WHY_MAX text */
#define TLS_SERVER_NAME_MAX 253 /* a DNS name; IP literals are shorter */
#define TLS_TEXT_MAX 180        /* a TLS failure's text, quoted in a WHY_MAX text */
#define TLS_WRITE_MAX (1 << 30) /* bytes offered to one SSL_write */

/* One endpoint, parsed (client__endpoint_parse()). */
struct endpoint {
    char text[TALLY_ADDRESS_MAX + 1]; /* as configured: "host:port" */
    char host[TALLY_ADDRESS_MAX + 1]; /* without brackets */
    char port[6];
};

/* ---- Calls. ---- */

enum call_kind {
    CALL_PLAIN = 0,   /* any call but the two below */
    CALL_RESERVE = 1, /* fail-open and the background void apply */
    CALL_BG_VOID = 2, /* the client's own void after an UNAVAILABLE reserve */
};

enum call_where {
    WHERE_NONE = 0,
    WHERE_PENDING = 1, /* in the pending list (or the submit list) */
    WHERE_SENT = 2,    /* in the sent table, awaiting the answer to its seq */
};

/* What a blocking caller waits on; lives on the caller's stack. */
struct waiter {
    pthread_cond_t cond;
    bool done;
};

struct call {
    struct call *prev, *next; /* submit or pending list */
    struct call *hnext;       /* sent table chain */
    size_t heap_idx;
    uint8_t where;      /* enum call_where */
    uint8_t kind;       /* enum call_kind */
    bool resend_unsafe; /* no request id (membership): a lost answer is not retried */
    struct rpc_request req;
    int64_t deadline_at_ms; /* monotonic */
    int64_t next_try_at_ms; /* not sent again before this */
    uint32_t attempts;      /* sends so far */
    uint32_t backoff_step;
    uint32_t notfound_retries;
    char why[WHY_MAX]; /* the last retryable failure, for the UNAVAILABLE message */

    /* Where the answer goes: a callback, or a waiting caller's result and outputs. */
    tally_cb cb;
    void *cb_arg;
    struct waiter *waiter;
    struct tally_result *res;
    void *out;        /* struct tally_account / _reservation / item array */
    uint32_t out_cap; /* items in a list array */
    uint32_t *out_n;
    struct tally_cursor *out_next;
    char *out_account; /* key_get */
    int *out_revoked;
};

/* ---- The client. ---- */

enum conn_state {
    CONN_DOWN = 0,
    CONN_CONNECTING = 1, /* non-blocking connect in progress */
    CONN_TLS = 2,        /* TLS handshake in progress */
    CONN_HELLO = 3,      /* HELLO sent, answer awaited */
    CONN_READY = 4,
};

/* What the TLS socket BIO of one connection uses: the socket, and the errno of its last
 * failed send or recv (0: none) to explain an SSL_ERROR_SYSCALL. */
struct tls_io {
    int fd;
    int err;
};

/* Why a connection failed, as a mask, for the code that drives it (0: otherwise). */
enum conn_fail {
    CONN_FAIL_CONNECT = 1u << 0,   /* socket or TCP connect: the next address may be tried */
    CONN_FAIL_HANDSHAKE = 1u << 1, /* the TLS handshake: so may the next address */
    CONN_FAIL_VERIFY = 1u << 2,    /* with HANDSHAKE: the server's certificate did not verify */
    CONN_FAIL_PROTO = 1u << 3,     /* the server broke the protocol (a frame over the bound) */
    CONN_FAIL_NOMEM = 1u << 4,     /* out of memory */
    CONN_FAIL_CLOSED = 1u << 5,    /* the node ended the stream or reset it (plain TCP) */
};

/*
 * What a connection (conn.c) reports to the code that drives it: the I/O thread (io.c),
 * or tally_status() on its caller's thread (status.c). Each is called with `arg`, the
 * connection's ops_arg, from within a client__conn_*() call of the driver's.
 */
struct conn_ops {
    /* TCP is connected and TLS, when configured, is done: the driver sends HELLO
     * (client__conn_send_hello()). */
    void (*up)(void *arg, int64_t now_ms);
    /* The connection failed (`fail`: enum conn_fail bits; `why` borrowed): the driver
     * closes it (client__conn_close()) before it returns. */
    void (*failed)(void *arg, int64_t now_ms, unsigned fail, const char *why);
    /* One complete frame from the server (`len` bytes of `body`, borrowed until the call
     * returns). The driver may close the connection: the rest of the stream is then void. */
    void (*frame)(void *arg, const uint8_t *body, size_t len, int64_t now_ms);
};

struct conn {
    const struct tally *client; /* its configuration only (read-only after tally_open()) */
    const struct conn_ops *ops;
    void *ops_arg;
    int fd;
    uint8_t state; /* enum conn_state */
    char target[TALLY_ADDRESS_MAX + 1];
    char host[TALLY_ADDRESS_MAX + 1]; /* the target's host: the default TLS server name */
    SSL *ssl;                         /* the TLS session over fd; NULL: plain TCP */
    struct tls_io io;                 /* ssl's BIO state */
    short tls_wait;                   /* CONN_TLS: POLLIN or POLLOUT, as SSL_connect asked */
    bool write_wants_read;            /* the last SSL_write waits for the socket readable */
    bool read_wants_write;            /* the last SSL_read waits for the socket writable */
    struct addrinfo *addrs;           /* the target's addresses (getaddrinfo) */
    struct addrinfo *addr_next;       /* the next one to try */
    int64_t phase_deadline_ms;        /* connect + TLS + HELLO must be done by then */
    int64_t silent_since_ms;          /* first send not followed by any byte back; 0: none */
    uint64_t hello_seq;
    uint64_t epoch; /* +1 at every drop: frames of a dropped connection are not read */
    uint32_t n_sent;
    uint32_t unavailable_streak;
    struct rpc_framer framer;
    uint8_t *chunk; /* READ_CHUNK bytes read at a time; on the heap, since tally_status()
                       runs a connection on the caller's stack, which may be small */
    struct rpc_buf out;
    size_t out_off;
};

/* A grant is forgotten once GRANTED_WAYS later grants land in its set: N grants later,
 * the chance is P(X >= 4) for X Poisson of mean N / GRANTED_SETS, below 1e-6 for N =
 * 1,000 and about 1/2 for N = 60,000. 1 MiB per client. */
#define GRANTED_SETS 16384
#define GRANTED_WAYS 4

struct tally {
    /* Configuration: read-only after tally_open(). */
    struct endpoint endpoints[TALLY_ENDPOINTS_MAX];
    uint32_t n_endpoints;
    char token[TALLY_TOKEN_MAX + 1];
    int64_t deadline_ms, connect_timeout_ms, void_deadline_ms, backoff_min_ms, backoff_max_ms;
    int64_t silence_ms;
    bool fail_open;
    size_t max_frame_bytes;
    uint32_t max_inflight;
    SSL_CTX *tls_ctx; /* NULL: plain TCP; else shared by every connection (thread-safe) */
    char tls_server_name[TLS_SERVER_NAME_MAX + 1]; /* "": each endpoint's host */

    /* Shared with callers, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t room_cond;
    struct call *submit_head, *submit_tail;
    uint32_t n_calls; /* accepted callers' calls not yet finished */
    uint32_t n_room_waiters;
    bool wake_pending;
    bool closing;
    char endpoint_now[TALLY_ADDRESS_MAX + 1];
    int wake_fd;
    pthread_t thread;
    bool thread_started;

    struct tally_stats stats; /* counters updated with atomics */

    /* The I/O thread's own. */
    struct conn conn;
    struct call *pending_head, *pending_tail;
    struct call **heap;
    size_t heap_len, heap_cap;
    struct call **table;
    size_t table_mask;
    uint32_t n_bg;
    uint64_t next_seq;
    uint32_t ep_idx;
    char redirect[TALLY_ADDRESS_MAX + 1];
    uint32_t conn_failures;
    int64_t reconnect_at_ms;
    char conn_why[WHY_MAX]; /* why the last connection failed or ended */
    /* The last server certificate that failed verification, until a handshake succeeds:
     * quoted in UNAVAILABLE messages even when later attempts failed otherwise. */
    char tls_verify_why[WHY_MAX];
    bool tried_once;
    uint64_t rng;
    /* Ids this client saw granted, GRANTED_SETS sets of GRANTED_WAYS by hash, newest
     * first in each set: a later reserve of such an id that ends UNAVAILABLE is a
     * resubmission of a grant its caller holds, so it must not be voided behind the
     * caller's back. */
    uint8_t (*granted)[GRANTED_WAYS][LEDGER_REQUEST_ID_SIZE];
};

/* ---- Small helpers (every file). ---- */

static inline int64_t client__mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void client__stat_add(uint64_t *counter, uint64_t n)
{
    __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

/* Copy `src` into `dst` of `size` bytes, always NUL-terminated (truncating). */
static inline void client__copy_text(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src != NULL ? src : "");
}

static inline bool client__text_fits(const char *s, size_t max)
{
    return s != NULL && strnlen(s, max + 1) <= max;
}

static inline bool client__is_empty(const char *s)
{
    return s == NULL || s[0] == '\0';
}

/* An account or model name: 1..max bytes of [A-Za-z0-9._:/@-]. */
bool client__name_valid(const char *s, size_t max);

/* Fill `n` bytes from getrandom(2). Returns 0 or -1. */
int client__random_bytes(void *buf, size_t n);

/* ---- client.c: submitting calls. ---- */

/* A new call of `op` with a deadline `deadline_ms` from now (0: the default). NULL if out
 * of memory. The caller validated deadline_ms (client__check_call()). */
struct call *client__call_new(struct tally *c, uint8_t op, int64_t deadline_ms);

/* Validate a per-call deadline; also refuses calls made on the I/O thread that would
 * block it. Returns 0 or a positive error code with `msg`. */
int client__check_call(struct tally *c, int64_t deadline_ms, bool blocking, const char **msg);

/* Run `call` (owned; consumed): asynchronously when `cb` is given (0 if queued, cb will
 * run; else -code), else blocking, with the answer in `res` (NULL: a local one). */
int client__run(struct tally *c, struct call *call, struct tally_result *res, tally_cb cb,
                void *arg);

/* ---- calls.c: results and answers. ---- */

/* A result for `call` (NULL: none yet), with its request id and attempts, that starts as
 * an error (TALLY_ERROR, TALLY_EINTERNAL): only client__result_answered() or
 * client__result_fail() decides it, so a path that forgot to never reads as a grant
 * (TALLY_GRANTED is 0, the value of a zeroed result). */
void client__result_init(struct tally_result *r, const struct call *call);

/* Mark `r` as answered by the cluster with `outcome` (GRANTED or DENIED): error 0, no
 * message yet. */
void client__result_answered(struct tally_result *r, int outcome);

/* Mark `r` as ended with `outcome` and error `code`, with a printf-style message. */
void client__result_fail(struct tally_result *r, int outcome, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A refusal found before anything was queued: fill `res` (may be NULL), return -code. */
int client__fail_early(struct tally_result *res, int code, const char *message);

/* The tally error for an RPC failure status that ends a call. */
int client__error_of_status(int status);

/*
 * Whether a successful answer is the answer to `call`: a write's result must carry the
 * call's request id and command type, a reservation the asked id, an account the asked
 * name. Returns 0, or -1 with the mismatch in `why` (`size` bytes): the server answered
 * something else under this sequence number, a protocol error.
 */
int client__answer_matches(const struct call *call, const struct rpc_response *resp, char *why,
                           size_t size);

/* Copy a successful answer's payload into the waiting caller's outputs and `r`. Returns
 * 0, or -1 if the answer does not fit what was asked (more items than asked for). */
int client__answer_payload(struct call *call, const struct rpc_response *resp,
                           struct tally_result *r);

/* A node's STATUS answer as the public struct. */
void client__status_from_wire(const struct rpc_node_status *in, struct tally_node_status *out);

/* ---- io.c: the I/O thread. ---- */

/* Set up the client's connection (DOWN) for the I/O thread. */
void client__io_init(struct tally *c);

/* The I/O thread's body; `arg` is the client. Returns when the client closes. */
void *client__io_main(void *arg);

/* ---- conn.c: endpoints, TLS, the connection. ---- */

/* Parse "host:port" or "[v6]:port" (`len` bytes of `text`, borrowed). Returns 0 or -1. */
int client__endpoint_parse(const char *text, size_t len, struct endpoint *ep);

/* Parse a comma-separated list into `eps` (TALLY_ENDPOINTS_MAX). Returns the count or -1
 * with `why`. */
int client__endpoints_parse(const char *list, struct endpoint *eps, char *why, size_t why_size);

/* Make the TLS socket BIO method once per process. Returns 0 or -1 (out of memory). */
int client__tls_bio_init(void);

/* The reason of the oldest error in this thread's OpenSSL queue (with its detail text, if
 * any) into `out`; empties the queue. */
void client__tls_reason(char *out, size_t size);

/* The name the server certificate must carry when connecting to `host`. */
const char *client__tls_name(const struct tally *c, const char *host);

/*
 * Explain why TLS step `what` ("handshake", "read", "write") failed with SSL_get_error()
 * code `err` on `ssl`, into `why`, and empty the thread's OpenSSL error queue. `name` is
 * the server name verified. Returns whether the server's certificate failed verification.
 */
bool client__tls_failure(SSL *ssl, const struct tls_io *io, int err, const char *what,
                         const char *name, char *why, size_t why_size);

/*
 * A client TLS session over the connected socket `io->fd`, for a server at `host`
 * (borrowed): it will verify the server's certificate against the configured CAs and
 * name. `io` must outlive the session. Returns the session (the caller frees it with
 * SSL_free()) or NULL with why.
 */
SSL *client__tls_session_new(const struct tally *c, const char *host, struct tls_io *io, char *why,
                             size_t why_size);

/* Set up `k` (DOWN, no target) for a client `c` (borrowed; outlives k), reporting to
 * `ops` with `ops_arg`. Free it with client__conn_free(). */
void client__conn_init(struct conn *k, const struct tally *c, const struct conn_ops *ops,
                       void *ops_arg);

/* Close the connection (if any): DOWN, its buffers empty, its epoch one more. The
 * resolved addresses stay (client__conn_forget_addrs()). */
void client__conn_close(struct conn *k);

/* Free the resolved addresses of the target. */
void client__conn_forget_addrs(struct conn *k);

/* Close `k` and free what it holds. */
void client__conn_free(struct conn *k);

/* Make `ep` (borrowed) the target and resolve its addresses. Returns 0, or -1 with why. */
int client__conn_resolve(struct conn *k, const struct endpoint *ep, char *why, size_t why_size);

/* Start a non-blocking connect to the next address of the target (there is one): the
 * connection is CONNECTING, or failed (CONN_FAIL_CONNECT). */
void client__conn_connect(struct conn *k, int64_t now_ms);

/* Send HELLO with `seq` and the client's token: the connection is HELLO, or failed. */
void client__conn_send_hello(struct conn *k, uint64_t seq, int64_t now_ms);

/* Send buffered bytes until the socket would block. Returns 0, or -1 if it failed. */
int client__conn_flush(struct conn *k, int64_t now_ms);

/* What to poll the connection's socket for. */
short client__conn_events(const struct conn *k);

/* Whether OpenSSL holds decrypted bytes not yet read: they are no longer on the socket,
 * so poll() would not report them. */
bool client__conn_buffered(const struct conn *k);

/* Act on what poll() reported for the socket (`revents`, and `buffered` plaintext):
 * finish the connect, drive the TLS handshake, send, read frames. */
void client__conn_io(struct conn *k, short revents, bool buffered, int64_t now_ms);

#endif
