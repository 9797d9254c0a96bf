/*
 * ledger_snapshot_test.c: snapshot export and import (ledger.h "Snapshots").
 *
 * A snapshot is exported into a memory buffer and imported from it. The imported
 * ledger must be indistinguishable from the frozen source (state hash, applied index,
 * clock, and how it goes on), the freeze must hold while the source keeps applying
 * batches (also with the export on another thread), and a damaged stream must be
 * refused with the importing ledger left exactly as it was.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */
#endif

#include "ledger_testlib.h"
#include "ledger/store.h"

#include <lmdb.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>

#define T0 1700000000000LL
#define DAY_MS (24LL * 3600 * 1000)

static const struct ledger_options NOSYNC = {.flags = LEDGER_OPEN_NOSYNC};

/* ---- Memory streams. ---- */

struct membuf {
    uint8_t *data;
    size_t len, cap;
};

static int mem_write(void *ctx, const void *buf, size_t len)
{
    struct membuf *m = ctx;
    if (m->len + len > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < m->len + len) {
            cap *= 2;
        }
        uint8_t *p = realloc(m->data, cap);
        if (p == NULL) {
            return -1;
        }
        m->data = p;
        m->cap = cap;
    }
    memcpy(m->data + m->len, buf, len);
    m->len += len;
    return 0;
}

static int failing_write(void *ctx, const void *buf, size_t len)
{
    (void)ctx, (void)buf, (void)len;
    return -1;
}

struct memreader {
    const uint8_t *data;
    size_t len, pos;
    bool hit_end; /* a read asked for bytes past the end (and failed) */
};

static int mem_read(void *ctx, void *buf, size_t len)
{
    struct memreader *r = ctx;
    if (len > r->len - r->pos) {
        r->hit_end = true;
        return -1;
    }
    memcpy(buf, r->data + r->pos, len);
    r->pos += len;
    return 0;
}

/* ---- Ledgers with some history. ---- */

static void open_ledger(struct tl *t)
{
    tl_open_opts(t, T0, &NOSYNC);
}

static void run_ok(struct tl *t, struct ledger_cmd c)
{
    struct ledger_result r = tl_run(t, c);
    if (r.status != LEDGER_OK) {
        fprintf(stderr, "  command type %d: status %d\n", c.type, r.status);
    }
    REQUIRE(r.status == LEDGER_OK);
}

/*
 * `users` users under a new root `root`, each with a key, limits and a model limit, and
 * four reservations each: settled, voided, expired and still open. Time moves on by
 * 1 s per user and 10 min at the end, so the expired ones are resolved.
 */
static void populate(struct tl *t, const char *root, int users)
{
    struct ledger_limits org = {.set = LEDGER_LIM_BUDGET | LEDGER_LIM_PERIOD,
                                .budget_micros = 1000000000,
                                .period_kind = LEDGER_PERIOD_DAY};
    struct ledger_limits user = {.set = LEDGER_LIM_RPM | LEDGER_LIM_TPM | LEDGER_LIM_BUDGET,
                                 .rpm = 100,
                                 .tpm = 100000,
                                 .budget_micros = 5000000};
    struct ledger_model_limits model = {.set = LEDGER_LIM_BUDGET, .budget_micros = 100000};
    run_ok(t, tl_create(t, root, "", &org));
    for (int i = 0; i < users; i++) {
        char name[64], secret[64];
        snprintf(name, sizeof(name), "%s/u%d", root, i);
        snprintf(secret, sizeof(secret), "sk-%s-%d", root, i);
        run_ok(t, tl_create(t, name, root, &user));
        run_ok(t, tl_key_add(t, name, secret));
        run_ok(t, tl_model_limit(t, name, "gpt", &model));
        uint64_t id = t->next_id;
        t->next_id += 4;
        run_ok(t, tl_reserve_key(t, id, secret, 100 + i, 50, 60000));
        run_ok(t, tl_settle(t, id, 90 + i, 40));
        run_ok(t, tl_reserve_key(t, id + 1, secret, 200, 10, 60000));
        run_ok(t, tl_void(t, id + 1));
        run_ok(t, tl_reserve(t, id + 2, name, 300, 0, 1000));
        struct ledger_cmd open = tl_reserve(t, id + 3, name, 400, 20, DAY_MS);
        open.u.reserve.metadata_len = 8;
        memcpy(open.u.reserve.metadata, "metadata", 8);
        snprintf(open.u.reserve.model, sizeof(open.u.reserve.model), "gpt");
        run_ok(t, open);
        t->now_ms += 1000;
    }
    run_ok(t, tl_config(t, 12 * 3600 * 1000));
    t->now_ms += 10 * 60 * 1000;
    tl_tick(t);
}

