/*
 * runner.c: tally-chaos, the Jepsen-style run against three real tallyd processes.
 *
 *   tally-chaos --cluster FILE --duration SECONDS [--seed N] [--workers N] [--rate N] [--smoke]
 *               [--nemeses all|KIND,...] [--faults SCRIPT]
 *
 * FILE is written by chaos/run.sh, which made the network namespaces, the bridge, the
 * veth pairs and the tmpfs data dirs and removes them again whatever happens; this
 * program touches only what that file names. The main thread owns the tallyd processes
 * (cluster.c: they die with it, PR_SET_PDEATHSIG) and is the nemesis (nemesis.c): it
 * injects one fault at a time, drawn from shuffled rounds of every kind so each kind
 * comes up equally often, holds it for a random time and heals it. Worker threads
 * (workload.c) play gateways the whole time. At the end the runner heals everything,
 * waits for the replicas to converge, writes the final state of every node to final.txt,
 * replays a sample of ids, and stops the nodes. It judges nothing: tally-chaos-check does
 * (check.c).
 *
 * This file holds the options, the accounts' setup, the main sequence and the final
 * state; nemesis.c lists the faults.
 */
#define _GNU_SOURCE
#include "chaos.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

volatile sig_atomic_t runner_interrupted;
uint64_t runner_rng;

/* ---- Setup. ---- */

static int setup_accounts(void)
{
    for (int i = 0; i < ch_n_accounts; i++) {
        const struct ch_account *a = &ch_accounts[i];
        struct tally_limits lim = {0};
        if (a->budget_micros >= 0) {
            lim.set |= TALLY_LIM_BUDGET;
            lim.budget_micros = a->budget_micros;
        }
        if (a->max_parallel >= 0) {
            lim.set |= TALLY_LIM_PARALLEL;
            lim.max_parallel = (uint64_t)a->max_parallel;
        }
        if (a->rpm >= 0) {
            lim.set |= TALLY_LIM_RPM;
            lim.rpm = (uint64_t)a->rpm;
            lim.rpm_burst = (uint64_t)a->rpm_burst;
        }
        if (a->release) {
            lim.set |= TALLY_LIM_EXPIRY_POLICY;
            lim.expiry_policy = TALLY_EXPIRY_RELEASE;
        }
        uint8_t rid[TALLY_REQUEST_ID_SIZE];
        tally_request_id_new(rid);
        int rv = -TALLY_EUNAVAILABLE;
        for (int attempt = 0; attempt < 10 && rv == -TALLY_EUNAVAILABLE; attempt++) {
            struct tally_result res;
            rv = tally_account_create(cluster_ctl, a->name, a->parent, &lim, rid, 5000, &res);
            if (rv != 0) {
                ch_log("create %s: %s (%s)", a->name, tally_strerror(rv), res.message);
            }
        }
        if (rv != 0) {
            return -1;
        }
        if (a->by_key) {
            char secret[64];
            ch_key_secret(i, secret, sizeof(secret));
            tally_request_id_new(rid);
            rv = -TALLY_EUNAVAILABLE;
            for (int attempt = 0; attempt < 10 && rv == -TALLY_EUNAVAILABLE; attempt++) {
                struct tally_result res;
                rv = tally_key_add(cluster_ctl, a->name, secret, NULL, rid, 5000, &res);
            }
            if (rv != 0) {
                ch_log("key add %s: %s", a->name, tally_strerror(rv));
                return -1;
            }
        }
        ch_hist("acct %s %s %lld %lld %lld %lld %s", a->name, a->parent ? a->parent : "-",
                (long long)a->budget_micros, (long long)a->max_parallel, (long long)a->rpm,
                (long long)a->rpm_burst, a->release ? "release" : "charge");
    }
    return 0;
}
/* ---- The end: convergence and the final state. ---- */

static const char *const resv_states[] = {"open", "settled", "voided", "expired", "late"};

struct reader_job {
    int node;
    size_t from, to;
    char (*lines)[200];
};

