/*
 * tally_node.c: `tally-node`, one replicated node plus a line protocol on a loopback
 * control port, for integration tests only (no auth, no bounds beyond line length).
 *
 *   tally-node --id N --dir DIR --peer HOST:PORT --control 127.0.0.1:PORT
 *              --member ID=HOST:PORT (repeated) [--bootstrap] [--election-timeout MS]
 *              [--heartbeat MS] [--snapshot-threshold N] [--snapshot-trailing N]
 *
 * Control lines (one answer line each, in order, requests may be pipelined):
 *   create <rid> <account> <budget>   -> ok <index> <status> | notleader <id> | retry <why>
 *                                        (err if the answer is not this command's)
 *   reserve <rid> <account> <estimate> -> same
 *   resv <rid>       -> resv <state> <account> <estimate> | none
 *   account <name>   -> account <held> <spent> <inflight> | none
 *   hash             -> hash <ledger applied index> <state hash hex>
 *   leader           -> leader <leader id> <ready 0|1> <own id>
 *   stats            -> stats term=.. commit=.. ...
 *   check            -> ok | err <message>   (ledger invariants)
 *   add <id> <addr> | remove <id> | transfer <id> -> ok | err <why>
 * <rid> is a decimal 64-bit number; it becomes the low 8 bytes of the request id.
 * SIGTERM or SIGINT closes the node cleanly and exits 0.
 */
#include "raft/node.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTL_LINE_MAX 512
#define CTL_REPLY_MAX 512

struct conn;

/* One answer, written when it and every answer before it on its connection are done. */
struct reply {
    struct reply *next;
    struct conn *conn;
    bool done;
    uint8_t request_id[LEDGER_REQUEST_ID_SIZE]; /* of a proposed command */
    char text[CTL_REPLY_MAX];
};

struct conn {
    uv_tcp_t tcp;
    char in[CTL_LINE_MAX];
    size_t in_len;
    struct reply *head, *tail;
    bool closing;
    unsigned refs; /* 1 for the handle, 1 per reply not yet freed */
    struct conn *prev, *next;
};

struct write_req {
    uv_write_t req;
    char text[CTL_REPLY_MAX + 1]; /* the reply and its newline */
};

static uv_loop_t *loop;
static struct node *node;
static uv_tcp_t server;
static uv_signal_t sigterm, sigint;
static struct conn *conns;
static bool stopping;

static void conn_release(struct conn *c)
{
    if (--c->refs == 0) {
        free(c);
    }
}

static void conn_closed_cb(uv_handle_t *h)
{
    conn_release(h->data);
}

static void conn_close(struct conn *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
}

static void write_cb(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void conn_write(struct conn *c, const char *text)
{
    struct write_req *w = malloc(sizeof(*w));
    if (w == NULL) {
        conn_close(c);
        return;
    }
    snprintf(w->text, sizeof(w->text), "%s\n", text);
    uv_buf_t buf = uv_buf_init(w->text, (unsigned)strlen(w->text));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, write_cb) != 0) {
        free(w);
        conn_close(c);
    }
}

/* Write (or, on a closed connection, drop) every finished answer at the head. */
static void conn_flush(struct conn *c)
{
    while (c->head != NULL && c->head->done) {
        struct reply *r = c->head;
        c->head = r->next;
        if (c->head == NULL) {
            c->tail = NULL;
        }
        if (!c->closing) {
            conn_write(c, r->text);
        }
        free(r);
        conn_release(c);
    }
}

static void reply_done(struct reply *r)
{
    r->done = true;
    conn_flush(r->conn);
}