/* What must match between two ledgers (or one ledger before and after). */
struct state {
    uint8_t hash[32];
    uint64_t index;
    int64_t now_ms;
};

static struct state state_of(struct tl *t)
{
    struct state s;
    REQUIRE(ledger_state_hash(t->l, s.hash) == 0);
    s.index = ledger_applied_index(t->l);
    s.now_ms = ledger_now_ms(t->l);
    return s;
}

static bool state_equal(const struct state *a, const struct state *b)
{
    return memcmp(a->hash, b->hash, 32) == 0 && a->index == b->index && a->now_ms == b->now_ms;
}

static void check_state_equal(const struct state *a, const struct state *b)
{
    CHECK(memcmp(a->hash, b->hash, 32) == 0);
    CHECK_EQ_INT(a->index, b->index);
    CHECK_EQ_INT(a->now_ms, b->now_ms);
}

/* Export the whole current state of `t` into `out` (freed by the caller). */
static void export_now(struct tl *t, struct membuf *out)
{
    struct ledger_snapshot *s = NULL;
    memset(out, 0, sizeof(*out));
    REQUIRE(ledger_snapshot_begin(t->l, &s) == 0);
    CHECK_EQ_INT(ledger_snapshot_index(s), ledger_applied_index(t->l));
    int rv = ledger_snapshot_export(s, mem_write, out);
    ledger_snapshot_end(s);
    CHECK_EQ_INT(rv, 0);
    REQUIRE(rv == 0 && out->len > 0);
}

/* Import `len` bytes of `data` into `t`; the reader's state goes to *r. */
static int import_bytes(struct tl *t, const uint8_t *data, size_t len, struct memreader *r)
{
    *r = (struct memreader){.data = data, .len = len};
    return ledger_snapshot_import(t->l, mem_read, r);
}

/* Import a whole snapshot, which must succeed, and keep `t`'s index counter in step. */
static void import_ok(struct tl *t, const struct membuf *snap)
{
    struct memreader r;
    int rv = import_bytes(t, snap->data, snap->len, &r);
    if (rv != 0) {
        fprintf(stderr, "  import: %d %s\n", rv, ledger_errmsg(t->l));
    }
    REQUIRE(rv == 0);
    CHECK_EQ_INT(r.pos, snap->len);
    t->index = ledger_applied_index(t->l);
    t->now_ms = ledger_now_ms(t->l);
}

/* A damaged stream is refused: -LEDGER_ECORRUPT, or -LEDGER_EIO when the importer ran
 * out of bytes; and `t` is left as `before`. */
static void check_import_refused(struct tl *t, const uint8_t *data, size_t len,
                                 const struct state *before, const char *what, size_t where)
{
    struct memreader r;
    int rv = import_bytes(t, data, len, &r);
    bool ok = rv == -LEDGER_ECORRUPT || (rv == -LEDGER_EIO && r.hit_end);
    struct state after = state_of(t);
    if (!ok || !state_equal(before, &after)) {
        fprintf(stderr, "  %s at %zu of %zu: import returned %d (reader at end: %d), state %s\n",
                what, where, len, rv, r.hit_end, state_equal(before, &after) ? "kept" : "CHANGED");
        CHECK(ok);
        check_state_equal(before, &after);
        REQUIRE(false);
    }
}

/* A source ledger with history and a snapshot of it. */
static void source_with_snapshot(struct tl *src, struct membuf *snap, int users)
{
    open_ledger(src);
    populate(src, "org", users);
    export_now(src, snap);
}

