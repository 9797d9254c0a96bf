/*
 * check_limits.c: tally-chaos-check's rule 6, no limit exceeded. The ledger's own
 * invariant checks see one replica at one moment; this replays the whole run in Raft-index
 * order from outside: a lower bound of spent + held never exceeds an account's budget, a
 * lower bound of its open reservations never exceeds its max_parallel, after any index;
 * and the grant times of an account with an rpm limit fit its GCRA bucket.
 *
 * One idea behind the shape: only lower bounds. An index is known exactly only from a
 * fresh answer; everything else (an unacknowledged grant, an expiry, a resolution) counts
 * only from where it certainly holds, so a bound above a limit means the limit was
 * exceeded, whatever the unknown indices were.
 */
#define _GNU_SOURCE
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether account `acct` is leaf or one of its ancestors. */
static bool in_chain(int leaf, int acct)
{
    for (int a = leaf, depth = 0; a >= 0 && depth < CK_LEAF_CHAIN_MAX;
         a = ck_accts[a].parent, depth++) {
        if (a == acct) {
            return true;
        }
    }
    return false;
}

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

/*
 * The lower-bound events of one reservation with record r, granted at index g (exact, or
 * only known to be at most g): what it certainly holds or has been charged after each
 * index. Its resolution index is known only from a fresh settle/void answer (rx); an
 * expiry's index is never known. Money is the estimate while certainly open, the final
 * charge once certainly resolved (never more than the estimate: no overruns), and the
 * smaller of what it may be in between; a slot counts only while certainly open.
 */
