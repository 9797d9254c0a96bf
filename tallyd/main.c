/*
 * tallyd: one tally node. This file only reads the configuration and wires the modules
 * together on one libuv loop: the replicated node (raft/), the client server (rpc/) and
 * the HTTP endpoint (rpc/metrics.h), which runs on its own thread and gets a copy of the
 * figures four times a second.
 *
 * Every flag has a TALLY_* environment equivalent (flag wins). Logs are logfmt lines on
 * stderr. SIGTERM or SIGINT stops the node cleanly: the client port closes, libraft
 * closes (its log is durable), the ledger closes, exit status 0. SIGHUP reloads the
 * token file; a file that cannot be used is logged and the old credentials stay.
 *
 * Process-wide policy lives here, not in the libraries: a node that cannot go on, and a
 * SIGBUS from the ledger's memory map (a full disk), both end the process with exit 74.
 * Built twice: tallyd, and tallyd-faults with the fault-injection flags the chaos runner
 * uses (TALLY_FAULT_INJECTION).
 */
#include "raft/node.h"
#include "rpc/metrics.h"
#include "rpc/server.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <assert.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define METRICS_PERIOD_MS 250
#define LEDGER_COUNT_PERIOD_MS 5000

struct options {
    uint64_t id;
    const char *data_dir;
    const char *peer_listen;
    const char *client_listen;
    const char *http_listen;
    const char *members; /* "ID=PEER/CLIENT,..." */
    const char *token_file;
    const char *tls_cert, *tls_key, *tls_client_ca;
    const char *peer_cert, *peer_key, *peer_ca;
    bool peer_insecure;
    const char *clock_offset_file; /* fault injection: a file holding a signed ms offset */
    const char *lose_answers_file; /* fault injection: answers are lost while it exists */
    bool join;
    bool allow_unknown_boot_id;
    uint64_t election_timeout_ms, heartbeat_ms, snapshot_threshold, snapshot_trailing;
    uint64_t max_frame, max_inflight, max_connections, hello_timeout_ms;
    uint64_t idle_timeout_ms, max_connections_per_address;
    uint64_t max_ledger_bytes, storage_reserve_bytes;
};

static uv_loop_t *loop;
static struct node *node;
static struct rpc_server *server;
static struct rpc_http *http;
static uv_signal_t sigterm, sigint, sighup;
static const char *token_file;
static uv_timer_t metrics_timer;
static uint64_t open_reservations, accounts;
static uint64_t ticks;
#if TALLY_FAULT_INJECTION
static const char *clock_offset_file;
static const char *lose_answers_file;

/* Fault injection: apply the offset in clock_offset_file (missing or bad: 0). */
static void read_clock_offset(void)
{
    long long offset = 0;
    FILE *f = fopen(clock_offset_file, "r");
    if (f != NULL) {
        if (fscanf(f, "%lld", &offset) != 1) {
            offset = 0;
        }
        fclose(f);
    }
    node_set_clock_offset(node, (int64_t)offset);
}
#endif
static bool stopping;

__attribute__((format(printf, 2, 3))) static void logf_line(const char *level, const char *fmt, ...)
{
    struct timespec ts;
    struct tm tm;
    char when[32], line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "ts=%s.%03ldZ level=%s component=tallyd %s\n", when, ts.tv_nsec / 1000000,
            level, line);
}

