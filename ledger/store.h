/*
 * store.h: how the ledger lays its state out in LMDB.
 *
 * Every record is a fixed struct built only of 8-byte fields (and byte arrays whose
 * sizes are multiples of 8), so a record has no padding whose contents could differ
 * between replicas and break the state hash. Keys that are scanned in order (ids,
 * times) are stored big-endian so LMDB's byte order is their numeric order.
 *
 * Databases (see docs/ledger.md, Storage):
 *   meta      "m" -> struct meta_rec
 *   names     name -> account id (8 bytes, native)
 *   accounts  id (BE64) -> struct acct_rec
 *   children  parent id (BE64) + child name -> child id; roots under parent 0
 *   keys      key hash (32) -> struct key_rec
 *   models    account id (BE64) + model name -> struct model_rec
 *   resv      request id (16) -> struct resv_rec (reservations, denied reserves)
 *   timers    due (BE64) + request id (16) + kind (1) -> "" (kind 0: a reservation,
 *             else the command type of an admin answer)
 *   answers   request id (16) + command type (1) -> struct answer_rec
 *   journal   seq (BE64) -> struct jrec [+ encoded admin command]
 */
#ifndef TALLY_LEDGER_STORE_H
#define TALLY_LEDGER_STORE_H

#include "ledger/ledger_internal.h"

#include <lmdb.h>
#include <pthread.h>

enum {
    DB_META,
    DB_NAMES,
    DB_ACCOUNTS,
    DB_CHILDREN,
    DB_KEYS,
    DB_MODELS,
    DB_RESV,
    DB_TIMERS,
    DB_ANSWERS,
    DB_JOURNAL,
    DB_COUNT
};

extern const char *const ledger__db_names[DB_COUNT];

/* 2: fingerprints are 128 bits of SHA-256 (format 1 kept a 64-bit FNV). 3: reservations
 * keep the index that created and the index that confirmed them, the meta record the
 * ambiguous ranges (ambiguous.c). A ledger or a snapshot of another format is refused,
 * with the formats in the message. */
#define STORE_FORMAT 3

/* A command's fingerprint in the idempotency store (ledger__cmd_fingerprint()). */
struct ledger__fp {
    uint8_t b[LEDGER_FINGERPRINT_SIZE];
};

/* The ambiguous ranges a ledger remembers (ambiguous.c); older ones are merged. */
#define AMBIGUOUS_RANGES_MAX 16

/* Log indexes after `after` and before `before` were committed by the leader whose
 * TERM_START is at `before` without knowing whether they were answered; `at_ms` is the
 * ledger time that entry was applied. */
struct ambiguous_range {
    uint64_t after;
    uint64_t before;
    int64_t at_ms;
};

struct meta_rec {
    uint64_t format;
    uint64_t applied_index;
    int64_t clock_ms;
    int64_t retention_ms;
    uint64_t next_account_id;
    uint64_t journal_seq; /* last journal sequence number used */
    uint8_t admin_head[32];
    uint64_t n_ranges;
    struct ambiguous_range ranges[AMBIGUOUS_RANGES_MAX]; /* oldest first */
};

struct acct_rec {
    uint64_t id;
    uint64_t parent_id; /* 0 for a root */
    int64_t created_ms;
    /* limits */
    uint64_t lim_set;
    uint64_t period_kind;
    uint64_t blocked;
    uint64_t expiry_policy;
    int64_t budget_micros;
    int64_t soft_budget_micros;
    int64_t period_ms;
    uint64_t rpm, rpm_burst, tpm, tpm_burst;
    uint64_t max_parallel;
    int64_t expires_at_ms;
    int64_t period_anchor_ms; /* when the period was last set */
    /* state */
    int64_t period_start_ms; /* period that `spent` counts */
    int64_t spent_micros;
    int64_t held_micros;
    int64_t lifetime_spent_micros;
    int64_t overrun_micros;
    uint64_t inflight;
    struct ledger_bucket rpm_bucket, tpm_bucket;
    int64_t soft_alerted_period; /* period whose soft crossing is journaled; -1: none */
    uint64_t n_keys;   /* active key hashes */
    uint64_t n_models; /* model records */
    uint64_t name_len;
    char name[LEDGER_NAME_MAX];
};

