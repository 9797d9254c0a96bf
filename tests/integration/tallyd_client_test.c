/*
 * tallyd_client_test.c: libtally against a real three-node tallyd cluster on loopback.
 *
 *   tallyd_client_test <tallyd> basic|exact|failover|minority|restart
 *
 * basic:    an org -> team -> key chain; reserve (by key secret), settle, void and
 *           extend through a client configured with every node, a follower first (it
 *           must follow NOT_LEADER to the leader, one of its endpoints) and through one
 *           that knows only the leader; account and reservation reads agree with what
 *           was done.
 * exact:    a budget of N micros and 64 concurrent callers reserving 1 micro each, 3N
 *           attempts in all: exactly N are granted, the rest denied for budget.
 * failover: callers reserve continuously; the leader is SIGKILLed. Service must be back
 *           (a grant) within 3 s, and after restart every acknowledged grant is an open
 *           reservation on every node, and the account holds exactly their sum.
 * minority: two nodes stopped: every reserve answers UNAVAILABLE within its deadline and
 *           nothing is granted; after the nodes return, none of those ids holds anything.
 * restart:  all three nodes stop (SIGTERM) and start again: they converge again, every
 *           account holds and spent what it did, and the cluster serves.
 * diskfull: (root: it mounts a tmpfs) a follower's data dir fills up while callers
 *           reserve: that node stops with exit status 74 and a fatal log line, the other
 *           two keep granting, and once the space is back the node restarts, catches up
 *           to the same state hash, and every acknowledged grant is held.
 */
#define _GNU_SOURCE
#include "client/tally.h"
#include "cluster.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct tally *open_client(const char *endpoints, const char *token)
{
    struct tally_config cfg;
    struct tally *c;
    char errmsg[TALLY_ERRMSG_SIZE];
    tally_config_init(&cfg);
    cfg.endpoints = endpoints;
    cfg.token = token;
    cfg.deadline_ms = 5000;
    if (tally_open(&c, &cfg, errmsg) != 0) {
        H_FAIL("tally_open(%s): %s", endpoints, errmsg);
    }
    return c;
}

static struct tally *open_admin(void)
{
    char endpoints[256];
    cl_endpoints(endpoints, sizeof(endpoints));
    return open_client(endpoints, CL_ADMIN_TOKEN);
}

static void create_account(struct tally *c, const char *name, const char *parent,
                           int64_t budget_micros)
{
    struct tally_limits limits = {0};
    struct tally_result res;
    if (budget_micros >= 0) {
        limits.set = TALLY_LIM_BUDGET;
        limits.budget_micros = budget_micros;
    }
    int rv = tally_account_create(c, name, parent, &limits, NULL, 10000, &res);
    if (rv != 0) {
        H_FAIL("create %s: %s (%s)", name, tally_strerror(rv), res.message);
    }
}

static struct tally_account get_account(struct tally *c, const char *name)
{
    struct tally_account a;
    struct tally_result res;
    int rv = tally_account_get(c, name, 0, 10000, &a, &res);
    if (rv != 0) {
        H_FAIL("account_get %s: %s (%s)", name, tally_strerror(rv), res.message);
    }
    return a;
}

/* ---- basic ---- */

