/*
 * query.c: reading the ledger without changing it.
 *
 * Queries run in their own LMDB read transaction and report the state as of the
 * ledger's clock (the last batch stamp), with period rollover and bucket refill applied
 * to copies, so an answer is what the next command would see, and two replicas at the
 * same index answer the same. A scoped read sees only what lies under its roots, and a
 * list resumes from the key its previous page ended on (ledger.h, "Scoped and paged
 * reads").
 */
#include "wire/wire.h"
#include "ledger/store.h"

#include <assert.h>
#include <string.h>

int ledger__get_account(struct ledger *l, MDB_txn *txn, uint64_t id, struct acct_rec *out)
{
    assert(id != 0); /* I6: ids start at 1; 0 means "no parent" */
    uint8_t k[8];
    ledger__be64(k, id);
    MDB_val key = {8, k}, v;
    int rc = mdb_get(txn, l->dbi[DB_ACCOUNTS], &key, &v);
    if (rc == 0) {
        if (v.mv_size != sizeof(*out)) {
            return MDB_CORRUPTED;
        }
        memcpy(out, v.mv_data, sizeof(*out));
    }
    return rc;
}

static int map_rc(struct ledger *l, int rc, const char *what)
{
    if (rc == 0) {
        return 0;
    }
    if (rc == MDB_NOTFOUND) {
        return ledger__set_error(l, -LEDGER_ENOTFOUND, "%s: not found", what);
    }
    return ledger__set_error(l, rc == MDB_CORRUPTED ? -LEDGER_ECORRUPT : -LEDGER_EIO, "%s: %s",
                            what, mdb_strerror(rc));
}

static int read_begin(struct ledger *l, MDB_txn **txn)
{
    return map_rc(l, mdb_txn_begin(l->env, NULL, MDB_RDONLY, txn), "read transaction");
}

static uint64_t id_of(struct ledger *l, MDB_txn *txn, const char *name)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    if (mdb_get(txn, l->dbi[DB_NAMES], &k, &v) != 0 || v.mv_size != 8) {
        return 0;
    }
    uint64_t id;
    memcpy(&id, v.mv_data, 8);
    return id;
}

static bool scoped(const char *scope)
{
    return scope != NULL && scope[0] != '\0';
}

/* Whether the current root of account `id` is in `scope` (always when unscoped). */
static bool in_scope(struct ledger *l, MDB_txn *txn, const char *scope, uint64_t id)
{
    if (!scoped(scope)) {
        return true;
    }
    struct acct_rec a;
    for (uint32_t depth = 0; id != 0 && depth < LEDGER_DEPTH_MAX; depth++) {
        if (ledger__get_account(l, txn, id, &a) != 0) {
            return false;
        }
        if (a.parent_id == 0) {
            char root[LEDGER_NAME_MAX + 1];
            ledger__copy_name(root, a.name, a.name_len, LEDGER_NAME_MAX);
            return ledger_scope_has(scope, root);
        }
        id = a.parent_id;
    }
    return false;
}

static int forbidden(struct ledger *l, const char *what)
{
    return ledger__set_error(l, -LEDGER_EFORBIDDEN, "%s: outside the scope", what);
}

/* The id of account `name` for a read in `scope`: 0, or -LEDGER_ENOTFOUND unscoped and
 * -LEDGER_EFORBIDDEN scoped when it is not an account under the scope's roots. */
static int scoped_id(struct ledger *l, MDB_txn *txn, const char *scope, const char *name,
                     uint64_t *id, const char *what)
{
    *id = name != NULL ? id_of(l, txn, name) : 0;
    if (*id != 0 && in_scope(l, txn, scope, *id)) {
        return 0;
    }
    return scoped(scope) ? forbidden(l, what) : map_rc(l, MDB_NOTFOUND, what);
}

/* Name of account `id` into dst ("" if unknown or 0). */
static void name_of(struct ledger *l, MDB_txn *txn, uint64_t id, char *dst)
{
    struct acct_rec a;
    dst[0] = '\0';
    if (id != 0 && ledger__get_account(l, txn, id, &a) == 0) {
        ledger__copy_name(dst, a.name, a.name_len, LEDGER_NAME_MAX);
    }
}