struct model_rec {
    uint64_t lim_set; /* LEDGER_LIM_BUDGET | _RPM | _TPM */
    int64_t budget_micros;
    uint64_t rpm, rpm_burst, tpm, tpm_burst;
    int64_t period_start_ms;
    int64_t spent_micros;
    int64_t held_micros;
    int64_t lifetime_spent_micros;
    uint64_t inflight;
    struct ledger_bucket rpm_bucket, tpm_bucket;
};

struct key_rec {
    uint64_t account_id;
    uint64_t revoked;
    int64_t created_ms;
};

/* resv_rec.state: enum ledger_resv_state, or this for a reserve that was not granted. */
#define RESV_REJECTED 100

struct resv_rec {
    uint64_t state;
    uint64_t chain_len;
    uint64_t chain[LEDGER_DEPTH_MAX]; /* leaf first */
    uint64_t model_mask;              /* bit i: chain[i] has a record for `model` */
    int64_t estimate_micros;
    uint64_t estimate_tokens;
    int64_t created_ms;
    int64_t expires_at_ms;
    int64_t resolved_ms;    /* settle, void, expiry, or denial time */
    int64_t charged_micros; /* total charged so far */
    int64_t expiry_charge_micros;
    int64_t expiry_period_start[LEDGER_DEPTH_MAX];
    /* the reserve's answer */
    struct ledger__fp reserve_fp;
    int64_t status; /* LEDGER_OK, LEDGER_DENIED or -LEDGER_E* */
    uint64_t flags;
    uint64_t deny_reason;
    uint64_t deny_account_id;
    int64_t remaining;
    int64_t retry_after_ms;
    /* the resolving settle or void (also a late one) */
    uint64_t resolve_type;
    struct ledger__fp resolve_fp;
    int64_t resolve_charged_micros;
    int64_t resolve_overrun_micros;
    uint64_t resolve_flags;
    uint64_t created_index;   /* Raft index of the reserve that granted it */
    uint64_t confirmed_index; /* of its last extend or replay; 0: none */
    uint64_t model_len;
    char model[LEDGER_MODEL_MAX];
    uint64_t metadata_len;
    uint8_t metadata[LEDGER_METADATA_MAX]; /* last: stored only up to metadata_len */
};

struct answer_rec {
    struct ledger__fp fp;
    int64_t status;
};

struct jrec {
    uint64_t seq;
    int64_t ts_ms;
    uint64_t kind;
    uint64_t cmd_type;
    uint64_t chain_len;
    uint64_t chain[LEDGER_DEPTH_MAX];
    int64_t amount_micros[LEDGER_DEPTH_MAX];
    int64_t period_start[LEDGER_DEPTH_MAX];
    uint64_t tokens;
    uint8_t request_id[LEDGER_REQUEST_ID_SIZE];
    uint64_t actor_len;
    char actor[LEDGER_ACTOR_MAX];
    uint64_t model_len;
    char model[LEDGER_MODEL_MAX];
    uint8_t admin_hash[32];
    uint64_t payload_len; /* bytes of the encoded admin command that follow */
};

#define TIMER_KEY_SIZE (8 + LEDGER_REQUEST_ID_SIZE + 1)
#define ANSWER_KEY_SIZE (LEDGER_REQUEST_ID_SIZE + 1)
#define MODEL_KEY_MAX (8 + LEDGER_MODEL_MAX)
#define CHILD_KEY_MAX (8 + LEDGER_NAME_MAX)

/* The per-batch cache of account records: written back once per batch. */
#define CACHE_SLOTS 8192
#define CACHE_FLUSH_AT (CACHE_SLOTS / 2)

struct cache_entry {
    uint64_t id; /* 0: empty */
    bool dirty;
    struct acct_rec rec;
};

