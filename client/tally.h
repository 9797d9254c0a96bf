/*
 * tally.h: libtally, the C client of a tally cluster. This header is the whole public API.
 *
 * A gateway opens one `struct tally` per process and shares it between all its threads.
 * Per LLM request it calls tally_reserve() with the request's estimated cost, proceeds
 * only if the answer is TALLY_GRANTED, and calls tally_settle() with the actual cost
 * (or tally_void() if the request was never made). Admin tools (tallyctl) use the typed
 * admin calls further down.
 *
 * The one idea behind the shape: the client never guesses. Every call ends in exactly one
 * of three outcomes, GRANTED (for calls other than reserve: done), DENIED (a business
 * answer from the ledger, with the reason) or UNAVAILABLE (no answer from a quorum before
 * the caller's deadline), or in an ERROR for a request the ledger or the server refused.
 * UNAVAILABLE means "deny" unless the client was opened with fail_open. Retrying is safe
 * because every write carries a 128-bit request id and the ledger answers a repeated id
 * from its idempotency store; the client therefore retries a write (same id) across
 * timeouts, lost connections and leader changes until the deadline, and after an
 * UNAVAILABLE reserve it voids that id in the background so a hold that did commit is
 * released before its ttl: a background void has no deadline, it is retried (100 ms
 * doubling to 5 s) until the cluster answers it or the client is closed. A hold whose
 * void never arrives (the client died with the leader) is released at its ttl, never
 * charged (docs/ledger.md, Unconfirmed reservations). One UNAVAILABLE is not retried: a
 * leader whose ledger map or disk is past its storage reserve refuses writes with the
 * reason "storage"; the call ends at once with outcome TALLY_UNAVAILABLE (error
 * TALLY_EUNAVAILABLE) and a message that names "storage" (docs/operations.md, Storage).
 *
 * Threads: every call may be made from any thread at the same time, except
 * tally_close(). One I/O thread per client owns the connection (one TCP connection,
 * pipelined); calls are queued to it and answered by sequence number.
 *
 * Errors: calls return 0 or a negative TALLY_E* code. Calls that take a
 * `struct tally_result *res` (may be NULL unless stated) also fill it: `outcome`, `error`
 * (the positive code, 0 when the cluster answered) and a human `message`. Check the
 * return code or `outcome`: TALLY_GRANTED is 0, so a zeroed result reads as a grant (the
 * client itself starts every result as TALLY_ERROR until an answer decides it). A denial is an
 * answer, not an error: the call returns 0 with outcome TALLY_DENIED.
 *
 * Units: money in micros (10^-6 of the currency, int64), tokens as uint64, durations and
 * times in milliseconds (times since the Unix epoch, as the ledger's clock sees them).
 *
 * Strings passed in are borrowed for the duration of the call (they are copied before a
 * call returns, also for the asynchronous calls); nothing passed out needs freeing.
 */
#ifndef TALLY_CLIENT_TALLY_H
#define TALLY_CLIENT_TALLY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Bounds (equal to the ledger's and the wire protocol's). ---- */
#define TALLY_NAME_MAX 128             /* account name bytes, [A-Za-z0-9._:/@-] */
#define TALLY_MODEL_MAX 64             /* model name bytes, same alphabet */
#define TALLY_ACTOR_MAX 64             /* journal actor bytes */
#define TALLY_METADATA_MAX 256         /* opaque reservation metadata bytes */
#define TALLY_KEY_HASH_SIZE 32         /* SHA-256 of a virtual key secret */
#define TALLY_REQUEST_ID_SIZE 16       /* 128-bit request id */
#define TALLY_TOKEN_MAX 256            /* bearer token bytes */
#define TALLY_ADDRESS_MAX 64           /* "host:port" */
#define TALLY_MESSAGE_MAX 255          /* tally_result.message bytes (without the NUL) */
#define TALLY_ERRMSG_SIZE 256          /* tally_open()'s errmsg buffer */
#define TALLY_LIST_MAX 512             /* items in one list page */
#define TALLY_MEMBERS_MAX 9            /* cluster members in a status answer */
#define TALLY_ENDPOINTS_MAX 16         /* endpoints in a configuration */
#define TALLY_FRAME_DEFAULT (1u << 20) /* default frame body bound (1 MiB) */
#define TALLY_FRAME_LIMIT (64u << 20)  /* the largest configurable frame bound */

/* Ranges of amounts, counts and times; a call outside them fails with TALLY_EINVAL before
 * anything is sent. */
#define TALLY_AMOUNT_MAX 1000000000000000LL /* 10^15 micros: an estimate, actual or budget */
#define TALLY_TOKENS_MAX 1000000000000ULL   /* 10^12 tokens in one request */
#define TALLY_RATE_MAX 1000000000000ULL     /* rpm, tpm and their bursts */
#define TALLY_PARALLEL_MAX 1000000000ULL    /* max_parallel */
#define TALLY_TTL_MAX_MS (7LL * 24 * 3600 * 1000)         /* a reservation's ttl (>= 1 ms) */
#define TALLY_PERIOD_MIN_MS 1000LL                        /* a fixed budget period */
#define TALLY_PERIOD_MAX_MS (366LL * 24 * 3600 * 1000)
#define TALLY_RETENTION_MIN_MS (3600LL * 1000)            /* stored answers: at least 1 h */
#define TALLY_RETENTION_MAX_MS (90LL * 24 * 3600 * 1000)
#define TALLY_TIME_MAX_MS 253402300799999LL /* 9999-12-31T23:59:59.999Z: expires_at_ms */

