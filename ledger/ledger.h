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

#include "wire/wire.h"

#include <stddef.h>
#include <stdint.h>

/* ---- Life cycle. ---- */
struct ledger;

/* Bits of ledger_options.flags. */
enum {
    /* Do not fsync on commit. The Raft log is then the durable record and a replica
     * replays from it after a crash. LMDB stays consistent through a process crash (the
     * written map is in the page cache), not through a machine crash: the OS may write
     * the map's pages in any order. raft/storage.c therefore rebuilds a ledger that was
     * open when the machine went down (its boot marker). */
    LEDGER_OPEN_NOSYNC = 1u << 0,
};

/*
 * The ledger writes its LMDB map in place (MDB_WRITEMAP). A write that needs a new disk
 * block when there is none (a full disk) or that fails in the kernel is therefore not
 * an error code but a SIGBUS in the writing thread; a process that opens a ledger must
 * treat SIGBUS as a fatal storage error (node_exit_on_storage_fault in raft/storage.c
 * traps it and exits 74).
 */

struct ledger_options {
    uint32_t flags;
    size_t initial_map_bytes; /* 0: 1 GiB, or max_map_bytes if smaller; doubles when full */
    /* 0: 64 GiB. A ledger reopened with a maximum below its map's high-water mark
     * (ledger_space()) gets that mark as its maximum: LMDB maps no less. */
    size_t max_map_bytes;
    /* The least retention config_set accepts (below: EINVAL, nothing changes). 0:
     * LEDGER_RETENTION_MIN_MS (1 h), what tallyd uses; a shorter retention lets a retried
     * request id be granted again once its answer is forgotten. Only the simulation
     * lowers it, to reach the end of retention in fixture time. Replicas must agree. */
    int64_t retention_min_ms;
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

/* How much of the ledger's LMDB map is in use. */
struct ledger_space {
    /* Pages up to the highest one LMDB has used, in bytes: a high-water mark. Pages freed
     * inside it are reused before the map grows, so it never shrinks while the file is
     * open; a compacted copy (mdb_copy -c) starts lower. */
    uint64_t map_used_bytes;
    uint64_t map_max_bytes; /* the most the map may grow to (ledger_options.max_map_bytes) */
};

/* Fill `out` (caller's) with the map's figures. Cheap (no I/O): LMDB's meta page only. */
void ledger_space(const struct ledger *l, struct ledger_space *out);

/*
 * SHA-256 over every stored record in a canonical order, the meta record without its
 * applied index and clock: replicas that applied the same batches have equal hashes, and
 * a batch that stored nothing (every command refused) leaves the hash unchanged. Returns
 * 0 or -LEDGER_EIO.
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
 * I10 At most 16 ambiguous ranges (docs/ledger.md, Unconfirmed reservations), each
 *     non-empty, ordered by their TERM_START's index, none after the applied index; a
 *     reservation's creating and confirming indexes are not after the applied index and
 *     it is not confirmed before it was created.
 */

/*
 * Check the invariants above (all but I5 and I8's transitions) over the whole stored
 * state. Returns 0, or -LEDGER_ECORRUPT with the first violation, prefixed by its
 * number ("I3: ..."), in ledger_errmsg(). O(state): for tests and the simulation; a
 * node never calls it.
 */
int ledger_check_invariants(struct ledger *l);

/* ---- Queries (read the last applied state; never change it). ---- */

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
int ledger_journal_list(struct ledger *l, const char *account, int64_t since_ms, int64_t until_ms,
                        ledger_journal_cb cb, void *ctx);

/*
 * ---- Scoped and paged reads. ----
 *
 * The reads above, for a credential with a scope (`scope` as in ledger_cmd.scope; NULL
 * or "" is unscoped) and one page at a time. What is outside the scope answers as the
 * ledger answers a command: an account name that is not an existing account under the
 * scope's roots is -LEDGER_EFORBIDDEN (whether or not it exists elsewhere), so is a
 * reservation or key whose account's root is outside it; lists without a filter list
 * only what lies under the roots (a journal record that names no account, such as a
 * retention change, is not listed to a scoped reader).
 *
 * A list resumes after `after` (after_len bytes; 0: from the start), the cursor the
 * previous page ended with, and sets `last` to the cursor of the last item its callback
 * took (returned 0 for). A cursor is the key the list is ordered by (a child's name, a
 * reservation's timer key, a journal record's number and chain position), opaque to
 * clients: resuming costs a seek, not a walk over the items before it. A cursor of the
 * wrong shape for its list is -LEDGER_EINVAL.
 */
struct ledger_page {
    const char *scope;
    uint16_t after_len;
    uint8_t after[LEDGER_CURSOR_MAX];
    uint16_t last_len; /* set by the list */
    uint8_t last[LEDGER_CURSOR_MAX];
};

int ledger_account_get_scoped(struct ledger *l, const char *scope, const char *name,
                              struct ledger_account_info *out);
int ledger_key_get_scoped(struct ledger *l, const char *scope,
                          const uint8_t key_hash[LEDGER_KEY_HASH_SIZE],
                          char account[LEDGER_NAME_MAX + 1], int *revoked);
int ledger_reservation_get_scoped(struct ledger *l, const char *scope,
                                  const uint8_t request_id[LEDGER_REQUEST_ID_SIZE],
                                  struct ledger_reservation_info *out);
int ledger_account_list_page(struct ledger *l, const char *parent, struct ledger_page *page,
                             ledger_account_cb cb, void *ctx);
int ledger_reservation_list_page(struct ledger *l, const char *account, struct ledger_page *page,
                                 ledger_reservation_cb cb, void *ctx);
int ledger_journal_list_page(struct ledger *l, const char *account, int64_t since_ms,
                             int64_t until_ms, struct ledger_page *page, ledger_journal_cb cb,
                             void *ctx);

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

/*
 * ledger_state_hash() of the frozen state, into out, and release the frozen view (the
 * map may grow again; ledger_snapshot_end() still frees `s`). Any thread: a server
 * hashes a large ledger without holding its loop. Returns 0, -LEDGER_EINVAL (exported or
 * hashed already) or -LEDGER_EIO (no message: the ledger's errmsg belongs to its thread).
 */
int ledger_snapshot_hash(struct ledger_snapshot *s, uint8_t out[32]);

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
