/*
 * sim.h: tally's deterministic simulation (tally-sim), shared declarations.
 *
 * One seed drives everything: libraft's in-memory fixture (raft_fixture) steps the
 * cluster, each fixture server applies batches to its own real ledger (LMDB in its own
 * temp directory) through the real FSM adapter (raft/fsm.c), and a seeded generator
 * chooses the workload and the faults. Nothing reads a clock, rand() or the
 * environment (except the TALLY_SIM_* knobs in main.c), so `tally-sim --seed N`
 * replays a run exactly; the run's digest proves it.
 *
 * The shape: one struct sim per run owns the fixture, the servers and the client
 * side's memory (what it proposed, what was acknowledged). Checks run from the
 * fixture's step hook, so they also run inside raft_fixture_elect/depose; a violation
 * is recorded once (the first) and stops the run. Files: cluster.c (set-up, stepping,
 * checks), workload.c (accounts and random commands, proposals, acks), faults.c
 * (fault injection and healing), run.c (one random seed, phase by phase),
 * scenarios.c (named regression runs), clock.c (the wall clock step scenario), main.c
 * (command line, harness, crash report).
 */
#ifndef TALLY_SIM_H
#define TALLY_SIM_H

#include "ledger/ledger.h"
#include "raft/clock.h"
#include "raft/fsm.h"

#include <raft.h>
#include <raft/fixture.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIM_MAX_SERVERS 5
#define SIM_BATCH_MAX 16 /* commands in one proposed batch */
#define SIM_N_KEYS 4     /* leaf accounts, each with one virtual key */
#define SIM_N_TEAMS 2
#define SIM_MSG_SIZE 512
#define SIM_MODEL "gpt-sim"

/* ---- Seeded generator (xoshiro256**, seeded with splitmix64). ---- */
struct sim_rng {
    uint64_t s[4];
};

void sim_rng_seed(struct sim_rng *r, uint64_t seed);
uint64_t sim_rng_next(struct sim_rng *r);
/* Uniform in [0, n); n > 0. */
uint64_t sim_rng_below(struct sim_rng *r, uint64_t n);
/* Uniform in [lo, hi]; lo <= hi. */
int64_t sim_rng_range(struct sim_rng *r, int64_t lo, int64_t hi);
/* True with probability num/den. */
bool sim_rng_chance(struct sim_rng *r, uint64_t num, uint64_t den);

/* ---- Faults, counted by kind for the summary. ---- */
enum sim_fault {
    SIM_F_PARTITION,    /* disconnect a pair (both ways or one way) */
    SIM_F_RECONNECT,    /* reconnect a pair */
    SIM_F_KILL,         /* raft_fixture_kill */
    SIM_F_REVIVE,       /* raft_fixture_revive */
    SIM_F_NET_LATENCY,  /* raft_fixture_set_network_latency */
    SIM_F_DISK_LATENCY, /* raft_fixture_set_disk_latency */
    SIM_F_IO_FAULT,     /* raft_fixture_io_fault: the leader's append fails as it completes
                         * (any I/O of any server when hostile) */
    SIM_F_DEPOSE,       /* raft_fixture_depose */
    SIM_F_ELECT,        /* raft_fixture_elect */
    SIM_F_TIMEOUT,      /* raft_fixture_set_randomized_election_timeout */
    SIM_F_CLOCK_STEP,   /* a server's wall clock steps (+-40 days, seconds, or back) */
    SIM_F_MAX
};

const char *sim_fault_name(int kind);

/* Totals over one run or many. */
struct sim_stats {
    uint64_t seeds;
    uint64_t steps; /* raft_fixture_step calls */
    uint64_t faults[SIM_F_MAX];
    uint64_t proposed; /* batches given to raft_apply (accepted) */
    uint64_t rejected; /* raft_apply returned an error */
    uint64_t acked;    /* apply callbacks with status 0 */
    uint64_t failed;   /* apply callbacks with another status */
    uint64_t acked_cmds;
    uint64_t grants;          /* reserves answered OK in acked batches */
    uint64_t denials;         /* reserves answered DENIED in acked batches */
    uint64_t replays;         /* answers flagged REPLAYED */
    uint64_t restores;        /* snapshots installed by the adapter */
    uint64_t hash_checks;     /* state hashes compared against another replica's */
    uint64_t grants_verified; /* acknowledged grants found on every replica at the end */
    uint64_t misattributed;   /* acks whose results belonged to another entry */
    uint64_t gave_up;         /* servers stopped for good because libraft gave up */
    uint64_t clock_steps;     /* wall clock steps the servers' clocks saw (raft/clock.h) */
    uint64_t violations;
};

void sim_stats_add(struct sim_stats *into, const struct sim_stats *from);

