/*
 * reserve.c: the reserve command: finding the payer, checking every limit of the chain
 * leaf to root, and holding the estimate.
 *
 * The whole answer is computed first, on copies (a hold plan per account of the chain);
 * only a grant then changes anything, so a denial leaves no trace but its stored answer.
 */
#include "wire/wire.h"
#include "ledger/apply.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Reserve. ---- */

/* What a reserve would do to one account of its chain, computed before any change. */
struct hold_plan {
    struct acct_rec *acct;
    struct ledger_bucket rpm, tpm;
    bool has_model;
    struct model_rec model;
};

struct deny {
    uint8_t reason;
    uint64_t account_id;
    int64_t remaining;
    int64_t retry_after_ms;
};

static bool deny_set(struct deny *d, uint8_t reason, uint64_t account_id, int64_t remaining,
                     int64_t retry_after_ms)
{
    d->reason = reason;
    d->account_id = account_id;
    d->remaining = remaining < 0 ? 0 : remaining;
    d->retry_after_ms = retry_after_ms;
    return false;
}

/* Budget test: spent + held + estimate <= budget, without overflow. */
static bool budget_fits(int64_t budget, int64_t spent, int64_t held, int64_t estimate,
                        int64_t *remaining)
{
    /* I4 and reserve_validate: so `remaining` below cannot overflow. */
    assert(budget >= 0 && spent >= 0 && held >= 0 && estimate >= 0);
    int64_t used;
    if (__builtin_add_overflow(spent, held, &used) ||
        __builtin_add_overflow(used, estimate, &used) || used > budget) {
        *remaining = budget - spent - held;
        return false;
    }
    return true;
}

/* A rate bucket drained to now in *b; true if `cost` fits. */
static bool rate_fits(struct ledger_bucket *b, uint64_t rate, uint64_t burst, uint64_t cost,
                      int64_t now_ms, int64_t *remaining, int64_t *retry)
{
    ledger__bucket_drain(b, rate, now_ms);
    return ledger__bucket_fits(b, rate, burst, cost, remaining, retry);
}

static bool model_fits(const struct ledger_cmd *c, struct hold_plan *p, int64_t now_ms,
                       struct deny *d)
{
    struct model_rec *m = &p->model;
    const struct acct_rec *a = p->acct;
    int64_t remaining = 0, retry = 0;
    int64_t est = c->u.reserve.estimate_micros;
    int64_t spent = ledger__acct_period_start(a, now_ms) == m->period_start_ms ? m->spent_micros : 0;
    if ((m->lim_set & LEDGER_LIM_BUDGET) &&
        !budget_fits(m->budget_micros, spent, m->held_micros, est, &remaining)) {
        return deny_set(d, LEDGER_DENY_MODEL_BUDGET, a->id, remaining, 0);
    }
    if ((m->lim_set & LEDGER_LIM_RPM) &&
        !rate_fits(&m->rpm_bucket, m->rpm, m->rpm_burst, 1, now_ms, &remaining, &retry)) {
        return deny_set(d, LEDGER_DENY_MODEL_RPM, a->id, remaining, retry);
    }
    if ((m->lim_set & LEDGER_LIM_TPM) &&
        !rate_fits(&m->tpm_bucket, m->tpm, m->tpm_burst, c->u.reserve.estimate_tokens, now_ms,
                   &remaining, &retry)) {
        return deny_set(d, LEDGER_DENY_MODEL_TPM, a->id, remaining, retry);
    }
    return true;
}

/* Every check of docs/ledger.md, Reserve step 4, for one account. */
static bool account_fits(struct ledger *l, const struct ledger_cmd *c, struct hold_plan *p,
                         struct deny *d)
{
    struct acct_rec *a = p->acct;
    int64_t now = l->now_ms, remaining = 0, retry = 0;
    if (a->blocked) {
        return deny_set(d, LEDGER_DENY_BLOCKED, a->id, 0, 0);
    }
    if ((a->lim_set & LEDGER_LIM_EXPIRES) && now >= a->expires_at_ms) {
        return deny_set(d, LEDGER_DENY_EXPIRED, a->id, 0, 0);
    }
    if ((a->lim_set & LEDGER_LIM_PARALLEL) && a->inflight >= a->max_parallel) {
        return deny_set(d, LEDGER_DENY_PARALLEL, a->id, 0, 0);
    }
    if ((a->lim_set & LEDGER_LIM_BUDGET) &&
        !budget_fits(a->budget_micros, ledger__acct_spent_now(a, now), a->held_micros,
                     c->u.reserve.estimate_micros, &remaining)) {
        return deny_set(d, LEDGER_DENY_BUDGET, a->id, remaining, 0);
    }
    p->rpm = a->rpm_bucket;
    p->tpm = a->tpm_bucket;
    if ((a->lim_set & LEDGER_LIM_RPM) &&
        !rate_fits(&p->rpm, a->rpm, a->rpm_burst, 1, now, &remaining, &retry)) {
        return deny_set(d, LEDGER_DENY_RPM, a->id, remaining, retry);
    }
    if ((a->lim_set & LEDGER_LIM_TPM) &&
        !rate_fits(&p->tpm, a->tpm, a->tpm_burst, c->u.reserve.estimate_tokens, now, &remaining,
                   &retry)) {
        return deny_set(d, LEDGER_DENY_TPM, a->id, remaining, retry);
    }
    p->has_model = false;
    if (c->u.reserve.model[0] != '\0' && a->n_models > 0) {
        int found = ledger__model_get(l, a->id, c->u.reserve.model, &p->model);
        if (found < 0) {
            return false;
        }
        p->has_model = found == 1;
        if (p->has_model && !model_fits(c, p, now, d)) {
            return false;
        }
    }
    return true;
}

