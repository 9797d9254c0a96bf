/*
 * ledger.c: applying batches to the budget state (the contract is docs/ledger.md).
 *
 * One batch runs in one LMDB write transaction. Account records are read through a
 * per-batch cache and written back once when the batch ends, because a batch of 256
 * requests on one org touches the org and its teams hundreds of times. Every command
 * first computes its whole answer from copies (all the checks of the chain) and only
 * then changes anything, so a denial or an error leaves no trace but its stored answer.
 *
 * The only failures that are not answers are LMDB's: they set `fatal`, the command
 * stops where it is, and the whole transaction is aborted. MDB_MAP_FULL is the one
 * that is expected: the map is doubled and the batch run again from the start, which
 * is safe because nothing of the aborted attempt reached the disk.
 */
#include "wire/wire.h"
#include "ledger/store.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const ledger_db_names[DB_COUNT] = {
    "meta", "names", "accounts", "children", "keys",
    "models", "resv", "timers", "answers", "journal",
};

#define DEFAULT_MAP_BYTES ((size_t)1 << 30)
#define DEFAULT_MAX_MAP_BYTES ((size_t)64 << 30)
#define SNAPSHOT_WAIT_S 60

_Static_assert(sizeof(struct acct_rec) % 8 == 0, "acct_rec padding");
_Static_assert(sizeof(struct resv_rec) % 8 == 0, "resv_rec padding");
_Static_assert(sizeof(struct jrec) % 8 == 0, "jrec padding");
_Static_assert(sizeof(struct model_rec) == 15 * 8, "model_rec padding");
_Static_assert(sizeof(struct meta_rec) == 6 * 8 + 32, "meta_rec padding");

/* ---- Small helpers. ---- */

void store_be64(uint8_t out[8], uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(v >> (56 - 8 * i));
    }
}

uint64_t store_get_be64(const uint8_t in[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | in[i];
    }
    return v;
}

void store_copy_name(char *dst, const char *src, uint64_t len, size_t max)
{
    size_t n = len > max ? max : (size_t)len;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int ledger_set_error(struct ledger *l, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->errmsg, sizeof(l->errmsg), fmt, ap);
    va_end(ap);
    return code;
}

const char *ledger_errmsg(const struct ledger *l)
{
    return l->errmsg;
}

uint64_t ledger_applied_index(const struct ledger *l)
{
    return l->meta.applied_index;
}

int64_t ledger_now_ms(const struct ledger *l)
{
    return l->meta.clock_ms;
}

void store_meta_new(struct meta_rec *m)
{
    memset(m, 0, sizeof(*m));
    m->format = STORE_FORMAT;
    m->retention_ms = LEDGER_RETENTION_DEFAULT_MS;
    m->next_account_id = 1;
}

size_t store_resv_size(const struct resv_rec *r)
{
    assert(r->metadata_len <= LEDGER_METADATA_MAX);
    return offsetof(struct resv_rec, metadata) + ((r->metadata_len + 7) & ~(uint64_t)7);
}

int store_resv_decode(const MDB_val *v, struct resv_rec *out)
{
    size_t head = offsetof(struct resv_rec, metadata);
    if (v->mv_size < head || v->mv_size > sizeof(*out) || v->mv_size % 8 != 0) {
        return -1;
    }
    memcpy(out, v->mv_data, v->mv_size);
    memset((char *)out + v->mv_size, 0, sizeof(*out) - v->mv_size);
    return store_resv_size(out) == v->mv_size ? 0 : -1;
}

int64_t store_acct_period_start(const struct acct_rec *a, int64_t now_ms)
{
    if (!(a->lim_set & LEDGER_LIM_PERIOD) || a->period_kind == LEDGER_PERIOD_NONE) {
        return a->period_anchor_ms;
    }
    return ledger_period_start((uint8_t)a->period_kind, a->period_ms, a->period_anchor_ms, now_ms);
}

/* ---- LMDB access during a batch: errors become `fatal`. ---- */

static bool failed(struct ledger *l, int rc)
{
    if (rc != 0 && l->fatal == 0) {
        l->fatal = rc;
    }
    return rc != 0;
}

/* 1 found, 0 not found, -1 fatal. */
static int db_get(struct ledger *l, int db, const void *k, size_t klen, MDB_val *v)
{
    MDB_val key = {klen, (void *)k};
    int rc = mdb_get(l->txn, l->dbi[db], &key, v);
    if (rc == MDB_NOTFOUND) {
        return 0;
    }
    return failed(l, rc) ? -1 : 1;
}

static bool db_put(struct ledger *l, int db, const void *k, size_t klen, const void *v,
                   size_t vlen, unsigned flags)
{
    MDB_val key = {klen, (void *)k}, val = {vlen, (void *)v};
    return !failed(l, mdb_put(l->txn, l->dbi[db], &key, &val, flags));
}

static bool db_del(struct ledger *l, int db, const void *k, size_t klen)
{
    MDB_val key = {klen, (void *)k};
    int rc = mdb_del(l->txn, l->dbi[db], &key, NULL);
    return rc == MDB_NOTFOUND || !failed(l, rc);
}

/* ---- The account cache. ---- */

static uint32_t cache_slot(uint64_t id)
{
    uint64_t h = id * 0x9E3779B97F4A7C15ULL;
    return (uint32_t)(h >> 40) & (CACHE_SLOTS - 1);
}

static void cache_clear(struct ledger *l)
{
    for (uint32_t i = 0; i < l->cache_count; i++) {
        l->cache[l->cache_used[i]].id = 0;
    }
    l->cache_count = 0;
}

static void cache_flush(struct ledger *l)
{
    for (uint32_t i = 0; i < l->cache_count && l->fatal == 0; i++) {
        struct cache_entry *e = &l->cache[l->cache_used[i]];
        if (e->dirty) {
            uint8_t k[8];
            store_be64(k, e->id);
            db_put(l, DB_ACCOUNTS, k, 8, &e->rec, sizeof(e->rec), 0);
        }
    }
    cache_clear(l);
}

/* Called between commands only: pointers into the cache stay valid within one. */
static void cache_make_room(struct ledger *l)
{
    if (l->cache_count >= CACHE_FLUSH_AT) {
        cache_flush(l);
    }
}

static struct cache_entry *cache_insert(struct ledger *l, uint64_t id)
{
    assert(l->cache_count < CACHE_SLOTS - 1);
    uint32_t s = cache_slot(id);
    while (l->cache[s].id != 0) {
        s = (s + 1) & (CACHE_SLOTS - 1);
    }
    l->cache[s].id = id;
    l->cache[s].dirty = false;
    l->cache_used[l->cache_count++] = s;
    return &l->cache[s];
}

