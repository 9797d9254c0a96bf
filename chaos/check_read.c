/*
 * check_read.c: tally-chaos-check's reading of a run directory. history.txt becomes the
 * accounts (acct lines), the nodes, the completions (C lines; invocations are not needed)
 * and the node events and faults (N lines); final.txt adds each node's hash, status and
 * accounts, every request id's record on every node, and the journal's resolutions.
 *
 * One idea behind the shape: request ids are interned once, in a hash table of indices
 * into ck_ids, so every later pass refers to an id by number and the per-id facts
 * (answers, records, journal counts) live in one entry.
 */
#define _GNU_SOURCE
#include "check.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const ck_op_names[CK_OP_KINDS] = {"reserve", "settle", "void", "extend"};
const char *const ck_oc_names[CK_OC_KINDS] = {"ok", "denied", "error", "unavailable", "timeout"};
const char *const ck_rec_names[5] = {"open", "settled", "voided", "expired", "late"};
const char *const ck_fault_kinds[6] = {"kill", "pause", "partition", "disk", "clock", "member"};

struct ck_account ck_accts[CK_ACCTS_MAX];
int ck_n_accts;
struct ck_op_vec ck_ops;
struct ck_idinfo_vec ck_ids;
struct ck_nem_vec ck_nems;
int ck_node_ids[CK_NODES];
char ck_enabled_kinds[8][16];
int ck_n_enabled;
uint64_t ck_seed;
int64_t ck_duration_s;
struct ck_final ck_fin;

/* id -> index, open addressing */
static uint32_t *slots;
static size_t n_slots;

/* ---- Parsing helpers. ---- */

