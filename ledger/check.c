/*
 * check.c: the ledger's invariants (I1-I9, listed in ledger.h), checked two ways.
 *
 * ledger_check_invariants() recomputes what the ledger maintains incrementally (held,
 * inflight and key counts from the records they summarize, spent from the journal, the
 * admin hash chain from its entries) and compares; each failure names its invariant. It
 * reads in one read transaction and is O(state): tests and the simulation call it after
 * every step; a node never does. ledger__chain_assert_invariants() is the other side of
 * the same invariants: what of them shows on the one chain an operation touched,
 * asserted by the ledger itself after every grant, settle, void, extend and expiry, in
 * O(chain) and in every build.
 */
#include "wire/wire.h"
#include "ledger/store.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

/* What the records say each account should hold. */
struct expect {
    int64_t held, spent;
    uint64_t inflight, keys, models, children;
    bool seen;
};

struct model_expect {
    uint8_t key[MODEL_KEY_MAX];
    size_t key_len;
    struct model_rec rec;
    int64_t held;
    uint64_t inflight;
};

struct checker {
    struct ledger *l;
    MDB_txn *txn;
    uint64_t n_accounts; /* ids are 1 .. n_accounts */
    struct acct_rec *accts;
    struct expect *exp;
    struct model_expect *models;
    size_t n_models, cap_models;
    int rv;
};

static int bad(struct checker *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad(struct checker *c, const char *fmt, ...)
{
    if (c->rv == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->l->errmsg, sizeof(c->l->errmsg), fmt, ap);
        va_end(ap);
        c->rv = -LEDGER_ECORRUPT;
    }
    return c->rv;
}

/* Iterate one database; fn returns non-zero to stop. */
typedef int (*each_fn)(struct checker *c, const MDB_val *k, const MDB_val *v);

static int each(struct checker *c, int db, each_fn fn)
{
    MDB_cursor *cur;
    if (mdb_cursor_open(c->txn, c->l->dbi[db], &cur) != 0) {
        return bad(c, "cannot open a cursor on %s", ledger__db_names[db]);
    }
    MDB_val k, v;
    int rc;
    while (c->rv == 0 && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        if (fn(c, &k, &v) != 0) {
            break;
        }
    }
    mdb_cursor_close(cur);
    return c->rv;
}

static bool valid_id(struct checker *c, uint64_t id)
{
    return id >= 1 && id <= c->n_accounts && c->exp[id].seen;
}

static int on_account(struct checker *c, const MDB_val *k, const MDB_val *v)
{
    if (k->mv_size != 8 || v->mv_size != sizeof(struct acct_rec)) {
        return bad(c, "I6: accounts: bad record size");
    }
    uint64_t id = ledger__get_be64(k->mv_data);
    if (id < 1 || id > c->n_accounts) {
        return bad(c, "I6: accounts: id %" PRIu64 " out of range", id);
    }
    memcpy(&c->accts[id], v->mv_data, sizeof(struct acct_rec));
    c->exp[id].seen = true;
    return 0;
}

static int check_account(struct checker *c, uint64_t id)
{
    const struct acct_rec *a = &c->accts[id];
    if (a->id != id || a->name_len == 0 || a->name_len > LEDGER_NAME_MAX) {
        return bad(c, "I6: account %" PRIu64 ": bad id or name", id);
    }
    if (a->held_micros < 0 || a->spent_micros < 0 || a->lifetime_spent_micros < a->spent_micros ||
        a->overrun_micros < 0 || a->rpm_bucket.level_units < 0 || a->tpm_bucket.level_units < 0) {
        return bad(c, "I4: account %.*s: negative counter or lifetime_spent below spent",
                   (int)a->name_len, a->name);
    }
    uint64_t up = a->parent_id;
    for (int depth = 1; up != 0; depth++) {
        if (depth >= LEDGER_DEPTH_MAX || !valid_id(c, up)) {
            return bad(c, "I6: account %.*s: chain too deep, cyclic or broken", (int)a->name_len,
                       a->name);
        }
        up = c->accts[up].parent_id;
    }
    if (a->parent_id != 0) {
        c->exp[a->parent_id].children++;
    }
    return 0;
}