/* The client server's log lines (rpc_log_fn). */
static void log_rpc(const char *level, const char *line)
{
    logf_line(level, "%s", line);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tallyd --id N --data-dir DIR --peer-listen HOST:PORT --client-listen HOST:PORT\n"
            "              --members ID=PEER/CLIENT,... --token-file FILE [options]\n"
            "\n"
            "  --id N                    this node's id (> 0)                      TALLY_ID\n"
            "  --data-dir DIR            Raft log and ledger (created if missing)  TALLY_DATA_DIR\n"
            "  --peer-listen ADDR        Raft traffic, IPv4 host:port              TALLY_PEER_LISTEN\n"
            "  --client-listen ADDR      client protocol, IPv4 host:port           TALLY_CLIENT_LISTEN\n"
            "  --http-listen ADDR        /healthz /readyz /metrics (optional)      TALLY_HTTP_LISTEN\n"
            "  --members LIST            the initial cluster: ID=PEER/CLIENT,...    TALLY_MEMBERS\n"
            "                            (every node gets the same list; a new data dir of a\n"
            "                            listed node bootstraps it)\n"
            "  --join                    do not bootstrap: wait to be added        TALLY_JOIN=1\n"
            "  --allow-unknown-boot-id   start without the machine's boot id: the  TALLY_ALLOW_UNKNOWN_BOOT_ID=1\n"
            "                            ledger is rebuilt after every unclean stop\n"
            "  --token-file FILE         lines \"ROLE NAME SHA256HEX\" or             TALLY_TOKEN_FILE\n"
            "                            \"ROLE NAME cert:SHA256HEX\" (reread on SIGHUP)\n"
            "  --election-timeout-ms N   default 1000                              TALLY_ELECTION_TIMEOUT_MS\n"
            "  --heartbeat-ms N          default 100                               TALLY_HEARTBEAT_MS\n"
            "  --snapshot-threshold N    entries between snapshots, default 8192   TALLY_SNAPSHOT_THRESHOLD\n"
            "  --snapshot-trailing N     entries kept after one, default 1024      TALLY_SNAPSHOT_TRAILING\n"
            "  --max-ledger-bytes N      the ledger map's maximum, 4 MiB .. 16 TiB  TALLY_MAX_LEDGER_BYTES\n"
            "                            default 68719476736 (64 GiB)\n"
            "  --storage-reserve-bytes N writes are refused (UNAVAILABLE storage)  TALLY_STORAGE_RESERVE_BYTES\n"
            "                            when the map or the disk has less room left;\n"
            "                            1 MiB .. max / 2, default 256 MiB or max / 8\n"
            "  --max-frame BYTES         largest request frame, default 1048576    TALLY_MAX_FRAME\n"
            "  --max-inflight N          per connection, default 4096              TALLY_MAX_INFLIGHT\n"
            "  --max-connections N       default 4096                              TALLY_MAX_CONNECTIONS\n"
            "  --hello-timeout-ms N      TLS handshake + HELLO, default 5000       TALLY_HELLO_TIMEOUT_MS\n"
            "  --idle-timeout-ms N       close idle clients, default 300000        TALLY_IDLE_TIMEOUT_MS\n"
            "  --max-connections-per-address N                  TALLY_MAX_CONNECTIONS_PER_ADDRESS\n"
            "                            from one address, default max-connections / 16 (256)\n"
            "  --tls-cert F --tls-key F  TLS on the client port (PEM)              TALLY_TLS_CERT, _KEY\n"
            "  --tls-client-ca F         accept client certificates it signed and  TALLY_TLS_CLIENT_CA\n"
            "                            the token file lists as cert:SHA256HEX\n"
            "  --peer-cert F             this member's certificate (PEM)           TALLY_PEER_CERT\n"
            "                            with the SAN URI tally://member/ID: mutual TLS to peers\n"
            "  --peer-key F              its key (PEM)                             TALLY_PEER_KEY\n"
            "  --peer-ca F               the CA that signs every member            TALLY_PEER_CA\n"
            "  --peer-insecure           plaintext peer links: anyone who          TALLY_PEER_INSECURE=1\n"
            "                            reaches the peer port can write the ledger\n"
#if TALLY_FAULT_INJECTION
            "  --debug-clock-offset-file F  fault injection: F holds a signed ms offset added\n"
            "                            to this node's wall clock, not its monotonic one\n"
            "                            (re-read 4 times a second)\n"
            "  --debug-lose-answers-file F  fault injection: while F exists, committed writes\n"
            "                            are answered internal (looked for 4 times a second)\n"
#endif
        "  --help\n");
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (s == NULL || *s == '\0' || !isdigit((unsigned char)*s)) {
        return false;
    }
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0') {
        return false;
    }
    *out = v;
    return true;
}