/* ---- Per-seed parameters, all derived from the seed. ---- */
struct sim_config {
    uint64_t seed;
    unsigned n_servers; /* 3, sometimes 5 */
    unsigned steps;     /* fault-phase steps */
    unsigned election_timeout_ms;
    bool pre_vote;
    unsigned snapshot_threshold; /* raft_set_snapshot_threshold */
    unsigned snapshot_trailing;
    unsigned propose_per_mille; /* chance per step of proposing a batch */
    unsigned fault_per_mille;   /* chance per step of a fault */
    int64_t base_ms;            /* ledger time of fixture time 0 */
    int64_t retention_ms;       /* answer retention (0: the ledger's default) */
    bool verbose;               /* print faults and leader changes */
    bool trace_raft;            /* also print libraft's own trace */
    bool allow_misattributed_acks;
    bool hostile;   /* also what libraft 0.22.1 does not survive (see sim_options) */
    bool snapshots; /* small snapshot thresholds */
};

void sim_config_from_seed(struct sim_config *c, uint64_t seed);

/* ---- One server: a ledger, its adapter, its clocks. ---- */
struct sim_server {
    struct sim *sim;
    unsigned index;
    struct raft_tracer tracer; /* replaces the fixture's, which prints everything */
    char dir[64];
    struct ledger *ledger;
    struct node_fsm fsm;
    bool fsm_ready;
    /* Ledger time as tallyd's node keeps it (raft/clock.h): its monotonic clock is the
     * fixture's time, its wall clock base_ms + fixture time + wall_offset_ms. */
    struct node_clock clock;
    int64_t wall_offset_ms; /* a wall clock step (clock faults, the clock scenario) */
    uint64_t checked_index; /* ledger index at the last invariant check */
};

/* A reservation the cluster acknowledged as granted. */
struct sim_grant {
    uint8_t request_id[LEDGER_REQUEST_ID_SIZE];
    char account[LEDGER_NAME_MAX + 1]; /* the leaf */
    int64_t estimate_micros;
    uint64_t estimate_tokens;
    int64_t created_ms; /* the batch's ledger time */
};

/* A batch given to raft_apply, until its callback fires. */
struct sim_proposal {
    struct raft_apply req;
    struct sim *sim;
    struct sim_proposal *next; /* list of outstanding proposals */
    unsigned server;
    int tag; /* scenarios: which batch this is */
    size_t n;
    struct ledger_cmd cmds[SIM_BATCH_MAX];
};

/* The client's memory of the commands it sent. */
struct sim_workload {
    uint64_t next_id;
    struct ledger_cmd *reserves; /* every reserve proposed, for replays and settles */
    size_t n_reserves, cap_reserves;
    struct sim_grant *grants; /* acknowledged grants */
    size_t n_grants, cap_grants;
    bool setup_done;
};

struct sim_hash_seen {
    bool set;
    uint8_t hash[32];
    unsigned server;
};

struct sim {
    struct raft_fixture fx; /* first: the step hook finds the sim from it */
    struct sim_config cfg;
    struct sim_rng rng;
    struct sim_stats stats;
    struct sim_server srv[SIM_MAX_SERVERS];
    unsigned n;
    bool fx_ready;
    bool closing; /* apply callbacks during close are not acks */
    struct sim_workload wl;
    struct sim_proposal *outstanding;
    struct sim_hash_seen *hashes; /* state hash first seen at each ledger index */
    size_t n_hashes;
    uint64_t digest;      /* FNV-1a over the run's observable history */
    unsigned last_leader; /* for the trace */
    uint64_t wait_index;  /* liveness: the raft index every server must apply */
    bool cut[SIM_MAX_SERVERS][SIM_MAX_SERVERS]; /* cut[i][j]: i's messages to j fail */
    bool down[SIM_MAX_SERVERS]; /* stopped for good (a fail-stop node): not in the final checks */
    unsigned disk_ms[SIM_MAX_SERVERS]; /* current disk latency (to restore it) */
    /* Figure 8: a request id that must never appear on any ledger. */
    bool forbid_set;
    uint8_t forbid_id[LEDGER_REQUEST_ID_SIZE];
    int last_ack_tag;                                 /* tag of the last acknowledged proposal */
    struct ledger_result last_results[SIM_BATCH_MAX]; /* of the last acknowledged batch */
    int last_fail_tag;
    uint64_t acked_tags, failed_tags; /* bit t: a proposal tagged t (< 64) acked/failed */
    bool failed;
    char failure[SIM_MSG_SIZE];
};

/* Fail the scenario with a message unless `cond` (scenarios.c, clock.c). */
#define SIM_EXPECT(s, cond, ...)                                                                   \
    do {                                                                                           \
        if (!(s)->failed && !(cond)) {                                                             \
            sim_fail((s), __VA_ARGS__);                                                            \
        }                                                                                          \
    } while (0)

/* ---- cluster.c ---- */