/* The account record `id`, through the cache; NULL if absent or on a fatal error. */
static struct acct_rec *acct_load(struct ledger *l, uint64_t id)
{
    assert(id != 0);
    for (uint32_t s = cache_slot(id); l->cache[s].id != 0; s = (s + 1) & (CACHE_SLOTS - 1)) {
        if (l->cache[s].id == id) {
            return &l->cache[s].rec;
        }
    }
    uint8_t k[8];
    MDB_val v;
    store_be64(k, id);
    if (db_get(l, DB_ACCOUNTS, k, 8, &v) != 1) {
        return NULL;
    }
    if (v.mv_size != sizeof(struct acct_rec)) {
        failed(l, MDB_CORRUPTED);
        return NULL;
    }
    struct cache_entry *e = cache_insert(l, id);
    memcpy(&e->rec, v.mv_data, sizeof(e->rec));
    return &e->rec;
}

static void acct_dirty(struct acct_rec *a)
{
    struct cache_entry *e = (struct cache_entry *)((char *)a - offsetof(struct cache_entry, rec));
    e->dirty = true;
}

static uint64_t name_lookup(struct ledger *l, const char *name)
{
    MDB_val v;
    if (db_get(l, DB_NAMES, name, strlen(name), &v) != 1 || v.mv_size != 8) {
        return 0;
    }
    uint64_t id;
    memcpy(&id, v.mv_data, 8);
    return id;
}

/* Leaf-first chain of account `id`: fills ids and records; returns its length or 0. */
static uint32_t chain_load(struct ledger *l, uint64_t id, uint64_t ids[LEDGER_DEPTH_MAX],
                           struct acct_rec *recs[LEDGER_DEPTH_MAX])
{
    uint32_t n = 0;
    while (id != 0) {
        assert(n < LEDGER_DEPTH_MAX);
        struct acct_rec *a = acct_load(l, id);
        if (a == NULL) {
            failed(l, MDB_CORRUPTED); /* a parent id that names nothing */
            return 0;
        }
        ids[n] = id;
        recs[n++] = a;
        id = a->parent_id;
    }
    return n;
}

/* Depth of account `id` (1 for a root), or 0 on error. */
static uint32_t acct_depth(struct ledger *l, uint64_t id)
{
    uint64_t ids[LEDGER_DEPTH_MAX];
    struct acct_rec *recs[LEDGER_DEPTH_MAX];
    return chain_load(l, id, ids, recs);
}

static void acct_roll(struct acct_rec *a, int64_t now_ms)
{
    int64_t start = store_acct_period_start(a, now_ms);
    if (start != a->period_start_ms) {
        a->period_start_ms = start;
        a->spent_micros = 0;
    }
}

/* Spent in the period containing now, without changing the record. */
static int64_t acct_spent_now(const struct acct_rec *a, int64_t now_ms)
{
    return store_acct_period_start(a, now_ms) == a->period_start_ms ? a->spent_micros : 0;
}

/* ---- Model records (not cached: only reservations that name a model touch them). ---- */

static size_t model_key(uint8_t *k, uint64_t account_id, const char *model)
{
    size_t n = strlen(model);
    store_be64(k, account_id);
    memcpy(k + 8, model, n);
    return 8 + n;
}

/* 1 found (copied into *out), 0 absent, -1 fatal. */
static int model_get(struct ledger *l, uint64_t account_id, const char *model,
                     struct model_rec *out)
{
    uint8_t k[MODEL_KEY_MAX];
    MDB_val v;
    int rc = db_get(l, DB_MODELS, k, model_key(k, account_id, model), &v);
    if (rc == 1) {
        if (v.mv_size != sizeof(*out)) {
            failed(l, MDB_CORRUPTED);
            return -1;
        }
        memcpy(out, v.mv_data, sizeof(*out));
    }
    return rc;
}

static void model_put(struct ledger *l, uint64_t account_id, const char *model,
                      const struct model_rec *m)
{
    uint8_t k[MODEL_KEY_MAX];
    db_put(l, DB_MODELS, k, model_key(k, account_id, model), m, sizeof(*m), 0);
}

static void model_roll(struct model_rec *m, const struct acct_rec *a, int64_t now_ms)
{
    int64_t start = store_acct_period_start(a, now_ms);
    if (start != m->period_start_ms) {
        m->period_start_ms = start;
        m->spent_micros = 0;
    }
}

/* ---- Timers and the journal. ---- */

static void timer_put(struct ledger *l, int64_t due_ms, const uint8_t *request_id, uint8_t kind)
{
    /* I8: this batch's timers already ran; one due now would wait for the next batch. */
    assert(due_ms > l->now_ms);
    uint8_t k[TIMER_KEY_SIZE];
    store_be64(k, (uint64_t)due_ms);
    memcpy(k + 8, request_id, LEDGER_REQUEST_ID_SIZE);
    k[8 + LEDGER_REQUEST_ID_SIZE] = kind;
    db_put(l, DB_TIMERS, k, sizeof(k), "", 0, 0);
}

static void jrec_init(struct ledger *l, struct jrec *j, uint64_t kind, const uint8_t *request_id,
                      const char *actor)
{
    memset(j, 0, sizeof(*j));
    j->ts_ms = l->now_ms;
    j->kind = kind;
    memcpy(j->request_id, request_id, LEDGER_REQUEST_ID_SIZE);
    j->actor_len = strnlen(actor, LEDGER_ACTOR_MAX);
    memcpy(j->actor, actor, j->actor_len);
}

static void journal_append(struct ledger *l, struct jrec *j, const void *payload, size_t plen)
{
    assert(j->ts_ms >= l->meta.clock_ms && "I9: journal times never decrease");
    assert(j->chain_len <= LEDGER_DEPTH_MAX && (plen == 0 || payload != NULL));
    uint8_t k[8];
    j->seq = ++l->work.journal_seq;
    j->payload_len = plen;
    store_be64(k, j->seq);
    if (plen == 0) {
        db_put(l, DB_JOURNAL, k, 8, j, sizeof(*j), MDB_APPEND);
        return;
    }
    MDB_val key = {8, k}, val = {sizeof(*j) + plen, NULL};
    if (failed(l, mdb_put(l->txn, l->dbi[DB_JOURNAL], &key, &val, MDB_APPEND | MDB_RESERVE))) {
        return;
    }
    memcpy(val.mv_data, j, sizeof(*j));
    memcpy((char *)val.mv_data + sizeof(*j), payload, plen);
}

