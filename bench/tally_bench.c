/*
 * tally-bench: drive a running tally cluster with N closed-loop gateway callers and say
 * how many reservations per second it grants and how long reserve and settle take.
 *
 *   tally-bench --endpoints A,B,C --token-file F [--tls-ca F] [--clients N] [--connections C]
 *               [--duration S] [--warmup S] [--accounts K | --hot] [--setup] [--json]
 *               [--metrics HOST:PORT,...|none] [--org NAME] [--by key|account]
 *               [--estimate MICROS] [--actual MICROS] [--deadline-ms MS]
 *
 * The shape: every "client" is one closed loop, reserve -> settle -> reserve ..., driven
 * entirely by libtally's asynchronous calls. The reserve's callback starts the settle and
 * the settle's callback starts the next reserve, so a client never has more than one
 * request outstanding and no bench thread ever blocks or wakes up per request: the only
 * threads are libtally's I/O threads, one per connection (`tally_open`), and the N
 * clients are spread over the C connections round-robin. Callbacks run on the I/O thread
 * of their connection, so each connection keeps its own histograms and counters without
 * locks; the main thread only sets the phase (warm-up, measuring, stopping) through
 * atomics and merges the figures after every loop has stopped.
 *
 * Latency is from the async call to its callback (what a gateway thread would wait),
 * recorded in the log-bucketed histogram of benchlib.h; an operation counts toward the
 * measured window when its callback runs inside it. The mean batch size comes from the
 * nodes' /metrics (tally_batch_size_sum and _count, summed over every node given, so a
 * leader change during the run still counts): the deltas over the measured window.
 *
 * --setup first creates, through the admin API, an org root (--org, default "bench") and
 * under it K leaves "bench/k<i>" and one hot leaf "bench/hot", each with a huge budget and
 * a key whose secret is "tally-bench:<account>" (existing ones are kept), then runs. With
 * --duration 0 it only sets up.
 */
#define _GNU_SOURCE
#include "bench/benchlib.h"
#include "client/tally.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define CLIENTS_MAX 100000u
#define CONNECTIONS_MAX 64u
#define ACCOUNTS_MAX 1000000u
#define METRICS_MAX 16u
#define SETUP_THREADS 8u
#define ORG_BUDGET_MICROS INT64_C(1000000000000000)  /* 10^15, the ledger's bound: never reached */
#define LEAF_BUDGET_MICROS INT64_C(1000000000000000) /* 10^15 */
#define TTL_MS INT64_C(60000)

struct opts {
    const char *endpoints;
    const char *token_file;
    const char *tls_ca_file; /* NULL: plain TCP */
    unsigned clients, connections, accounts;
    bool hot, setup, json, by_account;
    double duration_s, warmup_s;
    const char *metrics; /* NULL: derived from the endpoints; "none": off */
    const char *org;
    int64_t estimate_micros, actual_micros;
    int64_t deadline_ms;
};

/* One libtally connection and the figures of the loops it carries. Only its I/O thread
 * writes the figures while loops run. */
struct bconn {
    struct tally *t;
    struct bench_hist reserve, settle;
    uint64_t granted, denied, unavailable, errors, settle_errors;
    char first_error[256];
};

/* One closed loop. */
struct bclient {
    struct bconn *conn;
    uint32_t idx;
    uint32_t seq;
    uint64_t rng;
    uint64_t t0_ns;
    uint32_t key;
    uint8_t id[TALLY_REQUEST_ID_SIZE];
};

static struct opts g_opt;
static char (*g_names)[TALLY_NAME_MAX + 1]; /* accounts; [accounts] is the hot one */
static uint8_t (*g_hashes)[TALLY_KEY_HASH_SIZE];
static uint8_t g_id_prefix[8];
static _Atomic uint64_t g_measure_start_ns = UINT64_MAX;
static _Atomic uint64_t g_measure_end_ns = UINT64_MAX;
static atomic_bool g_stop;
static atomic_uint g_active;
static atomic_uint g_refused; /* reserves libtally would not queue */
static atomic_int g_refused_rc;