static void gateway_flow(struct tally *gw, const char *via)
{
    struct tally_reserve_args args = {.key_secret = "sk-test-basic", .estimate_micros = 300,
                                      .estimate_tokens = 50, .ttl_ms = 60000};
    struct tally_result r1, r2, r3;
    if (tally_reserve(gw, &args, 0, &r1) != 0 || r1.outcome != TALLY_GRANTED) {
        H_FAIL("%s: reserve: %s %s", via, tally_outcome_name(r1.outcome), r1.message);
    }
    if (tally_extend(gw, r1.request_id, 120000, 0, &r2) != 0 ||
        r2.expires_at_ms <= r1.expires_at_ms) {
        H_FAIL("%s: extend did not push the expiry", via);
    }
    if (tally_settle(gw, r1.request_id, 250, 40, 0, &r2) != 0 || r2.charged_micros != 250) {
        H_FAIL("%s: settle: %s", via, r2.message);
    }
    if (tally_settle(gw, r1.request_id, 250, 40, 0, &r3) != 0 ||
        !(r3.flags & TALLY_RESULT_REPLAYED)) {
        H_FAIL("%s: a repeated settle was not answered from the idempotency store", via);
    }
    if (tally_reserve(gw, &args, 0, &r2) != 0 || r2.outcome != TALLY_GRANTED) {
        H_FAIL("%s: second reserve: %s", via, r2.message);
    }
    if (tally_void(gw, r2.request_id, 0, &r3) != 0) {
        H_FAIL("%s: void: %s", via, r3.message);
    }
    int rv = tally_void(gw, r2.request_id, 0, &r3);
    if (rv != 0 && rv != -TALLY_ERESOLVED) {
        H_FAIL("%s: a second void: %s", via, tally_strerror(rv));
    }
    h_say("%s: reserve, extend, settle (replayed once), reserve, void: ok", via);
}

/* A gateway client of `endpoints` whose first connection goes to `first` (a client
 * starts at a random endpoint: reopen until it is that one). */
static struct tally *open_client_at(const char *endpoints, const char *first)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        struct tally *c = open_client(endpoints, CL_GATEWAY_TOKEN);
        struct tally_stats st;
        int64_t deadline_ms = h_now_ms() + 2000;
        do {
            tally_stats(c, &st);
        } while (st.endpoint[0] == '\0' && h_now_ms() < deadline_ms && (h_sleep_ms(1), true));
        if (strcmp(st.endpoint, first) == 0) {
            return c;
        }
        tally_close(c);
    }
    H_FAIL("no client of %s started at %s", endpoints, first);
}

static void scenario_basic(void)
{
    struct tally *admin = open_admin();
    create_account(admin, "org", "", 100000);
    create_account(admin, "org/team", "org", 10000);
    create_account(admin, "org/team/key", "org/team", -1);
    struct tally_result res;
    if (tally_key_add(admin, "org/team/key", "sk-test-basic", NULL, NULL, 0, &res) != 0) {
        H_FAIL("key add: %s", res.message);
    }
    int leader = cl_leader(10000);
    char follower[64], leader_ep[64], other[64], follower_first[256];
    cl_endpoint((leader + 1) % CL_NODES, follower, sizeof(follower));
    cl_endpoint(leader, leader_ep, sizeof(leader_ep));
    cl_endpoint((leader + 2) % CL_NODES, other, sizeof(other));
    /* libtally follows NOT_LEADER only to configured endpoints: the leader is listed, but
     * after the follower, where the client connects first. */
    snprintf(follower_first, sizeof(follower_first), "%s,%s,%s", follower, other, leader_ep);

    struct tally *via_follower = open_client_at(follower_first, follower);
    gateway_flow(via_follower, "gateway connecting to a follower first");
    struct tally_stats st;
    tally_stats(via_follower, &st);
    if (st.redirects == 0) {
        H_FAIL("the client that connected to a follower first was never redirected");
    }
    tally_close(via_follower);
    struct tally *via_leader = open_client(leader_ep, CL_GATEWAY_TOKEN);
    gateway_flow(via_leader, "gateway knowing only the leader");
    tally_close(via_leader);

    struct tally_account team = get_account(admin, "org/team");
    struct tally_account org = get_account(admin, "org");
    if (team.spent_micros != 500 || org.spent_micros != 500 || team.held_micros != 0 ||
        team.inflight != 0 || team.remaining_micros != 10000 - 500) {
        H_FAIL("team spent %lld held %lld inflight %llu remaining %lld; org spent %lld",
               (long long)team.spent_micros, (long long)team.held_micros,
               (unsigned long long)team.inflight, (long long)team.remaining_micros,
               (long long)org.spent_micros);
    }
    h_say("accounts agree: team and org spent 500, nothing held");

    /* A deny names the account and what is left. */
    struct tally *gw = open_client(follower_first, CL_GATEWAY_TOKEN);
    struct tally_reserve_args big = {.key_secret = "sk-test-basic", .estimate_micros = 9600,
                                     .ttl_ms = 1000};
    if (tally_reserve(gw, &big, 0, &res) != 0 || res.outcome != TALLY_DENIED ||
        res.deny_reason != TALLY_DENY_BUDGET || strcmp(res.account, "org/team") != 0 ||
        res.remaining != 9500) {
        H_FAIL("over-budget reserve: %s %s on %s remaining %lld", tally_outcome_name(res.outcome),
               tally_deny_reason_name(res.deny_reason), res.account, (long long)res.remaining);
    }
    h_say("over budget: denied %s on %s, %lld left", tally_deny_reason_name(res.deny_reason),
          res.account, (long long)res.remaining);
    tally_close(gw);
    tally_close(admin);
}

