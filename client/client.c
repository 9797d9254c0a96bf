/*
 * client.c: libtally, the client side of tally's wire protocol (see tally.h, wire/wire.h).
 *
 * One idea shapes this file: a single I/O thread owns everything that touches the network
 * (the socket, the frame reader, the sequence numbers, the table of requests awaiting an
 * answer, the retry timers), so none of that needs a lock. Callers of any thread only
 * build a `struct call` (validated and fully copied), append it to a submit list under the
 * client's mutex and wake the I/O thread through an eventfd. The I/O thread moves calls
 * through three places: the pending list (waiting for a connection or a retry timer), the
 * sent table (keyed by the seq of their last send) and, always, a deadline heap. A call
 * leaves the client exactly once, through finish(): with the cluster's answer, or with
 * UNAVAILABLE when the heap says its deadline passed. Blocking calls are the asynchronous
 * ones plus a condition variable.
 *
 * Retrying is safe because writes carry a request id that the ledger deduplicates: on a
 * lost connection every sent call simply goes back to the pending list and is sent again
 * (new seq, same id) on the next connection. NOT_LEADER answers move the connection to the
 * leader they name; "no quorum" answers back off and, when they repeat, rotate to another
 * endpoint. A reserve that ends UNAVAILABLE after it was sent at least once is followed by
 * a background void of its id, with a longer deadline of its own.
 *
 * tally_status() is the one call that does not go through the I/O thread: it asks one
 * named node over a short-lived connection of its own, on the caller's thread.
 *
 * TLS, when configured, is OpenSSL driven over the same non-blocking socket: a connection
 * goes CONNECTING -> TLS (handshake) -> HELLO -> READY, and every SSL_connect, SSL_read
 * and SSL_write that would block says which way (WANT_READ, WANT_WRITE) it waits, which
 * is what the loop polls for next. Two things differ from plain TCP: a write that waited
 * must be repeated with the same bytes (they stay at the head of the output buffer, which
 * may move and grow meanwhile), and bytes OpenSSL already decrypted are not on the socket
 * any more, so the loop does not sleep while SSL_pending() says some are left. The socket
 * BIO is our own so that a write to a dead peer cannot raise SIGPIPE in the application.
 */
#define _GNU_SOURCE
#include "client/tally.h"
#include "wire/wire.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The public header mirrors the ledger's and the protocol's numbers; keep them equal. */
_Static_assert(TALLY_NAME_MAX == LEDGER_NAME_MAX, "name bound");
_Static_assert(TALLY_MODEL_MAX == LEDGER_MODEL_MAX, "model bound");
_Static_assert(TALLY_ACTOR_MAX == LEDGER_ACTOR_MAX, "actor bound");
_Static_assert(TALLY_METADATA_MAX == LEDGER_METADATA_MAX, "metadata bound");
_Static_assert(TALLY_KEY_HASH_SIZE == LEDGER_KEY_HASH_SIZE, "key hash size");
_Static_assert(TALLY_REQUEST_ID_SIZE == LEDGER_REQUEST_ID_SIZE, "request id size");
_Static_assert(TALLY_TOKEN_MAX == RPC_TOKEN_MAX, "token bound");
_Static_assert(TALLY_ADDRESS_MAX == RPC_ADDRESS_MAX, "address bound");
_Static_assert(TALLY_LIST_MAX == RPC_LIST_MAX, "list bound");
_Static_assert(TALLY_MEMBERS_MAX == RPC_MEMBERS_MAX, "members bound");
_Static_assert(TALLY_FRAME_DEFAULT == RPC_FRAME_MAX, "frame default");
_Static_assert(TALLY_FRAME_LIMIT == RPC_FRAME_LIMIT, "frame limit");
#define SAME(a, b) ((int)(a) == (int)(b))
_Static_assert(SAME(TALLY_EINVAL, LEDGER_EINVAL) && SAME(TALLY_ENOTFOUND, LEDGER_ENOTFOUND) &&
                   SAME(TALLY_ERESOLVED, LEDGER_ERESOLVED) && SAME(TALLY_ESTALE, LEDGER_ESTALE) &&
                   SAME(TALLY_ESTALE + 1, LEDGER_ECODE_MAX),
               "ledger error codes");
_Static_assert(SAME(TALLY_DENY_MODEL_TPM, LEDGER_DENY_MODEL_TPM) &&
                   SAME(TALLY_DENY_MAX, LEDGER_DENY_MAX),
               "deny reasons");
_Static_assert(SAME(TALLY_RESULT_REPLAYED, LEDGER_RESULT_REPLAYED) &&
                   SAME(TALLY_RESULT_SOFT_BUDGET, LEDGER_RESULT_SOFT_BUDGET) &&
                   SAME(TALLY_RESULT_LATE, LEDGER_RESULT_LATE),
               "result flags");
_Static_assert(SAME(TALLY_LIM_ALL, LEDGER_LIM_ALL) &&
                   SAME(TALLY_LIM_EXPIRY_POLICY, LEDGER_LIM_EXPIRY_POLICY),
               "limit bits");
_Static_assert(SAME(TALLY_PERIOD_MAX, LEDGER_PERIOD_MAX), "periods");
_Static_assert(SAME(TALLY_CMD_CONFIG_SET, LEDGER_CMD_CONFIG_SET), "command types");
_Static_assert(SAME(TALLY_J_ADMIN, LEDGER_J_ADMIN), "journal kinds");
_Static_assert(SAME(TALLY_RESV_LATE_SETTLED, LEDGER_RESV_LATE_SETTLED), "reservation states");

/* ---- Bounds and defaults. ---- */
#define DEFAULT_DEADLINE_MS 2000
#define DEFAULT_CONNECT_TIMEOUT_MS 1000
#define DEFAULT_MAX_INFLIGHT 4096
#define MAX_INFLIGHT_LIMIT (1u << 20)
#define DEFAULT_VOID_DEADLINE_MS 30000
#define DEFAULT_BACKOFF_MIN_MS 10
#define DEFAULT_BACKOFF_MAX_MS 200
#define DURATION_MAX_MS (24LL * 3600 * 1000) /* any configured or per-call time budget */
#define AMOUNT_MAX 1000000000000000LL        /* 10^15 micros */
#define TOKENS_MAX 1000000000000ULL          /* 10^12 */
#define TTL_MAX_MS (7LL * 24 * 3600 * 1000)
#define RETENTION_MAX_MS (90LL * 24 * 3600 * 1000)
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

/* ---- Small helpers. ---- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void stat_add(uint64_t *counter, uint64_t n)
{
    __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

/* Copy `src` into `dst` of `size` bytes, always NUL-terminated (truncating). */
static void copy_text(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src != NULL ? src : "");
}

static bool text_fits(const char *s, size_t max)
{
    return s != NULL && strnlen(s, max + 1) <= max;
}

/* An account or model name: 1..max bytes of [A-Za-z0-9._:/@-]. */
static bool name_valid(const char *s, size_t max)
{
    if (s == NULL || s[0] == '\0' || !text_fits(s, max)) {
        return false;
    }
    for (const char *p = s; *p != '\0'; p++) {
        char ch = *p;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' || ch == '/' ||
                  ch == '@' || ch == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

static bool is_empty(const char *s)
{
    return s == NULL || s[0] == '\0';
}

/* Fill `n` bytes from getrandom(2). Returns 0 or -1. */
static int random_bytes(void *buf, size_t n)
{
    uint8_t *p = buf;
    size_t got = 0;
    for (int tries = 0; got < n && tries < 100; tries++) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        got += (size_t)r;
    }
    return got == n ? 0 : -1;
}

/* ---- Names. ---- */

const char *tally_outcome_name(int outcome)
{
    switch (outcome) {
    case TALLY_GRANTED:
        return "granted";
    case TALLY_DENIED:
        return "denied";
    case TALLY_UNAVAILABLE:
        return "unavailable";
    case TALLY_ERROR:
        return "error";
    default:
        return "unknown";
    }
}

const char *tally_deny_reason_name(int reason)
{
    static const char *const names[TALLY_DENY_MAX] = {
        [TALLY_DENY_NONE] = "none",
        [TALLY_DENY_UNKNOWN_KEY] = "unknown_key",
        [TALLY_DENY_KEY_REVOKED] = "key_revoked",
        [TALLY_DENY_BLOCKED] = "blocked",
        [TALLY_DENY_EXPIRED] = "expired",
        [TALLY_DENY_PARALLEL] = "parallel",
        [TALLY_DENY_BUDGET] = "budget",
        [TALLY_DENY_RPM] = "rpm",
        [TALLY_DENY_TPM] = "tpm",
        [TALLY_DENY_MODEL_BUDGET] = "model_budget",
        [TALLY_DENY_MODEL_RPM] = "model_rpm",
        [TALLY_DENY_MODEL_TPM] = "model_tpm",
    };
    return reason >= 0 && reason < TALLY_DENY_MAX ? names[reason] : "unknown";
}

const char *tally_strerror(int code)
{
    static const char *const names[TALLY_ECODE_MAX] = {
        [TALLY_OK] = "ok",
        [TALLY_EINVAL] = "invalid_argument",
        [TALLY_ENAME] = "invalid_name",
        [TALLY_ENOTFOUND] = "not_found",
        [TALLY_EEXIST] = "already_exists",
        [TALLY_ECONFLICT] = "conflict",
        [TALLY_ERESOLVED] = "already_resolved",
        [TALLY_EDEPTH] = "too_deep",
        [TALLY_ECYCLE] = "cycle",
        [TALLY_EOVERFLOW] = "overflow",
        [TALLY_EDECODE] = "decode_error",
        [TALLY_ETOOBIG] = "too_big",
        [TALLY_ENOMEM] = "out_of_memory",
        [TALLY_EIO] = "io_error",
        [TALLY_ECORRUPT] = "corrupt",
        [TALLY_ESTALE] = "stale",
        [TALLY_EUNAVAILABLE] = "unavailable",
        [TALLY_EAUTH] = "unauthenticated",
        [TALLY_EFORBIDDEN] = "forbidden",
        [TALLY_EBADREQ] = "bad_request",
        [TALLY_EINTERNAL] = "internal",
        [TALLY_EPROTO] = "protocol_error",
        [TALLY_EBUSY] = "busy",
        [TALLY_ECLOSED] = "closed",
    };
    if (code < 0) {
        code = -code;
    }
    return code < TALLY_ECODE_MAX && names[code] != NULL ? names[code] : "unknown";
}

const char *tally_period_name(int period_kind)
{
    static const char *const names[TALLY_PERIOD_MAX] = {"none", "fixed", "day", "week", "month"};
    return period_kind >= 0 && period_kind < TALLY_PERIOD_MAX ? names[period_kind] : "unknown";
}

const char *tally_resv_state_name(int state)
{
    static const char *const names[] = {"open", "settled", "voided", "expired", "late_settled"};
    return state >= 0 && state < (int)(sizeof(names) / sizeof(names[0])) ? names[state] : "unknown";
}

const char *tally_journal_kind_name(int kind)
{
    static const char *const names[] = {
        NULL,         "charge",      "release", "expire_charge", "expire_release",
        "correction", "soft_budget", "admin"};
    return kind > 0 && kind < (int)(sizeof(names) / sizeof(names[0])) ? names[kind] : "unknown";
}

const char *tally_cmd_type_name(int cmd_type)
{
    static const char *const names[] = {
        NULL,      "account_create", "account_update", "key_add", "key_revoke", "model_limit_set",
        "reserve", "settle",         "void",           "extend",  "config_set"};
    return cmd_type > 0 && cmd_type < (int)(sizeof(names) / sizeof(names[0])) ? names[cmd_type]
                                                                              : "unknown";
}

const char *tally_raft_state_name(int state)
{
    switch (state) {
    case TALLY_RAFT_FOLLOWER:
        return "follower";
    case TALLY_RAFT_CANDIDATE:
        return "candidate";
    case TALLY_RAFT_LEADER:
        return "leader";
    default:
        return "unknown";
    }
}

const char *tally_member_role_name(int role)
{
    switch (role) {
    case TALLY_MEMBER_STANDBY:
        return "standby";
    case TALLY_MEMBER_VOTER:
        return "voter";
    case TALLY_MEMBER_SPARE:
        return "spare";
    default:
        return "unknown";
    }
}

/* ---- Helpers of the public API. ---- */

int tally_key_hash(const char *secret, uint8_t hash[TALLY_KEY_HASH_SIZE])
{
    if (secret == NULL || secret[0] == '\0' || hash == NULL) {
        return -TALLY_EINVAL;
    }
    SHA256((const unsigned char *)secret, strlen(secret), hash);
    return 0;
}

int tally_request_id_new(uint8_t id[TALLY_REQUEST_ID_SIZE])
{
    if (id == NULL) {
        return -TALLY_EINVAL;
    }
    return random_bytes(id, TALLY_REQUEST_ID_SIZE) == 0 ? 0 : -TALLY_EINTERNAL;
}

void tally_hex(const uint8_t *bytes, size_t n, char *out)
{
    rpc_hex(bytes, n, out);
}

int tally_unhex(const char *hex, uint8_t *out, size_t n)
{
    if (hex == NULL || out == NULL) {
        return -TALLY_EINVAL;
    }
    return rpc_unhex(hex, out, n) == 0 ? 0 : -TALLY_EINVAL;
}

void tally_config_init(struct tally_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->deadline_ms = DEFAULT_DEADLINE_MS;
    cfg->connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    cfg->fail_open = 0;
    cfg->max_frame_bytes = RPC_FRAME_MAX;
    cfg->max_inflight = DEFAULT_MAX_INFLIGHT;
    cfg->void_deadline_ms = DEFAULT_VOID_DEADLINE_MS;
    cfg->backoff_min_ms = DEFAULT_BACKOFF_MIN_MS;
    cfg->backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;
}

/* ---- Endpoints. ---- */

struct endpoint {
    char text[TALLY_ADDRESS_MAX + 1]; /* as configured: "host:port" */
    char host[TALLY_ADDRESS_MAX + 1]; /* without brackets */
    char port[6];
};

/* Parse "host:port" or "[v6]:port" (`len` bytes of `text`, borrowed). Returns 0 or -1. */
static int endpoint_parse(const char *text, size_t len, struct endpoint *ep)
{
    memset(ep, 0, sizeof(*ep));
    if (len == 0 || len > TALLY_ADDRESS_MAX) {
        return -1;
    }
    memcpy(ep->text, text, len);
    const char *colon = strrchr(ep->text, ':');
    if (colon == NULL || colon == ep->text) {
        return -1;
    }
    const char *host = ep->text;
    size_t host_len = (size_t)(colon - ep->text);
    if (host[0] == '[') {
        if (host_len < 3 || host[host_len - 1] != ']') {
            return -1;
        }
        host++;
        host_len -= 2;
    } else if (memchr(host, ':', host_len) != NULL) {
        return -1; /* a bare IPv6 literal is ambiguous: it needs brackets */
    }
    memcpy(ep->host, host, host_len);
    const char *port = colon + 1;
    size_t port_len = strlen(port);
    if (port_len == 0 || port_len > 5 || strspn(port, "0123456789") != port_len) {
        return -1;
    }
    long value = strtol(port, NULL, 10);
    if (value < 1 || value > 65535) {
        return -1;
    }
    memcpy(ep->port, port, port_len + 1);
    return 0;
}

/* Parse a comma-separated list into `eps` (TALLY_ENDPOINTS_MAX). Returns the count or -1. */
static int endpoints_parse(const char *list, struct endpoint *eps, char *why, size_t why_size)
{
    int n = 0;
    const char *p = list;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t')) {
            len--;
        }
        if (n == TALLY_ENDPOINTS_MAX) {
            snprintf(why, why_size, "more than %d endpoints", TALLY_ENDPOINTS_MAX);
            return -1;
        }
        if (endpoint_parse(p, len, &eps[n]) != 0) {
            snprintf(why, why_size, "endpoint %d (\"%.*s\") is not host:port", n + 1,
                     (int)(len < 80 ? len : 80), p);
            return -1;
        }
        n++;
        if (end == NULL) {
            return n;
        }
        p = end + 1;
    }
}

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
    uint64_t *out_next;
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