static void usage(FILE *f)
{
    fprintf(f, "usage: tally-bench --endpoints A,B,C --token-file F [options]\n"
               "  --clients N        closed reserve->settle loops (default 16)\n"
               "  --connections C    libtally connections, one I/O thread each (default: 1 for\n"
               "                     one client, else 2)\n"
               "  --duration S       measured seconds (default 10; 0 with --setup: set up only)\n"
               "  --warmup S         seconds run before measuring (default 2)\n"
               "  --accounts K       keys drawn uniformly from K accounts (default 1000)\n"
               "  --hot              every request on the one hot account\n"
               "  --setup            create the org, the K accounts, the hot one and their keys\n"
               "  --json             one JSON object instead of the table\n"
               "  --metrics LIST     HOST:PORT of the nodes' HTTP endpoints (default: each client\n"
               "                     port + 200, as scripts/cluster.sh lays them out; none: off)\n"
               "  --org NAME         the root account (default bench)\n"
               "  --by key|account   name the payer by key hash (default) or account name\n"
               "  --estimate MICROS  reserved per request (default 1000)\n"
               "  --actual MICROS    settled per request (default 900)\n"
               "  --deadline-ms MS   per-call deadline (default 2000)\n"
               "  --tls-ca F         TLS to the nodes, verified against this CA (PEM)\n"
               "Environment: TALLY_ENDPOINTS, TALLY_TOKEN_FILE stand in for the first two,\n"
               "TALLYCTL_TLS_CA for --tls-ca.\n");
}

static void parse_args(int argc, char **argv)
{
    struct opts *o = &g_opt;
    o->endpoints = getenv("TALLY_ENDPOINTS");
    o->token_file = getenv("TALLY_TOKEN_FILE");
    o->tls_ca_file = getenv("TALLYCTL_TLS_CA");
    o->clients = 16;
    o->accounts = 1000;
    o->duration_s = 10;
    o->warmup_s = 2;
    o->org = "bench";
    o->estimate_micros = 1000;
    o->actual_micros = 900;
    o->deadline_ms = 2000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV()                                                                                    \
    do {                                                                                           \
        if (v == NULL) {                                                                           \
            fprintf(stderr, "tally-bench: %s needs a value\n", a);                                 \
            exit(2);                                                                               \
        }                                                                                          \
        i++;                                                                                       \
    } while (0)
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--endpoints") == 0) {
            NEEDV();
            o->endpoints = v;
        } else if (strcmp(a, "--token-file") == 0) {
            NEEDV();
            o->token_file = v;
        } else if (strcmp(a, "--clients") == 0) {
            NEEDV();
            o->clients = bench_parse_uint(a, v, 1, CLIENTS_MAX);
        } else if (strcmp(a, "--connections") == 0) {
            NEEDV();
            o->connections = bench_parse_uint(a, v, 1, CONNECTIONS_MAX);
        } else if (strcmp(a, "--duration") == 0) {
            NEEDV();
            o->duration_s = bench_parse_seconds(a, v);
        } else if (strcmp(a, "--warmup") == 0) {
            NEEDV();
            o->warmup_s = bench_parse_seconds(a, v);
        } else if (strcmp(a, "--accounts") == 0) {
            NEEDV();
            o->accounts = bench_parse_uint(a, v, 1, ACCOUNTS_MAX);
        } else if (strcmp(a, "--hot") == 0) {
            o->hot = true;
        } else if (strcmp(a, "--setup") == 0) {
            o->setup = true;
        } else if (strcmp(a, "--json") == 0) {
            o->json = true;
        } else if (strcmp(a, "--metrics") == 0) {
            NEEDV();
            o->metrics = v;
        } else if (strcmp(a, "--org") == 0) {
            NEEDV();
            o->org = v;
        } else if (strcmp(a, "--by") == 0) {
            NEEDV();
            if (strcmp(v, "key") != 0 && strcmp(v, "account") != 0) {
                fprintf(stderr, "tally-bench: --by key or --by account\n");
                exit(2);
            }
            o->by_account = strcmp(v, "account") == 0;
        } else if (strcmp(a, "--estimate") == 0) {
            NEEDV();
            o->estimate_micros = bench_parse_uint(a, v, 0, 1000000000u);
        } else if (strcmp(a, "--actual") == 0) {
            NEEDV();
            o->actual_micros = bench_parse_uint(a, v, 0, 1000000000u);
        } else if (strcmp(a, "--deadline-ms") == 0) {
            NEEDV();
            o->deadline_ms = bench_parse_uint(a, v, 1, 86400000u);
        } else if (strcmp(a, "--tls-ca") == 0) {
            NEEDV();
            o->tls_ca_file = v;
        } else {
            fprintf(stderr, "tally-bench: unknown option '%s'\n", a);
            usage(stderr);
            exit(2);
        }
