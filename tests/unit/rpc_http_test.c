/*
 * rpc_http_test.c: the node's HTTP endpoint (rpc/metrics.h).
 *
 * The first half checks rendering as a pure function: exact sample lines for a filled
 * struct, cumulative histogram buckets with +Inf equal to the count, and a small
 * checker of the text exposition format (every sample belongs to a family announced by
 * # HELP and # TYPE, label syntax, values that parse). The second half starts the real
 * server on 127.0.0.1:0 and talks HTTP/1.1 to it over a plain socket, so what is tested
 * is what a Prometheus scraper or a Kubernetes probe sees.
 */
#include "test.h"

#include "rpc/metrics.h"
#include "wire/wire.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/time.h>

#define RENDER_MAX (64 * 1024)
#define REPLY_MAX (64 * 1024)

/* A struct with every figure set to something distinct. */
static struct rpc_metrics filled(void)
{
    struct rpc_metrics m;
    memset(&m, 0, sizeof(m));
    m.node_id = 2;
    m.term = 7;
    m.raft_state = 3; /* RAFT_LEADER */
    m.leader_id = 2;
    m.commit_index = 1234;
    m.applied_index = 1234;
    m.serving = true;
    for (int op = 1; op < RPC_OP_MAX; op++) {
        m.requests[op] = (uint64_t)op * 100;
    }
    m.writes_ok = 900;
    m.writes_denied = 40;
    m.writes_failed = 3;
    for (int r = 1; r < LEDGER_DENY_MAX; r++) {
        m.denials[r] = (uint64_t)r;
    }
    m.not_leader = 11;
    m.unavailable = 12;
    m.overruns = 5;
    m.overrun_micros = 123456;
    m.connections_open = 4;
    m.connections_total = 99;
    m.auth_failures = 6;
    m.protocol_errors = 1;
    double sizes[] = {1, 3, 3, 100, 40000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        rpc_histogram_observe(&m.batch_size, rpc_batch_size_bounds, sizes[i]);
    }
    rpc_histogram_observe(&m.commit_latency_s, rpc_commit_latency_bounds_s, 0.00003);
    rpc_histogram_observe(&m.commit_latency_s, rpc_commit_latency_bounds_s, 0.002);
    rpc_histogram_observe(&m.commit_latency_s, rpc_commit_latency_bounds_s, 5.0);
    m.open_reservations = 17;
    m.accounts = 42;
    m.clock_offset_ms = -3456000000; /* a wall clock 40 days behind ledger time */
    m.clock_steps = 2;
    return m;
}

static char rendered[RENDER_MAX];

static const char *render(const struct rpc_metrics *m)
{
    size_t n = rpc_metrics_render(m, rendered, sizeof(rendered));
    REQUIRE(n < sizeof(rendered));
    CHECK_EQ_INT(strlen(rendered), n);
    return rendered;
}

/* Whether `text` has `line` as one whole line. */
static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n') {
            return true;
        }
    }
    return false;
}

#define CHECK_LINE(text, line)                                                                     \
    do {                                                                                           \
        if (!has_line((text), (line))) {                                                           \
            fprintf(stderr, "  %s:%d: missing line: %s\n", __FILE__, __LINE__, (line));            \
            test_failures_in_current++;                                                            \
        }                                                                                          \
    } while (0)

/* ---- Histograms. ---- */

static void histogram_counts_a_value_in_the_first_bucket_at_or_above_it(void)
{
    struct rpc_histogram h;
    memset(&h, 0, sizeof(h));
    rpc_histogram_observe(&h, rpc_batch_size_bounds, 2);     /* exactly a bound: le="2" */
    rpc_histogram_observe(&h, rpc_batch_size_bounds, 2.5);   /* le="4" */
    rpc_histogram_observe(&h, rpc_batch_size_bounds, 0);     /* below the first: le="1" */
    rpc_histogram_observe(&h, rpc_batch_size_bounds, 32768); /* the last bound */
    rpc_histogram_observe(&h, rpc_batch_size_bounds, 1e9);   /* past it: only +Inf */
    CHECK_EQ_INT(h.bucket[0], 1);
    CHECK_EQ_INT(h.bucket[1], 1);
    CHECK_EQ_INT(h.bucket[2], 1);
    CHECK_EQ_INT(h.bucket[RPC_HIST_BUCKETS - 1], 1);
    CHECK_EQ_INT(h.count, 5);
    CHECK(h.sum == 2 + 2.5 + 0 + 32768 + 1e9);
}