/* ---- exact ---- */

#define EXACT_BUDGET 300
#define EXACT_CALLERS 64
#define EXACT_CLIENTS 8

struct exact_ctx {
    struct tally *client;
    atomic_int attempts_left;
    atomic_int granted, denied, other;
};

static void *exact_caller(void *arg)
{
    struct exact_ctx *x = arg;
    struct tally_reserve_args args = {.account = "exact", .estimate_micros = 1, .ttl_ms = 600000};
    while (atomic_fetch_sub(&x->attempts_left, 1) > 0) {
        struct tally_result res;
        tally_reserve(x->client, &args, 10000, &res);
        if (res.outcome == TALLY_GRANTED) {
            atomic_fetch_add(&x->granted, 1);
        } else if (res.outcome == TALLY_DENIED && res.deny_reason == TALLY_DENY_BUDGET) {
            atomic_fetch_add(&x->denied, 1);
        } else {
            atomic_fetch_add(&x->other, 1);
        }
    }
    return NULL;
}

static void scenario_exact(void)
{
    struct tally *admin = open_admin();
    create_account(admin, "exact-org", "", 1000000);
    create_account(admin, "exact", "exact-org", EXACT_BUDGET);
    char endpoints[256];
    cl_endpoints(endpoints, sizeof(endpoints));
    struct tally *clients[EXACT_CLIENTS];
    for (int i = 0; i < EXACT_CLIENTS; i++) {
        clients[i] = open_client(endpoints, CL_GATEWAY_TOKEN);
    }
    static struct exact_ctx ctx[EXACT_CLIENTS];
    pthread_t threads[EXACT_CALLERS];
    for (int i = 0; i < EXACT_CLIENTS; i++) {
        ctx[i].client = clients[i];
        int share = 3 * EXACT_BUDGET / EXACT_CLIENTS;
        atomic_store(&ctx[i].attempts_left,
                     i == 0 ? 3 * EXACT_BUDGET - (EXACT_CLIENTS - 1) * share : share);
    }
    int64_t t0 = h_now_ms();
    for (int i = 0; i < EXACT_CALLERS; i++) {
        pthread_create(&threads[i], NULL, exact_caller, &ctx[i % EXACT_CLIENTS]);
    }
    int granted = 0, denied = 0, other = 0;
    for (int i = 0; i < EXACT_CALLERS; i++) {
        pthread_join(threads[i], NULL);
    }
    for (int i = 0; i < EXACT_CLIENTS; i++) {
        granted += atomic_load(&ctx[i].granted);
        denied += atomic_load(&ctx[i].denied);
        other += atomic_load(&ctx[i].other);
        tally_close(clients[i]);
    }
    h_say("%d callers on %d connections, %d attempts in %lld ms: %d granted, %d denied, %d other",
          EXACT_CALLERS, EXACT_CLIENTS, 3 * EXACT_BUDGET, (long long)(h_now_ms() - t0), granted,
          denied, other);
    struct tally_account a = get_account(admin, "exact");
    if (granted != EXACT_BUDGET || denied != 2 * EXACT_BUDGET || other != 0 ||
        a.held_micros != EXACT_BUDGET || a.inflight != EXACT_BUDGET || a.remaining_micros != 0) {
        H_FAIL("expected exactly %d grants: %d granted, %d denied, %d other; held %lld",
               EXACT_BUDGET, granted, denied, other, (long long)a.held_micros);
    }
    tally_close(admin);
}

