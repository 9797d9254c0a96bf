/*
 * check.c: tally-chaos-check, the history checker of a chaos run.
 *
 *   tally-chaos-check RUN_DIR      reads RUN_DIR/history.txt and RUN_DIR/final.txt
 *
 * Prints a summary (operations, faults by kind, violations, availability) and exits 0
 * when there is no violation, 1 otherwise, 2 if the files cannot be read.
 *
 * What is checked (docs/chaos.md explains each rule and why it is sound):
 *
 *  1. answers: no ECONFLICT or EPROTO; ERESOLVED only after a different resolution of the
 *     same id was sent; ENOTFOUND never for an acknowledged grant.
 *  2. idempotency: every definite answer for one reserve id is the same (granted with the
 *     same expiry, or denied for the same reason: a denied id stays denied on replay);
 *     every settle answer of one id charges the same; at most one fresh (not replayed)
 *     grant and one fresh resolution per id.
 *  3. nothing acknowledged is lost: every acknowledged grant has its reservation on every
 *     node with the same estimate and grant time; every acknowledged settle/void is the
 *     reservation's resolution with that amount; a denied or never-sent reserve has none.
 *  4. the journal resolves each reservation at most once (one charge, release or expiry,
 *     at most one late correction after an expiry) and agrees with the record.
 *  5. the final state: all nodes converged (same applied index and state hash, three
 *     voters), agree on every reservation, and every account's spent/held/inflight equals
 *     the model's (sums over the reservations' records) and the journal's charges.
 *  6. no overspend: replaying the writes in Raft-index order, a lower bound of
 *     spent + held never exceeds an account's budget and a lower bound of inflight never
 *     exceeds its max_parallel, after any index; the grant times of each account with
 *     an rpm limit fit its GCRA bucket.
 *  7. fail-closed: no fresh grant answered by a node cut off from the majority, for a
 *     request sent after the partition began.
 *  8. nodes: no node exits on its own except with 74 while its disk is full; every start
 *     succeeds; SIGTERM ends a node cleanly.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NODES 3
#define ACCTS_MAX 32
#define LEAF_CHAIN_MAX 8
#define SHOW_MAX 8 /* examples printed per violation kind */

/* ---- Small growable arrays. ---- */

#define VEC(T)                                                                                     \
    struct {                                                                                       \
        T *v;                                                                                      \
        size_t n, cap;                                                                             \
    }
#define VEC_PUSH(vec, item)                                                                        \
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

/* ---- Violations. ---- */

struct vkind {
    const char *name;
    long count;
};
static struct vkind vkinds[64];
static int n_vkinds;
static long n_violations;

__attribute__((format(printf, 2, 3))) static void violation(const char *kind, const char *fmt, ...)
{
    int k = 0;
    while (k < n_vkinds && strcmp(vkinds[k].name, kind) != 0) {
        k++;
    }
    if (k == n_vkinds && n_vkinds < 64) {
        vkinds[n_vkinds++].name = kind;
    }
    n_violations++;
    if (k < 64 && vkinds[k].count++ < SHOW_MAX) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        printf("VIOLATION %s: %s\n", kind, msg);
    }
}

/* ---- The model's inputs. ---- */

struct account {
    char name[129];
    int parent; /* -1: root */
    int64_t budget, max_parallel, rpm, burst;
    bool release;
    /* final state per node, -1 when absent */
    int64_t spent[NODES], held[NODES], inflight[NODES];
    bool have[NODES];
    /* model */
    int64_t m_spent, m_held, m_inflight, j_spent;
    double closest; /* largest lower bound of (spent+held)/budget seen */
    int64_t closest_par;
};
static struct account accts[ACCTS_MAX];
static int n_accts;

enum op_kind { OP_RESERVE, OP_SETTLE, OP_VOID, OP_EXTEND, OP_KINDS };
static const char *const op_names[OP_KINDS] = {"reserve", "settle", "void", "extend"};
enum outcome { OC_OK, OC_DENIED, OC_ERROR, OC_UNAVAILABLE, OC_TIMEOUT, OC_KINDS };
static const char *const oc_names[OC_KINDS] = {"ok", "denied", "error", "unavailable", "timeout"};

#define E_ENOTFOUND 3
#define E_ECONFLICT 5
#define E_ERESOLVED 6
#define E_EPROTO 37
#define F_REPLAYED 1u

struct op {
    int64_t t_done, t_inv;
    int kind, outcome, err, node, leaf;
    unsigned flags;
    uint64_t index;
    int64_t a, b, x1, x2;
    uint32_t id; /* index into ids */
    bool resub, final;
};
static VEC(struct op) ops;

enum rec_state { R_MISSING = -3, R_ERROR = -2, R_NOTFOUND = -1, R_OPEN, R_SETTLED, R_VOIDED,
                 R_EXPIRED, R_LATE };
static const char *const rec_names[] = {"open", "settled", "voided", "expired", "late"};

struct rec {
    int state;
    int leaf;
    int64_t est, created, expires, charged;
};

struct idinfo {
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
    struct rec rec[NODES];
    /* journal */
    uint64_t j_last_seq;
    int j_resolutions, j_expires, j_corrections;
};
static VEC(struct idinfo) ids;

/* id -> index, open addressing */
static uint32_t *slots;
static size_t n_slots;

struct nem {
    int64_t t;
    char event[32];
    char kind[32];
    int node;
    char a[64], b[64], c[64];
    int d;
};
static VEC(struct nem) nems;

static int node_ids[NODES];
static long n_replay_after_extend; /* replays that answered the extended expiry */
static long n_stuck_spare;
static long n_bg_voided_grants; /* granted ids voided by libtally after a resubmission */
static char enabled_kinds[8][16]; /* the nemeses the run used */
static int n_enabled;         /* re-added nodes left non-voters (runner repaired them) */
static uint64_t seed;
static int64_t duration_s;

/* ---- Parsing helpers. ---- */