static void *reader_main(void *arg)
{
    struct reader_job *j = arg;
    struct ch_node *n = &ch.nodes[j->node];
    struct tally *c = ch_client(n->endpoint, ch.reader_token, 5000);
    const struct wl_reserve *resv;
    size_t n_resv;
    wl_reserves(&resv, &n_resv);
    for (size_t k = j->from; k < j->to; k++) {
        char hex[33];
        ch_id_hex(resv[k].id, hex);
        struct tally_reservation r;
        struct tally_result res;
        int rv = c != NULL ? -TALLY_EUNAVAILABLE : -TALLY_EINTERNAL;
        for (int attempt = 0; c != NULL && attempt < 3; attempt++) {
            rv = tally_reservation_get(c, resv[k].id, TALLY_READ_STALE, 5000, &r, &res);
            if (rv != -TALLY_EUNAVAILABLE) {
                break;
            }
        }
        if (rv == 0) {
            snprintf(j->lines[k - j->from], 200, "R %d %s %s %s %lld %lld %lld %lld", n->id, hex,
                     r.state < 5 ? resv_states[r.state] : "unknown", r.account,
                     (long long)r.estimate_micros, (long long)r.created_ms,
                     (long long)r.expires_at_ms, (long long)r.charged_micros);
        } else {
            snprintf(j->lines[k - j->from], 200, "R %d %s %s", n->id, hex,
                     rv == -TALLY_ENOTFOUND ? "notfound" : "error");
        }
    }
    tally_close(c);
    return NULL;
}

/* Every reserve id's record on every node, two reader threads per node. */
static void write_records(FILE *out)
{
    const struct wl_reserve *resv;
    size_t n_resv;
    wl_reserves(&resv, &n_resv);
    enum { PER_NODE = 2 };
    struct reader_job jobs[CH_NODES * PER_NODE];
    pthread_t th[CH_NODES * PER_NODE];
    for (int i = 0; i < CH_NODES * PER_NODE; i++) {
        size_t part = (n_resv + PER_NODE - 1) / PER_NODE;
        jobs[i].node = i / PER_NODE;
        jobs[i].from = (size_t)(i % PER_NODE) * part;
        jobs[i].to = jobs[i].from + part < n_resv ? jobs[i].from + part : n_resv;
        if (jobs[i].from > jobs[i].to) {
            jobs[i].from = jobs[i].to;
        }
        jobs[i].lines = calloc(jobs[i].to - jobs[i].from + 1, 200);
        pthread_create(&th[i], NULL, reader_main, &jobs[i]);
    }
    for (int i = 0; i < CH_NODES * PER_NODE; i++) {
        pthread_join(th[i], NULL);
        for (size_t k = 0; k < jobs[i].to - jobs[i].from; k++) {
            fprintf(out, "%s\n", jobs[i].lines[k]);
        }
        free(jobs[i].lines);
    }
}

static const char *journal_kind(int kind)
{
    switch (kind) {
    case TALLY_J_CHARGE:
        return "charge";
    case TALLY_J_RELEASE:
        return "release";
    case TALLY_J_EXPIRE_CHARGE:
        return "expire-charge";
    case TALLY_J_EXPIRE_RELEASE:
        return "expire-release";
    case TALLY_J_CORRECTION:
        return "correction";
    case TALLY_J_SOFT_BUDGET:
        return "soft-budget";
    case TALLY_J_ADMIN:
        return "admin";
    default:
        return "unknown";
    }
}

static void write_journal(FILE *out, int node)
{
    struct tally *c = ch_client(ch.nodes[node].endpoint, ch.reader_token, 10000);
    if (c == NULL) {
        fprintf(out, "Jerror %d\n", ch.nodes[node].id);
        return;
    }
    static struct tally_journal_entry items[TALLY_LIST_MAX];
    struct tally_cursor cursor = {0};
    size_t total = 0;
    do {
        uint32_t n = 0;
        struct tally_result res;
        int rv = tally_journal_list(c, NULL, 0, INT64_MAX, &cursor, TALLY_LIST_MAX,
                                    TALLY_READ_STALE, 10000, items, &n, &cursor, &res);
        if (rv != 0) {
            fprintf(out, "Jerror %d %s\n", ch.nodes[node].id, tally_strerror(rv));
            break;
        }
        for (uint32_t k = 0; k < n; k++) {
            char hex[33];
            ch_id_hex(items[k].request_id, hex);
            fprintf(out, "J %llu %lld %s %s %s %lld %lld\n", (unsigned long long)items[k].seq,
                    (long long)items[k].ts_ms, journal_kind(items[k].kind),
                    items[k].account[0] ? items[k].account : "-", hex,
                    (long long)items[k].amount_micros, (long long)items[k].period_start_ms);
        }
        total += n;
    } while (cursor.len != 0);
    tally_close(c);
    ch_log("journal: %zu entries from node %d", total, ch.nodes[node].id);
}

