/*
 * ledger: tally's deterministic budget state machine over LMDB.
 *
 * The ledger holds accounts (a forest of at most LEDGER_DEPTH_MAX levels), the
 * SHA-256 hashes of virtual keys, limits, open reservations, stored answers and a
 * journal. It changes only by applying *batches*: a batch is a leader-chosen time
 * stamp plus a list of commands, encoded with msgpack into a buffer whose size is a
 * multiple of 8 bytes (the unit libraft replicates). One batch is applied in one
 * LMDB write transaction that also records the Raft index it came from, so a replica
 * that restarts skips what it already holds.
 *
 * The one idea behind the shape: everything that decides an answer comes from the
 * batch and the stored state. The ledger never reads a clock, a random source or the
 * environment, so every replica that applies the same batches reaches the same state
 * (ledger_state_hash() proves it) and a simulation seed replays exactly.
 *
 * Threads: a struct ledger is used by one thread at a time, except that a snapshot
 * started with ledger_snapshot_begin() may be exported from another thread.
 *
 * Errors: functions return 0 or a negative LEDGER_E* code; the ledger's errmsg
 * (ledger_errmsg()) says what happened in words. A denied reservation is not an
 * error: it is an answer (struct ledger_result with status LEDGER_DENIED).
 *
 * The semantics of every command are written out in docs/ledger.md.
 */
#ifndef TALLY_LEDGER_H
#define TALLY_LEDGER_H

#include <stddef.h>
#include <stdint.h>

/* ---- Bounds. Every input is checked against these before anything changes. ---- */
#define LEDGER_NAME_MAX 128         /* account name bytes, [A-Za-z0-9._:/@-] */
#define LEDGER_MODEL_MAX 64         /* model name bytes, same alphabet */
#define LEDGER_ACTOR_MAX 64         /* actor bytes (any printable ASCII) */
#define LEDGER_METADATA_MAX 256     /* opaque reservation metadata bytes */
#define LEDGER_DEPTH_MAX 8          /* accounts in the longest chain, leaf to root */
#define LEDGER_KEY_HASH_SIZE 32     /* SHA-256 of the virtual key */
#define LEDGER_REQUEST_ID_SIZE 16   /* 128-bit client-chosen id */
#define LEDGER_AMOUNT_MAX 1000000000000000LL /* 10^15 micros: one estimate/actual/budget */
#define LEDGER_TOKENS_MAX 1000000000000ULL   /* 10^12 tokens in one request or one limit */
#define LEDGER_RATE_MAX 1000000000000ULL     /* rpm/tpm and their bursts */
#define LEDGER_PARALLEL_MAX 1000000000ULL    /* max_parallel */
#define LEDGER_TTL_MAX_MS (7LL * 24 * 3600 * 1000)       /* one reservation's ttl */
#define LEDGER_PERIOD_MIN_MS 1000LL                      /* fixed period bounds */
#define LEDGER_PERIOD_MAX_MS (366LL * 24 * 3600 * 1000)
#define LEDGER_RETENTION_DEFAULT_MS (24LL * 3600 * 1000) /* stored answers */
#define LEDGER_RETENTION_MAX_MS (90LL * 24 * 3600 * 1000)
#define LEDGER_TIME_MAX_MS 253402300799999LL /* 9999-12-31T23:59:59.999Z */
#define LEDGER_BATCH_MAX_CMDS 4096   /* commands in one batch */
#define LEDGER_BATCH_MAX_BYTES (8u << 20)
#define LEDGER_GC_PER_BATCH 4096     /* expired answers pruned per batch, at most */
#define LEDGER_ERRMSG_SIZE 256

/* ---- Error codes (returned negated). ---- */
enum {
    LEDGER_EINVAL = 1, /* an argument is out of range or malformed */
    LEDGER_ENAME,      /* an account or model name is not valid */
    LEDGER_ENOTFOUND,  /* no such account, key or reservation */
    LEDGER_EEXIST,     /* account or key already exists */
    LEDGER_ECONFLICT,  /* request_id reused with different arguments */
    LEDGER_ERESOLVED,  /* the reservation is already settled or voided */
    LEDGER_EDEPTH,     /* the chain would be deeper than LEDGER_DEPTH_MAX */
    LEDGER_ECYCLE,     /* the parent would make a cycle */
    LEDGER_EOVERFLOW,  /* a counter would overflow */
    LEDGER_EDECODE,    /* a command or batch is not valid msgpack of the right shape */
    LEDGER_ETOOBIG,    /* a batch, field or snapshot exceeds its bound */
    LEDGER_ENOMEM,     /* allocation failed */
    LEDGER_EIO,        /* LMDB or file system error: the node must stop */
    LEDGER_ECORRUPT,   /* stored data or snapshot fails its checks: the node must stop */
    LEDGER_ESTALE,     /* the batch's index is not after the applied index */
    LEDGER_ECODE_MAX
};