/* ---- failover ---- */

#define FAIL_CALLERS 16
#define FAIL_MAX_GRANTS 200000

struct grant {
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    int64_t estimate;
};

static struct {
    struct tally *client;
    atomic_bool stop;
    atomic_llong killed_ms;     /* 0 until the leader is dead */
    atomic_llong first_after_ms; /* first grant of a call made after the leader died */
    pthread_mutex_t mu;
    struct grant *grants;
    size_t n_grants;
    atomic_int unavailable;
} fo;

static void *failover_caller(void *arg)
{
    (void)arg;
    struct tally_reserve_args args = {.account = "fo", .ttl_ms = 3600000};
    for (int64_t k = 1; !atomic_load(&fo.stop); k++) {
        struct tally_result res;
        args.estimate_micros = 1 + k % 7;
        /* Only a call begun after the death shows the new leader: one begun before may
         * have been answered by the old leader, its answer read after the kill. */
        int64_t killed = atomic_load(&fo.killed_ms);
        tally_reserve(fo.client, &args, 5000, &res);
        if (res.outcome == TALLY_GRANTED) {
            int64_t expected = 0;
            if (killed != 0) {
                atomic_compare_exchange_strong(&fo.first_after_ms, &expected, h_now_ms());
            }
            pthread_mutex_lock(&fo.mu);
            if (fo.n_grants < FAIL_MAX_GRANTS) {
                memcpy(fo.grants[fo.n_grants].id, res.request_id, TALLY_REQUEST_ID_SIZE);
                fo.grants[fo.n_grants].estimate = args.estimate_micros;
                fo.n_grants++;
            }
            pthread_mutex_unlock(&fo.mu);
        } else if (res.outcome == TALLY_UNAVAILABLE) {
            atomic_fetch_add(&fo.unavailable, 1);
        } else {
            H_FAIL("failover reserve: %s %s", tally_outcome_name(res.outcome), res.message);
        }
    }
    return NULL;
}

/* Wait until the client's background voids are all answered or given up. */
static void wait_voids(struct tally *c)
{
    int64_t deadline = h_now_ms() + 40000;
    struct tally_stats st;
    for (;;) {
        tally_stats(c, &st);
        if (st.voids_done + st.voids_failed >= st.voids_queued) {
            break;
        }
        if (h_now_ms() > deadline) {
            H_FAIL("background voids never finished: %llu queued, %llu done",
                   (unsigned long long)st.voids_queued, (unsigned long long)st.voids_done);
        }
        h_sleep_ms(100);
    }
    if (st.voids_failed != 0) {
        H_FAIL("%llu background voids gave up", (unsigned long long)st.voids_failed);
    }
    h_say("background voids: %llu queued, all answered", (unsigned long long)st.voids_queued);
}

/* Every recorded grant is open with its estimate, read from node i alone (stale read). */
static int64_t verify_grants_on(int i)
{
    char ep[64];
    cl_endpoint(i, ep, sizeof(ep));
    struct tally *c = open_client(ep, CL_READER_TOKEN);
    int64_t sum = 0;
    for (size_t k = 0; k < fo.n_grants; k++) {
        struct tally_reservation r;
        struct tally_result res;
        int rv = tally_reservation_get(c, fo.grants[k].id, TALLY_READ_STALE, 5000, &r, &res);
        if (rv != 0 || r.state != TALLY_RESV_OPEN || r.estimate_micros != fo.grants[k].estimate) {
            char hex[33];
            tally_hex(fo.grants[k].id, TALLY_REQUEST_ID_SIZE, hex);
            H_FAIL("node %d: acknowledged grant %s is %s (state %d, estimate %lld)", i + 1, hex,
                   rv != 0 ? tally_strerror(rv) : "present", rv == 0 ? r.state : -1,
                   rv == 0 ? (long long)r.estimate_micros : -1LL);
        }
        sum += fo.grants[k].estimate;
    }
    tally_close(c);
    return sum;
}