/* ---- Tests. ---- */

static void import_reproduces_hash_index_and_clock(void)
{
    struct tl src, dst;
    struct membuf snap;
    source_with_snapshot(&src, &snap, 20);
    open_ledger(&dst);
    import_ok(&dst, &snap);
    struct state a = state_of(&src), b = state_of(&dst);
    check_state_equal(&a, &b);
    CHECK_EQ_INT(tl_account(&dst, "org/u7").inflight, 1);
    TL_CHECK_INVARIANTS(&dst);
    free(snap.data);
    tl_close(&src);
    tl_close(&dst);
}

static void imported_ledger_goes_on_like_the_source(void)
{
    struct tl src, dst;
    struct membuf snap;
    source_with_snapshot(&src, &snap, 10);
    open_ledger(&dst);
    import_ok(&dst, &snap);
    /* Reopen the imported ledger: the import was durable. */
    tl_close(&dst);
    REQUIRE(ledger_open(&dst.l, dst.dir, &NOSYNC, NULL) == 0);
    tl_track(dst.l, NULL);
    /* The same batches on both: expiry, settles and a new account agree. */
    for (int step = 0; step < 2; step++) {
        struct tl *t[2] = {&src, &dst};
        for (int i = 0; i < 2; i++) {
            t[i]->now_ms += DAY_MS; /* day rollover; the open reservations expire */
            t[i]->next_id = 900000;
            tl_tick(t[i]);
            run_ok(t[i], tl_create(t[i], step ? "late2" : "late1", "org", NULL));
            struct ledger_result r =
                tl_run(t[i], tl_reserve_key(t[i], 800000 + step, "sk-org-3", 10, 1, 60000));
            CHECK_EQ_INT(r.status, LEDGER_OK);
        }
        struct state a = state_of(&src), b = state_of(&dst);
        check_state_equal(&a, &b);
    }
    TL_CHECK_INVARIANTS(&dst);
    free(snap.data);
    tl_close(&src);
    tl_close(&dst);
}

static void export_leaves_out_batches_applied_after_begin(void)
{
    struct tl src, dst;
    open_ledger(&src);
    populate(&src, "org", 10);
    struct state frozen = state_of(&src);
    struct ledger_snapshot *s = NULL;
    REQUIRE(ledger_snapshot_begin(src.l, &s) == 0);
    CHECK_EQ_INT(ledger_snapshot_index(s), frozen.index);
    populate(&src, "later", 5);
    struct membuf snap = {0};
    CHECK_EQ_INT(ledger_snapshot_export(s, mem_write, &snap), 0);
    ledger_snapshot_end(s);

    open_ledger(&dst);
    import_ok(&dst, &snap);
    struct state got = state_of(&dst);
    check_state_equal(&frozen, &got);
    struct ledger_account_info info;
    CHECK_EQ_INT(ledger_account_get(dst.l, "later", &info), -LEDGER_ENOTFOUND);
    CHECK(ledger_applied_index(src.l) > frozen.index);
    free(snap.data);
    tl_close(&src);
    tl_close(&dst);
}

struct export_job {
    struct ledger_snapshot *snap;
    struct membuf out;
    atomic_int batches; /* applied by the main thread since begin */
    int rv;
};

/* Writes into the job's buffer, but the first write waits until the main thread has
 * applied 50 batches: the export provably overlaps them. */
static int waiting_write(void *ctx, const void *buf, size_t len)
{
    struct export_job *job = ctx;
    while (atomic_load(&job->batches) < 50) {
        sched_yield();
    }
    return mem_write(&job->out, buf, len);
}

static void *export_thread(void *arg)
{
    struct export_job *job = arg;
    job->rv = ledger_snapshot_export(job->snap, waiting_write, job);
    return NULL;
}