/* Human name of an error code (positive or negative), never NULL. */
const char *ledger_strerror(int code);

/* ---- Commands. ---- */
enum ledger_cmd_type {
    LEDGER_CMD_ACCOUNT_CREATE = 1,
    LEDGER_CMD_ACCOUNT_UPDATE = 2,
    LEDGER_CMD_KEY_ADD = 3,
    LEDGER_CMD_KEY_REVOKE = 4,
    LEDGER_CMD_MODEL_LIMIT_SET = 5,
    LEDGER_CMD_RESERVE = 6,
    LEDGER_CMD_SETTLE = 7,
    LEDGER_CMD_VOID = 8,
    LEDGER_CMD_EXTEND = 9,
    LEDGER_CMD_CONFIG_SET = 10,
    LEDGER_CMD_TYPE_MAX
};

enum ledger_period {
    LEDGER_PERIOD_NONE = 0,  /* the budget never resets */
    LEDGER_PERIOD_FIXED = 1, /* period_ms long, anchored where the period was set */
    LEDGER_PERIOD_DAY = 2,   /* UTC calendar day */
    LEDGER_PERIOD_WEEK = 3,  /* UTC ISO week, Monday 00:00 */
    LEDGER_PERIOD_MONTH = 4, /* UTC calendar month */
    LEDGER_PERIOD_MAX
};

enum ledger_expiry_policy {
    LEDGER_EXPIRY_CHARGE = 0,  /* an expired reservation is charged its estimate */
    LEDGER_EXPIRY_RELEASE = 1, /* an expired reservation is released, nothing charged */
};

/* Bits of ledger_limits.set (and of the update's clear mask). */
enum {
    LEDGER_LIM_BUDGET = 1u << 0,        /* budget_micros */
    LEDGER_LIM_SOFT_BUDGET = 1u << 1,   /* soft_budget_micros */
    LEDGER_LIM_PERIOD = 1u << 2,        /* period_kind, period_ms */
    LEDGER_LIM_RPM = 1u << 3,           /* rpm, rpm_burst */
    LEDGER_LIM_TPM = 1u << 4,           /* tpm, tpm_burst */
    LEDGER_LIM_PARALLEL = 1u << 5,      /* max_parallel */
    LEDGER_LIM_EXPIRES = 1u << 6,       /* expires_at_ms */
    LEDGER_LIM_BLOCKED = 1u << 7,       /* blocked */
    LEDGER_LIM_EXPIRY_POLICY = 1u << 8, /* expiry_policy */
    LEDGER_LIM_ALL = (1u << 9) - 1,
};

/*
 * Limits of an account. A limit applies only when its bit is in `set`. Bursts of 0
 * mean "one minute's worth" (equal to the rate). The period applies to the budget
 * and the soft budget; without LEDGER_LIM_PERIOD the budget is a lifetime budget.
 */
struct ledger_limits {
    uint32_t set;
    uint8_t period_kind;   /* enum ledger_period */
    uint8_t blocked;       /* 0 or 1 */
    uint8_t expiry_policy; /* enum ledger_expiry_policy */
    int64_t budget_micros;
    int64_t soft_budget_micros;
    int64_t period_ms; /* LEDGER_PERIOD_FIXED only */
    uint64_t rpm, rpm_burst;
    uint64_t tpm, tpm_burst;
    uint64_t max_parallel;
    int64_t expires_at_ms;
};

/* Per-model limits on one account; bits LEDGER_LIM_BUDGET, _RPM, _TPM only. */
struct ledger_model_limits {
    uint32_t set;
    int64_t budget_micros;
    uint64_t rpm, rpm_burst;
    uint64_t tpm, tpm_burst;
};