/*
 * The leader's /metrics shows each peer's lag: `peer` is behind (by the writes it
 * missed while dead) or, once restarted, caught up like the other follower.
 */
static void check_peer_lag(int leader, int peer, bool behind)
{
    if (leader < 0) {
        H_FAIL("no leader to read /metrics from");
    }
    char series[96];
    uint64_t lag = 0;
    int64_t deadline = h_now_ms() + 5000; /* metrics are published a few times a second */
    for (;;) {
        bool ok = true;
        for (int i = 0; i < CL_NODES && ok; i++) {
            if (i == leader) {
                continue;
            }
            snprintf(series, sizeof(series), "tally_raft_peer_lag_entries{peer=\"%d\"}", i + 1);
            uint64_t v = 0;
            ok = cl_metric(leader, series, &v) == 0 && (i == peer ? (v > 0) == behind : v == 0);
            lag = i == peer ? v : lag;
        }
        if (ok) {
            break;
        }
        if (h_now_ms() > deadline) {
            H_FAIL("node %d's /metrics does not show node %d %s (lag %llu)", leader + 1, peer + 1,
                   behind ? "behind" : "caught up", (unsigned long long)lag);
        }
        h_sleep_ms(100);
    }
    h_say("node %d's /metrics: node %d lags %llu entries, the other follower 0", leader + 1,
          peer + 1, (unsigned long long)lag);
}

static void scenario_failover(void)
{
    struct tally *admin = open_admin();
    create_account(admin, "fo", "", 1000000000);
    fo.grants = calloc(FAIL_MAX_GRANTS, sizeof(*fo.grants));
    pthread_mutex_init(&fo.mu, NULL);
    fo.client = open_admin();
    pthread_t threads[FAIL_CALLERS];
    for (int i = 0; i < FAIL_CALLERS; i++) {
        pthread_create(&threads[i], NULL, failover_caller, NULL);
    }
    h_sleep_ms(1500);
    int leader = cl_leader(1000);
    pthread_mutex_lock(&fo.mu);
    size_t before = fo.n_grants;
    pthread_mutex_unlock(&fo.mu);
    h_say("%zu grants so far; SIGKILL leader node %d", before, leader + 1);
    cl_stop(leader, SIGKILL);
    atomic_store(&fo.killed_ms, h_now_ms());
    h_sleep_ms(4000);
    atomic_store(&fo.stop, true);
    for (int i = 0; i < FAIL_CALLERS; i++) {
        pthread_join(threads[i], NULL);
    }
    int64_t first = atomic_load(&fo.first_after_ms);
    int64_t gap = first != 0 ? first - atomic_load(&fo.killed_ms) : -1;
    h_say("%zu grants in all, %d unavailable; first grant %lld ms after the kill", fo.n_grants,
          atomic_load(&fo.unavailable), (long long)gap);
    if (gap < 0 || gap > 3000) {
        H_FAIL("service was not back within 3 s of the leader's death (gap %lld ms)",
               (long long)gap);
    }
    wait_voids(fo.client);
    tally_close(fo.client);
    int now = cl_leader(5000);
    check_peer_lag(now, leader, true);
    cl_spawn(leader);
    char hash[65];
    cl_converged(30000, 0, hash);
    int64_t sum = 0;
    for (int i = 0; i < CL_NODES; i++) {
        sum = verify_grants_on(i);
    }
    struct tally_account a = get_account(admin, "fo");
    if (a.held_micros != sum || a.inflight != fo.n_grants) {
        H_FAIL("fo holds %lld in %llu reservations; the acknowledged grants are %lld in %zu",
               (long long)a.held_micros, (unsigned long long)a.inflight, (long long)sum,
               fo.n_grants);
    }
    h_say("every node holds all %zu acknowledged grants; the account holds exactly their %lld",
          fo.n_grants, (long long)sum);
    check_peer_lag(cl_leader(5000), leader, false);
    tally_close(admin);
    free(fo.grants);
}

