/*
 * check.c: DESIGN.md's invariants, checked over the whole stored state.
 *
 * The checker recomputes what the ledger maintains incrementally (held, inflight and
 * key counts from the records they summarize, spent from the journal, the admin hash
 * chain from its entries) and compares. It reads in one read transaction and is
 * O(state): tests and the simulation call it after every step; a node never does.
 */
#include "wire/wire.h"
#include "ledger/store.h"

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
        return bad(c, "cannot open a cursor on %s", ledger_db_names[db]);
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
        return bad(c, "accounts: bad record size");
    }
    uint64_t id = store_get_be64(k->mv_data);
    if (id < 1 || id > c->n_accounts) {
        return bad(c, "accounts: id %" PRIu64 " out of range", id);
    }
    memcpy(&c->accts[id], v->mv_data, sizeof(struct acct_rec));
    c->exp[id].seen = true;
    return 0;
}

static int check_account(struct checker *c, uint64_t id)
{
    const struct acct_rec *a = &c->accts[id];
    if (a->id != id || a->name_len == 0 || a->name_len > LEDGER_NAME_MAX) {
        return bad(c, "account %" PRIu64 ": bad id or name", id);
    }
    if (a->held_micros < 0 || a->spent_micros < 0 || a->lifetime_spent_micros < 0 ||
        a->overrun_micros < 0 || a->rpm_bucket.level_units < 0 || a->tpm_bucket.level_units < 0) {
        return bad(c, "account %.*s: negative counter", (int)a->name_len, a->name);
    }
    uint64_t up = a->parent_id;
    for (int depth = 1; up != 0; depth++) {
        if (depth >= LEDGER_DEPTH_MAX || !valid_id(c, up)) {
            return bad(c, "account %.*s: chain too deep, cyclic or broken", (int)a->name_len,
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
        return bad(c, "names: bad record");
    }
    memcpy(&id, v->mv_data, 8);
    if (!valid_id(c, id) || c->accts[id].name_len != k->mv_size ||
        memcmp(c->accts[id].name, k->mv_data, k->mv_size) != 0) {
        return bad(c, "names: %.*s does not name its account", (int)k->mv_size,
                   (const char *)k->mv_data);
    }
    return 0;
}

static int on_child(struct checker *c, const MDB_val *k, const MDB_val *v)
{
    uint64_t id;
    if (v->mv_size != 8 || k->mv_size < 9) {
        return bad(c, "children: bad record");
    }
    memcpy(&id, v->mv_data, 8);
    uint64_t parent = store_get_be64(k->mv_data);
    if (!valid_id(c, id) || c->accts[id].parent_id != parent) {
        return bad(c, "children: entry disagrees with account %" PRIu64, id);
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
        return bad(c, "keys: bad record");
    }
    memcpy(&kr, v->mv_data, sizeof(kr));
    if (!valid_id(c, kr.account_id) || kr.revoked > 1) {
        return bad(c, "keys: bad account or flag");
    }
    if (!kr.revoked) {
        c->exp[kr.account_id].keys++;
    }
    return 0;
}

static int on_model(struct checker *c, const MDB_val *k, const MDB_val *v)
{
    if (k->mv_size <= 8 || k->mv_size > MODEL_KEY_MAX || v->mv_size != sizeof(struct model_rec)) {
        return bad(c, "models: bad record");
    }
    uint64_t id = store_get_be64(k->mv_data);
    if (!valid_id(c, id)) {
        return bad(c, "models: unknown account %" PRIu64, id);
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
    store_be64(key, id);
    memcpy(key + 8, model, len);
    size_t klen = 8 + len, lo = 0, hi = c->n_models;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        struct model_expect *m = &c->models[mid];
        size_t n = m->key_len < klen ? m->key_len : klen;
        int cmp = memcmp(m->key, key, n);
        if (cmp == 0) {
            cmp = m->key_len < klen ? -1 : (m->key_len > klen ? 1 : 0);
        }
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
    store_be64(k, (uint64_t)due);
    memcpy(k + 8, id, LEDGER_REQUEST_ID_SIZE);
    k[8 + LEDGER_REQUEST_ID_SIZE] = 0;
    MDB_val key = {sizeof(k), k}, v;
    return mdb_get(c->txn, c->l->dbi[DB_TIMERS], &key, &v) == 0;
}

static int on_resv(struct checker *c, const MDB_val *k, const MDB_val *v)
{
    struct resv_rec r;
    if (k->mv_size != LEDGER_REQUEST_ID_SIZE || store_resv_decode(v, &r) != 0) {
        return bad(c, "resv: bad record");
    }
    if (r.state == RESV_REJECTED) {
        return 0;
    }
    if (r.state > LEDGER_RESV_LATE_SETTLED || r.chain_len == 0 ||
        r.chain_len > LEDGER_DEPTH_MAX || r.estimate_micros < 0) {
        return bad(c, "resv: bad state or chain");
    }
    if (r.state != LEDGER_RESV_OPEN) {
        return 0;
    }
    if (!timer_exists(c, r.expires_at_ms, k->mv_data)) {
        return bad(c, "resv: open reservation without its expiry timer");
    }
    if (r.expires_at_ms <= c->l->meta.clock_ms) {
        return bad(c, "resv: open reservation past its expiry");
    }
    for (uint64_t i = 0; i < r.chain_len; i++) {
        uint64_t id = r.chain[i];
        if (!valid_id(c, id)) {
            return bad(c, "resv: unknown account in chain");
        }
        c->exp[id].held += r.estimate_micros;
        c->exp[id].inflight++;
        if (r.model_mask & (1u << i)) {
            struct model_expect *m = find_model(c, id, r.model, r.model_len);
            if (m == NULL) {
                return bad(c, "resv: model record missing");
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
        return bad(c, "timers: bad key");
    }
    if ((int64_t)store_get_be64(k->mv_data) <= c->l->meta.clock_ms) {
        return bad(c, "timers: a timer due at or before the clock did not fire");
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
        return bad(c, "journal: short record");
    }
    memcpy(&j, v->mv_data, sizeof(j));
    if (j.seq != w->seq + 1 || j.ts_ms < w->ts || j.chain_len > LEDGER_DEPTH_MAX ||
        v->mv_size != sizeof(j) + j.payload_len) {
        return bad(c, "journal: entry %" PRIu64 " out of order or malformed", j.seq);
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
            return bad(c, "journal: admin hash chain broken at %" PRIu64, j.seq);
        }
        memcpy(w->head, want, 32);
        return 0;
    }
    for (uint64_t i = 0; i < j.chain_len && charge_kind(j.kind); i++) {
        uint64_t id = j.chain[i];
        if (!valid_id(c, id)) {
            return bad(c, "journal: unknown account");
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
        return bad(c, "journal: end disagrees with meta (seq or admin chain head)");
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
            bad(c, "account %.*s: held %" PRId64 "/%" PRIu64 " but open reservations sum to %" PRId64
                   "/%" PRIu64, n, a->name, a->held_micros, a->inflight, e->held, e->inflight);
        } else if (a->spent_micros != e->spent) {
            bad(c, "account %.*s: spent %" PRId64 " but the period's journal sums to %" PRId64, n,
                a->name, a->spent_micros, e->spent);
        } else if (a->n_keys != e->keys || a->n_models != e->models || e->children != 0) {
            bad(c, "account %.*s: key, model or child count disagrees", n, a->name);
        }
    }
    for (size_t i = 0; i < c->n_models && c->rv == 0; i++) {
        const struct model_expect *m = &c->models[i];
        if (m->rec.held_micros != m->held || m->rec.inflight != m->inflight ||
            m->rec.spent_micros < 0) {
            bad(c, "model %.*s: held or inflight disagrees with open reservations",
                (int)(m->key_len - 8), (const char *)m->key + 8);
        }
    }
    return c->rv;
}

static int run_checks(struct checker *c)
{
    if (each(c, DB_ACCOUNTS, on_account) != 0) {
        return c->rv;
    }
    for (uint64_t id = 1; id <= c->n_accounts; id++) {
        if (!c->exp[id].seen) {
            return bad(c, "account id %" PRIu64 " is missing", id);
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
        return ledger_set_error(l, -LEDGER_EINVAL, "check during a batch");
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