static int on_name(struct checker *c, const MDB_val *k, const MDB_val *v)
{
    uint64_t id;
    if (v->mv_size != 8) {
        return bad(c, "I6: names: bad record");
    }
    memcpy(&id, v->mv_data, 8);
    if (!valid_id(c, id) || c->accts[id].name_len != k->mv_size ||
        memcmp(c->accts[id].name, k->mv_data, k->mv_size) != 0) {
        return bad(c, "I6: names: %.*s does not name its account", (int)k->mv_size,
                   (const char *)k->mv_data);
    }
    return 0;
}

static int on_child(struct checker *c, const MDB_val *k, const MDB_val *v)
{
    uint64_t id;
    if (v->mv_size != 8 || k->mv_size < 9) {
        return bad(c, "I6: children: bad record");
    }
    memcpy(&id, v->mv_data, 8);
    uint64_t parent = ledger__get_be64(k->mv_data);
    if (!valid_id(c, id) || c->accts[id].parent_id != parent) {
        return bad(c, "I6: children: entry disagrees with account %" PRIu64, id);
    }
    if (parent != 0) {
        c->exp[parent].children--;
    }
    return 0;
}

static int on_key(struct checker *c, const MDB_val *k, const MDB_val *v)
{
    struct key_rec kr;
    if (k->mv_size != LEDGER_KEY_HASH_SIZE || v->mv_size != sizeof(kr)) {
        return bad(c, "I7: keys: bad record");
    }
    memcpy(&kr, v->mv_data, sizeof(kr));
    if (!valid_id(c, kr.account_id) || kr.revoked > 1) {
        return bad(c, "I7: keys: bad account or flag");
    }
    if (!kr.revoked) {
        c->exp[kr.account_id].keys++;
    }
    return 0;
}

/* LMDB's default key order: bytes, then the shorter key first. */
static int key_cmp(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len)
{
    int cmp = memcmp(a, b, a_len < b_len ? a_len : b_len);
    if (cmp == 0) {
        cmp = a_len < b_len ? -1 : (a_len > b_len ? 1 : 0);
    }
    return cmp;
}

static int on_model(struct checker *c, const MDB_val *k, const MDB_val *v)
{
    if (k->mv_size <= 8 || k->mv_size > MODEL_KEY_MAX || v->mv_size != sizeof(struct model_rec)) {
        return bad(c, "I7: models: bad record");
    }
    uint64_t id = ledger__get_be64(k->mv_data);
    if (!valid_id(c, id)) {
        return bad(c, "I7: models: unknown account %" PRIu64, id);
    }
    if (c->n_models == c->cap_models) {
        size_t cap = c->cap_models ? c->cap_models * 2 : 64;
        struct model_expect *m = realloc(c->models, cap * sizeof(*m));
        if (m == NULL) {
            return bad(c, "out of memory");
        }
        c->models = m;
        c->cap_models = cap;
    }
    assert(c->n_models < c->cap_models);
    /* find_model's binary search needs the cursor's key order. */
    assert(c->n_models == 0 ||
           key_cmp(c->models[c->n_models - 1].key, c->models[c->n_models - 1].key_len, k->mv_data,
                   k->mv_size) < 0);
    struct model_expect *m = &c->models[c->n_models++];
    memset(m, 0, sizeof(*m));
    memcpy(m->key, k->mv_data, k->mv_size);
    m->key_len = k->mv_size;
    memcpy(&m->rec, v->mv_data, sizeof(m->rec));
    c->exp[id].models++;
    return 0;
}

