/*
 * types.h: the ledger's data language, part of wire/wire.h (include that).
 *
 * Everything that crosses a boundary between tally's processes is described here once:
 * the bounds every input is checked against, the error codes, the commands a batch
 * carries, the answers the ledger gives, and the records its queries return. The ledger
 * (ledger/) executes these commands, the protocol (wire/proto.c) carries them and
 * libtally (client/) builds them; none of the three may define a copy. Nothing here
 * depends on LMDB or libraft, so the client links it without the server's libraries.
 */
#ifndef TALLY_WIRE_TYPES_H
#define TALLY_WIRE_TYPES_H

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
#define LEDGER_RETENTION_MIN_MS (3600LL * 1000) /* the least a ledger accepts (ledger.h) */
#define LEDGER_TIME_MAX_MS 253402300799999LL /* 9999-12-31T23:59:59.999Z */
#define LEDGER_BATCH_MAX_CMDS 4096   /* commands in one batch */
#define LEDGER_BATCH_MAX_BYTES (8u << 20)
#define LEDGER_GC_PER_BATCH 4096     /* expired answers pruned per batch, at most */
#define LEDGER_ERRMSG_SIZE 256
#define LEDGER_SCOPE_ROOTS_MAX 16         /* root accounts in one credential's scope */
#define LEDGER_SCOPE_MAX 1024             /* bytes of a scope: root names joined by ',' */
#define LEDGER_CURSOR_MAX LEDGER_NAME_MAX /* bytes of a list cursor (opaque to clients) */

/* ---- Error codes (returned negated). ----
 * X(CODE, number, name, message): the name is the stable snake_case word logs, JSON and
 * libtally's tally_strerror() use; the message is the text the ledger's answers carry. */
#define LEDGER_ERRORS(X)                                                                     \
    X(EINVAL, 1, "invalid_argument", "invalid argument")                                     \
    X(ENAME, 2, "invalid_name", "invalid name")                                              \
    X(ENOTFOUND, 3, "not_found", "not found")                                                \
    X(EEXIST, 4, "already_exists", "already exists")                                         \
    X(ECONFLICT, 5, "conflict", "request id reused with different arguments")                \
    X(ERESOLVED, 6, "already_resolved", "reservation already resolved")                      \
    X(EDEPTH, 7, "too_deep", "account chain too deep")                                       \
    X(ECYCLE, 8, "cycle", "parent would make a cycle")                                       \
    X(EOVERFLOW, 9, "overflow", "counter overflow")                                          \
    X(EDECODE, 10, "decode_error", "malformed command or batch")                             \
    X(ETOOBIG, 11, "too_big", "too big")                                                     \
    X(ENOMEM, 12, "out_of_memory", "out of memory")                                          \
    X(EIO, 13, "io_error", "storage error")                                                  \
    X(ECORRUPT, 14, "corrupt", "corrupt data")                                               \
    X(ESTALE, 15, "stale", "index already applied")                                          \
    X(EFORBIDDEN, 16, "forbidden", "outside the credential's scope")

/* EINVAL: an argument is out of range or malformed. ENAME: an account or model name is
 * not valid. ENOTFOUND: no such account, key or reservation. EEXIST: the account or key
 * already exists. ECONFLICT: a request_id reused with different arguments. ERESOLVED:
 * the reservation is already settled or voided. EDEPTH: the chain would be deeper than
 * LEDGER_DEPTH_MAX. ECYCLE: the parent would make a cycle. EOVERFLOW: a counter would
 * overflow. EDECODE: a command or batch is not valid msgpack of the right shape.
 * ETOOBIG: a batch, field or snapshot exceeds its bound. ENOMEM: allocation failed.
 * EIO: LMDB or file system error, the node must stop. ECORRUPT: stored data or a
 * snapshot fails its checks, the node must stop. ESTALE: the batch's index is not after
 * the applied index. EFORBIDDEN: the command names an account, key or reservation outside
 * the scope it carries (or is an act only an unscoped admin may do); nothing changed. */
enum {
#define LEDGER_ERROR_ENUM(code, number, name, message) LEDGER_##code = number,
    LEDGER_ERRORS(LEDGER_ERROR_ENUM)
#undef LEDGER_ERROR_ENUM
    LEDGER_ECODE_MAX
};

/* The message of an error code (positive or negative), never NULL. */
const char *ledger_strerror(int code);

/* The snake_case name of an error code (positive or negative), never NULL. */
const char *ledger_error_name(int code);

/* ---- Commands. ---- */

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
 * ---- The command table. ----
 *
 * Every command, and the limit records commands carry, is described once below, as
 * lists of fields in wire order: X(kind, name, bound). From these lists come the C
 * structs (here), and pack, read, field counts, fingerprint, equality and the shape
 * check (wire/cmd.c). Kinds:
 *   u8, u32, u64, i64  an integer of that C type; bound unused (0)
 *   str                char name[bound + 1], NUL-terminated, at most bound bytes
 *   key                uint8_t name[bound], a fixed-size binary (hash or id)
 *   blob               uint16_t name_len; uint8_t name[bound], a bounded binary
 *   limits, mlimits    struct ledger_limits / struct ledger_model_limits
 *   payer_key, payer_account  key and str, of which only the one the command's by_account
 *                      selects counts in the fingerprint and in equality
 * Adding a field to a command is one line in its list; docs/design.md says what else.
 */

