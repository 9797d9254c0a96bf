/*
 * resolve.c: what ends or stretches a reservation: settle, void, extend, expiry, and the
 * corrections of a settle or void that arrives after the reservation expired; and the
 * timers that drive expiry and the pruning of stored answers.
 *
 * A resolution releases the hold on every account of the chain it was granted on and
 * charges what is due, in one pass; the chain's invariants are asserted afterwards.
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

/* ---- Resolving a reservation: settle, void, expiry, late corrections. ---- */

/* The chain of a stored reservation, with its model records. */
struct resolve_ctx {
    struct resv_rec *rec;
    const uint8_t *request_id;
    const char *actor;
    struct acct_rec *acct[LEDGER_DEPTH_MAX];
    struct model_rec model[LEDGER_DEPTH_MAX];
    char model_name[LEDGER_MODEL_MAX + 1];
    struct ledger__chain chain; /* the records above, marked as loaded */
};

static bool resolve_load(struct ledger *l, struct resolve_ctx *x)
{
    ledger__copy_name(x->model_name, x->rec->model, x->rec->model_len, LEDGER_MODEL_MAX);
    for (uint32_t i = 0; i < x->rec->chain_len; i++) {
        x->acct[i] = ledger__acct_load(l, x->rec->chain[i]);
        if (x->acct[i] == NULL) {
            ledger__failed(l, MDB_CORRUPTED);
            return false;
        }
        if ((x->rec->model_mask & (1u << i)) &&
            ledger__model_get(l, x->rec->chain[i], x->model_name, &x->model[i]) != 1) {
            ledger__failed(l, MDB_CORRUPTED);
            return false;
        }
        x->chain.acct[i] = x->acct[i];
        x->chain.model[i] = (x->rec->model_mask & (1u << i)) ? &x->model[i] : NULL;
    }
    x->chain.rec = x->rec;
    x->chain.n = (uint32_t)x->rec->chain_len;
    ledger__chain_mark(&x->chain);
    return true;
}

static void resolve_store(struct ledger *l, struct resolve_ctx *x)
{
    for (uint32_t i = 0; i < x->rec->chain_len; i++) {
        ledger__acct_dirty(x->acct[i]);
        if (x->rec->model_mask & (1u << i)) {
            ledger__model_put(l, x->rec->chain[i], x->model_name, &x->model[i]);
        }
    }
    ledger__resv_put(l, x->request_id, x->rec);
}

static void release_holds(struct resolve_ctx *x)
{
    for (uint32_t i = 0; i < x->rec->chain_len; i++) {
        struct acct_rec *a = x->acct[i];
        assert(a->held_micros >= x->rec->estimate_micros && a->inflight > 0); /* I1 */
        a->held_micros -= x->rec->estimate_micros;
        a->inflight--;
        if (x->rec->model_mask & (1u << i)) {
            assert(x->model[i].held_micros >= x->rec->estimate_micros &&
                   x->model[i].inflight > 0); /* I2 */
            x->model[i].held_micros -= x->rec->estimate_micros;
            x->model[i].inflight--;
        }
    }
}

/* Correct the tpm buckets by `delta_tokens` (debt if positive, refund if negative). */
static void adjust_tpm(struct ledger *l, struct resolve_ctx *x, int64_t delta_tokens)
{
    for (uint32_t i = 0; i < x->rec->chain_len && delta_tokens != 0; i++) {
        struct acct_rec *a = x->acct[i];
        if (a->lim_set & LEDGER_LIM_TPM) {
            ledger__bucket_drain(&a->tpm_bucket, a->tpm, l->now_ms);
            ledger__bucket_adjust(&a->tpm_bucket, delta_tokens);
        }
        struct model_rec *m = &x->model[i];
        if ((x->rec->model_mask & (1u << i)) && (m->lim_set & LEDGER_LIM_TPM)) {
            ledger__bucket_drain(&m->tpm_bucket, m->tpm, l->now_ms);
            ledger__bucket_adjust(&m->tpm_bucket, delta_tokens);
        }
    }
}

/* Charging can overflow only with absurd totals; checked before anything changes. */
static bool charge_fits(struct resolve_ctx *x, int64_t amount)
{
    int64_t v;
    for (uint32_t i = 0; i < x->rec->chain_len; i++) {
        const struct acct_rec *a = x->acct[i];
        if (__builtin_add_overflow(a->spent_micros, amount, &v) ||
            __builtin_add_overflow(a->lifetime_spent_micros, amount, &v) ||
            __builtin_add_overflow(a->overrun_micros, amount, &v)) {
            return false;
        }
        if ((x->rec->model_mask & (1u << i)) &&
            (__builtin_add_overflow(x->model[i].spent_micros, amount, &v) ||
             __builtin_add_overflow(x->model[i].lifetime_spent_micros, amount, &v))) {
            return false;
        }
    }
    return true;
}