/* ---- Commands. ---- */

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    if (s == NULL || *s == '\0') {
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

static void request_id(uint64_t rid, uint8_t out[LEDGER_REQUEST_ID_SIZE])
{
    memset(out, 0, LEDGER_REQUEST_ID_SIZE);
    for (int i = 0; i < 8; i++) {
        out[LEDGER_REQUEST_ID_SIZE - 1 - i] = (uint8_t)(rid >> (8 * i));
    }
}

static void notleader_text(char *text, size_t size)
{
    uint64_t leader = 0;
    node_leader(node, &leader, NULL);
    snprintf(text, size, "notleader %" PRIu64, leader);
}

static void propose_cb(struct node *n, void *data, int status, uint64_t index,
                       const struct ledger_result *results, size_t n_results)
{
    (void)n;
    struct reply *r = data;
    if (status == 0 && (n_results != 1 || memcmp(results[0].request_id, r->request_id,
                                                 LEDGER_REQUEST_ID_SIZE) != 0)) {
        /* The node must hand every caller its own command's answer. */
        snprintf(r->text, sizeof(r->text), "err result of another command");
    } else if (status == 0) {
        snprintf(r->text, sizeof(r->text), "ok %" PRIu64 " %d", index, (int)results[0].status);
    } else if (status == -NODE_ENOTLEADER) {
        notleader_text(r->text, sizeof(r->text));
    } else {
        snprintf(r->text, sizeof(r->text), "retry %d", status);
    }
    reply_done(r);
}

static void propose(struct reply *r, const struct ledger_cmd *cmd)
{
    memcpy(r->request_id, cmd->request_id, LEDGER_REQUEST_ID_SIZE);
    int rv = node_propose(node, cmd, 1, propose_cb, r);
    if (rv == 0) {
        return; /* answered by propose_cb */
    }
    if (rv == -NODE_ENOTLEADER) {
        notleader_text(r->text, sizeof(r->text));
    } else {
        snprintf(r->text, sizeof(r->text), "retry %d", rv);
    }
    reply_done(r);
}

static bool account_name(struct reply *r, const char *name, char out[LEDGER_NAME_MAX + 1])
{
    if (name == NULL || strlen(name) > LEDGER_NAME_MAX) {
        snprintf(r->text, sizeof(r->text), "err bad account");
        return false;
    }
    snprintf(out, LEDGER_NAME_MAX + 1, "%s", name);
    return true;
}

static void cmd_create(struct reply *r, char **argv, int argc)
{
    struct ledger_cmd cmd;
    uint64_t rid = 0, budget = 0;
    memset(&cmd, 0, sizeof(cmd));
    if (argc != 4 || !parse_u64(argv[1], &rid) || !parse_u64(argv[3], &budget) ||
        !account_name(r, argv[2], cmd.u.create.name)) {
        snprintf(r->text, sizeof(r->text), "err usage: create <rid> <account> <budget>");
        reply_done(r);
        return;
    }
    cmd.type = LEDGER_CMD_ACCOUNT_CREATE;
    request_id(rid, cmd.request_id);
    snprintf(cmd.actor, sizeof(cmd.actor), "tally-node-test");
    cmd.u.create.limits.set = LEDGER_LIM_BUDGET;
    cmd.u.create.limits.budget_micros = (int64_t)budget;
    propose(r, &cmd);
}

static void cmd_reserve(struct reply *r, char **argv, int argc)
{
    struct ledger_cmd cmd;
    uint64_t rid = 0, estimate = 0;
    memset(&cmd, 0, sizeof(cmd));
    if (argc != 4 || !parse_u64(argv[1], &rid) || !parse_u64(argv[3], &estimate) ||
        !account_name(r, argv[2], cmd.u.reserve.account)) {
        snprintf(r->text, sizeof(r->text), "err usage: reserve <rid> <account> <estimate>");
        reply_done(r);
        return;
    }
    cmd.type = LEDGER_CMD_RESERVE;
    request_id(rid, cmd.request_id);
    snprintf(cmd.actor, sizeof(cmd.actor), "tally-node-test");
    cmd.u.reserve.by_account = 1;
    cmd.u.reserve.estimate_micros = (int64_t)estimate;
    cmd.u.reserve.estimate_tokens = 1;
    cmd.u.reserve.ttl_ms = 3600 * 1000;
    propose(r, &cmd);
}

static void cmd_resv(struct reply *r, char **argv, int argc)
{
    uint64_t rid = 0;
    uint8_t id[LEDGER_REQUEST_ID_SIZE];
    struct ledger_reservation_info info;
    if (argc != 2 || !parse_u64(argv[1], &rid)) {
        snprintf(r->text, sizeof(r->text), "err usage: resv <rid>");
        return;
    }
    request_id(rid, id);
    int rv = ledger_reservation_get(node_ledger(node), id, &info);
    if (rv == -LEDGER_ENOTFOUND) {
        snprintf(r->text, sizeof(r->text), "none");
    } else if (rv != 0) {
        snprintf(r->text, sizeof(r->text), "err %s", ledger_strerror(rv));
    } else {
        snprintf(r->text, sizeof(r->text), "resv %d %s %" PRId64, info.state, info.account,
                 info.estimate_micros);
    }
}

static void cmd_account(struct reply *r, char **argv, int argc)
{
    struct ledger_account_info info;
    if (argc != 2) {
        snprintf(r->text, sizeof(r->text), "err usage: account <name>");
        return;
    }
    int rv = ledger_account_get(node_ledger(node), argv[1], &info);
    if (rv == -LEDGER_ENOTFOUND) {
        snprintf(r->text, sizeof(r->text), "none");
    } else if (rv != 0) {
        snprintf(r->text, sizeof(r->text), "err %s", ledger_strerror(rv));
    } else {
        snprintf(r->text, sizeof(r->text), "account %" PRId64 " %" PRId64 " %" PRIu64,
                 info.held_micros, info.spent_micros, info.inflight);
    }
}

static void cmd_hash(struct reply *r)
{
    uint8_t hash[32];
    char hex[65];
    struct ledger *l = node_ledger(node);
    if (ledger_state_hash(l, hash) != 0) {
        snprintf(r->text, sizeof(r->text), "err %s", ledger_errmsg(l));
        return;
    }
    for (int i = 0; i < 32; i++) {
        snprintf(hex + 2 * i, 3, "%02x", hash[i]);
    }
    snprintf(r->text, sizeof(r->text), "hash %" PRIu64 " %s", ledger_applied_index(l), hex);
}

static void cmd_stats(struct reply *r)
{
    struct node_stats s;
    node_stats(node, &s);
    snprintf(r->text, sizeof(r->text),
             "stats term=%" PRIu64 " commit=%" PRIu64 " last_applied=%" PRIu64 " applied=%" PRIu64
             " skipped=%" PRIu64 " restores=%" PRIu64 " restores_skipped=%" PRIu64
             " batches=%" PRIu64 " commands=%" PRIu64 " late_results=%" PRIu64 " state=%d",
             s.term, s.commit_index, s.last_applied, s.applied, s.skipped, s.restores,
             s.restores_skipped, s.batches, s.commands, s.late_results, s.state);
}

static void change_cb(struct node *n, void *data, int status)
{
    (void)n;
    struct reply *r = data;
    if (status == 0) {
        snprintf(r->text, sizeof(r->text), "ok");
    } else {
        snprintf(r->text, sizeof(r->text), "err %s", node_strerror(status));
    }
    reply_done(r);
}

static void cmd_change(struct reply *r, char **argv, int argc)
{
    uint64_t id = 0;
    int rv = -NODE_EINVAL;
    if (argc >= 2 && parse_u64(argv[1], &id)) {
        if (strcmp(argv[0], "add") == 0 && argc == 3) {
            rv = node_add(node, id, argv[2], change_cb, r);
        } else if (strcmp(argv[0], "remove") == 0 && argc == 2) {
            rv = node_remove(node, id, change_cb, r);
        } else if (strcmp(argv[0], "transfer") == 0 && argc == 2) {
            rv = node_transfer(node, id, change_cb, r);
        }
    }
    if (rv != 0) {
        snprintf(r->text, sizeof(r->text), "err %s", node_strerror(rv));
        reply_done(r);
    }
}

/* Answer one line; asynchronous commands finish `r` later. */
static void handle_line(struct reply *r, char *line)
{
    char *argv[8];
    int argc = 0;
    for (char *tok = strtok(line, " \t\r"); tok != NULL && argc < 8; tok = strtok(NULL, " \t\r")) {
        argv[argc++] = tok;
    }
    if (argc == 0) {
        snprintf(r->text, sizeof(r->text), "err empty");
    } else if (strcmp(argv[0], "create") == 0) {
        cmd_create(r, argv, argc);
        return;
    } else if (strcmp(argv[0], "reserve") == 0) {
        cmd_reserve(r, argv, argc);
        return;
    } else if (strcmp(argv[0], "add") == 0 || strcmp(argv[0], "remove") == 0 ||
               strcmp(argv[0], "transfer") == 0) {
        cmd_change(r, argv, argc);
        return;
    } else if (strcmp(argv[0], "resv") == 0) {
        cmd_resv(r, argv, argc);
    } else if (strcmp(argv[0], "account") == 0) {
        cmd_account(r, argv, argc);
    } else if (strcmp(argv[0], "hash") == 0) {
        cmd_hash(r);
    } else if (strcmp(argv[0], "leader") == 0) {
        uint64_t leader = 0;
        node_leader(node, &leader, NULL);
        snprintf(r->text, sizeof(r->text), "leader %" PRIu64 " %d %" PRIu64, leader,
                 node_ready(node), node_id(node));
    } else if (strcmp(argv[0], "stats") == 0) {
        cmd_stats(r);
    } else if (strcmp(argv[0], "check") == 0) {
        struct ledger *l = node_ledger(node);
        int rv = ledger_check_invariants(l);
        snprintf(r->text, sizeof(r->text), rv == 0 ? "ok" : "err %s", ledger_errmsg(l));
    } else {
        snprintf(r->text, sizeof(r->text), "err unknown command");
    }
    reply_done(r);
}

static void conn_line(struct conn *c, char *line)
{
    struct reply *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        conn_close(c);
        return;
    }
    r->conn = c;
    c->refs++;
    if (c->tail != NULL) {
        c->tail->next = r;
    } else {
        c->head = r;
    }
    c->tail = r;
    if (stopping) {
        snprintf(r->text, sizeof(r->text), "retry shutdown");
        reply_done(r);
        return;
    }
    handle_line(r, line);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof(c->in) - c->in_len));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    (void)buf;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->in_len += (size_t)nread;
    char *start = c->in;
    char *nl;
    while (!c->closing && (nl = memchr(start, '\n', c->in_len - (size_t)(start - c->in)))) {
        *nl = '\0';
        conn_line(c, start);
        start = nl + 1;
    }
    size_t left = c->in_len - (size_t)(start - c->in);
    if (left == sizeof(c->in)) {
        conn_close(c); /* a line longer than CTL_LINE_MAX */
        return;
    }
    memmove(c->in, start, left);
    c->in_len = left;
}