static int acct_index(const char *name)
{
    for (int i = 0; i < n_accts; i++) {
        if (strcmp(accts[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

static int node_index(int id)
{
    for (int i = 0; i < NODES; i++) {
        if (node_ids[i] == id) {
            return i;
        }
    }
    return -1;
}

static int unhex16(const char *hex, uint8_t out[16])
{
    if (strlen(hex) != 32) {
        return -1;
    }
    for (int i = 0; i < 16; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            return -1;
        }
        out[i] = (uint8_t)v;
    }
    return 0;
}

static uint64_t id_hash(const uint8_t id[16])
{
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < 16; i++) {
        h = (h ^ id[i]) * 1099511628211ULL;
    }
    return h;
}

static void slots_grow(void)
{
    size_t n = n_slots ? 2 * n_slots : 1 << 16;
    uint32_t *s = malloc(n * sizeof(*s));
    if (s == NULL) {
        exit(2);
    }
    memset(s, 0xff, n * sizeof(*s));
    for (size_t i = 0; i < ids.n; i++) {
        size_t k = id_hash(ids.v[i].id) & (n - 1);
        while (s[k] != UINT32_MAX) {
            k = (k + 1) & (n - 1);
        }
        s[k] = (uint32_t)i;
    }
    free(slots);
    slots = s;
    n_slots = n;
}

/* The idinfo of `hex`, created if new (create) or -1. */
static int64_t id_find(const char *hex, bool create)
{
    uint8_t id[16];
    if (unhex16(hex, id) != 0) {
        return -1;
    }
    if (n_slots == 0 || ids.n * 2 >= n_slots) {
        slots_grow();
    }
    size_t k = id_hash(id) & (n_slots - 1);
    while (slots[k] != UINT32_MAX) {
        if (memcmp(ids.v[slots[k]].id, id, 16) == 0) {
            return slots[k];
        }
        k = (k + 1) & (n_slots - 1);
    }
    if (!create) {
        return -1;
    }
    struct idinfo info;
    memset(&info, 0, sizeof(info));
    memcpy(info.id, id, 16);
    snprintf(info.hex, sizeof(info.hex), "%s", hex);
    info.leaf = -1;
    info.only_unsent = true;
    for (int i = 0; i < NODES; i++) {
        info.rec[i].state = R_MISSING;
    }
    VEC_PUSH(ids, info);
    slots[k] = (uint32_t)(ids.n - 1);
    return (int64_t)(ids.n - 1);
}

static int op_kind(const char *s)
{
    for (int i = 0; i < OP_KINDS; i++) {
        if (strcmp(s, op_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

static int outcome_of(const char *s)
{
    for (int i = 0; i < OC_KINDS; i++) {
        if (strcmp(s, oc_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

static int rec_state_of(const char *s)
{
    for (int i = 0; i < 5; i++) {
        if (strcmp(s, rec_names[i]) == 0) {
            return i;
        }
    }
    return strcmp(s, "notfound") == 0 ? R_NOTFOUND : R_ERROR;
}

/* ---- Reading the history. ---- */

static int read_history(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "tally-chaos-check: cannot read %s\n", path);
        return -1;
    }
    char line[4096];
    int n_nodes = 0;
    long bad = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        char w[20][160];
        int n = sscanf(line, "%159s %159s %159s %159s %159s %159s %159s %159s %159s %159s %159s "
                             "%159s %159s %159s %159s %159s %159s %159s %159s %159s",
                       w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11],
                       w[12], w[13], w[14], w[15], w[16], w[17], w[18], w[19]);
        if (n <= 0 || w[0][0] == '#') {
            continue;
        }
        if (strcmp(w[0], "C") == 0 && n == 20) {
            struct op o;
            memset(&o, 0, sizeof(o));
            o.t_done = strtoll(w[1], NULL, 10);
            o.t_inv = strtoll(w[2], NULL, 10);
            o.kind = op_kind(w[4]);
            int64_t id = id_find(w[5], true);
            o.leaf = acct_index(w[6]);
            o.a = strtoll(w[7], NULL, 10);
            o.b = strtoll(w[8], NULL, 10);
            o.outcome = outcome_of(w[10]);
            o.err = atoi(w[11]);
            o.flags = (unsigned)strtoul(w[12], NULL, 10);
            o.index = strtoull(w[13], NULL, 10);
            o.node = atoi(w[14]);
            o.x1 = strtoll(w[16], NULL, 10);
            o.x2 = strtoll(w[17], NULL, 10);
            o.resub = atoi(w[18]) != 0;
            o.final = strcmp(w[19], "final") == 0;
            if (o.kind < 0 || id < 0 || o.leaf < 0 || o.outcome < 0) {
                bad++;
                continue;
            }
            o.id = (uint32_t)id;
            VEC_PUSH(ops, o);
        } else if (strcmp(w[0], "I") == 0) {
            continue;
        } else if (strcmp(w[0], "N") == 0 && n >= 3) {
            struct nem e;
            memset(&e, 0, sizeof(e));
            e.t = strtoll(w[1], NULL, 10);
            snprintf(e.event, sizeof(e.event), "%.31s", w[2]);
            if (strcmp(e.event, "fault") == 0 || strcmp(e.event, "heal") == 0) {
                snprintf(e.kind, sizeof(e.kind), "%.31s", n > 3 ? w[3] : "");
                e.node = n > 4 ? atoi(w[4]) : 0;
                snprintf(e.a, sizeof(e.a), "%.63s", n > 5 ? w[5] : "");
                snprintf(e.b, sizeof(e.b), "%.63s", n > 6 ? w[6] : "");
                snprintf(e.c, sizeof(e.c), "%.63s", n > 7 ? w[7] : "");
                e.d = n > 8 ? atoi(w[8]) : (n > 6 ? atoi(w[n - 1]) : 0);
            } else {
                e.node = n > 3 ? atoi(w[3]) : 0;
                snprintf(e.a, sizeof(e.a), "%.63s", n > 4 ? w[4] : "");
                snprintf(e.b, sizeof(e.b), "%.63s", n > 5 ? w[5] : "");
                snprintf(e.c, sizeof(e.c), "%.63s", n > 6 ? w[6] : "");
            }
            VEC_PUSH(nems, e);
        } else if (strcmp(w[0], "acct") == 0 && n == 8 && n_accts < ACCTS_MAX) {
            struct account *a = &accts[n_accts];
            memset(a, 0, sizeof(*a));
            snprintf(a->name, sizeof(a->name), "%.128s", w[1]);
            a->parent = strcmp(w[2], "-") == 0 ? -1 : acct_index(w[2]);
            a->budget = strtoll(w[3], NULL, 10);
            a->max_parallel = strtoll(w[4], NULL, 10);
            a->rpm = strtoll(w[5], NULL, 10);
            a->burst = strtoll(w[6], NULL, 10);
            a->release = strcmp(w[7], "release") == 0;
            n_accts++;
        } else if (strcmp(w[0], "node") == 0 && n == 3 && n_nodes < NODES) {
            node_ids[n_nodes++] = atoi(w[1]);
        } else if (strcmp(w[0], "seed") == 0) {
            seed = strtoull(w[1], NULL, 10);
        } else if (strcmp(w[0], "duration_s") == 0) {
            duration_s = strtoll(w[1], NULL, 10);
        } else if (strcmp(w[0], "start_wall_ms") == 0 || strcmp(w[0], "nemesis") == 0) {
            if (strcmp(w[0], "nemesis") == 0 && n == 2 && n_enabled < 8) {
                snprintf(enabled_kinds[n_enabled++], 16, "%.15s", w[1]);
            }
            continue;
        } else {
            bad++;
        }
    }
    fclose(f);
    if (bad > 0) {
        printf("note: %ld history lines could not be read (a run cut short?)\n", bad);
    }
    return n_nodes == NODES ? 0 : -1;
}

/* ---- Reading the final state. ---- */

struct final {
    bool present;
    int converged;
    uint64_t applied;
    char hash[65];
    uint64_t h_applied[NODES];
    char h_hash[NODES][65];
    bool s_up[NODES];
    int s_voters[NODES];
    uint32_t s_members[NODES];
    bool journal_error;
    long n_records, n_journal;
};
static struct final fin;

static int read_final(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    fin.present = true;
    char line[4096];
    while (fgets(line, sizeof(line), f) != NULL) {
        char w[16][160];
        int n = sscanf(line, "%159s %159s %159s %159s %159s %159s %159s %159s %159s %159s %159s "
                             "%159s %159s %159s %159s %159s",
                       w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11],
                       w[12], w[13], w[14], w[15]);
        if (n <= 0) {
            continue;
        }
        if (strcmp(w[0], "converged") == 0 && n >= 4) {
            fin.converged = atoi(w[1]);
            fin.applied = strtoull(w[2], NULL, 10);
            snprintf(fin.hash, sizeof(fin.hash), "%.64s", w[3]);
        } else if (strcmp(w[0], "H") == 0 && n >= 4) {
            int ni = node_index(atoi(w[1]));
            if (ni >= 0) {
                fin.h_applied[ni] = strtoull(w[2], NULL, 10);
                snprintf(fin.h_hash[ni], 65, "%.64s", w[3]);
            }
        } else if (strcmp(w[0], "S") == 0 && n >= 3) {
            int ni = node_index(atoi(w[1]));
            if (ni >= 0 && strcmp(w[2], "down") != 0 && n >= 8) {
                fin.s_up[ni] = true;
                fin.s_members[ni] = (uint32_t)atoi(w[7]);
                for (int k = 8; k < n; k++) {
                    fin.s_voters[ni] += strstr(w[k], ":voter") != NULL;
                }
            }
        } else if (strcmp(w[0], "A") == 0 && n >= 4) {
            int ni = node_index(atoi(w[1]));
            int ai = acct_index(w[2]);
            if (ni >= 0 && ai >= 0 && n >= 6 && strcmp(w[3], "error") != 0) {
                accts[ai].spent[ni] = strtoll(w[3], NULL, 10);
                accts[ai].held[ni] = strtoll(w[4], NULL, 10);
                accts[ai].inflight[ni] = strtoll(w[5], NULL, 10);
                accts[ai].have[ni] = true;
            }
        } else if (strcmp(w[0], "R") == 0 && n >= 4) {
            int ni = node_index(atoi(w[1]));
            int64_t id = id_find(w[2], false);
            if (ni < 0 || id < 0) {
                continue;
            }
            struct rec *r = &ids.v[id].rec[ni];
            r->state = rec_state_of(w[3]);
            if (r->state >= 0 && n >= 9) {
                r->leaf = acct_index(w[4]);
                r->est = strtoll(w[5], NULL, 10);
                r->created = strtoll(w[6], NULL, 10);
                r->expires = strtoll(w[7], NULL, 10);
                r->charged = strtoll(w[8], NULL, 10);
            }
            fin.n_records++;
        } else if (strcmp(w[0], "J") == 0 && n >= 8) {
            fin.n_journal++;
            uint64_t seq = strtoull(w[1], NULL, 10);
            const char *kind = w[3];
            int ai = acct_index(w[4]);
            int64_t amount = strtoll(w[6], NULL, 10);
            bool charge = strcmp(kind, "charge") == 0 || strcmp(kind, "expire-charge") == 0 ||
                          strcmp(kind, "correction") == 0;
            if (ai >= 0 && charge) {
                accts[ai].j_spent += amount;
            }
            int64_t id = id_find(w[5], false);
            if (id < 0) {
                continue;
            }
            struct idinfo *d = &ids.v[id];
            if (d->j_last_seq == seq) {
                continue; /* the same event, another account of the chain */
            }
            d->j_last_seq = seq;
            if (strcmp(kind, "charge") == 0 || strcmp(kind, "release") == 0) {
                d->j_resolutions++;
            } else if (strncmp(kind, "expire", 6) == 0) {
                d->j_resolutions++;
                d->j_expires++;
            } else if (strcmp(kind, "correction") == 0) {
                d->j_corrections++;
            }
        } else if (strcmp(w[0], "Jerror") == 0) {
            fin.journal_error = true;
        }
    }
    fclose(f);
    return 0;
}

/* ---- Checks. ---- */

static bool in_chain(int leaf, int acct)
{
    for (int a = leaf, depth = 0; a >= 0 && depth < LEAF_CHAIN_MAX; a = accts[a].parent, depth++) {
        if (a == acct) {
            return true;
        }
    }
    return false;
}

/* Rules 1 and 2, and what the answers say about each id. */
static void check_answers(void)
{
    for (size_t i = 0; i < ops.n; i++) {
        struct op *o = &ops.v[i];
        struct idinfo *d = &ids.v[o->id];
        bool replayed = (o->flags & F_REPLAYED) != 0;
        if (o->outcome != OC_UNAVAILABLE) {
            d->only_unsent = false;
        }
        d->any_attempt = true;
        if (o->err == E_ECONFLICT) {
            violation("conflict", "%s %s answered ECONFLICT, but every resubmission repeats the "
                      "same arguments", op_names[o->kind], d->hex);
        }
        if (o->err == E_EPROTO) {
            violation("protocol", "%s %s: the server's answer could not be trusted",
                      op_names[o->kind], d->hex);
        }
        switch (o->kind) {
        case OP_RESERVE:
            if (!d->have_reserve) {
                d->have_reserve = true;
                d->leaf = o->leaf;
                d->est = o->a;
                d->ttl = o->b;
            }
            if (o->outcome == OC_OK) {
                if (!replayed) {
                    d->fresh_grants++;
                    d->g_exact = o->index;
                    d->grant_expires = o->x1;
                    d->have_fresh_expires = true;
                } else {
                    if (d->g_ub == 0 || o->index < d->g_ub) {
                        d->g_ub = o->index;
                    }
                    if (!d->granted) {
                        d->grant_expires = o->x1;
                    }
                }
                d->granted = true;
            } else if (o->outcome == OC_UNAVAILABLE || o->outcome == OC_TIMEOUT) {
                d->bg_void = true;
            } else if (o->outcome == OC_DENIED) {
                if (d->denied && d->deny_reason != (int)o->x2) {
                    violation("replay-differs", "reserve %s denied for different reasons",
                              d->hex);
                }
                d->denied = true;
                d->deny_reason = (int)o->x2;
            }
            break;
        case OP_SETTLE:
        case OP_VOID: {
            bool is_settle = o->kind == OP_SETTLE;
            if (is_settle) {
                if (d->sent_settle && d->first_settle_actual != o->a) {
                    d->settle_args_differ = true;
                }
                if (!d->sent_settle) {
                    d->first_settle_actual = o->a;
                }
                d->sent_settle = true;
            } else {
                d->sent_void = true;
            }
            if (o->outcome == OC_OK) {
                if (is_settle) {
                    if (d->have_settle_charged && d->settle_charged != o->x1) {
                        violation("replay-differs", "settle %s answered charged %lld and %lld",
                                  d->hex, (long long)d->settle_charged, (long long)o->x1);
                    }
                    d->have_settle_charged = true;
                    d->settle_charged = o->x1;
                    d->settle_ok = true;
                    d->settle_actual = o->a;
                } else {
                    d->void_ok = true;
                }
                if (!replayed) {
                    d->fresh_resolutions++;
                    d->r_exact = o->index;
                    d->r_kind = o->kind;
                }
            }
            break;
        }
        default:
            if (d->first_extend_us == 0 || o->t_inv < d->first_extend_us) {
                d->first_extend_us = o->t_inv;
            }
            break;
        }
    }
    /* Second pass: rules that need every answer of an id. */
    for (size_t i = 0; i < ops.n; i++) {
        struct op *o = &ops.v[i];
        struct idinfo *d = &ids.v[o->id];
        if (o->kind == OP_RESERVE && o->outcome == OC_OK && (o->flags & F_REPLAYED) &&
            d->have_fresh_expires && o->x1 != d->grant_expires) {
            /* The stored answer must come back; an extend in between moves the expiry the
             * ledger reports (docs/chaos.md: a documented difference, not a violation). */
            if (d->first_extend_us != 0 && d->first_extend_us < o->t_inv &&
                o->x1 > d->grant_expires) {
                n_replay_after_extend++;
            } else {
                violation("replay-differs", "reserve %s granted with expiry %lld, replayed "
                          "with %lld", d->hex, (long long)d->grant_expires, (long long)o->x1);
            }
        }
        if ((o->kind == OP_SETTLE || o->kind == OP_VOID) && o->err == E_ERESOLVED) {
            bool other = o->kind == OP_SETTLE ? (d->sent_void || d->settle_args_differ)
                                              : d->sent_settle;
            if (!other && d->bg_void && d->granted) {
                /* A resubmitted reserve of a granted id timed out, and libtally voided the
                 * id in the background: the live reservation is gone (docs/chaos.md, D). */
                if (!d->counted_bg_void) {
                    d->counted_bg_void = true;
                    n_bg_voided_grants++;
                }
            } else if (!other) {
                violation("spurious-resolved", "%s %s answered ERESOLVED but no other resolution "
                          "of it was ever sent", op_names[o->kind], d->hex);
            }
        }
        if (o->kind != OP_RESERVE && o->err == E_ENOTFOUND && d->granted) {
            violation("lost-grant", "%s %s answered ENOTFOUND for an acknowledged grant",
                      op_names[o->kind], d->hex);
        }
    }
    for (size_t i = 0; i < ids.n; i++) {
        struct idinfo *d = &ids.v[i];
        if (d->granted && d->denied) {
            violation("denied-then-granted", "reserve %s was both granted and denied", d->hex);
        }
        if (d->fresh_grants > 1) {
            violation("granted-twice", "reserve %s granted fresh %d times", d->hex,
                      d->fresh_grants);
        }
        if (d->fresh_resolutions > 1 || (d->settle_ok && d->void_ok)) {
            violation("resolved-twice", "reservation %s resolved more than once (%d fresh, "
                      "settle %d void %d)", d->hex, d->fresh_resolutions, d->settle_ok,
                      d->void_ok);
        }
    }
}

/* The record of id d on the first node that has one (they are compared elsewhere). */
static const struct rec *record_of(const struct idinfo *d)
{
    for (int n = 0; n < NODES; n++) {
        if (d->rec[n].state != R_MISSING && d->rec[n].state != R_ERROR) {
            return &d->rec[n];
        }
    }
    return NULL;
}

/* Rules 3 and 4. */
static void check_records(long *n_acked_grants, long *n_acked_res, long *n_unknown_committed)
{
    for (size_t i = 0; i < ids.n; i++) {
        struct idinfo *d = &ids.v[i];
        if (!d->have_reserve) {
            continue;
        }
        /* replicas agree */
        for (int n = 1; n < NODES; n++) {
            const struct rec *a = &d->rec[0], *b = &d->rec[n];
            if (a->state == R_MISSING || b->state == R_MISSING || a->state == R_ERROR ||
                b->state == R_ERROR) {
                continue;
            }
            if (a->state != b->state || (a->state >= 0 && (a->est != b->est ||
                                                           a->charged != b->charged ||
                                                           a->created != b->created))) {
                violation("replicas-differ", "reservation %s: node %d says %s, node %d says %s",
                          d->hex, node_ids[0], a->state >= 0 ? rec_names[a->state] : "none",
                          node_ids[n], b->state >= 0 ? rec_names[b->state] : "none");
            }
        }
        for (int n = 0; n < NODES; n++) {
            if (fin.present && fin.converged && (d->rec[n].state == R_MISSING ||
                                                 d->rec[n].state == R_ERROR)) {
                violation("unreadable", "reservation %s could not be read from node %d", d->hex,
                          node_ids[n]);
            }
        }
        const struct rec *r = record_of(d);
        if (r == NULL) {
            continue;
        }
        if (d->granted) {
            (*n_acked_grants)++;
            if (r->state == R_NOTFOUND) {
                violation("lost-grant", "acknowledged grant %s (%s, %lld) has no reservation",
                          d->hex, accts[d->leaf].name, (long long)d->est);
                continue;
            }
            if (r->est != d->est || r->leaf != d->leaf) {
                violation("grant-differs", "reservation %s holds %lld on %s; granted %lld on %s",
                          d->hex, (long long)r->est, r->leaf >= 0 ? accts[r->leaf].name : "?",
                          (long long)d->est, accts[d->leaf].name);
            }
            if (d->have_fresh_expires && r->created != d->grant_expires - d->ttl) {
                violation("grant-differs", "reservation %s created at %lld; the grant said %lld",
                          d->hex, (long long)r->created, (long long)(d->grant_expires - d->ttl));
            }
        } else if (d->denied && r->state != R_NOTFOUND) {
            violation("denied-holds", "denied reserve %s has a reservation (%s)", d->hex,
                      rec_names[r->state]);
        } else if (d->only_unsent && r->state != R_NOTFOUND) {
            violation("phantom", "reserve %s was never sent but has a reservation", d->hex);
        } else if (!d->granted && !d->denied && r->state >= 0) {
            (*n_unknown_committed)++;
        }
        if (d->settle_ok) {
            (*n_acked_res)++;
            bool ok = (r->state == R_SETTLED || r->state == R_LATE) &&
                      r->charged == d->settle_actual;
            if (!ok) {
                violation("lost-settle", "acknowledged settle %s of %lld: the reservation is %s "
                          "with %lld charged", d->hex, (long long)d->settle_actual,
                          r->state >= 0 ? rec_names[r->state] : "gone", (long long)r->charged);
            }
        }
        if (d->void_ok) {
            (*n_acked_res)++;
            bool ok = (r->state == R_VOIDED || r->state == R_LATE) && r->charged == 0;
            if (!ok) {
                violation("lost-void", "acknowledged void %s: the reservation is %s with %lld "
                          "charged", d->hex, r->state >= 0 ? rec_names[r->state] : "gone",
                          (long long)r->charged);
            }
        }
        /* the journal (rule 4) */
        if (fin.journal_error || fin.n_journal == 0) {
            continue;
        }
        if (d->j_resolutions > 1 || d->j_corrections > 1 ||
            (d->j_corrections > 0 && d->j_expires == 0)) {
            violation("journal-twice", "reservation %s: %d resolutions, %d expiries, %d "
                      "corrections in the journal", d->hex, d->j_resolutions, d->j_expires,
                      d->j_corrections);
        }
        int want_res = r->state == R_OPEN || r->state == R_NOTFOUND ? 0 : 1;
        int want_exp = r->state == R_EXPIRED || r->state == R_LATE ? 1 : 0;
        int want_cor = r->state == R_LATE ? 1 : 0;
        if (r->state >= R_NOTFOUND &&
            (d->j_resolutions != want_res || d->j_expires != want_exp ||
             d->j_corrections != want_cor)) {
            violation("journal-differs", "reservation %s is %s but the journal has %d "
                      "resolutions, %d expiries, %d corrections", d->hex,
                      r->state >= 0 ? rec_names[r->state] : "not found", d->j_resolutions,
                      d->j_expires, d->j_corrections);
        }
    }
}

/* Rule 5. */
static void check_final_state(void)
{
    if (!fin.present) {
        violation("no-final-state", "final.txt is missing: the run did not finish");
        return;
    }
    if (!fin.converged) {
        violation("not-converged", "the replicas did not reach the same applied index and "
                  "state hash after the faults were healed");
    }
    for (int n = 0; n < NODES; n++) {
        if (strcmp(fin.h_hash[n], fin.h_hash[0]) != 0 || fin.h_applied[n] != fin.h_applied[0] ||
            fin.h_hash[n][0] == '-' || fin.h_hash[n][0] == '\0') {
            violation("hash-differs", "node %d: applied %llu hash %.16s; node %d: applied %llu "
                      "hash %.16s", node_ids[n], (unsigned long long)fin.h_applied[n],
                      fin.h_hash[n], node_ids[0], (unsigned long long)fin.h_applied[0],
                      fin.h_hash[0]);
        }
        if (!fin.s_up[n] || fin.s_voters[n] != NODES) {
            violation("membership", "node %d at the end: %s, %d voters", node_ids[n],
                      fin.s_up[n] ? "up" : "down", fin.s_voters[n]);
        }
    }
    /* the model: sums over the records */
    for (size_t i = 0; i < ids.n; i++) {
        const struct rec *r = record_of(&ids.v[i]);
        if (r == NULL || r->state < 0 || r->leaf < 0) {
            continue;
        }
        for (int a = r->leaf, depth = 0; a >= 0 && depth < LEAF_CHAIN_MAX;
             a = accts[a].parent, depth++) {
            if (r->state == R_OPEN) {
                accts[a].m_held += r->est;
                accts[a].m_inflight++;
            } else {
                accts[a].m_spent += r->charged;
            }
        }
    }
    for (int a = 0; a < n_accts; a++) {
        struct account *ac = &accts[a];
        for (int n = 0; n < NODES; n++) {
            if (!ac->have[n]) {
                violation("unreadable", "account %s could not be read from node %d", ac->name,
                          node_ids[n]);
                continue;
            }
            if (ac->spent[n] != ac->m_spent || ac->held[n] != ac->m_held ||
                ac->inflight[n] != ac->m_inflight) {
                violation("state-differs", "%s on node %d: spent %lld held %lld inflight %lld; "
                          "the reservations say spent %lld held %lld inflight %lld", ac->name,
                          node_ids[n], (long long)ac->spent[n], (long long)ac->held[n],
                          (long long)ac->inflight[n], (long long)ac->m_spent,
                          (long long)ac->m_held, (long long)ac->m_inflight);
            }
        }
        if (fin.n_journal > 0 && !fin.journal_error && ac->j_spent != ac->m_spent) {
            violation("journal-differs", "%s: the journal charges %lld, the reservations %lld",
                      ac->name, (long long)ac->j_spent, (long long)ac->m_spent);
        }
    }
}

/* ---- Rule 6: no overspend, in Raft-index order. ---- */

struct ev {
    uint64_t index;
    int64_t money;
    int64_t slots;
    uint32_t id;
};

struct ev_vec {
    struct ev *v;
    size_t n, cap;
};

static int ev_cmp(const void *a, const void *b)
{
    const struct ev *x = a, *y = b;
    return x->index < y->index ? -1 : x->index > y->index;
}

struct stamp {
    int64_t stamp;
    uint64_t index;
};

static int stamp_cmp(const void *a, const void *b)
{
    const struct stamp *x = a, *y = b;
    return x->stamp < y->stamp ? -1 : x->stamp > y->stamp;
}

static int i64_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * The lower-bound events of one reservation with record r, granted at index g (exact, or
 * only known to be at most g): what it certainly holds or has been charged after each
 * index. Its resolution index is known only from a fresh settle/void answer (rx); an
 * expiry's index is never known. Money is the estimate while certainly open, the final
 * charge once certainly resolved (never more than the estimate: no overruns), and the
 * smaller of what it may be in between; a slot counts only while certainly open.
 */
static void add_events(struct ev_vec *evs, uint32_t i, const struct idinfo *d,
                       const struct rec *r, uint64_t g, bool g_exact, bool release)
{
    int64_t est = r->est;
    uint64_t rx = d->r_exact && ((d->r_kind == OP_SETTLE && d->settle_ok) ||
                                 (d->r_kind == OP_VOID && d->void_ok))
                      ? d->r_exact
                      : 0;
    bool open_until_rx = rx > g; /* granted by g, resolved at rx: open in between */
#define EV(at, money, slots)                                                                       \
    do {                                                                                           \
        struct ev e_ = {(at), (money), (slots), i};                                                \
        VEC_PUSH(*evs, e_);                                                                        \
    } while (0)
    switch (r->state) {
    case R_OPEN: /* open at the end, granted by g: open from g on */
        EV(g, est, 1);
        break;
    case R_SETTLED:
    case R_VOIDED:
        if (open_until_rx) {
            EV(g, est, 1);
            EV(rx, r->charged - est, -1);
        } else if (g_exact) { /* resolved at some index after g */
            EV(g, est, 1);
            EV(g + 1, r->charged - est, -1);
        } else { /* maybe resolved already by g */
            EV(g, r->charged, 0);
        }
        break;
    case R_EXPIRED: /* charge policy: the estimate throughout; release: 0 after expiry */
        if (g_exact) {
            EV(g, est, 1);
            EV(g + 1, r->charged - est, -1);
        } else {
            EV(g, r->charged, 0);
        }
        break;
    default: /* late: expired at an unknown index, then settled or voided (at rx) */
        if (!release) { /* expiry charged the estimate: est until rx, then the charge */
            if (g_exact) {
                EV(g, est, 1);
                EV(g + 1, 0, -1);
                EV(open_until_rx ? rx : g + 1, r->charged - est, 0);
            } else if (open_until_rx) {
                EV(g, est, 0);
                EV(rx, r->charged - est, 0);
            } else {
                EV(g, r->charged, 0);
            }
        } else { /* expiry released it: 0 from the expiry until rx, then the charge */
            if (g_exact) {
                EV(g, est, 1);
                EV(g + 1, -est, -1);
            }
            if (open_until_rx) {
                EV(rx, r->charged, 0);
            }
        }
        break;
    }
#undef EV
}

static void check_budgets(long *n_placed, long *n_unplaced)
{
    /* Exact grants give (grant time, index) pairs, both non-decreasing in log order: a
     * grant stamped later than t was made at a later index than anything stamped t. */
    VEC(struct stamp) st = {0};
    for (size_t i = 0; i < ids.n; i++) {
        struct idinfo *d = &ids.v[i];
        if (d->g_exact != 0) {
            struct stamp s = {d->grant_expires - d->ttl, d->g_exact};
            VEC_PUSH(st, s);
        }
    }
    if (st.n > 0) {
        qsort(st.v, st.n, sizeof(*st.v), stamp_cmp);
    }
    uint64_t *suffix_min = calloc(st.n + 1, sizeof(*suffix_min));
    suffix_min[st.n] = UINT64_MAX;
    for (size_t k = st.n; k-- > 0;) {
        suffix_min[k] = st.v[k].index < suffix_min[k + 1] ? st.v[k].index : suffix_min[k + 1];
    }
    for (int a = 0; a < n_accts; a++) {
        struct account *ac = &accts[a];
        if (ac->budget < 0 && ac->max_parallel < 0) {
            continue;
        }
        struct ev_vec evs = {0};
        for (size_t i = 0; i < ids.n; i++) {
            struct idinfo *d = &ids.v[i];
            const struct rec *r = record_of(d);
            if (r == NULL || r->state < 0 || r->leaf < 0 || !in_chain(r->leaf, a)) {
                continue;
            }
            uint64_t g = d->g_exact ? d->g_exact : d->g_ub;
            if (g == 0) {
                /* never acknowledged: bound its index by a later-stamped exact grant */
                size_t lo = 0, hi = st.n;
                while (lo < hi) {
                    size_t mid = (lo + hi) / 2;
                    if (st.v[mid].stamp > r->created) {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                if (lo < st.n && suffix_min[lo] != UINT64_MAX && suffix_min[lo] > 1) {
                    g = suffix_min[lo] - 1;
                }
            }
            if (a == 0) {
                (*(g ? n_placed : n_unplaced))++;
            }
            if (g == 0) {
                continue;
            }
            add_events(&evs, (uint32_t)i, d, r, g, d->g_exact != 0,
                       accts[r->leaf].release);
        }
        if (evs.n > 0) {
            qsort(evs.v, evs.n, sizeof(*evs.v), ev_cmp);
        }
        /* CHAOS_CHECK_TRACE=ACCOUNT:INDEX lists what the bound counts there. */
        const char *trace = getenv("CHAOS_CHECK_TRACE");
        size_t name_len = strlen(ac->name);
        if (trace != NULL && strncmp(trace, ac->name, name_len) == 0 && trace[name_len] == ':') {
            uint64_t at = strtoull(trace + name_len + 1, NULL, 10);
            for (size_t i = 0; i < ids.n; i++) {
                int64_t money = 0, open_slots = 0;
                for (size_t k = 0; k < evs.n && evs.v[k].index <= at; k++) {
                    if (evs.v[k].id == i) {
                        money += evs.v[k].money;
                        open_slots += evs.v[k].slots;
                    }
                }
                if (money != 0 || open_slots != 0) {
                    const struct rec *r = record_of(&ids.v[i]);
                    printf("trace %s@%llu: %s money %lld slots %lld (g %llu/%llu r %llu, %s)\n",
                           ac->name, (unsigned long long)at, ids.v[i].hex, (long long)money,
                           (long long)open_slots, (unsigned long long)ids.v[i].g_exact,
                           (unsigned long long)ids.v[i].g_ub,
                           (unsigned long long)ids.v[i].r_exact,
                           r != NULL && r->state >= 0 ? rec_names[r->state] : "none");
                }
            }
        }
        int64_t money = 0, slots_ = 0;
        bool reported_b = false, reported_p = false;
        for (size_t k = 0; k < evs.n; k++) {
            money += evs.v[k].money;
            slots_ += evs.v[k].slots;
            if (k + 1 < evs.n && evs.v[k + 1].index == evs.v[k].index) {
                continue; /* check at the end of each index */
            }
            if (ac->budget > 0) {
                double ratio = (double)money / (double)ac->budget;
                if (ratio > ac->closest) {
                    ac->closest = ratio;
                }
            }
            if (slots_ > ac->closest_par) {
                ac->closest_par = slots_;
            }
            if (ac->budget >= 0 && money > ac->budget && !reported_b) {
                violation("overspend", "%s: at Raft index %llu at least %lld is spent or held; "
                          "the budget is %lld", ac->name, (unsigned long long)evs.v[k].index,
                          (long long)money, (long long)ac->budget);
                reported_b = true;
            }
            if (ac->max_parallel >= 0 && slots_ > ac->max_parallel && !reported_p) {
                violation("over-parallel", "%s: at Raft index %llu at least %lld reservations "
                          "are open; max_parallel is %lld", ac->name,
                          (unsigned long long)evs.v[k].index, (long long)slots_,
                          (long long)ac->max_parallel);
                reported_p = true;
            }
        }
        free(evs.v);
    }
    free(suffix_min);
    free(st.v);

    /* rpm: every grant's time, per limited account, must fit the GCRA bucket: n grants in
     * [t_i, t_j] need n*60000 <= burst*60000 + (t_j - t_i)*rpm. */
    for (int a = 0; a < n_accts; a++) {
        struct account *ac = &accts[a];
        if (ac->rpm < 0) {
            continue;
        }
        VEC(int64_t) ts = {0};
        for (size_t i = 0; i < ids.n; i++) {
            const struct rec *r = record_of(&ids.v[i]);
            if (r != NULL && r->state >= 0 && r->leaf >= 0 && in_chain(r->leaf, a)) {
                VEC_PUSH(ts, r->created);
            }
        }
        if (ts.n > 0) {
            qsort(ts.v, ts.n, sizeof(*ts.v), i64_cmp);
        }
        int64_t burst = ac->burst > 0 ? ac->burst : ac->rpm;
        /* min over i <= j of (i*60000 - t_i*rpm) must be >= (j+1)*60000 - t_j*rpm - burst*60000 */
        __int128 best = 0;
        for (size_t j = 0; j < ts.n; j++) {
            __int128 vi = (__int128)j * 60000 - (__int128)ts.v[j] * ac->rpm;
            if (j == 0 || vi < best) {
                best = vi;
            }
            __int128 need = (__int128)(j + 1) * 60000 - (__int128)ts.v[j] * ac->rpm -
                            (__int128)burst * 60000;
            if (best < need) {
                violation("over-rate", "%s: grant %zu at ledger time %lld exceeds rpm %lld with "
                          "burst %lld", ac->name, j, (long long)ts.v[j], (long long)ac->rpm,
                          (long long)burst);
                break;
            }
        }
        free(ts.v);
    }
}

/* ---- Rule 7: no grant from a minority side. ---- */

/* Whether node id `nid` is cut off from a majority under layout (cuts "12,13", down "2"). */
static bool minority(int nid, const char *cuts, const char *down)
{
    if (strchr(down, '0' + nid) != NULL) {
        return true;
    }
    int reach = 1;
    for (int m = 0; m < NODES; m++) {
        int mid = node_ids[m];
        if (mid == nid || strchr(down, '0' + mid) != NULL) {
            continue;
        }
        char p1[3] = {(char)('0' + nid), (char)('0' + mid), 0};
        char p2[3] = {(char)('0' + mid), (char)('0' + nid), 0};
        if (strstr(cuts, p1) == NULL && strstr(cuts, p2) == NULL) {
            reach++;
        }
    }
    return reach * 2 <= NODES;
}

static long check_minority(void)
{
    long checked = 0;
    for (size_t e = 0; e < nems.n; e++) {
        struct nem *f = &nems.v[e];
        if (strcmp(f->event, "fault") != 0 || strcmp(f->kind, "partition") != 0) {
            continue;
        }
        int64_t heal = INT64_MAX;
        for (size_t h = e + 1; h < nems.n; h++) {
            if (strcmp(nems.v[h].event, "heal") == 0 && strcmp(nems.v[h].kind, "partition") == 0) {
                heal = nems.v[h].t;
                break;
            }
        }
        /* f->a: sub-kind, f->b: cuts, f->c: down */
        for (size_t i = 0; i < ops.n; i++) {
            struct op *o = &ops.v[i];
            if (o->kind != OP_RESERVE || o->outcome != OC_OK || (o->flags & F_REPLAYED) ||
                o->t_inv < f->t || o->t_done > heal || o->node == 0) {
                continue;
            }
            checked++;
            if (minority(o->node, f->b, f->c)) {
                violation("minority-grant", "reserve %s granted by node %d at %.3f s, cut off "
                          "by partition %s (%s, down %s) since %.3f s", ids.v[o->id].hex, o->node,
                          (double)o->t_done / 1e6, f->a, f->b, f->c, (double)f->t / 1e6);
            }
        }
    }
    return checked;
}

/* ---- Rule 8: node exits. ---- */

static void check_nodes(int *n_exit74)
{
    for (size_t e = 0; e < nems.n; e++) {
        struct nem *x = &nems.v[e];
        if (strcmp(x->event, "exit") == 0) {
            /* allowed only as 74 inside a disk fault on that node */
            bool in_disk = false;
            for (size_t k = e; k-- > 0;) {
                struct nem *y = &nems.v[k];
                if (y->node != x->node || strcmp(y->kind, "disk") != 0) {
                    continue;
                }
                in_disk = strcmp(y->event, "fault") == 0;
                break;
            }
            if (in_disk && strcmp(x->a, "code=74") == 0) {
                (*n_exit74)++;
            } else {
                violation("node-exit", "node %d exited on its own (%s) at %.3f s%s", x->node, x->a,
                          (double)x->t / 1e6, in_disk ? " during a full disk" : "");
            }
        } else if (strcmp(x->event, "start-failed") == 0) {
            violation("start-failed", "node %d did not start (%s) at %.3f s", x->node, x->a,
                      (double)x->t / 1e6);
        } else if (strcmp(x->event, "stop") == 0 && atoi(x->a) == 15 && strcmp(x->b, "code=0") != 0) {
            violation("unclean-stop", "node %d on SIGTERM: %s at %.3f s", x->node, x->b,
                      (double)x->t / 1e6);
        } else if (strcmp(x->event, "member-stuck-spare") == 0) {
            n_stuck_spare++;
        } else if (strcmp(x->event, "heal") == 0 &&
                   (strstr(x->a, "failed") != NULL)) {
            violation("heal-failed", "%s fault on node %d could not be healed (%s) at %.3f s",
                      x->kind, x->node, x->a, (double)x->t / 1e6);
        }
    }
}

/* The cluster must grant again once every fault is healed (the run ends with a fault-free
 * tail of a few seconds): a grant completed after `heal-all`. */
static void check_recovery(void)
{
    int64_t healed = -1;
    for (size_t e = 0; e < nems.n; e++) {
        if (strcmp(nems.v[e].event, "heal-all") == 0) {
            healed = nems.v[e].t;
        }
    }
    if (healed < 0) {
        return;
    }
    for (size_t i = 0; i < ops.n; i++) {
        if (!ops.v[i].final && ops.v[i].kind == OP_RESERVE && ops.v[i].outcome == OC_OK &&
            ops.v[i].t_done > healed) {
            return;
        }
    }
    violation("no-recovery", "no grant after every fault was healed (at %.3f s): the cluster "
              "did not come back", (double)healed / 1e6);
}

/* ---- Summary. ---- */

static int64_t pct(int64_t *v, size_t n, int p)
{
    if (n == 0) {
        return -1;
    }
    qsort(v, n, sizeof(*v), i64_cmp);
    size_t k = (n * (size_t)p + 99) / 100;
    return v[k > 0 ? k - 1 : 0];
}

static void summary(long acked_grants, long acked_res, long unknown_committed, long placed,
                    long unplaced, long minority_checked, int exit74)
{
    long by[OP_KINDS][OC_KINDS] = {{0}};
    long total = 0, resub = 0, finals = 0, unavailable = 0;
    int64_t first_t = INT64_MAX, last_t = 0;
    for (size_t i = 0; i < ops.n; i++) {
        struct op *o = &ops.v[i];
        if (o->final) {
            finals++;
            continue;
        }
        total++;
        by[o->kind][o->outcome]++;
        resub += o->resub;
        unavailable += o->outcome == OC_UNAVAILABLE || o->outcome == OC_TIMEOUT;
        first_t = o->t_inv < first_t ? o->t_inv : first_t;
        last_t = o->t_done > last_t ? o->t_done : last_t;
    }
    printf("\n== tally chaos summary (seed %llu, %lld s) ==\n", (unsigned long long)seed,
           (long long)duration_s);
    printf("operations: %ld (%.0f/s), %ld of them resubmissions; %ld final replays\n", total,
           last_t > first_t ? (double)total / ((double)(last_t - first_t) / 1e6) : 0.0, resub,
           finals);
    for (int k = 0; k < OP_KINDS; k++) {
        printf("  %-8s", op_names[k]);
        for (int c = 0; c < OC_KINDS; c++) {
            printf(" %s %ld", oc_names[c], by[k][c]);
        }
        printf("\n");
    }
    /* faults by kind */
    static const char *const kinds[] = {"kill", "pause", "partition", "disk", "clock", "member"};
    printf("faults:");
    int total_faults = 0;
    for (int k = 0; k < 6; k++) {
        int n = 0, lead = 0;
        for (size_t e = 0; e < nems.n; e++) {
            if (strcmp(nems.v[e].event, "fault") == 0 && strcmp(nems.v[e].kind, kinds[k]) == 0) {
                n++;
                lead += nems.v[e].d;
            }
        }
        total_faults += n;
        printf(" %s %d (leader %d)%s", kinds[k], n, lead, k < 5 ? "," : "");
    }
    printf("; %d in all\n", total_faults);
    if (n_enabled > 0 && n_enabled < 6) {
        printf("  (this run injected only:");
        for (int k = 0; k < n_enabled; k++) {
            printf(" %s", enabled_kinds[k]);
        }
        printf(")\n");
    }
    static const char *const parts[] = {"isolate-leader", "isolate", "bridge", "link-down"};
    printf("  partitions:");
    for (int k = 0; k < 4; k++) {
        int n = 0;
        for (size_t e = 0; e < nems.n; e++) {
            n += strcmp(nems.v[e].event, "fault") == 0 && strcmp(nems.v[e].kind, "partition") == 0 &&
                 strcmp(nems.v[e].a, parts[k]) == 0;
        }
        printf(" %s %d", parts[k], n);
    }
    int survived = 0;
    for (size_t e = 0; e < nems.n; e++) {
        survived += strcmp(nems.v[e].event, "heal") == 0 && strcmp(nems.v[e].kind, "disk") == 0 &&
                    strcmp(nems.v[e].a, "survived") == 0;
    }
    printf("; full disks: %d stopped with exit 74, %d kept running\n", exit74, survived);
    printf("checked: %ld acknowledged grants and %ld acknowledged settles/voids against the "
           "records of %ld reservations on %d nodes; %ld unacknowledged reserves that "
           "committed; %ld journal entries; %ld grants during partitions\n",
           acked_grants, acked_res, (long)ids.n, NODES, unknown_committed, fin.n_journal,
           minority_checked);
    printf("  index order: %ld reservations placed, %ld could not be (never acknowledged, no "
           "later grant to bound them)\n", placed, unplaced);
    printf("  closest approach (lower bound of spent+held / budget; open at once / "
           "max_parallel):\n");
    for (int a = 0; a < n_accts; a++) {
        if (accts[a].budget < 0 && accts[a].max_parallel < 0) {
            continue;
        }
        printf("    %-10s", accts[a].name);
        if (accts[a].budget >= 0) {
            printf(" budget %5.1f%%", 100.0 * accts[a].closest);
        } else {
            printf(" %14s", "");
        }
        if (accts[a].max_parallel >= 0) {
            printf("  parallel %lld/%lld", (long long)accts[a].closest_par,
                   (long long)accts[a].max_parallel);
        }
        printf("  final spent %lld held %lld\n", (long long)accts[a].m_spent,
               (long long)accts[a].m_held);
    }
    /* availability */
    VEC(int64_t) grants_t = {0};
    for (size_t i = 0; i < ops.n; i++) {
        if (!ops.v[i].final && ops.v[i].kind == OP_RESERVE && ops.v[i].outcome == OC_OK) {
            VEC_PUSH(grants_t, ops.v[i].t_done);
        }
    }
    if (grants_t.n > 0) {
        qsort(grants_t.v, grants_t.n, sizeof(*grants_t.v), i64_cmp);
    }
    printf("availability: %.2f%% of operations unavailable or timed out (%ld of %ld)\n",
           total ? 100.0 * (double)unavailable / (double)total : 0.0, unavailable, total);
    int64_t gap = 0, gap_at = 0;
    for (size_t k = 1; k < grants_t.n; k++) {
        if (grants_t.v[k] - grants_t.v[k - 1] > gap) {
            gap = grants_t.v[k] - grants_t.v[k - 1];
            gap_at = grants_t.v[k - 1];
        }
    }
    if (grants_t.n > 0 && last_t - grants_t.v[grants_t.n - 1] > gap) {
        gap = last_t - grants_t.v[grants_t.n - 1]; /* from the last grant to the end */
        gap_at = grants_t.v[grants_t.n - 1];
    }
    VEC(int64_t) all = {0};
    VEC(int64_t) fo = {0};
    int never = 0;
    for (int k = -1; k < 6; k++) {
        VEC(int64_t) d = {0};
        for (size_t e = 0; e < nems.n; e++) {
            struct nem *x = &nems.v[e];
            bool heal = strcmp(x->event, "heal") == 0 || strcmp(x->event, "heal-all") == 0;
            if (!heal || (k >= 0 && strcmp(x->kind, kinds[k]) != 0) ||
                (k < 0 && strcmp(x->event, "heal-all") != 0)) {
                continue;
            }
            size_t lo = 0, hi = grants_t.n;
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (grants_t.v[mid] > x->t) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            if (lo < grants_t.n) {
                VEC_PUSH(d, (grants_t.v[lo] - x->t) / 1000);
                VEC_PUSH(all, (grants_t.v[lo] - x->t) / 1000);
            } else {
                never++;
            }
        }
        if (k >= 0 && d.n > 0) {
            printf("  heal -> first grant after %-9s p50 %5lld ms  p99 %5lld ms  max %5lld ms "
                   "(n=%zu)\n", kinds[k], (long long)pct(d.v, d.n, 50),
                   (long long)pct(d.v, d.n, 99), (long long)pct(d.v, d.n, 100), d.n);
        }
        free(d.v);
    }
    /* fault on the leader -> first grant (failover) for kill, pause, partition */
    for (size_t e = 0; e < nems.n; e++) {
        struct nem *x = &nems.v[e];
        if (strcmp(x->event, "fault") != 0 || x->d != 1 ||
            (strcmp(x->kind, "kill") != 0 && strcmp(x->kind, "pause") != 0 &&
             strcmp(x->kind, "partition") != 0)) {
            continue;
        }
        for (size_t k = 0; k < grants_t.n; k++) {
            if (grants_t.v[k] > x->t) {
                VEC_PUSH(fo, (grants_t.v[k] - x->t) / 1000);
                break;
            }
        }
    }
    printf("  heal -> first grant, all faults: p50 %lld ms, p99 %lld ms (n=%zu%s)\n",
           (long long)pct(all.v, all.n, 50), (long long)pct(all.v, all.n, 99), all.n,
           never ? ", some never: run ended" : "");
    printf("  leader fault (kill/pause/partition) -> first grant: p50 %lld ms, p99 %lld ms "
           "(n=%zu)\n", (long long)pct(fo.v, fo.n, 50), (long long)pct(fo.v, fo.n, 99), fo.n);
    printf("  longest time without a grant: %lld ms (from %.1f s)\n", (long long)(gap / 1000),
           (double)gap_at / 1e6);
    free(all.v);
    free(fo.v);
    free(grants_t.v);
    if (n_bg_voided_grants > 0) {
        printf("note: %ld acknowledged reservations were voided by libtally's background void "
               "after a resubmitted reserve of the same id timed out (docs/chaos.md)\n",
               n_bg_voided_grants);
    }
    if (n_stuck_spare > 0) {
        printf("note: %ld times a re-added node stayed a non-voter (its promotion was lost); "
               "the runner added it again, which promotes it\n",
               n_stuck_spare);
    }
    if (n_replay_after_extend > 0) {
        printf("note: %ld replayed reserves answered the expiry as extended since, not the "
               "stored grant's (docs/chaos.md)\n", n_replay_after_extend);
    }
    printf("violations: %ld", n_violations);
    for (int k = 0; k < n_vkinds; k++) {
        printf("%s %s %ld", k == 0 ? " (" : ",", vkinds[k].name, vkinds[k].count);
    }
    printf("%s\n", n_vkinds ? ")" : "");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: tally-chaos-check RUN_DIR\n");
        return 2;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/history.txt", argv[1]);
    if (read_history(path) != 0) {
        fprintf(stderr, "tally-chaos-check: %s is not a chaos history\n", path);
        return 2;
    }
    snprintf(path, sizeof(path), "%s/final.txt", argv[1]);
    read_final(path);
    long acked_grants = 0, acked_res = 0, unknown_committed = 0, placed = 0, unplaced = 0;
    int exit74 = 0;
    check_answers();
    check_records(&acked_grants, &acked_res, &unknown_committed);
    check_final_state();
    check_budgets(&placed, &unplaced);
    long minority_checked = check_minority();
    check_nodes(&exit74);
    check_recovery();
    summary(acked_grants, acked_res, unknown_committed, placed, unplaced, minority_checked,
            exit74);
    return n_violations == 0 ? 0 : 1;
}