/* The model record for (account, model): models are listed in key order. */
static struct model_expect *find_model(struct checker *c, uint64_t id, const char *model,
                                       size_t len)
{
    uint8_t key[MODEL_KEY_MAX];
    assert(len <= LEDGER_MODEL_MAX); /* on_resv refused longer names: the key fits */
    ledger__be64(key, id);
    memcpy(key + 8, model, len);
    size_t klen = 8 + len, lo = 0, hi = c->n_models;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        struct model_expect *m = &c->models[mid];
        int cmp = key_cmp(m->key, m->key_len, key, klen);
        if (cmp == 0) {
            return m;
        }
        if (cmp < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

static bool timer_exists(struct checker *c, int64_t due, const uint8_t *id)
{
    uint8_t k[TIMER_KEY_SIZE];
    ledger__be64(k, (uint64_t)due);
    memcpy(k + 8, id, LEDGER_REQUEST_ID_SIZE);
    k[8 + LEDGER_REQUEST_ID_SIZE] = 0;
    MDB_val key = {sizeof(k), k}, v;
    return mdb_get(c->txn, c->l->dbi[DB_TIMERS], &key, &v) == 0;
}

static int on_resv(struct checker *c, const MDB_val *k, const MDB_val *v)
{
    struct resv_rec r;
    if (k->mv_size != LEDGER_REQUEST_ID_SIZE || ledger__resv_decode(v, &r) != 0) {
        return bad(c, "I8: resv: bad record");
    }
    if (r.state == RESV_REJECTED) {
        return 0;
    }
    if (r.state > LEDGER_RESV_LATE_SETTLED || r.chain_len == 0 || r.chain_len > LEDGER_DEPTH_MAX ||
        r.estimate_micros < 0 || r.estimate_micros > LEDGER_AMOUNT_MAX ||
        r.model_len > LEDGER_MODEL_MAX) {
        return bad(c, "I8: resv: bad state, chain, estimate or model");
    }
    uint64_t applied = c->l->meta.applied_index;
    if (r.created_index > applied || r.confirmed_index > applied ||
        (r.confirmed_index != 0 && r.confirmed_index < r.created_index)) {
        return bad(c, "I10: resv: created or confirmed after the applied index, or confirmed "
                      "before created");
    }
    if (r.state != LEDGER_RESV_OPEN) {
        return 0;
    }
    if (!timer_exists(c, r.expires_at_ms, k->mv_data)) {
        return bad(c, "I8: resv: open reservation without its expiry timer");
    }
    if (r.expires_at_ms <= c->l->meta.clock_ms) {
        return bad(c, "I8: resv: open reservation past its expiry");
    }
    for (uint64_t i = 0; i < r.chain_len; i++) {
        uint64_t id = r.chain[i];
        if (!valid_id(c, id)) {
            return bad(c, "I8: resv: unknown account in chain");
        }
        c->exp[id].held += r.estimate_micros;
        c->exp[id].inflight++;
        if (r.model_mask & (1u << i)) {
            struct model_expect *m = find_model(c, id, r.model, r.model_len);
            if (m == NULL) {
                return bad(c, "I2: resv: model record missing");
            }
            m->held += r.estimate_micros;
            m->inflight++;
        }
    }
    return 0;
}

static int on_timer(struct checker *c, const MDB_val *k, const MDB_val *v)
{
    (void)v;
    if (k->mv_size != TIMER_KEY_SIZE) {
        return bad(c, "I8: timers: bad key");
    }
    if ((int64_t)ledger__get_be64(k->mv_data) <= c->l->meta.clock_ms) {
        return bad(c, "I8: timers: a timer due at or before the clock did not fire");
    }
    return 0;
}

struct journal_walk {
    uint64_t seq;
    int64_t ts;
    uint8_t head[32];
};

static bool charge_kind(uint64_t kind)
{
    return kind == LEDGER_J_CHARGE || kind == LEDGER_J_EXPIRE_CHARGE ||
           kind == LEDGER_J_CORRECTION;
}

static int journal_entry(struct checker *c, const MDB_val *v, struct journal_walk *w)
{
    struct jrec j;
    if (v->mv_size < sizeof(j)) {
        return bad(c, "I9: journal: short record");
    }
    memcpy(&j, v->mv_data, sizeof(j));
    if (j.seq != w->seq + 1 || j.ts_ms < w->ts || j.chain_len > LEDGER_DEPTH_MAX ||
        v->mv_size != sizeof(j) + j.payload_len) {
        return bad(c, "I9: journal: entry %" PRIu64 " out of order or malformed", j.seq);
    }
    w->seq = j.seq;
    w->ts = j.ts_ms;
    if (j.kind == LEDGER_J_ADMIN) {
        uint8_t want[32];
        struct jrec z = j;
        memset(z.admin_hash, 0, sizeof(z.admin_hash));
        SHA256_CTX sha;
        SHA256_Init(&sha);
        SHA256_Update(&sha, w->head, 32);
        SHA256_Update(&sha, &z, sizeof(z));
        SHA256_Update(&sha, (const char *)v->mv_data + sizeof(j), j.payload_len);
        SHA256_Final(want, &sha);
        if (memcmp(want, j.admin_hash, 32) != 0) {
            return bad(c, "I9: journal: admin hash chain broken at %" PRIu64, j.seq);
        }
        memcpy(w->head, want, 32);
        return 0;
    }
    for (uint64_t i = 0; i < j.chain_len && charge_kind(j.kind); i++) {
        uint64_t id = j.chain[i];
        if (!valid_id(c, id)) {
            return bad(c, "I3: journal: unknown account");
        }
        if (j.period_start[i] == c->accts[id].period_start_ms) {
            c->exp[id].spent += j.amount_micros[i];
        }
    }
    return 0;
}

static int check_journal(struct checker *c)
{
    struct journal_walk w = {0};
    MDB_cursor *cur;
    if (mdb_cursor_open(c->txn, c->l->dbi[DB_JOURNAL], &cur) != 0) {
        return bad(c, "journal: no cursor");
    }
    MDB_val k, v;
    while (c->rv == 0 && mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
        journal_entry(c, &v, &w);
    }
    mdb_cursor_close(cur);
    if (c->rv == 0 && (w.seq != c->l->meta.journal_seq ||
                       memcmp(w.head, c->l->meta.admin_head, 32) != 0)) {
        return bad(c, "I9: journal: end disagrees with meta (seq or admin chain head)");
    }
    return c->rv;
}

static int compare_accounts(struct checker *c)
{
    for (uint64_t id = 1; id <= c->n_accounts && c->rv == 0; id++) {
        const struct acct_rec *a = &c->accts[id];
        const struct expect *e = &c->exp[id];
        int n = (int)a->name_len;
        if (a->held_micros != e->held || a->inflight != e->inflight) {
            bad(c,
                "I1: account %.*s: held %" PRId64 "/%" PRIu64
                " but open reservations sum to %" PRId64 "/%" PRIu64,
                n, a->name, a->held_micros, a->inflight, e->held, e->inflight);
        } else if (a->spent_micros != e->spent) {
            bad(c, "I3: account %.*s: spent %" PRId64 " but the period's journal sums to %" PRId64,
                n, a->name, a->spent_micros, e->spent);
        } else if (e->children != 0) {
            bad(c, "I6: account %.*s: children index disagrees with parents", n, a->name);
        } else if (a->n_keys != e->keys || a->n_models != e->models) {
            bad(c, "I7: account %.*s: key or model count disagrees", n, a->name);
        }
    }
    for (size_t i = 0; i < c->n_models && c->rv == 0; i++) {
        const struct model_expect *m = &c->models[i];
        assert(m->key_len > 8 && m->key_len <= MODEL_KEY_MAX); /* on_model refused others */
        int n = (int)(m->key_len - 8);
        const char *name = (const char *)m->key + 8;
        if (m->rec.held_micros != m->held || m->rec.inflight != m->inflight) {
            bad(c, "I2: model %.*s: held or inflight disagrees with open reservations", n, name);
        } else if (m->rec.spent_micros < 0 || m->rec.lifetime_spent_micros < m->rec.spent_micros) {
            bad(c, "I4: model %.*s: negative spent or lifetime_spent below spent", n, name);
        }
    }
    return c->rv;
}

/* I10: the ambiguous ranges (ambiguous.c). */
static int check_ranges(struct checker *c)
{
    const struct meta_rec *m = &c->l->meta;
    if (m->n_ranges > AMBIGUOUS_RANGES_MAX) {
        return bad(c, "I10: meta: %" PRIu64 " ambiguous ranges", m->n_ranges);
    }
    for (uint64_t i = 0; i < m->n_ranges; i++) {
        const struct ambiguous_range *r = &m->ranges[i];
        if (r->after + 1 >= r->before || r->before > m->applied_index ||
            (i > 0 && r->before < m->ranges[i - 1].before)) {
            return bad(c, "I10: meta: ambiguous range %" PRIu64 " empty, unordered or ahead",
                       i);
        }
    }
    return 0;
}

static int run_checks(struct checker *c)
{
    if (check_ranges(c) != 0) {
        return c->rv;
    }
    if (each(c, DB_ACCOUNTS, on_account) != 0) {
        return c->rv;
    }
    for (uint64_t id = 1; id <= c->n_accounts; id++) {
        if (!c->exp[id].seen) {
            return bad(c, "I6: account id %" PRIu64 " is missing", id);
        }
    }
    for (uint64_t id = 1; id <= c->n_accounts && c->rv == 0; id++) {
        check_account(c, id);
    }
    each(c, DB_NAMES, on_name);
    each(c, DB_CHILDREN, on_child);
    each(c, DB_KEYS, on_key);
    each(c, DB_MODELS, on_model);
    each(c, DB_RESV, on_resv);
    each(c, DB_TIMERS, on_timer);
    if (c->rv == 0) {
        check_journal(c);
    }
    if (c->rv == 0) {
        compare_accounts(c);
    }
    return c->rv;
}

int ledger_check_invariants(struct ledger *l)
{
    struct checker c = {.l = l};
    if (l->txn != NULL) {
        return ledger__set_error(l, -LEDGER_EINVAL, "check during a batch");
    }
    c.n_accounts = l->meta.next_account_id ? l->meta.next_account_id - 1 : 0;
    c.accts = calloc(c.n_accounts + 1, sizeof(*c.accts));
    c.exp = calloc(c.n_accounts + 1, sizeof(*c.exp));
    if (c.accts == NULL || c.exp == NULL) {
        free(c.accts);
        free(c.exp);
        return -LEDGER_ENOMEM;
    }
    int rc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &c.txn);
    if (rc != 0) {
        bad(&c, "read transaction: %s", mdb_strerror(rc));
    } else {
        run_checks(&c);
        mdb_txn_abort(c.txn);
    }
    free(c.accts);
    free(c.exp);
    free(c.models);
    if (c.rv == 0) {
        l->errmsg[0] = '\0';
    }
    return c.rv;
}

/* ---- One chain, asserted by the ledger after every operation on it. ---- */

void ledger__chain_mark(struct ledger__chain *ch)
{
    assert(ch->n <= LEDGER_DEPTH_MAX);
    for (uint32_t i = 0; i < ch->n; i++) {
        ch->held_before[i] = ch->acct[i]->held_micros;
        ch->inflight_before[i] = ch->acct[i]->inflight;
        if (ch->model[i] != NULL) {
            ch->model_held_before[i] = ch->model[i]->held_micros;
            ch->model_inflight_before[i] = ch->model[i]->inflight;
        }
    }
}

/* `inflight` open reservations of at most LEDGER_AMOUNT_MAX each can hold `held`. */
static bool held_fits_inflight(int64_t held, uint64_t inflight)
{
    uint64_t most;
    if (held < 0) {
        return false;
    }
    return __builtin_mul_overflow(inflight, (uint64_t)LEDGER_AMOUNT_MAX, &most) ||
           (uint64_t)held <= most;
}

/* The bucket holds at most `burst` tokens. */
static bool bucket_within(const struct ledger_bucket *b, uint64_t burst)
{
    int64_t capacity;
    return burst > (uint64_t)INT64_MAX ||
           __builtin_mul_overflow((int64_t)burst, (int64_t)LEDGER_UNITS_PER_TOKEN, &capacity) ||
           b->level_units <= capacity;
}

/* I8: the reservation's state and amounts after `op`. */
static void assert_record(const struct resv_rec *r, enum ledger__chain_op op, int64_t now_ms)
{
    assert(r->chain_len >= 1 && r->chain_len <= LEDGER_DEPTH_MAX && "I8: a chain of 1..8");
    assert(r->estimate_micros >= 0 && r->estimate_micros <= LEDGER_AMOUNT_MAX &&
           "I8: an estimate in 0..LEDGER_AMOUNT_MAX");
    switch (op) {
    case LEDGER__CHAIN_GRANT:
    case LEDGER__CHAIN_EXTEND:
        assert(r->state == LEDGER_RESV_OPEN && r->status == LEDGER_OK &&
               "I8: a granted or extended reservation is open");
        assert(r->expires_at_ms > now_ms && r->expires_at_ms <= now_ms + LEDGER_TTL_MAX_MS &&
               "I8: an open reservation expires after the clock, within one ttl of it");
        break;
    case LEDGER__CHAIN_RELEASE:
        assert((r->state == LEDGER_RESV_SETTLED || r->state == LEDGER_RESV_VOIDED ||
                r->state == LEDGER_RESV_EXPIRED) &&
               r->resolved_ms == now_ms && "I8: OPEN moves only to SETTLED, VOIDED or EXPIRED");
        assert(r->charged_micros >= 0 &&
               (r->state != LEDGER_RESV_VOIDED || r->charged_micros == 0) &&
               "I8: a settle charges its actual (>= 0), a void nothing");
        /* An expiry charges the estimate, or nothing (release policy, or it would overflow). */
        assert((r->state != LEDGER_RESV_EXPIRED ||
                (r->charged_micros == r->expiry_charge_micros &&
                 (r->charged_micros == 0 || r->charged_micros == r->estimate_micros))) &&
               "I8: an expiry charges its estimate or nothing");
        break;
    case LEDGER__CHAIN_LATE:
        assert(r->state == LEDGER_RESV_LATE_SETTLED && (r->resolve_flags & LEDGER_RESULT_LATE) &&
               "I8: EXPIRED moves only to LATE_SETTLED");
        assert(r->charged_micros >= 0 &&
               r->charged_micros == r->expiry_charge_micros + r->resolve_charged_micros &&
               "I8: a late correction brings the total charged to the actual");
        break;
    }
}

/* I5 and I6 on account i of a chain just granted (only then do limits bound the state). */
static void assert_granted(const struct ledger__chain *ch, uint32_t i, int64_t now_ms)
{
    const struct acct_rec *a = ch->acct[i];
    uint64_t tokens = ch->rec->estimate_tokens;
    assert(a->parent_id == (i + 1 < ch->n ? ch->acct[i + 1]->id : 0) &&
           "I6: a grant holds on the account's whole chain, leaf to root");
    assert(!a->blocked && (!(a->lim_set & LEDGER_LIM_EXPIRES) || now_ms < a->expires_at_ms) &&
           "I5: no grant on a blocked or expired account");
    assert((!(a->lim_set & LEDGER_LIM_PARALLEL) || a->inflight <= a->max_parallel) &&
           "I5: a grant leaves inflight <= max_parallel");
    assert((!(a->lim_set & LEDGER_LIM_BUDGET) ||
            a->held_micros <= a->budget_micros - a->spent_micros) &&
           "I5: a grant leaves spent + held <= budget");
    assert((!(a->lim_set & LEDGER_LIM_RPM) || bucket_within(&a->rpm_bucket, a->rpm_burst)) &&
           "I5: a grant leaves the rpm bucket within its burst");
    assert((!(a->lim_set & LEDGER_LIM_TPM) || tokens == 0 ||
            bucket_within(&a->tpm_bucket, a->tpm_burst)) &&
           "I5: a grant that cost tokens leaves the tpm bucket within its burst");
    const struct model_rec *m = ch->model[i];
    if (m != NULL) {
        assert((!(m->lim_set & LEDGER_LIM_BUDGET) ||
                m->held_micros <= m->budget_micros - m->spent_micros) &&
               "I5: a grant leaves a model's spent + held <= its budget");
        assert((!(m->lim_set & LEDGER_LIM_RPM) || bucket_within(&m->rpm_bucket, m->rpm_burst)) &&
               (!(m->lim_set & LEDGER_LIM_TPM) || tokens == 0 ||
                bucket_within(&m->tpm_bucket, m->tpm_burst)) &&
               "I5: a grant leaves a model's rpm and tpm buckets within their bursts");
    }
}

/* I2 and I4 on the model record of account i, after `op` moved its holds by `sign`. */
static void assert_model(const struct ledger__chain *ch, uint32_t i, int64_t sign, int64_t charged)
{
    const struct model_rec *m = ch->model[i];
    assert(m->held_micros - ch->model_held_before[i] == sign * ch->rec->estimate_micros &&
           "I2: an operation moves a model's held by exactly its estimate");
    assert(m->inflight - ch->model_inflight_before[i] == (uint64_t)sign &&
           "I2: an operation moves a model's inflight by exactly one");
    assert(held_fits_inflight(m->held_micros, m->inflight) &&
           "I2: a model holds at most LEDGER_AMOUNT_MAX per open reservation");
    assert(m->spent_micros >= 0 && m->lifetime_spent_micros >= m->spent_micros &&
           m->rpm_bucket.level_units >= 0 && m->tpm_bucket.level_units >= 0 &&
           "I4: a model's counters are not negative, lifetime_spent >= spent");
    assert(m->spent_micros >= charged && "I3: a model's spent counts what was just charged");
}

void ledger__chain_assert_invariants(const struct ledger__chain *ch, enum ledger__chain_op op,
                                     int64_t now_ms)
{
    const struct resv_rec *r = ch->rec;
    assert_record(r, op, now_ms);
    assert(ch->n == (op == LEDGER__CHAIN_EXTEND ? 0 : r->chain_len));
    /* I1: a grant adds the estimate and 1, a release removes them, the rest leave them. */
    int64_t sign = op == LEDGER__CHAIN_GRANT ? 1 : (op == LEDGER__CHAIN_RELEASE ? -1 : 0);
    /* What this operation charged each account: the period's other entries sum to >= 0
     * (I3, I4), so spent is at least that. A late refund may be dropped: 0. */
    int64_t charged = 0;
    if (op == LEDGER__CHAIN_RELEASE) {
        charged = r->charged_micros;
    } else if (op == LEDGER__CHAIN_LATE && r->resolve_charged_micros > 0) {
        charged = r->resolve_charged_micros;
    }
    for (uint32_t i = 0; i < ch->n; i++) {
        const struct acct_rec *a = ch->acct[i];
        assert(a->id == r->chain[i] && "I8: a reservation keeps the chain it was granted on");
        assert(a->held_micros >= 0 && a->overrun_micros >= 0 && a->spent_micros >= 0 &&
               a->lifetime_spent_micros >= a->spent_micros && "I4: counters are not negative");
        assert(a->rpm_bucket.level_units >= 0 && a->tpm_bucket.level_units >= 0 &&
               "I4: bucket levels are not negative");
        assert(a->held_micros - ch->held_before[i] == sign * r->estimate_micros &&
               "I1: an operation moves held by exactly its estimate on every account");
        assert(a->inflight - ch->inflight_before[i] == (uint64_t)sign &&
               "I1: an operation moves inflight by exactly one on every account");
        assert(held_fits_inflight(a->held_micros, a->inflight) &&
               "I1: an account holds at most LEDGER_AMOUNT_MAX per open reservation");
        assert(a->spent_micros >= charged && "I3: spent counts what was just charged");
        assert(((r->model_mask >> i) & 1) == (ch->model[i] != NULL) &&
               "I2: the model mask marks exactly the model records the grant matched");
        if (op == LEDGER__CHAIN_GRANT) {
            assert_granted(ch, i, now_ms);
        }
        if (ch->model[i] != NULL) {
            assert_model(ch, i, sign, charged);
        }
    }
}