void ledger__resv_put(struct ledger *l, const uint8_t *id, const struct resv_rec *rec)
{
    ledger__db_put(l, DB_RESV, id, LEDGER_REQUEST_ID_SIZE, rec, ledger__resv_size(rec), 0);
}

/* 1 found (copied), 0 absent, -1 fatal. */
int ledger__resv_get(struct ledger *l, const uint8_t *id, struct resv_rec *out)
{
    MDB_val v;
    int rc = ledger__db_get(l, DB_RESV, id, LEDGER_REQUEST_ID_SIZE, &v);
    if (rc == 1 && ledger__resv_decode(&v, out) != 0) {
        ledger__failed(l, MDB_CORRUPTED);
        return -1;
    }
    return rc;
}

/* The stored answer of a reserve. */
static void reserve_answer(struct ledger *l, const struct resv_rec *rec, struct ledger_result *r)
{
    r->status = (int32_t)rec->status;
    r->flags |= (uint16_t)rec->flags;
    r->deny_reason = (uint8_t)rec->deny_reason;
    r->remaining = rec->remaining;
    r->retry_after_ms = rec->retry_after_ms;
    if (rec->status == LEDGER_OK) {
        r->expires_at_ms = rec->expires_at_ms;
    }
    ledger__result_account(l, r, rec->deny_account_id);
}

/* Store a reserve that was not granted, so a replay answers the same. */
static void reserve_reject(struct ledger *l, const struct ledger_cmd *c,
                           const struct ledger__fp *fp, int status, const struct deny *d,
                           struct ledger_result *r)
{
    struct resv_rec rec;
    memset(&rec, 0, sizeof(rec));
    rec.state = RESV_REJECTED;
    rec.created_ms = rec.resolved_ms = l->now_ms;
    rec.reserve_fp = *fp;
    rec.status = status;
    if (d != NULL) {
        rec.deny_reason = d->reason;
        rec.deny_account_id = d->account_id;
        rec.remaining = d->remaining;
        rec.retry_after_ms = d->retry_after_ms;
    }
    ledger__resv_put(l, c->request_id, &rec);
    ledger__timer_put(l, l->now_ms + l->work.retention_ms, c->request_id, 0);
    reserve_answer(l, &rec, r);
}

/* The leaf account a reserve names, or 0 with *status / *d set. */
static uint64_t reserve_leaf(struct ledger *l, const struct ledger_cmd *c, int *status,
                             struct deny *d)
{
    if (c->u.reserve.by_account) {
        uint64_t id = ledger__name_lookup(l, c->u.reserve.account);
        if (id == 0) {
            *status = -LEDGER_ENOTFOUND;
        }
        return id;
    }
    struct key_rec k;
    int found = ledger__key_get(l, c->u.reserve.key_hash, &k);
    if (found == 1 && !k.revoked) {
        return k.account_id;
    }
    *status = LEDGER_DENIED;
    deny_set(d, found == 1 ? LEDGER_DENY_KEY_REVOKED : LEDGER_DENY_UNKNOWN_KEY, 0, 0, 0);
    return 0;
}

/* Overflow checks of the hold, so that granting cannot fail half-way. */
static bool hold_fits(const struct hold_plan *plan, uint32_t n, int64_t estimate)
{
    int64_t x;
    for (uint32_t i = 0; i < n; i++) {
        if (__builtin_add_overflow(plan[i].acct->held_micros, estimate, &x) ||
            (plan[i].has_model && __builtin_add_overflow(plan[i].model.held_micros, estimate, &x))) {
            return false;
        }
    }
    return true;
}