enum {
    OPT_ID = 1000, OPT_DATA_DIR, OPT_PEER, OPT_CLIENT, OPT_HTTP, OPT_MEMBERS, OPT_JOIN,
    OPT_TOKENS, OPT_ELECTION, OPT_HEARTBEAT, OPT_SNAP_THRESHOLD, OPT_SNAP_TRAILING,
    OPT_MAX_FRAME, OPT_MAX_INFLIGHT, OPT_MAX_CONNS, OPT_HELLO_TIMEOUT, OPT_IDLE_TIMEOUT,
    OPT_MAX_CONNS_ADDR, OPT_TLS_CERT, OPT_TLS_KEY, OPT_TLS_CA, OPT_PEER_CERT, OPT_PEER_KEY,
    OPT_PEER_CA, OPT_PEER_INSECURE, OPT_CLOCK_OFFSET_FILE,
    OPT_LOSE_ANSWERS_FILE, OPT_ALLOW_UNKNOWN_BOOT_ID, OPT_MAX_LEDGER_BYTES, OPT_STORAGE_RESERVE,
    OPT_HELP,
};

struct flag {
    const char *name;
    const char *env;
    int opt;
    bool numeric;
};

static const struct flag flags[] = {
    {"id", "TALLY_ID", OPT_ID, true},
    {"data-dir", "TALLY_DATA_DIR", OPT_DATA_DIR, false},
    {"peer-listen", "TALLY_PEER_LISTEN", OPT_PEER, false},
    {"client-listen", "TALLY_CLIENT_LISTEN", OPT_CLIENT, false},
    {"http-listen", "TALLY_HTTP_LISTEN", OPT_HTTP, false},
    {"members", "TALLY_MEMBERS", OPT_MEMBERS, false},
    {"join", "TALLY_JOIN", OPT_JOIN, false},
    {"allow-unknown-boot-id", "TALLY_ALLOW_UNKNOWN_BOOT_ID", OPT_ALLOW_UNKNOWN_BOOT_ID, false},
    {"token-file", "TALLY_TOKEN_FILE", OPT_TOKENS, false},
    {"election-timeout-ms", "TALLY_ELECTION_TIMEOUT_MS", OPT_ELECTION, true},
    {"heartbeat-ms", "TALLY_HEARTBEAT_MS", OPT_HEARTBEAT, true},
    {"snapshot-threshold", "TALLY_SNAPSHOT_THRESHOLD", OPT_SNAP_THRESHOLD, true},
    {"snapshot-trailing", "TALLY_SNAPSHOT_TRAILING", OPT_SNAP_TRAILING, true},
    {"max-ledger-bytes", "TALLY_MAX_LEDGER_BYTES", OPT_MAX_LEDGER_BYTES, true},
    {"storage-reserve-bytes", "TALLY_STORAGE_RESERVE_BYTES", OPT_STORAGE_RESERVE, true},
    {"max-frame", "TALLY_MAX_FRAME", OPT_MAX_FRAME, true},
    {"max-inflight", "TALLY_MAX_INFLIGHT", OPT_MAX_INFLIGHT, true},
    {"max-connections", "TALLY_MAX_CONNECTIONS", OPT_MAX_CONNS, true},
    {"hello-timeout-ms", "TALLY_HELLO_TIMEOUT_MS", OPT_HELLO_TIMEOUT, true},
    {"idle-timeout-ms", "TALLY_IDLE_TIMEOUT_MS", OPT_IDLE_TIMEOUT, true},
    {"max-connections-per-address", "TALLY_MAX_CONNECTIONS_PER_ADDRESS", OPT_MAX_CONNS_ADDR,
     true},
    {"tls-cert", "TALLY_TLS_CERT", OPT_TLS_CERT, false},
    {"tls-key", "TALLY_TLS_KEY", OPT_TLS_KEY, false},
    {"tls-client-ca", "TALLY_TLS_CLIENT_CA", OPT_TLS_CA, false},
    {"peer-cert", "TALLY_PEER_CERT", OPT_PEER_CERT, false},
    {"peer-key", "TALLY_PEER_KEY", OPT_PEER_KEY, false},
    {"peer-ca", "TALLY_PEER_CA", OPT_PEER_CA, false},
    {"peer-insecure", "TALLY_PEER_INSECURE", OPT_PEER_INSECURE, false},
#if TALLY_FAULT_INJECTION
    {"debug-clock-offset-file", "TALLY_DEBUG_CLOCK_OFFSET_FILE", OPT_CLOCK_OFFSET_FILE, false},
    {"debug-lose-answers-file", "TALLY_DEBUG_LOSE_ANSWERS_FILE", OPT_LOSE_ANSWERS_FILE, false},
#endif
};

