/*
 * peer-bench: tally-bench's workload against PostgreSQL, Redis or etcd, for bench/compare.
 *
 *   peer-bench --system postgres|redis|etcd --target T [--clients N] [--duration S]
 *              [--warmup S] [--accounts K | --hot] [--setup] [--json] [--threads T]
 *              [--variant TEXT] [--estimate MICROS] [--actual MICROS]
 *
 * Targets: postgres a libpq conninfo ("host=127.0.0.1 port=5433 dbname=bench user=bench");
 * redis "host:port"; etcd the client URLs' "host:port,host:port,..." (the leader is found
 * and used).
 *
 * The shape mirrors tally-bench: N closed loops, each reserve -> settle -> reserve ..., each
 * on a connection of its own (what a gateway's connection pool gives every worker). The
 * connections are non-blocking and driven by T epoll threads (default 1), so the load
 * generator spends no thread switch per request and every client's request is in flight
 * at once, as tally-bench's pipelined libtally connections do for tally. Latency is from
 * sending the operation to its answer, in the same log-bucketed histogram; an operation
 * counts when it completes inside the measured window; the printed figures and JSON keys
 * are tally-bench's.
 */
#define _GNU_SOURCE
#include "bench/benchlib.h"
#include "bench/peer.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <unistd.h>

#define CLIENTS_MAX 4096u
#define THREADS_MAX 16u

struct opts {
    const char *system, *target, *variant;
    unsigned clients, threads, accounts;
    bool hot, setup, json;
    double duration_s, warmup_s;
    int64_t estimate_micros, actual_micros;
};

struct pclient;

/* One epoll thread and the figures of its clients (written only by it while running). */
struct pthread_state {
    pthread_t th;
    int ep;
    struct pclient *clients; /* [n] */
    unsigned n;
    struct bench_hist reserve, settle;
    uint64_t granted, denied, errors, settle_errors, retries;
    unsigned active; /* loops not yet ended */
    char first_error[256];
};

struct pclient {
    struct pthread_state *ts;
    void *conn;
    uint64_t rng;
    uint64_t t0_ns;
    uint32_t key;
    int op; /* enum peer_op in progress, 0 when none */
    bool want_write;
    bool dead;
};

static struct opts g_opt;
static struct peer_cfg g_cfg;
static const struct peer_backend *g_be;
static _Atomic uint64_t g_measure_start_ns = UINT64_MAX;
static _Atomic uint64_t g_measure_end_ns = UINT64_MAX;
static atomic_bool g_stop;
static _Atomic uint64_t g_stop_ns;

void peer_key_name(const struct peer_cfg *cfg, uint32_t key, char out[PEER_KEY_MAX])
{
    if (key >= cfg->keys) {
        snprintf(out, PEER_KEY_MAX, "hot");
    } else {
        snprintf(out, PEER_KEY_MAX, "k%u", key);
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: peer-bench --system SYSTEM --target T [options]\n"
               "  systems:           etcd"
#ifdef PEER_HAVE_PQ
               ", postgres"
#endif
#ifdef PEER_HAVE_HIREDIS
               ", redis"
#endif
               "\n"
               "  --target T         postgres: libpq conninfo; redis: HOST:PORT;\n"
               "                     etcd: HOST:PORT,... of the client URLs\n"
               "  --clients N        closed reserve->settle loops, one connection each (16)\n"
               "  --threads T        epoll threads driving them (1)\n"
               "  --duration S       measured seconds (10); --warmup S before (2)\n"
               "  --accounts K       rows k0..k<K-1> drawn uniformly (1000); --hot: one row\n"
               "  --setup            (re)create the rows first\n"
               "  --json             one JSON object instead of the table\n"
               "  --variant TEXT     a label for the report (e.g. appendfsync=always)\n"
               "  --estimate MICROS  reserved per request (1000); --actual MICROS settled (900)\n");
}

