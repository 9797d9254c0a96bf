/*
 * chaos.h: what the chaos runner's parts share (see docs/chaos.md).
 *
 * The runner (`tally-chaos`) drives three real tallyd processes, each in a network
 * namespace that chaos/run.sh created: it starts them, injects faults (nemeses) from its
 * main thread, runs concurrent libtally clients (the workload) in worker threads, and
 * writes every invocation, completion and fault to a history file. At the end it heals
 * everything, waits until the replicas converge, reads the final state of every node into
 * a second file and replays a sample of request ids. `tally-chaos-check` then judges the
 * history against the final state.
 *
 * One idea behind the shape: the runner records, the checker judges. The runner never
 * decides whether something is a violation (except that it could not get the cluster
 * back, which it records); every verdict is recomputed from the two files, so a run can
 * be re-checked after the checker changes.
 *
 * History lines (space-separated, one event per line; times are microseconds of
 * CLOCK_MONOTONIC since the runner started):
 *
 *   acct NAME PARENT|- BUDGET MAX_PARALLEL RPM RPM_BURST POLICY   (-1: no such limit)
 *   node ID IP
 *   I T WORKER OP ID LEAF A B C DEADLINE_MS PHASE                  an invocation
 *   C T_DONE T_INV WORKER OP ID LEAF A B C OUTCOME ERR FLAGS INDEX NODE ATTEMPTS X1 X2 RESUB PHASE
 *   N T EVENT ARGS...                                              a fault or a node event
 *
 * OP is reserve (A estimate, B ttl, C tokens), settle (A actual, B tokens), void, extend
 * (A ttl). OUTCOME is ok, denied, error, unavailable (never sent) or timeout (sent, no
 * definite answer: it may or may not have been applied). X1, X2: reserve: expires_at_ms,
 * deny_reason; settle/void: charged_micros, overrun_micros; extend: expires_at_ms, 0.
 * NODE is the node whose connection answered (0: unknown). PHASE is run or final.
 */
#ifndef TALLY_CHAOS_H
#define TALLY_CHAOS_H

#include "client/tally.h"

#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define CH_NODES 3
#define CH_PEER_PORT 7101
#define CH_CLIENT_PORT 7001
#define CH_HTTP_PORT 7201
#define CH_TOKEN_MAX 128
#define CH_WORKERS_MAX 32

/* ---- The workload's accounts (one table, shared with nothing else: the checker reads
 * them back from the history's `acct` lines). ---- */
struct ch_account {
    const char *name;
    const char *parent;     /* NULL: a root */
    int64_t budget_micros;  /* -1: none */
    int64_t max_parallel;   /* -1: none */
    int64_t rpm, rpm_burst; /* -1: none */
    int release;            /* expiry policy release (1) or charge (0) */
    /* Leaves only (est_max > 0): how the workload uses them. */
    int by_key; /* reserve with the key secret (1) or the account name (0) */
    int64_t est_min, est_max;
    int full_charge; /* settle charges most of the estimate (the budget runs out) */
    int abandon;     /* the workload sometimes never resolves a reservation (expiry) */
};

extern const struct ch_account ch_accounts[];
extern const int ch_n_accounts;

/* ---- The run (filled by the runner's main from the cluster file). ---- */
struct ch_node {
    int id;
    char ns[64];                    /* network namespace (made by run.sh) */
    char ip[32];                    /* its address on the private bridge */
    char veth[64];                  /* the root-namespace end of its veth pair */
    char dir[PATH_MAX];             /* data dir: a tmpfs mounted by run.sh */
    char clock_file[PATH_MAX + 32]; /* --debug-clock-offset-file */
    char log[PATH_MAX + 32];
    char endpoint[64]; /* "ip:7001" */
    pid_t pid;         /* 0: not running */
    bool paused;
    bool member;      /* in the Raft configuration as the runner last set it */
    int64_t tmpfs_mb; /* its data dir's tmpfs size as the runner last set it */
};