/* Wait until every node reports the same applied index and state hash. */
static bool converge(int timeout_s, uint64_t *applied_out, char hash_out[65])
{
    int64_t deadline = ch_now_us() + (int64_t)timeout_s * 1000000;
    while (ch_now_us() < deadline && !runner_interrupted) {
        cluster_reap_all();
        cluster_revive_all();
        uint64_t applied[CH_NODES];
        char hex[CH_NODES][65];
        bool same = cluster_find_leader(2000) >= 0;
        for (int i = 0; i < CH_NODES && same; i++) {
            if (raw_hash(ch.nodes[i].ip, CH_CLIENT_PORT, ch.admin_token, 3000, &applied[i],
                         hex[i]) != 0 ||
                (i > 0 && (applied[i] != applied[0] || strcmp(hex[i], hex[0]) != 0))) {
                same = false;
            }
        }
        if (same) {
            *applied_out = applied[0];
            snprintf(hash_out, 65, "%s", hex[0]);
            return true;
        }
        ch_sleep_ms(250);
    }
    return false;
}

static void write_final(const char *path)
{
    FILE *out = fopen(path, "we");
    if (out == NULL) {
        ch_log("cannot write %s", path);
        return;
    }
    uint64_t applied = 0;
    char hash[65] = "-";
    bool ok = converge(90, &applied, hash);
    fprintf(out, "converged %d %llu %s\n", ok ? 1 : 0, (unsigned long long)applied, hash);
    ch_log("%s at applied index %llu, state hash %.16s", ok ? "converged" : "NOT converged",
           (unsigned long long)applied, hash);
    for (int i = 0; i < CH_NODES; i++) {
        struct ch_node *n = &ch.nodes[i];
        struct tally_node_status st;
        uint64_t app = 0;
        char hex[65] = "-";
        if (raw_hash(n->ip, CH_CLIENT_PORT, ch.admin_token, 3000, &app, hex) == 0) {
            fprintf(out, "H %d %llu %s\n", n->id, (unsigned long long)app, hex);
        } else {
            fprintf(out, "H %d 0 -\n", n->id);
        }
        if (cluster_node_status(n, &st, 2000) == 0) {
            fprintf(out, "S %d %s %llu %llu %llu %llu %u", n->id,
                    tally_raft_state_name(st.raft_state), (unsigned long long)st.leader_id,
                    (unsigned long long)st.term, (unsigned long long)st.commit_index,
                    (unsigned long long)st.applied_index, st.n_members);
            for (uint32_t k = 0; k < st.n_members; k++) {
                fprintf(out, " %llu:%s", (unsigned long long)st.members[k].id,
                        tally_member_role_name(st.members[k].role));
            }
            fprintf(out, "\n");
        } else {
            fprintf(out, "S %d down\n", n->id);
        }
        struct tally *c = ch_client(n->endpoint, ch.reader_token, 5000);
        for (int a = 0; c != NULL && a < ch_n_accounts; a++) {
            struct tally_account acc;
            struct tally_result res;
            int rv = tally_account_get(c, ch_accounts[a].name, TALLY_READ_STALE, 5000, &acc, &res);
            if (rv == 0) {
                fprintf(out, "A %d %s %lld %lld %llu %lld %lld\n", n->id, acc.name,
                        (long long)acc.spent_micros, (long long)acc.held_micros,
                        (unsigned long long)acc.inflight, (long long)acc.lifetime_spent_micros,
                        (long long)acc.overrun_micros);
            } else {
                fprintf(out, "A %d %s error\n", n->id, ch_accounts[a].name);
            }
        }
        tally_close(c);
    }
    int64_t t0 = ch_now_us();
    write_records(out);
    ch_log("records read from every node in %.1f s", (double)(ch_now_us() - t0) / 1e6);
    write_journal(out, 0);
    fclose(out);
}

/* ---- Main. ---- */

static void on_signal(int sig)
{
    (void)sig;
    runner_interrupted = 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: tally-chaos --cluster FILE --duration SECONDS [--seed N] "
                    "[--workers N] [--rate OPS_PER_WORKER_S] [--smoke] [--faults SCRIPT] "
                    "[--nemeses all|KIND,...]\n");
}