static void parse_args(int argc, char **argv)
{
    struct opts *o = &g_opt;
    o->clients = 16;
    o->threads = 1;
    o->accounts = 1000;
    o->duration_s = 10;
    o->warmup_s = 2;
    o->variant = "";
    o->estimate_micros = 1000;
    o->actual_micros = 900;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV()                                                                                    \
    do {                                                                                           \
        if (v == NULL) {                                                                           \
            fprintf(stderr, "peer-bench: %s needs a value\n", a);                                  \
            exit(2);                                                                               \
        }                                                                                          \
        i++;                                                                                       \
    } while (0)
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--system") == 0) {
            NEEDV();
            o->system = v;
        } else if (strcmp(a, "--target") == 0) {
            NEEDV();
            o->target = v;
        } else if (strcmp(a, "--variant") == 0) {
            NEEDV();
            o->variant = v;
        } else if (strcmp(a, "--clients") == 0) {
            NEEDV();
            o->clients = bench_parse_uint(a, v, 1, CLIENTS_MAX);
        } else if (strcmp(a, "--threads") == 0) {
            NEEDV();
            o->threads = bench_parse_uint(a, v, 1, THREADS_MAX);
        } else if (strcmp(a, "--duration") == 0) {
            NEEDV();
            o->duration_s = bench_parse_seconds(a, v);
        } else if (strcmp(a, "--warmup") == 0) {
            NEEDV();
            o->warmup_s = bench_parse_seconds(a, v);
        } else if (strcmp(a, "--accounts") == 0) {
            NEEDV();
            o->accounts = bench_parse_uint(a, v, 1, 1000000);
        } else if (strcmp(a, "--hot") == 0) {
            o->hot = true;
        } else if (strcmp(a, "--setup") == 0) {
            o->setup = true;
        } else if (strcmp(a, "--json") == 0) {
            o->json = true;
        } else if (strcmp(a, "--estimate") == 0) {
            NEEDV();
            o->estimate_micros = bench_parse_uint(a, v, 0, 1000000000u);
        } else if (strcmp(a, "--actual") == 0) {
            NEEDV();
            o->actual_micros = bench_parse_uint(a, v, 0, 1000000000u);
        } else {
            fprintf(stderr, "peer-bench: unknown option '%s'\n", a);
            usage(stderr);
            exit(2);
        }
#undef NEEDV
    }
    if (o->system == NULL || o->target == NULL) {
        fprintf(stderr, "peer-bench: --system and --target are required\n");
        usage(stderr);
        exit(2);
    }
    if (o->threads > o->clients) {
        o->threads = o->clients;
    }
}

static const struct peer_backend *backend_named(const char *name)
{
    if (strcmp(name, "etcd") == 0) {
        return &peer_etcd;
    }
#ifdef PEER_HAVE_PQ
    if (strcmp(name, "postgres") == 0 || strcmp(name, "postgresql") == 0) {
        return &peer_postgres;
    }
#endif
#ifdef PEER_HAVE_HIREDIS
    if (strcmp(name, "redis") == 0) {
        return &peer_redis;
    }
#endif
    return NULL;
}

static bool in_window(uint64_t t_ns)
{
    return t_ns >= atomic_load_explicit(&g_measure_start_ns, memory_order_relaxed) &&
           t_ns < atomic_load_explicit(&g_measure_end_ns, memory_order_relaxed);
}

static void note_error(struct pthread_state *ts, const char *what, const char *why)
{
    if (ts->first_error[0] == '\0') {
        snprintf(ts->first_error, sizeof(ts->first_error), "%s: %.200s", what, why);
    }
}

/* Ask epoll for writability only while the connection has bytes waiting. */
static void set_interest(struct pclient *cl, bool want_write)
{
    if (cl->want_write == want_write || cl->dead) {
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | (want_write ? EPOLLOUT : 0u), .data.ptr = cl};
    epoll_ctl(cl->ts->ep, EPOLL_CTL_MOD, g_be->fd(cl->conn), &ev);
    cl->want_write = want_write;
}

static void client_end(struct pclient *cl)
{
    if (!cl->dead) {
        cl->dead = true;
        cl->op = 0;
        cl->ts->active--;
    }
}

static void on_answer(struct pclient *cl, int st, struct peer_answer *ans);

/* Start the next reserve, or end the loop when the run stops. */
static void next_reserve(struct pclient *cl)
{
    if (atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        client_end(cl);
        return;
    }
    cl->key = g_opt.hot ? g_opt.accounts : bench_rand_below(&cl->rng, g_opt.accounts);
    cl->op = PEER_RESERVE;
    cl->t0_ns = bench_now_ns();
    struct peer_answer ans = {0};
    int st = g_be->start(cl->conn, PEER_RESERVE, cl->key, g_opt.estimate_micros, 0, &ans);
    on_answer(cl, st, &ans);
}