/* Journal the soft-budget crossing of account `a` once per period. */
static void soft_budget_check(struct ledger *l, struct acct_rec *a, const uint8_t *request_id,
                              const char *actor)
{
    if (!(a->lim_set & LEDGER_LIM_SOFT_BUDGET) || a->spent_micros <= a->soft_budget_micros ||
        a->soft_alerted_period == a->period_start_ms) {
        return;
    }
    struct jrec j;
    jrec_init(l, &j, LEDGER_J_SOFT_BUDGET, request_id, actor);
    j.chain_len = 1;
    j.chain[0] = a->id;
    j.amount_micros[0] = a->spent_micros;
    j.period_start[0] = a->period_start_ms;
    a->soft_alerted_period = a->period_start_ms;
    journal_append(l, &j, NULL, 0);
}

/* ---- Results. ---- */

static void result_init(struct ledger_result *r, const struct ledger_cmd *c)
{
    memset(r, 0, sizeof(*r));
    r->cmd_type = c->type;
    memcpy(r->request_id, c->request_id, LEDGER_REQUEST_ID_SIZE);
}

static void result_account(struct ledger *l, struct ledger_result *r, uint64_t id)
{
    struct acct_rec *a = id ? acct_load(l, id) : NULL;
    if (a != NULL) {
        store_copy_name(r->account, a->name, a->name_len, LEDGER_NAME_MAX);
    }
}

static uint64_t burst_or_rate(uint64_t burst, uint64_t rate)
{
    return burst ? burst : rate;
}

/* Copy the limits named by `bits` into the record. */
static void limits_apply(struct acct_rec *a, const struct ledger_limits *lim, uint32_t bits)
{
    a->lim_set |= bits;
    if (bits & LEDGER_LIM_BUDGET) {
        a->budget_micros = lim->budget_micros;
    }
    if (bits & LEDGER_LIM_SOFT_BUDGET) {
        a->soft_budget_micros = lim->soft_budget_micros;
    }
    if (bits & LEDGER_LIM_PERIOD) {
        a->period_kind = lim->period_kind;
        a->period_ms = lim->period_kind == LEDGER_PERIOD_FIXED ? lim->period_ms : 0;
    }
    if (bits & LEDGER_LIM_RPM) {
        a->rpm = lim->rpm;
        a->rpm_burst = burst_or_rate(lim->rpm_burst, lim->rpm);
    }
    if (bits & LEDGER_LIM_TPM) {
        a->tpm = lim->tpm;
        a->tpm_burst = burst_or_rate(lim->tpm_burst, lim->tpm);
    }
    if (bits & LEDGER_LIM_PARALLEL) {
        a->max_parallel = lim->max_parallel;
    }
    if (bits & LEDGER_LIM_EXPIRES) {
        a->expires_at_ms = lim->expires_at_ms;
    }
    if (bits & LEDGER_LIM_BLOCKED) {
        a->blocked = lim->blocked;
    }
    if (bits & LEDGER_LIM_EXPIRY_POLICY) {
        a->expiry_policy = lim->expiry_policy;
    }
}

static void limits_clear(struct acct_rec *a, uint32_t bits)
{
    a->lim_set &= ~(uint64_t)bits;
    if (bits & LEDGER_LIM_BLOCKED) {
        a->blocked = 0;
    }
    if (bits & LEDGER_LIM_EXPIRY_POLICY) {
        a->expiry_policy = LEDGER_EXPIRY_CHARGE;
    }
    if (bits & LEDGER_LIM_PERIOD) {
        a->period_kind = LEDGER_PERIOD_NONE;
        a->period_ms = 0;
    }
}

/* ---- Admin commands. ---- */

/* Admin answers live in `answers`. Returns true if `c` was answered from there. */
static bool admin_replay(struct ledger *l, const struct ledger_cmd *c, uint64_t fp,
                         struct ledger_result *r)
{
    uint8_t k[ANSWER_KEY_SIZE];
    MDB_val v;
    memcpy(k, c->request_id, LEDGER_REQUEST_ID_SIZE);
    k[LEDGER_REQUEST_ID_SIZE] = c->type;
    if (db_get(l, DB_ANSWERS, k, sizeof(k), &v) != 1) {
        return l->fatal != 0;
    }
    struct answer_rec a;
    if (v.mv_size != sizeof(a)) {
        failed(l, MDB_CORRUPTED);
        return true;
    }
    memcpy(&a, v.mv_data, sizeof(a));
    if (a.fp != fp) {
        r->status = -LEDGER_ECONFLICT;
    } else {
        r->status = (int32_t)a.status;
        r->flags |= LEDGER_RESULT_REPLAYED;
    }
    return true;
}

static void admin_store(struct ledger *l, const struct ledger_cmd *c, uint64_t fp, int status)
{
    uint8_t k[ANSWER_KEY_SIZE];
    struct answer_rec a = {fp, status};
    memcpy(k, c->request_id, LEDGER_REQUEST_ID_SIZE);
    k[LEDGER_REQUEST_ID_SIZE] = c->type;
    db_put(l, DB_ANSWERS, k, sizeof(k), &a, sizeof(a), 0);
    timer_put(l, l->now_ms + l->work.retention_ms, c->request_id, c->type);
}

/* Journal an applied admin command, chained to the previous one by SHA-256. */
static void admin_journal(struct ledger *l, const struct ledger_cmd *c, uint64_t account_id)
{
    struct jrec j;
    void *payload = NULL;
    size_t plen = 0;
    if (ledger_cmd_encode(c, &payload, &plen) != 0) {
        failed(l, ENOMEM);
        return;
    }
    jrec_init(l, &j, LEDGER_J_ADMIN, c->request_id, c->actor);
    j.cmd_type = c->type;
    j.chain_len = account_id ? 1 : 0;
    j.chain[0] = account_id;
    j.seq = l->work.journal_seq + 1;
    j.payload_len = plen;
    SHA256_CTX sha;
    SHA256_Init(&sha);
    SHA256_Update(&sha, l->work.admin_head, 32);
    SHA256_Update(&sha, &j, sizeof(j)); /* admin_hash is still zero here */
    SHA256_Update(&sha, payload, plen);
    SHA256_Final(j.admin_hash, &sha);
    memcpy(l->work.admin_head, j.admin_hash, 32);
    journal_append(l, &j, payload, plen);
    free(payload);
}