void ledger__exec_reserve(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    struct ledger__fp fp = ledger__cmd_fingerprint(c);
    struct resv_rec rec;
    int found = ledger__resv_get(l, c->request_id, &rec);
    if (found != 0) {
        if (found == 1 && !ledger__fp_equal(&rec.reserve_fp, &fp)) {
            r->status = -LEDGER_ECONFLICT;
        } else if (found == 1) {
            if (rec.state == LEDGER_RESV_OPEN) {
                /* The client asked again: it will hear the answer, so it confirms the
                 * hold (ambiguous.c). */
                rec.confirmed_index = l->work.applied_index;
                ledger__resv_put(l, c->request_id, &rec);
            }
            reserve_answer(l, &rec, r);
            r->flags |= LEDGER_RESULT_REPLAYED;
        }
        return;
    }
    int status = ledger_cmd_check(c, NULL);
    struct deny d = {0};
    if (status != 0) {
        reserve_reject(l, c, &fp, status, NULL, r);
        return;
    }
    uint64_t leaf = reserve_leaf(l, c, &status, &d);
    if (leaf == 0) {
        if (!l->fatal) {
            reserve_reject(l, c, &fp, status, status == LEDGER_DENIED ? &d : NULL, r);
        }
        return;
    }
    uint64_t ids[LEDGER_DEPTH_MAX];
    struct acct_rec *recs[LEDGER_DEPTH_MAX];
    struct hold_plan plan[LEDGER_DEPTH_MAX];
    uint32_t n = ledger__chain_load(l, leaf, ids, recs);
    for (uint32_t i = 0; i < n; i++) {
        plan[i].acct = recs[i];
        if (!account_fits(l, c, &plan[i], &d)) {
            if (!l->fatal) {
                reserve_reject(l, c, &fp, LEDGER_DENIED, &d, r);
            }
            return;
        }
    }
    if (l->fatal) {
        return;
    }
    assert(n >= 1 && n <= LEDGER_DEPTH_MAX && "I6: the leaf exists, its chain is bounded");
    int64_t est = c->u.reserve.estimate_micros;
    if (!hold_fits(plan, n, est)) {
        reserve_reject(l, c, &fp, -LEDGER_EOVERFLOW, NULL, r);
        return;
    }
    struct ledger__chain ch = {.rec = &rec, .n = n};
    for (uint32_t i = 0; i < n; i++) {
        ch.acct[i] = plan[i].acct;
        ch.model[i] = plan[i].has_model ? &plan[i].model : NULL;
    }
    ledger__chain_mark(&ch);

    memset(&rec, 0, sizeof(rec));
    rec.state = LEDGER_RESV_OPEN;
    rec.chain_len = n;
    rec.estimate_micros = est;
    rec.estimate_tokens = c->u.reserve.estimate_tokens;
    rec.created_ms = l->now_ms;
    rec.created_index = l->work.applied_index;
    rec.expires_at_ms = l->now_ms + c->u.reserve.ttl_ms;
    rec.reserve_fp = fp;
    rec.status = LEDGER_OK;
    rec.model_len = strlen(c->u.reserve.model);
    memcpy(rec.model, c->u.reserve.model, rec.model_len);
    rec.metadata_len = c->u.reserve.metadata_len;
    memcpy(rec.metadata, c->u.reserve.metadata, rec.metadata_len);
    for (uint32_t i = 0; i < n; i++) {
        struct acct_rec *a = plan[i].acct;
        rec.chain[i] = ids[i];
        ledger__acct_roll(a, l->now_ms);
        a->held_micros += est;
        a->inflight++;
        if (a->lim_set & LEDGER_LIM_RPM) {
            a->rpm_bucket = plan[i].rpm;
            ledger__bucket_take(&a->rpm_bucket, 1);
        }
        if (a->lim_set & LEDGER_LIM_TPM) {
            a->tpm_bucket = plan[i].tpm;
            ledger__bucket_take(&a->tpm_bucket, rec.estimate_tokens);
        }
        int64_t used;
        if ((a->lim_set & LEDGER_LIM_SOFT_BUDGET) &&
            (__builtin_add_overflow(a->spent_micros, a->held_micros, &used) ||
             used > a->soft_budget_micros)) {
            rec.flags |= LEDGER_RESULT_SOFT_BUDGET;
        }
        ledger__acct_dirty(a);
        if (plan[i].has_model) {
            struct model_rec *m = &plan[i].model;
            rec.model_mask |= 1u << i;
            ledger__model_roll(m, a, l->now_ms);
            m->held_micros += est;
            m->inflight++;
            if (m->lim_set & LEDGER_LIM_RPM) {
                ledger__bucket_take(&m->rpm_bucket, 1);
            }
            if (m->lim_set & LEDGER_LIM_TPM) {
                ledger__bucket_take(&m->tpm_bucket, rec.estimate_tokens);
            }
            ledger__model_put(l, a->id, c->u.reserve.model, m);
        }
    }
    ledger__chain_assert_invariants(&ch, LEDGER__CHAIN_GRANT, l->now_ms);
    ledger__resv_put(l, c->request_id, &rec);
    ledger__timer_put(l, rec.expires_at_ms, c->request_id, 0);
    reserve_answer(l, &rec, r);
}