static void start_settle(struct pclient *cl)
{
    cl->op = PEER_SETTLE;
    cl->t0_ns = bench_now_ns();
    struct peer_answer ans = {0};
    int st = g_be->start(cl->conn, PEER_SETTLE, cl->key, g_opt.estimate_micros, g_opt.actual_micros,
                         &ans);
    on_answer(cl, st, &ans);
}

/* What start() or io() said about client `cl`'s operation. */
static void on_answer(struct pclient *cl, int st, struct peer_answer *ans)
{
    struct pthread_state *ts = cl->ts;
    if (st == PEER_FAIL) {
        ts->errors++;
        note_error(ts, "connection", ans->err);
        client_end(cl);
        return;
    }
    if (st == PEER_PENDING) {
        set_interest(cl, ans->want_write);
        return;
    }
    set_interest(cl, false);
    uint64_t t = bench_now_ns();
    bool rec = in_window(t);
    if (rec) {
        ts->retries += ans->retries;
    }
    if (cl->op == PEER_RESERVE) {
        if (rec) {
            bench_hist_add(&ts->reserve, t - cl->t0_ns);
        }
        if (ans->outcome == PEER_GRANTED) {
            if (rec) {
                ts->granted++;
            }
            start_settle(cl);
            return;
        }
        if (ans->outcome == PEER_DENIED) {
            if (rec) {
                ts->denied++;
            }
        } else {
            ts->errors++;
            note_error(ts, "reserve", ans->err);
        }
    } else {
        if (ans->outcome == PEER_GRANTED) {
            if (rec) {
                bench_hist_add(&ts->settle, t - cl->t0_ns);
            }
        } else {
            ts->settle_errors++;
            note_error(ts, "settle", ans->err);
        }
    }
    next_reserve(cl);
}

