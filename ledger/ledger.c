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
 *
 * This file holds the transaction (batches, open and close), the account cache, model
 * records, timers, the journal and results; the commands run in admin.c, reserve.c and
 * resolve.c, after scope.c has judged their scope, and share these through apply.h.
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
#include <time.h>

const char *const ledger__db_names[DB_COUNT] = {
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
_Static_assert(sizeof(struct meta_rec) == 7 * 8 + 32 + AMBIGUOUS_RANGES_MAX * 3 * 8,
               "meta_rec padding");

/* ---- Small helpers. ---- */

void ledger__be64(uint8_t out[8], uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(v >> (56 - 8 * i));
    }
}

uint64_t ledger__get_be64(const uint8_t in[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | in[i];
    }
    return v;
}

void ledger__copy_name(char *dst, const char *src, uint64_t len, size_t max)
{
    size_t n = len > max ? max : (size_t)len;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int ledger__set_error(struct ledger *l, int code, const char *fmt, ...)
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

void ledger_space(const struct ledger *l, struct ledger_space *out)
{
    MDB_envinfo info;
    MDB_stat st;
    memset(out, 0, sizeof(*out));
    out->map_max_bytes = l->max_map_bytes;
    if (mdb_env_info(l->env, &info) == 0 && mdb_env_stat(l->env, &st) == 0) {
        out->map_used_bytes = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
    }
}

void ledger__meta_new(struct meta_rec *m)
{
    memset(m, 0, sizeof(*m));
    m->format = STORE_FORMAT;
    m->retention_ms = LEDGER_RETENTION_DEFAULT_MS;
    m->next_account_id = 1;
}

size_t ledger__resv_size(const struct resv_rec *r)
{
    assert(r->metadata_len <= LEDGER_METADATA_MAX);
    return offsetof(struct resv_rec, metadata) + ((r->metadata_len + 7) & ~(uint64_t)7);
}

int ledger__resv_decode(const MDB_val *v, struct resv_rec *out)
{
    size_t head = offsetof(struct resv_rec, metadata);
    if (v->mv_size < head || v->mv_size > sizeof(*out) || v->mv_size % 8 != 0) {
        return -1;
    }
    memcpy(out, v->mv_data, v->mv_size);
    memset((char *)out + v->mv_size, 0, sizeof(*out) - v->mv_size);
    return ledger__resv_size(out) == v->mv_size ? 0 : -1;
}

int64_t ledger__acct_period_start(const struct acct_rec *a, int64_t now_ms)
{
    if (!(a->lim_set & LEDGER_LIM_PERIOD) || a->period_kind == LEDGER_PERIOD_NONE) {
        return a->period_anchor_ms;
    }
    return ledger__period_start((uint8_t)a->period_kind, a->period_ms, a->period_anchor_ms, now_ms);
}

/* ---- LMDB access during a batch: errors become `fatal`. ---- */

bool ledger__failed(struct ledger *l, int rc)
{
    if (rc != 0 && l->fatal == 0) {
        l->fatal = rc;
    }
    return rc != 0;
}

/* 1 found, 0 not found, -1 fatal. */
int ledger__db_get(struct ledger *l, int db, const void *k, size_t klen, MDB_val *v)
{
    MDB_val key = {klen, (void *)k};
    int rc = mdb_get(l->txn, l->dbi[db], &key, v);
    if (rc == MDB_NOTFOUND) {
        return 0;
    }
    return ledger__failed(l, rc) ? -1 : 1;
}

int ledger__db_get_fixed(struct ledger *l, int db, const void *k, size_t klen, void *out,
                         size_t size)
{
    MDB_val v;
    int rc = ledger__db_get(l, db, k, klen, &v);
    if (rc == 1) {
        if (v.mv_size != size) {
            ledger__failed(l, MDB_CORRUPTED);
            return -1;
        }
        memcpy(out, v.mv_data, size);
    }
    return rc;
}

bool ledger__db_put(struct ledger *l, int db, const void *k, size_t klen, const void *v,
                   size_t vlen, unsigned flags)
{
    MDB_val key = {klen, (void *)k}, val = {vlen, (void *)v};
    return !ledger__failed(l, mdb_put(l->txn, l->dbi[db], &key, &val, flags));
}

bool ledger__db_del(struct ledger *l, int db, const void *k, size_t klen)
{
    MDB_val key = {klen, (void *)k};
    int rc = mdb_del(l->txn, l->dbi[db], &key, NULL);
    return rc == MDB_NOTFOUND || !ledger__failed(l, rc);
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
            ledger__be64(k, e->id);
            ledger__db_put(l, DB_ACCOUNTS, k, 8, &e->rec, sizeof(e->rec), 0);
        }
    }
    cache_clear(l);
}

