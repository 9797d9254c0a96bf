/*
 * node.h: one replicated tally node on real I/O (libraft's raft_uv over TCP, the ledger
 * in LMDB), driven by a caller-supplied libuv loop.
 *
 * The one idea behind the shape: the leader turns every command that arrived during one
 * loop iteration into ONE Raft entry (group commit), stamped with ledger time
 * (raft/clock.h). All state lives on the loop thread; every function here must be called
 * on it, and every callback runs on it.
 *
 * Files: DIR/raft holds raft_uv's metadata, segments and snapshots; DIR/ledger holds the
 * ledger's LMDB, opened with LEDGER_OPEN_NOSYNC because the Raft log is the durable
 * record (a replica replays it after a crash). Both are created if missing.
 *
 * Serving: a new leader first commits a barrier (so it has applied everything committed
 * before its term) and only then reports itself ready and proposes commands. A follower
 * refuses proposals with -NODE_ENOTLEADER; node_leader() says whom to ask instead.
 *
 * Failure: a storage error the node cannot answer (LMDB I/O error or corruption, a
 * corrupt Raft segment, libraft giving up) is logged as one logfmt line on stderr and the
 * process exits with NODE_EXIT_FATAL. A node never keeps serving from a state it cannot
 * trust.
 *
 * libraft 0.22 sharp edges handled here: apply callbacks are fired after the whole
 * commit step, not after each entry, so results are read from the adapter's per-index
 * ring (raft/fsm.h); one buffer per raft_apply; raft_uv auto-recovery is off.
 */
#ifndef TALLY_RAFT_NODE_H
#define TALLY_RAFT_NODE_H

#include "ledger/ledger.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define NODE_MEMBERS_MAX 9                   /* voters and others in the configuration */
#define NODE_ADDRESS_MAX 64                  /* "127.0.0.1:9001" incl. NUL */
#define NODE_DIR_MAX 3072                    /* data directory path incl. NUL */
#define NODE_QUEUE_MAX LEDGER_BATCH_MAX_CMDS /* commands waiting for the next batch */
#define NODE_INFLIGHT_MAX 64                 /* batches proposed and not yet answered */
#define NODE_ERRMSG_SIZE 256
#define NODE_EXIT_FATAL 74 /* exit status after a fatal storage error */
/* The ledger's map maximum (node_config.max_ledger_bytes): bounds and default. */
#define NODE_LEDGER_BYTES_MIN ((uint64_t)4 << 20)
#define NODE_LEDGER_BYTES_MAX ((uint64_t)16 << 40)
#define NODE_LEDGER_BYTES_DEFAULT ((uint64_t)64 << 30)
/* The storage reserve (node_config.storage_reserve_bytes): at least this, at most half the
 * map's maximum; by default NODE_RESERVE_BYTES_DEFAULT or an eighth of the map's maximum,
 * whichever is smaller. */
#define NODE_RESERVE_BYTES_MIN ((uint64_t)1 << 20)
#define NODE_RESERVE_BYTES_DEFAULT ((uint64_t)256 << 20)

/* ---- Error codes (returned negated, and passed negated to callbacks). ----
 * X(CODE, number, message). */
#define NODE_ERRORS(X)                                                                             \
    X(EINVAL, 1, "invalid argument")   /* an argument is out of range */                           \
    X(ENOMEM, 2, "out of memory")      /* allocation failed */                                     \
    X(ENOTLEADER, 3, "not the leader") /* nothing was proposed, ask node_leader() */               \
    X(ELEADERSHIPLOST, 4, "leadership lost, outcome unknown") /* retry with the same id */         \
    X(EBUSY, 5, "busy")                   /* queue full, or a membership change in progress */     \
    X(ETOOBIG, 6, "batch too big")        /* the batch would exceed LEDGER_BATCH_MAX_BYTES */      \
    X(ESHUTDOWN, 7, "node shutting down") /* outcome unknown for proposed commands */              \
    X(EIO, 8, "I/O error")                /* file system or ledger error */                        \
    X(ERAFT, 9, "raft error")             /* libraft refused: see node_errmsg() */                 \
    X(EAPPLY, 10, "entry applied without its results") /* committed, results lost: a bug */        \
    X(ETIMEDOUT, 11, "timed out")                      /* leadership transfer did not complete */  \
    X(ESTORAGE, 12, "storage past its reserve") /* nothing proposed: map or disk nearly full */