struct conn {
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

/* ---- Results. ---- */

static void result_init(struct tally_result *r, const struct call *call)
{
    memset(r, 0, sizeof(*r));
    if (call != NULL && call->req.op == RPC_OP_WRITE) {
        memcpy(r->request_id, call->req.u.write.request_id, TALLY_REQUEST_ID_SIZE);
    }
    if (call != NULL) {
        r->attempts = call->attempts;
    }
}

/* Mark `r` as ended with `outcome` and error `code`, with a printf-style message. */
static void result_fail(struct tally_result *r, int outcome, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void result_fail(struct tally_result *r, int outcome, int code, const char *fmt, ...)
{
    assert(code > 0 && code < TALLY_ECODE_MAX);
    r->outcome = outcome;
    r->error = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof(r->message), fmt, ap);
    va_end(ap);
}

/* What a blocking call returns for a finished result. */
static int result_code(const struct tally_result *r)
{
    if (r->outcome == TALLY_GRANTED || r->outcome == TALLY_DENIED) {
        return 0;
    }
    assert(r->error > 0);
    return -r->error;
}

/* A refusal found before anything was queued: fill `res` (may be NULL), return -code. */
static int fail_early(struct tally_result *res, int code, const char *message)
{
    if (res != NULL) {
        result_init(res, NULL);
        result_fail(res, code == TALLY_EBUSY ? TALLY_UNAVAILABLE : TALLY_ERROR, code, "%s",
                    message);
    }
    return -code;
}

/* The tally error for an RPC failure status that ends a call. */
static int error_of_status(int status)
{
    switch (status) {
    case RPC_EAUTH:
        return TALLY_EAUTH;
    case RPC_EFORBIDDEN:
        return TALLY_EFORBIDDEN;
    case RPC_EBADREQ:
        return TALLY_EBADREQ;
    case RPC_ETOOBIG:
        return TALLY_ETOOBIG;
    case RPC_ENOTFOUND:
        return TALLY_ENOTFOUND;
    case RPC_EINTERNAL:
        return TALLY_EINTERNAL;
    case RPC_EPROTO:
        return TALLY_EPROTO;
    default:
        return TALLY_EUNAVAILABLE;
    }
}

/* ---- Copying between the wire's structs and the public ones. ---- */

/*
 * The fields the public limits and the ledger's share, by name: all of struct tally_limits
 * and struct ledger_limits, and of struct tally_model_limits and struct ledger_model_limits.
 * COPY_FIELD(f) copies field f from `in` to `out`, the names every converter here uses.
 */
#define LIMITS_FIELDS(X)                                                                           \
    X(set)                                                                                         \
    X(period_kind)                                                                                 \
    X(blocked)                                                                                     \
    X(expiry_policy)                                                                               \
    X(budget_micros)                                                                               \
    X(soft_budget_micros)                                                                          \
    X(period_ms)                                                                                   \
    X(rpm)                                                                                         \
    X(rpm_burst)                                                                                   \
    X(tpm)                                                                                         \
    X(tpm_burst)                                                                                   \
    X(max_parallel)                                                                                \
    X(expires_at_ms)
#define MODEL_LIMITS_FIELDS(X) X(set) X(budget_micros) X(rpm) X(rpm_burst) X(tpm) X(tpm_burst)
#define COPY_FIELD(f) out->f = in->f;
_Static_assert(sizeof(struct tally_limits) == sizeof(struct ledger_limits), "limits fields");
_Static_assert(sizeof(struct tally_model_limits) == sizeof(struct ledger_model_limits),
               "model limits fields");

/* `in` (NULL: no limits) as the wire's limits. */
static void limits_to_wire(const struct tally_limits *in, struct ledger_limits *out)
{
    memset(out, 0, sizeof(*out));
    if (in != NULL) {
        LIMITS_FIELDS(COPY_FIELD)
    }
}

static void limits_from_wire(const struct ledger_limits *in, struct tally_limits *out)
{
    memset(out, 0, sizeof(*out));
    LIMITS_FIELDS(COPY_FIELD)
}

static void account_from_wire(const struct ledger_account_info *in, struct tally_account *out)
{
    memset(out, 0, sizeof(*out));
    out->id = in->id;
    copy_text(out->name, sizeof(out->name), in->name);
    copy_text(out->parent, sizeof(out->parent), in->parent);
    out->depth = in->depth;
    limits_from_wire(&in->limits, &out->limits);
    out->created_ms = in->created_ms;
    out->spent_micros = in->spent_micros;
    out->held_micros = in->held_micros;
    out->remaining_micros = in->remaining_micros;
    out->lifetime_spent_micros = in->lifetime_spent_micros;
    out->overrun_micros = in->overrun_micros;
    out->inflight = in->inflight;
    out->period_start_ms = in->period_start_ms;
    out->period_end_ms = in->period_end_ms;
    out->rpm_available = in->rpm_available;
    out->tpm_available = in->tpm_available;
    out->n_keys = in->n_keys;
}

static void resv_from_wire(const struct ledger_reservation_info *in, struct tally_reservation *out)
{
    memset(out, 0, sizeof(*out));
    memcpy(out->request_id, in->request_id, TALLY_REQUEST_ID_SIZE);
    out->state = in->state;
    copy_text(out->account, sizeof(out->account), in->account);
    copy_text(out->model, sizeof(out->model), in->model);
    out->estimate_micros = in->estimate_micros;
    out->estimate_tokens = in->estimate_tokens;
    out->created_ms = in->created_ms;
    out->expires_at_ms = in->expires_at_ms;
    out->charged_micros = in->charged_micros;
    out->metadata_len = in->metadata_len <= TALLY_METADATA_MAX ? in->metadata_len : 0;
    memcpy(out->metadata, in->metadata, out->metadata_len);
}

static void entry_from_wire(const struct ledger_journal_entry *in, struct tally_journal_entry *out)
{
    memset(out, 0, sizeof(*out));
    out->seq = in->seq;
    out->ts_ms = in->ts_ms;
    out->kind = in->kind;
    out->cmd_type = in->cmd_type;
    copy_text(out->account, sizeof(out->account), in->account);
    copy_text(out->actor, sizeof(out->actor), in->actor);
    memcpy(out->request_id, in->request_id, TALLY_REQUEST_ID_SIZE);
    out->amount_micros = in->amount_micros;
    out->tokens = in->tokens;
    out->period_start_ms = in->period_start_ms;
    copy_text(out->model, sizeof(out->model), in->model);
    memcpy(out->admin_hash, in->admin_hash, sizeof(out->admin_hash));
}

static void status_from_wire(const struct rpc_node_status *in, struct tally_node_status *out)
{
    memset(out, 0, sizeof(*out));
    out->node_id = in->node_id;
    out->term = in->term;
    out->raft_state = in->raft_state;
    out->serving = in->serving;
    out->leader_id = in->leader_id;
    copy_text(out->leader_address, sizeof(out->leader_address), in->leader_address);
    out->commit_index = in->commit_index;
    out->applied_index = in->applied_index;
    out->ledger_now_ms = in->ledger_now_ms;
    out->n_members = in->n_members <= TALLY_MEMBERS_MAX ? in->n_members : TALLY_MEMBERS_MAX;
    for (uint32_t i = 0; i < out->n_members; i++) {
        const struct rpc_member *m = &in->members[i];
        struct tally_member *t = &out->members[i];
        t->id = m->id;
        copy_text(t->peer_address, sizeof(t->peer_address), m->peer_address);
        copy_text(t->client_address, sizeof(t->client_address), m->client_address);
        t->role = m->role;
    }
}

/* The answer to a write, as a tally_result. */
static void result_from_ledger(struct tally_result *r, const struct ledger_result *x,
                               uint64_t index)
{
    r->index = index;
    r->flags = x->flags;
    copy_text(r->account, sizeof(r->account), x->account);
    r->remaining = x->remaining;
    r->retry_after_ms = x->retry_after_ms;
    r->charged_micros = x->charged_micros;
    r->overrun_micros = x->overrun_micros;
    r->expires_at_ms = x->expires_at_ms;
    if (x->status == LEDGER_OK) {
        r->outcome = TALLY_GRANTED;
    } else if (x->status == LEDGER_DENIED) {
        r->outcome = TALLY_DENIED;
        r->deny_reason = x->deny_reason < TALLY_DENY_MAX ? x->deny_reason : TALLY_DENY_NONE;
        snprintf(r->message, sizeof(r->message), "denied: %s on account %s",
                 tally_deny_reason_name(r->deny_reason), r->account);
    } else if (x->status < 0 && -x->status < LEDGER_ECODE_MAX) {
        result_fail(r, TALLY_ERROR, -x->status, "ledger: %s", tally_strerror(-x->status));
    } else {
        result_fail(r, TALLY_ERROR, TALLY_EPROTO, "ledger answered an unknown status %d",
                    (int)x->status);
    }
}

/* ---- The deadline heap (I/O thread). ---- */

static bool heap_less(const struct tally *c, size_t a, size_t b)
{
    return c->heap[a]->deadline_at_ms < c->heap[b]->deadline_at_ms;
}

static void heap_swap(struct tally *c, size_t a, size_t b)
{
    struct call *t = c->heap[a];
    c->heap[a] = c->heap[b];
    c->heap[b] = t;
    c->heap[a]->heap_idx = a;
    c->heap[b]->heap_idx = b;
}

static void heap_up(struct tally *c, size_t i)
{
    while (i > 0 && heap_less(c, i, (i - 1) / 2)) {
        heap_swap(c, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(struct tally *c, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < c->heap_len && heap_less(c, l, m)) {
            m = l;
        }
        if (r < c->heap_len && heap_less(c, r, m)) {
            m = r;
        }
        if (m == i) {
            return;
        }
        heap_swap(c, i, m);
        i = m;
    }
}

static void heap_push(struct tally *c, struct call *call)
{
    /* Room is reserved: callers' calls are bounded by max_inflight, background voids too. */
    assert(c->heap_len < c->heap_cap);
    call->heap_idx = c->heap_len;
    c->heap[c->heap_len++] = call;
    heap_up(c, call->heap_idx);
}

static void heap_remove(struct tally *c, struct call *call)
{
    size_t i = call->heap_idx;
    assert(i < c->heap_len && c->heap[i] == call);
    c->heap_len--;
    if (i != c->heap_len) {
        c->heap[i] = c->heap[c->heap_len];
        c->heap[i]->heap_idx = i;
        heap_down(c, i);
        heap_up(c, i);
    }
    call->heap_idx = SIZE_MAX;
}

/* ---- The pending list and the sent table (I/O thread). ---- */

static void pending_push(struct tally *c, struct call *call, bool front)
{
    assert(call->where == WHERE_NONE);
    call->where = WHERE_PENDING;
    call->prev = call->next = NULL;
    if (c->pending_head == NULL) {
        c->pending_head = c->pending_tail = call;
    } else if (front) {
        call->next = c->pending_head;
        c->pending_head->prev = call;
        c->pending_head = call;
    } else {
        call->prev = c->pending_tail;
        c->pending_tail->next = call;
        c->pending_tail = call;
    }
}

static void pending_remove(struct tally *c, struct call *call)
{
    assert(call->where == WHERE_PENDING);
    if (call->prev != NULL) {
        call->prev->next = call->next;
    } else {
        c->pending_head = call->next;
    }
    if (call->next != NULL) {
        call->next->prev = call->prev;
    } else {
        c->pending_tail = call->prev;
    }
    call->prev = call->next = NULL;
    call->where = WHERE_NONE;
}

static void table_insert(struct tally *c, struct call *call)
{
    assert(call->where == WHERE_NONE);
    struct call **bucket = &c->table[call->req.seq & c->table_mask];
    call->hnext = *bucket;
    *bucket = call;
    call->where = WHERE_SENT;
    c->conn.n_sent++;
}

static struct call *table_find(struct tally *c, uint64_t seq)
{
    for (struct call *x = c->table[seq & c->table_mask]; x != NULL; x = x->hnext) {
        if (x->req.seq == seq) {
            return x;
        }
    }
    return NULL;
}

static void table_remove(struct tally *c, struct call *call)
{
    assert(call->where == WHERE_SENT);
    struct call **p = &c->table[call->req.seq & c->table_mask];
    while (*p != call) {
        assert(*p != NULL);
        p = &(*p)->hnext;
    }
    *p = call->hnext;
    call->hnext = NULL;
    call->where = WHERE_NONE;
    assert(c->conn.n_sent > 0);
    c->conn.n_sent--;
}

/* Take `call` out of the pending list or the sent table, wherever it is. */
static void call_unlink(struct tally *c, struct call *call)
{
    if (call->where == WHERE_PENDING) {
        pending_remove(c, call);
    } else if (call->where == WHERE_SENT) {
        table_remove(c, call);
    }
}

/* ---- Backoff. ---- */

static uint64_t rng_next(struct tally *c)
{
    /* xorshift64*: jitter only, never security. */
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return c->rng * 2685821657736338717ULL;
}

/* Delay before attempt `step` (0: none): min doubling to max, jittered into [d/2, d]. */
static int64_t backoff_ms(struct tally *c, uint32_t step)
{
    if (step == 0) {
        return 0;
    }
    int64_t d = c->backoff_min_ms;
    for (uint32_t i = 1; i < step && d < c->backoff_max_ms; i++) {
        d *= 2;
    }
    if (d > c->backoff_max_ms) {
        d = c->backoff_max_ms;
    }
    int64_t half = d / 2;
    return half + (int64_t)(rng_next(c) % (uint64_t)(d - half + 1));
}

/* ---- Finishing calls (I/O thread). ---- */

/* splitmix64's finalizer: every input bit moves about half the output bits. */
static uint64_t mix64(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Every byte of the id counts: gateways often number ids (a prefix and a counter in
 * the last bytes), and a hash blind to some bytes put all of one client's ids in one
 * slot, so each grant evicted the one before. */
static size_t granted_set(const uint8_t *id)
{
    uint64_t a, b;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    return (size_t)(mix64(a ^ mix64(b)) % GRANTED_SETS);
}

/* The way of `id` in set `s` (its set, granted_set(id)), or -1. */
static int granted_way(const struct tally *c, size_t s, const uint8_t *id)
{
    /* An empty way is all zeros: an all-zero id must not match it. */
    static const uint8_t zero[LEDGER_REQUEST_ID_SIZE];
    if (memcmp(id, zero, sizeof(zero)) == 0) {
        return -1;
    }
    for (int w = 0; w < GRANTED_WAYS; w++) {
        if (memcmp(c->granted[s][w], id, LEDGER_REQUEST_ID_SIZE) == 0) {
            return w;
        }
    }
    return -1;
}

static void granted_remember(struct tally *c, const uint8_t *id)
{
    size_t s = granted_set(id);
    int w = granted_way(c, s, id);
    uint8_t(*set)[LEDGER_REQUEST_ID_SIZE] = c->granted[s];
    /* Newest first: shift the newer ones over the id's old place (or the oldest). */
    int last = w >= 0 ? w : GRANTED_WAYS - 1;
    memmove(set[1], set[0], (size_t)last * LEDGER_REQUEST_ID_SIZE);
    memcpy(set[0], id, LEDGER_REQUEST_ID_SIZE);
}

static bool granted_seen(const struct tally *c, const uint8_t *id)
{
    return granted_way(c, granted_set(id), id) >= 0;
}

static void bg_void_start(struct tally *c, const struct call *reserve, int64_t now_ms);
static void conn_drop(struct tally *c, int64_t now_ms, bool connect_failed, const char *why);

/*
 * Deliver the final answer of `call` and free it. `r` is the answer (the I/O thread's);
 * query outputs were already written into the caller's memory. Applies fail-open and
 * starts the background void of an UNAVAILABLE reserve.
 */
static void finish(struct tally *c, struct call *call, struct tally_result *r, int64_t now_ms)
{
    call_unlink(c, call);
    heap_remove(c, call);
    r->attempts = call->attempts;
    if (call->kind == CALL_BG_VOID) {
        bool done = r->outcome == TALLY_GRANTED || r->error == TALLY_ERESOLVED ||
                    r->error == TALLY_ENOTFOUND;
        stat_add(done ? &c->stats.voids_done : &c->stats.voids_failed, 1);
        assert(c->n_bg > 0);
        c->n_bg--;
        free(call);
        return;
    }
    const uint8_t *id = call->req.u.write.request_id;
    if (call->kind == CALL_RESERVE && r->outcome == TALLY_GRANTED) {
        granted_remember(c, id);
    }
    if (r->outcome == TALLY_UNAVAILABLE) {
        stat_add(&c->stats.unavailable, 1);
        if (call->kind == CALL_RESERVE && r->error != TALLY_ECLOSED) {
            if (call->attempts > 0) {
                if (granted_seen(c, id)) {
                    stat_add(&c->stats.voids_skipped, 1);
                } else {
                    bg_void_start(c, call, now_ms);
                }
            }
            if (c->fail_open) {
                r->outcome = TALLY_GRANTED;
                r->failed_open = 1;
                stat_add(&c->stats.failed_open, 1);
            }
        }
    }
    struct waiter *w = call->waiter;
    tally_cb cb = call->cb;
    void *cb_arg = call->cb_arg;
    if (w != NULL) {
        *call->res = *r;
    }
    free(call);

    pthread_mutex_lock(&c->mu);
    assert(c->n_calls > 0);
    c->n_calls--;
    if (c->n_room_waiters > 0) {
        pthread_cond_signal(&c->room_cond);
    }
    if (w != NULL) {
        w->done = true;
        pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&c->mu);
    if (cb != NULL) {
        cb(cb_arg, r); /* without the lock: it may submit more calls */
    }
}

/* End `call` with UNAVAILABLE (or `code`), its last failure in the message. */
static void finish_unavailable(struct tally *c, struct call *call, int code, int64_t now_ms)
{
    struct tally_result r;
    const char *why = call->why[0] != '\0'     ? call->why
                      : c->conn_why[0] != '\0' ? c->conn_why
                                               : "not sent";
    /* A certificate that did not verify is a configuration error an operator must see,
     * even when the last attempt failed otherwise (another endpoint down). */
    const char *tls = code == TALLY_EUNAVAILABLE && c->tls_verify_why[0] != '\0' &&
                              strcmp(why, c->tls_verify_why) != 0
                          ? c->tls_verify_why
                          : "";
    result_init(&r, call);
    result_fail(&r, TALLY_UNAVAILABLE, code, "%s (%s%s%s)",
                code == TALLY_ECLOSED ? "the client is closing" : "no answer before the deadline",
                tls, tls[0] != '\0' ? "; last: " : "", why);
    finish(c, call, &r, now_ms);
}

static void finish_error(struct tally *c, struct call *call, int code, const char *message,
                         int64_t now_ms)
{
    struct tally_result r;
    result_init(&r, call);
    result_fail(&r, code == TALLY_EUNAVAILABLE ? TALLY_UNAVAILABLE : TALLY_ERROR, code, "%s",
                message);
    finish(c, call, &r, now_ms);
}

/* Put a call that failed retryably back in the pending list, to be sent after a delay. */
static void requeue(struct tally *c, struct call *call, bool backoff, int64_t now_ms,
                    const char *why)
{
    call_unlink(c, call);
    copy_text(call->why, sizeof(call->why), why);
    call->next_try_at_ms = now_ms;
    if (backoff) {
        call->next_try_at_ms += backoff_ms(c, ++call->backoff_step);
    }
    pending_push(c, call, false);
}

/* Queue a void of `reserve`'s request id with its own deadline (best effort). */
static void bg_void_start(struct tally *c, const struct call *reserve, int64_t now_ms)
{
    if (c->n_bg >= c->max_inflight) {
        stat_add(&c->stats.voids_failed, 1); /* dropped: the hold expires at its ttl */
        return;
    }
    struct call *v = calloc(1, sizeof(*v));
    if (v == NULL) {
        stat_add(&c->stats.voids_failed, 1);
        return;
    }
    v->kind = CALL_BG_VOID;
    v->heap_idx = SIZE_MAX;
    v->req.op = RPC_OP_WRITE;
    v->req.u.write.type = LEDGER_CMD_VOID;
    memcpy(v->req.u.write.request_id, reserve->req.u.write.request_id, LEDGER_REQUEST_ID_SIZE);
    v->deadline_at_ms = now_ms + c->void_deadline_ms;
    v->next_try_at_ms = now_ms;
    c->n_bg++;
    heap_push(c, v);
    pending_push(c, v, false);
    stat_add(&c->stats.voids_queued, 1);
}

/* ---- Answers (I/O thread). ---- */

/* Copy a successful answer's payload into the waiting caller's outputs and `r`. */
static int answer_payload(struct call *call, const struct rpc_response *resp,
                          struct tally_result *r)
{
    switch (call->req.op) {
    case RPC_OP_WRITE:
        result_from_ledger(r, &resp->u.write.result, resp->u.write.index);
        return 0;
    case RPC_OP_ACCOUNT_GET:
        account_from_wire(&resp->u.account, call->out);
        return 0;
    case RPC_OP_RESV_GET:
        resv_from_wire(&resp->u.reservation, call->out);
        return 0;
    case RPC_OP_KEY_GET:
        copy_text(call->out_account, TALLY_NAME_MAX + 1, resp->u.key.account);
        if (call->out_revoked != NULL) {
            *call->out_revoked = resp->u.key.revoked != 0;
        }
        return 0;
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
        if (resp->u.list.n > call->out_cap) {
            return -1; /* more than asked for: never write past the caller's array */
        }
        for (uint32_t i = 0; i < resp->u.list.n; i++) {
            if (call->req.op == RPC_OP_ACCOUNT_LIST) {
                account_from_wire(&resp->u.list.items.accounts[i],
                                  (struct tally_account *)call->out + i);
            } else if (call->req.op == RPC_OP_RESV_LIST) {
                resv_from_wire(&resp->u.list.items.reservations[i],
                               (struct tally_reservation *)call->out + i);
            } else {
                entry_from_wire(&resp->u.list.items.entries[i],
                                (struct tally_journal_entry *)call->out + i);
            }
        }
        *call->out_n = resp->u.list.n;
        if (call->out_next != NULL) {
            *call->out_next = resp->u.list.next;
        }
        return 0;
    case RPC_OP_MEMBERSHIP:
        return 0;
    default:
        return -1;
    }
}

static void answer_ok(struct tally *c, struct call *call, const struct rpc_response *resp,
                      int64_t now_ms)
{
    struct tally_result r;
    result_init(&r, call);
    if (answer_payload(call, resp, &r) != 0) {
        finish_error(c, call, TALLY_EPROTO, "the server answered more items than asked for",
                     now_ms);
        return;
    }
    /* A background void whose reserve may still be on its way: look again a bit later. */
    if (call->kind == CALL_BG_VOID && r.error == TALLY_ENOTFOUND &&
        call->notfound_retries < VOID_NOTFOUND_RETRIES &&
        now_ms + VOID_NOTFOUND_DELAY_MS < call->deadline_at_ms) {
        call->notfound_retries++;
        call_unlink(c, call);
        call->next_try_at_ms = now_ms + VOID_NOTFOUND_DELAY_MS;
        pending_push(c, call, false);
        return;
    }
    finish(c, call, &r, now_ms);
}

/* Remember the current endpoint for tally_stats(). */
static void set_endpoint_now(struct tally *c, const char *target)
{
    pthread_mutex_lock(&c->mu);
    copy_text(c->endpoint_now, sizeof(c->endpoint_now), target);
    pthread_mutex_unlock(&c->mu);
}

/* Handle one decoded answer to a call (the call is in the sent table). */
static void answer(struct tally *c, struct call *call, const struct rpc_response *resp,
                   int64_t now_ms)
{
    char why[WHY_MAX];
    snprintf(why, sizeof(why), "%s: %s%s%.*s", c->conn.target, rpc_status_name(resp->status),
             resp->message[0] != '\0' ? ": " : "", (int)WHY_MESSAGE_MAX, resp->message);
    switch (resp->status) {
    case RPC_OK:
        c->conn_failures = 0;
        c->conn.unavailable_streak = 0;
        answer_ok(c, call, resp, now_ms);
        return;
    case RPC_ENOTLEADER:
        stat_add(&c->stats.redirects, 1);
        requeue(c, call, false, now_ms, why);
        if (resp->leader_address[0] != '\0' && strcmp(resp->leader_address, c->conn.target) != 0) {
            copy_text(c->redirect, sizeof(c->redirect), resp->leader_address);
        }
        conn_drop(c, now_ms, false, why);
        return;
    case RPC_EUNKNOWN:
        if (call->resend_unsafe) {
            finish_error(c, call, TALLY_EUNAVAILABLE, "the outcome is unknown", now_ms);
            return;
        }
        /* fallthrough */
    case RPC_EUNAVAILABLE:
        requeue(c, call, true, now_ms, why);
        if (++c->conn.unavailable_streak >= UNAVAILABLE_STREAK_ROTATE) {
            conn_drop(c, now_ms, false, why);
        }
        return;
    case RPC_ESHUTDOWN:
        requeue(c, call, true, now_ms, why);
        conn_drop(c, now_ms, false, why);
        return;
    case RPC_EBUSY:
        requeue(c, call, true, now_ms, why);
        return;
    case RPC_EPROTO:
    case RPC_ETOOBIG:
        finish_error(c, call, error_of_status(resp->status), why, now_ms);
        conn_drop(c, now_ms, false, why); /* the server closes it too */
        return;
    default:
        finish_error(c, call, error_of_status(resp->status), why, now_ms);
        return;
    }
}

/* Fail every call not yet answered with `code` (EAUTH: the token is wrong everywhere). */
static void fail_all(struct tally *c, int code, const char *message, int64_t now_ms)
{
    while (c->pending_head != NULL) {
        finish_error(c, c->pending_head, code, message, now_ms);
    }
    for (size_t i = 0; i <= c->table_mask; i++) {
        while (c->table[i] != NULL) {
            finish_error(c, c->table[i], code, message, now_ms);
        }
    }
}

static void hello_answer(struct tally *c, const struct rpc_response *resp, int64_t now_ms)
{
    char why[WHY_MAX];
    if (resp->status == RPC_OK) {
        c->conn.state = CONN_READY;
        c->conn.unavailable_streak = 0;
        c->conn_why[0] = '\0';
        stat_add(&c->stats.connects, 1);
        __atomic_store_n(&c->stats.connected, 1, __ATOMIC_RELAXED);
        return;
    }
    snprintf(why, sizeof(why), "%s refused HELLO: %s%s%.*s", c->conn.target,
             rpc_status_name(resp->status), resp->message[0] != '\0' ? ": " : "",
             (int)WHY_MESSAGE_MAX, resp->message);
    if (resp->status == RPC_EAUTH) {
        /* Not retried: a wrong token stays wrong. Every waiting call learns it now. */
        fail_all(c, TALLY_EAUTH, why, now_ms);
    }
    conn_drop(c, now_ms, false, why);
}

/* One frame from the server. */
static void handle_frame(struct tally *c, const uint8_t *body, size_t len, int64_t now_ms)
{
    uint64_t seq;
    char why[RPC_MESSAGE_MAX + 1] = "";
    if (rpc_response_seq(body, len, &seq) != 0) {
        conn_drop(c, now_ms, false, "malformed frame from the server");
        return;
    }
    struct rpc_response resp;
    if (c->conn.state == CONN_HELLO) {
        if (seq != c->conn.hello_seq ||
            rpc_response_decode(body, len, RPC_OP_HELLO, &resp, why) != 0) {
            conn_drop(c, now_ms, false, "malformed answer to HELLO");
            return;
        }
        hello_answer(c, &resp, now_ms);
        rpc_response_free(&resp);
        return;
    }
    struct call *call = table_find(c, seq);
    if (call == NULL) {
        return; /* the answer to a call whose deadline passed */
    }
    if (rpc_response_decode(body, len, call->req.op, &resp, why) != 0) {
        char msg[WHY_MAX];
        snprintf(msg, sizeof(msg), "malformed answer from %s: %.*s", c->conn.target,
                 (int)WHY_MESSAGE_MAX, why);
        conn_drop(c, now_ms, false, msg);
        return;
    }
    answer(c, call, &resp, now_ms);
    rpc_response_free(&resp);
}

/* ---- TLS helpers (I/O thread and tally_status()'s callers). ---- */

/*
 * OpenSSL's own socket BIO writes with write(2), which raises SIGPIPE when the peer has
 * gone and would kill an application that does not ignore it. This BIO does the same
 * with send(MSG_NOSIGNAL) and recv(2) on a non-blocking socket, marking EAGAIN as
 * "retry" so that SSL_get_error() says WANT_READ or WANT_WRITE.
 */
static int tls_bio_write(BIO *b, const char *data, int len)
{
    struct tls_io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    io->err = 0;
    for (;;) {
        ssize_t n = send(io->fd, data, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            return (int)n;
        }
        if (errno == EINTR) {
            continue;
        }
        io->err = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            BIO_set_retry_write(b);
        }
        return -1;
    }
}

static int tls_bio_read(BIO *b, char *data, int len)
{
    struct tls_io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    io->err = 0;
    for (;;) {
        ssize_t n = recv(io->fd, data, (size_t)len, MSG_DONTWAIT);
        if (n >= 0) {
            return (int)n; /* 0: end of stream */
        }
        if (errno == EINTR) {
            continue;
        }
        io->err = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            BIO_set_retry_read(b);
        }
        return -1;
    }
}

static long tls_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* nothing is buffered here */
}