static int acct_index(const char *name)
{
    for (int i = 0; i < ck_n_accts; i++) {
        if (strcmp(ck_accts[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

static int node_index(int id)
{
    for (int i = 0; i < CK_NODES; i++) {
        if (ck_node_ids[i] == id) {
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
    for (size_t i = 0; i < ck_ids.n; i++) {
        size_t k = id_hash(ck_ids.v[i].id) & (n - 1);
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
    if (n_slots == 0 || ck_ids.n * 2 >= n_slots) {
        slots_grow();
    }
    size_t k = id_hash(id) & (n_slots - 1);
    while (slots[k] != UINT32_MAX) {
        if (memcmp(ck_ids.v[slots[k]].id, id, 16) == 0) {
            return slots[k];
        }
        k = (k + 1) & (n_slots - 1);
    }
    if (!create) {
        return -1;
    }
    struct ck_idinfo info;
    memset(&info, 0, sizeof(info));
    memcpy(info.id, id, 16);
    snprintf(info.hex, sizeof(info.hex), "%s", hex);
    info.leaf = -1;
    info.only_unsent = true;
    for (int i = 0; i < CK_NODES; i++) {
        info.rec[i].state = CK_R_MISSING;
    }
    CK_VEC_PUSH(ck_ids, info);
    slots[k] = (uint32_t)(ck_ids.n - 1);
    return (int64_t)(ck_ids.n - 1);
}

static int op_kind(const char *s)
{
    for (int i = 0; i < CK_OP_KINDS; i++) {
        if (strcmp(s, ck_op_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

static int outcome_of(const char *s)
{
    for (int i = 0; i < CK_OC_KINDS; i++) {
        if (strcmp(s, ck_oc_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

static int rec_state_of(const char *s)
{
    for (int i = 0; i < 5; i++) {
        if (strcmp(s, ck_rec_names[i]) == 0) {
            return i;
        }
    }
    return strcmp(s, "notfound") == 0 ? CK_R_NOTFOUND : CK_R_ERROR;
}

/* ---- Reading the history. ---- */

int ck_read_history(const char *path)
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
        int n = sscanf(line,
                       "%159s %159s %159s %159s %159s %159s %159s %159s %159s %159s %159s "
                       "%159s %159s %159s %159s %159s %159s %159s %159s %159s",
                       w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11],
                       w[12], w[13], w[14], w[15], w[16], w[17], w[18], w[19]);
        if (n <= 0 || w[0][0] == '#') {
            continue;
        }
        if (strcmp(w[0], "C") == 0 && n == 20) {
            struct ck_op o;
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
            CK_VEC_PUSH(ck_ops, o);
        } else if (strcmp(w[0], "I") == 0) {
            continue;
        } else if (strcmp(w[0], "N") == 0 && n >= 3) {
            struct ck_nem e;
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
            CK_VEC_PUSH(ck_nems, e);
        } else if (strcmp(w[0], "acct") == 0 && n == 8 && ck_n_accts < CK_ACCTS_MAX) {
            struct ck_account *a = &ck_accts[ck_n_accts];
            memset(a, 0, sizeof(*a));
            snprintf(a->name, sizeof(a->name), "%.128s", w[1]);
            a->parent = strcmp(w[2], "-") == 0 ? -1 : acct_index(w[2]);
            a->budget = strtoll(w[3], NULL, 10);
            a->max_parallel = strtoll(w[4], NULL, 10);
            a->rpm = strtoll(w[5], NULL, 10);
            a->burst = strtoll(w[6], NULL, 10);
            a->release = strcmp(w[7], "release") == 0;
            ck_n_accts++;
        } else if (strcmp(w[0], "node") == 0 && n == 3 && n_nodes < CK_NODES) {
            ck_node_ids[n_nodes++] = atoi(w[1]);
        } else if (strcmp(w[0], "seed") == 0) {
            ck_seed = strtoull(w[1], NULL, 10);
        } else if (strcmp(w[0], "duration_s") == 0) {
            ck_duration_s = strtoll(w[1], NULL, 10);
        } else if (strcmp(w[0], "start_wall_ms") == 0 || strcmp(w[0], "nemesis") == 0) {
            if (strcmp(w[0], "nemesis") == 0 && n == 2 && ck_n_enabled < 8) {
                snprintf(ck_enabled_kinds[ck_n_enabled++], 16, "%.15s", w[1]);
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
    return n_nodes == CK_NODES ? 0 : -1;
}

/* ---- Reading the final state. ---- */

int ck_read_final(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    ck_fin.present = true;
    char line[4096];
    while (fgets(line, sizeof(line), f) != NULL) {
        char w[16][160];
        int n = sscanf(line,
                       "%159s %159s %159s %159s %159s %159s %159s %159s %159s %159s %159s "
                       "%159s %159s %159s %159s %159s",
                       w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11],
                       w[12], w[13], w[14], w[15]);
        if (n <= 0) {
            continue;
        }
        if (strcmp(w[0], "converged") == 0 && n >= 4) {
            ck_fin.converged = atoi(w[1]);
            ck_fin.applied = strtoull(w[2], NULL, 10);
            snprintf(ck_fin.hash, sizeof(ck_fin.hash), "%.64s", w[3]);
        } else if (strcmp(w[0], "H") == 0 && n >= 4) {
            int ni = node_index(atoi(w[1]));
            if (ni >= 0) {
                ck_fin.h_applied[ni] = strtoull(w[2], NULL, 10);
                snprintf(ck_fin.h_hash[ni], 65, "%.64s", w[3]);
            }
        } else if (strcmp(w[0], "S") == 0 && n >= 3) {
            int ni = node_index(atoi(w[1]));
            if (ni >= 0 && strcmp(w[2], "down") != 0 && n >= 8) {
                ck_fin.s_up[ni] = true;
                ck_fin.s_members[ni] = (uint32_t)atoi(w[7]);
                for (int k = 8; k < n; k++) {
                    ck_fin.s_voters[ni] += strstr(w[k], ":voter") != NULL;
                }
            }
        } else if (strcmp(w[0], "A") == 0 && n >= 4) {
            int ni = node_index(atoi(w[1]));
            int ai = acct_index(w[2]);
            if (ni >= 0 && ai >= 0 && n >= 6 && strcmp(w[3], "error") != 0) {
                ck_accts[ai].spent[ni] = strtoll(w[3], NULL, 10);
                ck_accts[ai].held[ni] = strtoll(w[4], NULL, 10);
                ck_accts[ai].inflight[ni] = strtoll(w[5], NULL, 10);
                ck_accts[ai].have[ni] = true;
            }
        } else if (strcmp(w[0], "R") == 0 && n >= 4) {
            int ni = node_index(atoi(w[1]));
            int64_t id = id_find(w[2], false);
            if (ni < 0 || id < 0) {
                continue;
            }
            struct ck_rec *r = &ck_ids.v[id].rec[ni];
            r->state = rec_state_of(w[3]);
            if (r->state >= 0 && n >= 9) {
                r->leaf = acct_index(w[4]);
                r->est = strtoll(w[5], NULL, 10);
                r->created = strtoll(w[6], NULL, 10);
                r->expires = strtoll(w[7], NULL, 10);
                r->charged = strtoll(w[8], NULL, 10);
            }
            ck_fin.n_records++;
        } else if (strcmp(w[0], "J") == 0 && n >= 8) {
            ck_fin.n_journal++;
            uint64_t seq = strtoull(w[1], NULL, 10);
            const char *kind = w[3];
            int ai = acct_index(w[4]);
            int64_t amount = strtoll(w[6], NULL, 10);
            bool charge = strcmp(kind, "charge") == 0 || strcmp(kind, "expire-charge") == 0 ||
                          strcmp(kind, "correction") == 0;
            if (ai >= 0 && charge) {
                ck_accts[ai].j_spent += amount;
            }
            int64_t id = id_find(w[5], false);
            if (id < 0) {
                continue;
            }
            struct ck_idinfo *d = &ck_ids.v[id];
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
            ck_fin.journal_error = true;
        }
    }
    fclose(f);
    return 0;
}
