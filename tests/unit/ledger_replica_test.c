/*
 * ledger_replica_test.c: determinism and durability of the applied state.
 *
 * Two ledgers in two directories play the part of two replicas: a seeded generator
 * makes batches of valid commands (accounts, keys, limits, reserves, settles, voids,
 * extends, retention changes) while time advances in small steps and occasional long
 * jumps that expire reservations, roll periods over and prune answers. Both apply the
 * same bytes at the same index; their answers and state hashes must agree after every
 * batch. A test grows a tiny LMDB map many times over and checks no write is lost; the
 * last reads the map's figures (ledger_space()).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */
#endif

#include "cmd_equal.h"
#include "ledger_testlib.h"

#include <dirent.h>
#include <stdbool.h>

#define T0 1700000000000LL
#define HOUR_MS (3600LL * 1000)
#define N_TEAMS 4
#define N_USERS 12
#define N_SECRETS 16
#define SEED 20240315

static const struct ledger_options NOSYNC = {.flags = LEDGER_OPEN_NOSYNC};

static struct ledger_result results_a[LEDGER_BATCH_MAX_CMDS], results_b[LEDGER_BATCH_MAX_CMDS];

/* ---- Two replicas. ---- */

struct pair {
    struct tl a, b;
};

static void hash_of(struct tl *t, uint8_t out[32])
{
    REQUIRE(ledger_state_hash(t->l, out) == 0);
}

static bool hashes_equal(struct pair *p)
{
    uint8_t ha[32], hb[32];
    hash_of(&p->a, ha);
    hash_of(&p->b, hb);
    return memcmp(ha, hb, 32) == 0;
}

/* Apply `cmds` at `now_ms` as the next batch of one replica; returns its results. */
static struct ledger_result *apply_one(struct tl *t, int64_t now_ms, const struct ledger_cmd *cmds,
                                       size_t n, struct ledger_result *results)
{
    size_t n_out = 0;
    t->now_ms = now_ms;
    int rv = tl_apply(t, cmds, n, results, &n_out);
    if (rv != 0) {
        fprintf(stderr, "  apply at %" PRIu64 ": %d %s\n", t->index, rv, ledger_errmsg(t->l));
    }
    REQUIRE(rv == 0);
    REQUIRE(n_out == n);
    return results;
}

/* Apply the same batch to both replicas: equal answers and equal state hashes. */
static void apply_both(struct pair *p, int64_t now_ms, const struct ledger_cmd *cmds, size_t n)
{
    apply_one(&p->a, now_ms, cmds, n, results_a);
    apply_one(&p->b, now_ms, cmds, n, results_b);
    for (size_t i = 0; i < n; i++) {
        check_result_equal(&results_a[i], &results_b[i]);
    }
    REQUIRE(ledger_applied_index(p->a.l) == ledger_applied_index(p->b.l));
    if (!hashes_equal(p)) {
        fprintf(stderr, "  hashes differ after index %" PRIu64 "\n", p->a.index);
        REQUIRE(false);
    }
}

/* Close the ledger and open it again from its directory. */
static void reopen(struct tl *t)
{
    char err[LEDGER_ERRMSG_SIZE] = "";
    tl_close(t);
    int rv = ledger_open(&t->l, t->dir, &NOSYNC, err);
    if (rv != 0) {
        fprintf(stderr, "  reopen %s: %d %s\n", t->dir, rv, err);
    }
    REQUIRE(rv == 0);
    tl_track(t->l, NULL);
}

static void pair_close(struct pair *p)
{
    tl_close(&p->a);
    tl_close(&p->b);
}

/* ---- The workload. ---- */

struct gen {
    uint64_t s;          /* splitmix64 state */
    int64_t now_ms;      /* stamp of the next batch */
    uint64_t n_resv;     /* reservation ids 1..n_resv have been used */
    unsigned n_accounts; /* users u0.. created so far */
    struct tl *ids;      /* source of request ids for the builders */
};