/*
 * Limits of an account. A limit applies only when its bit is in `set`. Bursts of 0
 * mean "one minute's worth" (equal to the rate). The period applies to the budget
 * and the soft budget; without LEDGER_LIM_PERIOD the budget is a lifetime budget.
 * period_kind is an enum ledger_period, blocked 0 or 1, expiry_policy an enum
 * ledger_expiry_policy; period_ms is for LEDGER_PERIOD_FIXED only.
 */
#define LEDGER_LIMITS_FIELDS(X)                                                              \
    X(u32, set, 0)                                                                           \
    X(u8, period_kind, 0)                                                                    \
    X(u8, blocked, 0)                                                                        \
    X(u8, expiry_policy, 0)                                                                  \
    X(i64, budget_micros, 0)                                                                 \
    X(i64, soft_budget_micros, 0)                                                            \
    X(i64, period_ms, 0)                                                                     \
    X(u64, rpm, 0)                                                                           \
    X(u64, rpm_burst, 0)                                                                     \
    X(u64, tpm, 0)                                                                           \
    X(u64, tpm_burst, 0)                                                                     \
    X(u64, max_parallel, 0)                                                                  \
    X(i64, expires_at_ms, 0)

/* Per-model limits on one account; bits LEDGER_LIM_BUDGET, _RPM, _TPM only. */
#define LEDGER_MODEL_LIMITS_FIELDS(X)                                                        \
    X(u32, set, 0)                                                                           \
    X(i64, budget_micros, 0)                                                                 \
    X(u64, rpm, 0)                                                                           \
    X(u64, rpm_burst, 0)                                                                     \
    X(u64, tpm, 0)                                                                           \
    X(u64, tpm_burst, 0)

/* The arguments of each command, by the name of its member in ledger_cmd.u. */

/* LEDGER_CMD_ACCOUNT_CREATE: parent "" makes a root. */
#define LEDGER_ARGS_create(X)                                                                \
    X(str, name, LEDGER_NAME_MAX)                                                            \
    X(str, parent, LEDGER_NAME_MAX)                                                          \
    X(limits, limits, 0)

/* LEDGER_CMD_ACCOUNT_UPDATE: limits.set names the limits to change, `clear` the
 * LEDGER_LIM_* bits to remove; set_parent 1 moves the account under `parent`. */
#define LEDGER_ARGS_update(X)                                                                \
    X(str, name, LEDGER_NAME_MAX)                                                            \
    X(limits, limits, 0)                                                                     \
    X(u32, clear, 0)                                                                         \
    X(u8, set_parent, 0)                                                                     \
    X(str, parent, LEDGER_NAME_MAX)

/* LEDGER_CMD_KEY_ADD and LEDGER_CMD_KEY_REVOKE (which ignores `account`). */
#define LEDGER_ARGS_key(X)                                                                   \
    X(str, account, LEDGER_NAME_MAX)                                                         \
    X(key, key_hash, LEDGER_KEY_HASH_SIZE)

/* LEDGER_CMD_MODEL_LIMIT_SET; limits.set == 0 removes them. */
#define LEDGER_ARGS_model_limit(X)                                                           \
    X(str, account, LEDGER_NAME_MAX)                                                         \
    X(str, model, LEDGER_MODEL_MAX)                                                          \
    X(mlimits, limits, 0)

/* LEDGER_CMD_RESERVE: by_account 0 names the payer by key_hash, 1 by account; model ""
 * for none; metadata is opaque to the ledger. */
#define LEDGER_ARGS_reserve(X)                                                               \
    X(u8, by_account, 0)                                                                     \
    X(payer_key, key_hash, LEDGER_KEY_HASH_SIZE)                                             \
    X(payer_account, account, LEDGER_NAME_MAX)                                               \
    X(i64, estimate_micros, 0)                                                               \
    X(u64, estimate_tokens, 0)                                                               \
    X(str, model, LEDGER_MODEL_MAX)                                                          \
    X(i64, ttl_ms, 0)                                                                        \
    X(blob, metadata, LEDGER_METADATA_MAX)

/* LEDGER_CMD_SETTLE. */
#define LEDGER_ARGS_settle(X)                                                                \
    X(i64, actual_micros, 0)                                                                 \
    X(u64, actual_tokens, 0)

/* LEDGER_CMD_VOID carries no arguments. */
#define LEDGER_ARGS_none(X)

/* LEDGER_CMD_EXTEND: expires_at becomes max(expires_at, now + ttl_ms). */
#define LEDGER_ARGS_extend(X) X(i64, ttl_ms, 0)

/* LEDGER_CMD_CONFIG_SET. */
#define LEDGER_ARGS_config(X) X(i64, retention_ms, 0)