enum {
#define NODE_ERROR_ENUM(code, number, message) NODE_##code = number,
    NODE_ERRORS(NODE_ERROR_ENUM)
#undef NODE_ERROR_ENUM
        NODE_ECODE_MAX
};

/* Human name of an error code (positive or negative), never NULL. */
const char *node_strerror(int code);

struct node_member {
    uint64_t id; /* > 0 */
    char address[NODE_ADDRESS_MAX];
};

/*
 * How to run a node. node_config_init() fills the defaults; the caller sets id, dir,
 * address and members. Strings are copied by node_open().
 */
struct node_config {
    uint64_t id;
    const char *dir;     /* data directory (created if missing) */
    const char *address; /* peer address to listen on, IPv4 "a.b.c.d:port" */
    struct node_member members[NODE_MEMBERS_MAX];
    unsigned n_members;           /* typically 3; read only when bootstrapping */
    unsigned election_timeout_ms; /* default 1000 */
    unsigned heartbeat_ms;        /* default 100 */
    unsigned snapshot_threshold;  /* entries between snapshots, default 8192 */
    unsigned snapshot_trailing;   /* entries kept after a snapshot, default 1024 */
    bool bootstrap;               /* bootstrap `members` if the Raft directory is pristine */
    /* Storage: the ledger's LMDB map may grow to max_ledger_bytes (NODE_LEDGER_BYTES_MIN ..
     * _MAX, default _DEFAULT). While the map's used bytes plus storage_reserve_bytes reach
     * that maximum, or the file system holding `dir` has less than storage_reserve_bytes
     * free, node_propose() refuses commands with -NODE_ESTORAGE (0: the default reserve,
     * see NODE_RESERVE_BYTES_*). */
    uint64_t max_ledger_bytes;
    uint64_t storage_reserve_bytes;
    /* Where the machine's boot id is read (NULL: /proc/sys/kernel/random/boot_id; borrowed
     * during node_open() only). It tells a ledger left open by a machine crash, which
     * must be rebuilt, from one left by a killed process. If it cannot be read, node_open()
     * fails, unless `allow_unknown_boot_id`: then every ledger not closed cleanly is
     * rebuilt from the Raft snapshot and log, also after a mere process crash. */
    const char *boot_id_path;
    bool allow_unknown_boot_id;
    /* Peer links: mutual TLS with this member's certificate and key and the cluster CA
     * (PEM files, read by node_open(); the certificate names the member with the SAN URI
     * tally://member/<id>, see raft/peer_tls.h), or plaintext if peer_insecure, where
     * anyone who reaches the peer port is believed. Exactly one of the two is required. */
    const char *peer_cert_file, *peer_key_file, *peer_ca_file;
    bool peer_insecure;
    /* Required. Called once the node has logged that it cannot go on (its state machine
     * or libraft failed in a way it cannot trust); must not return. What that means for
     * the process is the program's choice: tallyd passes node_exit_fatal. */
    void (*on_fatal)(void *data, const char *reason);
    void *fatal_data;
};

/* Fill `c` (caller's) with the defaults above; id, dir, address and members empty. */
void node_config_init(struct node_config *c);

/* An on_fatal for processes that run one node: flush stderr and _exit(NODE_EXIT_FATAL). */
__attribute__((noreturn)) void node_exit_fatal(void *data, const char *reason);

/*
 * A SIGBUS handler for processes that run a node: the ledger writes its LMDB map in
 * place, so a full disk shows up as SIGBUS when a page needs a block (ledger.h). This
 * logs that and exits NODE_EXIT_FATAL, the same clean stop as any other storage error
 * (async-signal-safe: write(2) and _exit only). The node does not install it: a program
 * that wants that policy does, before node_open() (tallyd does).
 */
void node_exit_on_storage_fault(int signum);

struct node;