/* ---- minority ---- */

#define MIN_CALLERS 4
#define MIN_EACH 5
#define MIN_DEADLINE_MS 1000

static struct {
    struct tally *client;
    uint8_t ids[MIN_CALLERS * MIN_EACH][TALLY_REQUEST_ID_SIZE];
    atomic_int n, granted, late;
} mi;

static void *minority_caller(void *arg)
{
    (void)arg;
    struct tally_reserve_args args = {.account = "mi", .estimate_micros = 10, .ttl_ms = 3600000};
    for (int k = 0; k < MIN_EACH; k++) {
        struct tally_result res;
        int64_t t0 = h_now_ms();
        tally_reserve(mi.client, &args, MIN_DEADLINE_MS, &res);
        int64_t took = h_now_ms() - t0;
        int slot = atomic_fetch_add(&mi.n, 1);
        memcpy(mi.ids[slot], res.request_id, TALLY_REQUEST_ID_SIZE);
        if (res.outcome != TALLY_UNAVAILABLE) {
            atomic_fetch_add(&mi.granted, 1);
        }
        if (took > MIN_DEADLINE_MS + 250) {
            atomic_fetch_add(&mi.late, 1);
        }
    }
    return NULL;
}

static void scenario_minority(void)
{
    struct tally *admin = open_admin();
    create_account(admin, "mi", "", 1000000);
    int leader = cl_leader(10000);
    int a = (leader + 1) % CL_NODES, b = (leader + 2) % CL_NODES;
    cl_stop(a, SIGKILL);
    cl_stop(b, SIGTERM);
    h_say("nodes %d and %d stopped; node %d alone", a + 1, b + 1, leader + 1);
    mi.client = open_admin();
    pthread_t threads[MIN_CALLERS];
    for (int i = 0; i < MIN_CALLERS; i++) {
        pthread_create(&threads[i], NULL, minority_caller, NULL);
    }
    for (int i = 0; i < MIN_CALLERS; i++) {
        pthread_join(threads[i], NULL);
    }
    h_say("%d reserves: %d not unavailable, %d answered after deadline + 250 ms",
          atomic_load(&mi.n), atomic_load(&mi.granted), atomic_load(&mi.late));
    if (atomic_load(&mi.granted) != 0 || atomic_load(&mi.late) != 0) {
        H_FAIL("the minority granted or answered late");
    }
    cl_spawn(a);
    cl_spawn(b);
    if (cl_leader(20000) < 0) {
        H_FAIL("no leader after the nodes returned");
    }
    wait_voids(mi.client);
    tally_close(mi.client);
    for (int k = 0; k < atomic_load(&mi.n); k++) {
        struct tally_reservation r;
        struct tally_result res;
        int rv = tally_reservation_get(admin, mi.ids[k], 0, 5000, &r, &res);
        if (rv == 0 && r.state != TALLY_RESV_VOIDED) {
            H_FAIL("an UNAVAILABLE reserve left a reservation in state %d", r.state);
        }
        if (rv != 0 && rv != -TALLY_ENOTFOUND) {
            H_FAIL("reservation_get: %s", tally_strerror(rv));
        }
    }
    struct tally_account acc = get_account(admin, "mi");
    if (acc.held_micros != 0 || acc.spent_micros != 0) {
        H_FAIL("mi holds %lld, spent %lld", (long long)acc.held_micros,
               (long long)acc.spent_micros);
    }
    h_say("after the nodes returned: nothing held or spent for the unavailable reserves");
    tally_close(admin);
}