/* ---- Outcomes, errors, reasons. ---- */

/* tally_result.outcome. */
enum tally_outcome {
    TALLY_GRANTED = 0,     /* reserve granted; any other call: done */
    TALLY_DENIED = 1,      /* reserve denied by a limit: see deny_reason, account */
    TALLY_UNAVAILABLE = 2, /* no answer from a quorum before the deadline: treat as denied */
    TALLY_ERROR = 3,       /* the request was refused (bad input, not found, ...): see error */
};

/*
 * Error codes (returned negated, stored positive in tally_result.error). 1..16 are the
 * ledger's own codes (the same numbers as the ledger's LEDGER_E*): the cluster answered
 * and the command changed nothing. 32 and up come from the server or the client (34 is
 * unused: it was TALLY_EFORBIDDEN before that became the ledger's code 16).
 */
enum tally_error {
    TALLY_OK = 0,
    TALLY_EINVAL = 1,    /* an argument is out of range or malformed (client or ledger) */
    TALLY_ENAME = 2,     /* an account or model name is not valid */
    TALLY_ENOTFOUND = 3, /* no such account, key or reservation */
    TALLY_EEXIST = 4,    /* the account or key already exists */
    TALLY_ECONFLICT = 5, /* the request id was used before with different arguments */
    TALLY_ERESOLVED = 6, /* the reservation is already settled or voided */
    TALLY_EDEPTH = 7,    /* the account chain would be deeper than 8 */
    TALLY_ECYCLE = 8,    /* the new parent would make a cycle */
    TALLY_EOVERFLOW = 9, /* a counter would overflow */
    TALLY_EDECODE = 10,  /* the ledger could not decode the command */
    TALLY_ETOOBIG = 11,  /* a field, frame or answer exceeds its bound */
    TALLY_ENOMEM = 12,   /* allocation failed (client or ledger) */
    TALLY_EIO = 13,      /* storage error on the node */
    TALLY_ECORRUPT = 14, /* corrupt state on the node */
    TALLY_ESTALE = 15,   /* (ledger-internal; not expected on the wire) */
    /* The credential may not do this: its role may not make the call (an admin call with a
     * gateway token), or its scope does not cover the account, key or reservation named
     * (for a scoped credential, also an account name that does not exist); nothing
     * changed. The server answers the first, the ledger the second. */
    TALLY_EFORBIDDEN = 16,

    TALLY_EUNAVAILABLE = 32, /* no answer before the deadline (outcome TALLY_UNAVAILABLE) */
    TALLY_EAUTH = 33,        /* the token (or protocol version) was refused by the server */
    TALLY_EBADREQ = 35,      /* the server found the request malformed */
    TALLY_EINTERNAL = 36,    /* a bug or a storage error on the node */
    TALLY_EPROTO = 37,       /* the server's answer could not be trusted: malformed, or not
                              * the answer to the call (another request id, command type
                              * or op); the call fails and the connection is dropped */
    TALLY_EBUSY = 38,        /* too many requests in flight in this client */
    TALLY_ECLOSED = 39,      /* the client is closing */
    TALLY_ECODE_MAX
};

/* Why a reserve was denied (tally_result.deny_reason). */
enum tally_deny_reason {
    TALLY_DENY_NONE = 0,
    TALLY_DENY_UNKNOWN_KEY = 1,  /* no account has this key hash */
    TALLY_DENY_KEY_REVOKED = 2,  /* the key was revoked */
    TALLY_DENY_BLOCKED = 3,      /* `account` is blocked */
    TALLY_DENY_EXPIRED = 4,      /* `account` is past its expires_at_ms */
    TALLY_DENY_PARALLEL = 5,     /* max_parallel reached; remaining = free slots */
    TALLY_DENY_BUDGET = 6,       /* budget would be exceeded; remaining = micros left */
    TALLY_DENY_RPM = 7,          /* requests per minute; see retry_after_ms */
    TALLY_DENY_TPM = 8,          /* tokens per minute; see retry_after_ms */
    TALLY_DENY_MODEL_BUDGET = 9, /* the model's budget on `account` */
    TALLY_DENY_MODEL_RPM = 10,
    TALLY_DENY_MODEL_TPM = 11,
    TALLY_DENY_MAX
};

/* Bits of tally_result.flags. */
enum {
    TALLY_RESULT_REPLAYED = 1u << 0,    /* answered from the idempotency store (a retry) */
    TALLY_RESULT_SOFT_BUDGET = 1u << 1, /* some account of the chain is past its soft budget */
    TALLY_RESULT_LATE = 1u << 2,        /* settle/void after the reservation expired */
};

/* Names, never NULL: "granted", "denied", "unavailable", "error"; "budget", "rpm", ...;
 * "not_found", "unavailable", ... ("unknown" for a value out of range). tally_strerror
 * accepts the code positive or negative. */