static void export_on_another_thread_while_batches_apply(void)
{
    struct tl src, dst;
    open_ledger(&src);
    populate(&src, "org", 40);
    struct state frozen = state_of(&src);
    struct export_job job = {0};
    atomic_init(&job.batches, 0);
    REQUIRE(ledger_snapshot_begin(src.l, &job.snap) == 0);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, export_thread, &job) == 0);
    for (int i = 0; i < 30; i++) { /* about 300 batches while the export runs */
        char root[16];
        snprintf(root, sizeof(root), "busy%d", i);
        populate(&src, root, 1);
        atomic_store(&job.batches, (int)(src.index - frozen.index));
    }
    REQUIRE(pthread_join(th, NULL) == 0);
    ledger_snapshot_end(job.snap);
    CHECK_EQ_INT(job.rv, 0);
    TL_CHECK_INVARIANTS(&src);

    open_ledger(&dst);
    import_ok(&dst, &job.out);
    struct state got = state_of(&dst);
    check_state_equal(&frozen, &got);
    free(job.out.data);
    tl_close(&src);
    tl_close(&dst);
}

struct hash_job {
    struct ledger_snapshot *snap;
    uint8_t hash[32];
    atomic_int batches; /* applied by the main thread since begin */
    int rv;
};

/* Hashes the job's snapshot once the main thread has applied 50 batches after it began:
 * the hash provably overlaps them. */
static void *hash_thread(void *arg)
{
    struct hash_job *job = arg;
    while (atomic_load(&job->batches) < 50) {
        sched_yield();
    }
    job->rv = ledger_snapshot_hash(job->snap, job->hash);
    return NULL;
}

static void snapshot_hash_on_another_thread_is_the_state_hash_at_begin(void)
{
    struct tl src;
    open_ledger(&src);
    populate(&src, "org", 20);
    struct state frozen = state_of(&src);
    struct hash_job job = {0};
    atomic_init(&job.batches, 0);
    REQUIRE(ledger_snapshot_begin(src.l, &job.snap) == 0);
    CHECK_EQ_INT(ledger_snapshot_index(job.snap), frozen.index);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, hash_thread, &job) == 0);
    for (int i = 0; i < 30; i++) {
        char root[16];
        snprintf(root, sizeof(root), "busy%d", i);
        populate(&src, root, 1);
        atomic_store(&job.batches, (int)(src.index - frozen.index));
    }
    REQUIRE(pthread_join(th, NULL) == 0);
    CHECK_EQ_INT(job.rv, 0);
    CHECK(memcmp(job.hash, frozen.hash, 32) == 0);
    struct state now = state_of(&src);
    CHECK(memcmp(now.hash, frozen.hash, 32) != 0);
    uint8_t again[32];
    CHECK_EQ_INT(ledger_snapshot_hash(job.snap, again), -LEDGER_EINVAL); /* released */
    ledger_snapshot_end(job.snap);
    TL_CHECK_INVARIANTS(&src);
    tl_close(&src);
}

/* A target ledger with a history of its own, different from any source's. */
static struct state open_target(struct tl *dst)
{
    open_ledger(dst);
    populate(dst, "target", 3);
    return state_of(dst);
}

static void corrupted_snapshot_is_refused_and_the_state_kept(void)
{
    struct tl src, dst;
    struct membuf snap;
    source_with_snapshot(&src, &snap, 5);
    struct state before = open_target(&dst);
    uint8_t *bad = malloc(snap.len);
    REQUIRE(bad != NULL);
    for (size_t off = 0; off < snap.len; off++) {
        memcpy(bad, snap.data, snap.len);
        bad[off] ^= 0xff;
        check_import_refused(&dst, bad, snap.len, &before, "flipped byte", off);
    }
    /* Still a working ledger, and the intact snapshot still imports. */
    TL_CHECK_INVARIANTS(&dst);
    import_ok(&dst, &snap);
    struct state a = state_of(&src), b = state_of(&dst);
    check_state_equal(&a, &b);
    free(bad);
    free(snap.data);
    tl_close(&src);
    tl_close(&dst);
}