/* ---- restart ---- */

static void scenario_restart(void)
{
    struct tally *admin = open_admin();
    create_account(admin, "rs", "", 1000000);
    struct tally_reserve_args args = {.account = "rs", .estimate_micros = 7, .ttl_ms = 3600000};
    for (int i = 0; i < 50; i++) {
        struct tally_result res;
        if (tally_reserve(admin, &args, 0, &res) != 0 || res.outcome != TALLY_GRANTED) {
            H_FAIL("reserve: %s", res.message);
        }
        if (i % 2 == 0 && tally_settle(admin, res.request_id, 5, 0, 0, &res) != 0) {
            H_FAIL("settle: %s", res.message);
        }
    }
    tally_close(admin);
    char before[65], after[65];
    cl_converged(20000, 0, before);
    for (int i = 0; i < CL_NODES; i++) {
        cl_stop(i, SIGTERM);
    }
    for (int i = 0; i < CL_NODES; i++) {
        cl_spawn(i);
    }
    if (cl_leader(20000) < 0) {
        H_FAIL("no leader after the restart");
    }
    cl_converged(20000, 0, after);
    /* The new leader's barrier is a TERM_START batch: it moves the applied index (so the
     * hash), and the accounts below show it changed nothing else. */
    h_say("state hash across the restart: %.16s... -> %.16s...", before, after);
    admin = open_admin();
    struct tally_account a = get_account(admin, "rs");
    if (a.held_micros != 25 * 7 || a.spent_micros != 25 * 5) {
        H_FAIL("rs after restart: held %lld spent %lld", (long long)a.held_micros,
               (long long)a.spent_micros);
    }
    struct tally_result res;
    if (tally_reserve(admin, &args, 0, &res) != 0 || res.outcome != TALLY_GRANTED) {
        H_FAIL("no grant after the restart");
    }
    h_say("same state hash after restart; held %lld spent %lld; serving",
          (long long)a.held_micros, (long long)a.spent_micros);
    tally_close(admin);
}

/* ---- diskfull ---- */

#define DF_ESTIMATE_MICROS 3

static char df_mount[PATH_MAX];

static void df_unmount(void)
{
    if (df_mount[0] != '\0') {
        umount2(df_mount, MNT_DETACH);
        df_mount[0] = '\0';
    }
}

/* Fill the file system holding `dir` with one file until it says ENOSPC. */
static void fill_up(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        H_FAIL("open %s: %s", path, strerror(errno));
    }
    static char chunk[64 * 1024];
    for (size_t len = sizeof(chunk); len > 0;) {
        if (write(fd, chunk, len) < 0) {
            if (errno != ENOSPC) {
                H_FAIL("write %s: %s", path, strerror(errno));
            }
            len /= 2; /* down to the last bytes */
        }
    }
    close(fd);
}

/* Reserve until node i has exited on its own or deadline_ms has passed; adds the grants
 * to *granted. Returns the exit status, or -1 if the node still runs. */
static int reserve_until_exit(struct tally *c, int i, int deadline_ms, int *granted)
{
    struct tally_reserve_args args = {.account = "df", .estimate_micros = DF_ESTIMATE_MICROS,
                                      .ttl_ms = 3600000};
    int64_t deadline = h_now_ms() + deadline_ms;
    while (h_now_ms() < deadline) {
        struct tally_result res;
        if (tally_reserve(c, &args, 0, &res) == 0 && res.outcome == TALLY_GRANTED) {
            (*granted)++;
        }
        int status;
        if (i >= 0 && waitpid(cl_nodes[i].p.pid, &status, WNOHANG) == cl_nodes[i].p.pid) {
            cl_nodes[i].p.pid = 0;
            return status;
        }
    }
    return -1;
}