static void accept_cb(uv_stream_t *srv, int status)
{
    if (status != 0) {
        return;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL || uv_tcp_init(loop, &c->tcp) != 0) {
        free(c);
        return;
    }
    c->tcp.data = c;
    c->refs = 1;
    c->next = conns;
    if (conns != NULL) {
        conns->prev = c;
    }
    conns = c;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0) {
        conn_close(c);
    }
}

/* ---- Life cycle. ---- */

static void node_closed_cb(void *data)
{
    (void)data;
    node = NULL;
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    (void)h;
    if (stopping) {
        return;
    }
    stopping = true;
    fprintf(stderr, "level=info node=%" PRIu64 " msg=\"stopping\" signal=%d\n", node_id(node),
            signum);
    uv_close((uv_handle_t *)&server, NULL);
    while (conns != NULL) {
        conn_close(conns);
    }
    node_close(node, node_closed_cb, NULL);
}

static int parse_member(const char *arg, struct node_config *cfg)
{
    const char *eq = strchr(arg, '=');
    if (eq == NULL || cfg->n_members == NODE_MEMBERS_MAX || strlen(eq + 1) >= NODE_ADDRESS_MAX) {
        return -1;
    }
    struct node_member *m = &cfg->members[cfg->n_members];
    char id[32];
    snprintf(id, sizeof(id), "%.*s", (int)(eq - arg), arg);
    if (!parse_u64(id, &m->id)) {
        return -1;
    }
    snprintf(m->address, sizeof(m->address), "%s", eq + 1);
    cfg->n_members++;
    return 0;
}