static BIO_METHOD *tls_bio_method; /* made once, kept for the life of the process */
static pthread_once_t tls_bio_once = PTHREAD_ONCE_INIT;

static void tls_bio_method_init(void)
{
    int index = BIO_get_new_index();
    BIO_METHOD *m = index > 0 ? BIO_meth_new(index | BIO_TYPE_SOURCE_SINK, "tally socket") : NULL;
    if (m != NULL &&
        (BIO_meth_set_write(m, tls_bio_write) != 1 || BIO_meth_set_read(m, tls_bio_read) != 1 ||
         BIO_meth_set_ctrl(m, tls_bio_ctrl) != 1)) {
        BIO_meth_free(m);
        m = NULL;
    }
    tls_bio_method = m;
}

/* The name the server certificate must carry when connecting to `host`. */
static const char *tls_name(const struct tally *c, const char *host)
{
    return c->tls_server_name[0] != '\0' ? c->tls_server_name : host;
}

static bool is_ip_literal(const char *name)
{
    unsigned char addr[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
}

/* The reason of the oldest error in this thread's OpenSSL queue (with its detail text, if
 * any) into `out`; empties the queue. */
static void tls_reason(char *out, size_t size)
{
    const char *data = NULL;
    int flags = 0;
    unsigned long e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags);
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    bool has_data = data != NULL && data[0] != '\0' && (flags & ERR_TXT_STRING) != 0;
    if (reason != NULL) {
        snprintf(out, size, "%s%s%.*s%s", reason, has_data ? " (" : "", has_data ? 80 : 0,
                 has_data ? data : "", has_data ? ")" : "");
    } else if (e != 0) {
        ERR_error_string_n(e, out, size);
    } else {
        snprintf(out, size, "unknown error");
    }
    ERR_clear_error();
}