/* Store one flag's value; false (with a message) if it is not valid. */
static bool set_option(struct options *o, int opt, const char *value, const char *source)
{
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        if (flags[i].opt == opt && flags[i].numeric && !parse_u64(value, &v)) {
            fprintf(stderr, "tallyd: %s: \"%s\" is not a number\n", source, value);
            return false;
        }
    }
    switch (opt) {
    case OPT_ID: o->id = v; break;
    case OPT_DATA_DIR: o->data_dir = value; break;
    case OPT_PEER: o->peer_listen = value; break;
    case OPT_CLIENT: o->client_listen = value; break;
    case OPT_HTTP: o->http_listen = value; break;
    case OPT_MEMBERS: o->members = value; break;
    case OPT_JOIN: o->join = value == NULL || strcmp(value, "0") != 0; break;
    case OPT_ALLOW_UNKNOWN_BOOT_ID:
        o->allow_unknown_boot_id = value == NULL || strcmp(value, "0") != 0;
        break;
    case OPT_TOKENS: o->token_file = value; break;
    case OPT_ELECTION: o->election_timeout_ms = v; break;
    case OPT_HEARTBEAT: o->heartbeat_ms = v; break;
    case OPT_SNAP_THRESHOLD: o->snapshot_threshold = v; break;
    case OPT_SNAP_TRAILING: o->snapshot_trailing = v; break;
    case OPT_MAX_LEDGER_BYTES: o->max_ledger_bytes = v; break;
    case OPT_STORAGE_RESERVE: o->storage_reserve_bytes = v; break;
    case OPT_MAX_FRAME: o->max_frame = v; break;
    case OPT_MAX_INFLIGHT: o->max_inflight = v; break;
    case OPT_MAX_CONNS: o->max_connections = v; break;
    case OPT_HELLO_TIMEOUT: o->hello_timeout_ms = v; break;
    case OPT_IDLE_TIMEOUT: o->idle_timeout_ms = v; break;
    case OPT_MAX_CONNS_ADDR: o->max_connections_per_address = v; break;
    case OPT_TLS_CERT: o->tls_cert = value; break;
    case OPT_TLS_KEY: o->tls_key = value; break;
    case OPT_TLS_CA: o->tls_client_ca = value; break;
    case OPT_PEER_CERT: o->peer_cert = value; break;
    case OPT_PEER_KEY: o->peer_key = value; break;
    case OPT_PEER_CA: o->peer_ca = value; break;
    case OPT_PEER_INSECURE: o->peer_insecure = value == NULL || strcmp(value, "0") != 0; break;
    case OPT_CLOCK_OFFSET_FILE: o->clock_offset_file = value; break;
    case OPT_LOSE_ANSWERS_FILE: o->lose_answers_file = value; break;
    default: return false;
    }
    return true;
}

/* Environment first, then flags (which win). Returns 0, 1 for --help, -1 on error. */
static int parse_options(int argc, char **argv, struct options *o)
{
    struct option longopts[sizeof(flags) / sizeof(flags[0]) + 2];
    size_t n = 0;
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        const char *env = getenv(flags[i].env);
        if (env != NULL && !set_option(o, flags[i].opt, env, flags[i].env)) {
            return -1;
        }
        bool flag_only = flags[i].opt == OPT_JOIN || flags[i].opt == OPT_ALLOW_UNKNOWN_BOOT_ID ||
                         flags[i].opt == OPT_PEER_INSECURE;
        longopts[n++] = (struct option){flags[i].name, flag_only ? no_argument : required_argument,
                                        NULL, flags[i].opt};
    }
    longopts[n++] = (struct option){"help", no_argument, NULL, OPT_HELP};
    longopts[n] = (struct option){NULL, 0, NULL, 0};
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (opt == OPT_HELP) {
            return 1;
        }
        if (opt == '?' || !set_option(o, opt, optarg, "flag")) {
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tallyd: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
    return 0;
}