static void truncated_snapshot_is_refused_and_the_state_kept(void)
{
    struct tl src, dst;
    struct membuf snap;
    source_with_snapshot(&src, &snap, 5);
    struct state before = open_target(&dst);
    for (size_t len = 0; len < snap.len; len++) {
        check_import_refused(&dst, snap.data, len, &before, "truncated", len);
    }
    TL_CHECK_INVARIANTS(&dst);
    free(snap.data);
    tl_close(&src);
    tl_close(&dst);
}

static void import_replaces_a_non_empty_ledger_completely(void)
{
    struct tl src, dst;
    struct membuf snap;
    source_with_snapshot(&src, &snap, 3);
    open_ledger(&dst);
    populate(&dst, "target", 12); /* more batches: a higher applied index than the source */
    REQUIRE(ledger_applied_index(dst.l) > ledger_applied_index(src.l));
    uint8_t id[LEDGER_REQUEST_ID_SIZE], key[LEDGER_KEY_HASH_SIZE];
    tl_id(id, dst.next_id);
    run_ok(&dst, tl_reserve(&dst, dst.next_id, "target/u1", 5, 0, DAY_MS));

    import_ok(&dst, &snap);
    struct state a = state_of(&src), b = state_of(&dst);
    check_state_equal(&a, &b);
    struct ledger_account_info info;
    struct ledger_reservation_info resv;
    char account[LEDGER_NAME_MAX + 1];
    int revoked;
    CHECK_EQ_INT(ledger_account_get(dst.l, "target", &info), -LEDGER_ENOTFOUND);
    CHECK_EQ_INT(ledger_account_get(dst.l, "target/u1", &info), -LEDGER_ENOTFOUND);
    CHECK_EQ_INT(ledger_reservation_get(dst.l, id, &resv), -LEDGER_ENOTFOUND);
    tl_key_hash("sk-target-1", key);
    CHECK_EQ_INT(ledger_key_get(dst.l, key, account, &revoked), -LEDGER_ENOTFOUND);
    tl_key_hash("sk-org-1", key);
    CHECK_EQ_INT(ledger_key_get(dst.l, key, account, &revoked), 0);
    CHECK_EQ_STR(account, "org/u1");
    TL_CHECK_INVARIANTS(&dst);
    free(snap.data);
    tl_close(&src);
    tl_close(&dst);
}

static void import_of_a_new_ledger_empties_the_target(void)
{
    struct tl empty, dst;
    struct membuf snap;
    struct memreader r;
    open_ledger(&empty);
    export_now(&empty, &snap);
    open_target(&dst);
    int rv = import_bytes(&dst, snap.data, snap.len, &r);
    free(snap.data);
    CHECK_EQ_INT(rv, 0);
    REQUIRE(rv == 0);
    struct state a = state_of(&empty), b = state_of(&dst);
    check_state_equal(&a, &b);
    CHECK_EQ_INT(b.index, 0);
    struct ledger_account_info info;
    CHECK_EQ_INT(ledger_account_get(dst.l, "target", &info), -LEDGER_ENOTFOUND);
    tl_close(&empty);
    tl_close(&dst);
}

/* Rewrite the format number of the closed ledger in `dir` to `format`, through LMDB. */
static void set_store_format(const char *dir, uint64_t format)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = {1, "m"}, v;
    REQUIRE(mdb_env_create(&env) == 0);
    mdb_env_set_maxdbs(env, DB_COUNT);
    REQUIRE(mdb_env_open(env, dir, 0, 0600) == 0);
    REQUIRE(mdb_txn_begin(env, NULL, 0, &txn) == 0);
    REQUIRE(mdb_dbi_open(txn, ledger__db_names[DB_META], 0, &dbi) == 0);
    REQUIRE(mdb_get(txn, dbi, &k, &v) == 0 && v.mv_size == sizeof(struct meta_rec));
    struct meta_rec m;
    memcpy(&m, v.mv_data, sizeof(m));
    m.format = format;
    v = (MDB_val){sizeof(m), &m};
    REQUIRE(mdb_put(txn, dbi, &k, &v, 0) == 0);
    REQUIRE(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
}

/* Format 1 kept 64-bit FNV fingerprints, which format 2's records cannot hold: a ledger
 * or a snapshot of format 1 is refused with both formats named, and nothing changes. */