static void limits_of(const struct acct_rec *a, struct ledger_limits *lim)
{
    memset(lim, 0, sizeof(*lim));
    lim->set = (uint32_t)a->lim_set;
    lim->period_kind = (uint8_t)a->period_kind;
    lim->blocked = (uint8_t)a->blocked;
    lim->expiry_policy = (uint8_t)a->expiry_policy;
    lim->budget_micros = a->budget_micros;
    lim->soft_budget_micros = a->soft_budget_micros;
    lim->period_ms = a->period_ms;
    lim->rpm = a->rpm;
    lim->rpm_burst = a->rpm_burst;
    lim->tpm = a->tpm;
    lim->tpm_burst = a->tpm_burst;
    lim->max_parallel = a->max_parallel;
    lim->expires_at_ms = a->expires_at_ms;
}

static uint64_t available(struct ledger_bucket b, uint64_t rate, uint64_t burst, int64_t now)
{
    ledger__bucket_drain(&b, rate, now);
    return ledger__bucket_available(&b, burst);
}

void ledger__account_info(struct ledger *l, MDB_txn *txn, const struct acct_rec *a, int64_t now_ms,
                        struct ledger_account_info *out)
{
    memset(out, 0, sizeof(*out));
    out->id = a->id;
    ledger__copy_name(out->name, a->name, a->name_len, LEDGER_NAME_MAX);
    name_of(l, txn, a->parent_id, out->parent);
    out->depth = 1;
    struct acct_rec up = *a;
    while (up.parent_id != 0 && out->depth <= LEDGER_DEPTH_MAX &&
           ledger__get_account(l, txn, up.parent_id, &up) == 0) {
        out->depth++;
    }
    limits_of(a, &out->limits);
    out->created_ms = a->created_ms;
    int64_t start = ledger__acct_period_start(a, now_ms);
    out->spent_micros = start == a->period_start_ms ? a->spent_micros : 0;
    out->held_micros = a->held_micros;
    /* I4: with the budget in range, remaining below cannot overflow. */
    assert(out->spent_micros >= 0 && out->held_micros >= 0);
    out->remaining_micros = INT64_MAX;
    if (a->lim_set & LEDGER_LIM_BUDGET) {
        out->remaining_micros = a->budget_micros - out->spent_micros - out->held_micros;
    }
    out->lifetime_spent_micros = a->lifetime_spent_micros;
    out->overrun_micros = a->overrun_micros;
    out->inflight = a->inflight;
    out->period_start_ms = start;
    out->period_end_ms = INT64_MAX;
    if ((a->lim_set & LEDGER_LIM_PERIOD) && a->period_kind != LEDGER_PERIOD_NONE) {
        out->period_end_ms = ledger__period_end((uint8_t)a->period_kind, a->period_ms, start);
    }
    out->rpm_available = (a->lim_set & LEDGER_LIM_RPM)
                             ? available(a->rpm_bucket, a->rpm, a->rpm_burst, now_ms)
                             : UINT64_MAX;
    out->tpm_available = (a->lim_set & LEDGER_LIM_TPM)
                             ? available(a->tpm_bucket, a->tpm, a->tpm_burst, now_ms)
                             : UINT64_MAX;
    out->n_keys = (uint32_t)a->n_keys;
}

int ledger_account_get_scoped(struct ledger *l, const char *scope, const char *name,
                              struct ledger_account_info *out)
{
    MDB_txn *txn;
    int rv = read_begin(l, &txn);
    if (rv != 0) {
        return rv;
    }
    uint64_t id;
    rv = scoped_id(l, txn, scope, name, &id, "account");
    if (rv == 0) {
        struct acct_rec a;
        int rc = ledger__get_account(l, txn, id, &a);
        if (rc == 0) {
            ledger__account_info(l, txn, &a, l->meta.clock_ms, out);
        }
        rv = map_rc(l, rc, "account");
    }
    mdb_txn_abort(txn);
    return rv;
}

int ledger_account_get(struct ledger *l, const char *name, struct ledger_account_info *out)
{
    return ledger_account_get_scoped(l, NULL, name, out);
}

int ledger_key_get(struct ledger *l, const uint8_t key_hash[LEDGER_KEY_HASH_SIZE],
                   char account[LEDGER_NAME_MAX + 1], int *revoked)
{
    return ledger_key_get_scoped(l, NULL, key_hash, account, revoked);
}

