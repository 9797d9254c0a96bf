/*
 * fsm.h: the ledger as libraft's state machine.
 *
 * One Raft entry is one ledger batch and one LMDB write transaction. libraft's apply
 * callback gets no index, so the adapter applies each entry at
 * raft_last_applied(r) + 1; the ledger keeps the applied index in LMDB and skips an
 * entry it already holds (after a restart libraft replays from its last snapshot).
 *
 * Results are owned by the adapter: `*result` points at a struct node_apply_result
 * in a ring of NODE_RESULT_RING slots indexed by Raft index, so it stays valid while
 * the next NODE_RESULT_RING - 1 entries are applied. libraft 0.22 applies every entry
 * of a commit step before it fires the raft_apply callbacks, so a single slot would
 * hand one entry's callback another entry's answers. Followers ignore the results, so
 * nothing leaks on them.
 *
 * Snapshots use FSM version 3: `snapshot` freezes the ledger (an LMDB read
 * transaction), `snapshot_async` writes the frozen view into buffers of at most
 * NODE_SNAPSHOT_CHUNK bytes, and `snapshot_finalize` frees them. libraft 0.22.1 calls
 * snapshot_async on the loop thread right after snapshot (measured: same thread id), so
 * the export still stalls the loop for as long as it takes to copy the ledger; the read
 * transaction only keeps writers from waiting on it. `restore` replaces the ledger, unless the ledger
 * already holds that index or later (a restart of a node whose LMDB is ahead of its
 * last Raft snapshot), in which case the snapshot is not needed.
 *
 * A storage failure (LMDB I/O error, corruption) cannot be answered: the node may not
 * serve from a state it cannot trust, so the adapter calls `on_fatal`, which must not
 * return to libraft normally (the default prints the reason and aborts).
 */
#ifndef TALLY_RAFT_FSM_H
#define TALLY_RAFT_FSM_H

#include "ledger/ledger.h"

#include <raft.h>

#define NODE_SNAPSHOT_CHUNK ((size_t)64 << 20)
#define NODE_SNAPSHOT_MAX_CHUNKS 1024
#define NODE_RESULT_RING 1024 /* entries whose results stay readable */

/* What `*result` of an applied entry points at (owned by the adapter). */
struct node_apply_result {
    uint64_t index;     /* Raft index of the entry */
    int status;         /* 0, -LEDGER_ESTALE (already held) or -LEDGER_EDECODE */
    size_t n;           /* number of results */
    const struct ledger_result *results; /* one per command, in batch order */
};

struct node_fsm {
    struct raft_fsm fsm; /* give &fsm to raft_init / raft_fixture_grow */
    struct ledger *ledger;
    struct raft *raft;   /* set with node_fsm_attach() before the first apply */
    struct ledger_result *results; /* LEDGER_BATCH_MAX_CMDS, scratch of one apply */
    struct node_apply_result ring[NODE_RESULT_RING]; /* results malloc'd per slot */
    struct ledger_snapshot *snap; /* between snapshot and snapshot_finalize */
    struct raft_buffer *chunks;   /* buffers of the snapshot being taken */
    unsigned n_chunks;
    uint64_t applied;   /* entries applied (not skipped) */
    uint64_t skipped;   /* entries skipped as already held */
    uint64_t restores;  /* snapshots imported */
    uint64_t restores_skipped; /* snapshots not needed: the ledger was ahead */
    void (*on_fatal)(struct node_fsm *f, const char *reason);
    void *data;         /* the owner's, for on_fatal */
};

/*
 * Set up the adapter over `ledger` (borrowed; it must outlive the adapter). Returns 0
 * or -LEDGER_ENOMEM.
 */
int node_fsm_init(struct node_fsm *f, struct ledger *ledger);

/* Tell the adapter which raft instance drives it (for raft_last_applied()). */
void node_fsm_attach(struct node_fsm *f, struct raft *raft);

/* Free what the adapter owns (not the ledger). */
void node_fsm_close(struct node_fsm *f);

#endif /* TALLY_RAFT_FSM_H */