static void ledger_and_snapshot_of_format_1_are_refused(void)
{
    struct tl src, dst;
    struct membuf snap;
    source_with_snapshot(&src, &snap, 2);
    /* The stream: 16 bytes of header, then the meta record (db, two lengths, "m"), whose
     * first field is the format; the last 32 bytes are the SHA-256 of all before them. */
    const size_t format_at = 16 + 1 + 8 + 1;
    REQUIRE(snap.len > format_at + 8 + 32 && snap.data[16] == DB_META);
    uint64_t one = 1;
    memcpy(snap.data + format_at, &one, sizeof(one));
    SHA256(snap.data, snap.len - 32, snap.data + snap.len - 32);
    struct state before = open_target(&dst);
    struct memreader r;
    CHECK_EQ_INT(import_bytes(&dst, snap.data, snap.len, &r), -LEDGER_ECORRUPT);
    CHECK(strstr(ledger_errmsg(dst.l), "store format 1") != NULL);
    struct state after = state_of(&dst);
    check_state_equal(&before, &after);

    tl_close(&src);
    set_store_format(src.dir, 1);
    struct ledger *l = NULL;
    char err[LEDGER_ERRMSG_SIZE] = "";
    CHECK_EQ_INT(ledger_open(&l, src.dir, &NOSYNC, err), -LEDGER_ECORRUPT);
    CHECK(strstr(err, "store format 1") != NULL && strstr(err, "only format 3") != NULL);
    free(snap.data);
    tl_close(&dst);
}

static void export_fails_with_eio_when_the_writer_fails(void)
{
    struct tl src;
    open_ledger(&src);
    populate(&src, "org", 2);
    struct ledger_snapshot *s = NULL;
    REQUIRE(ledger_snapshot_begin(src.l, &s) == 0);
    CHECK_EQ_INT(ledger_snapshot_export(s, failing_write, NULL), -LEDGER_EIO);
    ledger_snapshot_end(s);
    tl_close(&src);
}

/* The Raft adapter decides from the stream's header whether a restore is needed. */
static void stream_index_reads_the_applied_index_of_a_snapshot(void)
{
    struct tl src, empty;
    struct membuf snap, fresh;
    uint64_t index = 99;
    source_with_snapshot(&src, &snap, 3);
    CHECK_EQ_INT(ledger_snapshot_stream_index(snap.data, snap.len, &index), 0);
    CHECK_EQ_INT(index, ledger_applied_index(src.l));
    CHECK(index > 0);

    open_ledger(&empty);
    export_now(&empty, &fresh);
    CHECK_EQ_INT(ledger_snapshot_stream_index(fresh.data, fresh.len, &index), 0);
    CHECK_EQ_INT(index, 0);

    snap.data[0] ^= 0xff; /* not the magic any more */
    CHECK_EQ_INT(ledger_snapshot_stream_index(snap.data, snap.len, &index), -LEDGER_ECORRUPT);
    CHECK_EQ_INT(ledger_snapshot_stream_index(snap.data, 4, &index), -LEDGER_ECORRUPT);
    free(snap.data);
    free(fresh.data);
    tl_close(&src);
    tl_close(&empty);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(stream_index_reads_the_applied_index_of_a_snapshot);
    TEST(import_reproduces_hash_index_and_clock);
    TEST(imported_ledger_goes_on_like_the_source);
    TEST(export_leaves_out_batches_applied_after_begin);
    TEST(export_on_another_thread_while_batches_apply);
    TEST(snapshot_hash_on_another_thread_is_the_state_hash_at_begin);
    TEST(corrupted_snapshot_is_refused_and_the_state_kept);
    TEST(truncated_snapshot_is_refused_and_the_state_kept);
    TEST(import_replaces_a_non_empty_ledger_completely);
    TEST(import_of_a_new_ledger_empties_the_target);
    TEST(export_fails_with_eio_when_the_writer_fails);
    TEST(ledger_and_snapshot_of_format_1_are_refused);
    TEST_MAIN_END;
}