/*
 * One command. Strings are NUL-terminated inside fixed arrays, so a command owns
 * all its bytes and can be copied by value. `request_id` is the idempotency key of
 * every command; for settle, void and extend it names the reservation, which is the
 * request_id of its reserve. `actor` names who caused the command (the connection's
 * principal); it is recorded in the journal.
 */
struct ledger_cmd {
    uint8_t type; /* enum ledger_cmd_type */
    uint8_t request_id[LEDGER_REQUEST_ID_SIZE];
    char actor[LEDGER_ACTOR_MAX + 1];
    union {
        struct { /* LEDGER_CMD_ACCOUNT_CREATE */
            char name[LEDGER_NAME_MAX + 1];
            char parent[LEDGER_NAME_MAX + 1]; /* "" for a root */
            struct ledger_limits limits;
        } create;
        struct { /* LEDGER_CMD_ACCOUNT_UPDATE */
            char name[LEDGER_NAME_MAX + 1];
            struct ledger_limits limits; /* limits.set: fields to change */
            uint32_t clear;              /* LEDGER_LIM_* bits to remove */
            uint8_t set_parent;          /* 1: move under `parent` ("" = root) */
            char parent[LEDGER_NAME_MAX + 1];
        } update;
        struct { /* LEDGER_CMD_KEY_ADD, LEDGER_CMD_KEY_REVOKE (account unused) */
            char account[LEDGER_NAME_MAX + 1];
            uint8_t key_hash[LEDGER_KEY_HASH_SIZE];
        } key;
        struct { /* LEDGER_CMD_MODEL_LIMIT_SET; limits.set == 0 removes them */
            char account[LEDGER_NAME_MAX + 1];
            char model[LEDGER_MODEL_MAX + 1];
            struct ledger_model_limits limits;
        } model_limit;
        struct { /* LEDGER_CMD_RESERVE */
            uint8_t by_account; /* 0: key_hash names the key; 1: account names it */
            uint8_t key_hash[LEDGER_KEY_HASH_SIZE];
            char account[LEDGER_NAME_MAX + 1];
            int64_t estimate_micros;
            uint64_t estimate_tokens;
            char model[LEDGER_MODEL_MAX + 1]; /* "" for none */
            int64_t ttl_ms;
            uint16_t metadata_len;
            uint8_t metadata[LEDGER_METADATA_MAX];
        } reserve;
        struct { /* LEDGER_CMD_SETTLE */
            int64_t actual_micros;
            uint64_t actual_tokens;
        } settle;
        struct { /* LEDGER_CMD_EXTEND */
            int64_t ttl_ms; /* expires_at becomes max(expires_at, now + ttl_ms) */
        } extend;
        struct { /* LEDGER_CMD_CONFIG_SET */
            int64_t retention_ms;
        } config;
    } u;
};

/* ---- Answers. ---- */
enum ledger_status {
    LEDGER_OK = 0,     /* done; for reserve: granted */
    LEDGER_DENIED = 1, /* reserve not granted: see deny_reason */
    /* negative values: -LEDGER_E* error, nothing changed */
};

enum ledger_deny_reason {
    LEDGER_DENY_NONE = 0,
    LEDGER_DENY_UNKNOWN_KEY,
    LEDGER_DENY_KEY_REVOKED,
    LEDGER_DENY_BLOCKED,
    LEDGER_DENY_EXPIRED,
    LEDGER_DENY_PARALLEL,
    LEDGER_DENY_BUDGET,
    LEDGER_DENY_RPM,
    LEDGER_DENY_TPM,
    LEDGER_DENY_MODEL_BUDGET,
    LEDGER_DENY_MODEL_RPM,
    LEDGER_DENY_MODEL_TPM,
    LEDGER_DENY_MAX
};

/* Human name of a deny reason ("budget", "rpm", ...), never NULL. */
const char *ledger_deny_reason_name(int reason);

/* Bits of ledger_result.flags. */
enum {
    LEDGER_RESULT_REPLAYED = 1u << 0,    /* answer returned from the idempotency store */
    LEDGER_RESULT_SOFT_BUDGET = 1u << 1, /* some account is past its soft budget */
    LEDGER_RESULT_LATE = 1u << 2,        /* settle/void after the reservation expired */
};