int main(int argc, char **argv)
{
    const char *cluster = NULL;
    const char *script = NULL;
    ch.duration_s = 120;
    ch.seed = (uint64_t)time(NULL);
    ch.workers = 6;
    ch.ops_per_worker_s = 50;
    static const struct option opts[] = {{"cluster", required_argument, NULL, 'c'},
                                         {"duration", required_argument, NULL, 'd'},
                                         {"seed", required_argument, NULL, 's'},
                                         {"workers", required_argument, NULL, 'w'},
                                         {"rate", required_argument, NULL, 'r'},
                                         {"smoke", no_argument, NULL, 'S'},
                                         {"faults", required_argument, NULL, 'f'},
                                         {"nemeses", required_argument, NULL, 'n'},
                                         {NULL, 0, NULL, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            cluster = optarg;
            break;
        case 'd':
            ch.duration_s = strtoll(optarg, NULL, 10);
            break;
        case 's':
            ch.seed = strtoull(optarg, NULL, 10);
            break;
        case 'w':
            ch.workers = atoi(optarg);
            break;
        case 'r':
            ch.ops_per_worker_s = atoi(optarg);
            break;
        case 'S':
            ch.smoke = true;
            break;
        case 'f':
            script = optarg;
            break;
        case 'n':
            if (nemesis_parse(optarg) != 0) {
                usage();
                return 2;
            }
            break;
        default:
            usage();
            return 2;
        }
    }
    if (cluster == NULL || ch.duration_s <= 0 || ch.workers < 1 ||
        ch.workers > CH_WORKERS_MAX - 1) {
        usage();
        return 2;
    }
    /* run.sh's trap cleans up what it made; if run.sh itself dies, so do we. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    ch_clock_start();
    if (cluster_read_file(cluster) != 0) {
        return 2;
    }
    runner_rng = ch.seed ? ch.seed : 1;
    ch.nonce = (uint32_t)(ch_rand(&runner_rng) >> 32);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/runner.log", ch.dir);
    ch_log_open(path);
    snprintf(path, sizeof(path), "%s/history.txt", ch.dir);
    if (ch_hist_open(path) != 0) {
        ch_log("cannot write %s", path);
        return 2;
    }
    ch_log("seed %llu, %lld s, %d workers, nodes %s", (unsigned long long)ch.seed,
           (long long)ch.duration_s, ch.workers, ch.endpoints);
    ch_hist("# tally chaos history v1");
    ch_hist("seed %llu", (unsigned long long)ch.seed);
    ch_hist("start_wall_ms %lld", (long long)ch_wall_ms());
    ch_hist("duration_s %lld", (long long)ch.duration_s);
    nemesis_hist_enabled();
    for (int i = 0; i < CH_NODES; i++) {
        ch_hist("node %d %s", ch.nodes[i].id, ch.nodes[i].ip);
        nemesis_clock_set(&ch.nodes[i], 0);
    }
    cluster_ctl = ch_client(ch.endpoints, ch.admin_token, 5000);
    if (cluster_ctl == NULL) {
        return 2;
    }
    if (cluster_start_all() != 0) {
        cluster_stop_all();
        return 2;
    }
    if (cluster_find_leader(30000) < 0 || setup_accounts() != 0) {
        ch_log("the cluster did not become ready");
        cluster_stop_all();
        return 2;
    }
    ch_hist_flush();
    if (wl_start() != 0) {
        cluster_stop_all();
        return 2;
    }
    ch_log("workload started; faults begin");
    cluster_hold_ms(ch.smoke ? 2000 : 5000); /* a fault-free start, as a baseline */

    if (script != NULL && nemesis_script(script) != 0) {
        runner_interrupted = 1;
    }
    int64_t end_us = script != NULL ? 0 : ch.duration_s * 1000000;
    nemesis_rounds(end_us);
    if (runner_interrupted) {
        ch_log("interrupted: stopping the nodes");
        ch_hist("N %lld interrupted", (long long)ch_now_us());
        cluster_stop_all();
        ch_hist_close();
        return 3;
    }
    ch_log("healing everything");
    nemesis_heal_all();
    ch_hist("N %lld heal-all", (long long)ch_now_us());
    cluster_hold_ms(ch.smoke ? 2000 : 5000); /* fault-free tail: the cluster must serve again */
    wl_stop();
    if (runner_interrupted) {
        ch_log("interrupted");
        cluster_stop_all();
        ch_hist_close();
        return 3;
    }
    snprintf(path, sizeof(path), "%s/final.txt", ch.dir);
    write_final(path);
    ch_hist_flush();
    wl_final_replays(ch.smoke ? 200 : 1000, ch.smoke ? 100 : 500);
    ch_hist("N %lld end", (long long)ch_now_us());
    tally_close(cluster_ctl);
    cluster_stop_all();
    ch_hist_close();
    ch_log("done");
    return 0;
}