struct ch_run {
    char dir[PATH_MAX];
    char tallyd[PATH_MAX];
    char token_file[PATH_MAX];
    char peer_tls[PATH_MAX]; /* dir of scripts/certs.sh's files: mutual TLS between peers;
                              * "" runs them --peer-insecure */
    char admin_token[CH_TOKEN_MAX];
    char gateway_token[CH_TOKEN_MAX];
    char reader_token[CH_TOKEN_MAX];
    struct ch_node nodes[CH_NODES];
    char endpoints[256];
    int64_t duration_s;
    uint64_t seed;
    int workers;
    int ops_per_worker_s; /* pace of one worker */
    bool smoke;
    uint32_t nonce; /* first bytes of every request id and key secret of this run */
};

extern struct ch_run ch;

/* ---- The runner's main thread (runner.c). ---- */

/* Set by SIGINT/SIGTERM: every loop of the main thread stops at it. */
extern volatile sig_atomic_t runner_interrupted;
/* The main thread's generator, seeded from --seed: the run's nonce and every fault
 * choice are drawn from it in one order, so a seed replays the same faults. */
extern uint64_t runner_rng;

/* ---- The cluster's processes (cluster.c); main thread only. Nodes are named by their
 * index into ch.nodes (0..CH_NODES-1) or by pointer. ---- */

/* The admin client (status, membership, setup), opened by main before the first start. */
extern struct tally *cluster_ctl;

/* Fill `ch` from run.sh's cluster file (tokens, dirs, the nodes, their tmpfs sizes).
 * 0, or -1 with a message on stderr. */
int cluster_read_file(const char *path);
/* Bootstrap: start every node (without --join; every later start has it) and wait until
 * each answers STATUS. 0, or -1 (logged) if one does not come up. */
int cluster_start_all(void);
/* SIGTERM every running node and reap it (`stop` events). */
void cluster_stop_all(void);
/* Start node i and wait until it answers (an `up` event), up to 3 attempts; false if it
 * never came up. */
bool cluster_node_start(int i);
/* Stop node n with `sig` (SIGKILL after 8 s), continuing it first if paused, and reap
 * it (a `stop` event). No-op if it is not running. */
void cluster_node_stop(struct ch_node *n, int sig);
/* STATUS of node n into *st: 0, or -1 if it is down, paused or did not answer. */
int cluster_node_status(struct ch_node *n, struct tally_node_status *st, int timeout_ms);
/* Index of the node that leads and serves, waiting up to timeout_ms; -1 if none. */
int cluster_find_leader(int timeout_ms);
/* Reap nodes that ended on their own (`exit` events); how many. */
int cluster_reap_all(void);
/* Restart every member node that is not running. */
void cluster_revive_all(void);
/* Sleep `ms`, reaping nodes that die meanwhile and flushing the history; returns early
 * on runner_interrupted. */
void cluster_hold_ms(int64_t ms);
/* The leader's view of the entries each peer lacks, as " 1=0 3=812" ("" if unknown). */
void cluster_peer_lags(int leader, char *out, size_t size);
/* Remove node t from the Raft configuration and confirm the removal committed (within
 * 20 s); false if it could not be. */
bool cluster_member_remove(int t);
/* Stop node t, wipe its data dir, restart it with --join and add it back until it is a
 * voter in a committed configuration and caught up; false if that failed. */
bool cluster_member_restore(int t);

/* ---- Faults (nemesis.c); main thread only. ---- */

/* Enable "all" or a comma-separated subset of kill,pause,partition,disk,clock,member.
 * 0, or -1 on an unknown kind (named on stderr) or an empty list. */
int nemesis_parse(const char *list);
/* One history line `nemesis KIND` per enabled kind. */
void nemesis_hist_enabled(void);
/* Write offset_ms into node n's --debug-clock-offset-file (replaced atomically). */
void nemesis_clock_set(const struct ch_node *n, int64_t offset_ms);
/* Run a --faults script (see nemesis.c); -1 on a step it cannot read. */
int nemesis_script(const char *script);
/* Inject faults in shuffled rounds of every enabled kind until end_us (ch_now_us()) or
 * runner_interrupted, logging progress every 15 s. */