/*
 * The answer to one command. For a deny: `account` is the account whose limit
 * failed, `remaining` what is left of that limit (micros, requests, tokens or
 * slots, never negative) and `retry_after_ms` when a rate limit will admit the
 * request (-1: never, the request is larger than the burst; 0 for other limits).
 * For settle: `charged_micros` what this command charged each account of the chain
 * (for a late settle: the correction), `overrun_micros` actual minus estimate when
 * positive. `expires_at_ms` is the reservation's expiry for reserve and extend.
 */
struct ledger_result {
    int32_t status; /* enum ledger_status or -LEDGER_E* */
    uint8_t cmd_type;
    uint8_t deny_reason; /* enum ledger_deny_reason */
    uint16_t flags;
    uint8_t request_id[LEDGER_REQUEST_ID_SIZE];
    char account[LEDGER_NAME_MAX + 1];
    int64_t remaining;
    int64_t retry_after_ms;
    int64_t charged_micros;
    int64_t overrun_micros;
    int64_t expires_at_ms;
};

/* ---- Life cycle. ---- */
struct ledger;

/* Bits of ledger_options.flags. */
enum {
    /* Do not fsync on commit. The Raft log is then the durable record and a replica
     * replays from it after a crash. LMDB stays consistent through a process crash (the
     * written map is in the page cache), not through a machine crash: the OS may write
     * the map's pages in any order. raft/node.c therefore rebuilds a ledger that was
     * open when the machine went down (its boot marker). */
    LEDGER_OPEN_NOSYNC = 1u << 0,
};

/*
 * The ledger writes its LMDB map in place (MDB_WRITEMAP). A write that needs a new disk
 * block when there is none (a full disk) or that fails in the kernel is therefore not
 * an error code but a SIGBUS in the writing thread; a process that opens a ledger must
 * treat SIGBUS as a fatal storage error (raft/node.c traps it and exits 74).
 */

struct ledger_options {
    uint32_t flags;
    size_t initial_map_bytes; /* 0: 64 MiB; the map doubles when full */
    size_t max_map_bytes;     /* 0: 64 GiB */
};

/*
 * Open (creating if needed) the ledger stored in directory `dir` (borrowed; it must
 * exist). `opts` may be NULL for defaults. On success *out owns the ledger until
 * ledger_close(). On failure returns -LEDGER_E* and writes a message to `errmsg`
 * (LEDGER_ERRMSG_SIZE bytes, may be NULL).
 */
int ledger_open(struct ledger **out, const char *dir, const struct ledger_options *opts,
                char *errmsg);

/* Close the ledger and free it. NULL is accepted. */
void ledger_close(struct ledger *l);

/* Flush every committed transaction to disk (fsync), for a ledger opened with
 * LEDGER_OPEN_NOSYNC. 0 or -LEDGER_EIO. */
int ledger_sync(struct ledger *l);

/* The message of the last error of this ledger ("" if none). */
const char *ledger_errmsg(const struct ledger *l);

/* ---- Encoding. ---- */

/*
 * Encode `n` commands (1..LEDGER_BATCH_MAX_CMDS, borrowed) with the leader's time
 * stamp `stamp_ms` into a new buffer whose length is a multiple of 8. On success
 * *buf (malloc'd, owned by the caller, free() it) and *len are set. Commands are
 * validated for encodability (lengths, type) here; their meaning is checked when the
 * batch is applied. Returns 0, -LEDGER_EINVAL, -LEDGER_ETOOBIG or -LEDGER_ENOMEM.
 */
int ledger_batch_encode(int64_t stamp_ms, const struct ledger_cmd *cmds, size_t n, void **buf,
                        size_t *len);

/*
 * Decode a batch (borrowed) into `cmds` (caller's array of `max` entries). Sets
 * *stamp_ms and *n. Never allocates; every length and count is checked against the
 * bounds above and the buffer before it is used. Returns 0, -LEDGER_EDECODE or
 * -LEDGER_ETOOBIG.
 */
int ledger_batch_decode(const void *buf, size_t len, int64_t *stamp_ms, struct ledger_cmd *cmds,
                        size_t max, size_t *n);

/* ---- Applying batches. ---- */