int ledger_key_get_scoped(struct ledger *l, const char *scope,
                          const uint8_t key_hash[LEDGER_KEY_HASH_SIZE],
                          char account[LEDGER_NAME_MAX + 1], int *revoked)
{
    MDB_txn *txn;
    int rv = read_begin(l, &txn);
    if (rv != 0) {
        return rv;
    }
    MDB_val k = {LEDGER_KEY_HASH_SIZE, (void *)key_hash}, v;
    int rc = mdb_get(txn, l->dbi[DB_KEYS], &k, &v);
    if (rc == 0 && v.mv_size != sizeof(struct key_rec)) {
        rc = MDB_CORRUPTED;
    }
    if (rc == 0) {
        struct key_rec kr;
        memcpy(&kr, v.mv_data, sizeof(kr));
        if (!in_scope(l, txn, scope, kr.account_id)) {
            mdb_txn_abort(txn);
            return forbidden(l, "key");
        }
        name_of(l, txn, kr.account_id, account);
        *revoked = (int)kr.revoked;
    }
    mdb_txn_abort(txn);
    return map_rc(l, rc, "key");
}

/* Iterate the keys of `db` that start with `prefix` (at most 8 bytes), in order, after
 * prefix + the page's cursor if it has one. The callback gets the key and value; a
 * non-zero return stops and is returned. */
typedef int (*scan_fn)(struct ledger *l, MDB_txn *txn, const MDB_val *k, const MDB_val *v,
                       void *ctx);

static int scan_prefix(struct ledger *l, MDB_txn *txn, int db, const void *prefix, size_t plen,
                       const struct ledger_page *page, scan_fn fn, void *ctx)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, l->dbi[db], &cur);
    if (rc != 0) {
        return map_rc(l, rc, "cursor");
    }
    assert(plen <= 8 && (plen == 0 || prefix != NULL));
    uint8_t start[8 + LEDGER_CURSOR_MAX];
    size_t slen = plen;
    memcpy(start, prefix != NULL ? prefix : start, plen);
    bool resume = page != NULL && page->after_len > 0;
    if (resume) {
        assert(page->after_len <= LEDGER_CURSOR_MAX);
        memcpy(start + plen, page->after, page->after_len);
        slen += page->after_len;
    }
    MDB_val k = {slen, start}, v;
    int stop = 0;
    rc = mdb_cursor_get(cur, &k, &v, slen ? MDB_SET_RANGE : MDB_FIRST);
    if (resume && rc == 0 && k.mv_size == slen && memcmp(k.mv_data, start, slen) == 0) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT); /* the cursor's own item was listed */
    }
    while (rc == 0 && k.mv_size >= plen && (plen == 0 || memcmp(k.mv_data, prefix, plen) == 0)) {
        stop = fn(l, txn, &k, &v, ctx);
        if (stop != 0) {
            break;
        }
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (stop != 0) {
        return stop;
    }
    return rc == MDB_NOTFOUND ? 0 : map_rc(l, rc, "scan");
}

struct list_ctx {
    ledger_account_cb cb;
    ledger_model_cb model_cb;
    void *ctx;
    uint64_t account_id;
    struct ledger_page *page; /* NULL: unscoped, from the start */
};

/* Record the cursor of an item the callback took (stop == 0). */
static int page_took(struct ledger_page *page, int stop, const void *key, size_t len)
{
    if (page != NULL && stop == 0) {
        assert(len <= LEDGER_CURSOR_MAX);
        memcpy(page->last, key, len);
        page->last_len = (uint16_t)len;
    }
    return stop;
}

static int list_child(struct ledger *l, MDB_txn *txn, const MDB_val *k, const MDB_val *v,
                      void *ctx)
{
    struct list_ctx *lc = ctx;
    struct acct_rec a;
    uint64_t id;
    if (v->mv_size != 8 || k->mv_size < 8 || k->mv_size > CHILD_KEY_MAX) {
        return ledger__set_error(l, -LEDGER_ECORRUPT, "children: bad record");
    }
    memcpy(&id, v->mv_data, 8);
    int rc = ledger__get_account(l, txn, id, &a);
    if (rc != 0) {
        return map_rc(l, rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc, "child account");
    }
    /* Only roots can be out of scope here: a parent was checked before the scan. */
    if (a.parent_id == 0 && lc->page != NULL && !in_scope(l, txn, lc->page->scope, id)) {
        return 0;
    }
    struct ledger_account_info info;
    ledger__account_info(l, txn, &a, l->meta.clock_ms, &info);
    const uint8_t *name = (const uint8_t *)k->mv_data + 8;
    return page_took(lc->page, lc->cb(lc->ctx, &info), name, k->mv_size - 8);
}