/* Parse "ID=PEER/CLIENT,..." into node members (peer) and rpc members (both). */
static int parse_members(const char *list, struct node_config *cfg, struct rpc_member *rm,
                         unsigned *n_rm)
{
    char buf[2048];
    if (strlen(list) >= sizeof(buf)) {
        fprintf(stderr, "tallyd: --members is too long\n");
        return -1;
    }
    snprintf(buf, sizeof(buf), "%s", list);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        char *slash = eq != NULL ? strchr(eq, '/') : NULL;
        uint64_t id;
        if (eq == NULL || slash == NULL) {
            fprintf(stderr, "tallyd: member \"%s\" is not ID=PEER/CLIENT\n", item);
            return -1;
        }
        *eq = '\0';
        *slash = '\0';
        if (!parse_u64(item, &id) || id == 0 || strlen(eq + 1) >= NODE_ADDRESS_MAX ||
            strlen(slash + 1) > RPC_ADDRESS_MAX || eq[1] == '\0' || slash[1] == '\0') {
            fprintf(stderr, "tallyd: member %s: bad id or address\n", item);
            return -1;
        }
        if (cfg->n_members == NODE_MEMBERS_MAX || *n_rm == RPC_MEMBERS_MAX) {
            fprintf(stderr, "tallyd: at most %d members\n", NODE_MEMBERS_MAX);
            return -1;
        }
        for (unsigned i = 0; i < cfg->n_members; i++) {
            if (cfg->members[i].id == id) {
                fprintf(stderr, "tallyd: member id %" PRIu64 " is listed twice\n", id);
                return -1;
            }
        }
        struct node_member *m = &cfg->members[cfg->n_members++];
        m->id = id;
        snprintf(m->address, sizeof(m->address), "%s", eq + 1);
        struct rpc_member *r = &rm[(*n_rm)++];
        memset(r, 0, sizeof(*r));
        r->id = id;
        snprintf(r->peer_address, sizeof(r->peer_address), "%s", eq + 1);
        snprintf(r->client_address, sizeof(r->client_address), "%s", slash + 1);
    }
    return 0;
}

static bool require(const char *value, const char *flag)
{
    if (value == NULL || value[0] == '\0') {
        fprintf(stderr, "tallyd: %s is required (see --help)\n", flag);
        return false;
    }
    return true;
}

/* --max-ledger-bytes, or its default. */
static uint64_t max_ledger_bytes_of(const struct options *o)
{
    return o->max_ledger_bytes != 0 ? o->max_ledger_bytes : NODE_LEDGER_BYTES_DEFAULT;
}

/* The client port's and the storage limits are within their ranges (0: the default); false
 * with a line saying which is not. */
static bool limits_valid(const struct options *o)
{
    uint64_t max_conns = o->max_connections != 0 ? o->max_connections : 4096;
    if (o->hello_timeout_ms != 0 && (o->hello_timeout_ms < 100 || o->hello_timeout_ms > 600000)) {
        fprintf(stderr, "tallyd: --hello-timeout-ms must be 100 .. 600000\n");
        return false;
    }
    if (o->idle_timeout_ms != 0 && (o->idle_timeout_ms < 1000 || o->idle_timeout_ms > 86400000)) {
        fprintf(stderr, "tallyd: --idle-timeout-ms must be 1000 .. 86400000\n");
        return false;
    }
    uint64_t max_ledger = max_ledger_bytes_of(o);
    if (max_ledger < NODE_LEDGER_BYTES_MIN || max_ledger > NODE_LEDGER_BYTES_MAX) {
        fprintf(stderr, "tallyd: --max-ledger-bytes must be %" PRIu64 " .. %" PRIu64 "\n",
                NODE_LEDGER_BYTES_MIN, NODE_LEDGER_BYTES_MAX);
        return false;
    }
    if (o->storage_reserve_bytes != 0 && (o->storage_reserve_bytes < NODE_RESERVE_BYTES_MIN ||
                                          o->storage_reserve_bytes > max_ledger / 2)) {
        fprintf(stderr,
                "tallyd: --storage-reserve-bytes must be %" PRIu64 " .. %" PRIu64
                " (half of --max-ledger-bytes)\n",
                NODE_RESERVE_BYTES_MIN, max_ledger / 2);
        return false;
    }
    if (o->max_connections_per_address > max_conns) {
        fprintf(stderr, "tallyd: --max-connections-per-address must be 1 .. --max-connections\n");
        return false;
    }
    return true;
}

