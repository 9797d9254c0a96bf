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
 *
 * The parts (check.h): check_read.c reads the two files, check_safety.c checks rules 1-5,
 * 7 and 8, check_limits.c rule 6, check_stats.c computes the availability figures; this
 * file keeps the violations, prints the summary and decides the exit status.
 */
#define _GNU_SOURCE
#include "check.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHOW_MAX 8 /* examples printed per violation kind */

/* ---- Violations. ---- */

struct vkind {
    const char *name;
    long count;
};
static struct vkind vkinds[64];
static int n_vkinds;
static long n_violations;

__attribute__((format(printf, 2, 3))) void ck_violation(const char *kind, const char *fmt, ...)
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

/* ---- Summary. ---- */

static void summary(long acked_grants, long acked_res, long unknown_committed, long placed,
                    long unplaced, long minority_checked, int exit74)
{
    long by[CK_OP_KINDS][CK_OC_KINDS] = {{0}};
    long total = 0, resub = 0, finals = 0, unavailable = 0;
    int64_t first_t = INT64_MAX, last_t = 0;
    for (size_t i = 0; i < ck_ops.n; i++) {
        struct ck_op *o = &ck_ops.v[i];
        if (o->final) {
            finals++;
            continue;
        }
        total++;
        by[o->kind][o->outcome]++;
        resub += o->resub;
        unavailable += o->outcome == CK_OC_UNAVAILABLE || o->outcome == CK_OC_TIMEOUT;
        first_t = o->t_inv < first_t ? o->t_inv : first_t;
        last_t = o->t_done > last_t ? o->t_done : last_t;
    }
    printf("\n== tally chaos summary (seed %llu, %lld s) ==\n", (unsigned long long)ck_seed,
           (long long)ck_duration_s);
    printf("operations: %ld (%.0f/s), %ld of them resubmissions; %ld final replays\n", total,
           last_t > first_t ? (double)total / ((double)(last_t - first_t) / 1e6) : 0.0, resub,
           finals);
    for (int k = 0; k < CK_OP_KINDS; k++) {
        printf("  %-8s", ck_op_names[k]);
        for (int c = 0; c < CK_OC_KINDS; c++) {
            printf(" %s %ld", ck_oc_names[c], by[k][c]);
        }
        printf("\n");
    }
    /* faults by kind */
    printf("faults:");
    int total_faults = 0;
    for (int k = 0; k < 6; k++) {
        int n = 0, lead = 0;
        for (size_t e = 0; e < ck_nems.n; e++) {
            if (strcmp(ck_nems.v[e].event, "fault") == 0 &&
                strcmp(ck_nems.v[e].kind, ck_fault_kinds[k]) == 0) {
                n++;
                lead += ck_nems.v[e].d;
            }
        }
        total_faults += n;
        printf(" %s %d (leader %d)%s", ck_fault_kinds[k], n, lead, k < 5 ? "," : "");
    }
    printf("; %d in all\n", total_faults);
    if (ck_n_enabled > 0 && ck_n_enabled < 6) {
        printf("  (this run injected only:");
        for (int k = 0; k < ck_n_enabled; k++) {
            printf(" %s", ck_enabled_kinds[k]);
        }
        printf(")\n");
    }
    static const char *const parts[] = {"isolate-leader", "isolate", "bridge", "link-down"};
    printf("  partitions:");
    for (int k = 0; k < 4; k++) {
        int n = 0;
        for (size_t e = 0; e < ck_nems.n; e++) {
            n += strcmp(ck_nems.v[e].event, "fault") == 0 &&
                 strcmp(ck_nems.v[e].kind, "partition") == 0 &&
                 strcmp(ck_nems.v[e].a, parts[k]) == 0;
        }
        printf(" %s %d", parts[k], n);
    }
    int survived = 0;
    for (size_t e = 0; e < ck_nems.n; e++) {
        survived += strcmp(ck_nems.v[e].event, "heal") == 0 &&
                    strcmp(ck_nems.v[e].kind, "disk") == 0 &&
                    strcmp(ck_nems.v[e].a, "survived") == 0;
    }
    printf("; full disks: %d stopped with exit 74, %d kept running\n", exit74, survived);
    printf("checked: %ld acknowledged grants and %ld acknowledged settles/voids against the "
           "records of %ld reservations on %d nodes; %ld unacknowledged reserves that "
           "committed; %ld journal entries; %ld grants during partitions\n",
           acked_grants, acked_res, (long)ck_ids.n, CK_NODES, unknown_committed, ck_fin.n_journal,
           minority_checked);
    printf("  index order: %ld reservations placed, %ld could not be (never acknowledged, no "
           "later grant to bound them)\n",
           placed, unplaced);
    printf("  closest approach (lower bound of spent+held / budget; open at once / "
           "max_parallel):\n");
    for (int a = 0; a < ck_n_accts; a++) {
        if (ck_accts[a].budget < 0 && ck_accts[a].max_parallel < 0) {
            continue;
        }
        printf("    %-10s", ck_accts[a].name);
        if (ck_accts[a].budget >= 0) {
            printf(" budget %5.1f%%", 100.0 * ck_accts[a].closest);
        } else {
            printf(" %14s", "");
        }
        if (ck_accts[a].max_parallel >= 0) {
            printf("  parallel %lld/%lld", (long long)ck_accts[a].closest_par,
                   (long long)ck_accts[a].max_parallel);
        }
        printf("  final spent %lld held %lld\n", (long long)ck_accts[a].m_spent,
               (long long)ck_accts[a].m_held);
    }
    ck_print_availability(total, unavailable, last_t);
    if (ck_n_bg_voided_grants > 0) {
        printf("note: %ld acknowledged reservations were voided by libtally's background void "
               "after a resubmitted reserve of the same id timed out (docs/chaos.md)\n",
               ck_n_bg_voided_grants);
    }
    if (ck_n_stuck_spare > 0) {
        printf("note: %ld times a re-added node stayed a non-voter (its promotion was lost); "
               "the runner added it again, which promotes it\n",
               ck_n_stuck_spare);
    }
    if (ck_n_replay_after_extend > 0) {
        printf("note: %ld replayed reserves answered the expiry as extended since, not the "
               "stored grant's (docs/chaos.md)\n",
               ck_n_replay_after_extend);
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
    if (ck_read_history(path) != 0) {
        fprintf(stderr, "tally-chaos-check: %s is not a chaos history\n", path);
        return 2;
    }
    snprintf(path, sizeof(path), "%s/final.txt", argv[1]);
    ck_read_final(path);
    long acked_grants = 0, acked_res = 0, unknown_committed = 0, placed = 0, unplaced = 0;
    int exit74 = 0;
    ck_answers();
    ck_records(&acked_grants, &acked_res, &unknown_committed);
    ck_final_state();
    ck_limits(&placed, &unplaced);
    long minority_checked = ck_minority_grants();
    ck_node_exits(&exit74);
    ck_recovery();
    summary(acked_grants, acked_res, unknown_committed, placed, unplaced, minority_checked, exit74);
    return n_violations == 0 ? 0 : 1;
}