#undef NEEDV
    }
    if (o->endpoints == NULL || o->endpoints[0] == '\0' || o->token_file == NULL) {
        fprintf(stderr, "tally-bench: --endpoints and --token-file are required\n");
        usage(stderr);
        exit(2);
    }
    if (o->connections == 0) {
        o->connections = o->clients == 1 ? 1 : 2;
    }
    if (o->connections > o->clients) {
        o->connections = o->clients;
    }
    if (strlen(o->org) + 12 > TALLY_NAME_MAX) {
        fprintf(stderr, "tally-bench: --org is too long\n");
        exit(2);
    }
}

/* The bare token from the first line of `path`. */
static void read_token(const char *path, char *out, size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "tally-bench: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    if (fgets(out, (int)size, f) == NULL) {
        out[0] = '\0';
    }
    fclose(f);
    size_t n = strlen(out);
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' ')) {
        out[--n] = '\0';
    }
}

static struct tally *open_client(const char *token, uint32_t max_inflight)
{
    struct tally_config cfg;
    tally_config_init(&cfg);
    cfg.endpoints = g_opt.endpoints;
    cfg.token = token;
    cfg.tls_ca_file =
        g_opt.tls_ca_file != NULL && g_opt.tls_ca_file[0] != '\0' ? g_opt.tls_ca_file : NULL;
    cfg.deadline_ms = g_opt.deadline_ms;
    cfg.max_inflight = max_inflight;
    char err[TALLY_ERRMSG_SIZE];
    struct tally *t = NULL;
    int rc = tally_open(&t, &cfg, err);
    if (rc != 0) {
        fprintf(stderr, "tally-bench: tally_open: %s (%s)\n", err, tally_strerror(rc));
        exit(1);
    }
    return t;
}

/* ---- Accounts. ---- */

static void make_names(void)
{
    unsigned n = g_opt.accounts + 1;
    g_names = calloc(n, sizeof(*g_names));
    g_hashes = calloc(n, sizeof(*g_hashes));
    if (g_names == NULL || g_hashes == NULL) {
        fprintf(stderr, "tally-bench: out of memory\n");
        exit(1);
    }
    for (unsigned i = 0; i < n; i++) {
        if (i < g_opt.accounts) {
            snprintf(g_names[i], sizeof(g_names[i]), "%s/k%u", g_opt.org, i);
        } else {
            snprintf(g_names[i], sizeof(g_names[i]), "%s/hot", g_opt.org);
        }
        char secret[TALLY_NAME_MAX + 32];
        snprintf(secret, sizeof(secret), "tally-bench:%s", g_names[i]);
        tally_key_hash(secret, g_hashes[i]);
    }
}

struct setup_job {
    struct tally *t;
    atomic_uint next;
    atomic_uint failed;
};