static void histogram_bounds_double_from_their_first(void)
{
    CHECK(rpc_batch_size_bounds[0] == 1);
    CHECK(rpc_commit_latency_bounds_s[0] == 50e-6);
    for (int i = 1; i < RPC_HIST_BUCKETS; i++) {
        CHECK(rpc_batch_size_bounds[i] == 2 * rpc_batch_size_bounds[i - 1]);
        CHECK(rpc_commit_latency_bounds_s[i] == 2 * rpc_commit_latency_bounds_s[i - 1]);
    }
    CHECK(rpc_batch_size_bounds[RPC_HIST_BUCKETS - 1] == 32768);
}

/* ---- Rendering. ---- */

static void render_before_publish_has_only_the_up_gauge(void)
{
    const char *t = render(NULL);
    CHECK_EQ_STR(t, "# HELP tally_up 1 while the tally node process runs.\n"
                    "# TYPE tally_up gauge\n"
                    "tally_up 1\n");
}

static void render_shows_raft_and_counter_lines_exactly(void)
{
    struct rpc_metrics m = filled();
    const char *t = render(&m);
    CHECK_LINE(t, "tally_up 1");
    CHECK_LINE(t, "# TYPE tally_raft_term gauge");
    CHECK_LINE(t, "tally_raft_term 7");
    CHECK_LINE(t, "tally_raft_leader_id 2");
    CHECK_LINE(t, "tally_raft_commit_index 1234");
    CHECK_LINE(t, "tally_raft_applied_index 1234");
    CHECK_LINE(t, "tally_serving 1");
    CHECK_LINE(t, "# TYPE tally_writes_total counter");
    CHECK_LINE(t, "tally_writes_total{result=\"ok\"} 900");
    CHECK_LINE(t, "tally_writes_total{result=\"denied\"} 40");
    CHECK_LINE(t, "tally_writes_total{result=\"failed\"} 3");
    CHECK_LINE(t, "tally_not_leader_total 11");
    CHECK_LINE(t, "tally_unavailable_total 12");
    CHECK_LINE(t, "tally_overruns_total 5");
    CHECK_LINE(t, "tally_overrun_micros_total 123456");
    CHECK_LINE(t, "tally_connections_open 4");
    CHECK_LINE(t, "tally_connections_total 99");
    CHECK_LINE(t, "tally_auth_failures_total 6");
    CHECK_LINE(t, "tally_protocol_errors_total 1");
    CHECK_LINE(t, "tally_open_reservations 17");
    CHECK_LINE(t, "tally_accounts 42");
    CHECK_LINE(t, "# TYPE tally_clock_offset_ms gauge");
    CHECK_LINE(t, "tally_clock_offset_ms -3456000000");
    CHECK_LINE(t, "# TYPE tally_clock_steps_total counter");
    CHECK_LINE(t, "tally_clock_steps_total 2");
}

static int check_exposition(const char *text);

static void render_shows_peer_progress_only_with_peers(void)
{
    struct rpc_metrics m = filled();
    m.last_index = 1240;
    m.n_peers = 2;
    m.peers[0] = (struct rpc_peer_progress){.id = 1, .match_index = 1240};
    m.peers[1] = (struct rpc_peer_progress){.id = 3, .match_index = 1000};
    const char *t = render(&m);
    CHECK_LINE(t, "# TYPE tally_raft_peer_match_index gauge");
    CHECK_LINE(t, "tally_raft_peer_match_index{peer=\"1\"} 1240");
    CHECK_LINE(t, "tally_raft_peer_match_index{peer=\"3\"} 1000");
    CHECK_LINE(t, "# TYPE tally_raft_peer_lag_entries gauge");
    CHECK_LINE(t, "tally_raft_peer_lag_entries{peer=\"1\"} 0");
    CHECK_LINE(t, "tally_raft_peer_lag_entries{peer=\"3\"} 240");
    CHECK_EQ_INT(check_exposition(t), 0);
    /* A count over the bound shows the bound's worth of peers, never reads past it. */
    m.n_peers = RPC_METRICS_PEERS_MAX + 5;
    for (unsigned i = 0; i < RPC_METRICS_PEERS_MAX; i++) {
        m.peers[i] = (struct rpc_peer_progress){.id = i + 1, .match_index = 1240};
    }
    t = render(&m);
    int lines = 0;
    for (const char *p = strstr(t, "\ntally_raft_peer_lag_entries{"); p != NULL;
         p = strstr(p + 1, "\ntally_raft_peer_lag_entries{")) {
        lines++;
    }
    CHECK_EQ_INT(lines, RPC_METRICS_PEERS_MAX);
    m.n_peers = 0; /* a follower: no family at all */
    t = render(&m);
    CHECK(strstr(t, "tally_raft_peer_") == NULL);
}