/*
 * Answer to one node_propose() call. On status 0, `results` (borrowed, valid only during
 * the call) holds one answer per command in the order given and `index` is the Raft
 * index of the entry that carried them. Otherwise status is -NODE_ENOTLEADER (never
 * proposed), -NODE_ELEADERSHIPLOST or -NODE_ESHUTDOWN (maybe committed: retry with the
 * same request ids), or another -NODE_E* error; results is NULL and index 0.
 */
typedef void (*node_propose_cb)(struct node *node, void *data, int status, uint64_t index,
                                const struct ledger_result *results, size_t n_results);

/* Completion of a membership change or leadership transfer: 0 or -NODE_E*. */
typedef void (*node_change_cb)(struct node *node, void *data, int status);

/* Called once the node is closed and freed. */
typedef void (*node_close_cb)(void *data);

/*
 * Create the node described by `cfg` (borrowed) on `loop` (borrowed; it must outlive the
 * node): make the directories, open the ledger, set up raft_uv and libraft. Nothing runs
 * until node_start(). On success *out is owned by the caller until node_close() (which
 * must be called even if node_start() fails). On failure returns -NODE_E* with a message
 * in `errmsg` (NODE_ERRMSG_SIZE bytes, may be NULL) and nothing is left open;
 * -NODE_EINVAL means the configuration (also a peer certificate, key or CA that does not
 * load).
 */
int node_open(struct node **out, uv_loop_t *loop, const struct node_config *cfg, char *errmsg);

/*
 * Bootstrap if configured (a restart answers RAFT_CANTBOOTSTRAP, which is normal), load
 * the Raft log and snapshot, start the peer transport and the election timer. Returns 0
 * or -NODE_E* (see node_errmsg()); a corrupt log fails here instead of being repaired.
 */
int node_start(struct node *node);

/*
 * Queue `n` commands (1..NODE_QUEUE_MAX, copied) for the next batch. `cb` (required) is
 * called exactly once with `data`, after the batch is applied or fails; never from
 * inside node_propose(). Returns 0, or without calling cb: -NODE_ENOTLEADER (not the
 * leader), -NODE_EBUSY (the queue is full: back off), -NODE_ESTORAGE (this leader's map
 * or disk is past the storage reserve: nothing was proposed, retry once space returns),
 * -NODE_ESHUTDOWN, -NODE_EINVAL. A leader that has not finished its barrier yet queues
 * the commands.
 */
int node_propose(struct node *node, const struct ledger_cmd *cmds, size_t n, node_propose_cb cb,
                 void *data);

/*
 * The leader as this node knows it: *id (0 if unknown) and *address (NULL if unknown;
 * owned by libraft, valid until control returns to the loop: copy it).
 */
void node_leader(struct node *node, uint64_t *id, const char **address);

/* Whether this node is the leader and has committed its barrier for the current term. */
bool node_ready(struct node *node);

/*
 * Membership (leader only): node_add adds server `id` at `address` (copied) and promotes
 * it to voter once it caught up (a non-voter already at that address, left by an add
 * whose promotion failed, is only promoted); node_remove removes it; node_transfer hands leadership
 * to `id` (0: any up-to-date voter). `cb` gets 0 or -NODE_E*; -NODE_EBUSY returned if
 * another change or transfer is in progress. The calls return 0 or an error without
 * calling cb.
 */
int node_add(struct node *node, uint64_t id, const char *address, node_change_cb cb, void *data);
int node_remove(struct node *node, uint64_t id, node_change_cb cb, void *data);
int node_transfer(struct node *node, uint64_t id, node_change_cb cb, void *data);

/*
 * A linearizable read point (leader only, after its election barrier): commits a Raft
 * barrier and calls `cb` with 0 once everything committed before the call is applied
 * and this node was still leader in the same term, so a query of node_ledger() made in
 * `cb` sees every write acknowledged before node_read_barrier() was called. Otherwise
 * `cb` gets -NODE_ELEADERSHIPLOST or -NODE_ESHUTDOWN. Returns 0, or without calling cb
 * -NODE_ENOTLEADER (not leader or not ready), -NODE_ESHUTDOWN, -NODE_ENOMEM, -NODE_ERAFT.
 */
int node_read_barrier(struct node *node, node_change_cb cb, void *data);