static void scenario_diskfull(void)
{
    struct tally *admin = open_admin();
    create_account(admin, "df", "", 1000000000);
    int granted = 0;
    reserve_until_exit(admin, -1, 500, &granted);

    /* Move a follower onto a tmpfs of its own. */
    int f = (cl_leader(10000) + 1) % CL_NODES;
    cl_stop(f, SIGTERM);
    snprintf(df_mount, sizeof(df_mount), "%s/node%d-tmpfs", h_dir, f + 1);
    if (mkdir(df_mount, 0700) != 0 || mount("tally-test", df_mount, "tmpfs", 0, "size=64m") != 0) {
        H_FAIL("mount a tmpfs on %s: %s", df_mount, strerror(errno));
    }
    atexit(df_unmount);
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof(cmd), "cp -a '%s'/. '%s'/", cl_nodes[f].dir, df_mount);
    if (system(cmd) != 0) {
        H_FAIL("%s failed", cmd);
    }
    snprintf(cl_nodes[f].dir, sizeof(cl_nodes[f].dir), "%s", df_mount);
    cl_spawn(f);
    reserve_until_exit(admin, -1, 500, &granted);

    char filler[PATH_MAX + 16];
    snprintf(filler, sizeof(filler), "%s/filler", df_mount);
    fill_up(filler);
    h_say("node %d's file system is full; reserving", f + 1);
    int status = reserve_until_exit(admin, f, 60000, &granted);
    if (status == -1) {
        H_FAIL("node %d still runs on a full disk after 60 s", f + 1);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 74) {
        H_FAIL("node %d ended with status 0x%x on a full disk, not exit 74", f + 1, status);
    }
    char grep[PATH_MAX + 64];
    snprintf(grep, sizeof(grep), "grep -q 'level=fatal' '%s'", cl_nodes[f].p.log);
    if (system(grep) != 0) {
        H_FAIL("node %d exited 74 without a fatal log line", f + 1);
    }
    h_say("node %d stopped with exit 74 on the full disk; %d grants so far", f + 1, granted);

    int before = granted;
    reserve_until_exit(admin, -1, 1000, &granted);
    if (granted == before) {
        H_FAIL("the other two nodes granted nothing while node %d was down", f + 1);
    }

    if (unlink(filler) != 0) {
        H_FAIL("unlink %s: %s", filler, strerror(errno));
    }
    cl_spawn(f);
    char hash[65];
    cl_converged(30000, 0, hash);
    struct tally_account a = get_account(admin, "df");
    if (a.held_micros != (int64_t)granted * DF_ESTIMATE_MICROS) {
        H_FAIL("df holds %lld micros for %d acknowledged grants of %d", (long long)a.held_micros,
               granted, DF_ESTIMATE_MICROS);
    }
    h_say("node %d back with space: same state hash on all three, %d grants all held", f + 1,
          granted);
    tally_close(admin);
    for (int n = 0; n < CL_NODES; n++) {
        cl_stop(n, SIGTERM);
    }
    df_unmount();
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        void (*run)(void);
    } scenarios[] = {
        {"basic", scenario_basic},       {"exact", scenario_exact},
        {"failover", scenario_failover}, {"minority", scenario_minority},
        {"restart", scenario_restart},   {"diskfull", scenario_diskfull},
    };
    for (size_t i = 0; argc == 3 && i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
        if (strcmp(argv[2], scenarios[i].name) == 0) {
            if (scenarios[i].run == scenario_diskfull && geteuid() != 0) {
                fprintf(stderr, "SKIP: diskfull mounts a tmpfs, which needs root\n");
                return 77;
            }
            h_init("tally-client-test", 170);
            cl_start(argv[1]);
            scenarios[i].run();
            for (int n = 0; n < CL_NODES; n++) {
                if (cl_nodes[n].p.pid > 0) {
                    cl_stop(n, SIGTERM);
                }
            }
            h_pass();
            return 0;
        }
    }
    fprintf(stderr, "usage: %s <tallyd> basic|exact|failover|minority|restart|diskfull\n",
            argv[0]);
    return 2;
}