static void render_marks_exactly_one_raft_role(void)
{
    struct rpc_metrics m = filled();
    const char *t = render(&m);
    CHECK_LINE(t, "# TYPE tally_raft_state gauge");
    CHECK_LINE(t, "tally_raft_state{role=\"leader\"} 1");
    CHECK_LINE(t, "tally_raft_state{role=\"follower\"} 0");
    CHECK_LINE(t, "tally_raft_state{role=\"candidate\"} 0");
    CHECK_LINE(t, "tally_raft_state{role=\"unknown\"} 0");
    m.raft_state = 99; /* out of range reads as unknown, never as no line at all */
    t = render(&m);
    CHECK_LINE(t, "tally_raft_state{role=\"unknown\"} 1");
    CHECK_LINE(t, "tally_raft_state{role=\"leader\"} 0");
}

static void render_names_every_op_and_deny_reason(void)
{
    struct rpc_metrics m = filled();
    const char *t = render(&m);
    char line[256];
    for (int op = 1; op < RPC_OP_MAX; op++) {
        snprintf(line, sizeof(line), "tally_requests_total{op=\"%s\"} %d", rpc_op_name(op),
                 op * 100);
        CHECK_LINE(t, line);
    }
    for (int r = 1; r < LEDGER_DENY_MAX; r++) {
        snprintf(line, sizeof(line), "tally_denials_total{reason=\"%s\"} %d",
                 ledger_deny_reason_name(r), r);
        CHECK_LINE(t, line);
    }
    /* Slot 0 of each array is not an op / not a reason and is never shown. */
    CHECK(strstr(t, "tally_denials_total{reason=\"none\"}") == NULL);
}

static void render_makes_buckets_cumulative_and_inf_equal_to_count(void)
{
    struct rpc_metrics m = filled(); /* batch sizes 1, 3, 3, 100, 40000 */
    const char *t = render(&m);
    CHECK_LINE(t, "# TYPE tally_batch_size histogram");
    CHECK_LINE(t, "tally_batch_size_bucket{le=\"1\"} 1");
    CHECK_LINE(t, "tally_batch_size_bucket{le=\"2\"} 1");
    CHECK_LINE(t, "tally_batch_size_bucket{le=\"4\"} 3");
    CHECK_LINE(t, "tally_batch_size_bucket{le=\"64\"} 3");
    CHECK_LINE(t, "tally_batch_size_bucket{le=\"128\"} 4");
    CHECK_LINE(t, "tally_batch_size_bucket{le=\"32768\"} 4");
    CHECK_LINE(t, "tally_batch_size_bucket{le=\"+Inf\"} 5");
    CHECK_LINE(t, "tally_batch_size_sum 40107");
    CHECK_LINE(t, "tally_batch_size_count 5");
    /* Latencies 30 us, 2 ms, 5 s: bounds print in their short form. */
    CHECK_LINE(t, "# TYPE tally_commit_latency_seconds histogram");
    CHECK_LINE(t, "tally_commit_latency_seconds_bucket{le=\"5e-05\"} 1");
    CHECK_LINE(t, "tally_commit_latency_seconds_bucket{le=\"0.0016\"} 1");
    CHECK_LINE(t, "tally_commit_latency_seconds_bucket{le=\"0.0032\"} 2");
    CHECK_LINE(t, "tally_commit_latency_seconds_bucket{le=\"1.6384\"} 2");
    CHECK_LINE(t, "tally_commit_latency_seconds_bucket{le=\"+Inf\"} 3");
    double sum = 0;
    const char *line = strstr(t, "\ntally_commit_latency_seconds_sum ");
    REQUIRE(line != NULL && sscanf(line, "\ntally_commit_latency_seconds_sum %lf", &sum) == 1);
    CHECK(sum == 0.00003 + 0.002 + 5.0); /* printed so that it reads back exactly */
    CHECK_LINE(t, "tally_commit_latency_seconds_count 3");
}