/*
 * The current Raft configuration as this node knows it: up to `max` members into `out`
 * and their roles (RAFT_VOTER, RAFT_STANDBY, RAFT_SPARE) into `roles`. Returns the count.
 */
unsigned node_members(struct node *node, struct node_member *out, int *roles, unsigned max);

/* The node's ledger (borrowed, loop thread only): for queries and stale reads. */
struct ledger *node_ledger(struct node *node);

/* This node's id. */
uint64_t node_id(const struct node *node);

#define NODE_BATCH_SIZE_BUCKETS 16

struct node_stats {
    uint64_t term;
    uint64_t commit_index;
    uint64_t last_applied;     /* Raft's, including barriers and configuration entries */
    uint64_t applied;          /* entries the ledger applied */
    uint64_t skipped;          /* entries skipped as already held by LMDB */
    uint64_t restores;         /* snapshots imported */
    uint64_t restores_skipped; /* snapshots not needed: LMDB was ahead */
    uint64_t batches;          /* entries this node proposed */
    uint64_t commands;         /* commands in them */
    uint64_t late_results;     /* applied batches whose results were no longer held */
    /* Entries this node proposed by size: [i] counts batches of at most 2^i commands
     * (and more than 2^(i-1)); the last bucket takes everything larger. */
    uint64_t batch_sizes[NODE_BATCH_SIZE_BUCKETS];
    int state;               /* RAFT_FOLLOWER, RAFT_CANDIDATE, RAFT_LEADER, ... */
    uint64_t last_index;     /* last entry in this node's log */
    uint64_t peer_refused;   /* peer connections the TLS transport refused */
    int64_t clock_offset_ms; /* wall minus ledger time now, as this node keeps it (0: unknown) */
    uint64_t clock_steps;    /* times the wall clock went more than 1 s from ledger time */
};

/*
 * Leader only: the highest index server `id` is known to have stored (its match index).
 * Returns 0, -NODE_ENOTLEADER, or -NODE_EINVAL if `id` is not in the configuration.
 */
int node_peer_match(struct node *node, uint64_t id, uint64_t *match_index);

/*
 * Fault injection: add `offset_ms` to the wall clock this node reads (a clock step). Only
 * the wall reading moves, not the monotonic one: ledger time keeps the monotonic clock
 * and slews toward the shifted wall clock at 1 ms per second (raft/clock.h), and the
 * step shows in node_stats() (clock_offset_ms, clock_steps). Not for production use.
 */
void node_set_clock_offset(struct node *node, int64_t offset_ms);

/*
 * Fault injection: while `on`, every batch this node leads to commit is answered
 * -NODE_EAPPLY, as if its results had not been kept: the commands are applied, their
 * callers learn nothing of it. Not for production use.
 */
void node_set_lose_answers(struct node *node, bool on);

/* Counters, for tests and metrics. */
void node_stats(struct node *node, struct node_stats *out);

/* The node's storage against its limits (node_config.max_ledger_bytes and
 * storage_reserve_bytes). */
struct node_space {
    uint64_t map_used_bytes;  /* ledger_space(): the map's high-water mark */
    uint64_t map_max_bytes;   /* the most the map may grow to */
    uint64_t disk_free_bytes; /* available to tallyd on the file system of the data dir */
    uint64_t reserve_bytes;   /* the storage reserve in force */
    uint64_t refused;         /* node_propose() calls refused -NODE_ESTORAGE */
    bool refusing;            /* past the reserve now: as leader, this node refuses writes */
};

/* Fill `out` (caller's); reads the file system's free space afresh. */
void node_space(struct node *node, struct node_space *out);

/* Message of the last error on this node ("" if none). */
const char *node_errmsg(const struct node *node);

/*
 * Stop the node: queued commands fail with -NODE_ESHUTDOWN, libraft closes (proposed
 * batches fail with -NODE_ESHUTDOWN), then the transport, the handles, the ledger; the
 * node is freed and `cb` (may be NULL) called with `data`. Call once; not from inside a
 * node callback.
 */
void node_close(struct node *node, node_close_cb cb, void *data);

#endif /* TALLY_RAFT_NODE_H */