/*
 * Explain why TLS step `what` ("handshake", "read", "write") failed with SSL_get_error()
 * code `err` on `ssl`, into `why`, and empty the thread's OpenSSL error queue. `name` is
 * the server name verified. Returns whether the server's certificate failed verification.
 */
static bool tls_failure(SSL *ssl, const struct tls_io *io, int err, const char *what,
                        const char *name, char *why, size_t why_size)
{
    long verify = SSL_get_verify_result(ssl);
    char reason[128];
    bool verify_failed = false;
    if (err == SSL_ERROR_SSL && verify != X509_V_OK) {
        bool name_mismatch =
            verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH;
        snprintf(why, why_size, "tls: certificate verify failed: %s%s%.*s%s",
                 X509_verify_cert_error_string(verify), name_mismatch ? " (expected \"" : "",
                 name_mismatch ? 64 : 0, name_mismatch ? name : "", name_mismatch ? "\")" : "");
        verify_failed = true;
    } else if (err == SSL_ERROR_SSL) {
        tls_reason(reason, sizeof(reason));
        snprintf(why, why_size, "tls %s: %s", what, reason);
    } else if (err == SSL_ERROR_SYSCALL && io->err != 0) {
        snprintf(why, why_size, "tls %s: %s", what, strerror(io->err));
    } else if (err == SSL_ERROR_SYSCALL || err == SSL_ERROR_ZERO_RETURN) {
        snprintf(why, why_size, "tls %s: the node closed the connection", what);
    } else {
        snprintf(why, why_size, "tls %s: error %d", what, err);
    }
    ERR_clear_error();
    return verify_failed;
}

/*
 * A client TLS session over the connected socket `io->fd`, for a server at `host`
 * (borrowed): it will verify the server's certificate against the configured CAs and
 * name. `io` must outlive the session. Returns the session (the caller frees it with
 * SSL_free()) or NULL with why.
 */
static SSL *tls_session_new(const struct tally *c, const char *host, struct tls_io *io, char *why,
                            size_t why_size)
{
    const char *name = tls_name(c, host);
    char reason[128];
    assert(c->tls_ctx != NULL && tls_bio_method != NULL && io->fd >= 0);
    ERR_clear_error();
    SSL *ssl = SSL_new(c->tls_ctx);
    BIO *bio = ssl != NULL ? BIO_new(tls_bio_method) : NULL;
    if (bio == NULL) {
        SSL_free(ssl);
        ERR_clear_error();
        snprintf(why, why_size, "tls: out of memory");
        return NULL;
    }
    BIO_set_data(bio, io);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio); /* ssl owns the BIO */
    SSL_set_connect_state(ssl);
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    /* SSL_set1_host() takes an IP literal as an address to match; SNI carries names only. */
    if (SSL_set1_host(ssl, name) != 1 ||
        (!is_ip_literal(name) && SSL_set_tlsext_host_name(ssl, name) != 1)) {
        tls_reason(reason, sizeof(reason));
        snprintf(why, why_size, "tls: cannot use server name \"%.64s\": %s", name, reason);
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

/* ---- The connection (I/O thread). ---- */

/*
 * Encrypt and send buffered bytes with SSL_write until it would wait. A write that waited
 * is repeated with the same bytes at the head (out_off does not move until SSL_write
 * takes them; the buffer may have moved and grown, which ACCEPT_MOVING_WRITE_BUFFER and a
 * length that never shrinks allow). Returns 0, or -1 if the connection was dropped.
 */
static int conn_flush_tls(struct tally *c, int64_t now_ms)
{
    struct conn *k = &c->conn;
    char text[TLS_TEXT_MAX], why[WHY_MAX];
    while (k->out_off < k->out.len) {
        size_t left = k->out.len - k->out_off;
        ERR_clear_error();
        int n = SSL_write(k->ssl, k->out.data + k->out_off,
                          left > TLS_WRITE_MAX ? TLS_WRITE_MAX : (int)left);
        if (n > 0) {
            k->write_wants_read = false;
            k->out_off += (size_t)n;
            continue;
        }
        int err = SSL_get_error(k->ssl, n);
        if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
            k->write_wants_read = err == SSL_ERROR_WANT_READ;
            return 0;
        }
        tls_failure(k->ssl, &k->io, err, "write", tls_name(c, k->host), text, sizeof(text));
        snprintf(why, sizeof(why), "%s: %s", k->target, text);
        conn_drop(c, now_ms, false, why);
        return -1;
    }
    k->out.len = 0;
    k->out_off = 0;
    return 0;
}

/* Send buffered bytes until the socket would block. Returns 0, or -1 if it was dropped. */
static int conn_flush(struct tally *c, int64_t now_ms)
{
    struct conn *k = &c->conn;
    if (k->ssl != NULL) {
        return conn_flush_tls(c, now_ms);
    }
    while (k->out_off < k->out.len) {
        ssize_t n = send(k->fd, k->out.data + k->out_off, k->out.len - k->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return 0;
            }
            char why[WHY_MAX];
            snprintf(why, sizeof(why), "%s: send: %s", k->target, strerror(errno));
            conn_drop(c, now_ms, false, why);
            return -1;
        }
        k->out_off += (size_t)n;
    }
    k->out.len = 0;
    k->out_off = 0;
    return 0;
}

/*
 * Close the connection (if any) and decide where and when to connect next. Calls that
 * were sent on it go back to the pending list: a write is resent with the same id. With
 * `connect_failed` and more addresses of the same target left, the next one is tried at
 * once; otherwise the client moves to the redirect target or the next endpoint, after a
 * backoff that grows with consecutive failures.
 */
static void conn_drop(struct tally *c, int64_t now_ms, bool connect_failed, const char *why)
{
    struct conn *k = &c->conn;
    copy_text(c->conn_why, sizeof(c->conn_why), why);
    if (k->ssl != NULL) {
        SSL_free(k->ssl); /* no close_notify: the socket closes anyway */
        k->ssl = NULL;
    }
    k->tls_wait = 0;
    k->write_wants_read = false;
    k->read_wants_write = false;
    if (k->fd >= 0) {
        close(k->fd);
        k->fd = -1;
    }
    if (k->state == CONN_READY) {
        stat_add(&c->stats.reconnects, 1);
    }
    __atomic_store_n(&c->stats.connected, 0, __ATOMIC_RELAXED);
    k->state = CONN_DOWN;
    k->epoch++;
    rpc_framer_free(&k->framer);
    rpc_framer_init(&k->framer, c->max_frame_bytes);
    k->out.len = 0;
    k->out_off = 0;
    k->silent_since_ms = 0;
    k->unavailable_streak = 0;
    for (size_t i = 0; i <= c->table_mask; i++) {
        while (c->table[i] != NULL) {
            struct call *call = c->table[i];
            if (call->resend_unsafe) {
                finish_error(c, call, TALLY_EUNAVAILABLE,
                             "the connection was lost: the outcome is unknown", now_ms);
                continue;
            }
            table_remove(c, call);
            copy_text(call->why, sizeof(call->why), why);
            call->next_try_at_ms = now_ms;
            pending_push(c, call, true);
        }
    }
    assert(k->n_sent == 0);
    if (connect_failed && k->addr_next != NULL && c->redirect[0] == '\0') {
        c->reconnect_at_ms = now_ms; /* another address of the same name */
        return;
    }
    if (k->addrs != NULL) {
        freeaddrinfo(k->addrs);
        k->addrs = k->addr_next = NULL;
    }
    if (c->redirect[0] == '\0') {
        c->ep_idx = (c->ep_idx + 1) % c->n_endpoints;
    }
    c->reconnect_at_ms = now_ms + backoff_ms(c, c->conn_failures);
    if (c->conn_failures < 32) {
        c->conn_failures++;
    }
}

/* Resolve the next target (the redirect, else the current endpoint). Returns 0 or -1. */
static int conn_resolve(struct tally *c, char *why, size_t why_size)
{
    struct conn *k = &c->conn;
    struct endpoint ep;
    if (c->redirect[0] != '\0') {
        int rc = endpoint_parse(c->redirect, strlen(c->redirect), &ep);
        c->redirect[0] = '\0';
        if (rc != 0) {
            snprintf(why, why_size, "the leader's address \"%s\" is not host:port", ep.text);
            return -1;
        }
    } else {
        ep = c->endpoints[c->ep_idx];
    }
    copy_text(k->target, sizeof(k->target), ep.text);
    copy_text(k->host, sizeof(k->host), ep.host);
    set_endpoint_now(c, k->target);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    int rc = getaddrinfo(ep.host, ep.port, &hints, &k->addrs);
    if (rc != 0) {
        k->addrs = NULL;
        snprintf(why, why_size, "%s: %s", ep.text, gai_strerror(rc));
        return -1;
    }
    k->addr_next = k->addrs;
    return 0;
}

/* Start a non-blocking connect to the next address. */
static void conn_start(struct tally *c, int64_t now_ms)
{
    struct conn *k = &c->conn;
    char why[WHY_MAX];
    assert(k->state == CONN_DOWN && k->fd < 0);
    c->tried_once = true;
    if (k->addr_next == NULL && conn_resolve(c, why, sizeof(why)) != 0) {
        conn_drop(c, now_ms, false, why);
        return;
    }
    const struct addrinfo *ai = k->addr_next;
    k->addr_next = ai->ai_next;
    k->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (k->fd < 0) {
        snprintf(why, sizeof(why), "%s: socket: %s", k->target, strerror(errno));
        conn_drop(c, now_ms, true, why);
        return;
    }
    int one = 1;
    (void)setsockopt(k->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(k->fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        snprintf(why, sizeof(why), "%s: connect: %s", k->target, strerror(errno));
        conn_drop(c, now_ms, true, why);
        return;
    }
    k->state = CONN_CONNECTING;
    k->phase_deadline_ms = now_ms + c->connect_timeout_ms;
}

/* The connection is up (TCP, and TLS when configured): send HELLO. */
static void conn_send_hello(struct tally *c, int64_t now_ms)
{
    struct conn *k = &c->conn;
    struct rpc_request hello;
    memset(&hello, 0, sizeof(hello));
    hello.seq = k->hello_seq = c->next_seq++;
    hello.op = RPC_OP_HELLO;
    hello.u.hello.version = RPC_PROTOCOL_VERSION;
    copy_text(hello.u.hello.token, sizeof(hello.u.hello.token), c->token);
    if (rpc_request_encode(&k->out, &hello) != 0) {
        k->out.failed = false;
        conn_drop(c, now_ms, false, "out of memory encoding HELLO");
        return;
    }
    k->state = CONN_HELLO;
    conn_flush(c, now_ms);
}

/* Drive the TLS handshake as far as the socket allows; send HELLO once it is done. A
 * failed handshake is a failed connect (the next address or endpoint is tried). */
static void conn_handshake(struct tally *c, int64_t now_ms)
{
    struct conn *k = &c->conn;
    char text[TLS_TEXT_MAX], why[WHY_MAX];
    assert(k->state == CONN_TLS && k->ssl != NULL);
    ERR_clear_error();
    int rc = SSL_connect(k->ssl);
    if (rc == 1) {
        k->tls_wait = 0;
        c->tls_verify_why[0] = '\0';
        conn_send_hello(c, now_ms);
        return;
    }
    int err = SSL_get_error(k->ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        k->tls_wait = err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        return;
    }
    bool verify_failed =
        tls_failure(k->ssl, &k->io, err, "handshake", tls_name(c, k->host), text, sizeof(text));
    snprintf(why, sizeof(why), "%s: %s", k->target, text);
    if (verify_failed) {
        copy_text(c->tls_verify_why, sizeof(c->tls_verify_why), why);
    }
    conn_drop(c, now_ms, true, why);
}

/* The TCP connect finished (POLLOUT): check it, then start TLS or send HELLO. */
static void conn_connected(struct tally *c, int64_t now_ms)
{
    struct conn *k = &c->conn;
    int err = 0;
    socklen_t len = sizeof(err);
    char text[TLS_TEXT_MAX], why[WHY_MAX];
    if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
        err = errno;
    }
    if (err != 0) {
        snprintf(why, sizeof(why), "%s: connect: %s", k->target, strerror(err));
        conn_drop(c, now_ms, true, why);
        return;
    }
    if (c->tls_ctx == NULL) {
        conn_send_hello(c, now_ms);
        return;
    }
    k->io.fd = k->fd;
    k->io.err = 0;
    k->ssl = tls_session_new(c, k->host, &k->io, text, sizeof(text));
    if (k->ssl == NULL) {
        snprintf(why, sizeof(why), "%s: %s", k->target, text);
        conn_drop(c, now_ms, false, why);
        return;
    }
    k->state = CONN_TLS;
    conn_handshake(c, now_ms);
}

/*
 * Read up to `size` bytes from the connection, through TLS when it is on (one record's
 * plaintext at most). Returns the count, 0 if nothing can be read now, or -1 if the
 * connection ended or failed (why written).
 */
static ssize_t conn_recv(struct tally *c, uint8_t *buf, size_t size, char *why, size_t why_size)
{
    struct conn *k = &c->conn;
    if (k->ssl != NULL) {
        char text[TLS_TEXT_MAX];
        ERR_clear_error();
        int n = SSL_read(k->ssl, buf, size > INT_MAX ? INT_MAX : (int)size);
        if (n > 0) {
            k->read_wants_write = false;
            return n;
        }
        int err = SSL_get_error(k->ssl, n);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            k->read_wants_write = err == SSL_ERROR_WANT_WRITE;
            return 0;
        }
        tls_failure(k->ssl, &k->io, err, "read", tls_name(c, k->host), text, sizeof(text));
        snprintf(why, why_size, "%s: %s", k->target, text);
        return -1;
    }
    for (;;) {
        ssize_t n = recv(k->fd, buf, size, MSG_DONTWAIT);
        if (n > 0) {
            return n;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        }
        snprintf(why, why_size, "%s closed the connection%s%s", k->target, n < 0 ? ": " : "",
                 n < 0 ? strerror(errno) : "");
        return -1;
    }
}

