/*
 * node_internal.h: what the files of the node share, and nothing else (raft/node.h is
 * the contract).
 *
 * The one idea: a node is one struct on one loop thread, and each file owns one concern
 * of it:
 *   - node.c: configuration, open (raft_uv and libraft), start, close;
 *   - storage.c: the data directories, the ledger's boot marker and its rebuild after a
 *     machine crash, the storage gate on proposals;
 *   - propose.c: the proposal queue, group commit, batches in flight and their results;
 *   - leader.c: leadership (barrier, readiness, the per-iteration check), read barriers,
 *     membership changes and leadership transfer, queries;
 *   - clock.c: ledger time, the batch stamp, and the wall clock stepping away from it;
 *   - log.c: error names, logfmt lines, fatal exits, libraft error mapping.
 * struct node below is shared by all of them; the functions are the only calls that
 * cross files. Everything else is static in its file.
 */
#ifndef TALLY_RAFT_NODE_INTERNAL_H
#define TALLY_RAFT_NODE_INTERNAL_H

#include "raft/node.h"

#include "raft/clock.h"
#include "raft/fsm.h"
#include "raft/transport.h"

#include <raft.h>
#include <raft/uv.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* One node_propose() call waiting for its batch: commands [first, first + n). */
struct node_prop {
    node_propose_cb cb;
    void *data;
    size_t first;
    size_t n;
};

struct node_batch;  /* propose.c */
struct node_change; /* leader.c */

struct node {
    uv_loop_t *loop;
    uint64_t id;
    char address[NODE_ADDRESS_MAX];
    char raft_dir[NODE_DIR_MAX];
    char ledger_dir[NODE_DIR_MAX];
    char boot_id[64];       /* this boot's, for the ledger's marker ("" if unknown) */
    struct node_config cfg; /* copy; address points at n->address, dir is NULL */
    struct ledger *ledger;
    struct node_fsm fsm;             /* the ledger adapter */
    struct node_transport transport; /* mutual TLS or plaintext TCP (raft/transport.h) */
    struct raft_io io;
    struct raft raft;
    uv_check_t check;
    uv_idle_t idle;
    bool handles; /* check and idle initialized */
    bool started;
    bool closing;
    unsigned open_handles;

    struct ledger_cmd *queue; /* NODE_QUEUE_MAX */
    size_t n_queued;
    struct node_prop *props; /* NODE_QUEUE_MAX */
    size_t n_props;
    struct node_prop *spare; /* NODE_QUEUE_MAX: callers being answered, see queue_take */
    struct node_batch *inflight_head, *inflight_tail;
    unsigned n_inflight;
    struct node_clock clock;  /* ledger time: the stamps made and applied (raft/clock.h) */
    int64_t clock_log_due_ms; /* monotonic: when a stepped wall clock is logged again */
    int64_t clock_offset_ms;  /* added to the wall clock (fault injection only) */
    bool lose_answers;        /* answer every committed batch EAPPLY (fault injection only) */
    /* Storage gate (storage.c): the reserve in force, the last free-space reading and
     * when it was taken (loop time), the refusals and whether writes are refused now. */
    uint64_t reserve_bytes;
    uint64_t disk_free_bytes;
    uint64_t disk_checked_ms;
    uint64_t storage_refused;
    bool storage_refusing;

    uint64_t leader_term; /* term in which this node leads, 0 if it does not */
    bool barrier_pending;
    bool ready;
    struct node_change *change;

    uint64_t batches, commands, late_results;
    uint64_t batch_sizes[NODE_BATCH_SIZE_BUCKETS];
    node_close_cb close_cb;
    void *close_data;
    char errmsg[NODE_ERRMSG_SIZE];
};

/* ---- log.c ---- */

/* One logfmt line on stderr: time, `level`, the node's id, then the formatted text. */
void node__logf(const struct node *n, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Log `msg` and `reason` at level fatal and call cfg.on_fatal, which must not return. */
__attribute__((noreturn)) void node__fatal(const struct node *n, const char *msg,
                                           const char *reason);

/* Record a message in n->errmsg and return -code. */
int node__error(struct node *n, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Map a libraft error to a node error code (negative). */
int node__from_raft(int rv);

/* ---- storage.c ---- */

/* mkdir -p `path` (copied); 0 or -NODE_EIO with a message in `why`. */
int node__make_dirs(const char *path, char *why, size_t size);

/* Open the ledger in DIR/ledger and set up the adapter over it. */
int node__open_ledger(struct node *n, const char *dir, char *why, size_t size);

/* Close the ledger; after a successful sync, mark it clean. */
void node__close_ledger(struct node *n);

/* Whether max_ledger_bytes and storage_reserve_bytes of `c` are in range; if not, false
 * with a message in `why`. */
bool node__storage_config_ok(const struct node_config *c, char *why, size_t size);

/* Whether the ledger's map and the data dir's disk are both short of the reserve: false
 * means a proposal must be refused -NODE_ESTORAGE (counted, and logged when it starts). */
bool node__storage_allows(struct node *n);

/* ---- propose.c ---- */

/* Start the idle handle while commands wait (no-op before start and while closing). */
void node__kick(struct node *n);

/* The idle handle's callback: only keeps poll from blocking while commands wait. */
void node__idle_cb(uv_idle_t *h);

/* Fail every queued (never proposed) command with `status`. */
void node__queue_fail(struct node *n, int status);

/* Propose everything queued as one entry. */
void node__queue_flush(struct node *n);

/* Take batch `b` out of n->inflight. */
void node__inflight_unlink(struct node *n, struct node_batch *b);

/* Answer every caller of a finished batch, then free it. */
void node__batch_finish(struct node *n, struct node_batch *b, int status);

/* ---- clock.c ---- */

/* Learn ledger time from the last applied batch, compare it with the wall clock and log
 * a step (every iteration of the loop, on every node). */
void node__clock_observe(struct node *n);

/* The stamp of the batch the leader proposes now (raft/clock.h's rule). */
int64_t node__clock_stamp(struct node *n);

/* Wall minus ledger time now (0 before the node knows ledger time). */
int64_t node__clock_offset_ms(const struct node *n);

/* ---- leader.c ---- */

/* The check handle's callback, once per loop iteration after poll: track leadership,
 * promote an added server, flush the queue. */
void node__check_cb(uv_check_t *h);

/* Clear n->change and answer its caller with `status`; frees `c`. */
void node__change_finish(struct node_change *c, int status);

#endif