const char *tally_outcome_name(int outcome);
const char *tally_deny_reason_name(int reason);
const char *tally_strerror(int code);

/*
 * The answer to one call. For a reserve: outcome, and for a grant `expires_at_ms`; for a
 * deny `deny_reason`, `account` (whose limit failed), `remaining` (what is left of that
 * limit: micros, requests, tokens or slots) and `retry_after_ms` (when a rate limit will
 * admit the request; -1 never, 0 for other limits). For a settle `charged_micros` (for a
 * late settle: the correction) and `overrun_micros` (actual - estimate when positive).
 * `request_id` is the id the request carried (generated by the client unless the caller
 * gave one); `index` the Raft index of the entry that carried a write.
 */
struct tally_result {
    int outcome;     /* enum tally_outcome */
    int error;       /* 0, or enum tally_error (positive) */
    int deny_reason; /* enum tally_deny_reason */
    int failed_open; /* 1: outcome is GRANTED only because fail_open is set; error says why */
    unsigned flags;  /* TALLY_RESULT_* */
    char account[TALLY_NAME_MAX + 1];
    int64_t remaining;
    int64_t retry_after_ms;
    int64_t charged_micros;
    int64_t overrun_micros;
    int64_t expires_at_ms;
    uint64_t index;
    uint32_t attempts; /* times the request was sent (retries + 1; 0: never sent) */
    uint8_t request_id[TALLY_REQUEST_ID_SIZE];
    char message[TALLY_MESSAGE_MAX + 1]; /* human text; "" when granted */
};

/* ---- Opening and closing. ---- */

/*
 * Configuration. Zero fields take their defaults, so `struct tally_config cfg = {0}`
 * plus endpoints and token is a valid configuration; tally_config_init() writes the
 * defaults out explicitly.
 */
struct tally_config {
    /* "host:port,host:port,...": the members of the cluster (IPv4/IPv6 literals or
     * names resolved with getaddrinfo at each connect; "[v6]:port" for IPv6). The
     * client starts at a random one, rotates on failures, and follows a NOT_LEADER
     * answer only to an address that is one of these endpoints (the same host, but for
     * case, and port): the token is never sent anywhere else. A leader named at an
     * address not listed here is not followed; the client tries the next endpoint
     * instead, so list every member, as the members' client addresses in tallyd's
     * --members spell them, or writes reach the leader only by rotation. Required; at
     * most TALLY_ENDPOINTS_MAX entries of TALLY_ADDRESS_MAX bytes. */
    const char *endpoints;
    /* Bearer token sent in HELLO (its role decides what the client may do). Required
     * (may be ""; may be NULL with a TLS client certificate), at most TALLY_TOKEN_MAX
     * bytes. */
    const char *token;
    int64_t deadline_ms; /* default time budget of a call (0: 2000) */
    /* One TCP connect + TLS handshake (if on) + HELLO (0: 1000). Also: a connection on which
     * requests wait and nothing at all arrives for twice this long is taken for dead and dropped
     * (its requests are resent elsewhere with the same ids). */
    int64_t connect_timeout_ms;
    int fail_open; /* 1: an UNAVAILABLE reserve answers GRANTED (flagged) */
    /* Frame body bound (0: TALLY_FRAME_DEFAULT; 4096 .. TALLY_FRAME_LIMIT; must match the
     * server's). */
    size_t max_frame_bytes;
    uint32_t max_inflight;    /* calls queued or awaiting an answer (0: 4096) */
    /* Accepted for compatibility and checked like any duration, but no longer a limit: a
     * background void is retried until answered or tally_close(). */
    int64_t void_deadline_ms;
    int64_t backoff_min_ms;   /* first retry delay (0: 10); doubles, jittered */
    int64_t backoff_max_ms;   /* largest retry delay (0: 200) */

    /*
     * TLS (all NULL: plain TCP). Setting tls_ca_file turns TLS on for every connection of
     * the client, tally_status()'s included: TLS 1.2 or later, and the server's
     * certificate is always verified against this PEM bundle and against the server name
     * (below). The other three fields need tls_ca_file. The files are read once, by
     * tally_open(), which refuses (-TALLY_EINVAL, OpenSSL's reason in errmsg) a file that
     * cannot be read or parsed and a key that does not match its certificate; a key must
     * not be encrypted (there is no passphrase prompt).
     *
     * A failed handshake is a failed connection: the client tries the other endpoints
     * until the call's deadline, which then ends UNAVAILABLE. The result's message says
     * why; when a server certificate did not verify it says so even if later attempts
     * failed differently ("tls: certificate verify failed: <reason>"). The connect
     * time-out covers the TCP connect, the handshake and HELLO together.
     */
    const char *tls_ca_file; /* PEM bundle of the CAs that sign the servers' certificates */
    /* Client certificate (PEM, its chain may follow) and its private key (PEM): both or
     * neither. A server that trusts its CA and lists its fingerprint (SHA-256 of its DER)
     * in the token file gives it the role and name of that line; its subject grants
     * nothing. Such a client may authenticate by the certificate alone: give token ""
     * (NULL is taken as "" when tls_cert_file is set). */
    const char *tls_cert_file;
    const char *tls_key_file;
    /* The name (DNS name or IP literal, at most 253 bytes) the server certificate must
     * carry (subjectAltName, else CN), for every endpoint and redirect. NULL or "": the
     * host part of the endpoint being connected to. A DNS name is also sent as SNI. */
    const char *tls_server_name;
};