int ledger_account_list(struct ledger *l, const char *parent, ledger_account_cb cb, void *ctx)
{
    return ledger_account_list_page(l, parent, NULL, cb, ctx);
}

int ledger_account_list_page(struct ledger *l, const char *parent, struct ledger_page *page,
                             ledger_account_cb cb, void *ctx)
{
    MDB_txn *txn;
    int rv = read_begin(l, &txn);
    if (rv != 0) {
        return rv;
    }
    uint64_t pid = 0;
    if (parent != NULL && parent[0] != '\0') {
        rv = scoped_id(l, txn, page != NULL ? page->scope : NULL, parent, &pid, "parent");
        if (rv != 0) {
            mdb_txn_abort(txn);
            return rv;
        }
    }
    uint8_t prefix[8];
    ledger__be64(prefix, pid);
    struct list_ctx lc = {.cb = cb, .ctx = ctx, .page = page};
    rv = scan_prefix(l, txn, DB_CHILDREN, prefix, 8, page, list_child, &lc);
    mdb_txn_abort(txn);
    return rv;
}

static int list_model(struct ledger *l, MDB_txn *txn, const MDB_val *k, const MDB_val *v,
                      void *ctx)
{
    (void)txn;
    struct list_ctx *lc = ctx;
    struct model_rec m;
    assert(k->mv_size >= 8); /* scan_prefix matched the 8-byte account id */
    if (v->mv_size != sizeof(m) || k->mv_size > MODEL_KEY_MAX) {
        return ledger__set_error(l, -LEDGER_ECORRUPT, "models: bad record");
    }
    memcpy(&m, v->mv_data, sizeof(m));
    struct ledger_model_info info;
    memset(&info, 0, sizeof(info));
    ledger__copy_name(info.model, (const char *)k->mv_data + 8, k->mv_size - 8, LEDGER_MODEL_MAX);
    info.limits.set = (uint32_t)m.lim_set;
    info.limits.budget_micros = m.budget_micros;
    info.limits.rpm = m.rpm;
    info.limits.rpm_burst = m.rpm_burst;
    info.limits.tpm = m.tpm;
    info.limits.tpm_burst = m.tpm_burst;
    info.spent_micros = m.spent_micros;
    info.held_micros = m.held_micros;
    info.inflight = m.inflight;
    return lc->model_cb(lc->ctx, &info);
}

int ledger_model_list(struct ledger *l, const char *name, ledger_model_cb cb, void *ctx)
{
    MDB_txn *txn;
    int rv = read_begin(l, &txn);
    if (rv != 0) {
        return rv;
    }
    uint64_t id = name ? id_of(l, txn, name) : 0;
    if (id == 0) {
        mdb_txn_abort(txn);
        return map_rc(l, MDB_NOTFOUND, "account");
    }
    uint8_t prefix[8];
    ledger__be64(prefix, id);
    struct list_ctx lc = {.model_cb = cb, .ctx = ctx};
    rv = scan_prefix(l, txn, DB_MODELS, prefix, 8, NULL, list_model, &lc);
    mdb_txn_abort(txn);
    return rv;
}

static void resv_info(struct ledger *l, MDB_txn *txn, const uint8_t *id, const struct resv_rec *r,
                      struct ledger_reservation_info *out)
{
    memset(out, 0, sizeof(*out));
    memcpy(out->request_id, id, LEDGER_REQUEST_ID_SIZE);
    out->state = (uint8_t)r->state;
    name_of(l, txn, r->chain_len ? r->chain[0] : 0, out->account);
    ledger__copy_name(out->model, r->model, r->model_len, LEDGER_MODEL_MAX);
    out->estimate_micros = r->estimate_micros;
    out->estimate_tokens = r->estimate_tokens;
    out->created_ms = r->created_ms;
    out->expires_at_ms = r->expires_at_ms;
    out->charged_micros = r->charged_micros;
    assert(r->metadata_len <= LEDGER_METADATA_MAX); /* ledger__resv_decode checked the size */
    out->metadata_len = (uint16_t)r->metadata_len;
    memcpy(out->metadata, r->metadata, out->metadata_len);
}