/* Create one account and its key; an existing one is fine. Returns 0 or -1. */
static int setup_one(struct tally *t, const char *name, const char *parent, int64_t budget,
                     const uint8_t *hash)
{
    struct tally_limits lim = {.set = TALLY_LIM_BUDGET, .budget_micros = budget};
    struct tally_result res;
    int rc = tally_account_create(t, name, parent, &lim, NULL, 10000, &res);
    if (rc != 0 && rc != -TALLY_EEXIST) {
        fprintf(stderr, "tally-bench: create %s: %s (%s)\n", name, tally_strerror(rc), res.message);
        return -1;
    }
    if (hash == NULL) {
        return 0;
    }
    rc = tally_key_add(t, name, NULL, hash, NULL, 10000, &res);
    if (rc != 0 && rc != -TALLY_EEXIST) {
        fprintf(stderr, "tally-bench: key for %s: %s (%s)\n", name, tally_strerror(rc),
                res.message);
        return -1;
    }
    return 0;
}

static void *setup_main(void *arg)
{
    struct setup_job *j = arg;
    for (;;) {
        unsigned i = atomic_fetch_add(&j->next, 1);
        if (i > g_opt.accounts || atomic_load(&j->failed) > 0) {
            return NULL;
        }
        if (setup_one(j->t, g_names[i], g_opt.org, LEAF_BUDGET_MICROS, g_hashes[i]) != 0) {
            atomic_fetch_add(&j->failed, 1);
        }
    }
}

/* Create the org, the leaves and their keys with SETUP_THREADS blocking callers (their
 * writes share Raft entries). Exits on failure. */
static void setup(const char *token)
{
    struct tally *t = open_client(token, 0);
    uint64_t t0 = bench_now_ns();
    if (setup_one(t, g_opt.org, NULL, ORG_BUDGET_MICROS, NULL) != 0) {
        fprintf(stderr, "tally-bench: setup needs an admin token\n");
        exit(1);
    }
    struct setup_job job = {.t = t};
    pthread_t th[SETUP_THREADS];
    for (unsigned i = 0; i < SETUP_THREADS; i++) {
        if (pthread_create(&th[i], NULL, setup_main, &job) != 0) {
            fprintf(stderr, "tally-bench: pthread_create failed\n");
            exit(1);
        }
    }
    for (unsigned i = 0; i < SETUP_THREADS; i++) {
        pthread_join(th[i], NULL);
    }
    tally_close(t);
    if (atomic_load(&job.failed) > 0) {
        exit(1);
    }
    fprintf(stderr, "tally-bench: set up %s with %u accounts + hot and their keys in %.1f s\n",
            g_opt.org, g_opt.accounts, (double)(bench_now_ns() - t0) / 1e9);
}

/* ---- The closed loops. ---- */

static bool in_window(uint64_t t_ns)
{
    return t_ns >= atomic_load_explicit(&g_measure_start_ns, memory_order_relaxed) &&
           t_ns < atomic_load_explicit(&g_measure_end_ns, memory_order_relaxed);
}

static void note_error(struct bconn *k, const char *what, const struct tally_result *res, int rc)
{
    if (k->first_error[0] == '\0') {
        snprintf(k->first_error, sizeof(k->first_error), "%s: %.180s (%s)", what,
                 res != NULL && res->message[0] ? res->message : "",
                 tally_strerror(res != NULL && res->error ? res->error : rc));
    }
}

static void reserve_cb(void *arg, const struct tally_result *res);
static void settle_cb(void *arg, const struct tally_result *res);