/* LEDGER_CMD_TERM_START: the first entry a new leader commits in its term (raft/leader.c),
 * never sent by a client (rpc_role_allows refuses it). `commit_index` is what the leader
 * knew committed when it was elected (its commit index, or its ledger's applied index if
 * more): the entries after it and before this one were appended in earlier terms and may
 * never have been answered (docs/ledger.md, Unconfirmed reservations). */
#define LEDGER_ARGS_term_start(X) X(u64, commit_index, 0)

/* The fields every command carries after its actor, whatever its type. `scope` is the
 * root accounts the sender's credential may act for, joined by ',' (at most
 * LEDGER_SCOPE_ROOTS_MAX names); "" is unscoped. The server sets it from the connection,
 * like the actor; the ledger refuses with EFORBIDDEN what lies outside it. Like the actor
 * it says who sent a command, not what the command is, so it is not in the fingerprint. */
#define LEDGER_CMD_COMMON(X) X(str, scope, LEDGER_SCOPE_MAX)

/* Every command: X(TYPE, number, member of ledger_cmd.u holding its arguments). */
#define LEDGER_CMDS(X)                                                                       \
    X(ACCOUNT_CREATE, 1, create)                                                             \
    X(ACCOUNT_UPDATE, 2, update)                                                             \
    X(KEY_ADD, 3, key)                                                                       \
    X(KEY_REVOKE, 4, key)                                                                    \
    X(MODEL_LIMIT_SET, 5, model_limit)                                                       \
    X(RESERVE, 6, reserve)                                                                   \
    X(SETTLE, 7, settle)                                                                     \
    X(VOID, 8, none)                                                                         \
    X(EXTEND, 9, extend)                                                                     \
    X(CONFIG_SET, 10, config)                                                                \
    X(TERM_START, 11, term_start)

/* The members of ledger_cmd.u (each once; KEY_ADD and KEY_REVOKE share `key`; VOID's
 * `none` is empty). */
#define LEDGER_CMD_MEMBERS(X) X(create) X(update) X(key) X(model_limit) X(reserve) \
    X(settle) X(none) X(extend) X(config) X(term_start)

/* One struct member per field kind. */
#define LEDGER_FIELD_DECL(kind, name, bound) LEDGER_FIELD_DECL_##kind(name, bound)
#define LEDGER_FIELD_DECL_u8(name, bound) uint8_t name;
#define LEDGER_FIELD_DECL_u32(name, bound) uint32_t name;
#define LEDGER_FIELD_DECL_u64(name, bound) uint64_t name;
#define LEDGER_FIELD_DECL_i64(name, bound) int64_t name;
#define LEDGER_FIELD_DECL_str(name, bound) char name[(bound) + 1];
#define LEDGER_FIELD_DECL_key(name, bound) uint8_t name[bound];
#define LEDGER_FIELD_DECL_blob(name, bound)                                                  \
    uint16_t name##_len;                                                                     \
    uint8_t name[bound];
#define LEDGER_FIELD_DECL_limits(name, bound) struct ledger_limits name;
#define LEDGER_FIELD_DECL_mlimits(name, bound) struct ledger_model_limits name;
#define LEDGER_FIELD_DECL_payer_key LEDGER_FIELD_DECL_key
#define LEDGER_FIELD_DECL_payer_account LEDGER_FIELD_DECL_str

enum ledger_cmd_type {
#define LEDGER_CMD_ENUM(type, number, member) LEDGER_CMD_##type = number,
    LEDGER_CMDS(LEDGER_CMD_ENUM)
#undef LEDGER_CMD_ENUM
    LEDGER_CMD_TYPE_MAX
};

struct ledger_limits {
    LEDGER_LIMITS_FIELDS(LEDGER_FIELD_DECL)
};

struct ledger_model_limits {
    LEDGER_MODEL_LIMITS_FIELDS(LEDGER_FIELD_DECL)
};

/*
 * One command. Strings are NUL-terminated inside fixed arrays, so a command owns
 * all its bytes and can be copied by value. `request_id` is the idempotency key of
 * every command; for settle, void and extend it names the reservation, which is the
 * request_id of its reserve. `actor` names who caused the command (the connection's
 * principal); it is recorded in the journal. The fields of LEDGER_CMD_COMMON follow it.
 * `u` holds the arguments of `type`, as the table above lists them.
 */
struct ledger_cmd {
    uint8_t type; /* enum ledger_cmd_type */
    uint8_t request_id[LEDGER_REQUEST_ID_SIZE];
    char actor[LEDGER_ACTOR_MAX + 1];
    LEDGER_CMD_COMMON(LEDGER_FIELD_DECL)
    union {
#define LEDGER_CMD_MEMBER(member) struct { LEDGER_ARGS_##member(LEDGER_FIELD_DECL) } member;
        LEDGER_CMD_MEMBERS(LEDGER_CMD_MEMBER)
#undef LEDGER_CMD_MEMBER
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

/* ---- Records that queries return. ---- */

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

#endif /* TALLY_WIRE_TYPES_H */