static int resv_read(MDB_txn *txn, struct ledger *l, const uint8_t *id, struct resv_rec *out)
{
    MDB_val k = {LEDGER_REQUEST_ID_SIZE, (void *)id}, v;
    int rc = mdb_get(txn, l->dbi[DB_RESV], &k, &v);
    if (rc == 0 && ledger__resv_decode(&v, out) != 0) {
        return MDB_CORRUPTED;
    }
    return rc;
}

int ledger_reservation_get(struct ledger *l, const uint8_t request_id[LEDGER_REQUEST_ID_SIZE],
                           struct ledger_reservation_info *out)
{
    return ledger_reservation_get_scoped(l, NULL, request_id, out);
}

/* Whether reservation `r` is in `scope`: the root of the chain it was granted on. */
static bool resv_in_scope(struct ledger *l, MDB_txn *txn, const char *scope,
                          const struct resv_rec *r)
{
    assert(r->chain_len <= LEDGER_DEPTH_MAX);
    return !scoped(scope) ||
           (r->chain_len > 0 && in_scope(l, txn, scope, r->chain[r->chain_len - 1]));
}

int ledger_reservation_get_scoped(struct ledger *l, const char *scope,
                                  const uint8_t request_id[LEDGER_REQUEST_ID_SIZE],
                                  struct ledger_reservation_info *out)
{
    MDB_txn *txn;
    int rv = read_begin(l, &txn);
    if (rv != 0) {
        return rv;
    }
    struct resv_rec r;
    int rc = resv_read(txn, l, request_id, &r);
    if (rc == 0 && r.state == RESV_REJECTED) {
        rc = MDB_NOTFOUND; /* a denied reserve is an answer, not a reservation */
    }
    if (rc == 0 && !resv_in_scope(l, txn, scope, &r)) {
        mdb_txn_abort(txn);
        return forbidden(l, "reservation");
    }
    if (rc == 0) {
        resv_info(l, txn, request_id, &r, out);
    }
    mdb_txn_abort(txn);
    return map_rc(l, rc, "reservation");
}

struct resv_list_ctx {
    uint64_t account_id; /* 0: all */
    ledger_reservation_cb cb;
    void *ctx;
    struct ledger_page *page; /* NULL: unscoped, from the start */
};

static int list_resv(struct ledger *l, MDB_txn *txn, const MDB_val *k, const MDB_val *v,
                     void *ctx)
{
    (void)v;
    struct resv_list_ctx *rc = ctx;
    const uint8_t *key = k->mv_data;
    if (k->mv_size != TIMER_KEY_SIZE || key[8 + LEDGER_REQUEST_ID_SIZE] != 0) {
        return 0;
    }
    struct resv_rec r;
    if (resv_read(txn, l, key + 8, &r) != 0 || r.state != LEDGER_RESV_OPEN ||
        r.expires_at_ms != (int64_t)ledger__get_be64(key)) {
        return 0; /* resolved, or a stale timer of an extended reservation */
    }
    assert(r.chain_len >= 1 && r.chain_len <= LEDGER_DEPTH_MAX); /* I8: an open reservation */
    bool match = rc->account_id == 0;
    for (uint64_t i = 0; i < r.chain_len && !match; i++) {
        match = r.chain[i] == rc->account_id;
    }
    if (!match || (rc->page != NULL && !resv_in_scope(l, txn, rc->page->scope, &r))) {
        return 0;
    }
    struct ledger_reservation_info info;
    resv_info(l, txn, key + 8, &r, &info);
    return page_took(rc->page, rc->cb(rc->ctx, &info), key, TIMER_KEY_SIZE);
}

int ledger_reservation_list(struct ledger *l, const char *account, ledger_reservation_cb cb,
                            void *ctx)
{
    return ledger_reservation_list_page(l, account, NULL, cb, ctx);
}