static void add_events(struct ev_vec *evs, uint32_t i, const struct ck_idinfo *d,
                       const struct ck_rec *r, uint64_t g, bool g_exact, bool release)
{
    int64_t est = r->est;
    uint64_t rx = d->r_exact && ((d->r_kind == CK_OP_SETTLE && d->settle_ok) ||
                                 (d->r_kind == CK_OP_VOID && d->void_ok))
                      ? d->r_exact
                      : 0;
    bool open_until_rx = rx > g; /* granted by g, resolved at rx: open in between */
#define EV(at, money, slots)                                                                       \
    do {                                                                                           \
        struct ev e_ = {(at), (money), (slots), i};                                                \
        CK_VEC_PUSH(*evs, e_);                                                                     \
    } while (0)
    switch (r->state) {
    case CK_R_OPEN: /* open at the end, granted by g: open from g on */
        EV(g, est, 1);
        break;
    case CK_R_SETTLED:
    case CK_R_VOIDED:
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
    case CK_R_EXPIRED: /* charge policy: the estimate throughout; release: 0 after expiry */
        if (g_exact) {
            EV(g, est, 1);
            EV(g + 1, r->charged - est, -1);
        } else {
            EV(g, r->charged, 0);
        }
        break;
    default:            /* late: expired at an unknown index, then settled or voided (at rx) */
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

void ck_limits(long *n_placed, long *n_unplaced)
{
    /* Exact grants give (grant time, index) pairs, both non-decreasing in log order: a
     * grant stamped later than t was made at a later index than anything stamped t. */
    CK_VEC(struct stamp) st = {0};
    for (size_t i = 0; i < ck_ids.n; i++) {
        struct ck_idinfo *d = &ck_ids.v[i];
        if (d->g_exact != 0) {
            struct stamp s = {d->grant_expires - d->ttl, d->g_exact};
            CK_VEC_PUSH(st, s);
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
    for (int a = 0; a < ck_n_accts; a++) {
        struct ck_account *ac = &ck_accts[a];
        if (ac->budget < 0 && ac->max_parallel < 0) {
            continue;
        }
        struct ev_vec evs = {0};
        for (size_t i = 0; i < ck_ids.n; i++) {
            struct ck_idinfo *d = &ck_ids.v[i];
            const struct ck_rec *r = ck_record_of(d);
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
            add_events(&evs, (uint32_t)i, d, r, g, d->g_exact != 0, ck_accts[r->leaf].release);
        }
        if (evs.n > 0) {
            qsort(evs.v, evs.n, sizeof(*evs.v), ev_cmp);
        }
        /* CHAOS_CHECK_TRACE=ACCOUNT:INDEX lists what the bound counts there. */
        const char *trace = getenv("CHAOS_CHECK_TRACE");
        size_t name_len = strlen(ac->name);
        if (trace != NULL && strncmp(trace, ac->name, name_len) == 0 && trace[name_len] == ':') {
            uint64_t at = strtoull(trace + name_len + 1, NULL, 10);
            for (size_t i = 0; i < ck_ids.n; i++) {
                int64_t money = 0, open_slots = 0;
                for (size_t k = 0; k < evs.n && evs.v[k].index <= at; k++) {
                    if (evs.v[k].id == i) {
                        money += evs.v[k].money;
                        open_slots += evs.v[k].slots;
                    }
                }
                if (money != 0 || open_slots != 0) {
                    const struct ck_rec *r = ck_record_of(&ck_ids.v[i]);
                    printf("trace %s@%llu: %s money %lld slots %lld (g %llu/%llu r %llu, %s)\n",
                           ac->name, (unsigned long long)at, ck_ids.v[i].hex, (long long)money,
                           (long long)open_slots, (unsigned long long)ck_ids.v[i].g_exact,
                           (unsigned long long)ck_ids.v[i].g_ub,
                           (unsigned long long)ck_ids.v[i].r_exact,
                           r != NULL && r->state >= 0 ? ck_rec_names[r->state] : "none");
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
                ck_violation("overspend",
                             "%s: at Raft index %llu at least %lld is spent or held; "
                             "the budget is %lld",
                             ac->name, (unsigned long long)evs.v[k].index, (long long)money,
                             (long long)ac->budget);
                reported_b = true;
            }
            if (ac->max_parallel >= 0 && slots_ > ac->max_parallel && !reported_p) {
                ck_violation("over-parallel",
                             "%s: at Raft index %llu at least %lld reservations "
                             "are open; max_parallel is %lld",
                             ac->name, (unsigned long long)evs.v[k].index, (long long)slots_,
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
    for (int a = 0; a < ck_n_accts; a++) {
        struct ck_account *ac = &ck_accts[a];
        if (ac->rpm < 0) {
            continue;
        }
        CK_VEC(int64_t) ts = {0};
        for (size_t i = 0; i < ck_ids.n; i++) {
            const struct ck_rec *r = ck_record_of(&ck_ids.v[i]);
            if (r != NULL && r->state >= 0 && r->leaf >= 0 && in_chain(r->leaf, a)) {
                CK_VEC_PUSH(ts, r->created);
            }
        }
        if (ts.n > 0) {
            qsort(ts.v, ts.n, sizeof(*ts.v), ck_i64_cmp);
        }
        int64_t burst = ac->burst > 0 ? ac->burst : ac->rpm;
        /* min over i <= j of (i*60000 - t_i*rpm) must be >= (j+1)*60000 - t_j*rpm - burst*60000 */
        __int128 best = 0;
        for (size_t j = 0; j < ts.n; j++) {
            __int128 vi = (__int128)j * 60000 - (__int128)ts.v[j] * ac->rpm;
            if (j == 0 || vi < best) {
                best = vi;
            }
            __int128 need =
                (__int128)(j + 1) * 60000 - (__int128)ts.v[j] * ac->rpm - (__int128)burst * 60000;
            if (best < need) {
                ck_violation("over-rate",
                             "%s: grant %zu at ledger time %lld exceeds rpm %lld with "
                             "burst %lld",
                             ac->name, j, (long long)ts.v[j], (long long)ac->rpm, (long long)burst);
                break;
            }
        }
        free(ts.v);
    }
}