static void *thread_main(void *arg)
{
    struct pthread_state *ts = arg;
    for (unsigned i = 0; i < ts->n; i++) {
        next_reserve(&ts->clients[i]);
    }
    struct epoll_event evs[256];
    while (ts->active > 0) {
        /* A server that stopped answering must not hang the report: 10 s after the stop,
         * whatever is still outstanding is abandoned. */
        uint64_t stop_ns = atomic_load_explicit(&g_stop_ns, memory_order_relaxed);
        if (stop_ns != 0 && bench_now_ns() > stop_ns + UINT64_C(10000000000)) {
            note_error(ts, "stop", "operations still unanswered 10 s after the end");
            break;
        }
        int n = epoll_wait(ts->ep, evs, 256, 50);
        if (n < 0 && errno != EINTR) {
            note_error(ts, "epoll_wait", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            struct pclient *cl = evs[i].data.ptr;
            if (cl->dead || cl->op == 0) {
                continue;
            }
            struct peer_answer ans = {0};
            bool rd = (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0;
            bool wr = (evs[i].events & EPOLLOUT) != 0;
            int st = g_be->io(cl->conn, rd, wr, &ans);
            on_answer(cl, st, &ans);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    g_be = backend_named(g_opt.system);
    if (g_be == NULL) {
        fprintf(stderr, "peer-bench: no backend '%s' in this build\n", g_opt.system);
        usage(stderr);
        return 2;
    }
    g_cfg.target = g_opt.target;
    g_cfg.keys = g_opt.accounts;
    g_cfg.limit = INT64_C(1000000000000000000); /* 10^18: never reached */
    g_cfg.setup = g_opt.setup;
    char err[256];
    uint64_t t_init = bench_now_ns();
    if (g_be->init(&g_cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "peer-bench: %s: %s\n", g_be->name, err);
        return 1;
    }
    if (g_opt.setup) {
        fprintf(stderr, "peer-bench: %s: set up %u rows + hot in %.1f s\n", g_be->name,
                g_opt.accounts, (double)(bench_now_ns() - t_init) / 1e9);
        if (g_opt.duration_s == 0) {
            g_be->fini();
            return 0;
        }
    }
    if (g_opt.duration_s <= 0) {
        fprintf(stderr, "peer-bench: --duration must be > 0\n");
        return 2;
    }

    unsigned nt = g_opt.threads, ncl = g_opt.clients;
    struct pthread_state *ts = calloc(nt, sizeof(*ts));
    struct pclient *cls = calloc(ncl, sizeof(*cls));
    if (ts == NULL || cls == NULL) {
        fprintf(stderr, "peer-bench: out of memory\n");
        return 1;
    }
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed)) {
        seed = bench_now_ns();
    }
    for (unsigned t = 0; t < nt; t++) {
        bench_hist_init(&ts[t].reserve);
        bench_hist_init(&ts[t].settle);
        ts[t].ep = epoll_create1(EPOLL_CLOEXEC);
        if (ts[t].ep < 0) {
            fprintf(stderr, "peer-bench: epoll_create1: %s\n", strerror(errno));
            return 1;
        }
    }
    /* Clients are dealt to threads in contiguous slices. */
    for (unsigned i = 0, t = 0; t < nt; t++) {
        unsigned n = ncl / nt + (t < ncl % nt ? 1 : 0);
        ts[t].clients = &cls[i];
        ts[t].n = n;
        ts[t].active = n;
        for (unsigned j = 0; j < n; j++, i++) {
            struct pclient *cl = &cls[i];
            cl->ts = &ts[t];
            cl->rng = (seed ^ (UINT64_C(0x9e3779b97f4a7c15) * (i + 1))) | 1;
            cl->conn = g_be->open(&g_cfg, err, sizeof(err));
            if (cl->conn == NULL) {
                fprintf(stderr, "peer-bench: %s: connection %u: %s\n", g_be->name, i, err);
                return 1;
            }
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = cl};
            if (epoll_ctl(ts[t].ep, EPOLL_CTL_ADD, g_be->fd(cl->conn), &ev) != 0) {
                fprintf(stderr, "peer-bench: epoll_ctl: %s\n", strerror(errno));
                return 1;
            }
        }
    }
    for (unsigned t = 0; t < nt; t++) {
        if (pthread_create(&ts[t].th, NULL, thread_main, &ts[t]) != 0) {
            fprintf(stderr, "peer-bench: pthread_create failed\n");
            return 1;
        }
    }
    bench_sleep_s(g_opt.warmup_s);
    uint64_t start = bench_now_ns();
    atomic_store(&g_measure_start_ns, start);
    bench_sleep_s(g_opt.duration_s);
    uint64_t end = bench_now_ns();
    atomic_store(&g_measure_end_ns, end);
    atomic_store(&g_stop_ns, end);
    atomic_store(&g_stop, true);
    for (unsigned t = 0; t < nt; t++) {
        pthread_join(ts[t].th, NULL);
    }

    struct bench_report r;
    memset(&r, 0, sizeof(r));
    bench_hist_init(&r.reserve);
    bench_hist_init(&r.settle);
    r.system = g_be->name;
    r.variant = g_opt.variant;
    r.clients = ncl;
    r.connections = ncl;
    r.keys = g_opt.hot ? 1 : g_opt.accounts;
    r.hot = g_opt.hot;
    r.warmup_s = g_opt.warmup_s;
    r.duration_s = (double)(end - start) / 1e9;
    r.batch_mean = -1;
    for (unsigned t = 0; t < nt; t++) {
        bench_hist_merge(&r.reserve, &ts[t].reserve);
        bench_hist_merge(&r.settle, &ts[t].settle);
        r.granted += ts[t].granted;
        r.denied += ts[t].denied;
        r.errors += ts[t].errors;
        r.settle_errors += ts[t].settle_errors;
        r.retries += ts[t].retries;
        if (r.first_error[0] == '\0' && ts[t].first_error[0] != '\0') {
            snprintf(r.first_error, sizeof(r.first_error), "%.250s", ts[t].first_error);
        }
        close(ts[t].ep);
    }
    for (unsigned i = 0; i < ncl; i++) {
        g_be->close(cls[i].conn);
    }
    g_be->fini();
    bench_report_print(&r, g_opt.json);
    free(ts);
    free(cls);
    return r.errors > 0 ? 1 : 0;
}