int ledger_reservation_list_page(struct ledger *l, const char *account, struct ledger_page *page,
                                 ledger_reservation_cb cb, void *ctx)
{
    if (page != NULL && page->after_len != 0 && page->after_len != TIMER_KEY_SIZE) {
        return ledger__set_error(l, -LEDGER_EINVAL, "not a cursor of this list");
    }
    MDB_txn *txn;
    int rv = read_begin(l, &txn);
    if (rv != 0) {
        return rv;
    }
    struct resv_list_ctx rc = {.cb = cb, .ctx = ctx, .page = page};
    if (account != NULL) {
        rv = scoped_id(l, txn, page != NULL ? page->scope : NULL, account, &rc.account_id,
                       "account");
        if (rv != 0) {
            mdb_txn_abort(txn);
            return rv;
        }
    }
    rv = scan_prefix(l, txn, DB_TIMERS, NULL, 0, page, list_resv, &rc);
    mdb_txn_abort(txn);
    return rv;
}

/* ---- Journal. ---- */

/* Timestamp of journal entry `seq`, or INT64_MAX if absent. */
static int64_t journal_ts(struct ledger *l, MDB_txn *txn, uint64_t seq)
{
    uint8_t k[8];
    ledger__be64(k, seq);
    MDB_val key = {8, k}, v;
    if (mdb_get(txn, l->dbi[DB_JOURNAL], &key, &v) != 0 || v.mv_size < sizeof(struct jrec)) {
        return INT64_MAX;
    }
    struct jrec j;
    memcpy(&j, v.mv_data, sizeof(j));
    return j.ts_ms;
}