static void render_into_a_short_buffer_reports_full_length_and_stays_terminated(void)
{
    struct rpc_metrics m = filled();
    size_t full = rpc_metrics_render(&m, NULL, 0);
    const char *t = render(&m);
    CHECK_EQ_INT(full, strlen(t));
    char small[100];
    memset(small, 'x', sizeof(small));
    CHECK_EQ_INT(rpc_metrics_render(&m, small, sizeof(small)), full);
    CHECK_EQ_INT(strlen(small), sizeof(small) - 1);
    CHECK(memcmp(small, t, sizeof(small) - 1) == 0);
    char one[1] = {'x'};
    CHECK_EQ_INT(rpc_metrics_render(&m, one, 1), full);
    CHECK_EQ_INT(one[0], '\0');
}

/* ---- A checker of the text exposition format (0.0.4), enough for our output. ---- */

#define FAMILIES_MAX 64

struct family {
    char name[96];
    char type[16];
    bool help, sampled, closed;
};

static struct family families[FAMILIES_MAX];
static int nfamilies;
static bool checker_quiet; /* while testing the checker on bad input */

static struct family *family_find(const char *name)
{
    for (int i = 0; i < nfamilies; i++) {
        if (strcmp(families[i].name, name) == 0) {
            return &families[i];
        }
    }
    return NULL;
}

/* Copy the metric or label name at *p into out (size n); false if there is none. */
static bool scan_name(const char **p, char *out, size_t n)
{
    size_t len = 0;
    const char *s = *p;
    if (!(isalpha((unsigned char)*s) || *s == '_' || *s == ':')) {
        return false;
    }
    while (isalnum((unsigned char)s[len]) || s[len] == '_' || s[len] == ':') {
        len++;
    }
    if (len >= n) {
        return false;
    }
    memcpy(out, s, len);
    out[len] = '\0';
    *p = s + len;
    return true;
}

/* "# HELP name text" or "# TYPE name type": records the family. */
static bool check_comment(const char *line)
{
    bool help = strncmp(line, "# HELP ", 7) == 0;
    if (!help && strncmp(line, "# TYPE ", 7) != 0) {
        return false;
    }
    const char *p = line + 7;
    char name[96];
    if (!scan_name(&p, name, sizeof(name)) || *p != ' ' || p[1] == '\0') {
        return false;
    }
    struct family *f = family_find(name);
    if (f == NULL) {
        REQUIRE(nfamilies < FAMILIES_MAX);
        f = &families[nfamilies++];
        snprintf(f->name, sizeof(f->name), "%s", name);
    }
    if (f->sampled) {
        return false; /* HELP and TYPE come before the family's samples */
    }
    if (help) {
        bool again = f->help;
        f->help = true;
        return !again;
    }
    if (f->type[0] != '\0') {
        return false;
    }
    snprintf(f->type, sizeof(f->type), "%s", p + 1);
    return strcmp(f->type, "counter") == 0 || strcmp(f->type, "gauge") == 0 ||
           strcmp(f->type, "histogram") == 0;
}

/* The family a sample name belongs to (histogram suffixes stripped), or NULL. */
static struct family *family_of_sample(const char *name, bool *is_bucket)
{
    *is_bucket = false;
    struct family *f = family_find(name);
    if (f != NULL) {
        return strcmp(f->type, "histogram") == 0 ? NULL : f;
    }
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(name), k = strlen(suffixes[i]);
        if (n > k && strcmp(name + n - k, suffixes[i]) == 0) {
            char base[96];
            snprintf(base, sizeof(base), "%.*s", (int)(n - k), name);
            f = family_find(base);
            *is_bucket = i == 0;
            return f != NULL && strcmp(f->type, "histogram") == 0 ? f : NULL;
        }
    }
    return NULL;
}

/* {name="value",...}: advances *p; sets *has_le if an `le` label was seen. */
static bool check_labels(const char **p, bool *has_le)
{
    const char *s = *p;
    *has_le = false;
    if (*s != '{') {
        return true;
    }
    s++;
    for (;;) {
        char label[64];
        if (!scan_name(&s, label, sizeof(label)) || s[0] != '=' || s[1] != '"') {
            return false;
        }
        *has_le |= strcmp(label, "le") == 0;
        for (s += 2; *s != '"'; s++) {
            if (*s == '\0' || (*s == '\\' && strchr("\\\"n", s[1]) == NULL)) {
                return false;
            }
            s += *s == '\\';
        }
        s++;
        if (*s == '}') {
            *p = s + 1;
            return true;
        }
        if (*s++ != ',') {
            return false;
        }
    }
}

static struct family *last_sampled;