/*
 * Apply one encoded batch (borrowed) that was committed at Raft index `index`, in
 * one LMDB write transaction that also stores `index` as the applied index.
 *
 * Time: now = max(batch stamp, last stamp applied); reservations whose expires_at
 * <= now are resolved first, in (expires_at, request_id) order, then the commands run
 * in order. `results` (caller's array of at least LEDGER_BATCH_MAX_CMDS entries, or
 * of the batch's command count) receives one answer per command; *n_results is set.
 *
 * Returns 0 when the batch was applied (individual commands may have failed: see
 * each result's status). If `index` <= the applied index, returns -LEDGER_ESTALE and
 * changes nothing: the caller skips an entry it already holds. A batch that does not
 * decode is still recorded as applied (every replica rejects it the same way) and
 * returns -LEDGER_EDECODE with *n_results = 0. -LEDGER_EIO / -LEDGER_ECORRUPT mean
 * the state can no longer be trusted and the node must stop. A full LMDB map is
 * grown and the batch retried, never lost.
 */
int ledger_apply_batch(struct ledger *l, uint64_t index, const void *buf, size_t len,
                       struct ledger_result *results, size_t *n_results);

/* Raft index of the last applied batch (0 for a new ledger). */
uint64_t ledger_applied_index(const struct ledger *l);

/* The ledger's clock: the largest batch stamp applied so far (0 for a new ledger). */
int64_t ledger_now_ms(const struct ledger *l);

/*
 * SHA-256 over every stored record in a canonical order. Replicas that applied the
 * same batches have equal hashes. Returns 0 or -LEDGER_EIO.
 */
int ledger_state_hash(struct ledger *l, uint8_t out[32]);

/*
 * ---- Invariants. ----
 *
 * What the ledger keeps true of its stored state after every batch, numbered so that
 * assertions and the checker cite them. ledger_check_invariants() verifies all that one
 * state can show (all but I5 and I8's transitions) over the whole state; after every
 * grant, settle, void, extend and expiry the ledger asserts what of them shows on the
 * one chain it touched (check.c, O(chain)).
 * Limits bound only what a grant may add (I5): a settle may charge more than its
 * estimate, an expiry charges its estimate, an admin may lower a budget or max_parallel
 * below what is spent, held or in flight, so none of them bounds the state afterwards.
 *
 * I1  An account's held_micros is the sum of estimate_micros over the open reservations
 *     whose chain (the chain as granted, kept through later moves) contains it, and its
 *     inflight their number. A grant adds its estimate and 1 on every account of its
 *     chain; its settle, void or expiry removes exactly that.
 * I2  The same for a model limit record: its held_micros and inflight sum the open
 *     reservations whose model_mask marks its account (the grant matched the record).
 * I3  An account's spent_micros is the sum of the amounts of its CHARGE, EXPIRE_CHARGE and
 *     CORRECTION journal entries whose period_start_ms is its current period start.
 * I4  No counter is negative: an account's held, spent, lifetime_spent, overrun and rate
 *     bucket levels, a model record's held and spent. lifetime_spent >= spent: every
 *     change to spent but a rollover to 0 changes lifetime_spent by the same amount.
 * I5  At the moment of a grant (only then), on every account of its chain: not blocked,
 *     not expired, inflight <= max_parallel, spent + held <= budget, the rpm bucket
 *     within its burst, the tpm bucket within its burst if the grant cost tokens; and on
 *     each model limit it matched: spent + held <= budget, rpm and tpm likewise.
 * I6  Accounts form a forest: ids 1..next_account_id - 1 each have one record, every
 *     parent exists, no chain is cyclic or longer than LEDGER_DEPTH_MAX, and the names
 *     and children indexes say exactly what the records say.
 * I7  An account's n_keys is the number of its unrevoked keys, n_models the number of
 *     its model records, and every key and model record names an existing account.
 * I8  A reservation record is a stored denial or has a state OPEN..LATE_SETTLED, a chain
 *     of 1..LEDGER_DEPTH_MAX existing accounts and an estimate in 0..LEDGER_AMOUNT_MAX.
 *     States move only OPEN -> SETTLED | VOIDED | EXPIRED and EXPIRED -> LATE_SETTLED.
 *     An open one has an expiry timer at its expires_at, which is after the clock; no
 *     timer is due at or before the clock once a batch is applied.
 * I9  Journal records are numbered 1..journal_seq without gaps, their times never
 *     decrease, and the admin entries' hashes chain from 32 zero bytes to meta's head.
 */

/*
 * Check the invariants above (all but I5 and I8's transitions) over the whole stored
 * state. Returns 0, or -LEDGER_ECORRUPT with the first violation, prefixed by its
 * number ("I3: ..."), in ledger_errmsg(). O(state): for tests and the simulation; a
 * node never calls it.
 */