static int cmd_create(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    const char *name = c->u.create.name, *parent = c->u.create.parent;
    if (name_lookup(l, name) != 0) {
        return -LEDGER_EEXIST;
    }
    uint64_t parent_id = 0;
    if (parent[0] != '\0') {
        parent_id = name_lookup(l, parent);
        if (parent_id == 0) {
            return -LEDGER_ENOTFOUND;
        }
        if (acct_depth(l, parent_id) >= LEDGER_DEPTH_MAX) {
            return -LEDGER_EDEPTH;
        }
    }
    if (l->fatal) {
        return 0;
    }
    uint64_t id = l->work.next_account_id++;
    struct cache_entry *e = cache_insert(l, id);
    struct acct_rec *a = &e->rec;
    memset(a, 0, sizeof(*a));
    e->dirty = true;
    a->id = id;
    a->parent_id = parent_id;
    a->created_ms = l->now_ms;
    a->period_anchor_ms = l->now_ms;
    a->soft_alerted_period = -1;
    a->name_len = strlen(name);
    memcpy(a->name, name, a->name_len);
    limits_apply(a, &c->u.create.limits, c->u.create.limits.set);
    a->period_start_ms = store_acct_period_start(a, l->now_ms);

    uint8_t k[CHILD_KEY_MAX];
    store_be64(k, parent_id);
    memcpy(k + 8, name, a->name_len);
    db_put(l, DB_NAMES, name, a->name_len, &id, 8, 0);
    db_put(l, DB_CHILDREN, k, 8 + a->name_len, &id, 8, 0);
    *account_id = id;
    return 0;
}

/* Height of the subtree under `id` (1 for a leaf), at most LEDGER_DEPTH_MAX + 1. */
static uint32_t subtree_height(struct ledger *l, uint64_t id, uint32_t depth_left)
{
    if (depth_left == 0) {
        return LEDGER_DEPTH_MAX + 1; /* deeper than allowed: stop counting */
    }
    MDB_cursor *cur;
    if (failed(l, mdb_cursor_open(l->txn, l->dbi[DB_CHILDREN], &cur))) {
        return LEDGER_DEPTH_MAX + 1;
    }
    uint8_t prefix[8];
    store_be64(prefix, id);
    MDB_val k = {8, prefix}, v;
    uint32_t best = 0;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= 8 && memcmp(k.mv_data, prefix, 8) == 0) {
        uint64_t child;
        if (v.mv_size != 8) {
            failed(l, MDB_CORRUPTED);
            break;
        }
        memcpy(&child, v.mv_data, 8);
        uint32_t h = subtree_height(l, child, depth_left - 1);
        best = h > best ? h : best;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        failed(l, rc);
    }
    return best + 1;
}

/* Validate a move of `a` under `parent` ("" = root); 0 with *new_parent set. */
static int move_check(struct ledger *l, const struct acct_rec *a, const char *parent,
                      uint64_t *new_parent)
{
    *new_parent = 0;
    if (parent[0] == '\0') {
        return subtree_height(l, a->id, LEDGER_DEPTH_MAX) > LEDGER_DEPTH_MAX ? -LEDGER_EDEPTH
                                                                                : 0;
    }
    if (!ledger_name_valid(parent, LEDGER_NAME_MAX)) {
        return -LEDGER_ENAME;
    }
    uint64_t pid = name_lookup(l, parent);
    if (pid == 0) {
        return -LEDGER_ENOTFOUND;
    }
    uint64_t ids[LEDGER_DEPTH_MAX];
    struct acct_rec *recs[LEDGER_DEPTH_MAX];
    uint32_t depth = chain_load(l, pid, ids, recs);
    for (uint32_t i = 0; i < depth; i++) {
        if (ids[i] == a->id) {
            return -LEDGER_ECYCLE;
        }
    }
    if (depth + subtree_height(l, a->id, LEDGER_DEPTH_MAX) > LEDGER_DEPTH_MAX) {
        return -LEDGER_EDEPTH;
    }
    *new_parent = pid;
    return 0;
}

static void move_apply(struct ledger *l, struct acct_rec *a, uint64_t new_parent)
{
    assert(new_parent != a->id && "I6: move_check refused a cycle");
    uint8_t k[CHILD_KEY_MAX];
    memcpy(k + 8, a->name, a->name_len);
    store_be64(k, a->parent_id);
    db_del(l, DB_CHILDREN, k, 8 + a->name_len);
    store_be64(k, new_parent);
    db_put(l, DB_CHILDREN, k, 8 + a->name_len, &a->id, 8, 0);
    a->parent_id = new_parent;
}

static int cmd_update(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    const struct ledger_limits *lim = &c->u.update.limits;
    int rv;
    uint64_t id = name_lookup(l, c->u.update.name);
    struct acct_rec *a = id ? acct_load(l, id) : NULL;
    if (a == NULL) {
        return -LEDGER_ENOTFOUND;
    }
    uint64_t new_parent = a->parent_id;
    if (c->u.update.set_parent) {
        rv = move_check(l, a, c->u.update.parent, &new_parent);
        if (rv != 0) {
            return rv;
        }
    }
    if (l->fatal) {
        return 0;
    }
    acct_roll(a, l->now_ms);
    limits_clear(a, c->u.update.clear);
    limits_apply(a, lim, lim->set);
    if ((lim->set | c->u.update.clear) & LEDGER_LIM_PERIOD) {
        a->period_anchor_ms = l->now_ms;
        acct_roll(a, l->now_ms);
    }
    if (new_parent != a->parent_id) {
        move_apply(l, a, new_parent);
    }
    acct_dirty(a);
    *account_id = id;
    return 0;
}

static int key_get(struct ledger *l, const uint8_t *hash, struct key_rec *out)
{
    MDB_val v;
    int rc = db_get(l, DB_KEYS, hash, LEDGER_KEY_HASH_SIZE, &v);
    if (rc == 1) {
        if (v.mv_size != sizeof(*out)) {
            failed(l, MDB_CORRUPTED);
            return -1;
        }
        memcpy(out, v.mv_data, sizeof(*out));
    }
    return rc;
}

static int cmd_key_add(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    struct key_rec k;
    uint64_t id = name_lookup(l, c->u.key.account);
    struct acct_rec *a = id ? acct_load(l, id) : NULL;
    if (a == NULL) {
        return -LEDGER_ENOTFOUND;
    }
    if (key_get(l, c->u.key.key_hash, &k) != 0) {
        return -LEDGER_EEXIST;
    }
    k = (struct key_rec){id, 0, l->now_ms};
    db_put(l, DB_KEYS, c->u.key.key_hash, LEDGER_KEY_HASH_SIZE, &k, sizeof(k), 0);
    a->n_keys++;
    acct_dirty(a);
    *account_id = id;
    return 0;
}