void nemesis_rounds(int64_t end_us);
/* Undo every fault: links, rules, pauses, clocks, disks, dead nodes, membership. */
void nemesis_heal_all(void);

/* ---- Utilities (common.c). ---- */

/* Run a shell command (at most 1 KiB) with system(); its status, logged if not 0. */
__attribute__((format(printf, 1, 2))) int ch_sh(const char *fmt, ...);

/* Microseconds of CLOCK_MONOTONIC since ch_clock_start(); the history's time base. */
void ch_clock_start(void);
int64_t ch_now_us(void);
int64_t ch_wall_ms(void);
void ch_sleep_ms(int64_t ms);

/* xorshift64*: a per-thread generator seeded from the run seed. */
uint64_t ch_rand(uint64_t *state);
/* Uniform in [lo, hi] (inclusive). */
int64_t ch_rand_range(uint64_t *state, int64_t lo, int64_t hi);
/* 1 with probability num/den. */
bool ch_chance(uint64_t *state, int num, int den);

/* The history file: one mutex, one line per call, flushed by ch_hist_flush(). */
int ch_hist_open(const char *path);
__attribute__((format(printf, 1, 2))) void ch_hist(const char *fmt, ...);
void ch_hist_flush(void);
void ch_hist_close(void);

/* The runner's own log (runner.log in the run dir, and stderr). */
int ch_log_open(const char *path);
__attribute__((format(printf, 1, 2))) void ch_log(const char *fmt, ...);

/* Node id (1..CH_NODES) whose client endpoint is `endpoint`, or 0. */
int ch_node_of_endpoint(const char *endpoint);

/* Lower-case hex of a request id (33 bytes). */
void ch_id_hex(const uint8_t id[TALLY_REQUEST_ID_SIZE], char out[33]);

/* The key secret of leaf account `acct` (index into ch_accounts) for this run. */
void ch_key_secret(int acct, char *out, size_t size);

/* Open a libtally client on `endpoints` with `token` (NULL on failure, logged). */
struct tally *ch_client(const char *endpoints, const char *token, int64_t deadline_ms);

/* The outcome word of the history for a finished call. */
const char *ch_outcome_word(const struct tally_result *res);

/* ---- Workload (workload.c). ---- */

/* Start `ch.workers` worker threads. 0 or -1. */
int wl_start(void);
/* Ask the workers to stop, join them, wait (bounded) for their clients' background
 * voids, close the clients. */
void wl_stop(void);
/* Operations finished so far (all workers) and grants among them. */
void wl_progress(uint64_t *ops, uint64_t *grants);

/* Every reserve id the workload ever sent, for the final reads. */
struct wl_reserve {
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    int leaf;
    int64_t estimate_micros, ttl_ms;
    uint64_t tokens;
    int definite; /* 0 unknown, 1 granted, 2 denied */
};
struct wl_resolution {
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    int leaf;
    int is_void;
    int64_t actual_micros;
    uint64_t tokens;
};
/* Borrowed views, valid after wl_stop() until exit. */
void wl_reserves(const struct wl_reserve **out, size_t *n);
void wl_resolutions(const struct wl_resolution **out, size_t *n);

/* Replay `n` sampled definite reserves and resolutions with the same ids and arguments
 * (phase "final" in the history). */
void wl_final_replays(size_t n_reserves, size_t n_resolutions);

/* ---- Raw protocol (raw.c): the state hash of one node, which libtally does not expose. */
/* 0 with *applied and the hash in hex (65 bytes), or -1. */
int raw_hash(const char *ip, int port, const char *token, int timeout_ms, uint64_t *applied,
             char hex[65]);

#endif /* TALLY_CHAOS_H */