/* Fill `cfg` with every default (endpoints and token NULL). */
void tally_config_init(struct tally_config *cfg);

/* A client. Opaque; owned by the caller between tally_open() and tally_close(). */
struct tally;

/*
 * Check `cfg` (borrowed: everything is copied; TLS files are read now), start the
 * client's I/O thread and begin connecting in the background; does not wait for the
 * cluster. On success returns 0 and *out owns the client until tally_close(). On failure
 * returns -TALLY_EINVAL (bad configuration, or a TLS file that cannot be used),
 * -TALLY_ENOMEM, or -TALLY_EINTERNAL (a thread or eventfd could not be made), and writes
 * why to `errmsg` (TALLY_ERRMSG_SIZE bytes; may be NULL).
 */
int tally_open(struct tally **out, const struct tally_config *cfg, char *errmsg);

/*
 * Stop the I/O thread, close the connection and free the client. Calls still queued or
 * in flight end with TALLY_UNAVAILABLE / TALLY_ECLOSED: asynchronous callbacks are called
 * (on the I/O thread, before this returns). Background voids not yet done are abandoned
 * (their holds expire at their ttl; those the ledger keeps unconfirmed are released, not
 * charged): a program about to exit after an UNAVAILABLE reserve may first wait until
 * tally_stats() shows voids_done + voids_failed == voids_queued. No other call on this client may be running or
 * start: the caller must make sure blocking calls in other threads have returned.
 * NULL is accepted.
 */
void tally_close(struct tally *c);

/* ---- Helpers (no client needed). ---- */

/* SHA-256 of the virtual key secret `secret` (borrowed, NUL-terminated, not empty)
 * into `hash`. This is what the ledger stores; the secret itself never leaves the
 * process. Returns 0, or -TALLY_EINVAL for a NULL or empty secret. */
int tally_key_hash(const char *secret, uint8_t hash[TALLY_KEY_HASH_SIZE]);

/* A fresh random request id (getrandom(2)). Returns 0 or -TALLY_EINTERNAL. */
int tally_request_id_new(uint8_t id[TALLY_REQUEST_ID_SIZE]);

/* Lower-case hex of `n` bytes into `out` (2n + 1 bytes). */
void tally_hex(const uint8_t *bytes, size_t n, char *out);

/* Parse exactly 2n hex digits into `out`. Returns 0 or -TALLY_EINVAL. */
int tally_unhex(const char *hex, uint8_t *out, size_t n);

/* ---- The gateway calls: reserve, settle, void, extend. ----
 *
 * `deadline_ms` is the call's time budget from now (0: the configured default); the call
 * returns by then. Writes are retried with the same request id until then; when it
 * passes the outcome is TALLY_UNAVAILABLE (-TALLY_EUNAVAILABLE).
 */

/*
 * What to reserve. Name the payer with exactly one of `key_secret` (the virtual key
 * secret, hashed here with SHA-256), `key_hash` (its 32-byte hash) or `account` (an
 * account name). All pointers are borrowed for the call only.
 */
struct tally_reserve_args {
    const char *key_secret;
    const uint8_t *key_hash; /* TALLY_KEY_HASH_SIZE bytes */
    const char *account;
    int64_t estimate_micros;  /* 0 .. 10^15 */
    uint64_t estimate_tokens; /* 0 .. 10^12 */
    const char *model;        /* NULL or "": none; else its per-model limits apply */
    int64_t ttl_ms;           /* 1 ms .. 7 days: the hold's life if never settled */
    const void *metadata;     /* opaque bytes kept with the reservation; may be NULL */
    size_t metadata_len;      /* 0 .. TALLY_METADATA_MAX */
    /* The request id (TALLY_REQUEST_ID_SIZE bytes), or NULL to let the client make one.
     * It names the reservation for settle, void and extend; it is in res->request_id.
     * Do not reuse an id after an UNAVAILABLE answer: the client voids it. Resubmitting
     * an id this client has seen granted is safe (the answer is the stored grant): if
     * the resubmission ends UNAVAILABLE, the id is not voided (a grant is remembered
     * for the next thousands of grants almost surely, and is likely forgotten only
     * after some 60,000; tally_stats().voids_skipped counts the voids left out). */
    const uint8_t *request_id;
};

/*
 * Reserve `args`'s estimate against the payer and all its parents at once.
 *
 * Returns 0 when the cluster answered: res->outcome is TALLY_GRANTED (then settle or void
 * res->request_id) or TALLY_DENIED (reason in res). Returns -TALLY_EUNAVAILABLE when no
 * answer came before the deadline (outcome TALLY_UNAVAILABLE): the request must be denied,
 * and the client voids res->request_id in the background. With fail_open set, that case
 * returns 0 with outcome TALLY_GRANTED, res->failed_open = 1 and res->error =
 * TALLY_EUNAVAILABLE (or TALLY_EBUSY): log it; still settle or void the id. Other
 * negative codes: bad arguments (-TALLY_EINVAL, nothing sent), a refused request
 * (outcome TALLY_ERROR, e.g. -TALLY_ENOTFOUND for an unknown account, -TALLY_ECONFLICT),
 * or -TALLY_EAUTH. -TALLY_EINTERNAL (the node lost the answer) and -TALLY_EPROTO (the
 * answer was not the answer to this reserve) also void res->request_id in the background,
 * since the reserve may have been granted; fail_open does not apply to them. `res` is
 * required.
 */
