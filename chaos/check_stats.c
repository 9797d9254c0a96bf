/*
 * check_stats.c: tally-chaos-check's availability figures: the share of operations that
 * got no definite answer, the time from each heal (and from each fault on the leader) to
 * the next grant, and the longest time without a grant. They are figures, not rules: a
 * slow failover is reported, never a violation (ck_recovery() in check_safety.c only asks
 * that the cluster grants again at the end).
 *
 * One idea behind the shape: every figure is measured from one sorted list, the
 * completion times of the grants (final replays left out).
 */
#define _GNU_SOURCE
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ck_i64_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t pct(int64_t *v, size_t n, int p)
{
    if (n == 0) {
        return -1;
    }
    qsort(v, n, sizeof(*v), ck_i64_cmp);
    size_t k = (n * (size_t)p + 99) / 100;
    return v[k > 0 ? k - 1 : 0];
}

void ck_print_availability(long total, long unavailable, int64_t last_t)
{
    CK_VEC(int64_t) grants_t = {0};
    for (size_t i = 0; i < ck_ops.n; i++) {
        if (!ck_ops.v[i].final && ck_ops.v[i].kind == CK_OP_RESERVE &&
            ck_ops.v[i].outcome == CK_OC_OK) {
            CK_VEC_PUSH(grants_t, ck_ops.v[i].t_done);
        }
    }
    if (grants_t.n > 0) {
        qsort(grants_t.v, grants_t.n, sizeof(*grants_t.v), ck_i64_cmp);
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
    CK_VEC(int64_t) all = {0};
    CK_VEC(int64_t) fo = {0};
    int never = 0;
    for (int k = -1; k < 6; k++) {
        CK_VEC(int64_t) d = {0};
        for (size_t e = 0; e < ck_nems.n; e++) {
            struct ck_nem *x = &ck_nems.v[e];
            bool heal = strcmp(x->event, "heal") == 0 || strcmp(x->event, "heal-all") == 0;
            if (!heal || (k >= 0 && strcmp(x->kind, ck_fault_kinds[k]) != 0) ||
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
                CK_VEC_PUSH(d, (grants_t.v[lo] - x->t) / 1000);
                CK_VEC_PUSH(all, (grants_t.v[lo] - x->t) / 1000);
            } else {
                never++;
            }
        }
        if (k >= 0 && d.n > 0) {
            printf("  heal -> first grant after %-9s p50 %5lld ms  p99 %5lld ms  max %5lld ms "
                   "(n=%zu)\n",
                   ck_fault_kinds[k], (long long)pct(d.v, d.n, 50), (long long)pct(d.v, d.n, 99),
                   (long long)pct(d.v, d.n, 100), d.n);
        }
        free(d.v);
    }
    /* fault on the leader -> first grant (failover) for kill, pause, partition */
    for (size_t e = 0; e < ck_nems.n; e++) {
        struct ck_nem *x = &ck_nems.v[e];
        if (strcmp(x->event, "fault") != 0 || x->d != 1 ||
            (strcmp(x->kind, "kill") != 0 && strcmp(x->kind, "pause") != 0 &&
             strcmp(x->kind, "partition") != 0)) {
            continue;
        }
        for (size_t k = 0; k < grants_t.n; k++) {
            if (grants_t.v[k] > x->t) {
                CK_VEC_PUSH(fo, (grants_t.v[k] - x->t) / 1000);
                break;
            }
        }
    }
    printf("  heal -> first grant, all faults: p50 %lld ms, p99 %lld ms (n=%zu%s)\n",
           (long long)pct(all.v, all.n, 50), (long long)pct(all.v, all.n, 99), all.n,
           never ? ", some never: run ended" : "");
    printf("  leader fault (kill/pause/partition) -> first grant: p50 %lld ms, p99 %lld ms "
           "(n=%zu)\n",
           (long long)pct(fo.v, fo.n, 50), (long long)pct(fo.v, fo.n, 99), fo.n);
    printf("  longest time without a grant: %lld ms (from %.1f s)\n", (long long)(gap / 1000),
           (double)gap_at / 1e6);
    free(all.v);
    free(fo.v);
    free(grants_t.v);
}