/* Called between commands only: pointers into the cache stay valid within one. */
void ledger__cache_make_room(struct ledger *l)
{
    if (l->cache_count >= CACHE_FLUSH_AT) {
        cache_flush(l);
    }
}

struct cache_entry *ledger__cache_insert(struct ledger *l, uint64_t id)
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
struct acct_rec *ledger__acct_load(struct ledger *l, uint64_t id)
{
    assert(id != 0);
    for (uint32_t s = cache_slot(id); l->cache[s].id != 0; s = (s + 1) & (CACHE_SLOTS - 1)) {
        if (l->cache[s].id == id) {
            return &l->cache[s].rec;
        }
    }
    uint8_t k[8];
    MDB_val v;
    ledger__be64(k, id);
    if (ledger__db_get(l, DB_ACCOUNTS, k, 8, &v) != 1) {
        return NULL;
    }
    if (v.mv_size != sizeof(struct acct_rec)) {
        ledger__failed(l, MDB_CORRUPTED);
        return NULL;
    }
    struct cache_entry *e = ledger__cache_insert(l, id);
    memcpy(&e->rec, v.mv_data, sizeof(e->rec));
    return &e->rec;
}

void ledger__acct_dirty(struct acct_rec *a)
{
    struct cache_entry *e = (struct cache_entry *)((char *)a - offsetof(struct cache_entry, rec));
    e->dirty = true;
}

uint64_t ledger__name_lookup(struct ledger *l, const char *name)
{
    MDB_val v;
    if (ledger__db_get(l, DB_NAMES, name, strlen(name), &v) != 1 || v.mv_size != 8) {
        return 0;
    }
    uint64_t id;
    memcpy(&id, v.mv_data, 8);
    return id;
}

/* Leaf-first chain of account `id`: fills ids and records; returns its length or 0. */
uint32_t ledger__chain_load(struct ledger *l, uint64_t id, uint64_t ids[LEDGER_DEPTH_MAX],
                           struct acct_rec *recs[LEDGER_DEPTH_MAX])
{
    uint32_t n = 0;
    while (id != 0) {
        assert(n < LEDGER_DEPTH_MAX);
        struct acct_rec *a = ledger__acct_load(l, id);
        if (a == NULL) {
            ledger__failed(l, MDB_CORRUPTED); /* a parent id that names nothing */
            return 0;
        }
        ids[n] = id;
        recs[n++] = a;
        id = a->parent_id;
    }
    return n;
}

/* Depth of account `id` (1 for a root), or 0 on error. */
uint32_t ledger__acct_depth(struct ledger *l, uint64_t id)
{
    uint64_t ids[LEDGER_DEPTH_MAX];
    struct acct_rec *recs[LEDGER_DEPTH_MAX];
    return ledger__chain_load(l, id, ids, recs);
}

void ledger__acct_roll(struct acct_rec *a, int64_t now_ms)
{
    int64_t start = ledger__acct_period_start(a, now_ms);
    if (start != a->period_start_ms) {
        a->period_start_ms = start;
        a->spent_micros = 0;
    }
}

/* Spent in the period containing now, without changing the record. */
int64_t ledger__acct_spent_now(const struct acct_rec *a, int64_t now_ms)
{
    return ledger__acct_period_start(a, now_ms) == a->period_start_ms ? a->spent_micros : 0;
}

/* ---- Model records (not cached: only reservations that name a model touch them). ---- */

static size_t model_key(uint8_t *k, uint64_t account_id, const char *model)
{
    size_t n = strlen(model);
    ledger__be64(k, account_id);
    memcpy(k + 8, model, n);
    return 8 + n;
}

/* 1 found (copied into *out), 0 absent, -1 fatal. */
int ledger__model_get(struct ledger *l, uint64_t account_id, const char *model,
                     struct model_rec *out)
{
    uint8_t k[MODEL_KEY_MAX];
    return ledger__db_get_fixed(l, DB_MODELS, k, model_key(k, account_id, model), out,
                                sizeof(*out));
}

void ledger__model_put(struct ledger *l, uint64_t account_id, const char *model,
                      const struct model_rec *m)
{
    uint8_t k[MODEL_KEY_MAX];
    ledger__db_put(l, DB_MODELS, k, model_key(k, account_id, model), m, sizeof(*m), 0);
}

void ledger__model_roll(struct model_rec *m, const struct acct_rec *a, int64_t now_ms)
{
    int64_t start = ledger__acct_period_start(a, now_ms);
    if (start != m->period_start_ms) {
        m->period_start_ms = start;
        m->spent_micros = 0;
    }
}

/* ---- Timers and the journal. ---- */