/* Start the next reserve of loop `cl`, or end the loop when the run stops. */
static void next_reserve(struct bclient *cl)
{
    if (atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        atomic_fetch_sub(&g_active, 1);
        return;
    }
    struct tally_reserve_args a = {0};
    cl->key = g_opt.hot ? g_opt.accounts : bench_rand_below(&cl->rng, g_opt.accounts);
    if (g_opt.by_account) {
        a.account = g_names[cl->key];
    } else {
        a.key_hash = g_hashes[cl->key];
    }
    a.estimate_micros = g_opt.estimate_micros;
    a.estimate_tokens = 500;
    a.ttl_ms = TTL_MS;
    /* Ids: a random per-process prefix, the loop and its count (no getrandom per call). */
    cl->seq++;
    memcpy(cl->id, g_id_prefix, 8);
    memcpy(cl->id + 8, &cl->idx, 4);
    memcpy(cl->id + 12, &cl->seq, 4);
    a.request_id = cl->id;
    cl->t0_ns = bench_now_ns();
    int rc = tally_reserve_async(cl->conn->t, &a, 0, reserve_cb, cl);
    if (rc != 0) {
        /* Refused before it was queued (busy, closed): this loop ends. This may run on the
         * main thread (first reserves), hence atomics rather than the connection's. */
        atomic_fetch_add(&g_refused, 1);
        atomic_store(&g_refused_rc, rc);
        atomic_fetch_sub(&g_active, 1);
    }
}

static void reserve_cb(void *arg, const struct tally_result *res)
{
    struct bclient *cl = arg;
    struct bconn *k = cl->conn;
    uint64_t t = bench_now_ns();
    bool rec = in_window(t);
    if (rec) {
        bench_hist_add(&k->reserve, t - cl->t0_ns);
    }
    switch (res->outcome) {
    case TALLY_GRANTED:
        if (rec) {
            k->granted++;
        }
        cl->t0_ns = bench_now_ns();
        int rc = tally_settle_async(k->t, cl->id, g_opt.actual_micros, 450, 0, settle_cb, cl);
        if (rc == 0) {
            return;
        }
        note_error(k, "settle not queued", NULL, rc);
        k->settle_errors++;
        break;
    case TALLY_DENIED:
        if (rec) {
            k->denied++;
        }
        if (k->first_error[0] == '\0' && res->deny_reason != TALLY_DENY_BUDGET) {
            snprintf(k->first_error, sizeof(k->first_error), "denied: %s on %.128s",
                     tally_deny_reason_name(res->deny_reason), res->account);
        }
        break;
    case TALLY_UNAVAILABLE:
        if (rec) {
            k->unavailable++;
        }
        note_error(k, "reserve unavailable", res, 0);
        break;
    default:
        k->errors++;
        note_error(k, "reserve", res, 0);
        break;
    }
    next_reserve(cl);
}

static void settle_cb(void *arg, const struct tally_result *res)
{
    struct bclient *cl = arg;
    struct bconn *k = cl->conn;
    uint64_t t = bench_now_ns();
    if (res->outcome == TALLY_GRANTED) {
        if (in_window(t)) {
            bench_hist_add(&k->settle, t - cl->t0_ns);
        }
    } else {
        k->settle_errors++;
        note_error(k, "settle", res, 0);
    }
    next_reserve(cl);
}

/* ---- Metrics. ---- */

struct batch_figures {
    bool ok;
    double sum, count;
};

/* Sum tally_batch_size_sum / _count over the metrics endpoints in `list`. */
static struct batch_figures read_batches(const char *list)
{
    struct batch_figures f = {.ok = false};
    if (list == NULL || list[0] == '\0') {
        return f;
    }
    char copy[1024];
    snprintf(copy, sizeof(copy), "%s", list);
    static char body[1 << 16];
    char *save = NULL;
    bool any = false;
    for (char *ep = strtok_r(copy, ",", &save); ep != NULL; ep = strtok_r(NULL, ",", &save)) {
        int status = bench_http(ep, "GET", "/metrics", NULL, 1000, body, sizeof(body));
        if (status != 200) {
            continue; /* a node that is down proposes nothing */
        }
        const char *s = strstr(body, "\ntally_batch_size_sum ");
        const char *c = strstr(body, "\ntally_batch_size_count ");
        if (s == NULL || c == NULL) {
            continue;
        }
        f.sum += strtod(s + strlen("\ntally_batch_size_sum "), NULL);
        f.count += strtod(c + strlen("\ntally_batch_size_count "), NULL);
        any = true;
    }
    f.ok = any;
    return f;
}