/* Read what the socket has and handle every complete frame. */
static void conn_read(struct tally *c, int64_t now_ms)
{
    struct conn *k = &c->conn;
    uint8_t chunk[READ_CHUNK];
    uint64_t epoch = k->epoch;
    char why[WHY_MAX];
    for (int i = 0; i < READS_PER_WAKE; i++) {
        ssize_t n = conn_recv(c, chunk, sizeof(chunk), why, sizeof(why));
        if (n == 0) {
            return;
        }
        if (n < 0) {
            conn_drop(c, now_ms, false, why);
            return;
        }
        if (rpc_framer_feed(&k->framer, chunk, (size_t)n) != 0) {
            conn_drop(c, now_ms, false, "out of memory reading a frame");
            return;
        }
        for (;;) {
            const uint8_t *body;
            size_t len;
            int rc = rpc_framer_next(&k->framer, &body, &len);
            if (rc == 0) {
                break;
            }
            if (rc < 0) {
                snprintf(why, sizeof(why), "%s sent a frame over %zu bytes", k->target,
                         c->max_frame_bytes);
                conn_drop(c, now_ms, false, why);
                return;
            }
            handle_frame(c, body, len, now_ms);
            if (k->epoch != epoch) {
                return; /* dropped while handling: the rest of the stream is void */
            }
        }
        /* The node is alive: silence is measured from now, and only while calls wait. */
        k->silent_since_ms = k->n_sent > 0 ? now_ms : 0;
        /* A short recv emptied the socket; SSL_read gives one record at a time, so TLS
         * reads on until OpenSSL says it would wait (or the bound is reached: then the
         * loop sees the socket readable, or SSL_pending(), and comes back). */
        if (k->ssl == NULL && (size_t)n < sizeof(chunk)) {
            return;
        }
    }
}

/* ---- Sending (I/O thread). ---- */

/* Encode `call` with a fresh seq and move it to the sent table. Returns 0 or -1 if the
 * call was finished instead (it cannot be encoded). */
static int send_call(struct tally *c, struct call *call, int64_t now_ms)
{
    struct conn *k = &c->conn;
    size_t before = k->out.len;
    call->req.seq = c->next_seq++;
    int rc = rpc_request_encode(&k->out, &call->req);
    if (rc == 0 && k->out.len - before - RPC_FRAME_HEADER > c->max_frame_bytes) {
        k->out.len = before;
        rc = -3;
    }
    if (rc != 0) {
        k->out.failed = false;
        k->out.len = before;
        finish_error(c, call,
                     rc == -2   ? TALLY_ENOMEM
                     : rc == -3 ? TALLY_ETOOBIG
                                : TALLY_EINVAL,
                     rc == -2   ? "out of memory encoding the request"
                     : rc == -3 ? "the request is larger than max_frame_bytes"
                                : "the request is out of range",
                     now_ms);
        return -1;
    }
    pending_remove(c, call);
    table_insert(c, call);
    call->attempts++;
    snprintf(call->why, sizeof(call->why), "sent to %s, not answered", k->target);
    stat_add(&c->stats.requests_sent, 1);
    if (call->attempts > 1) {
        stat_add(&c->stats.retries, 1);
    }
    if (k->silent_since_ms == 0) {
        k->silent_since_ms = now_ms;
    }
    return 0;
}

/* Send every pending call that is due. Returns the earliest later retry time (INT64_MAX
 * if none). */
static int64_t send_due(struct tally *c, int64_t now_ms)
{
    int64_t next_ms = INT64_MAX;
    struct call *call = c->pending_head;
    while (call != NULL) {
        struct call *next = call->next;
        if (call->next_try_at_ms > now_ms) {
            if (call->next_try_at_ms < next_ms) {
                next_ms = call->next_try_at_ms;
            }
        } else {
            send_call(c, call, now_ms);
        }
        call = next;
    }
    return next_ms;
}

/* ---- The I/O loop. ---- */

/* Move submitted calls into the I/O thread's structures. Returns whether closing. */
static bool take_submissions(struct tally *c)
{
    uint64_t drained;
    if (read(c->wake_fd, &drained, sizeof(drained)) < 0) {
        /* EAGAIN: nothing to drain; the submit list is read under the lock anyway */
    }
    pthread_mutex_lock(&c->mu);
    struct call *list = c->submit_head;
    c->submit_head = c->submit_tail = NULL;
    c->wake_pending = false;
    bool closing = c->closing;
    pthread_mutex_unlock(&c->mu);
    while (list != NULL) {
        struct call *call = list;
        list = call->next;
        call->where = WHERE_NONE;
        heap_push(c, call);
        pending_push(c, call, false);
    }
    return closing;
}

/* Finish every call whose deadline has passed. */
static void expire_calls(struct tally *c, int64_t now_ms)
{
    while (c->heap_len > 0 && c->heap[0]->deadline_at_ms <= now_ms) {
        finish_unavailable(c, c->heap[0], TALLY_EUNAVAILABLE, now_ms);
    }
}

/* Connect when there is work (or once at start); time out slow connects and silence. */
static void manage_connection(struct tally *c, int64_t now_ms)
{
    struct conn *k = &c->conn;
    char why[WHY_MAX];
    switch (k->state) {
    case CONN_DOWN:
        if ((c->pending_head != NULL || !c->tried_once) && now_ms >= c->reconnect_at_ms) {
            conn_start(c, now_ms);
        }
        break;
    case CONN_CONNECTING:
    case CONN_TLS:
    case CONN_HELLO:
        /* One time-out covers the TCP connect, the TLS handshake and HELLO. */
        if (now_ms >= k->phase_deadline_ms) {
            snprintf(why, sizeof(why), "%s: no %s within %lld ms", k->target,
                     k->state == CONN_CONNECTING ? "connection"
                     : k->state == CONN_TLS      ? "TLS handshake"
                                                 : "answer to HELLO",
                     (long long)c->connect_timeout_ms);
            conn_drop(c, now_ms, k->state != CONN_HELLO, why);
        }
        break;
    case CONN_READY:
        if (k->silent_since_ms != 0 && now_ms - k->silent_since_ms >= c->silence_ms) {
            snprintf(why, sizeof(why), "%s: no answer for %lld ms", k->target,
                     (long long)(now_ms - k->silent_since_ms));
            conn_drop(c, now_ms, false, why);
        }
        break;
    }
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* How long poll() may sleep: until the next deadline, retry, reconnect or time-out. */
static int poll_timeout(const struct tally *c, int64_t now_ms, int64_t next_try_ms)
{
    const struct conn *k = &c->conn;
    int64_t at = INT64_MAX;
    if (c->heap_len > 0) {
        at = c->heap[0]->deadline_at_ms;
    }
    if (k->state == CONN_READY) {
        at = min64(at, next_try_ms);
        if (k->silent_since_ms != 0) {
            at = min64(at, k->silent_since_ms + c->silence_ms);
        }
    } else if (k->state == CONN_DOWN) {
        if (c->pending_head != NULL) {
            at = min64(at, c->reconnect_at_ms);
        }
    } else {
        at = min64(at, k->phase_deadline_ms);
    }
    if (at == INT64_MAX) {
        return -1;
    }
    int64_t wait_ms = at - now_ms;
    if (wait_ms < 0) {
        return 0;
    }
    return wait_ms > 60000 ? 60000 : (int)wait_ms;
}

/* On close: every call still in the client ends with ECLOSED; background voids drop. */
static void drain_on_close(struct tally *c, int64_t now_ms)
{
    while (c->heap_len > 0) {
        struct call *call = c->heap[0];
        if (call->kind == CALL_BG_VOID) {
            call_unlink(c, call);
            heap_remove(c, call);
            c->n_bg--;
            stat_add(&c->stats.voids_failed, 1);
            free(call);
        } else {
            finish_unavailable(c, call, TALLY_ECLOSED, now_ms);
        }
    }
}

/* What to poll the connection's socket for. */
static short conn_events(const struct conn *k)
{
    if (k->state == CONN_CONNECTING) {
        return POLLOUT;
    }
    if (k->state == CONN_TLS) {
        return k->tls_wait;
    }
    short events = POLLIN;
    if ((k->out.len > k->out_off && !k->write_wants_read) || k->read_wants_write) {
        events |= POLLOUT;
    }
    return events;
}

/* Whether OpenSSL holds decrypted bytes not yet read: they are no longer on the socket,
 * so poll() would not report them. */
static bool conn_buffered(const struct conn *k)
{
    return k->ssl != NULL && (k->state == CONN_HELLO || k->state == CONN_READY) &&
           SSL_pending(k->ssl) > 0;
}

/* Act on what poll() reported for the socket (`revents`, and `buffered` plaintext). */
static void conn_io(struct tally *c, short revents, bool buffered, int64_t now_ms)
{
    struct conn *k = &c->conn;
    if (k->state == CONN_CONNECTING) {
        conn_connected(c, now_ms);
        return;
    }
    if (k->state == CONN_TLS) {
        conn_handshake(c, now_ms);
        return;
    }
    /* A TLS write may wait for the socket readable, a TLS read for it writable. */
    bool writable = (revents & POLLOUT) || (k->write_wants_read && (revents & POLLIN));
    bool readable = (revents & (POLLIN | POLLHUP | POLLERR)) || buffered ||
                    (k->read_wants_write && (revents & POLLOUT));
    if (writable && conn_flush(c, now_ms) != 0) {
        return;
    }
    if (readable) {
        conn_read(c, now_ms);
    }
}

static void *io_main(void *arg)
{
    struct tally *c = arg;
    struct conn *k = &c->conn;
    for (;;) {
        int64_t now_ms = mono_ms();
        if (take_submissions(c)) {
            break;
        }
        expire_calls(c, now_ms);
        manage_connection(c, now_ms);
        int64_t next_try_ms = INT64_MAX;
        if (k->state == CONN_READY) {
            next_try_ms = send_due(c, now_ms);
            if (k->out.len > k->out_off) {
                conn_flush(c, now_ms);
            }
        }
        struct pollfd fds[2] = {{.fd = c->wake_fd, .events = POLLIN}, {.fd = -1}};
        nfds_t nfds = 1;
        if (k->fd >= 0) {
            fds[1].fd = k->fd;
            fds[1].events = conn_events(k);
            nfds = 2;
        }
        bool buffered = conn_buffered(k);
        int rc = poll(fds, nfds, buffered ? 0 : poll_timeout(c, now_ms, next_try_ms));
        if (rc < 0 || nfds < 2 || (fds[1].revents == 0 && !buffered)) {
            continue;
        }
        conn_io(c, fds[1].revents, buffered, mono_ms());
    }
    int64_t now_ms = mono_ms();
    drain_on_close(c, now_ms);
    conn_drop(c, now_ms, false, "closing");
    return NULL;
}

/* ---- Opening and closing. ---- */

static void set_errmsg(char *errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_errmsg(char *errmsg, const char *fmt, ...)
{
    if (errmsg == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, TALLY_ERRMSG_SIZE, fmt, ap);
    va_end(ap);
}

static bool duration_ok(int64_t ms)
{
    return ms >= 0 && ms <= DURATION_MAX_MS;
}

/* Check `cfg` and copy it into `c` with defaults applied. Returns 0 or -TALLY_EINVAL. */
static int config_apply(struct tally *c, const struct tally_config *cfg, char *errmsg)
{
    char why[TALLY_ERRMSG_SIZE];
    if (cfg == NULL || is_empty(cfg->endpoints)) {
        set_errmsg(errmsg, "no endpoints configured");
        return -TALLY_EINVAL;
    }
    /* A client certificate may stand for the token: NULL is then "". */
    bool token_optional = !is_empty(cfg->tls_cert_file);
    if ((cfg->token == NULL && !token_optional) ||
        (cfg->token != NULL && !text_fits(cfg->token, TALLY_TOKEN_MAX))) {
        set_errmsg(errmsg, "the token is missing or longer than %d bytes", TALLY_TOKEN_MAX);
        return -TALLY_EINVAL;
    }
    int n = endpoints_parse(cfg->endpoints, c->endpoints, why, sizeof(why));
    if (n < 0) {
        set_errmsg(errmsg, "%s", why);
        return -TALLY_EINVAL;
    }
    if (!duration_ok(cfg->deadline_ms) || !duration_ok(cfg->connect_timeout_ms) ||
        !duration_ok(cfg->void_deadline_ms) || !duration_ok(cfg->backoff_min_ms) ||
        !duration_ok(cfg->backoff_max_ms)) {
        set_errmsg(errmsg, "a duration is negative or longer than a day");
        return -TALLY_EINVAL;
    }
    if (cfg->max_frame_bytes != 0 &&
        (cfg->max_frame_bytes < 4096 || cfg->max_frame_bytes > RPC_FRAME_LIMIT)) {
        set_errmsg(errmsg, "max_frame_bytes must be 4096 .. %u", RPC_FRAME_LIMIT);
        return -TALLY_EINVAL;
    }
    if (cfg->max_inflight > MAX_INFLIGHT_LIMIT) {
        set_errmsg(errmsg, "max_inflight must be at most %u", MAX_INFLIGHT_LIMIT);
        return -TALLY_EINVAL;
    }
    c->n_endpoints = (uint32_t)n;
    copy_text(c->token, sizeof(c->token), cfg->token);
    c->deadline_ms = cfg->deadline_ms != 0 ? cfg->deadline_ms : DEFAULT_DEADLINE_MS;
    c->connect_timeout_ms =
        cfg->connect_timeout_ms != 0 ? cfg->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    c->void_deadline_ms =
        cfg->void_deadline_ms != 0 ? cfg->void_deadline_ms : DEFAULT_VOID_DEADLINE_MS;
    c->backoff_min_ms = cfg->backoff_min_ms != 0 ? cfg->backoff_min_ms : DEFAULT_BACKOFF_MIN_MS;
    c->backoff_max_ms = cfg->backoff_max_ms != 0 ? cfg->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
    if (c->backoff_max_ms < c->backoff_min_ms) {
        c->backoff_max_ms = c->backoff_min_ms;
    }
    /* A connection that answers nothing for this long is dead (black-holed node). */
    c->silence_ms = 2 * c->connect_timeout_ms;
    c->fail_open = cfg->fail_open != 0;
    c->max_frame_bytes = cfg->max_frame_bytes != 0 ? cfg->max_frame_bytes : RPC_FRAME_MAX;
    c->max_inflight = cfg->max_inflight != 0 ? cfg->max_inflight : DEFAULT_MAX_INFLIGHT;
    return 0;
}

/* The password callback of a key: none is asked for (a library must not prompt). */
static int tls_no_password(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)userdata;
    return 0;
}

/* Whether `path` (configuration field `what`) can be opened for reading; errmsg if not. */
static bool tls_file_readable(const char *what, const char *path, char *errmsg)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        set_errmsg(errmsg, "%s %s: %s", what, path, strerror(errno));
        return false;
    }
    fclose(f);
    return true;
}

/*
 * Check the TLS fields of `cfg` and build the client's SSL_CTX from them (c->tls_ctx
 * stays NULL without tls_ca_file): verify the server always, TLS 1.2 or later, the client
 * certificate and key if given. Returns 0, -TALLY_EINVAL with OpenSSL's reason in errmsg,
 * or -TALLY_ENOMEM.
 */