int ledger_check_invariants(struct ledger *l);

/* ---- Queries (read the last applied state; never change it). ---- */

struct ledger_account_info {
    uint64_t id;
    char name[LEDGER_NAME_MAX + 1];
    char parent[LEDGER_NAME_MAX + 1]; /* "" for a root */
    uint32_t depth;                   /* 1 for a root */
    struct ledger_limits limits;
    int64_t created_ms;
    int64_t spent_micros;    /* in the current period (0 if the period has rolled) */
    int64_t held_micros;     /* estimates of open reservations */
    int64_t remaining_micros; /* budget - spent - held, INT64_MAX without a budget */
    int64_t lifetime_spent_micros;
    int64_t overrun_micros;  /* sum of actual - estimate over settles that overran */
    uint64_t inflight;       /* open reservations */
    /* The period `spent` counts: journal entries with this period_start_ms sum to
     * spent_micros. Without a period it starts when the budget was created or its
     * period last changed, and period_end_ms is INT64_MAX. */
    int64_t period_start_ms;
    int64_t period_end_ms;
    uint64_t rpm_available; /* requests admissible now; UINT64_MAX without a limit */
    uint64_t tpm_available; /* tokens admissible now */
    uint32_t n_keys;        /* active (not revoked) key hashes */
};

struct ledger_model_info {
    char model[LEDGER_MODEL_MAX + 1];
    struct ledger_model_limits limits;
    int64_t spent_micros;
    int64_t held_micros;
    uint64_t inflight;
};

enum ledger_resv_state {
    LEDGER_RESV_OPEN = 0,
    LEDGER_RESV_SETTLED = 1,
    LEDGER_RESV_VOIDED = 2,
    LEDGER_RESV_EXPIRED = 3,      /* resolved by expiry; a late settle/void may follow */
    LEDGER_RESV_LATE_SETTLED = 4, /* expired, then corrected by a late settle or void */
};

struct ledger_reservation_info {
    uint8_t request_id[LEDGER_REQUEST_ID_SIZE];
    uint8_t state; /* enum ledger_resv_state */
    char account[LEDGER_NAME_MAX + 1]; /* the leaf */
    char model[LEDGER_MODEL_MAX + 1];
    int64_t estimate_micros;
    uint64_t estimate_tokens;
    int64_t created_ms;
    int64_t expires_at_ms;
    int64_t charged_micros; /* total charged so far (settle, expiry, corrections) */
    uint16_t metadata_len;
    uint8_t metadata[LEDGER_METADATA_MAX];
};

enum ledger_journal_kind {
    LEDGER_J_CHARGE = 1,     /* settle: actual cost charged */
    LEDGER_J_RELEASE = 2,    /* void: hold released, nothing charged */
    LEDGER_J_EXPIRE_CHARGE = 3,  /* expiry charged the estimate */
    LEDGER_J_EXPIRE_RELEASE = 4, /* expiry released the hold */
    LEDGER_J_CORRECTION = 5, /* late settle/void after expiry: actual - expiry charge */
    LEDGER_J_SOFT_BUDGET = 6, /* spent crossed the soft budget this period */
    LEDGER_J_ADMIN = 7,      /* an admin command (hash-chained) */
};

/*
 * One journal entry as seen by one account. An event (a settle, an expiry, ...) is one
 * journal record covering the whole chain; listing it yields one entry per account of
 * the chain, all with the event's `seq`.
 */
struct ledger_journal_entry {
    uint64_t seq; /* the event's number: 1, 2, ... in log order */
    int64_t ts_ms;
    uint8_t kind; /* enum ledger_journal_kind */
    uint8_t cmd_type; /* for LEDGER_J_ADMIN: the command */
    char account[LEDGER_NAME_MAX + 1];
    char actor[LEDGER_ACTOR_MAX + 1];
    uint8_t request_id[LEDGER_REQUEST_ID_SIZE];
    int64_t amount_micros; /* charged to this account in period_start_ms's period */
    uint64_t tokens;
    int64_t period_start_ms;
    char model[LEDGER_MODEL_MAX + 1];
    uint8_t admin_hash[32]; /* LEDGER_J_ADMIN: SHA-256(previous hash || entry) */
};