struct ledger {
    MDB_env *env;
    MDB_dbi dbi[DB_COUNT];
    char errmsg[LEDGER_ERRMSG_SIZE];
    size_t map_bytes, max_map_bytes;
    int64_t retention_min_ms; /* ledger_options.retention_min_ms, resolved */
    struct meta_rec meta; /* as committed */

    /* Set while a batch is applied. */
    MDB_txn *txn;
    struct meta_rec work; /* meta of the batch being applied */
    int64_t now_ms;
    int fatal; /* first LMDB error of this attempt (MDB_MAP_FULL: grow and retry) */
    struct cache_entry *cache;
    uint32_t *cache_used;
    uint32_t cache_count;
    struct ledger_cmd *cmds; /* LEDGER_BATCH_MAX_CMDS decoded commands */

    /* Snapshots being exported hold read transactions; growing the map must wait. */
    pthread_mutex_t snap_mu;
    pthread_cond_t snap_cv;
    int snapshots_active;
};

/* ---- Shared helpers (ledger.c). ---- */

void ledger__be64(uint8_t out[8], uint64_t v);
uint64_t ledger__get_be64(const uint8_t in[8]);
int ledger__set_error(struct ledger *l, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The meta record of a ledger that has applied nothing (not stored until it does). */
void ledger__meta_new(struct meta_rec *m);

/* Reservation records are stored without the unused tail of their metadata. */
size_t ledger__resv_size(const struct resv_rec *r);
int ledger__resv_decode(const MDB_val *v, struct resv_rec *out); /* 0 or -1 (malformed) */

/* Account period start at now: the anchor without a period. */
int64_t ledger__acct_period_start(const struct acct_rec *a, int64_t now_ms);

/* Fill a query's account info from a stored record, as of `now_ms`. */
void ledger__account_info(struct ledger *l, MDB_txn *txn, const struct acct_rec *a, int64_t now_ms,
                        struct ledger_account_info *out);

/* Read an account record by id in `txn` (no cache). 0, MDB_NOTFOUND or an LMDB error. */
int ledger__get_account(struct ledger *l, MDB_txn *txn, uint64_t id, struct acct_rec *out);

/* Copy a stored (len, bytes) name into a NUL-terminated buffer. */
void ledger__copy_name(char *dst, const char *src, uint64_t len, size_t max);

/* ---- The invariants of one chain (check.c), asserted after every operation on it. ---- */

/* What an operation did to the reservation whose chain is asserted. */
enum ledger__chain_op {
    LEDGER__CHAIN_GRANT,   /* a reserve granted it: its holds were added */
    LEDGER__CHAIN_RELEASE, /* a settle, void or expiry resolved it: holds released, charged */
    LEDGER__CHAIN_LATE,    /* a late settle or void corrected it after expiry: no holds */
    LEDGER__CHAIN_EXTEND,  /* an extend moved its expiry: no account touched */
};

/*
 * One reservation and the records of its chain as an operation left them (all borrowed
 * from the operation), with each one's held and inflight from before the operation.
 */
struct ledger__chain {
    const struct resv_rec *rec;
    uint32_t n;                                      /* accounts given (0 for an extend) */
    const struct acct_rec *acct[LEDGER_DEPTH_MAX];   /* rec->chain[i]'s record */
    const struct model_rec *model[LEDGER_DEPTH_MAX]; /* NULL where no model limit matched */
    int64_t held_before[LEDGER_DEPTH_MAX], model_held_before[LEDGER_DEPTH_MAX];
    uint64_t inflight_before[LEDGER_DEPTH_MAX], model_inflight_before[LEDGER_DEPTH_MAX];
};

/* Record the held and inflight of ch->acct[0..n) and ch->model[0..n) before a change. */
void ledger__chain_mark(struct ledger__chain *ch);

/*
 * Assert what invariants I1-I8 (ledger.h) say of this chain after `op` at `now_ms`:
 * O(chain), no storage access. Aborts on a violation; returns otherwise.
 */
void ledger__chain_assert_invariants(const struct ledger__chain *ch, enum ledger__chain_op op,
                                     int64_t now_ms);

#endif /* TALLY_LEDGER_STORE_H */