static int tls_configure(struct tally *c, const struct tally_config *cfg, char *errmsg)
{
    bool has_cert = !is_empty(cfg->tls_cert_file);
    bool has_key = !is_empty(cfg->tls_key_file);
    char reason[128];
    if (is_empty(cfg->tls_ca_file)) {
        if (has_cert || has_key || !is_empty(cfg->tls_server_name)) {
            set_errmsg(errmsg, "tls_cert_file, tls_key_file and tls_server_name need tls_ca_file "
                               "(TLS is off without it)");
            return -TALLY_EINVAL;
        }
        return 0;
    }
    if (has_cert != has_key) {
        set_errmsg(errmsg, "tls_cert_file and tls_key_file go together: give both or neither");
        return -TALLY_EINVAL;
    }
    if (!is_empty(cfg->tls_server_name) && !text_fits(cfg->tls_server_name, TLS_SERVER_NAME_MAX)) {
        set_errmsg(errmsg, "tls_server_name is longer than %d bytes", TLS_SERVER_NAME_MAX);
        return -TALLY_EINVAL;
    }
    copy_text(c->tls_server_name, sizeof(c->tls_server_name), cfg->tls_server_name);
    pthread_once(&tls_bio_once, tls_bio_method_init);
    if (tls_bio_method == NULL) {
        set_errmsg(errmsg, "tls: cannot make the socket BIO method");
        return -TALLY_ENOMEM;
    }
    if (!tls_file_readable("tls_ca_file", cfg->tls_ca_file, errmsg) ||
        (has_cert && !tls_file_readable("tls_cert_file", cfg->tls_cert_file, errmsg)) ||
        (has_key && !tls_file_readable("tls_key_file", cfg->tls_key_file, errmsg))) {
        return -TALLY_EINVAL;
    }
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        tls_reason(reason, sizeof(reason));
        set_errmsg(errmsg, "tls: cannot make a context: %s", reason);
        return -TALLY_ENOMEM;
    }
    SSL_CTX_set_default_passwd_cb(ctx, tls_no_password);
    const char *what = NULL, *file = "";
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        what = "tls: cannot require TLS 1.2";
    } else if (SSL_CTX_load_verify_locations(ctx, cfg->tls_ca_file, NULL) != 1) {
        what = "tls_ca_file";
        file = cfg->tls_ca_file;
    } else if (has_cert && SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_file) != 1) {
        what = "tls_cert_file";
        file = cfg->tls_cert_file;
    } else if (has_key &&
               SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key_file, SSL_FILETYPE_PEM) != 1) {
        /* OpenSSL 3 finds a key of another certificate here already. */
        unsigned long e = ERR_peek_error();
        bool mismatch =
            ERR_GET_LIB(e) == ERR_LIB_X509 && (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH ||
                                               ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH);
        what = mismatch ? "tls_key_file does not match tls_cert_file:" : "tls_key_file";
        file = cfg->tls_key_file;
    } else if (has_key && SSL_CTX_check_private_key(ctx) != 1) {
        what = "tls_key_file does not match tls_cert_file:";
        file = cfg->tls_key_file;
    }
    if (what != NULL) {
        tls_reason(reason, sizeof(reason));
        set_errmsg(errmsg, "%s %s: %s", what, file, reason);
        SSL_CTX_free(ctx);
        return -TALLY_EINVAL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    c->tls_ctx = ctx;
    return 0;
}

/* Free what tally_open() allocated (the thread is not running). */
static void client_free(struct tally *c)
{
    SSL_free(c->conn.ssl);
    SSL_CTX_free(c->tls_ctx);
    if (c->conn.fd >= 0) {
        close(c->conn.fd);
    }
    if (c->conn.addrs != NULL) {
        freeaddrinfo(c->conn.addrs);
    }
    rpc_framer_free(&c->conn.framer);
    rpc_buf_free(&c->conn.out);
    if (c->wake_fd >= 0) {
        close(c->wake_fd);
    }
    free(c->heap);
    free(c->table);
    free(c->granted);
    pthread_cond_destroy(&c->room_cond);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Allocate the heap and the sent table for max_inflight callers' calls plus as many
 * background voids. */
static int alloc_tables(struct tally *c)
{
    c->heap_cap = 2 * (size_t)c->max_inflight;
    size_t buckets = 64;
    while (buckets < c->heap_cap) {
        buckets *= 2;
    }
    c->table_mask = buckets - 1;
    c->heap = calloc(c->heap_cap, sizeof(*c->heap));
    c->table = calloc(buckets, sizeof(*c->table));
    c->granted = calloc(GRANTED_SETS, sizeof(*c->granted));
    return c->heap != NULL && c->table != NULL && c->granted != NULL ? 0 : -1;
}

static int init_sync(struct tally *c)
{
    pthread_condattr_t attr;
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        return -1;
    }
    if (pthread_condattr_init(&attr) != 0) {
        pthread_mutex_destroy(&c->mu);
        return -1;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&c->room_cond, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0) {
        pthread_mutex_destroy(&c->mu);
        return -1;
    }
    return 0;
}

int tally_open(struct tally **out, const struct tally_config *cfg, char *errmsg)
{
    if (out == NULL) {
        set_errmsg(errmsg, "out is NULL");
        return -TALLY_EINVAL;
    }
    *out = NULL;
    struct tally *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        set_errmsg(errmsg, "out of memory");
        return -TALLY_ENOMEM;
    }
    int rc = config_apply(c, cfg, errmsg);
    if (rc == 0) {
        rc = tls_configure(c, cfg, errmsg);
    }
    if (rc != 0) {
        free(c);
        return rc;
    }
    if (init_sync(c) != 0) {
        SSL_CTX_free(c->tls_ctx);
        free(c);
        set_errmsg(errmsg, "cannot create a mutex");
        return -TALLY_EINTERNAL;
    }
    c->conn.fd = -1;
    c->wake_fd = -1;
    c->next_seq = 1;
    rpc_framer_init(&c->conn.framer, c->max_frame_bytes);
    if (random_bytes(&c->rng, sizeof(c->rng)) != 0 || c->rng == 0) {
        c->rng = (uint64_t)mono_ms() | 1;
    }
    if (random_bytes(&c->ep_idx, sizeof(c->ep_idx)) != 0) {
        c->ep_idx = 0;
    }
    c->ep_idx %= c->n_endpoints; /* spread clients over the members */
    if (alloc_tables(c) != 0) {
        client_free(c);
        set_errmsg(errmsg, "out of memory");
        return -TALLY_ENOMEM;
    }
    c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->wake_fd < 0) {
        set_errmsg(errmsg, "eventfd: %s", strerror(errno));
        client_free(c);
        return -TALLY_EINTERNAL;
    }
    rc = pthread_create(&c->thread, NULL, io_main, c);
    if (rc != 0) {
        set_errmsg(errmsg, "cannot start the I/O thread: %s", strerror(rc));
        client_free(c);
        return -TALLY_EINTERNAL;
    }
    c->thread_started = true;
    *out = c;
    return 0;
}

static void wake(struct tally *c)
{
    uint64_t one = 1;
    if (write(c->wake_fd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is already non-zero, the thread will wake anyway */
    }
}

void tally_close(struct tally *c)
{
    if (c == NULL) {
        return;
    }
    assert(!pthread_equal(pthread_self(), c->thread));
    pthread_mutex_lock(&c->mu);
    c->closing = true;
    pthread_cond_broadcast(&c->room_cond);
    pthread_mutex_unlock(&c->mu);
    wake(c);
    if (c->thread_started) {
        pthread_join(c->thread, NULL);
    }
    /* Calls submitted after the thread's last look (a contract violation) still end. */
    struct tally_result r;
    while (c->submit_head != NULL) {
        struct call *call = c->submit_head;
        c->submit_head = call->next;
        result_init(&r, call);
        result_fail(&r, TALLY_UNAVAILABLE, TALLY_ECLOSED, "the client is closing");
        if (call->waiter != NULL) {
            *call->res = r;
            call->waiter->done = true;
            pthread_cond_signal(&call->waiter->cond);
        } else if (call->cb != NULL) {
            call->cb(call->cb_arg, &r);
        }
        free(call);
    }
    client_free(c);
}

void tally_stats(struct tally *c, struct tally_stats *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t *dst = (uint64_t *)out;
    uint64_t *src = (uint64_t *)&c->stats;
    size_t n = offsetof(struct tally_stats, endpoint) / sizeof(uint64_t);
    for (size_t i = 0; i < n; i++) {
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
    pthread_mutex_lock(&c->mu);
    out->inflight = c->n_calls;
    copy_text(out->endpoint, sizeof(out->endpoint), c->endpoint_now);
    pthread_mutex_unlock(&c->mu);
}

/* ---- Submitting calls (any thread). ---- */

/* A new call with a deadline `deadline_ms` from now (0: the default). NULL if out of
 * memory. The caller validated deadline_ms. */
static struct call *call_new(struct tally *c, uint8_t op, int64_t deadline_ms)
{
    struct call *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        return NULL;
    }
    call->heap_idx = SIZE_MAX;
    call->req.op = op;
    call->deadline_at_ms = mono_ms() + (deadline_ms != 0 ? deadline_ms : c->deadline_ms);
    return call;
}

/* Validate a per-call deadline; also refuses calls made on the I/O thread that would
 * block it. Returns 0 or a positive error code with `msg`. */
static int check_call(struct tally *c, int64_t deadline_ms, bool blocking, const char **msg)
{
    if (c == NULL) {
        *msg = "the client is NULL";
        return TALLY_EINVAL;
    }
    if (!duration_ok(deadline_ms)) {
        *msg = "deadline_ms must be 0 .. one day";
        return TALLY_EINVAL;
    }
    if (blocking && c->thread_started && pthread_equal(pthread_self(), c->thread)) {
        *msg = "a blocking call from a callback would deadlock the I/O thread";
        return TALLY_EINVAL;
    }
    return 0;
}

/* Absolute CLOCK_MONOTONIC time of `at_ms`. */
static struct timespec timespec_at(int64_t at_ms)
{
    struct timespec ts = {.tv_sec = at_ms / 1000, .tv_nsec = (at_ms % 1000) * 1000000};
    return ts;
}

/*
 * Hand `call` (owned by the caller until then) to the I/O thread. When the client is full,
 * a blocking caller (`wait`) waits for room until the call's deadline; an asynchronous one
 * gets TALLY_EBUSY at once. Returns 0 (ownership transferred) or a positive error code (the
 * caller still owns the call).
 */
static int submit(struct tally *c, struct call *call, bool wait)
{
    pthread_mutex_lock(&c->mu);
    while (!c->closing && c->n_calls >= c->max_inflight) {
        if (!wait) {
            pthread_mutex_unlock(&c->mu);
            stat_add(&c->stats.busy, 1);
            return TALLY_EBUSY;
        }
        struct timespec ts = timespec_at(call->deadline_at_ms);
        c->n_room_waiters++;
        int rc = pthread_cond_timedwait(&c->room_cond, &c->mu, &ts);
        c->n_room_waiters--;
        if (rc == ETIMEDOUT && c->n_calls >= c->max_inflight) {
            pthread_mutex_unlock(&c->mu);
            stat_add(&c->stats.busy, 1);
            return TALLY_EBUSY;
        }
    }
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        return TALLY_ECLOSED;
    }
    c->n_calls++;
    call->where = WHERE_PENDING;
    call->next = NULL;
    if (c->submit_tail != NULL) {
        c->submit_tail->next = call;
    } else {
        c->submit_head = call;
    }
    c->submit_tail = call;
    bool need_wake = !c->wake_pending;
    c->wake_pending = true;
    pthread_mutex_unlock(&c->mu);
    stat_add(&c->stats.calls, 1);
    if (need_wake) {
        wake(c);
    }
    return 0;
}

/* A submission refused for lack of room or because the client closes, as a result. */
static void refused_result(struct tally *c, const struct call *call, int code,
                           struct tally_result *r)
{
    result_init(r, call);
    if (code == TALLY_EBUSY) {
        result_fail(r, TALLY_UNAVAILABLE, TALLY_EBUSY,
                    "more than %u requests in flight in this client", c->max_inflight);
        stat_add(&c->stats.unavailable, 1);
        if (call->kind == CALL_RESERVE && c->fail_open) {
            r->outcome = TALLY_GRANTED;
            r->failed_open = 1;
            stat_add(&c->stats.failed_open, 1);
        }
    } else {
        result_fail(r, TALLY_UNAVAILABLE, code, "the client is closing");
    }
}

/*
 * Run `call` (owned; consumed) and wait for its answer in `res` (required). Returns what
 * the blocking API returns for that answer.
 */