int tally_reserve(struct tally *c, const struct tally_reserve_args *args, int64_t deadline_ms,
                  struct tally_result *res);

/*
 * Settle reservation `request_id` (borrowed) with its actual cost: releases the holds and
 * charges `actual_micros` (0 .. 10^15, may exceed the estimate) and corrects the tpm
 * bucket by `actual_tokens`. Returns 0 (outcome TALLY_GRANTED, charged_micros and
 * overrun_micros in res; a repeat of the same settle is answered again with
 * TALLY_RESULT_REPLAYED), -TALLY_EUNAVAILABLE (retry later with the same id: it is safe),
 * -TALLY_ENOTFOUND (unknown or denied id), -TALLY_ERESOLVED (already settled/voided),
 * -TALLY_ECONFLICT (settled before with other amounts) or another error. `res` may be
 * NULL.
 */
int tally_settle(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                 int64_t actual_micros, uint64_t actual_tokens, int64_t deadline_ms,
                 struct tally_result *res);

/* Release reservation `request_id` without charging (the LLM call was not made).
 * Errors as tally_settle(). */
int tally_void(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
               int64_t deadline_ms, struct tally_result *res);

/* Push reservation `request_id`'s expiry to at least now + `ttl_ms` (1 ms .. 7 days),
 * for long streams. res->expires_at_ms is the new expiry. Errors as tally_settle(). */
int tally_extend(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE], int64_t ttl_ms,
                 int64_t deadline_ms, struct tally_result *res);

/* ---- Asynchronous gateway calls, for event-loop gateways. ----
 *
 * Same arguments, semantics, retries and deadlines as the blocking calls; instead of
 * waiting, `cb(arg, res)` is called exactly once with the answer, ON THE CLIENT'S I/O
 * THREAD. `res` is valid only during the callback (copy what you need). The callback must
 * not block and must not call blocking tally_* calls on the same client (it would
 * deadlock the I/O thread); it may start other asynchronous calls. Typically it posts the
 * result to the caller's own loop (e.g. uv_async_send). The return value says whether the
 * call was queued: 0 (the callback will be called, possibly with an UNAVAILABLE answer or
 * from tally_close()), or a negative code and the callback will NOT be called:
 * -TALLY_EINVAL (bad arguments), -TALLY_EBUSY (max_inflight calls already queued: these
 * calls never wait for room), -TALLY_ENOMEM, -TALLY_ECLOSED.
 */
typedef void (*tally_cb)(void *arg, const struct tally_result *res);

int tally_reserve_async(struct tally *c, const struct tally_reserve_args *args, int64_t deadline_ms,
                        tally_cb cb, void *arg);
int tally_settle_async(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                       int64_t actual_micros, uint64_t actual_tokens, int64_t deadline_ms,
                       tally_cb cb, void *arg);
int tally_void_async(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                     int64_t deadline_ms, tally_cb cb, void *arg);
int tally_extend_async(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                       int64_t ttl_ms, int64_t deadline_ms, tally_cb cb, void *arg);

/* ---- Accounts, keys, limits (admin role). ----
 *
 * Every admin write takes an optional `request_id` (borrowed, TALLY_REQUEST_ID_SIZE bytes;
 * NULL: a fresh one); a retry of the same change with the same id is answered from the
 * idempotency store. They return 0 (outcome TALLY_GRANTED), -TALLY_EUNAVAILABLE (nothing
 * known: retrying with res->request_id is safe), -TALLY_EFORBIDDEN (the token is not an
 * admin's) or the ledger's refusal (-TALLY_EINVAL, -TALLY_ENAME, -TALLY_EEXIST,
 * -TALLY_ENOTFOUND, -TALLY_EDEPTH, -TALLY_ECYCLE, -TALLY_ECONFLICT, ...).
 */

/* Budget periods (tally_limits.period_kind). */
enum tally_period {
    TALLY_PERIOD_NONE = 0,  /* the budget never resets */
    TALLY_PERIOD_FIXED = 1, /* period_ms long, anchored where the period was set */
    TALLY_PERIOD_DAY = 2,   /* UTC calendar day */
    TALLY_PERIOD_WEEK = 3,  /* UTC ISO week */
    TALLY_PERIOD_MONTH = 4, /* UTC calendar month */
    TALLY_PERIOD_MAX
};

/* What happens to a reservation still open at its expiry (tally_limits.expiry_policy). */
enum tally_expiry_policy {
    TALLY_EXPIRY_CHARGE = 0,  /* charge its estimate (default) */
    TALLY_EXPIRY_RELEASE = 1, /* release it, charge nothing */
};