static int parse_args(int argc, char **argv, struct node_config *cfg, const char **control)
{
    static const struct option opts[] = {
        {"id", required_argument, NULL, 'i'},
        {"dir", required_argument, NULL, 'd'},
        {"peer", required_argument, NULL, 'p'},
        {"control", required_argument, NULL, 'c'},
        {"member", required_argument, NULL, 'm'},
        {"bootstrap", no_argument, NULL, 'b'},
        {"election-timeout", required_argument, NULL, 'e'},
        {"heartbeat", required_argument, NULL, 'h'},
        {"snapshot-threshold", required_argument, NULL, 't'},
        {"snapshot-trailing", required_argument, NULL, 'r'},
        {"peer-cert", required_argument, NULL, 'C'},
        {"peer-key", required_argument, NULL, 'K'},
        {"peer-ca", required_argument, NULL, 'A'},
        {"peer-insecure", no_argument, NULL, 'I'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    uint64_t v = 0;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        bool num = strchr("iehtr", opt) != NULL;
        if (num && (!parse_u64(optarg, &v) || (opt != 'i' && v > UINT32_MAX))) {
            return -1;
        }
        switch (opt) {
        case 'i':
            cfg->id = v;
            break;
        case 'd':
            cfg->dir = optarg;
            break;
        case 'p':
            cfg->address = optarg;
            break;
        case 'c':
            *control = optarg;
            break;
        case 'm':
            if (parse_member(optarg, cfg) != 0) {
                return -1;
            }
            break;
        case 'b':
            cfg->bootstrap = true;
            break;
        case 'e':
            cfg->election_timeout_ms = (unsigned)v;
            break;
        case 'h':
            cfg->heartbeat_ms = (unsigned)v;
            break;
        case 't':
            cfg->snapshot_threshold = (unsigned)v;
            break;
        case 'r':
            cfg->snapshot_trailing = (unsigned)v;
            break;
        case 'C':
            cfg->peer_cert_file = optarg;
            break;
        case 'K':
            cfg->peer_key_file = optarg;
            break;
        case 'A':
            cfg->peer_ca_file = optarg;
            break;
        case 'I':
            cfg->peer_insecure = true;
            break;
        default:
            return -1;
        }
    }
    return *control != NULL ? 0 : -1;
}

/* Listen on the control address "a.b.c.d:port". */
static int control_listen(const char *address)
{
    char host[64];
    const char *colon = strrchr(address, ':');
    struct sockaddr_in sa;
    if (colon == NULL || (size_t)(colon - address) >= sizeof(host)) {
        return UV_EINVAL;
    }
    snprintf(host, sizeof(host), "%.*s", (int)(colon - address), address);
    int rv = uv_ip4_addr(host, atoi(colon + 1), &sa);
    if (rv == 0) {
        rv = uv_tcp_init(loop, &server);
    }
    if (rv == 0) {
        rv = uv_tcp_bind(&server, (const struct sockaddr *)&sa, 0);
        if (rv == 0) {
            rv = uv_listen((uv_stream_t *)&server, 64, accept_cb);
        }
        if (rv != 0) {
            uv_close((uv_handle_t *)&server, NULL);
        }
    }
    return rv;
}

int main(int argc, char **argv)
{
    struct node_config cfg;
    const char *control = NULL;
    char errmsg[NODE_ERRMSG_SIZE];
    node_config_init(&cfg);
    if (parse_args(argc, argv, &cfg, &control) != 0) {
        fprintf(stderr, "usage: tally-node --id N --dir DIR --peer ADDR --control ADDR "
                        "--member ID=ADDR... [--bootstrap] [--election-timeout MS] "
                        "[--heartbeat MS] [--snapshot-threshold N] [--snapshot-trailing N] "
                        "(--peer-cert F --peer-key F --peer-ca F | --peer-insecure)\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGBUS, node_exit_on_storage_fault); /* as tallyd: a full disk is exit 74 */
    cfg.on_fatal = node_exit_fatal;
    loop = uv_default_loop();
    if (node_open(&node, loop, &cfg, errmsg) != 0) {
        fprintf(stderr, "level=error msg=\"node_open failed\" reason=\"%s\"\n", errmsg);
        return 1;
    }
    int rv = node_start(node);
    if (rv != 0) {
        fprintf(stderr, "level=error msg=\"node_start failed\" reason=\"%s\"\n", node_errmsg(node));
        node_close(node, NULL, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        return 1;
    }
    if (uv_signal_init(loop, &sigterm) != 0 || uv_signal_init(loop, &sigint) != 0 ||
        uv_signal_start(&sigterm, signal_cb, SIGTERM) != 0 ||
        uv_signal_start(&sigint, signal_cb, SIGINT) != 0 || (rv = control_listen(control)) != 0) {
        fprintf(stderr, "level=error msg=\"control setup failed\" address=%s reason=\"%s\"\n",
                control, uv_strerror(rv));
        return 1;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    rv = uv_loop_close(loop);
    fprintf(stderr, "level=info msg=\"exit\" loop_close=%d\n", rv);
    return rv == 0 ? 0 : 1;
}