static int run_blocking(struct tally *c, struct call *call, struct tally_result *res)
{
    struct waiter w;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&w.cond, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0) {
        free(call);
        return fail_early(res, TALLY_EINTERNAL, "cannot create a condition variable");
    }
    w.done = false;
    call->waiter = &w;
    call->res = res;
    rc = submit(c, call, true);
    if (rc != 0) {
        refused_result(c, call, rc, res);
        free(call);
        pthread_cond_destroy(&w.cond);
        return result_code(res);
    }
    pthread_mutex_lock(&c->mu);
    while (!w.done) {
        /* No time-out here: the I/O thread ends every call by its deadline. */
        pthread_cond_wait(&w.cond, &c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    pthread_cond_destroy(&w.cond);
    return result_code(res);
}

/* Run `call` asynchronously: 0 if queued (cb will run), else -code (call freed). */
static int run_async(struct tally *c, struct call *call, tally_cb cb, void *arg)
{
    call->cb = cb;
    call->cb_arg = arg;
    int rc = submit(c, call, false);
    if (rc != 0) {
        free(call);
        return -rc;
    }
    return 0;
}

/* Blocking or asynchronous, with the local result when the caller passed none. */
static int run(struct tally *c, struct call *call, struct tally_result *res, tally_cb cb, void *arg)
{
    if (cb != NULL) {
        return run_async(c, call, cb, arg);
    }
    struct tally_result local;
    return run_blocking(c, call, res != NULL ? res : &local);
}

/* ---- Building calls. ---- */

/* Set up a write of command `type` with `request_id` (NULL: a fresh one). Returns 0 or a
 * positive error code. */
static int call_write(struct call *call, uint8_t type, const uint8_t *request_id)
{
    call->req.op = RPC_OP_WRITE;
    call->req.u.write.type = type;
    if (request_id != NULL) {
        memcpy(call->req.u.write.request_id, request_id, LEDGER_REQUEST_ID_SIZE);
        return 0;
    }
    return random_bytes(call->req.u.write.request_id, LEDGER_REQUEST_ID_SIZE) == 0
               ? 0
               : TALLY_EINTERNAL;
}

/* The hash of a key into `out`: `key_hash` when given, else the hash of `key_secret`. */
static void key_hash_of(const char *key_secret, const uint8_t *key_hash,
                        uint8_t out[LEDGER_KEY_HASH_SIZE])
{
    if (key_hash != NULL) {
        memcpy(out, key_hash, LEDGER_KEY_HASH_SIZE);
    } else {
        tally_key_hash(key_secret, out);
    }
}

/* Validate a reserve's arguments. Returns 0 or a positive code with `msg`. */
static int reserve_check(const struct tally_reserve_args *a, const char **msg)
{
    if (a == NULL) {
        *msg = "args is NULL";
        return TALLY_EINVAL;
    }
    int payers = (a->key_secret != NULL) + (a->key_hash != NULL) + (a->account != NULL);
    if (payers != 1) {
        *msg = "name exactly one of key_secret, key_hash and account";
        return TALLY_EINVAL;
    }
    if (a->key_secret != NULL && a->key_secret[0] == '\0') {
        *msg = "key_secret is empty";
        return TALLY_EINVAL;
    }
    if (a->account != NULL && !name_valid(a->account, TALLY_NAME_MAX)) {
        *msg = "account is not a valid name (1-128 bytes of [A-Za-z0-9._:/@-])";
        return TALLY_ENAME;
    }
    if (!is_empty(a->model) && !name_valid(a->model, TALLY_MODEL_MAX)) {
        *msg = "model is not a valid name (1-64 bytes of [A-Za-z0-9._:/@-])";
        return TALLY_ENAME;
    }
    if (a->estimate_micros < 0 || a->estimate_micros > AMOUNT_MAX ||
        a->estimate_tokens > TOKENS_MAX) {
        *msg = "estimate out of range (0 .. 10^15 micros, 0 .. 10^12 tokens)";
        return TALLY_EINVAL;
    }
    if (a->ttl_ms < 1 || a->ttl_ms > TTL_MAX_MS) {
        *msg = "ttl_ms must be 1 ms .. 7 days";
        return TALLY_EINVAL;
    }
    if (a->metadata_len > TALLY_METADATA_MAX || (a->metadata_len > 0 && a->metadata == NULL)) {
        *msg = "metadata longer than 256 bytes, or NULL with a length";
        return TALLY_EINVAL;
    }
    return 0;
}

/* Build a reserve call (NULL with *code and *msg on failure). */
static struct call *reserve_call(struct tally *c, const struct tally_reserve_args *a,
                                 int64_t deadline_ms, bool blocking, int *code, const char **msg)
{
    *code = check_call(c, deadline_ms, blocking, msg);
    if (*code == 0) {
        *code = reserve_check(a, msg);
    }
    if (*code != 0) {
        return NULL;
    }
    struct call *call = call_new(c, RPC_OP_WRITE, deadline_ms);
    if (call == NULL) {
        *code = TALLY_ENOMEM;
        *msg = "out of memory";
        return NULL;
    }
    call->kind = CALL_RESERVE;
    *code = call_write(call, LEDGER_CMD_RESERVE, a->request_id);
    if (*code != 0) {
        free(call);
        *msg = "getrandom failed";
        return NULL;
    }
    struct ledger_cmd *cmd = &call->req.u.write;
    if (a->account != NULL) {
        cmd->u.reserve.by_account = 1;
        copy_text(cmd->u.reserve.account, sizeof(cmd->u.reserve.account), a->account);
    } else {
        key_hash_of(a->key_secret, a->key_hash, cmd->u.reserve.key_hash);
    }
    cmd->u.reserve.estimate_micros = a->estimate_micros;
    cmd->u.reserve.estimate_tokens = a->estimate_tokens;
    copy_text(cmd->u.reserve.model, sizeof(cmd->u.reserve.model), a->model);
    cmd->u.reserve.ttl_ms = a->ttl_ms;
    cmd->u.reserve.metadata_len = (uint16_t)a->metadata_len;
    if (a->metadata_len > 0) {
        memcpy(cmd->u.reserve.metadata, a->metadata, a->metadata_len);
    }
    return call;
}

/* A reserve, blocking (`cb` NULL: the answer in `res`) or asynchronous (`cb` runs). */
static int reserve_run(struct tally *c, const struct tally_reserve_args *args, int64_t deadline_ms,
                       struct tally_result *res, tally_cb cb, void *arg)
{
    int code;
    const char *msg;
    struct call *call = reserve_call(c, args, deadline_ms, cb == NULL, &code, &msg);
    if (call == NULL) {
        return cb != NULL ? -code : fail_early(res, code, msg);
    }
    return run(c, call, res, cb, arg);
}

int tally_reserve(struct tally *c, const struct tally_reserve_args *args, int64_t deadline_ms,
                  struct tally_result *res)
{
    if (res == NULL) {
        return -TALLY_EINVAL;
    }
    return reserve_run(c, args, deadline_ms, res, NULL, NULL);
}

int tally_reserve_async(struct tally *c, const struct tally_reserve_args *args, int64_t deadline_ms,
                        tally_cb cb, void *arg)
{
    if (cb == NULL) {
        return -TALLY_EINVAL;
    }
    return reserve_run(c, args, deadline_ms, NULL, cb, arg);
}

/* Build a settle, void or extend of reservation `request_id`. */
static struct call *resolve_call(struct tally *c, uint8_t type, const uint8_t *request_id,
                                 int64_t amount, uint64_t tokens, int64_t deadline_ms,
                                 bool blocking, int *code, const char **msg)
{
    *code = check_call(c, deadline_ms, blocking, msg);
    if (*code != 0) {
        return NULL;
    }
    *code = TALLY_EINVAL;
    if (request_id == NULL) {
        *msg = "request_id is NULL";
        return NULL;
    }
    if (type == LEDGER_CMD_SETTLE && (amount < 0 || amount > AMOUNT_MAX || tokens > TOKENS_MAX)) {
        *msg = "actual out of range (0 .. 10^15 micros, 0 .. 10^12 tokens)";
        return NULL;
    }
    if (type == LEDGER_CMD_EXTEND && (amount < 1 || amount > TTL_MAX_MS)) {
        *msg = "ttl_ms must be 1 ms .. 7 days";
        return NULL;
    }
    struct call *call = call_new(c, RPC_OP_WRITE, deadline_ms);
    if (call == NULL) {
        *code = TALLY_ENOMEM;
        *msg = "out of memory";
        return NULL;
    }
    *code = 0;
    call_write(call, type, request_id);
    if (type == LEDGER_CMD_SETTLE) {
        call->req.u.write.u.settle.actual_micros = amount;
        call->req.u.write.u.settle.actual_tokens = tokens;
    } else if (type == LEDGER_CMD_EXTEND) {
        call->req.u.write.u.extend.ttl_ms = amount;
    }
    return call;
}

static int resolve_run(struct tally *c, uint8_t type, const uint8_t *request_id, int64_t amount,
                       uint64_t tokens, int64_t deadline_ms, struct tally_result *res, tally_cb cb,
                       void *arg)
{
    int code;
    const char *msg;
    struct call *call =
        resolve_call(c, type, request_id, amount, tokens, deadline_ms, cb == NULL, &code, &msg);
    if (call == NULL) {
        return cb != NULL ? -code : fail_early(res, code, msg);
    }
    return run(c, call, res, cb, arg);
}

int tally_settle(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                 int64_t actual_micros, uint64_t actual_tokens, int64_t deadline_ms,
                 struct tally_result *res)
{
    return resolve_run(c, LEDGER_CMD_SETTLE, request_id, actual_micros, actual_tokens, deadline_ms,
                       res, NULL, NULL);
}

int tally_void(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
               int64_t deadline_ms, struct tally_result *res)
{
    return resolve_run(c, LEDGER_CMD_VOID, request_id, 0, 0, deadline_ms, res, NULL, NULL);
}

int tally_extend(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE], int64_t ttl_ms,
                 int64_t deadline_ms, struct tally_result *res)
{
    return resolve_run(c, LEDGER_CMD_EXTEND, request_id, ttl_ms, 0, deadline_ms, res, NULL, NULL);
}

int tally_settle_async(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                       int64_t actual_micros, uint64_t actual_tokens, int64_t deadline_ms,
                       tally_cb cb, void *arg)
{
    if (cb == NULL) {
        return -TALLY_EINVAL;
    }
    return resolve_run(c, LEDGER_CMD_SETTLE, request_id, actual_micros, actual_tokens, deadline_ms,
                       NULL, cb, arg);
}

int tally_void_async(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                     int64_t deadline_ms, tally_cb cb, void *arg)
{
    if (cb == NULL) {
        return -TALLY_EINVAL;
    }
    return resolve_run(c, LEDGER_CMD_VOID, request_id, 0, 0, deadline_ms, NULL, cb, arg);
}

int tally_extend_async(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                       int64_t ttl_ms, int64_t deadline_ms, tally_cb cb, void *arg)
{
    if (cb == NULL) {
        return -TALLY_EINVAL;
    }
    return resolve_run(c, LEDGER_CMD_EXTEND, request_id, ttl_ms, 0, deadline_ms, NULL, cb, arg);
}

/* ---- Admin writes. ---- */

/* Start a blocking call of `op` after the common checks. NULL with *rc set on failure. */
static struct call *blocking_call(struct tally *c, uint8_t op, int64_t deadline_ms,
                                  struct tally_result *res, int *rc)
{
    const char *msg;
    int code = check_call(c, deadline_ms, true, &msg);
    if (code != 0) {
        *rc = fail_early(res, code, msg);
        return NULL;
    }
    struct call *call = call_new(c, op, deadline_ms);
    if (call == NULL) {
        *rc = fail_early(res, TALLY_ENOMEM, "out of memory");
    }
    return call;
}

/*
 * Run an admin write of command `type`, whose fields are those of `cmd` (borrowed, copied;
 * only its `u` is read), as a blocking call with `request_id` (NULL: a fresh one). The
 * typed admin calls below check their arguments, fill a zeroed command and end here.
 */