void ledger__timer_put(struct ledger *l, int64_t due_ms, const uint8_t *request_id, uint8_t kind)
{
    /* I8: this batch's timers already ran; one due now would wait for the next batch. */
    assert(due_ms > l->now_ms);
    uint8_t k[TIMER_KEY_SIZE];
    ledger__be64(k, (uint64_t)due_ms);
    memcpy(k + 8, request_id, LEDGER_REQUEST_ID_SIZE);
    k[8 + LEDGER_REQUEST_ID_SIZE] = kind;
    ledger__db_put(l, DB_TIMERS, k, sizeof(k), "", 0, 0);
}

void ledger__jrec_init(struct ledger *l, struct jrec *j, uint64_t kind, const uint8_t *request_id,
                      const char *actor)
{
    memset(j, 0, sizeof(*j));
    j->ts_ms = l->now_ms;
    j->kind = kind;
    memcpy(j->request_id, request_id, LEDGER_REQUEST_ID_SIZE);
    j->actor_len = strnlen(actor, LEDGER_ACTOR_MAX);
    memcpy(j->actor, actor, j->actor_len);
}

void ledger__journal_append(struct ledger *l, struct jrec *j, const void *payload, size_t plen)
{
    assert(j->ts_ms >= l->meta.clock_ms && "I9: journal times never decrease");
    assert(j->chain_len <= LEDGER_DEPTH_MAX && (plen == 0 || payload != NULL));
    uint8_t k[8];
    j->seq = ++l->work.journal_seq;
    j->payload_len = plen;
    ledger__be64(k, j->seq);
    if (plen == 0) {
        ledger__db_put(l, DB_JOURNAL, k, 8, j, sizeof(*j), MDB_APPEND);
        return;
    }
    MDB_val key = {8, k}, val = {sizeof(*j) + plen, NULL};
    if (ledger__failed(l, mdb_put(l->txn, l->dbi[DB_JOURNAL], &key, &val, MDB_APPEND | MDB_RESERVE))) {
        return;
    }
    memcpy(val.mv_data, j, sizeof(*j));
    memcpy((char *)val.mv_data + sizeof(*j), payload, plen);
}

/* Journal the soft-budget crossing of account `a` once per period. */
void ledger__soft_budget_check(struct ledger *l, struct acct_rec *a, const uint8_t *request_id,
                              const char *actor)
{
    if (!(a->lim_set & LEDGER_LIM_SOFT_BUDGET) || a->spent_micros <= a->soft_budget_micros ||
        a->soft_alerted_period == a->period_start_ms) {
        return;
    }
    struct jrec j;
    ledger__jrec_init(l, &j, LEDGER_J_SOFT_BUDGET, request_id, actor);
    j.chain_len = 1;
    j.chain[0] = a->id;
    j.amount_micros[0] = a->spent_micros;
    j.period_start[0] = a->period_start_ms;
    a->soft_alerted_period = a->period_start_ms;
    ledger__journal_append(l, &j, NULL, 0);
}

/* ---- Results. ---- */

/* An answer starts as an error, never as OK (0 is LEDGER_OK, and a grant): a path that
 * forgot to decide would otherwise grant. -LEDGER_EIO is what a command answers only when
 * storage failed, and then the whole batch is aborted. */
#define RESULT_UNDECIDED (-LEDGER_EIO)

static void result_init(struct ledger_result *r, const struct ledger_cmd *c)
{
    memset(r, 0, sizeof(*r));
    r->status = RESULT_UNDECIDED;
    r->cmd_type = c->type;
    memcpy(r->request_id, c->request_id, LEDGER_REQUEST_ID_SIZE);
}

void ledger__result_account(struct ledger *l, struct ledger_result *r, uint64_t id)
{
    struct acct_rec *a = id ? ledger__acct_load(l, id) : NULL;
    if (a != NULL) {
        ledger__copy_name(r->account, a->name, a->name_len, LEDGER_NAME_MAX);
    }
}

/* ---- Fingerprints. ---- */

static void fp_feed(void *ctx, const void *p, size_t n)
{
    SHA256_Update(ctx, p, n);
}

struct ledger__fp ledger__cmd_fingerprint(const struct ledger_cmd *c)
{
    SHA256_CTX sha;
    uint8_t digest[SHA256_DIGEST_LENGTH];
    struct ledger__fp fp;
    SHA256_Init(&sha);
    ledger_cmd_fingerprint_feed(c, fp_feed, &sha);
    SHA256_Final(digest, &sha);
    memcpy(fp.b, digest, sizeof(fp.b));
    return fp;
}

bool ledger__fp_equal(const struct ledger__fp *a, const struct ledger__fp *b)
{
    return memcmp(a->b, b->b, sizeof(a->b)) == 0;
}

/* ---- Batches. ---- */