static bool check_sample(const char *line)
{
    const char *p = line;
    char name[96];
    bool is_bucket, has_le;
    if (!scan_name(&p, name, sizeof(name))) {
        return false;
    }
    struct family *f = family_of_sample(name, &is_bucket);
    if (f == NULL || !f->help || f->closed || !check_labels(&p, &has_le) || *p++ != ' ') {
        return false;
    }
    if (strcmp(f->type, "counter") == 0 && strstr(f->name, "_total") == NULL) {
        return false;
    }
    if (is_bucket != has_le) {
        return false;
    }
    /* Samples of one family are contiguous. */
    if (last_sampled != NULL && last_sampled != f) {
        last_sampled->closed = true;
    }
    last_sampled = f;
    f->sampled = true;
    if (strcmp(p, "+Inf") == 0 || strcmp(p, "-Inf") == 0 || strcmp(p, "NaN") == 0) {
        return true;
    }
    char *end;
    errno = 0;
    strtod(p, &end);
    return *p != '\0' && *end == '\0' && errno == 0;
}

/* Returns the number of the first bad line (1-based), or 0 if all are well formed. */
static int check_exposition(const char *text)
{
    memset(families, 0, sizeof(families));
    nfamilies = 0;
    last_sampled = NULL;
    int lineno = 0;
    const char *p = text;
    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        lineno++;
        if (nl == NULL) {
            return lineno; /* the last line must end with \n too */
        }
        char line[512];
        if ((size_t)(nl - p) >= sizeof(line)) {
            return lineno;
        }
        snprintf(line, sizeof(line), "%.*s", (int)(nl - p), p);
        bool ok = line[0] == '#' ? check_comment(line) : check_sample(line);
        if (!ok) {
            if (!checker_quiet) {
                fprintf(stderr, "  bad exposition line %d: %s\n", lineno, line);
            }
            return lineno;
        }
        p = nl + 1;
    }
    for (int i = 0; i < nfamilies; i++) {
        if (families[i].type[0] == '\0' || !families[i].sampled) {
            fprintf(stderr, "  family without TYPE or samples: %s\n", families[i].name);
            return lineno + 1;
        }
    }
    return 0;
}

static void render_output_is_well_formed_exposition(void)
{
    struct rpc_metrics m = filled();
    CHECK_EQ_INT(check_exposition(render(&m)), 0);
    CHECK_EQ_INT(check_exposition(render(NULL)), 0);
    memset(&m, 0, sizeof(m));
    CHECK_EQ_INT(check_exposition(render(&m)), 0);
    /* Every family the brief names is there. */
    static const char *const names[] = {
        "tally_up",
        "tally_raft_term",
        "tally_raft_state",
        "tally_raft_leader_id",
        "tally_raft_commit_index",
        "tally_raft_applied_index",
        "tally_serving",
        "tally_requests_total",
        "tally_writes_total",
        "tally_denials_total",
        "tally_not_leader_total",
        "tally_unavailable_total",
        "tally_overruns_total",
        "tally_overrun_micros_total",
        "tally_connections_open",
        "tally_connections_total",
        "tally_auth_failures_total",
        "tally_protocol_errors_total",
        "tally_batch_size",
        "tally_commit_latency_seconds",
        "tally_open_reservations",
        "tally_accounts",
        "tally_clock_offset_ms",
        "tally_clock_steps_total",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (family_find(names[i]) == NULL) {
            fprintf(stderr, "  missing family %s\n", names[i]);
            test_failures_in_current++;
        }
    }
}

static void exposition_checker_rejects_malformed_text(void)
{
    /* The checker itself must be able to fail, or the test above shows nothing. */
    checker_quiet = true;
    CHECK(check_exposition("tally_up 1\n") != 0);                                 /* no HELP/TYPE */
    CHECK(check_exposition("# HELP a x\n# TYPE a gauge\na 1") != 0);              /* no final \n */
    CHECK(check_exposition("# HELP a x\n# TYPE a gauge\na{l=\"v} 1\n") != 0);     /* open quote */
    CHECK(check_exposition("# HELP a x\n# TYPE a counter\na 1\n") != 0);          /* not _total */
    CHECK(check_exposition("# HELP a x\n# TYPE a gauge\na one\n") != 0);          /* bad value */
    CHECK(check_exposition("# HELP h x\n# TYPE h histogram\nh_bucket 1\n") != 0); /* no le */
    CHECK(check_exposition("# HELP a x\n# TYPE a gauge\na 1\n") == 0);
    checker_quiet = false;
}

/* ---- The server, over a real socket. ---- */

static struct rpc_http *server;

/* A thread that publishes while requests run (last test); joined before the server
 * stops, also when a REQUIRE ends the test early. */