static int admin_run(struct tally *c, uint8_t type, const struct ledger_cmd *cmd,
                     const uint8_t *request_id, int64_t deadline_ms, struct tally_result *res)
{
    int rc;
    struct call *call = blocking_call(c, RPC_OP_WRITE, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    if (call_write(call, type, request_id) != 0) {
        free(call);
        return fail_early(res, TALLY_EINTERNAL, "getrandom failed");
    }
    call->req.u.write.u = cmd->u;
    return run(c, call, res, NULL, NULL);
}

int tally_account_create(struct tally *c, const char *name, const char *parent,
                         const struct tally_limits *limits, const uint8_t *request_id,
                         int64_t deadline_ms, struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (!name_valid(name, TALLY_NAME_MAX) ||
        (!is_empty(parent) && !name_valid(parent, TALLY_NAME_MAX))) {
        return fail_early(res, TALLY_ENAME, "not a valid account name");
    }
    memset(&cmd, 0, sizeof(cmd));
    copy_text(cmd.u.create.name, sizeof(cmd.u.create.name), name);
    copy_text(cmd.u.create.parent, sizeof(cmd.u.create.parent), parent);
    limits_to_wire(limits, &cmd.u.create.limits);
    return admin_run(c, LEDGER_CMD_ACCOUNT_CREATE, &cmd, request_id, deadline_ms, res);
}

int tally_account_update(struct tally *c, const char *name, const struct tally_limits *limits,
                         uint32_t clear, const char *new_parent, const uint8_t *request_id,
                         int64_t deadline_ms, struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (!name_valid(name, TALLY_NAME_MAX) ||
        (!is_empty(new_parent) && !name_valid(new_parent, TALLY_NAME_MAX))) {
        return fail_early(res, TALLY_ENAME, "not a valid account name");
    }
    if ((clear & ~(uint32_t)TALLY_LIM_ALL) != 0 ||
        (limits != NULL && (limits->set & ~(uint32_t)TALLY_LIM_ALL) != 0)) {
        return fail_early(res, TALLY_EINVAL, "unknown limit bits");
    }
    memset(&cmd, 0, sizeof(cmd));
    copy_text(cmd.u.update.name, sizeof(cmd.u.update.name), name);
    limits_to_wire(limits, &cmd.u.update.limits);
    cmd.u.update.clear = clear;
    if (new_parent != NULL) {
        cmd.u.update.set_parent = 1;
        copy_text(cmd.u.update.parent, sizeof(cmd.u.update.parent), new_parent);
    }
    return admin_run(c, LEDGER_CMD_ACCOUNT_UPDATE, &cmd, request_id, deadline_ms, res);
}

int tally_key_add(struct tally *c, const char *account, const char *key_secret,
                  const uint8_t *key_hash, const uint8_t *request_id, int64_t deadline_ms,
                  struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (!name_valid(account, TALLY_NAME_MAX)) {
        return fail_early(res, TALLY_ENAME, "not a valid account name");
    }
    if ((key_secret == NULL) == (key_hash == NULL) ||
        (key_secret != NULL && key_secret[0] == '\0')) {
        return fail_early(res, TALLY_EINVAL, "give exactly one of key_secret and key_hash");
    }
    memset(&cmd, 0, sizeof(cmd));
    copy_text(cmd.u.key.account, sizeof(cmd.u.key.account), account);
    key_hash_of(key_secret, key_hash, cmd.u.key.key_hash);
    return admin_run(c, LEDGER_CMD_KEY_ADD, &cmd, request_id, deadline_ms, res);
}

int tally_key_revoke(struct tally *c, const uint8_t key_hash[TALLY_KEY_HASH_SIZE],
                     const uint8_t *request_id, int64_t deadline_ms, struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (key_hash == NULL) {
        return fail_early(res, TALLY_EINVAL, "key_hash is NULL");
    }
    memset(&cmd, 0, sizeof(cmd));
    memcpy(cmd.u.key.key_hash, key_hash, LEDGER_KEY_HASH_SIZE);
    return admin_run(c, LEDGER_CMD_KEY_REVOKE, &cmd, request_id, deadline_ms, res);
}

int tally_model_limit_set(struct tally *c, const char *account, const char *model,
                          const struct tally_model_limits *limits, const uint8_t *request_id,
                          int64_t deadline_ms, struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (!name_valid(account, TALLY_NAME_MAX) || !name_valid(model, TALLY_MODEL_MAX)) {
        return fail_early(res, TALLY_ENAME, "not a valid account or model name");
    }
    const uint32_t allowed = TALLY_LIM_BUDGET | TALLY_LIM_RPM | TALLY_LIM_TPM;
    if (limits != NULL && (limits->set & ~allowed) != 0) {
        return fail_early(res, TALLY_EINVAL, "model limits take only budget, rpm and tpm");
    }
    memset(&cmd, 0, sizeof(cmd));
    copy_text(cmd.u.model_limit.account, sizeof(cmd.u.model_limit.account), account);
    copy_text(cmd.u.model_limit.model, sizeof(cmd.u.model_limit.model), model);
    if (limits != NULL) {
        const struct tally_model_limits *in = limits;
        struct ledger_model_limits *out = &cmd.u.model_limit.limits;
        MODEL_LIMITS_FIELDS(COPY_FIELD)
    }
    return admin_run(c, LEDGER_CMD_MODEL_LIMIT_SET, &cmd, request_id, deadline_ms, res);
}

int tally_retention_set(struct tally *c, int64_t retention_ms, const uint8_t *request_id,
                        int64_t deadline_ms, struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (retention_ms < 1 || retention_ms > RETENTION_MAX_MS) {
        return fail_early(res, TALLY_EINVAL, "retention_ms must be 1 ms .. 90 days");
    }
    memset(&cmd, 0, sizeof(cmd));
    cmd.u.config.retention_ms = retention_ms;
    return admin_run(c, LEDGER_CMD_CONFIG_SET, &cmd, request_id, deadline_ms, res);
}

/* ---- Queries. ---- */

static bool read_flags_ok(unsigned flags)
{
    return (flags & ~(unsigned)TALLY_READ_STALE) == 0;
}

int tally_account_get(struct tally *c, const char *name, unsigned flags, int64_t deadline_ms,
                      struct tally_account *out, struct tally_result *res)
{
    int rc;
    if (!name_valid(name, TALLY_NAME_MAX)) {
        return fail_early(res, TALLY_ENAME, "not a valid account name");
    }
    if (out == NULL || !read_flags_ok(flags)) {
        return fail_early(res, TALLY_EINVAL, "out is NULL or unknown flags");
    }
    struct call *call = blocking_call(c, RPC_OP_ACCOUNT_GET, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    copy_text(call->req.u.get.name, sizeof(call->req.u.get.name), name);
    call->req.u.get.flags = flags;
    call->out = out;
    return run(c, call, res, NULL, NULL);
}

int tally_key_get(struct tally *c, const uint8_t key_hash[TALLY_KEY_HASH_SIZE], unsigned flags,
                  int64_t deadline_ms, char *account, int *revoked, struct tally_result *res)
{
    int rc;
    if (key_hash == NULL || account == NULL || !read_flags_ok(flags)) {
        return fail_early(res, TALLY_EINVAL, "key_hash or account is NULL, or unknown flags");
    }
    struct call *call = blocking_call(c, RPC_OP_KEY_GET, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    memcpy(call->req.u.get.key_hash, key_hash, LEDGER_KEY_HASH_SIZE);
    call->req.u.get.flags = flags;
    call->out_account = account;
    call->out_revoked = revoked;
    return run(c, call, res, NULL, NULL);
}

int tally_reservation_get(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                          unsigned flags, int64_t deadline_ms, struct tally_reservation *out,
                          struct tally_result *res)
{
    int rc;
    if (request_id == NULL || out == NULL || !read_flags_ok(flags)) {
        return fail_early(res, TALLY_EINVAL, "request_id or out is NULL, or unknown flags");
    }
    struct call *call = blocking_call(c, RPC_OP_RESV_GET, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    memcpy(call->req.u.get.request_id, request_id, LEDGER_REQUEST_ID_SIZE);
    call->req.u.get.flags = flags;
    call->out = out;
    return run(c, call, res, NULL, NULL);
}

/* Common part of the three paged lists. */
static int list_run(struct tally *c, uint8_t op, const char *filter, int64_t since_ms,
                    int64_t until_ms, uint64_t cursor, uint32_t limit, unsigned flags,
                    int64_t deadline_ms, void *items, uint32_t *n, uint64_t *next,
                    struct tally_result *res)
{
    int rc;
    if (!is_empty(filter) && !name_valid(filter, TALLY_NAME_MAX)) {
        return fail_early(res, TALLY_ENAME, "not a valid account name");
    }
    if (items == NULL || n == NULL || limit == 0 || limit > TALLY_LIST_MAX ||
        !read_flags_ok(flags) || since_ms > until_ms) {
        return fail_early(res, TALLY_EINVAL,
                          "items or n is NULL, limit not 1 .. 512, unknown flags or since > until");
    }
    *n = 0;
    if (next != NULL) {
        *next = 0;
    }
    struct call *call = blocking_call(c, op, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    copy_text(call->req.u.list.filter, sizeof(call->req.u.list.filter), filter);
    call->req.u.list.since_ms = since_ms;
    call->req.u.list.until_ms = until_ms;
    call->req.u.list.cursor = cursor;
    call->req.u.list.limit = limit;
    call->req.u.list.flags = flags;
    call->out = items;
    call->out_cap = limit;
    call->out_n = n;
    call->out_next = next;
    return run(c, call, res, NULL, NULL);
}

int tally_account_list(struct tally *c, const char *parent, uint64_t cursor, uint32_t limit,
                       unsigned flags, int64_t deadline_ms, struct tally_account *items,
                       uint32_t *n, uint64_t *next, struct tally_result *res)
{
    return list_run(c, RPC_OP_ACCOUNT_LIST, parent, 0, 0, cursor, limit, flags, deadline_ms, items,
                    n, next, res);
}

int tally_reservation_list(struct tally *c, const char *account, uint64_t cursor, uint32_t limit,
                           unsigned flags, int64_t deadline_ms, struct tally_reservation *items,
                           uint32_t *n, uint64_t *next, struct tally_result *res)
{
    return list_run(c, RPC_OP_RESV_LIST, account, 0, 0, cursor, limit, flags, deadline_ms, items, n,
                    next, res);
}

int tally_journal_list(struct tally *c, const char *account, int64_t since_ms, int64_t until_ms,
                       uint64_t cursor, uint32_t limit, unsigned flags, int64_t deadline_ms,
                       struct tally_journal_entry *items, uint32_t *n, uint64_t *next,
                       struct tally_result *res)
{
    return list_run(c, RPC_OP_JOURNAL, account, since_ms, until_ms, cursor, limit, flags,
                    deadline_ms, items, n, next, res);
}

/* ---- Membership. ---- */

static int membership_run(struct tally *c, uint8_t kind, uint64_t id, const char *address,
                          int64_t deadline_ms, struct tally_result *res)
{
    int rc;
    struct call *call = blocking_call(c, RPC_OP_MEMBERSHIP, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    call->resend_unsafe = true;
    call->req.u.membership.kind = kind;
    call->req.u.membership.id = id;
    copy_text(call->req.u.membership.address, sizeof(call->req.u.membership.address), address);
    return run(c, call, res, NULL, NULL);
}

int tally_member_add(struct tally *c, uint64_t id, const char *peer_address, int64_t deadline_ms,
                     struct tally_result *res)
{
    struct endpoint ep;
    if (id == 0 || peer_address == NULL ||
        endpoint_parse(peer_address, strlen(peer_address), &ep) != 0) {
        return fail_early(res, TALLY_EINVAL, "id must be > 0 and peer_address host:port");
    }
    return membership_run(c, RPC_MEMBER_ADD, id, peer_address, deadline_ms, res);
}

int tally_member_remove(struct tally *c, uint64_t id, int64_t deadline_ms, struct tally_result *res)
{
    if (id == 0) {
        return fail_early(res, TALLY_EINVAL, "id must be > 0");
    }
    return membership_run(c, RPC_MEMBER_REMOVE, id, "", deadline_ms, res);
}

int tally_leader_transfer(struct tally *c, uint64_t id, int64_t deadline_ms,
                          struct tally_result *res)
{
    return membership_run(c, RPC_MEMBER_TRANSFER, id, "", deadline_ms, res);
}

/* ---- Status of one node, on the caller's thread. ---- */

/* Wait for `events` on `fd` until `deadline_at_ms`. Returns 1 ready, 0 timed out, -1. */
static int wait_fd(int fd, short events, int64_t deadline_at_ms)
{
    for (;;) {
        int64_t left_ms = deadline_at_ms - mono_ms();
        if (left_ms <= 0) {
            return 0;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, left_ms > 60000 ? 60000 : (int)left_ms);
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (rc != 0) {
            return rc > 0 ? 1 : -1;
        }
    }
}

/* Connect to one of `ep`'s addresses by `deadline_at_ms`. Returns the fd or -code. */
static int direct_connect(const struct endpoint *ep, int64_t deadline_at_ms, char *why,
                          size_t why_size)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *addrs;
    int rc = getaddrinfo(ep->host, ep->port, &hints, &addrs);
    if (rc != 0) {
        snprintf(why, why_size, "%s: %s", ep->text, gai_strerror(rc));
        return -TALLY_EUNAVAILABLE;
    }
    snprintf(why, why_size, "%s: no address", ep->text);
    for (struct addrinfo *ai = addrs; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(why, why_size, "%s: socket: %s", ep->text, strerror(errno));
            continue;
        }
        int err = 0;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            err = errno;
            if (err == EINPROGRESS) {
                socklen_t len = sizeof(err);
                rc = wait_fd(fd, POLLOUT, deadline_at_ms);
                err = rc == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 ? err
                      : rc == 0                                                        ? ETIMEDOUT
                                                                                       : errno;
            }
        }
        if (err == 0) {
            freeaddrinfo(addrs);
            return fd;
        }
        snprintf(why, why_size, "%s: connect: %s", ep->text, strerror(err));
        close(fd);
    }
    freeaddrinfo(addrs);
    return -TALLY_EUNAVAILABLE;
}

/* tally_status()'s own connection: a socket, and a TLS session over it when configured. */
struct direct {
    int fd;
    SSL *ssl; /* NULL: plain TCP */
    struct tls_io io;
};

/* The poll event an SSL_get_error() code waits for; 0 if it is a failure. */
static short tls_wait_events(int err)
{
    return err == SSL_ERROR_WANT_READ ? POLLIN : err == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
}

/* Run the TLS handshake on `d` with the node at `ep` by the deadline. Returns 0 or -code
 * with `why`. */
static int direct_handshake(struct tally *c, struct direct *d, const struct endpoint *ep,
                            int64_t deadline_at_ms, char *why, size_t why_size)
{
    d->io.fd = d->fd;
    d->io.err = 0;
    d->ssl = tls_session_new(c, ep->host, &d->io, why, why_size);
    if (d->ssl == NULL) {
        return -TALLY_EUNAVAILABLE;
    }
    for (;;) {
        ERR_clear_error();
        int rc = SSL_connect(d->ssl);
        if (rc == 1) {
            return 0;
        }
        int err = SSL_get_error(d->ssl, rc);
        short events = tls_wait_events(err);
        if (events == 0) {
            tls_failure(d->ssl, &d->io, err, "handshake", tls_name(c, ep->host), why, why_size);
            return -TALLY_EUNAVAILABLE;
        }
        if (wait_fd(d->fd, events, deadline_at_ms) != 1) {
            snprintf(why, why_size, "no TLS handshake before the deadline");
            return -TALLY_EUNAVAILABLE;
        }
    }
}

/* Send `len` bytes on `d` by the deadline. Returns 0 or -1 with `why`. */
static int direct_send(struct direct *d, const uint8_t *data, size_t len, int64_t deadline_at_ms,
                       char *why, size_t why_size)
{
    size_t off = 0;
    while (off < len) {
        short events = POLLOUT;
        if (d->ssl != NULL) {
            /* After a wait, the same bytes are offered again (off has not moved). */
            size_t left = len - off;
            ERR_clear_error();
            int n = SSL_write(d->ssl, data + off, left > TLS_WRITE_MAX ? TLS_WRITE_MAX : (int)left);
            if (n > 0) {
                off += (size_t)n;
                continue;
            }
            int err = SSL_get_error(d->ssl, n);
            events = tls_wait_events(err);
            if (events == 0) {
                tls_failure(d->ssl, &d->io, err, "write", "", why, why_size);
                return -1;
            }
        } else {
            ssize_t n = send(d->fd, data + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n >= 0) {
                off += (size_t)n;
                continue;
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                snprintf(why, why_size, "cannot send the request: %s", strerror(errno));
                return -1;
            }
        }
        if (wait_fd(d->fd, events, deadline_at_ms) != 1) {
            snprintf(why, why_size, "cannot send the request before the deadline");
            return -1;
        }
    }
    return 0;
}

/* Read some bytes from `d` by the deadline (plaintext OpenSSL holds first). Returns the
 * count, or -TALLY_EUNAVAILABLE with `why`. */
static ssize_t direct_recv(struct direct *d, uint8_t *buf, size_t size, int64_t deadline_at_ms,
                           char *why, size_t why_size)
{
    for (;;) {
        short events = POLLIN;
        if (d->ssl != NULL) {
            ERR_clear_error();
            int n = SSL_read(d->ssl, buf, size > INT_MAX ? INT_MAX : (int)size);
            if (n > 0) {
                return n;
            }
            int err = SSL_get_error(d->ssl, n);
            events = tls_wait_events(err);
            if (events == 0) {
                tls_failure(d->ssl, &d->io, err, "read", "", why, why_size);
                return -TALLY_EUNAVAILABLE;
            }
        } else {
            ssize_t n = recv(d->fd, buf, size, MSG_DONTWAIT);
            if (n > 0) {
                return n;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                snprintf(why, why_size, "the node closed the connection");
                return -TALLY_EUNAVAILABLE;
            }
        }
        if (wait_fd(d->fd, events, deadline_at_ms) != 1) {
            snprintf(why, why_size, "no answer before the deadline");
            return -TALLY_EUNAVAILABLE;
        }
    }
}

/* Send `req` and read the answer to it (decoded as `op`) by the deadline. */
static int direct_exchange(struct direct *d, struct rpc_framer *fr, const struct rpc_request *req,
                           struct rpc_response *resp, int64_t deadline_at_ms, char *why,
                           size_t why_size)
{
    struct rpc_buf out = {0};
    memset(resp, 0, sizeof(*resp));
    if (rpc_request_encode(&out, req) != 0) {
        rpc_buf_free(&out);
        snprintf(why, why_size, "cannot encode the request");
        return -TALLY_ENOMEM;
    }
    int rc = direct_send(d, out.data, out.len, deadline_at_ms, why, why_size);
    rpc_buf_free(&out);
    if (rc != 0) {
        return -TALLY_EUNAVAILABLE;
    }
    for (;;) {
        const uint8_t *body;
        size_t len;
        char reason[RPC_MESSAGE_MAX + 1];
        rc = rpc_framer_next(fr, &body, &len);
        if (rc < 0) {
            snprintf(why, why_size, "the answer is larger than the frame bound");
            return -TALLY_EPROTO;
        }
        if (rc == 1) {
            if (rpc_response_decode(body, len, req->op, resp, reason) != 0 ||
                resp->seq != req->seq) {
                snprintf(why, why_size, "malformed answer: %s", reason);
                return -TALLY_EPROTO;
            }
            return 0;
        }
        uint8_t chunk[4096];
        ssize_t n = direct_recv(d, chunk, sizeof(chunk), deadline_at_ms, why, why_size);
        if (n < 0) {
            return (int)n;
        }
        if (rpc_framer_feed(fr, chunk, (size_t)n) != 0) {
            snprintf(why, why_size, "out of memory");
            return -TALLY_ENOMEM;
        }
    }
}

/* HELLO then STATUS on `d`. Returns 0 or -code with `why`. */
static int direct_status(struct tally *c, struct direct *d, int64_t deadline_at_ms,
                         struct tally_node_status *out, char *why, size_t why_size)
{
    struct rpc_framer fr;
    struct rpc_request req;
    struct rpc_response resp;
    rpc_framer_init(&fr, c->max_frame_bytes);
    memset(&req, 0, sizeof(req));
    req.seq = 1;
    req.op = RPC_OP_HELLO;
    req.u.hello.version = RPC_PROTOCOL_VERSION;
    copy_text(req.u.hello.token, sizeof(req.u.hello.token), c->token);
    int rc = direct_exchange(d, &fr, &req, &resp, deadline_at_ms, why, why_size);
    if (rc == 0 && resp.status != RPC_OK) {
        snprintf(why, why_size, "HELLO refused: %s: %s", rpc_status_name(resp.status),
                 resp.message);
        rc = resp.status == RPC_EAUTH ? -TALLY_EAUTH : -error_of_status(resp.status);
    }
    rpc_response_free(&resp);
    if (rc == 0) {
        memset(&req, 0, sizeof(req));
        req.seq = 2;
        req.op = RPC_OP_STATUS;
        rc = direct_exchange(d, &fr, &req, &resp, deadline_at_ms, why, why_size);
        if (rc == 0 && resp.status != RPC_OK) {
            snprintf(why, why_size, "%s: %s", rpc_status_name(resp.status), resp.message);
            rc = -error_of_status(resp.status);
        } else if (rc == 0) {
            status_from_wire(&resp.u.status, out);
        }
        rpc_response_free(&resp);
    }
    rpc_framer_free(&fr);
    return rc;
}

int tally_status(struct tally *c, const char *endpoint, int64_t deadline_ms,
                 struct tally_node_status *out, struct tally_result *res)
{
    struct endpoint ep;
    const char *msg;
    int code = check_call(c, deadline_ms, true, &msg);
    if (code != 0) {
        return fail_early(res, code, msg);
    }
    if (endpoint == NULL || out == NULL || endpoint_parse(endpoint, strlen(endpoint), &ep) != 0) {
        return fail_early(res, TALLY_EINVAL, "endpoint is not host:port, or out is NULL");
    }
    int64_t deadline_at_ms = mono_ms() + (deadline_ms != 0 ? deadline_ms : c->deadline_ms);
    char why[WHY_MAX];
    int rc = direct_connect(&ep, deadline_at_ms, why, sizeof(why));
    if (rc >= 0) {
        struct direct d = {.fd = rc, .ssl = NULL};
        rc =
            c->tls_ctx != NULL ? direct_handshake(c, &d, &ep, deadline_at_ms, why, sizeof(why)) : 0;
        if (rc == 0) {
            rc = direct_status(c, &d, deadline_at_ms, out, why, sizeof(why));
        }
        SSL_free(d.ssl);
        close(d.fd);
    }
    if (res != NULL) {
        result_init(res, NULL);
        if (rc != 0) {
            result_fail(res, rc == -TALLY_EUNAVAILABLE ? TALLY_UNAVAILABLE : TALLY_ERROR, -rc,
                        "%s: %s", ep.text, why);
        }
    }
    return rc;
}