/* Charge `amount` to every account of the chain and journal it as `kind`. */
static void charge_chain(struct ledger *l, struct resolve_ctx *x, int64_t amount, uint64_t kind,
                         uint64_t tokens)
{
    /* Only late_correct() charges negative amounts; releases charge nothing. */
    assert(amount >= 0 &&
           (amount == 0 || kind == LEDGER_J_CHARGE || kind == LEDGER_J_EXPIRE_CHARGE));
    struct jrec j;
    int64_t overrun = amount - x->rec->estimate_micros;
    ledger__jrec_init(l, &j, kind, x->request_id, x->actor);
    j.chain_len = x->rec->chain_len;
    j.tokens = tokens;
    j.model_len = x->rec->model_len;
    memcpy(j.model, x->rec->model, j.model_len);
    for (uint32_t i = 0; i < x->rec->chain_len; i++) {
        struct acct_rec *a = x->acct[i];
        ledger__acct_roll(a, l->now_ms);
        a->spent_micros += amount;
        a->lifetime_spent_micros += amount;
        if (kind == LEDGER_J_CHARGE && overrun > 0) {
            a->overrun_micros += overrun;
        }
        j.chain[i] = a->id;
        j.amount_micros[i] = amount;
        j.period_start[i] = a->period_start_ms;
        if (x->rec->model_mask & (1u << i)) {
            ledger__model_roll(&x->model[i], a, l->now_ms);
            x->model[i].spent_micros += amount;
            x->model[i].lifetime_spent_micros += amount;
        }
    }
    ledger__journal_append(l, &j, NULL, 0);
    for (uint32_t i = 0; i < x->rec->chain_len && amount > 0; i++) {
        ledger__soft_budget_check(l, x->acct[i], x->request_id, x->actor);
    }
}

static void expire_one(struct ledger *l, struct resv_rec *rec, const uint8_t *request_id)
{
    assert(rec->state == LEDGER_RESV_OPEN && rec->expires_at_ms <= l->now_ms); /* I8 */
    struct resolve_ctx x = {.rec = rec, .request_id = request_id, .actor = "ledger"};
    if (!resolve_load(l, &x)) {
        return;
    }
    release_holds(&x);
    /* An unconfirmed hold may be one whose caller was told UNAVAILABLE: never charge it. */
    bool charge = x.acct[0]->expiry_policy == LEDGER_EXPIRY_CHARGE &&
                  !ledger__resv_unconfirmed(l, rec);
    if (charge && charge_fits(&x, rec->estimate_micros)) {
        charge_chain(l, &x, rec->estimate_micros, LEDGER_J_EXPIRE_CHARGE, rec->estimate_tokens);
        rec->expiry_charge_micros = rec->estimate_micros;
        rec->charged_micros = rec->estimate_micros;
    } else {
        adjust_tpm(l, &x, -(int64_t)rec->estimate_tokens);
        charge_chain(l, &x, 0, LEDGER_J_EXPIRE_RELEASE, 0);
    }
    for (uint32_t i = 0; i < rec->chain_len; i++) {
        rec->expiry_period_start[i] = x.acct[i]->period_start_ms;
    }
    rec->state = LEDGER_RESV_EXPIRED;
    rec->resolved_ms = l->now_ms;
    ledger__chain_assert_invariants(&x.chain, LEDGER__CHAIN_RELEASE, l->now_ms);
    resolve_store(l, &x);
    /* The timer that expired it is gone: schedule the end of its retention. */
    ledger__timer_put(l, l->now_ms + l->work.retention_ms, request_id, 0);
}