/* Bits of tally_limits.set (and of tally_account_update()'s `clear`). */
enum {
    TALLY_LIM_BUDGET = 1u << 0,        /* budget_micros */
    TALLY_LIM_SOFT_BUDGET = 1u << 1,   /* soft_budget_micros (alerts only) */
    TALLY_LIM_PERIOD = 1u << 2,        /* period_kind, period_ms */
    TALLY_LIM_RPM = 1u << 3,           /* rpm, rpm_burst */
    TALLY_LIM_TPM = 1u << 4,           /* tpm, tpm_burst */
    TALLY_LIM_PARALLEL = 1u << 5,      /* max_parallel */
    TALLY_LIM_EXPIRES = 1u << 6,       /* expires_at_ms */
    TALLY_LIM_BLOCKED = 1u << 7,       /* blocked */
    TALLY_LIM_EXPIRY_POLICY = 1u << 8, /* expiry_policy */
    TALLY_LIM_ALL = (1u << 9) - 1,
};

/* Limits of an account; a limit applies only when its bit is in `set`. A burst of 0
 * means one minute's worth (the rate). */
struct tally_limits {
    uint32_t set;
    uint8_t period_kind;   /* enum tally_period */
    uint8_t blocked;       /* 0 or 1 */
    uint8_t expiry_policy; /* enum tally_expiry_policy */
    int64_t budget_micros;
    int64_t soft_budget_micros;
    int64_t period_ms; /* TALLY_PERIOD_FIXED only */
    uint64_t rpm, rpm_burst;
    uint64_t tpm, tpm_burst;
    uint64_t max_parallel;
    int64_t expires_at_ms;
};

/* Per-model limits on one account: bits TALLY_LIM_BUDGET, _RPM and _TPM only. */
struct tally_model_limits {
    uint32_t set;
    int64_t budget_micros;
    uint64_t rpm, rpm_burst;
    uint64_t tpm, tpm_burst;
};

/* Create account `name` under `parent` (NULL or "": a root) with `limits` (NULL: none). */
int tally_account_create(struct tally *c, const char *name, const char *parent,
                         const struct tally_limits *limits, const uint8_t *request_id,
                         int64_t deadline_ms, struct tally_result *res);

/*
 * Change account `name`: set the limits whose bits are in `limits->set` (limits may be
 * NULL), remove those in `clear`, and if `new_parent` is not NULL move the account under
 * it ("" makes it a root).
 */
int tally_account_update(struct tally *c, const char *name, const struct tally_limits *limits,
                         uint32_t clear, const char *new_parent, const uint8_t *request_id,
                         int64_t deadline_ms, struct tally_result *res);

/* Map a key to account `account`: give the secret (`key_secret`, hashed here) or its hash
 * (`key_hash`, TALLY_KEY_HASH_SIZE bytes), exactly one. -TALLY_EEXIST if the hash is
 * known (revoked or not). */
int tally_key_add(struct tally *c, const char *account, const char *key_secret,
                  const uint8_t *key_hash, const uint8_t *request_id, int64_t deadline_ms,
                  struct tally_result *res);

/* Revoke key hash `key_hash` (reserves with it are then denied key_revoked).
 * -TALLY_ENOTFOUND if unknown; revoking twice is fine. */
int tally_key_revoke(struct tally *c, const uint8_t key_hash[TALLY_KEY_HASH_SIZE],
                     const uint8_t *request_id, int64_t deadline_ms, struct tally_result *res);

/* Set the limits of `model` on `account`; `limits` NULL or with set == 0 removes them. */
int tally_model_limit_set(struct tally *c, const char *account, const char *model,
                          const struct tally_model_limits *limits, const uint8_t *request_id,
                          int64_t deadline_ms, struct tally_result *res);

/* How long the ledger keeps answers for idempotency (1 h .. 90 days; default 24 h). Below
 * TALLY_RETENTION_MIN_MS: -TALLY_EINVAL, nothing sent (the ledger refuses it too). */
int tally_retention_set(struct tally *c, int64_t retention_ms, const uint8_t *request_id,
                        int64_t deadline_ms, struct tally_result *res);

/* ---- Queries (reader role and up). ----
 *
 * `flags` 0 gives a linearizable read (served by the leader after a barrier);
 * TALLY_READ_STALE lets any node answer from its applied state, which may be behind.
 * They return 0, -TALLY_ENOTFOUND, -TALLY_EUNAVAILABLE or another error; `res` may be
 * NULL and carries only outcome, error and message.
 */
enum {
    TALLY_READ_STALE = 1u << 0,
};

struct tally_account {
    uint64_t id;
    char name[TALLY_NAME_MAX + 1];
    char parent[TALLY_NAME_MAX + 1]; /* "" for a root */
    uint32_t depth;                  /* 1 for a root */
    struct tally_limits limits;
    int64_t created_ms;
    int64_t spent_micros;     /* in the current period */
    int64_t held_micros;      /* estimates of open reservations */
    int64_t remaining_micros; /* budget - spent - held; INT64_MAX without a budget */
    int64_t lifetime_spent_micros;
    int64_t overrun_micros; /* sum of actual - estimate over settles that overran */
    uint64_t inflight;      /* open reservations */
    int64_t period_start_ms;
    int64_t period_end_ms;  /* INT64_MAX without a period */
    uint64_t rpm_available; /* requests admissible now; UINT64_MAX without a limit */
    uint64_t tpm_available; /* tokens admissible now */
    uint32_t n_keys;        /* active key hashes */
};