/* ---- Metrics. ---- */

/* Open reservations: each holds on every account of its chain, one root among them, so
 * the roots' inflight counts sum to the open reservations. */
static int sum_root_inflight(void *ctx, const struct ledger_account_info *info)
{
    *(uint64_t *)ctx += info->inflight;
    return 0;
}

static void metrics_tick(uv_timer_t *h)
{
    (void)h;
#if TALLY_FAULT_INJECTION
    if (clock_offset_file != NULL && !stopping) {
        read_clock_offset();
    }
    if (lose_answers_file != NULL && !stopping) {
        node_set_lose_answers(node, access(lose_answers_file, F_OK) == 0);
    }
#endif
    if (http == NULL || stopping) {
        return;
    }
    if (ticks++ % (LEDGER_COUNT_PERIOD_MS / METRICS_PERIOD_MS) == 0) {
        struct ledger *l = node_ledger(node);
        struct ledger_counts counts;
        uint64_t open = 0;
        if (ledger_counts(l, &counts) == 0) {
            accounts = counts.accounts;
        }
        if (ledger_account_list(l, NULL, sum_root_inflight, &open) == 0) {
            open_reservations = open;
        }
    }
    struct rpc_metrics m;
    struct node_stats ns;
    rpc_server_metrics(server, &m);
    node_stats(node, &ns);
    m.clock_offset_ms = ns.clock_offset_ms;
    m.clock_steps = ns.clock_steps;
    m.accounts = accounts;
    m.open_reservations = open_reservations;
    rpc_http_publish(http, &m);
}

/* ---- Shutdown. ---- */

static void node_closed(void *data)
{
    (void)data;
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
    uv_close((uv_handle_t *)&sighup, NULL);
    logf_line("info", "msg=\"stopped\"");
}