static int cmd_key_revoke(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    struct key_rec k;
    if (key_get(l, c->u.key.key_hash, &k) != 1) {
        return -LEDGER_ENOTFOUND;
    }
    *account_id = k.account_id;
    if (k.revoked) {
        return 0;
    }
    struct acct_rec *a = acct_load(l, k.account_id);
    if (a == NULL) {
        failed(l, MDB_CORRUPTED);
        return 0;
    }
    k.revoked = 1;
    db_put(l, DB_KEYS, c->u.key.key_hash, LEDGER_KEY_HASH_SIZE, &k, sizeof(k), 0);
    assert(a->n_keys > 0);
    a->n_keys--;
    acct_dirty(a);
    return 0;
}

static int cmd_model_limit(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    const struct ledger_model_limits *m = &c->u.model_limit.limits;
    uint64_t id = name_lookup(l, c->u.model_limit.account);
    struct acct_rec *a = id ? acct_load(l, id) : NULL;
    if (a == NULL) {
        return -LEDGER_ENOTFOUND;
    }
    struct model_rec rec;
    int found = model_get(l, id, c->u.model_limit.model, &rec);
    if (found < 0) {
        return 0;
    }
    if (found == 0) {
        /* Records are never deleted: open reservations may count on them. */
        memset(&rec, 0, sizeof(rec));
        rec.period_start_ms = store_acct_period_start(a, l->now_ms);
        a->n_models++;
        acct_dirty(a);
    }
    rec.lim_set = m->set;
    rec.budget_micros = m->budget_micros;
    rec.rpm = m->rpm;
    rec.rpm_burst = burst_or_rate(m->rpm_burst, m->rpm);
    rec.tpm = m->tpm;
    rec.tpm_burst = burst_or_rate(m->tpm_burst, m->tpm);
    model_put(l, id, c->u.model_limit.model, &rec);
    *account_id = id;
    return 0;
}

static int cmd_config(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    *account_id = 0;
    l->work.retention_ms = c->u.config.retention_ms;
    return 0;
}

/* Run one admin command whose arguments passed ledger_cmd_check(). */
static int cmd_admin(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        return cmd_create(l, c, account_id);
    case LEDGER_CMD_ACCOUNT_UPDATE:
        return cmd_update(l, c, account_id);
    case LEDGER_CMD_KEY_ADD:
        return cmd_key_add(l, c, account_id);
    case LEDGER_CMD_KEY_REVOKE:
        return cmd_key_revoke(l, c, account_id);
    case LEDGER_CMD_MODEL_LIMIT_SET:
        return cmd_model_limit(l, c, account_id);
    default:
        assert(c->type == LEDGER_CMD_CONFIG_SET);
        return cmd_config(l, c, account_id);
    }
}

static void exec_admin(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    uint64_t fp = ledger_cmd_fingerprint(c);
    if (admin_replay(l, c, fp, r)) {
        return;
    }
    uint64_t account_id = 0;
    /* The arguments are judged after the replay check, so that a reused request id is a
     * conflict whatever its new arguments are. */
    int rv = ledger_cmd_check(c, NULL);
    if (rv == 0) {
        rv = cmd_admin(l, c, &account_id);
    }
    if (l->fatal) {
        return;
    }
    if (rv == 0) {
        admin_journal(l, c, account_id);
        result_account(l, r, account_id);
    }
    r->status = rv;
    admin_store(l, c, fp, rv);
}

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
    ledger_bucket_drain(b, rate, now_ms);
    return ledger_bucket_fits(b, rate, burst, cost, remaining, retry);
}