/* A settle or void after expiry: charge actual - what expiry charged, per account. */
static void late_correct(struct ledger *l, struct resolve_ctx *x, int64_t actual,
                         struct ledger_result *r)
{
    struct resv_rec *rec = x->rec;
    assert(rec->state == LEDGER_RESV_EXPIRED && actual >= 0); /* I8: only an expiry is corrected */
    int64_t delta = actual - rec->expiry_charge_micros;
    struct jrec j;
    if (delta > 0 && !charge_fits(x, delta)) {
        r->status = -LEDGER_EOVERFLOW;
        return;
    }
    ledger__jrec_init(l, &j, LEDGER_J_CORRECTION, x->request_id, x->actor);
    j.chain_len = rec->chain_len;
    j.model_len = rec->model_len;
    memcpy(j.model, rec->model, j.model_len);
    for (uint32_t i = 0; i < rec->chain_len; i++) {
        struct acct_rec *a = x->acct[i];
        ledger__acct_roll(a, l->now_ms);
        /* A refund may not reopen a closed period: the budget of that period is gone. */
        int64_t applied = (delta < 0 && a->period_start_ms != rec->expiry_period_start[i]) ? 0
                                                                                           : delta;
        /* A period changed back to a start it counted before can hold less than the
         * expiry charged: never refund below zero (deterministic, no abort). */
        if (applied < -a->spent_micros) {
            applied = -a->spent_micros;
        }
        a->spent_micros += applied;
        a->lifetime_spent_micros += applied;
        assert(a->spent_micros >= 0);
        j.chain[i] = a->id;
        j.amount_micros[i] = applied;
        j.period_start[i] = a->period_start_ms;
        if (rec->model_mask & (1u << i)) {
            struct model_rec *m = &x->model[i];
            ledger__model_roll(m, a, l->now_ms);
            int64_t mapplied =
                (delta < 0 && m->period_start_ms != rec->expiry_period_start[i]) ? 0 : delta;
            if (mapplied < -m->spent_micros) {
                mapplied = -m->spent_micros;
            }
            m->spent_micros += mapplied;
            m->lifetime_spent_micros += mapplied;
            assert(m->spent_micros >= 0); /* I4 */
        }
    }
    ledger__journal_append(l, &j, NULL, 0);
    for (uint32_t i = 0; i < rec->chain_len && delta > 0; i++) {
        ledger__soft_budget_check(l, x->acct[i], x->request_id, x->actor);
    }
    rec->charged_micros += delta;
    rec->resolve_charged_micros = delta;
    rec->resolve_flags = LEDGER_RESULT_LATE;
    rec->state = LEDGER_RESV_LATE_SETTLED;
    r->status = LEDGER_OK;
}

static void resolve_answer(const struct resv_rec *rec, struct ledger_result *r)
{
    r->status = LEDGER_OK;
    r->charged_micros = rec->resolve_charged_micros;
    r->overrun_micros = rec->resolve_overrun_micros;
    r->flags |= (uint16_t)rec->resolve_flags;
}

/* Settle (actual >= 0) or void of an open reservation. */
static void resolve_open(struct ledger *l, struct resolve_ctx *x, const struct ledger_cmd *c,
                         struct ledger_result *r)
{
    struct resv_rec *rec = x->rec;
    assert(rec->state == LEDGER_RESV_OPEN); /* I8: only an open reservation is settled */
    if (c->type == LEDGER_CMD_SETTLE && !charge_fits(x, c->u.settle.actual_micros)) {
        r->status = -LEDGER_EOVERFLOW; /* checked before anything changes */
        return;
    }
    release_holds(x);
    if (c->type == LEDGER_CMD_SETTLE) {
        int64_t actual = c->u.settle.actual_micros;
        adjust_tpm(l, x, (int64_t)c->u.settle.actual_tokens - (int64_t)rec->estimate_tokens);
        charge_chain(l, x, actual, LEDGER_J_CHARGE, c->u.settle.actual_tokens);
        rec->state = LEDGER_RESV_SETTLED;
        rec->charged_micros = actual;
        rec->resolve_charged_micros = actual;
        rec->resolve_overrun_micros = actual > rec->estimate_micros ? actual - rec->estimate_micros
                                                                    : 0;
    } else {
        adjust_tpm(l, x, -(int64_t)rec->estimate_tokens);
        charge_chain(l, x, 0, LEDGER_J_RELEASE, 0);
        rec->state = LEDGER_RESV_VOIDED;
    }
    rec->resolved_ms = l->now_ms;
}

/* The reservation a settle, void or extend names, once the command passed
 * ledger_cmd_check(): true with *rec loaded; false with r->status set (the check's code,
 * -LEDGER_ENOTFOUND for an id never granted, or 0 on a storage failure, which is fatal). */
static bool resolve_target(struct ledger *l, const struct ledger_cmd *c, struct resv_rec *rec,
                           struct ledger_result *r)
{
    int rv = ledger_cmd_check(c, NULL);
    if (rv != 0) {
        r->status = rv;
        return false;
    }
    int found = ledger__resv_get(l, c->request_id, rec);
    if (found != 1 || rec->state == RESV_REJECTED) {
        if (found >= 0) { /* < 0: storage failed, the batch is aborted */
            r->status = -LEDGER_ENOTFOUND;
        }
        return false;
    }
    return true;
}