static _Atomic int publisher_stop;
static pthread_t publisher_thread;
static bool publisher_running;

static void stop_server(void)
{
    if (publisher_running) {
        publisher_stop = 1;
        pthread_join(publisher_thread, NULL);
        publisher_running = false;
    }
    rpc_http_stop(server);
    server = NULL;
}

static int start_server(void)
{
    char err[256] = "";
    int rv = rpc_http_start(&server, "127.0.0.1:0", err, sizeof(err));
    if (rv != 0) {
        fprintf(stderr, "  start: %s\n", err);
    }
    REQUIRE(rv == 0 && server != NULL);
    int port = rpc_http_port(server);
    REQUIRE(port > 0 && port < 65536);
    return port;
}

struct reply {
    int status;
    char head[4096]; /* status line and headers */
    char body[REPLY_MAX];
    size_t body_len;
};

static struct reply reply;

/* Send `request` (raw HTTP/1.1 text) to 127.0.0.1:port and read until the server
 * closes; fill `reply`. Every request says "Connection: close". */
static void http_raw(int port, const char *request)
{
    memset(&reply, 0, sizeof(reply));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        send(fd, request, strlen(request), MSG_NOSIGNAL) != (ssize_t)strlen(request)) {
        close(fd);
        REQUIRE(!"connect/send");
    }
    static char raw[REPLY_MAX + 4096];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof(raw) - 1 && (n = recv(fd, raw + len, sizeof(raw) - 1 - len, 0)) > 0) {
        len += (size_t)n;
    }
    close(fd);
    raw[len] = '\0';
    char *end = strstr(raw, "\r\n\r\n");
    REQUIRE(end != NULL);
    size_t head_len = (size_t)(end - raw);
    REQUIRE(head_len < sizeof(reply.head));
    memcpy(reply.head, raw, head_len);
    reply.body_len = len - head_len - 4;
    REQUIRE(reply.body_len < sizeof(reply.body));
    memcpy(reply.body, end + 4, reply.body_len);
    REQUIRE(sscanf(raw, "HTTP/1.1 %d ", &reply.status) == 1);
}

static void http_get(int port, const char *path)
{
    char req[256];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n", path);
    http_raw(port, req);
}

/* Whether the reply has the header line `name: value` (case-insensitively). */
static bool has_header(const char *name, const char *value)
{
    char want[256], head[sizeof(reply.head) + 2];
    snprintf(want, sizeof(want), "\r\n%s: %s\r\n", name, value);
    snprintf(head, sizeof(head), "%s\r\n", reply.head);
    return strcasestr(head, want) != NULL;
}

static void http_port_zero_gets_a_real_port(void)
{
    int port = start_server();
    CHECK(port != 0);
    stop_server();
}

static void http_healthz_answers_ok(void)
{
    int port = start_server();
    http_get(port, "/healthz");
    CHECK_EQ_INT(reply.status, 200);
    CHECK_EQ_STR(reply.body, "ok\n");
    stop_server();
}

static void http_readyz_is_503_starting_before_publish(void)
{
    int port = start_server();
    http_get(port, "/readyz");
    CHECK_EQ_INT(reply.status, 503);
    CHECK_EQ_STR(reply.body, "starting\n");
    stop_server();
}

static void http_readyz_is_200_when_leader_known_and_caught_up(void)
{
    int port = start_server();
    struct rpc_metrics m = filled();
    rpc_http_publish(server, &m);
    http_get(port, "/readyz");
    CHECK_EQ_INT(reply.status, 200);
    CHECK_EQ_STR(reply.body, "ready\n");
    m.raft_state = 1; /* a caught-up follower is ready too */
    m.leader_id = 3;
    rpc_http_publish(server, &m);
    http_get(port, "/readyz");
    CHECK_EQ_INT(reply.status, 200);
    stop_server();
}

static void http_readyz_is_503_while_applying(void)
{
    int port = start_server();
    struct rpc_metrics m = filled();
    m.commit_index = 50;
    m.applied_index = 40;
    rpc_http_publish(server, &m);
    http_get(port, "/readyz");
    CHECK_EQ_INT(reply.status, 503);
    CHECK_EQ_STR(reply.body, "applying: applied 40 of commit 50\n");
    m.applied_index = 50; /* the next publish catches up */
    rpc_http_publish(server, &m);
    http_get(port, "/readyz");
    CHECK_EQ_INT(reply.status, 200);
    stop_server();
}