/* tally_reservation.state */
enum tally_resv_state {
    TALLY_RESV_OPEN = 0,
    TALLY_RESV_SETTLED = 1,
    TALLY_RESV_VOIDED = 2,
    TALLY_RESV_EXPIRED = 3,      /* resolved by expiry; a late settle/void may follow */
    TALLY_RESV_LATE_SETTLED = 4, /* expired, then corrected by a late settle or void */
};

struct tally_reservation {
    uint8_t request_id[TALLY_REQUEST_ID_SIZE];
    uint8_t state;                    /* enum tally_resv_state */
    char account[TALLY_NAME_MAX + 1]; /* the leaf */
    char model[TALLY_MODEL_MAX + 1];
    int64_t estimate_micros;
    uint64_t estimate_tokens;
    int64_t created_ms;
    int64_t expires_at_ms;
    int64_t charged_micros; /* charged so far (settle, expiry, corrections) */
    uint16_t metadata_len;
    uint8_t metadata[TALLY_METADATA_MAX];
};

/* tally_journal_entry.kind */
enum tally_journal_kind {
    TALLY_J_CHARGE = 1,         /* settle: actual cost charged */
    TALLY_J_RELEASE = 2,        /* void: hold released */
    TALLY_J_EXPIRE_CHARGE = 3,  /* expiry charged the estimate */
    TALLY_J_EXPIRE_RELEASE = 4, /* expiry released the hold */
    TALLY_J_CORRECTION = 5,     /* late settle/void after expiry */
    TALLY_J_SOFT_BUDGET = 6,    /* spent crossed the soft budget */
    TALLY_J_ADMIN = 7,          /* an admin command (hash-chained) */
};

/* Command types (tally_journal_entry.cmd_type of an admin entry). */
enum tally_cmd_type {
    TALLY_CMD_ACCOUNT_CREATE = 1,
    TALLY_CMD_ACCOUNT_UPDATE = 2,
    TALLY_CMD_KEY_ADD = 3,
    TALLY_CMD_KEY_REVOKE = 4,
    TALLY_CMD_MODEL_LIMIT_SET = 5,
    TALLY_CMD_RESERVE = 6,
    TALLY_CMD_SETTLE = 7,
    TALLY_CMD_VOID = 8,
    TALLY_CMD_EXTEND = 9,
    TALLY_CMD_CONFIG_SET = 10,
};

struct tally_journal_entry {
    uint64_t seq; /* the event's number; one event lists one entry per account */
    int64_t ts_ms;
    uint8_t kind;     /* enum tally_journal_kind */
    uint8_t cmd_type; /* TALLY_J_ADMIN: enum tally_cmd_type */
    char account[TALLY_NAME_MAX + 1];
    char actor[TALLY_ACTOR_MAX + 1];
    uint8_t request_id[TALLY_REQUEST_ID_SIZE];
    int64_t amount_micros;
    uint64_t tokens;
    int64_t period_start_ms;
    char model[TALLY_MODEL_MAX + 1];
    uint8_t admin_hash[32];
};

/* Names for display, never NULL ("unknown" out of range). */
const char *tally_period_name(int period_kind);
const char *tally_resv_state_name(int state);
const char *tally_journal_kind_name(int kind);
const char *tally_cmd_type_name(int cmd_type);

/* Account `name` into *out. */
int tally_account_get(struct tally *c, const char *name, unsigned flags, int64_t deadline_ms,
                      struct tally_account *out, struct tally_result *res);

/* The account a key hash maps to (`account`, TALLY_NAME_MAX + 1 bytes) and whether the
 * key is revoked (*revoked, may be NULL). */
int tally_key_get(struct tally *c, const uint8_t key_hash[TALLY_KEY_HASH_SIZE], unsigned flags,
                  int64_t deadline_ms, char *account, int *revoked, struct tally_result *res);

/* Reservation `request_id` (open, or resolved and still retained) into *out. */
int tally_reservation_get(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                          unsigned flags, int64_t deadline_ms, struct tally_reservation *out,
                          struct tally_result *res);

/* Where a paged list goes on: bytes the server chose (the key of the last item of the
 * previous page), opaque to the caller, so a page costs the same however deep it is. */
#define TALLY_CURSOR_MAX 128
struct tally_cursor {
    uint16_t len; /* 0: the first page (as `cursor`), no more pages (as *next) */
    uint8_t bytes[TALLY_CURSOR_MAX];
};

/*
 * Paged lists. `cursor` is NULL (or of len 0) for the first page, then the previous
 * page's *next; a *next of len 0 means that was the last page. `items` is the caller's
 * array of `limit` entries (1 .. TALLY_LIST_MAX); *n receives how many were written.
 * A scoped credential lists only what lies under its roots, and a filter naming an
 * account outside them fails with TALLY_EFORBIDDEN.
 *
 * tally_account_list: the children of `parent` (NULL or "": the roots), in name order.
 * tally_reservation_list: open reservations whose chain contains `account` (NULL or "":
 * all), in expiry order.
 * tally_journal_list: entries of `account` (NULL or "": all) with since_ms <= ts_ms <
 * until_ms, in log order.
 */