/* First sequence number whose time is >= since_ms (entries are in time order). */
static uint64_t journal_first_since(struct ledger *l, MDB_txn *txn, int64_t since_ms)
{
    uint64_t lo = 1, hi = l->meta.journal_seq + 1;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (journal_ts(l, txn, mid) < since_ms) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* list_journal's "past the requested range" (a callback stops with a small int). */
#define JOURNAL_PAST_RANGE INT32_MIN

/* A journal cursor: the record's number (BE64) and the entry's position in its chain. */
#define JOURNAL_CURSOR_SIZE 9

struct journal_ctx {
    uint64_t account_id;
    int64_t until_ms;
    ledger_journal_cb cb;
    void *ctx;
    struct ledger_page *page; /* NULL: unscoped, from the start */
    uint64_t resume_seq;      /* the cursor's record: entries up to resume_index were listed */
    uint64_t resume_index;
};

static int journal_emit(struct ledger *l, MDB_txn *txn, const struct jrec *j, uint64_t i,
                        struct journal_ctx *jc)
{
    /* list_journal bounded the chain; an entry without one is listed once. */
    assert(j->chain_len <= LEDGER_DEPTH_MAX && (i < j->chain_len || i == 0));
    struct ledger_journal_entry e;
    memset(&e, 0, sizeof(e));
    e.seq = j->seq;
    e.ts_ms = j->ts_ms;
    e.kind = (uint8_t)j->kind;
    e.cmd_type = (uint8_t)j->cmd_type;
    ledger__copy_name(e.actor, j->actor, j->actor_len, LEDGER_ACTOR_MAX);
    memcpy(e.request_id, j->request_id, LEDGER_REQUEST_ID_SIZE);
    e.tokens = j->tokens;
    ledger__copy_name(e.model, j->model, j->model_len, LEDGER_MODEL_MAX);
    memcpy(e.admin_hash, j->admin_hash, 32);
    if (i < j->chain_len) {
        name_of(l, txn, j->chain[i], e.account);
        e.amount_micros = j->amount_micros[i];
        e.period_start_ms = j->period_start[i];
    }
    uint8_t cursor[JOURNAL_CURSOR_SIZE];
    ledger__be64(cursor, j->seq);
    cursor[8] = (uint8_t)i;
    return page_took(jc->page, jc->cb(jc->ctx, &e), cursor, sizeof(cursor));
}

/* Whether entry `i` of record `j` is listed: in scope, and not on an earlier page. */
static bool journal_wanted(struct ledger *l, MDB_txn *txn, const struct jrec *j, uint64_t i,
                           const struct journal_ctx *jc)
{
    if (j->seq == jc->resume_seq && i <= jc->resume_index) {
        return false;
    }
    if (jc->page == NULL || !scoped(jc->page->scope)) {
        return true;
    }
    return j->chain_len > 0 && in_scope(l, txn, jc->page->scope, j->chain[j->chain_len - 1]);
}

static int list_journal(struct ledger *l, MDB_txn *txn, const MDB_val *k, const MDB_val *v,
                        void *ctx)
{
    (void)k;
    struct journal_ctx *jc = ctx;
    struct jrec j;
    if (v->mv_size < sizeof(j)) {
        return ledger__set_error(l, -LEDGER_ECORRUPT, "journal: short record");
    }
    memcpy(&j, v->mv_data, sizeof(j));
    if (j.ts_ms >= jc->until_ms) {
        return JOURNAL_PAST_RANGE; /* reported as 0 below */
    }
    if (j.chain_len > LEDGER_DEPTH_MAX) {
        return ledger__set_error(l, -LEDGER_ECORRUPT, "journal: bad chain length");
    }
    if (j.chain_len == 0) {
        bool wanted = jc->account_id == 0 && journal_wanted(l, txn, &j, 0, jc);
        return wanted ? journal_emit(l, txn, &j, 0, jc) : 0;
    }
    for (uint64_t i = 0; i < j.chain_len; i++) {
        if ((jc->account_id == 0 || j.chain[i] == jc->account_id) &&
            journal_wanted(l, txn, &j, i, jc)) {
            int stop = journal_emit(l, txn, &j, i, jc);
            if (stop != 0) {
                return stop;
            }
        }
    }
    return 0;
}

int ledger_journal_list(struct ledger *l, const char *account, int64_t since_ms, int64_t until_ms,
                        ledger_journal_cb cb, void *ctx)
{
    return ledger_journal_list_page(l, account, since_ms, until_ms, NULL, cb, ctx);
}

int ledger_journal_list_page(struct ledger *l, const char *account, int64_t since_ms,
                             int64_t until_ms, struct ledger_page *page, ledger_journal_cb cb,
                             void *ctx)
{
    struct journal_ctx jc = {.until_ms = until_ms, .cb = cb, .ctx = ctx, .page = page};
    if (page != NULL && page->after_len != 0) {
        if (page->after_len != JOURNAL_CURSOR_SIZE || page->after[8] >= LEDGER_DEPTH_MAX) {
            return ledger__set_error(l, -LEDGER_EINVAL, "not a cursor of this list");
        }
        jc.resume_seq = ledger__get_be64(page->after);
        jc.resume_index = page->after[8];
    }
    MDB_txn *txn;
    int rv = read_begin(l, &txn);
    if (rv != 0) {
        return rv;
    }
    if (account != NULL) {
        rv = scoped_id(l, txn, page != NULL ? page->scope : NULL, account, &jc.account_id,
                       "account");
        if (rv != 0) {
            mdb_txn_abort(txn);
            return rv;
        }
    }
    MDB_cursor *cur;
    rv = mdb_cursor_open(txn, l->dbi[DB_JOURNAL], &cur);
    if (rv != 0) {
        mdb_txn_abort(txn);
        return map_rc(l, rv, "cursor");
    }
    uint8_t start[8];
    uint64_t first = journal_first_since(l, txn, since_ms);
    ledger__be64(start, first > jc.resume_seq ? first : jc.resume_seq);
    MDB_val k = {8, start}, v;
    int stop = 0;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && stop == 0) {
        stop = list_journal(l, txn, &k, &v, &jc);
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (stop == JOURNAL_PAST_RANGE) {
        return 0;
    }
    if (stop != 0) {
        return stop;
    }
    return rc == MDB_NOTFOUND ? 0 : map_rc(l, rc, "journal");
}

int ledger_counts(struct ledger *l, struct ledger_counts *out)
{
    MDB_txn *txn;
    int rv = read_begin(l, &txn);
    if (rv != 0) {
        return rv;
    }
    static const int dbs[4] = {DB_ACCOUNTS, DB_KEYS, DB_RESV, DB_JOURNAL};
    uint64_t n[4] = {0};
    for (int i = 0; i < 4 && rv == 0; i++) {
        MDB_stat st;
        rv = map_rc(l, mdb_stat(txn, l->dbi[dbs[i]], &st), "stat");
        n[i] = st.ms_entries;
    }
    mdb_txn_abort(txn);
    out->accounts = n[0];
    out->keys = n[1];
    out->reservations = n[2];
    out->journal = n[3];
    return rv;
}