static bool model_fits(const struct ledger_cmd *c, struct hold_plan *p, int64_t now_ms,
                       struct deny *d)
{
    struct model_rec *m = &p->model;
    const struct acct_rec *a = p->acct;
    int64_t remaining = 0, retry = 0;
    int64_t est = c->u.reserve.estimate_micros;
    int64_t spent = store_acct_period_start(a, now_ms) == m->period_start_ms ? m->spent_micros : 0;
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
        !budget_fits(a->budget_micros, acct_spent_now(a, now), a->held_micros,
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
        int found = model_get(l, a->id, c->u.reserve.model, &p->model);
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

static void resv_put(struct ledger *l, const uint8_t *id, const struct resv_rec *rec)
{
    db_put(l, DB_RESV, id, LEDGER_REQUEST_ID_SIZE, rec, store_resv_size(rec), 0);
}

/* 1 found (copied), 0 absent, -1 fatal. */
static int resv_get(struct ledger *l, const uint8_t *id, struct resv_rec *out)
{
    MDB_val v;
    int rc = db_get(l, DB_RESV, id, LEDGER_REQUEST_ID_SIZE, &v);
    if (rc == 1 && store_resv_decode(&v, out) != 0) {
        failed(l, MDB_CORRUPTED);
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
    result_account(l, r, rec->deny_account_id);
}

/* Store a reserve that was not granted, so a replay answers the same. */
static void reserve_reject(struct ledger *l, const struct ledger_cmd *c, uint64_t fp, int status,
                           const struct deny *d, struct ledger_result *r)
{
    struct resv_rec rec;
    memset(&rec, 0, sizeof(rec));
    rec.state = RESV_REJECTED;
    rec.created_ms = rec.resolved_ms = l->now_ms;
    rec.reserve_fp = fp;
    rec.status = status;
    if (d != NULL) {
        rec.deny_reason = d->reason;
        rec.deny_account_id = d->account_id;
        rec.remaining = d->remaining;
        rec.retry_after_ms = d->retry_after_ms;
    }
    resv_put(l, c->request_id, &rec);
    timer_put(l, l->now_ms + l->work.retention_ms, c->request_id, 0);
    reserve_answer(l, &rec, r);
}

/* The leaf account a reserve names, or 0 with *status / *d set. */
static uint64_t reserve_leaf(struct ledger *l, const struct ledger_cmd *c, int *status,
                             struct deny *d)
{
    if (c->u.reserve.by_account) {
        uint64_t id = name_lookup(l, c->u.reserve.account);
        if (id == 0) {
            *status = -LEDGER_ENOTFOUND;
        }
        return id;
    }
    struct key_rec k;
    int found = key_get(l, c->u.reserve.key_hash, &k);
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

static void exec_reserve(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    uint64_t fp = ledger_cmd_fingerprint(c);
    struct resv_rec rec;
    int found = resv_get(l, c->request_id, &rec);
    if (found != 0) {
        if (found == 1 && rec.reserve_fp != fp) {
            r->status = -LEDGER_ECONFLICT;
        } else if (found == 1) {
            reserve_answer(l, &rec, r);
            r->flags |= LEDGER_RESULT_REPLAYED;
        }
        return;
    }
    int status = ledger_cmd_check(c, NULL);
    struct deny d = {0};
    if (status != 0) {
        reserve_reject(l, c, fp, status, NULL, r);
        return;
    }
    uint64_t leaf = reserve_leaf(l, c, &status, &d);
    if (leaf == 0) {
        if (!l->fatal) {
            reserve_reject(l, c, fp, status, status == LEDGER_DENIED ? &d : NULL, r);
        }
        return;
    }
    uint64_t ids[LEDGER_DEPTH_MAX];
    struct acct_rec *recs[LEDGER_DEPTH_MAX];
    struct hold_plan plan[LEDGER_DEPTH_MAX];
    uint32_t n = chain_load(l, leaf, ids, recs);
    for (uint32_t i = 0; i < n; i++) {
        plan[i].acct = recs[i];
        if (!account_fits(l, c, &plan[i], &d)) {
            if (!l->fatal) {
                reserve_reject(l, c, fp, LEDGER_DENIED, &d, r);
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
        reserve_reject(l, c, fp, -LEDGER_EOVERFLOW, NULL, r);
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
        acct_roll(a, l->now_ms);
        a->held_micros += est;
        a->inflight++;
        if (a->lim_set & LEDGER_LIM_RPM) {
            a->rpm_bucket = plan[i].rpm;
            ledger_bucket_take(&a->rpm_bucket, 1);
        }
        if (a->lim_set & LEDGER_LIM_TPM) {
            a->tpm_bucket = plan[i].tpm;
            ledger_bucket_take(&a->tpm_bucket, rec.estimate_tokens);
        }
        int64_t used;
        if ((a->lim_set & LEDGER_LIM_SOFT_BUDGET) &&
            (__builtin_add_overflow(a->spent_micros, a->held_micros, &used) ||
             used > a->soft_budget_micros)) {
            rec.flags |= LEDGER_RESULT_SOFT_BUDGET;
        }
        acct_dirty(a);
        if (plan[i].has_model) {
            struct model_rec *m = &plan[i].model;
            rec.model_mask |= 1u << i;
            model_roll(m, a, l->now_ms);
            m->held_micros += est;
            m->inflight++;
            if (m->lim_set & LEDGER_LIM_RPM) {
                ledger_bucket_take(&m->rpm_bucket, 1);
            }
            if (m->lim_set & LEDGER_LIM_TPM) {
                ledger_bucket_take(&m->tpm_bucket, rec.estimate_tokens);
            }
            model_put(l, a->id, c->u.reserve.model, m);
        }
    }
    ledger__chain_assert_invariants(&ch, LEDGER__CHAIN_GRANT, l->now_ms);
    resv_put(l, c->request_id, &rec);
    timer_put(l, rec.expires_at_ms, c->request_id, 0);
    reserve_answer(l, &rec, r);
}

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
    store_copy_name(x->model_name, x->rec->model, x->rec->model_len, LEDGER_MODEL_MAX);
    for (uint32_t i = 0; i < x->rec->chain_len; i++) {
        x->acct[i] = acct_load(l, x->rec->chain[i]);
        if (x->acct[i] == NULL) {
            failed(l, MDB_CORRUPTED);
            return false;
        }
        if ((x->rec->model_mask & (1u << i)) &&
            model_get(l, x->rec->chain[i], x->model_name, &x->model[i]) != 1) {
            failed(l, MDB_CORRUPTED);
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
        acct_dirty(x->acct[i]);
        if (x->rec->model_mask & (1u << i)) {
            model_put(l, x->rec->chain[i], x->model_name, &x->model[i]);
        }
    }
    resv_put(l, x->request_id, x->rec);
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
            ledger_bucket_drain(&a->tpm_bucket, a->tpm, l->now_ms);
            ledger_bucket_adjust(&a->tpm_bucket, delta_tokens);
        }
        struct model_rec *m = &x->model[i];
        if ((x->rec->model_mask & (1u << i)) && (m->lim_set & LEDGER_LIM_TPM)) {
            ledger_bucket_drain(&m->tpm_bucket, m->tpm, l->now_ms);
            ledger_bucket_adjust(&m->tpm_bucket, delta_tokens);
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
    jrec_init(l, &j, kind, x->request_id, x->actor);
    j.chain_len = x->rec->chain_len;
    j.tokens = tokens;
    j.model_len = x->rec->model_len;
    memcpy(j.model, x->rec->model, j.model_len);
    for (uint32_t i = 0; i < x->rec->chain_len; i++) {
        struct acct_rec *a = x->acct[i];
        acct_roll(a, l->now_ms);
        a->spent_micros += amount;
        a->lifetime_spent_micros += amount;
        if (kind == LEDGER_J_CHARGE && overrun > 0) {
            a->overrun_micros += overrun;
        }
        j.chain[i] = a->id;
        j.amount_micros[i] = amount;
        j.period_start[i] = a->period_start_ms;
        if (x->rec->model_mask & (1u << i)) {
            model_roll(&x->model[i], a, l->now_ms);
            x->model[i].spent_micros += amount;
            x->model[i].lifetime_spent_micros += amount;
        }
    }
    journal_append(l, &j, NULL, 0);
    for (uint32_t i = 0; i < x->rec->chain_len && amount > 0; i++) {
        soft_budget_check(l, x->acct[i], x->request_id, x->actor);
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
    bool charge = x.acct[0]->expiry_policy == LEDGER_EXPIRY_CHARGE;
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
    timer_put(l, l->now_ms + l->work.retention_ms, request_id, 0);
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
    jrec_init(l, &j, LEDGER_J_CORRECTION, x->request_id, x->actor);
    j.chain_len = rec->chain_len;
    j.model_len = rec->model_len;
    memcpy(j.model, rec->model, j.model_len);
    for (uint32_t i = 0; i < rec->chain_len; i++) {
        struct acct_rec *a = x->acct[i];
        acct_roll(a, l->now_ms);
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
            model_roll(m, a, l->now_ms);
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
    journal_append(l, &j, NULL, 0);
    for (uint32_t i = 0; i < rec->chain_len && delta > 0; i++) {
        soft_budget_check(l, x->acct[i], x->request_id, x->actor);
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

static void exec_resolve(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    int rv = ledger_cmd_check(c, NULL);
    if (rv != 0) {
        r->status = rv;
        return;
    }
    struct resv_rec rec;
    int found = resv_get(l, c->request_id, &rec);
    if (found != 1 || rec.state == RESV_REJECTED) {
        r->status = found < 0 ? 0 : -LEDGER_ENOTFOUND;
        return;
    }
    uint64_t fp = ledger_cmd_fingerprint(c);
    if (rec.state != LEDGER_RESV_OPEN && rec.state != LEDGER_RESV_EXPIRED) {
        if (rec.resolve_type != c->type) {
            r->status = -LEDGER_ERESOLVED;
        } else if (rec.resolve_fp != fp) {
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

static void exec_extend(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    int rv = ledger_cmd_check(c, NULL);
    if (rv != 0) {
        r->status = rv;
        return;
    }
    struct resv_rec rec;
    int found = resv_get(l, c->request_id, &rec);
    if (found != 1 || rec.state == RESV_REJECTED) {
        r->status = found < 0 ? 0 : -LEDGER_ENOTFOUND;
        return;
    }
    if (rec.state != LEDGER_RESV_OPEN) {
        r->status = -LEDGER_ERESOLVED;
        return;
    }
    int64_t want = l->now_ms + c->u.extend.ttl_ms;
    if (want > rec.expires_at_ms) {
        /* The old timer goes stale: it fires, sees another expires_at, and is dropped. */
        rec.expires_at_ms = want;
        resv_put(l, c->request_id, &rec);
        timer_put(l, want, c->request_id, 0);
    }
    struct ledger__chain ch = {.rec = &rec, .n = 0}; /* an extend touches no account */
    ledger__chain_assert_invariants(&ch, LEDGER__CHAIN_EXTEND, l->now_ms);
    r->status = LEDGER_OK;
    r->expires_at_ms = rec.expires_at_ms;
}

/* ---- Timers. ---- */

static void fire_resv_timer(struct ledger *l, int64_t due_ms, const uint8_t *request_id)
{
    struct resv_rec rec;
    if (resv_get(l, request_id, &rec) != 1) {
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
        db_del(l, DB_RESV, request_id, LEDGER_REQUEST_ID_SIZE);
    } else {
        timer_put(l, gc_at, request_id, 0);
    }
}

/* Fire every timer due at or before now, in (due, request id, kind) order. */
static void run_timers(struct ledger *l)
{
    MDB_cursor *cur;
    if (failed(l, mdb_cursor_open(l->txn, l->dbi[DB_TIMERS], &cur))) {
        return;
    }
    for (;;) {
        MDB_val k, v;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        if (rc == MDB_NOTFOUND) {
            break;
        }
        if (failed(l, rc) || k.mv_size != TIMER_KEY_SIZE) {
            failed(l, MDB_CORRUPTED);
            break;
        }
        uint8_t key[TIMER_KEY_SIZE];
        memcpy(key, k.mv_data, sizeof(key));
        int64_t due = (int64_t)store_get_be64(key);
        if (due > l->now_ms) {
            break;
        }
        if (failed(l, mdb_cursor_del(cur, 0))) {
            break;
        }
        uint8_t kind = key[8 + LEDGER_REQUEST_ID_SIZE];
        if (kind == 0) {
            cache_make_room(l);
            fire_resv_timer(l, due, key + 8);
        } else {
            uint8_t ak[ANSWER_KEY_SIZE];
            memcpy(ak, key + 8, LEDGER_REQUEST_ID_SIZE);
            ak[LEDGER_REQUEST_ID_SIZE] = kind;
            db_del(l, DB_ANSWERS, ak, sizeof(ak));
        }
        if (l->fatal) {
            break;
        }
    }
    mdb_cursor_close(cur);
}

/* ---- Batches. ---- */

static void exec_cmd(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    result_init(r, c);
    cache_make_room(l);
    switch (c->type) {
    case LEDGER_CMD_RESERVE:
        exec_reserve(l, c, r);
        break;
    case LEDGER_CMD_SETTLE:
    case LEDGER_CMD_VOID:
        exec_resolve(l, c, r);
        break;
    case LEDGER_CMD_EXTEND:
        exec_extend(l, c, r);
        break;
    default:
        exec_admin(l, c, r);
        break;
    }
}

static int64_t clamp_time(int64_t t)
{
    return t < 0 ? 0 : (t > LEDGER_TIME_MAX_MS ? LEDGER_TIME_MAX_MS : t);
}

static int meta_put(struct ledger *l)
{
    db_put(l, DB_META, "m", 1, &l->work, sizeof(l->work), 0);
    return l->fatal;
}

/* One attempt at a batch; returns 0 or the LMDB error that aborted it. */
static int apply_once(struct ledger *l, uint64_t index, int64_t stamp_ms, size_t n,
                      struct ledger_result *results)
{
    int rc = mdb_txn_begin(l->env, NULL, 0, &l->txn);
    if (rc != 0) {
        return rc;
    }
    l->fatal = 0;
    l->work = l->meta;
    l->work.applied_index = index;
    cache_clear(l);
    if (n > 0) {
        l->now_ms = clamp_time(stamp_ms > l->meta.clock_ms ? stamp_ms : l->meta.clock_ms);
        assert(l->now_ms >= l->meta.clock_ms); /* I8, I9: the clock never goes back */
        l->work.clock_ms = l->now_ms;
        run_timers(l);
        for (size_t i = 0; i < n && l->fatal == 0; i++) {
            exec_cmd(l, &l->cmds[i], &results[i]);
        }
        cache_flush(l);
    }
    if (l->fatal == 0) {
        meta_put(l);
    }
    if (l->fatal != 0) {
        rc = l->fatal;
        mdb_txn_abort(l->txn);
        cache_clear(l);
    } else {
        rc = mdb_txn_commit(l->txn);
        if (rc == 0) {
            l->meta = l->work;
        }
    }
    l->txn = NULL;
    return rc;
}

/* Double the map (no transaction of ours may be open: snapshot exports are waited for). */
static int grow_map(struct ledger *l)
{
    if (l->map_bytes >= l->max_map_bytes) {
        return ledger_set_error(l, -LEDGER_EIO, "LMDB map full at its maximum of %zu bytes",
                                l->max_map_bytes);
    }
    pthread_mutex_lock(&l->snap_mu);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += SNAPSHOT_WAIT_S;
    while (l->snapshots_active > 0) {
        if (pthread_cond_timedwait(&l->snap_cv, &l->snap_mu, &deadline) == ETIMEDOUT) {
            pthread_mutex_unlock(&l->snap_mu);
            return ledger_set_error(l, -LEDGER_EIO,
                                    "LMDB map full and a snapshot export did not finish");
        }
    }
    size_t want = l->map_bytes * 2 > l->max_map_bytes ? l->max_map_bytes : l->map_bytes * 2;
    int rc = mdb_env_set_mapsize(l->env, want);
    pthread_mutex_unlock(&l->snap_mu);
    if (rc != 0) {
        return ledger_set_error(l, -LEDGER_EIO, "growing the LMDB map: %s", mdb_strerror(rc));
    }
    l->map_bytes = want;
    return 0;
}

int ledger_apply_batch(struct ledger *l, uint64_t index, const void *buf, size_t len,
                       struct ledger_result *results, size_t *n_results)
{
    *n_results = 0;
    if (index <= l->meta.applied_index) {
        return ledger_set_error(l, -LEDGER_ESTALE, "index %" PRIu64 " <= applied index %" PRIu64,
                                index, l->meta.applied_index);
    }
    int64_t stamp_ms = 0;
    size_t n = 0;
    int decoded = ledger_batch_decode(buf, len, &stamp_ms, l->cmds, LEDGER_BATCH_MAX_CMDS, &n);
    if (decoded != 0) {
        n = 0; /* still recorded as applied: every replica rejects this entry alike */
    }
    for (;;) {
        int rc = apply_once(l, index, stamp_ms, n, results);
        if (rc == 0) {
            break;
        }
        if (rc == MDB_MAP_FULL) {
            int grown = grow_map(l);
            if (grown != 0) {
                return grown;
            }
            continue;
        }
        if (rc == ENOMEM) {
            return ledger_set_error(l, -LEDGER_ENOMEM, "out of memory applying a batch");
        }
        return ledger_set_error(l, rc == MDB_CORRUPTED ? -LEDGER_ECORRUPT : -LEDGER_EIO,
                                "applying batch %" PRIu64 ": %s", index, mdb_strerror(rc));
    }
    if (decoded != 0) {
        /* Always EDECODE, whatever the decoder's reason: the caller skips the entry. */
        return ledger_set_error(l, -LEDGER_EDECODE, "batch %" PRIu64 " does not decode: %s",
                                index, ledger_strerror(decoded));
    }
    *n_results = n;
    return 0;
}

/* ---- Open and close. ---- */

static int open_fail(struct ledger *l, char *errmsg, int code, const char *what, int rc)
{
    if (errmsg != NULL) {
        snprintf(errmsg, LEDGER_ERRMSG_SIZE, "%s: %s", what, mdb_strerror(rc));
    }
    ledger_close(l);
    return code;
}

static int meta_load(struct ledger *l)
{
    MDB_txn *txn;
    MDB_val k = {1, "m"}, v;
    int rc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        return rc;
    }
    rc = mdb_get(txn, l->dbi[DB_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
        store_meta_new(&l->meta);
        rc = 0;
    } else if (rc == 0) {
        if (v.mv_size != sizeof(l->meta)) {
            rc = MDB_CORRUPTED;
        } else {
            memcpy(&l->meta, v.mv_data, sizeof(l->meta));
            rc = l->meta.format == STORE_FORMAT ? 0 : MDB_VERSION_MISMATCH;
        }
    }
    mdb_txn_abort(txn);
    return rc;
}

static int ledger_open_dbs(struct ledger *l)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(l->env, NULL, 0, &txn);
    if (rc != 0) {
        return rc;
    }
    for (int i = 0; i < DB_COUNT && rc == 0; i++) {
        rc = mdb_dbi_open(txn, ledger_db_names[i], MDB_CREATE, &l->dbi[i]);
    }
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn);
}

int ledger_open(struct ledger **out, const char *dir, const struct ledger_options *opts,
                char *errmsg)
{
    struct ledger_options defaults = {0};
    if (opts == NULL) {
        opts = &defaults;
    }
    struct ledger *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return -LEDGER_ENOMEM;
    }
    pthread_mutex_init(&l->snap_mu, NULL);
    pthread_cond_init(&l->snap_cv, NULL);
    l->cache = calloc(CACHE_SLOTS, sizeof(*l->cache));
    l->cache_used = calloc(CACHE_SLOTS, sizeof(*l->cache_used));
    l->cmds = calloc(LEDGER_BATCH_MAX_CMDS, sizeof(*l->cmds));
    if (l->cache == NULL || l->cache_used == NULL || l->cmds == NULL) {
        return open_fail(l, errmsg, -LEDGER_ENOMEM, "allocating the ledger", ENOMEM);
    }
    l->map_bytes = opts->initial_map_bytes ? opts->initial_map_bytes : DEFAULT_MAP_BYTES;
    l->max_map_bytes = opts->max_map_bytes ? opts->max_map_bytes : DEFAULT_MAX_MAP_BYTES;
    if (l->max_map_bytes < l->map_bytes) {
        l->max_map_bytes = l->map_bytes;
    }
    /* MDB_NOTLS: snapshot read transactions move to another thread. MDB_WRITEMAP: a
     * transaction writes its pages in the shared map instead of pwrite()-ing a private
     * copy of each at commit, which halves the state machine's cost (ledger-bench). */
    unsigned flags = MDB_NOTLS | MDB_WRITEMAP;
    if (opts->flags & LEDGER_OPEN_NOSYNC) {
        flags |= MDB_NOSYNC;
    }
    int rc = mdb_env_create(&l->env);
    if (rc != 0) {
        return open_fail(l, errmsg, -LEDGER_EIO, "mdb_env_create", rc);
    }
    mdb_env_set_maxdbs(l->env, DB_COUNT);
    mdb_env_set_maxreaders(l->env, 126);
    rc = mdb_env_set_mapsize(l->env, l->map_bytes);
    if (rc == 0) {
        rc = mdb_env_open(l->env, dir, flags, 0600);
    }
    if (rc != 0) {
        return open_fail(l, errmsg, -LEDGER_EIO, dir, rc);
    }
    /* The file may be larger than the configured map after an earlier growth. */
    MDB_envinfo info;
    mdb_env_info(l->env, &info);
    if (info.me_mapsize > l->map_bytes) {
        l->map_bytes = info.me_mapsize;
    }
    rc = ledger_open_dbs(l);
    if (rc == 0) {
        rc = meta_load(l);
    }
    if (rc != 0) {
        return open_fail(l, errmsg, rc == MDB_CORRUPTED ? -LEDGER_ECORRUPT : -LEDGER_EIO,
                         "opening the ledger's databases", rc);
    }
    *out = l;
    return 0;
}

int ledger_sync(struct ledger *l)
{
    int rc = mdb_env_sync(l->env, 1);
    if (rc != 0) {
        snprintf(l->errmsg, sizeof(l->errmsg), "sync: %s", mdb_strerror(rc));
        return -LEDGER_EIO;
    }
    return 0;
}

void ledger_close(struct ledger *l)
{
    if (l == NULL) {
        return;
    }
    if (l->env != NULL) {
        mdb_env_close(l->env);
    }
    pthread_mutex_destroy(&l->snap_mu);
    pthread_cond_destroy(&l->snap_cv);
    free(l->cache);
    free(l->cache_used);
    free(l->cmds);
    free(l);
}