int tally_account_list(struct tally *c, const char *parent, const struct tally_cursor *cursor,
                       uint32_t limit, unsigned flags, int64_t deadline_ms,
                       struct tally_account *items, uint32_t *n, struct tally_cursor *next,
                       struct tally_result *res);
int tally_reservation_list(struct tally *c, const char *account, const struct tally_cursor *cursor,
                           uint32_t limit, unsigned flags, int64_t deadline_ms,
                           struct tally_reservation *items, uint32_t *n, struct tally_cursor *next,
                           struct tally_result *res);
int tally_journal_list(struct tally *c, const char *account, int64_t since_ms, int64_t until_ms,
                       const struct tally_cursor *cursor, uint32_t limit, unsigned flags,
                       int64_t deadline_ms, struct tally_journal_entry *items, uint32_t *n,
                       struct tally_cursor *next, struct tally_result *res);

/* ---- Cluster (status: reader role; membership: admin role). ---- */

/* tally_node_status.raft_state */
enum tally_raft_state {
    TALLY_RAFT_UNKNOWN = 0,
    TALLY_RAFT_FOLLOWER = 1,
    TALLY_RAFT_CANDIDATE = 2,
    TALLY_RAFT_LEADER = 3,
};

/* tally_member.role */
enum tally_member_role {
    TALLY_MEMBER_STANDBY = 0,
    TALLY_MEMBER_VOTER = 1,
    TALLY_MEMBER_SPARE = 2,
};

struct tally_member {
    uint64_t id;
    char peer_address[TALLY_ADDRESS_MAX + 1];   /* Raft traffic */
    char client_address[TALLY_ADDRESS_MAX + 1]; /* clients; "" when unknown */
    uint8_t role;                               /* enum tally_member_role */
};

struct tally_node_status {
    uint64_t node_id;
    uint64_t term;
    uint8_t raft_state; /* enum tally_raft_state */
    uint8_t serving;    /* 1: leader with its barrier committed (answers writes) */
    uint64_t leader_id; /* 0: unknown */
    char leader_address[TALLY_ADDRESS_MAX + 1];
    uint64_t commit_index;
    uint64_t applied_index;
    int64_t ledger_now_ms;
    uint32_t n_members;
    struct tally_member members[TALLY_MEMBERS_MAX];
};

/* "follower", "candidate", "leader", "unknown"; "voter", "standby", "spare". */
const char *tally_raft_state_name(int state);
const char *tally_member_role_name(int role);

/*
 * Status of the ONE node at `endpoint` ("host:port", borrowed; need not be in the
 * configured endpoints): sent over a short-lived connection of its own (HELLO with the
 * client's token, then STATUS), never redirected and never retried elsewhere; over TLS
 * when the client is configured with it (the server name defaults to `endpoint`'s host).
 * Blocks the caller (not the I/O thread) for at most `deadline_ms`. Returns 0,
 * -TALLY_EUNAVAILABLE (no answer in time, connection refused, failed TLS handshake),
 * -TALLY_EAUTH, -TALLY_EINVAL (bad endpoint)...
 */
int tally_status(struct tally *c, const char *endpoint, int64_t deadline_ms,
                 struct tally_node_status *out, struct tally_result *res);

/*
 * Membership changes, sent to the leader. Add node `id` whose Raft peer address is
 * `peer_address` and promote it to voter; remove node `id`; hand leadership to node `id`
 * (0: any). These carry no request id: after -TALLY_EUNAVAILABLE check tally_status()
 * before repeating.
 */
int tally_member_add(struct tally *c, uint64_t id, const char *peer_address, int64_t deadline_ms,
                     struct tally_result *res);
int tally_member_remove(struct tally *c, uint64_t id, int64_t deadline_ms,
                        struct tally_result *res);
int tally_leader_transfer(struct tally *c, uint64_t id, int64_t deadline_ms,
                          struct tally_result *res);

/* ---- Observability. ---- */

/* Counters since tally_open(). */
struct tally_stats {
    uint64_t calls;         /* calls accepted */
    uint64_t requests_sent; /* frames sent, retries included (HELLO excluded) */
    uint64_t retries;       /* re-sends of a request after a retryable failure */
    uint64_t redirects;     /* NOT_LEADER answers followed (to a configured endpoint) */
    uint64_t connects;      /* connections established (HELLO accepted) */
    uint64_t reconnects;    /* connections lost or dropped */
    uint64_t unavailable;   /* calls that ended UNAVAILABLE */
    uint64_t failed_open;   /* reserves granted by fail_open */
    uint64_t busy;          /* calls refused or timed out for lack of room */
    uint64_t voids_queued;  /* background voids started */
    uint64_t voids_done;    /* background voids answered (voided, or nothing to void) */
    uint64_t voids_failed;  /* background voids dropped (max_inflight waiting) or refused */
    uint64_t voids_skipped; /* UNAVAILABLE reserves of an id this client saw granted: not voided */
    uint64_t inflight;      /* calls queued or awaiting an answer now */
    uint64_t connected;     /* 1 if a connection is up and authenticated now */
    char endpoint[TALLY_ADDRESS_MAX + 1]; /* the current or last endpoint */
};

/* Copy the counters into *out. Any thread. */
void tally_stats(struct tally *c, struct tally_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* TALLY_CLIENT_TALLY_H */