/* Set up servers, fixture, bootstrap and start; step until a leader. 0 or -1. */
int sim_open(struct sim *s, const struct sim_config *cfg);
/* Close the fixture, adapters and ledgers, remove the directories. */
void sim_close(struct sim *s);
/* Record the first violation (printf-style) and mark the run failed. */
void sim_fail(struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One raft_fixture_step; checks run in the step hook. */
void sim_step(struct sim *s);
/* Step until `ms` of fixture time passed (or the run failed). */
void sim_step_ms(struct sim *s, unsigned ms);
/* Step until `done(s)` or `max_ms` of fixture time elapse; returns done(s). */
bool sim_step_until(struct sim *s, bool (*done)(struct sim *s), unsigned max_ms);
/* Step until every server applied everything server `leader` holds now (its last
 * index), at most max_ms of fixture time. */
bool sim_wait_all_applied(struct sim *s, unsigned leader, unsigned max_ms);
/* Index of the server to propose to (alive, leader, highest term), or s->n. */
unsigned sim_leader(struct sim *s);
/* Index of the fixture's stable leader or s->n. */
unsigned sim_stable_leader(struct sim *s);
/* Check every server now (invariants, hashes against other replicas). */
void sim_check_all(struct sim *s);
/* Final agreement: every server at the same index with the same hash. */
void sim_check_converged(struct sim *s);
/* Randomized election timeouts a tick apart, in a random order. */
void sim_distinct_timeouts(struct sim *s);
/* Mix a value into the run's digest. */
void sim_digest(struct sim *s, uint64_t v);
void sim_trace(struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- workload.c ---- */

/* Propose the account forest and wait until it is applied. 0 or -1. */
int sim_setup_accounts(struct sim *s);
/* Build a random batch of 1..SIM_BATCH_MAX commands into p->cmds. */
void sim_random_batch(struct sim *s, struct sim_proposal *p);
/* Propose `p` (cmds filled, ownership passes) to server `i`. 0 or a RAFT_* error. */
int sim_propose(struct sim *s, unsigned i, struct sim_proposal *p);
/* A new proposal (zeroed). */
struct sim_proposal *sim_proposal_new(struct sim *s, int tag);
/* Propose a random batch to the current leader, if any. */
void sim_propose_random(struct sim *s);
/* Propose a random batch to server i. 0 or a RAFT_* error. */
int sim_propose_random_to(struct sim *s, unsigned i);
/* A reserve by key with a fresh request id. */
struct ledger_cmd sim_cmd_reserve(struct sim *s, unsigned key, int64_t estimate_micros,
                                  int64_t ttl_ms);
/* An account_create command with a fresh request id. */
struct ledger_cmd sim_cmd_create(struct sim *s, const char *name, const char *parent,
                                 const struct ledger_limits *lim);
/* The wall clock server i reads now (ms). */
int64_t sim_wall_ms(struct sim *s, unsigned i);
/* Propose on the leader until one batch is acknowledged (liveness). 0 or -1. */
int sim_propose_until_acked(struct sim *s, unsigned max_ms);
/* Every acknowledged grant is present on every server. */
void sim_check_grants(struct sim *s);
void sim_workload_free(struct sim *s);

/* ---- faults.c ---- */

/* Maybe inject one random fault. */
void sim_random_fault(struct sim *s);
/* Undo every fault: reconnect, revive, default network latency, no I/O faults. */
void sim_heal(struct sim *s);
/* Force an election won by server i where the fixture allows it (all followers, no
 * leader). Returns true if server i is the stable leader afterwards. */
bool sim_elect(struct sim *s, unsigned i);
/* Depose the stable leader if there is one. Returns true if it was deposed. */
bool sim_depose(struct sim *s);
/* Disconnect or reconnect i and j in both directions. */
void sim_disconnect(struct sim *s, unsigned i, unsigned j);
void sim_reconnect(struct sim *s, unsigned i, unsigned j);
bool sim_killed(struct sim *s, unsigned i);
void sim_kill(struct sim *s, unsigned i);
void sim_revive(struct sim *s, unsigned i);

/* ---- run.c (one seed) and scenarios.c ---- */

/* What the command line chose. */
struct sim_options {
    int verbose;                   /* 1: faults and leaders, 2: also libraft's trace */
    unsigned steps;                /* fault-phase steps of every seed (0: the seed's own) */
    bool allow_misattributed_acks; /* count, do not fail, acks carrying another entry's
                                    * results (a known raft/fsm.c bug) */
    /* Also the faults libraft 0.22.1 (or its fixture) is known not to survive: any I/O
     * failure of any server, small snapshot thresholds, disks that get faster (writes
     * then complete out of order). Off by default: they crash or wedge libraft itself
     * (see main.c). With tally's patches a failed write makes a server give up instead
     * of crashing, but faults armed ahead can stop a majority for good. */
    bool hostile;
};

/* Apply the options to a seed's configuration. */
void sim_config_apply(struct sim_config *c, const struct sim_options *o);
/* Run one random seed; returns true if it passed. Adds to *total. */
bool sim_run_seed(uint64_t seed, const struct sim_options *o, struct sim_stats *total,
                  uint64_t *digest);
bool sim_scenario_figure8(const struct sim_options *o, struct sim_stats *total);
bool sim_scenario_leader_disk_fault(const struct sim_options *o, struct sim_stats *total);
bool sim_scenario_snapshot_install(const struct sim_options *o, struct sim_stats *total);
/* clock.c: seeds first .. first + n - 1 of the +-40-day wall clock step scenario. */
bool sim_scenario_clock_steps(const struct sim_options *o, struct sim_stats *total, uint64_t first,
                              uint64_t n);

#endif /* TALLY_SIM_H */
