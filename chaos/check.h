/*
 * check.h: what the parts of tally-chaos-check share (see check.c and docs/chaos.md).
 *
 * The checker judges a chaos run directory from its two files alone: check_read.c reads
 * history.txt and final.txt into the tables below, check_safety.c and check_limits.c
 * check the rules (each violation goes to ck_violation()), check_stats.c computes the
 * availability figures, and check.c prints the summary and decides the exit status.
 *
 * One idea behind the shape: the files are read once into plain tables indexed by
 * number (accounts, operations, request ids, node events), and every rule is a pass over
 * those tables; a rule adds what it learns about an id to that id's entry for the rules
 * after it, so the order of the passes in main() matters.
 */
#ifndef TALLY_CHAOS_CHECK_H
#define TALLY_CHAOS_CHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CK_NODES 3
#define CK_ACCTS_MAX 32
#define CK_LEAF_CHAIN_MAX 8

/* ---- Small growable arrays. ---- */

#define CK_VEC(T)                                                                                  \
    struct {                                                                                       \
        T *v;                                                                                      \
        size_t n, cap;                                                                             \
    }
#define CK_VEC_PUSH(vec, item)                                                                     \
    do {                                                                                           \
        if ((vec).n == (vec).cap) {                                                                \
            (vec).cap = (vec).cap ? 2 * (vec).cap : 256;                                           \
            (vec).v = realloc((vec).v, (vec).cap * sizeof(*(vec).v));                              \
            if ((vec).v == NULL) {                                                                 \
                fprintf(stderr, "out of memory\n");                                                \
                exit(2);                                                                           \
            }                                                                                      \
        }                                                                                          \
        (vec).v[(vec).n++] = (item);                                                               \
    } while (0)

/* ---- The words of the history (check_read.c). ---- */

enum ck_op_kind { CK_OP_RESERVE, CK_OP_SETTLE, CK_OP_VOID, CK_OP_EXTEND, CK_OP_KINDS };
enum ck_outcome {
    CK_OC_OK,
    CK_OC_DENIED,
    CK_OC_ERROR,
    CK_OC_UNAVAILABLE,
    CK_OC_TIMEOUT,
    CK_OC_KINDS
};

#define CK_E_ENOTFOUND 3
#define CK_E_ECONFLICT 5
#define CK_E_ERESOLVED 6
#define CK_E_EPROTO 37
#define CK_F_REPLAYED 1u

struct ck_op {
    int64_t t_done, t_inv;
    int kind, outcome, err, node, leaf;
    unsigned flags;
    uint64_t index;
    int64_t a, b, x1, x2;
    uint32_t id; /* index into ck_ids */
    bool resub, final;
};

enum ck_rec_state {
    CK_R_MISSING = -3,
    CK_R_ERROR = -2,
    CK_R_NOTFOUND = -1,
    CK_R_OPEN,
    CK_R_SETTLED,
    CK_R_VOIDED,
    CK_R_EXPIRED,
    CK_R_LATE
};

struct ck_rec {
    int state;
    int leaf;
    int64_t est, created, expires, charged;
};

struct ck_idinfo {
    uint8_t id[16];
    char hex[33];
    int leaf;
    int64_t est, ttl;
    bool have_reserve;
    /* answers */
    int fresh_grants, fresh_resolutions;
    bool granted, denied, only_unsent; /* only_unsent: every attempt was never sent */
    bool any_attempt;
    int64_t grant_expires; /* of the fresh grant if there was one, else of a replay */
    bool have_fresh_expires;
    int64_t first_extend_us; /* invocation of the first extend of this id; 0: none */
    int deny_reason;
    uint64_t g_exact, g_ub, r_exact;
    int r_kind;
    bool settle_ok, void_ok;
    int64_t settle_actual, settle_charged;
    bool have_settle_charged;
    bool sent_settle, sent_void, settle_args_differ;
    bool bg_void; /* a reserve of this id ended unavailable/timeout: libtally voided it */
    bool counted_bg_void;
    int64_t first_settle_actual;
    /* final records, one per node */
    struct ck_rec rec[CK_NODES];
    /* journal */
    uint64_t j_last_seq;
    int j_resolutions, j_expires, j_corrections;
};

struct ck_nem {
    int64_t t;
    char event[32];
    char kind[32];
    int node;
    char a[64], b[64], c[64];
    int d;
};