/* The metrics endpoints: --metrics, or every client endpoint's port + 200. */
static void metrics_list(char *out, size_t size)
{
    out[0] = '\0';
    if (g_opt.metrics != NULL) {
        if (strcmp(g_opt.metrics, "none") != 0) {
            snprintf(out, size, "%s", g_opt.metrics);
        }
        return;
    }
    char copy[1024];
    snprintf(copy, sizeof(copy), "%s", g_opt.endpoints);
    char *save = NULL;
    size_t used = 0;
    for (char *ep = strtok_r(copy, ",", &save); ep != NULL; ep = strtok_r(NULL, ",", &save)) {
        char host[256];
        int port;
        if (bench_split_hostport(ep, host, sizeof(host), &port) != 0 || port + 200 > 65535) {
            continue;
        }
        int n = snprintf(out + used, size - used, "%s%s:%d", used ? "," : "", host, port + 200);
        if (n < 0 || (size_t)n >= size - used) {
            break;
        }
        used += (size_t)n;
    }
}

/* ---- main. ---- */

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    char token[TALLY_TOKEN_MAX + 2];
    read_token(g_opt.token_file, token, sizeof(token));
    make_names();
    if (getrandom(g_id_prefix, sizeof(g_id_prefix), 0) != (ssize_t)sizeof(g_id_prefix)) {
        fprintf(stderr, "tally-bench: getrandom failed\n");
        return 1;
    }
    if (g_opt.setup) {
        setup(token);
        if (g_opt.duration_s == 0) {
            return 0;
        }
    }
    if (g_opt.duration_s <= 0) {
        fprintf(stderr, "tally-bench: --duration must be > 0\n");
        return 2;
    }
    char metrics[1024];
    metrics_list(metrics, sizeof(metrics));

    unsigned nconn = g_opt.connections, ncl = g_opt.clients;
    struct bconn *conns = calloc(nconn, sizeof(*conns));
    struct bclient *cls = calloc(ncl, sizeof(*cls));
    if (conns == NULL || cls == NULL) {
        fprintf(stderr, "tally-bench: out of memory\n");
        return 1;
    }
    uint32_t per_conn = (ncl + nconn - 1) / nconn;
    for (unsigned i = 0; i < nconn; i++) {
        bench_hist_init(&conns[i].reserve);
        bench_hist_init(&conns[i].settle);
        conns[i].t = open_client(token, per_conn * 2 + 64);
    }
    /* Connect every client first (a blocking status-free call would need a key; one
     * reserve+settle per connection does it and checks the set-up). */
    for (unsigned i = 0; i < nconn; i++) {
        struct tally_reserve_args a = {.estimate_micros = 1, .ttl_ms = TTL_MS};
        if (g_opt.by_account) {
            a.account = g_names[g_opt.hot ? g_opt.accounts : 0];
        } else {
            a.key_hash = g_hashes[g_opt.hot ? g_opt.accounts : 0];
        }
        struct tally_result res;
        int rc = tally_reserve(conns[i].t, &a, 10000, &res);
        if (rc != 0 || res.outcome != TALLY_GRANTED) {
            fprintf(stderr, "tally-bench: first reserve on %s: %s %s%s%s (run with --setup?)\n",
                    g_names[g_opt.hot ? g_opt.accounts : 0], tally_outcome_name(res.outcome),
                    res.outcome == TALLY_DENIED ? tally_deny_reason_name(res.deny_reason) : "",
                    res.message[0] ? ": " : "", res.message);
            return 1;
        }
        tally_settle(conns[i].t, res.request_id, 1, 0, 10000, NULL);
    }

    uint64_t seed = 0;
    memcpy(&seed, g_id_prefix, sizeof(seed));
    atomic_store(&g_active, ncl);
    for (unsigned i = 0; i < ncl; i++) {
        cls[i].conn = &conns[i % nconn];
        cls[i].idx = i;
        cls[i].rng = (seed ^ (UINT64_C(0x9e3779b97f4a7c15) * (i + 1))) | 1;
    }
    /* The first reserves start from this thread; their callbacks chain on the I/O
     * threads from then on. */
    for (unsigned i = 0; i < ncl; i++) {
        next_reserve(&cls[i]);
    }

    bench_sleep_s(g_opt.warmup_s);
    struct batch_figures b0 = read_batches(metrics);
    uint64_t start = bench_now_ns();
    atomic_store(&g_measure_start_ns, start);
    bench_sleep_s(g_opt.duration_s);
    uint64_t end = bench_now_ns();
    atomic_store(&g_measure_end_ns, end);
    struct batch_figures b1 = read_batches(metrics);
    atomic_store(&g_stop, true);

    /* Let every loop finish its last call (each ends by its deadline at the latest). */
    uint64_t wait_until = bench_now_ns() + (uint64_t)(g_opt.deadline_ms + 5000) * 1000000u;
    while (atomic_load(&g_active) > 0 && bench_now_ns() < wait_until) {
        bench_sleep_s(0.005);
    }
    unsigned stuck = atomic_load(&g_active);

    struct bench_report r;
    memset(&r, 0, sizeof(r));
    bench_hist_init(&r.reserve);
    bench_hist_init(&r.settle);
    r.system = "tally";
    r.variant = "";
    r.clients = ncl;
    r.connections = nconn;
    r.keys = g_opt.hot ? 1 : g_opt.accounts;
    r.hot = g_opt.hot;
    r.warmup_s = g_opt.warmup_s;
    r.duration_s = (double)(end - start) / 1e9;
    for (unsigned i = 0; i < nconn; i++) {
        struct tally_stats st;
        tally_stats(conns[i].t, &st);
        r.retries += st.retries;
    }
    /* Closing ends any call still outstanding (callbacks run now, outside the window). */
    for (unsigned i = 0; i < nconn; i++) {
        tally_close(conns[i].t);
        conns[i].t = NULL;
    }
    for (unsigned i = 0; i < nconn; i++) {
        struct bconn *k = &conns[i];
        bench_hist_merge(&r.reserve, &k->reserve);
        bench_hist_merge(&r.settle, &k->settle);
        r.granted += k->granted;
        r.denied += k->denied;
        r.unavailable += k->unavailable;
        r.errors += k->errors;
        r.settle_errors += k->settle_errors;
        if (r.first_error[0] == '\0' && k->first_error[0] != '\0') {
            snprintf(r.first_error, sizeof(r.first_error), "%.250s", k->first_error);
        }
    }
    if (atomic_load(&g_refused) > 0) {
        r.errors += atomic_load(&g_refused);
        snprintf(r.first_error, sizeof(r.first_error), "%u reserves not queued: %s",
                 atomic_load(&g_refused), tally_strerror(atomic_load(&g_refused_rc)));
    }
    r.batch_mean = -1;
    if (b0.ok && b1.ok && b1.count > b0.count) {
        r.batch_cmds = (uint64_t)(b1.sum - b0.sum);
        r.batch_count = (uint64_t)(b1.count - b0.count);
        r.batch_mean = (b1.sum - b0.sum) / (b1.count - b0.count);
    }
    if (stuck > 0) {
        fprintf(stderr, "tally-bench: %u loops had not finished %" PRId64 " ms after the stop\n",
                stuck, g_opt.deadline_ms + 5000);
    }
    bench_report_print(&r, g_opt.json);
    free(conns);
    free(cls);
    free(g_names);
    free(g_hashes);
    return r.errors > 0 ? 1 : 0;
}