static void exec_cmd(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    result_init(r, c);
    ledger__cache_make_room(l);
    /* The scope is judged before anything else, the stored answer included (scope.c). */
    if (!ledger_scope_valid(c->scope)) {
        r->status = -LEDGER_EINVAL;
        return;
    }
    if (!ledger__scope_allows(l, c)) {
        r->status = l->fatal ? RESULT_UNDECIDED : -LEDGER_EFORBIDDEN;
        return;
    }
    switch (c->type) {
    case LEDGER_CMD_RESERVE:
        ledger__exec_reserve(l, c, r);
        break;
    case LEDGER_CMD_SETTLE:
    case LEDGER_CMD_VOID:
        ledger__exec_resolve(l, c, r);
        break;
    case LEDGER_CMD_EXTEND:
        ledger__exec_extend(l, c, r);
        break;
    case LEDGER_CMD_TERM_START:
        ledger__exec_term_start(l, c, r);
        break;
    default:
        ledger__exec_admin(l, c, r);
        break;
    }
    /* Every command decides its answer unless storage failed. */
    assert(l->fatal || r->status != RESULT_UNDECIDED);
}

static int64_t clamp_time(int64_t t)
{
    return t < 0 ? 0 : (t > LEDGER_TIME_MAX_MS ? LEDGER_TIME_MAX_MS : t);
}

static int meta_put(struct ledger *l)
{
    ledger__db_put(l, DB_META, "m", 1, &l->work, sizeof(l->work), 0);
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
        ledger__run_timers(l);
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
        return ledger__set_error(l, -LEDGER_EIO, "LMDB map full at its maximum of %zu bytes",
                                l->max_map_bytes);
    }
    pthread_mutex_lock(&l->snap_mu);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += SNAPSHOT_WAIT_S;
    while (l->snapshots_active > 0) {
        if (pthread_cond_timedwait(&l->snap_cv, &l->snap_mu, &deadline) == ETIMEDOUT) {
            pthread_mutex_unlock(&l->snap_mu);
            return ledger__set_error(l, -LEDGER_EIO,
                                    "LMDB map full and a snapshot export did not finish");
        }
    }
    size_t want = l->map_bytes * 2 > l->max_map_bytes ? l->max_map_bytes : l->map_bytes * 2;
    int rc = mdb_env_set_mapsize(l->env, want);
    pthread_mutex_unlock(&l->snap_mu);
    if (rc != 0) {
        return ledger__set_error(l, -LEDGER_EIO, "growing the LMDB map: %s", mdb_strerror(rc));
    }
    l->map_bytes = want;
    return 0;
}

int ledger_apply_batch(struct ledger *l, uint64_t index, const void *buf, size_t len,
                       struct ledger_result *results, size_t *n_results)
{
    *n_results = 0;
    if (index <= l->meta.applied_index) {
        return ledger__set_error(l, -LEDGER_ESTALE, "index %" PRIu64 " <= applied index %" PRIu64,
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
            return ledger__set_error(l, -LEDGER_ENOMEM, "out of memory applying a batch");
        }
        return ledger__set_error(l, rc == MDB_CORRUPTED ? -LEDGER_ECORRUPT : -LEDGER_EIO,
                                "applying batch %" PRIu64 ": %s", index, mdb_strerror(rc));
    }
    if (decoded != 0) {
        /* Always EDECODE, whatever the decoder's reason: the caller skips the entry. */
        return ledger__set_error(l, -LEDGER_EDECODE, "batch %" PRIu64 " does not decode: %s",
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
        ledger__meta_new(&l->meta);
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
        rc = mdb_dbi_open(txn, ledger__db_names[i], MDB_CREATE, &l->dbi[i]);
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
    if (opts->initial_map_bytes == 0 && l->map_bytes > l->max_map_bytes) {
        l->map_bytes = l->max_map_bytes; /* a small maximum starts the map at it */
    }
    l->retention_min_ms =
        opts->retention_min_ms > 0 ? opts->retention_min_ms : LEDGER_RETENTION_MIN_MS;
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
    if (l->max_map_bytes < l->map_bytes) {
        l->max_map_bytes = l->map_bytes;
    }
    rc = ledger_open_dbs(l);
    if (rc == 0) {
        rc = meta_load(l);
    }
    if (rc == MDB_VERSION_MISMATCH) {
        if (errmsg != NULL) {
            snprintf(errmsg, LEDGER_ERRMSG_SIZE,
                     "the ledger has store format %" PRIu64 ", this build reads only format %d "
                     "(no migration: see docs/ledger.md, Storage)",
                     l->meta.format, STORE_FORMAT);
        }
        ledger_close(l);
        return -LEDGER_ECORRUPT;
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