static void server_closed(void *data)
{
    (void)data;
    node_close(node, node_closed, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    if (stopping) {
        return;
    }
    stopping = true;
    logf_line("info", "msg=\"stopping\" signal=%d", signum);
    uv_timer_stop(&metrics_timer);
    uv_close((uv_handle_t *)&metrics_timer, NULL);
    if (http != NULL) {
        rpc_http_stop(http);
        http = NULL;
    }
    rpc_server_close(server, server_closed, NULL);
}

/* ---- Token reload. ---- */

/* SIGHUP: read the token file again. A file that does not parse, or has no entries (a
 * file caught half written, most likely), is logged and changes nothing. */
static void on_sighup(uv_signal_t *h, int signum)
{
    (void)h, (void)signum;
    struct rpc_token *tokens = NULL;
    size_t n = 0;
    unsigned closed = 0;
    char errmsg[512];
    if (stopping) {
        return;
    }
    if (rpc_token_file_load(token_file, &tokens, &n, errmsg, sizeof(errmsg)) != 0) {
        logf_line("error", "msg=\"token reload failed: the old tokens stay\" reason=\"%s\"",
                  errmsg);
        return;
    }
    if (n == 0) {
        logf_line("error",
                  "msg=\"token reload failed: the old tokens stay\" reason=\"%s has "
                  "no tokens\"",
                  token_file);
    } else if (rpc_server_set_tokens(server, tokens, n, &closed) != 0) {
        logf_line("error", "msg=\"token reload failed: the old tokens stay\" reason=\"out of "
                           "memory\"");
    } else {
        logf_line("info", "msg=\"tokens reloaded\" file=\"%s\" tokens=%zu closed=%u", token_file, n,
                  closed);
    }
    free(tokens);
}

/* ---- Start. ---- */

/* Peer links are mutual TLS (all three files) or, said explicitly, plaintext; false (with
 * a message) otherwise. Plaintext warns at every start: anyone who reaches the peer port
 * can rewrite the ledger. */
static bool peer_links_chosen(const struct options *o)
{
    bool any = o->peer_cert != NULL || o->peer_key != NULL || o->peer_ca != NULL;
    bool all = o->peer_cert != NULL && o->peer_key != NULL && o->peer_ca != NULL;
    if (any && o->peer_insecure) {
        fprintf(stderr, "tallyd: --peer-insecure and --peer-cert/--peer-key/--peer-ca exclude "
                        "each other\n");
        return false;
    }
    if (any && !all) {
        fprintf(stderr, "tallyd: peer TLS needs --peer-cert, --peer-key and --peer-ca\n");
        return false;
    }
    if (!any && !o->peer_insecure) {
        fprintf(stderr, "tallyd: peer links need --peer-cert, --peer-key and --peer-ca (mutual "
                        "TLS), or --peer-insecure for plaintext\n");
        return false;
    }
    if (o->peer_insecure) {
        logf_line("warn",
                  "msg=\"peer links are plaintext (--peer-insecure): anyone who reaches "
                  "the peer port can write the ledger\" peer=%s",
                  o->peer_listen);
    }
    return true;
}

static int start(const struct options *o)
{
    struct node_config cfg;
    struct rpc_member rmembers[RPC_MEMBERS_MAX];
    unsigned n_rmembers = 0;
    char errmsg[512];
    node_config_init(&cfg);
    if (!require(o->data_dir, "--data-dir") || !require(o->peer_listen, "--peer-listen") ||
        !require(o->client_listen, "--client-listen") || !require(o->members, "--members") ||
        !require(o->token_file, "--token-file")) {
        return 3;
    }
    if (o->id == 0) {
        fprintf(stderr, "tallyd: --id is required and must be > 0\n");
        return 3;
    }
    if ((o->tls_cert == NULL) != (o->tls_key == NULL) ||
        (o->tls_client_ca != NULL && o->tls_cert == NULL)) {
        fprintf(stderr, "tallyd: TLS needs both --tls-cert and --tls-key (and --tls-client-ca "
                        "only with them)\n");
        return 3;
    }
    if (!peer_links_chosen(o)) {
        return 3;
    }
    if (!limits_valid(o)) {
        return 3;
    }
    if (parse_members(o->members, &cfg, rmembers, &n_rmembers) != 0) {
        return 3;
    }
    cfg.id = o->id;
    cfg.dir = o->data_dir;
    cfg.address = o->peer_listen;
    cfg.on_fatal = node_exit_fatal; /* a node that cannot go on stops the process: exit 74 */
    cfg.bootstrap = !o->join;
    cfg.allow_unknown_boot_id = o->allow_unknown_boot_id;
    cfg.peer_cert_file = o->peer_cert;
    cfg.peer_key_file = o->peer_key;
    cfg.peer_ca_file = o->peer_ca;
    cfg.peer_insecure = o->peer_insecure;
    cfg.max_ledger_bytes = max_ledger_bytes_of(o);
    cfg.storage_reserve_bytes = o->storage_reserve_bytes;
    if (o->election_timeout_ms != 0) {
        cfg.election_timeout_ms = (unsigned)o->election_timeout_ms;
    }
    if (o->heartbeat_ms != 0) {
        cfg.heartbeat_ms = (unsigned)o->heartbeat_ms;
    }
    if (o->snapshot_threshold != 0) {
        cfg.snapshot_threshold = (unsigned)o->snapshot_threshold;
    }
    if (o->snapshot_trailing != 0) {
        cfg.snapshot_trailing = (unsigned)o->snapshot_trailing;
    }
    bool listed = false;
    for (unsigned i = 0; i < cfg.n_members; i++) {
        listed |= cfg.members[i].id == o->id;
    }
    if (!listed && !o->join) {
        fprintf(stderr,
                "tallyd: node %" PRIu64 " is not in --members; use --join to start a "
                "node that will be added later\n",
                o->id);
        return 3;
    }

    struct rpc_token *tokens = NULL;
    size_t n_tokens = 0;
    if (rpc_token_file_load(o->token_file, &tokens, &n_tokens, errmsg, sizeof(errmsg)) != 0) {
        fprintf(stderr, "tallyd: token file: %s\n", errmsg);
        return 3;
    }
    if (n_tokens == 0) {
        logf_line("warn",
                  "msg=\"token file has no tokens: every client will be refused\" "
                  "file=\"%s\"",
                  o->token_file);
    }

    loop = uv_default_loop();
    int rv = node_open(&node, loop, &cfg, errmsg);
    if (rv != 0) {
        logf_line("error", "msg=\"cannot open node\" reason=\"%s\"", errmsg);
        free(tokens);
        return rv == -NODE_EINVAL ? 3 : 1; /* EINVAL: the configuration (a peer certificate) */
    }
    if (node_start(node) != 0) {
        logf_line("error", "msg=\"cannot start node\" reason=\"%s\"", node_errmsg(node));
        node_close(node, NULL, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        free(tokens);
        return 1;
    }
    struct rpc_server_config scfg = {
        .address = o->client_listen,
        .tokens = tokens,
        .n_tokens = n_tokens,
        .log = log_rpc,
        .members = rmembers,
        .n_members = n_rmembers,
        .tls_cert_file = o->tls_cert,
        .tls_key_file = o->tls_key,
        .tls_client_ca_file = o->tls_client_ca,
        .max_frame = o->max_frame,
        .max_inflight = (unsigned)o->max_inflight,
        .max_connections = (unsigned)o->max_connections,
        .hello_timeout_ms = (unsigned)o->hello_timeout_ms,
        .idle_timeout_ms = (unsigned)o->idle_timeout_ms,
        .max_connections_per_address = (unsigned)o->max_connections_per_address,
    };
    rv = rpc_server_start(&server, loop, node, &scfg, errmsg, sizeof(errmsg));
    free(tokens);
    if (rv != 0) {
        logf_line("error", "msg=\"cannot start client server\" reason=\"%s\"", errmsg);
        node_close(node, NULL, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        return 1;
    }
    if (o->http_listen != NULL && o->http_listen[0] != '\0' &&
        rpc_http_start(&http, o->http_listen, errmsg, sizeof(errmsg)) != 0) {
        logf_line("error", "msg=\"cannot start http endpoint\" reason=\"%s\"", errmsg);
        rpc_server_close(server, server_closed, NULL);
        stopping = true;
        uv_run(loop, UV_RUN_DEFAULT);
        return 1;
    }
    uv_signal_init(loop, &sigterm);
    uv_signal_init(loop, &sigint);
    uv_signal_init(loop, &sighup);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_start(&sigint, on_signal, SIGINT);
    token_file = o->token_file;
    uv_signal_start(&sighup, on_sighup, SIGHUP);
#if TALLY_FAULT_INJECTION
    clock_offset_file = o->clock_offset_file;
    lose_answers_file = o->lose_answers_file;
#endif
    uv_timer_init(loop, &metrics_timer);
    uv_timer_start(&metrics_timer, metrics_tick, 0, METRICS_PERIOD_MS);
    logf_line("info",
              "msg=\"serving\" id=%" PRIu64 " peer=%s peer_tls=%s client=%s tls=%s http=%s "
              "members=%u tokens=%zu",
              o->id, o->peer_listen, o->peer_insecure ? "off" : "on", o->client_listen,
              o->tls_cert != NULL ? "on" : "off", o->http_listen != NULL ? o->http_listen : "off",
              cfg.n_members, n_tokens);
    uv_run(loop, UV_RUN_DEFAULT);
    rv = uv_loop_close(loop);
    if (rv != 0) {
        logf_line("warn", "msg=\"loop closed with handles open\" reason=\"%s\"", uv_strerror(rv));
    }
    return 0;
}

/* A full disk under the ledger's memory map is SIGBUS: stop like any storage error. */
static void trap_storage_faults(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = node_exit_on_storage_fault;
    sigemptyset(&sa.sa_mask);
    int rv = sigaction(SIGBUS, &sa, NULL);
    assert(rv == 0);
    (void)rv;
}

int main(int argc, char **argv)
{
    struct options o = {0};
    signal(SIGPIPE, SIG_IGN);
    trap_storage_faults();
    int rv = parse_options(argc, argv, &o);
    if (rv != 0) {
        usage(rv > 0 ? stdout : stderr);
        return rv > 0 ? 0 : 3;
    }
    return start(&o);
}