static uint64_t next(struct gen *g)
{
    uint64_t z = (g->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t below(struct gen *g, uint64_t n)
{
    return next(g) % n;
}

static void user_name(char *out, size_t size, unsigned i)
{
    snprintf(out, size, "org/t%u/u%u", i % N_TEAMS, i);
}

static void secret_name(char *out, size_t size, unsigned i)
{
    snprintf(out, size, "sk-%u", i);
}

static struct ledger_limits random_limits(struct gen *g)
{
    struct ledger_limits l = {0};
    if (below(g, 2)) {
        l.set |= LEDGER_LIM_BUDGET | LEDGER_LIM_PERIOD;
        l.budget_micros = (int64_t)(5000 + below(g, 50000));
        l.period_kind = (uint8_t)(below(g, 2) ? LEDGER_PERIOD_DAY : LEDGER_PERIOD_FIXED);
        l.period_ms = l.period_kind == LEDGER_PERIOD_FIXED ? HOUR_MS : 0;
    }
    if (below(g, 3) == 0) {
        l.set |= LEDGER_LIM_RPM;
        l.rpm = 5 + below(g, 60);
    }
    if (below(g, 3) == 0) {
        l.set |= LEDGER_LIM_TPM;
        l.tpm = 1000 + below(g, 20000);
        l.tpm_burst = below(g, 2) ? 0 : l.tpm * 2;
    }
    if (below(g, 4) == 0) {
        l.set |= LEDGER_LIM_PARALLEL;
        l.max_parallel = 1 + below(g, 8);
    }
    if (below(g, 3) == 0) {
        l.set |= LEDGER_LIM_EXPIRY_POLICY;
        l.expiry_policy = (uint8_t)below(g, 2);
    }
    return l;
}

/* A reservation id: mostly one already used, so settles and voids find something. */
static uint64_t some_resv(struct gen *g)
{
    return g->n_resv == 0 ? 1 : 1 + below(g, g->n_resv + 2);
}

static struct ledger_cmd random_cmd(struct gen *g)
{
    struct tl *t = g->ids;
    char name[LEDGER_NAME_MAX + 1], secret[32];
    unsigned user = g->n_accounts ? (unsigned)below(g, g->n_accounts) : 0;
    user_name(name, sizeof(name), user);
    secret_name(secret, sizeof(secret), (unsigned)below(g, N_SECRETS));
    uint64_t roll = below(g, 100);
    if (roll < 3 || g->n_accounts == 0) {
        struct ledger_limits lim = random_limits(g);
        char team[16];
        snprintf(team, sizeof(team), "org/t%u", g->n_accounts % N_TEAMS);
        user_name(name, sizeof(name), g->n_accounts++);
        return tl_create(t, name, team, &lim);
    }
    if (roll < 6) {
        return tl_key_add(t, name, secret);
    }
    if (roll < 7) {
        return tl_key_revoke(t, secret);
    }
    if (roll < 10) {
        struct ledger_limits lim = random_limits(g);
        return tl_update(t, name, &lim, below(g, 4) ? 0 : LEDGER_LIM_RPM);
    }
    if (roll < 12) {
        struct ledger_model_limits ml = {.set = LEDGER_LIM_BUDGET | LEDGER_LIM_RPM,
                                         .budget_micros = (int64_t)(1000 + below(g, 20000)),
                                         .rpm = 3 + below(g, 30)};
        char model[16];
        snprintf(model, sizeof(model), "m%u", (unsigned)below(g, 3));
        return tl_model_limit(t, name, model, &ml);
    }
    if (roll < 55) {
        uint64_t id = ++g->n_resv;
        int64_t estimate = (int64_t)below(g, 3000);
        uint64_t tokens = below(g, 2000);
        int64_t ttl = (int64_t)(100 + below(g, 120000));
        struct ledger_cmd c = below(g, 2) ? tl_reserve(t, id, name, estimate, tokens, ttl)
                                          : tl_reserve_key(t, id, secret, estimate, tokens, ttl);
        if (below(g, 3) == 0) {
            snprintf(c.u.reserve.model, sizeof(c.u.reserve.model), "m%u", (unsigned)below(g, 3));
        }
        c.u.reserve.metadata_len = (uint16_t)below(g, 33);
        for (unsigned i = 0; i < c.u.reserve.metadata_len; i++) {
            c.u.reserve.metadata[i] = (uint8_t)next(g);
        }
        return c;
    }
    if (roll < 78) {
        return tl_settle(t, some_resv(g), (int64_t)below(g, 4000), below(g, 3000));
    }
    if (roll < 88) {
        return tl_void(t, some_resv(g));
    }
    if (roll < 97) {
        return tl_extend(t, some_resv(g), (int64_t)(1 + below(g, 60000)));
    }
    return tl_config(t, (int64_t)(10 * 60000 + below(g, 2 * HOUR_MS)));
}

/* Open two replicas and give both the same org, teams and keyed users. */
static void pair_open(struct pair *p, struct gen *g, const struct ledger_options *opts_b)
{
    tl_open_opts(&p->a, T0, &NOSYNC);
    tl_open_opts(&p->b, T0, opts_b);
    memset(g, 0, sizeof(*g));
    g->s = SEED;
    g->now_ms = T0;
    g->ids = &p->a;
    struct ledger_cmd setup[1 + N_TEAMS];
    struct ledger_limits org = {.set = LEDGER_LIM_BUDGET, .budget_micros = 1000000000};
    setup[0] = tl_create(&p->a, "org", "", &org);
    for (unsigned i = 0; i < N_TEAMS; i++) {
        char team[16];
        snprintf(team, sizeof(team), "org/t%u", i);
        setup[1 + i] = tl_create(&p->a, team, "org", NULL);
    }
    apply_both(p, g->now_ms, setup, 1 + N_TEAMS);
}

/* `n_cmds` random commands in batches of 1..16, time moving on between batches. */
static void run_workload(struct pair *p, struct gen *g, size_t n_cmds)
{
    struct ledger_cmd cmds[16];
    size_t batches = 0;
    while (n_cmds > 0) {
        size_t n = 1 + below(g, 16);
        n = n > n_cmds ? n_cmds : n;
        for (size_t i = 0; i < n; i++) {
            cmds[i] = random_cmd(g);
        }
        apply_both(p, g->now_ms, cmds, n);
        n_cmds -= n;
        g->now_ms += (int64_t)below(g, 3000);
        if (++batches % 60 == 0) {
            g->now_ms += (int64_t)(HOUR_MS + below(g, 24 * HOUR_MS)); /* expiry, rollover */
        }
    }
}

/* ---- Tests. ---- */

static void replicas_agree_after_every_batch_of_a_random_workload(void)
{
    struct pair p;
    struct gen g;
    printf("seed %d\n", SEED);
    pair_open(&p, &g, &NOSYNC);
    run_workload(&p, &g, 3000);
    CHECK(g.n_resv > 1000);
    TL_CHECK_INVARIANTS(&p.a);
    TL_CHECK_INVARIANTS(&p.b);
    CHECK_EQ_INT(ledger_now_ms(p.a.l), ledger_now_ms(p.b.l));
    pair_close(&p);
}

/* A replica pair after 500 random commands, then one batch only `a` applies. */
static void pair_diverged_by_one_batch(struct pair *p, struct gen *g)
{
    pair_open(p, g, &NOSYNC);
    run_workload(p, g, 500);
    struct ledger_cmd extra = tl_reserve(&p->a, g->n_resv + 1, "org/t1/u1", 1, 0, 60000);
    apply_one(&p->a, g->now_ms, &extra, 1, results_a);
}

static void one_extra_batch_makes_the_hashes_differ(void)
{
    struct pair p;
    struct gen g;
    pair_diverged_by_one_batch(&p, &g);
    CHECK(!hashes_equal(&p));
    CHECK_EQ_INT(ledger_applied_index(p.a.l), ledger_applied_index(p.b.l) + 1);
    pair_close(&p);
}

static void different_batches_at_the_same_index_make_the_hashes_differ(void)
{
    struct pair p;
    struct gen g;
    pair_open(&p, &g, &NOSYNC);
    run_workload(&p, &g, 200);
    struct ledger_cmd c = tl_reserve(&p.a, g.n_resv + 1, "org", 100, 0, 60000);
    apply_both(&p, g.now_ms, &c, 1);
    REQUIRE(results_a[0].status == LEDGER_OK);
    /* The same index settles the reservation for 10 on one replica and 11 on the other. */
    c = tl_settle(&p.a, g.n_resv + 1, 10, 0);
    apply_one(&p.a, g.now_ms, &c, 1, results_a);
    c.u.settle.actual_micros = 11;
    apply_one(&p.b, g.now_ms, &c, 1, results_b);
    REQUIRE(results_a[0].status == LEDGER_OK && results_b[0].status == LEDGER_OK);
    CHECK_EQ_INT(ledger_applied_index(p.a.l), ledger_applied_index(p.b.l));
    CHECK(!hashes_equal(&p));
    pair_close(&p);
}

static void hashes_index_and_clock_survive_reopen(void)
{
    struct pair p;
    struct gen g;
    pair_diverged_by_one_batch(&p, &g);
    uint8_t ha[32], hb[32], ha2[32], hb2[32];
    hash_of(&p.a, ha);
    hash_of(&p.b, hb);
    uint64_t ia = ledger_applied_index(p.a.l), ib = ledger_applied_index(p.b.l);
    int64_t ca = ledger_now_ms(p.a.l), cb = ledger_now_ms(p.b.l);

    reopen(&p.a);
    reopen(&p.b);
    hash_of(&p.a, ha2);
    hash_of(&p.b, hb2);
    CHECK(memcmp(ha, ha2, 32) == 0);
    CHECK(memcmp(hb, hb2, 32) == 0);
    CHECK_EQ_INT(ledger_applied_index(p.a.l), ia);
    CHECK_EQ_INT(ledger_applied_index(p.b.l), ib);
    CHECK_EQ_INT(ledger_now_ms(p.a.l), ca);
    CHECK_EQ_INT(ledger_now_ms(p.b.l), cb);
    TL_CHECK_INVARIANTS(&p.a);
    TL_CHECK_INVARIANTS(&p.b);
    pair_close(&p);
}

static void reopened_replica_catches_up_to_the_same_hash(void)
{
    struct pair p;
    struct gen g;
    pair_diverged_by_one_batch(&p, &g);
    reopen(&p.a);
    reopen(&p.b);
    /* The batch `a` already holds is stale there; `b` applies it and they agree again. */
    struct ledger_cmd extra = tl_reserve(&p.a, g.n_resv + 1, "org/t1/u1", 1, 0, 60000);
    p.b.now_ms = g.now_ms;
    size_t n;
    void *buf;
    size_t len;
    REQUIRE(ledger_batch_encode(g.now_ms, &extra, 1, &buf, &len) == 0);
    CHECK_EQ_INT(ledger_apply_batch(p.a.l, p.a.index, buf, len, results_a, &n), -LEDGER_ESTALE);
    CHECK_EQ_INT(ledger_apply_batch(p.b.l, p.a.index, buf, len, results_b, &n), 0);
    free(buf);
    p.b.index = p.a.index;
    CHECK(hashes_equal(&p));
    /* And they go on together. */
    run_workload(&p, &g, 100);
    pair_close(&p);
}

/* ---- Map growth. ---- */

/* Bytes in the files of directory `dir`. */
static uint64_t dir_bytes(const char *dir)
{
    uint64_t total = 0;
    DIR *d = opendir(dir);
    REQUIRE(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[512];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            total += (uint64_t)st.st_size;
        }
    }
    closedir(d);
    return total;
}

struct resv_count {
    uint64_t open;
};

static int count_open(void *ctx, const struct ledger_reservation_info *info)
{
    struct resv_count *c = ctx;
    c->open += info->state == LEDGER_RESV_OPEN;
    return 0;
}

static void tiny_map_grows_and_loses_no_write(void)
{
    enum { BATCHES = 8, PER_BATCH = 1000 };
    const struct ledger_options tiny = {.flags = LEDGER_OPEN_NOSYNC,
                                        .initial_map_bytes = 256 << 10,
                                        .max_map_bytes = (size_t)1 << 30};
    struct pair p; /* a: default map, b: 256 KiB map */
    struct gen g;
    pair_open(&p, &g, &tiny);
    static struct ledger_cmd cmds[PER_BATCH];
    cmds[0] = tl_create(&p.a, "acct", "", NULL);
    apply_both(&p, g.now_ms, cmds, 1);
    REQUIRE(results_b[0].status == LEDGER_OK);
    uint64_t id = 0, settled = 0;
    for (int batch = 0; batch < BATCHES; batch++) {
        for (int i = 0; i < PER_BATCH; i++) {
            /* Every tenth command settles an earlier reservation, the rest reserve. */
            if (i % 10 == 9) {
                cmds[i] = tl_settle(&p.a, id - 5, 7, 0);
                settled++;
                continue;
            }
            cmds[i] = tl_reserve(&p.a, ++id, "acct", 10, 5, LEDGER_TTL_MAX_MS);
            cmds[i].u.reserve.metadata_len = LEDGER_METADATA_MAX;
            memset(cmds[i].u.reserve.metadata, (int)(id & 0xff), LEDGER_METADATA_MAX);
        }
        apply_both(&p, g.now_ms + batch, cmds, PER_BATCH);
        for (int i = 0; i < PER_BATCH; i++) {
            REQUIRE(results_b[i].status == LEDGER_OK);
        }
    }
    CHECK(dir_bytes(p.b.dir) > (4u << 20)); /* the map grew well past 256 KiB */

    for (uint64_t r = 1; r <= id; r++) {
        uint8_t rid[LEDGER_REQUEST_ID_SIZE];
        struct ledger_reservation_info info;
        tl_id(rid, r);
        int rv = ledger_reservation_get(p.b.l, rid, &info);
        if (rv != 0 || info.metadata_len != LEDGER_METADATA_MAX ||
            info.metadata[LEDGER_METADATA_MAX - 1] != (uint8_t)(r & 0xff)) {
            fprintf(stderr, "  reservation %" PRIu64 ": %d\n", r, rv);
            CHECK(false);
            break;
        }
    }
    struct resv_count count = {0};
    CHECK_EQ_INT(ledger_reservation_list(p.b.l, "acct", count_open, &count), 0);
    CHECK_EQ_INT(count.open, id - settled);
    struct ledger_account_info acct = tl_account(&p.b, "acct");
    CHECK_EQ_INT(acct.inflight, id - settled);
    CHECK_EQ_INT(acct.held_micros, 10 * (int64_t)(id - settled));
    CHECK_EQ_INT(acct.spent_micros, 7 * (int64_t)settled);
    TL_CHECK_INVARIANTS(&p.b);
    pair_close(&p);
}

/* ledger_space() reports the map's maximum (a small one starts the map at it) and its
 * high-water mark, which grows with the state and survives a reopen; a reopen may lower
 * the maximum, but not below the high-water mark, which LMDB needs mapped. */
static void map_space_reports_maximum_and_high_water_mark(void)
{
    const struct ledger_options small = {.flags = LEDGER_OPEN_NOSYNC,
                                         .max_map_bytes = (size_t)8 << 20};
    struct tl t;
    tl_open_opts(&t, T0, &small);
    struct ledger_space before, after, reopened;
    ledger_space(t.l, &before);
    CHECK_EQ_INT(before.map_max_bytes, 8 << 20);
    CHECK(before.map_used_bytes > 0 && before.map_used_bytes < before.map_max_bytes);
    REQUIRE(tl_run(&t, tl_create(&t, "acct", "", NULL)).status == LEDGER_OK);
    for (uint64_t id = 1; id <= 2000; id++) {
        REQUIRE(tl_run(&t, tl_reserve(&t, id, "acct", 10, 0, LEDGER_TTL_MAX_MS)).status ==
                LEDGER_OK);
    }
    ledger_space(t.l, &after);
    CHECK(after.map_used_bytes > before.map_used_bytes + (512 << 10));
    CHECK(after.map_used_bytes <= after.map_max_bytes);
    CHECK(after.map_used_bytes > (1 << 20));
    const size_t maxima[] = {(size_t)4 << 20, (size_t)1 << 20};
    for (size_t i = 0; i < 2; i++) {
        tl_close(&t);
        const struct ledger_options smaller = {.flags = LEDGER_OPEN_NOSYNC,
                                               .max_map_bytes = maxima[i]};
        REQUIRE(ledger_open(&t.l, t.dir, &smaller, NULL) == 0);
        tl_track(t.l, NULL);
        ledger_space(t.l, &reopened);
        CHECK_EQ_INT(reopened.map_used_bytes, after.map_used_bytes);
        uint64_t want = maxima[i] > after.map_used_bytes ? maxima[i] : after.map_used_bytes;
        CHECK_EQ_INT(reopened.map_max_bytes, want);
        TL_CHECK_INVARIANTS(&t);
    }
    tl_close(&t);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(replicas_agree_after_every_batch_of_a_random_workload);
    TEST(one_extra_batch_makes_the_hashes_differ);
    TEST(different_batches_at_the_same_index_make_the_hashes_differ);
    TEST(hashes_index_and_clock_survive_reopen);
    TEST(reopened_replica_catches_up_to_the_same_hash);
    TEST(tiny_map_grows_and_loses_no_write);
    TEST(map_space_reports_maximum_and_high_water_mark);
    TEST_MAIN_END;
}