void ledger__exec_resolve(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    struct resv_rec rec;
    if (!resolve_target(l, c, &rec, r)) {
        return;
    }
    struct ledger__fp fp = ledger__cmd_fingerprint(c);
    if (rec.state != LEDGER_RESV_OPEN && rec.state != LEDGER_RESV_EXPIRED) {
        if (rec.resolve_type != c->type) {
            r->status = -LEDGER_ERESOLVED;
        } else if (!ledger__fp_equal(&rec.resolve_fp, &fp)) {
            r->status = -LEDGER_ECONFLICT;
        } else {
            resolve_answer(&rec, r);
            r->flags |= LEDGER_RESULT_REPLAYED;
        }
        return;
    }
    struct resolve_ctx x = {.rec = &rec, .request_id = c->request_id, .actor = c->actor};
    if (!resolve_load(l, &x)) {
        return;
    }
    bool late = rec.state == LEDGER_RESV_EXPIRED;
    if (late) {
        int64_t actual = c->type == LEDGER_CMD_SETTLE ? c->u.settle.actual_micros : 0;
        late_correct(l, &x, actual, r);
    } else {
        r->status = LEDGER_OK;
        resolve_open(l, &x, c, r);
    }
    if (r->status != LEDGER_OK || l->fatal) {
        return;
    }
    rec.resolve_type = c->type;
    rec.resolve_fp = fp;
    ledger__chain_assert_invariants(&x.chain, late ? LEDGER__CHAIN_LATE : LEDGER__CHAIN_RELEASE,
                                    l->now_ms);
    resolve_store(l, &x);
    resolve_answer(&rec, r);
}

void ledger__exec_extend(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    struct resv_rec rec;
    if (!resolve_target(l, c, &rec, r)) {
        return;
    }
    if (rec.state != LEDGER_RESV_OPEN) {
        r->status = -LEDGER_ERESOLVED;
        return;
    }
    int64_t want = l->now_ms + c->u.extend.ttl_ms;
    /* An extend shows the client knows of the hold: it confirms it (ambiguous.c). */
    rec.confirmed_index = l->work.applied_index;
    if (want > rec.expires_at_ms) {
        /* The old timer goes stale: it fires, sees another expires_at, and is dropped. */
        rec.expires_at_ms = want;
        ledger__timer_put(l, want, c->request_id, 0);
    }
    ledger__resv_put(l, c->request_id, &rec);
    struct ledger__chain ch = {.rec = &rec, .n = 0}; /* an extend touches no account */
    ledger__chain_assert_invariants(&ch, LEDGER__CHAIN_EXTEND, l->now_ms);
    r->status = LEDGER_OK;
    r->expires_at_ms = rec.expires_at_ms;
}

/* ---- Timers. ---- */

static void fire_resv_timer(struct ledger *l, int64_t due_ms, const uint8_t *request_id)
{
    struct resv_rec rec;
    if (ledger__resv_get(l, request_id, &rec) != 1) {
        return;
    }
    if (rec.state == LEDGER_RESV_OPEN) {
        /* I8: extends only move expires_at later, so no timer of it is due after it. */
        assert(due_ms <= l->now_ms && rec.expires_at_ms >= due_ms);
        if (rec.expires_at_ms == due_ms) {
            expire_one(l, &rec, request_id);
        }
        return;
    }
    int64_t gc_at = rec.resolved_ms + l->work.retention_ms;
    if (gc_at <= l->now_ms) {
        ledger__db_del(l, DB_RESV, request_id, LEDGER_REQUEST_ID_SIZE);
    } else {
        ledger__timer_put(l, gc_at, request_id, 0);
    }
}

/* Fire every timer due at or before now, in (due, request id, kind) order. */
void ledger__run_timers(struct ledger *l)
{
    MDB_cursor *cur;
    if (ledger__failed(l, mdb_cursor_open(l->txn, l->dbi[DB_TIMERS], &cur))) {
        return;
    }
    for (;;) {
        MDB_val k, v;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        if (rc == MDB_NOTFOUND) {
            break;
        }
        if (ledger__failed(l, rc) || k.mv_size != TIMER_KEY_SIZE) {
            ledger__failed(l, MDB_CORRUPTED);
            break;
        }
        uint8_t key[TIMER_KEY_SIZE];
        memcpy(key, k.mv_data, sizeof(key));
        int64_t due = (int64_t)ledger__get_be64(key);
        if (due > l->now_ms) {
            break;
        }
        if (ledger__failed(l, mdb_cursor_del(cur, 0))) {
            break;
        }
        uint8_t kind = key[8 + LEDGER_REQUEST_ID_SIZE];
        if (kind == 0) {
            ledger__cache_make_room(l);
            fire_resv_timer(l, due, key + 8);
        } else {
            uint8_t ak[ANSWER_KEY_SIZE];
            memcpy(ak, key + 8, LEDGER_REQUEST_ID_SIZE);
            ak[LEDGER_REQUEST_ID_SIZE] = kind;
            ledger__db_del(l, DB_ANSWERS, ak, sizeof(ak));
        }
        if (l->fatal) {
            break;
        }
    }
    mdb_cursor_close(cur);
}