/* Record counts, in O(1) (LMDB's own statistics): for metrics. */
struct ledger_counts {
    uint64_t accounts;
    uint64_t keys;         /* key hashes, revoked included */
    uint64_t reservations; /* open and resolved ones still retained */
    uint64_t journal;      /* journal records */
};

int ledger_counts(struct ledger *l, struct ledger_counts *out);

/* Query callbacks return 0 to go on, non-zero to stop (that value is returned). */
typedef int (*ledger_account_cb)(void *ctx, const struct ledger_account_info *info);
typedef int (*ledger_model_cb)(void *ctx, const struct ledger_model_info *info);
typedef int (*ledger_reservation_cb)(void *ctx, const struct ledger_reservation_info *info);
typedef int (*ledger_journal_cb)(void *ctx, const struct ledger_journal_entry *entry);

/* State of account `name` as of the ledger's clock. 0 or -LEDGER_ENOTFOUND. */
int ledger_account_get(struct ledger *l, const char *name, struct ledger_account_info *out);

/* Account that key hash `key_hash` maps to, and whether it is revoked. */
int ledger_key_get(struct ledger *l, const uint8_t key_hash[LEDGER_KEY_HASH_SIZE],
                   char account[LEDGER_NAME_MAX + 1], int *revoked);

/* Children of `parent` ("" or NULL: every root), in name order. */
int ledger_account_list(struct ledger *l, const char *parent, ledger_account_cb cb, void *ctx);

/* Model limits of account `name`, in model order. */
int ledger_model_list(struct ledger *l, const char *name, ledger_model_cb cb, void *ctx);

/* One reservation (open or resolved and still retained). 0 or -LEDGER_ENOTFOUND. */
int ledger_reservation_get(struct ledger *l, const uint8_t request_id[LEDGER_REQUEST_ID_SIZE],
                           struct ledger_reservation_info *out);

/* Open reservations whose chain contains `account` (NULL: all), in expiry order. */
int ledger_reservation_list(struct ledger *l, const char *account, ledger_reservation_cb cb,
                            void *ctx);

/*
 * Journal entries of `account` (NULL: every entry) with since_ms <= ts_ms < until_ms,
 * in log order. Admin entries are listed under the account they changed.
 */
int ledger_journal_list(struct ledger *l, const char *account, int64_t since_ms,
                        int64_t until_ms, ledger_journal_cb cb, void *ctx);

/* ---- Snapshots. ---- */

/* A frozen view of the ledger for export. */
struct ledger_snapshot;

/* Writer/reader callbacks: return 0, or non-zero to abort (returned as -LEDGER_EIO). */
typedef int (*ledger_write_fn)(void *ctx, const void *buf, size_t len);
typedef int (*ledger_read_fn)(void *ctx, void *buf, size_t len); /* exactly len bytes */

/*
 * Freeze the current state (an LMDB read transaction). Call on the ledger's thread;
 * the snapshot may then be exported from any thread while batches keep being
 * applied. *out is owned by the caller until ledger_snapshot_end().
 */
int ledger_snapshot_begin(struct ledger *l, struct ledger_snapshot **out);

/* Applied index of the frozen state. */
uint64_t ledger_snapshot_index(const struct ledger_snapshot *s);

/*
 * Write the frozen state as a self-checking stream (magic, version, records, SHA-256
 * trailer) through `write`. Any thread. Returns 0 or -LEDGER_EIO.
 */
int ledger_snapshot_export(struct ledger_snapshot *s, ledger_write_fn write, void *ctx);

/* Release the frozen view. NULL is accepted. */
void ledger_snapshot_end(struct ledger_snapshot *s);

/*
 * The applied index a snapshot stream (borrowed, at least its first bytes) says it
 * holds, without verifying the stream: for deciding whether an import is needed at
 * all. 0 for a snapshot of a ledger that never applied a batch. Returns 0 or
 * -LEDGER_ECORRUPT (not a snapshot).
 */
int ledger_snapshot_stream_index(const void *buf, size_t len, uint64_t *index);

/*
 * Replace the whole ledger with a stream written by ledger_snapshot_export(). Every
 * record is bounded and the trailer verified before the new state is committed; on
 * any failure the old state is kept and -LEDGER_ECORRUPT (or -LEDGER_EIO) returned.
 */
int ledger_snapshot_import(struct ledger *l, ledger_read_fn read, void *ctx);

#endif /* TALLY_LEDGER_H */