static void http_readyz_is_503_without_leader(void)
{
    int port = start_server();
    struct rpc_metrics m = filled();
    m.leader_id = 0;
    m.raft_state = 2;
    rpc_http_publish(server, &m);
    http_get(port, "/readyz");
    CHECK_EQ_INT(reply.status, 503);
    CHECK_EQ_STR(reply.body, "no leader known\n");
    stop_server();
}

static void http_metrics_serves_text_format_0_0_4(void)
{
    int port = start_server();
    http_get(port, "/metrics");
    CHECK_EQ_INT(reply.status, 200);
    CHECK(has_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8"));
    CHECK_EQ_STR(reply.body, render(NULL)); /* before publish: only tally_up */
    struct rpc_metrics m = filled();
    rpc_http_publish(server, &m);
    http_get(port, "/metrics");
    CHECK_EQ_INT(reply.status, 200);
    CHECK_EQ_INT(reply.body_len, strlen(render(&m)));
    CHECK_EQ_STR(reply.body, render(&m));
    CHECK_EQ_INT(check_exposition(reply.body), 0);
    http_get(port, "/metrics?name[]=tally_up"); /* a query string is not part of the path */
    CHECK_EQ_INT(reply.status, 200);
    stop_server();
}

static void http_unknown_path_is_404(void)
{
    int port = start_server();
    http_get(port, "/nope");
    CHECK_EQ_INT(reply.status, 404);
    http_get(port, "/metrics/");
    CHECK_EQ_INT(reply.status, 404);
    http_get(port, "/");
    CHECK_EQ_INT(reply.status, 404);
    stop_server();
}

static void http_post_is_405_with_allow_header(void)
{
    int port = start_server();
    http_raw(port, "POST /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
                   "Connection: close\r\n\r\nhello");
    CHECK_EQ_INT(reply.status, 405);
    CHECK(has_header("Allow", "GET, HEAD"));
    http_raw(port, "DELETE /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    CHECK_EQ_INT(reply.status, 405);
    stop_server();
}

static void http_head_has_headers_but_no_body(void)
{
    int port = start_server();
    http_raw(port, "HEAD /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    CHECK_EQ_INT(reply.status, 200);
    CHECK_EQ_INT(reply.body_len, 0);
    CHECK(has_header("Content-Length", "3"));
    stop_server();
}

static void http_keeps_the_connection_alive_between_requests(void)
{
    int port = start_server();
    /* Two pipelined requests on one connection: both are answered, in order. */
    http_raw(port, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
                   "GET /readyz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    CHECK_EQ_INT(reply.status, 200);
    CHECK(!has_header("Connection", "close"));
    CHECK(strncmp(reply.body, "ok\nHTTP/1.1 503 ", strlen("ok\nHTTP/1.1 503 ")) == 0);
    CHECK(strstr(reply.body, "\r\n\r\nstarting\n") != NULL);
    stop_server();
}

static void http_get_with_a_body_is_answered_and_the_body_ignored(void)
{
    int port = start_server();
    http_raw(port, "GET /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
                   "Connection: close\r\n\r\nhello");
    CHECK_EQ_INT(reply.status, 200);
    CHECK_EQ_STR(reply.body, "ok\n");
    stop_server();
}

static void http_bad_addresses_fail_with_a_message(void)
{
    static const char *const bad[][2] = {
        {"127.0.0.1:99999", "port out of range"},
        {"127.0.0.1", "expected host:port"},
        {"127.0.0.1:", "missing port"},
        {"127.0.0.1:80x", "bad port"},
        {"127.0.0.1:-1", "bad port"},
        {"256.0.0.1:80", "not an IPv4 address"},
        {"localhost:80", "not an IPv4 address"},
        {"[::1]:80", "not an IPv4 address"},
        {":80", "bad host"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "";
        struct rpc_http *h = (struct rpc_http *)&err; /* must be reset to NULL */
        CHECK_EQ_INT(rpc_http_start(&h, bad[i][0], err, sizeof(err)), -RPC_START_ECONFIG);
        CHECK(h == NULL);
        char want[128];
        snprintf(want, sizeof(want), "http: cannot listen on %s: ", bad[i][0]);
        CHECK(strncmp(err, want, strlen(want)) == 0);
        if (strstr(err, bad[i][1]) == NULL) {
            fprintf(stderr, "  %s: message \"%s\" lacks \"%s\"\n", bad[i][0], err, bad[i][1]);
            test_failures_in_current++;
        }
    }
}

static void http_port_in_use_fails_with_the_reason(void)
{
    int port = start_server();
    char address[64], err[256] = "";
    snprintf(address, sizeof(address), "127.0.0.1:%d", port);
    struct rpc_http *h = NULL;
    CHECK_EQ_INT(rpc_http_start(&h, address, err, sizeof(err)), -RPC_START_ELISTEN);
    CHECK(h == NULL);
    char want[128];
    snprintf(want, sizeof(want), "http: cannot listen on %s: ", address);
    CHECK(strncmp(err, want, strlen(want)) == 0);
    if (strstr(err, strerror(EADDRINUSE)) == NULL) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", err, strerror(EADDRINUSE));
        test_failures_in_current++;
    }
    /* The first server is unharmed. */
    http_get(port, "/healthz");
    CHECK_EQ_INT(reply.status, 200);
    stop_server();
}

static void http_stop_of_null_does_nothing(void)
{
    rpc_http_stop(NULL);
}

/* Publishes a changing figure as fast as it can until told to stop. */

static void *publisher(void *arg)
{
    (void)arg;
    struct rpc_metrics m = filled();
    for (uint64_t i = 0; !publisher_stop && i < 10000000; i++) {
        m.term = i;
        m.commit_index = m.applied_index = i;
        rpc_http_publish(server, &m);
    }
    return NULL;
}

static void http_serves_whole_copies_while_another_thread_publishes(void)
{
    int port = start_server();
    struct rpc_metrics first = filled();
    first.term = first.commit_index = first.applied_index = 0;
    rpc_http_publish(server, &first); /* so no request comes before the first publish */
    publisher_stop = 0;
    REQUIRE(pthread_create(&publisher_thread, NULL, publisher, NULL) == 0);
    publisher_running = true;
    for (int i = 0; i < 20; i++) {
        http_get(port, "/metrics");
        CHECK_EQ_INT(reply.status, 200);
        CHECK_EQ_INT(check_exposition(reply.body), 0);
        /* One copy per request: term, commit and applied came from one publish. */
        uint64_t term = 0, commit = 1, applied = 2;
        const char *p = strstr(reply.body, "\ntally_raft_term ");
        const char *q = strstr(reply.body, "\ntally_raft_commit_index ");
        const char *r = strstr(reply.body, "\ntally_raft_applied_index ");
        if (p != NULL && q != NULL && r != NULL) {
            sscanf(p, "\ntally_raft_term %" SCNu64, &term);
            sscanf(q, "\ntally_raft_commit_index %" SCNu64, &commit);
            sscanf(r, "\ntally_raft_applied_index %" SCNu64, &applied);
        }
        CHECK(term == commit && commit == applied);
        http_get(port, "/readyz");
        CHECK_EQ_INT(reply.status, 200);
    }
    stop_server();
}

int main(void)
{
    TEST_MAIN_BEGIN;
    test_end_hook = stop_server;
    TEST(histogram_counts_a_value_in_the_first_bucket_at_or_above_it);
    TEST(histogram_bounds_double_from_their_first);
    TEST(render_before_publish_has_only_the_up_gauge);
    TEST(render_shows_raft_and_counter_lines_exactly);
    TEST(render_marks_exactly_one_raft_role);
    TEST(render_shows_peer_progress_only_with_peers);
    TEST(render_names_every_op_and_deny_reason);
    TEST(render_makes_buckets_cumulative_and_inf_equal_to_count);
    TEST(render_into_a_short_buffer_reports_full_length_and_stays_terminated);
    TEST(render_output_is_well_formed_exposition);
    TEST(exposition_checker_rejects_malformed_text);
    TEST(http_port_zero_gets_a_real_port);
    TEST(http_healthz_answers_ok);
    TEST(http_readyz_is_503_starting_before_publish);
    TEST(http_readyz_is_200_when_leader_known_and_caught_up);
    TEST(http_readyz_is_503_while_applying);
    TEST(http_readyz_is_503_without_leader);
    TEST(http_metrics_serves_text_format_0_0_4);
    TEST(http_unknown_path_is_404);
    TEST(http_post_is_405_with_allow_header);
    TEST(http_head_has_headers_but_no_body);
    TEST(http_keeps_the_connection_alive_between_requests);
    TEST(http_get_with_a_body_is_answered_and_the_body_ignored);
    TEST(http_bad_addresses_fail_with_a_message);
    TEST(http_port_in_use_fails_with_the_reason);
    TEST(http_stop_of_null_does_nothing);
    TEST(http_serves_whole_copies_while_another_thread_publishes);
    TEST_MAIN_END;
}