struct ck_final {
    bool present;
    int converged;
    uint64_t applied;
    char hash[65];
    uint64_t h_applied[CK_NODES];
    char h_hash[CK_NODES][65];
    bool s_up[CK_NODES];
    int s_voters[CK_NODES];
    uint32_t s_members[CK_NODES];
    bool journal_error;
    long n_records, n_journal;
};

extern const char *const ck_op_names[CK_OP_KINDS];
extern const char *const ck_oc_names[CK_OC_KINDS];
extern const char *const ck_rec_names[5];
/* The nemeses, in the runner's order (kill, pause, partition, disk, clock, member). */
extern const char *const ck_fault_kinds[6];

/* ---- What the run directory holds (check_read.c fills it). ---- */

struct ck_account {
    char name[129];
    int parent; /* -1: root */
    int64_t budget, max_parallel, rpm, burst;
    bool release;
    /* final state per node, -1 when absent */
    int64_t spent[CK_NODES], held[CK_NODES], inflight[CK_NODES];
    bool have[CK_NODES];
    /* model */
    int64_t m_spent, m_held, m_inflight, j_spent;
    double closest; /* largest lower bound of (spent+held)/budget seen */
    int64_t closest_par;
};

extern struct ck_account ck_accts[CK_ACCTS_MAX];
extern int ck_n_accts;
/* CK_VEC's shape, named: an anonymous struct cannot be declared here and defined again. */
struct ck_op_vec {
    struct ck_op *v;
    size_t n, cap;
};
struct ck_idinfo_vec {
    struct ck_idinfo *v;
    size_t n, cap;
};
struct ck_nem_vec {
    struct ck_nem *v;
    size_t n, cap;
};
extern struct ck_op_vec ck_ops;     /* every completion (C line), in file order */
extern struct ck_idinfo_vec ck_ids; /* every request id seen, created by its first line */
extern struct ck_nem_vec ck_nems;   /* every node event and fault (N line), in order */
extern int ck_node_ids[CK_NODES];
extern char ck_enabled_kinds[8][16]; /* the nemeses the run used */
extern int ck_n_enabled;
extern uint64_t ck_seed;
extern int64_t ck_duration_s;
extern struct ck_final ck_fin;

/* Read RUN_DIR/history.txt at `path`: 0, or -1 if it cannot be read or names fewer than
 * CK_NODES nodes. Prints a note when lines could not be read. */
int ck_read_history(const char *path);
/* Read final.txt at `path` (after the history: it refers to its ids and accounts); 0,
 * or -1 if it is missing (ck_fin.present stays false). */
int ck_read_final(const char *path);

/* ---- The rules (check_safety.c, check_limits.c). ---- */

/* Count one violation of `kind` (a string literal) and print the first few. */
__attribute__((format(printf, 2, 3))) void ck_violation(const char *kind, const char *fmt, ...);

/* The record of id d on the first node that has one (they are compared elsewhere). */
const struct ck_rec *ck_record_of(const struct ck_idinfo *d);

/* Rules 1 and 2, and what the answers say about each id (first: the others need it). */
void ck_answers(void);
/* Rules 3 and 4: the records and the journal against the answers. */
void ck_records(long *n_acked_grants, long *n_acked_res, long *n_unknown_committed);
/* Rule 5: convergence, membership, and the accounts against the records. */
void ck_final_state(void);
/* Rule 6: budgets, max_parallel and rpm in Raft-index order (after ck_final_state). */
void ck_limits(long *n_placed, long *n_unplaced);
/* Rule 7: how many grants were made during partitions (each checked). */
long ck_minority_grants(void);
/* Rule 8: node exits, failed starts, unclean stops, failed heals. */
void ck_node_exits(int *n_exit74);
/* The cluster grants again after every fault is healed. */
void ck_recovery(void);

/* What the rules noted without calling it a violation (printed in the summary). */
extern long ck_n_replay_after_extend; /* replays that answered the extended expiry */
extern long ck_n_stuck_spare;         /* re-added nodes left non-voters (runner repaired them) */
extern long ck_n_bg_voided_grants;    /* granted ids voided by libtally after a resubmission */

/* ---- Statistics (check_stats.c). ---- */

/* qsort comparator of int64_t. */
int ck_i64_cmp(const void *a, const void *b);
/* Print the availability lines of the summary: `total` operations (final replays not
 * counted), `unavailable` of them unavailable or timed out, the last ending at last_t. */
void ck_print_availability(long total, long unavailable, int64_t last_t);

#endif /* TALLY_CHAOS_CHECK_H */
