/*
 * server.c: the client-facing server (see server.h for the contract).
 *
 * Everything runs on the node's loop thread. A connection owns a framer (bounded frame
 * reader), an output buffer and a count of requests waiting for the node. Each decoded
 * request is answered at once (status, stale reads, errors) or handed to the node as a
 * `struct pending` (writes, linearizable reads, membership changes) whose callback
 * appends the answer later. Output is flushed once per loop iteration by a uv_check
 * handle; a uv_idle handle keeps the loop from sleeping in poll while output waits.
 *
 * Lifetimes: a pending request holds a reference on its connection, and every
 * connection one on the server, so node callbacks that arrive after a client hung up
 * (or after rpc_server_close) find valid memory and answer into the void.
 */
#include "rpc/server.h"
#include "rpc/tls.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define READ_CHUNK (64u << 10)
#define OUTPUT_HIGH_WATER (8u << 20) /* stop reading while this much output is unsent */

struct rpc_server;

struct conn {
    uv_tcp_t tcp;
    struct rpc_server *srv;
    struct conn *prev, *next;       /* srv->conns */
    struct conn *dirty_next;        /* srv->dirty, while `dirty` */
    struct rpc_framer framer;
    struct rpc_tls *tls;            /* NULL on a plain connection */
    struct rpc_buf out;             /* answers (plaintext) not yet handed to uv_write */
    size_t unsent;                  /* bytes handed to uv_write and not yet written */
    int role;                       /* enum rpc_role */
    char principal[LEDGER_ACTOR_MAX + 1];
    unsigned inflight;              /* pending requests */
    unsigned refs;                  /* handle + pending requests + writes */
    bool reading, dirty, closing, close_after_flush, shut;
};

/* A request waiting for the node: a write, a linearizable read or a change. */
struct pending {
    struct conn *conn;
    uint64_t start_ns;
    struct rpc_request req;
};

struct write_req {
    uv_write_t req;
    struct conn *conn;
    struct rpc_buf buf;
};

struct rpc_server {
    uv_loop_t *loop;
    struct node *node;
    uv_tcp_t listener;
    uv_check_t check;
    uv_idle_t idle;
    unsigned open_handles;
    struct rpc_token *tokens;
    size_t n_tokens;
    struct rpc_tls_ctx *tls_ctx; /* NULL: plain TCP */
    struct rpc_member members[RPC_MEMBERS_MAX];
    unsigned n_members;
    size_t max_frame;
    unsigned max_inflight, max_connections;
    struct conn *conns;
    struct conn *dirty;
    unsigned n_conns;
    unsigned refs; /* 1 while open + 1 per connection alive */
    bool closing;
    void (*close_cb)(void *);
    void *close_data;
    char read_buf[READ_CHUNK];
    bool read_buf_busy;
    struct rpc_metrics m; /* traffic counters only; Raft figures filled on demand */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- Tokens. ---- */

void rpc_token_hash(const char *token, uint8_t out[32])
{
    SHA256((const unsigned char *)token, strlen(token), out);
}

static bool principal_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > RPC_TOKEN_NAME_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)s[i]) && strchr("._:@-", s[i]) == NULL) {
            return false;
        }
    }
    return true;
}

/* Parse one non-comment line "ROLE NAME HEX" into t. */
static const char *token_parse_line(char *line, struct rpc_token *t)
{
    char *save = NULL;
    char *role = strtok_r(line, " \t", &save);
    char *name = strtok_r(NULL, " \t", &save);
    char *hex = strtok_r(NULL, " \t", &save);
    if (role == NULL || name == NULL || hex == NULL || strtok_r(NULL, " \t", &save) != NULL) {
        return "expected \"ROLE NAME SHA256HEX\"";
    }
    t->role = rpc_role_parse(role);
    if (t->role < 0) {
        return "role must be admin, gateway or reader";
    }
    if (!principal_valid(name)) {
        return "name must be 1-48 bytes of [A-Za-z0-9._:@-]";
    }
    if (rpc_unhex(hex, t->sha256, sizeof(t->sha256)) != 0) {
        return "the hash must be 64 hex digits (SHA-256 of the token)";
    }
    snprintf(t->name, sizeof(t->name), "%s", name);
    return NULL;
}

int rpc_token_file_load(const char *path, struct rpc_token **out, size_t *n, char *errmsg,
                        size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(errmsg, size, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct rpc_token *tokens = NULL;
    size_t count = 0;
    char line[514];
    int lineno = 0;
    const char *why = NULL;
    while (why == NULL && fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
            why = "line longer than 512 bytes";
            break;
        }
        char *hash = strchr(line, '#');
        if (hash != NULL) {
            *hash = '\0';
        }
        line[strcspn(line, "\r\n")] = '\0';
        if (strspn(line, " \t") == strlen(line)) {
            continue;
        }
        if (count == RPC_TOKENS_MAX) {
            why = "more than 1024 tokens";
            break;
        }
        struct rpc_token *grown = realloc(tokens, (count + 1) * sizeof(*tokens));
        if (grown == NULL) {
            why = "out of memory";
            break;
        }
        tokens = grown;
        why = token_parse_line(line, &tokens[count]);
        count += why == NULL;
    }
    if (why == NULL && ferror(f)) {
        why = strerror(errno);
    }
    fclose(f);
    if (why != NULL) {
        snprintf(errmsg, size, "%s:%d: %s", path, lineno, why);
        free(tokens);
        return -1;
    }
    *out = tokens;
    *n = count;
    return 0;
}

/* The token matching `secret`, compared in constant time against every entry. */
static const struct rpc_token *token_find(const struct rpc_server *s, const char *secret)
{
    uint8_t h[32];
    const struct rpc_token *found = NULL;
    rpc_token_hash(secret, h);
    for (size_t i = 0; i < s->n_tokens; i++) {
        if (CRYPTO_memcmp(h, s->tokens[i].sha256, sizeof(h)) == 0 && found == NULL) {
            found = &s->tokens[i];
        }
    }
    return found;
}

/* ---- Server and connection lifetimes. ---- */

static void server_release(struct rpc_server *s)
{
    assert(s->refs > 0);
    if (--s->refs == 0) {
        rpc_tls_ctx_free(s->tls_ctx);
        free(s->tokens);
        free(s);
    }
}

static void conn_release(struct conn *c)
{
    assert(c->refs > 0);
    if (--c->refs == 0) {
        struct rpc_server *s = c->srv;
        rpc_framer_free(&c->framer);
        rpc_buf_free(&c->out);
        rpc_tls_free(c->tls);
        free(c);
        server_release(s);
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
    struct rpc_server *s = c->srv;
    c->closing = true;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        s->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    s->n_conns--;
    s->m.connections_open = s->n_conns;
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
}

/* ---- Output. ---- */

static void idle_cb(uv_idle_t *h)
{
    (void)h; /* only keeps the loop from blocking in poll while output waits */
}

static void schedule_flush(struct conn *c)
{
    struct rpc_server *s = c->srv;
    if (c->dirty || c->closing) {
        return;
    }
    c->dirty = true;
    c->refs++;
    c->dirty_next = s->dirty;
    s->dirty = c;
    if (!s->closing) {
        uv_idle_start(&s->idle, idle_cb);
    }
}

static void read_start(struct conn *c);
static void read_stop(struct conn *c);

/* Reading resumes when both the requests in flight and the unsent output are low. */
static void backpressure_update(struct conn *c)
{
    struct rpc_server *s = c->srv;
    bool over = c->inflight >= s->max_inflight || c->unsent >= OUTPUT_HIGH_WATER;
    bool under = c->inflight <= s->max_inflight / 2 && c->unsent <= OUTPUT_HIGH_WATER / 2;
    if (over && c->reading) {
        read_stop(c);
    } else if (under && !c->reading && !c->closing && !c->close_after_flush) {
        read_start(c);
    }
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)status;
    struct conn *c = req->data;
    free(req);
    conn_close(c);
    conn_release(c);
}

static void write_cb(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = w->conn;
    c->unsent -= w->buf.len;
    rpc_buf_free(&w->buf);
    free(w);
    if (status != 0) {
        conn_close(c);
    } else if (!c->closing) {
        backpressure_update(c);
    }
    conn_release(c);
}

/* The bytes to put on the wire now: the answers, encrypted on a TLS connection (with
 * whatever the handshake wants sent). 0, or -1 if TLS failed. */
static int take_wire_bytes(struct conn *c, struct rpc_buf *wire)
{
    if (c->tls == NULL) {
        *wire = c->out;
        memset(&c->out, 0, sizeof(c->out));
        return 0;
    }
    int rv = c->out.len > 0 ? rpc_tls_write(c->tls, c->out.data, c->out.len) : 0;
    c->out.len = 0;
    if (rv == 0) {
        rv = rpc_tls_take_output(c->tls, wire);
    }
    return rv;
}

static void conn_flush(struct conn *c)
{
    if (c->closing || c->shut ||
        (c->out.len == 0 && (c->tls == NULL || !rpc_tls_has_output(c->tls)))) {
        return;
    }
    struct write_req *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        conn_close(c);
        return;
    }
    w->conn = c;
    int rv = take_wire_bytes(c, &w->buf);
    if (rv != 0 || w->buf.len == 0) {
        /* Nothing to send yet: answers wait inside TLS for the handshake to finish. */
        rpc_buf_free(&w->buf);
        free(w);
        if (rv != 0) {
            conn_close(c);
        }
        return;
    }
    uv_buf_t buf = uv_buf_init((char *)w->buf.data, (unsigned)w->buf.len);
    c->unsent += w->buf.len;
    c->refs++;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, write_cb) != 0) {
        c->unsent -= w->buf.len;
        rpc_buf_free(&w->buf);
        free(w);
        conn_close(c);
        conn_release(c);
        return;
    }
    if (c->close_after_flush) {
        uv_shutdown_t *sh = malloc(sizeof(*sh));
        if (sh == NULL || uv_shutdown(sh, (uv_stream_t *)&c->tcp, shutdown_cb) != 0) {
            free(sh);
            conn_close(c);
            return;
        }
        sh->data = c;
        c->shut = true;
        c->refs++;
    }
    backpressure_update(c);
}

/* Once per loop iteration: write every connection's accumulated answers. */
static void check_cb(uv_check_t *h)
{
    struct rpc_server *s = h->data;
    struct conn *c = s->dirty;
    s->dirty = NULL;
    uv_idle_stop(&s->idle);
    while (c != NULL) {
        struct conn *next = c->dirty_next;
        c->dirty = false;
        conn_flush(c);
        conn_release(c);
        c = next;
    }
}

/* Append an error answer; `close` also ends the connection once it is written. */
static void answer_error(struct conn *c, uint64_t seq, int status, const char *message,
                         bool close)
{
    struct rpc_server *s = c->srv;
    uint64_t leader_id = 0;
    const char *leader_address = "";
    if (status == RPC_ENOTLEADER) {
        node_leader(s->node, &leader_id, NULL);
        for (unsigned i = 0; i < s->n_members; i++) {
            if (s->members[i].id == leader_id) {
                leader_address = s->members[i].client_address;
            }
        }
        s->m.not_leader++;
    } else if (status == RPC_EUNAVAILABLE || status == RPC_EUNKNOWN) {
        s->m.unavailable++;
    }
    if (rpc_error_encode(&c->out, seq, status, message, leader_id, leader_address) != 0) {
        conn_close(c);
        return;
    }
    if (close) {
        c->close_after_flush = true;
        read_stop(c);
    }
    schedule_flush(c);
}

static void answer(struct conn *c, int op, const struct rpc_response *resp)
{
    if (rpc_response_encode(&c->out, op, resp) != 0) {
        answer_error(c, resp->seq, RPC_EINTERNAL, "answer could not be encoded", false);
        return;
    }
    schedule_flush(c);
}

/* Map a node error from node_propose/node_read_barrier to an answer. */
static void answer_node_error(struct conn *c, uint64_t seq, int rv)
{
    switch (-rv) {
    case NODE_ENOTLEADER: {
        uint64_t leader_id = 0;
        node_leader(c->srv->node, &leader_id, NULL);
        if (leader_id == 0 || leader_id == node_id(c->srv->node)) {
            /* No leader known, or this node was just elected and has not committed its
             * barrier yet: nothing was done, retry shortly. */
            answer_error(c, seq, RPC_EUNAVAILABLE, "no leader ready", false);
        } else {
            answer_error(c, seq, RPC_ENOTLEADER, "not the leader", false);
        }
        break;
    }
    case NODE_ELEADERSHIPLOST:
        answer_error(c, seq, RPC_EUNKNOWN, "leadership lost: retry with the same request id",
                     false);
        break;
    case NODE_ESHUTDOWN:
        answer_error(c, seq, RPC_ESHUTDOWN, "node shutting down: retry elsewhere", false);
        break;
    case NODE_EBUSY:
        answer_error(c, seq, RPC_EBUSY, "node busy: back off and retry", false);
        break;
    case NODE_ETOOBIG:
        answer_error(c, seq, RPC_ETOOBIG, "command too big", false);
        break;
    default:
        answer_error(c, seq, RPC_EINTERNAL, node_strerror(rv), false);
        break;
    }
}

/* ---- Pending requests. ---- */

static struct pending *pending_new(struct conn *c, const struct rpc_request *req)
{
    struct pending *p = malloc(sizeof(*p));
    if (p == NULL) {
        return NULL;
    }
    p->conn = c;
    p->start_ns = now_ns();
    p->req = *req;
    c->refs++;
    c->inflight++;
    return p;
}

/* Done with `p`: drop its references; true if its connection can still be answered. */
static bool pending_end(struct pending *p, struct conn **out)
{
    struct conn *c = p->conn;
    c->inflight--;
    *out = c;
    return !c->closing;
}

static void pending_free(struct pending *p)
{
    struct conn *c = p->conn;
    if (!c->closing) {
        backpressure_update(c);
    }
    free(p);
    conn_release(c);
}

/* ---- Writes. ---- */

static void count_result(struct rpc_server *s, const struct ledger_result *r)
{
    if (r->status == LEDGER_OK) {
        s->m.writes_ok++;
        if (r->cmd_type == LEDGER_CMD_SETTLE && r->overrun_micros > 0 &&
            !(r->flags & LEDGER_RESULT_REPLAYED)) {
            s->m.overruns++;
            s->m.overrun_micros += r->overrun_micros;
        }
    } else if (r->status == LEDGER_DENIED) {
        s->m.writes_denied++;
        if (r->deny_reason < LEDGER_DENY_MAX) {
            s->m.denials[r->deny_reason]++;
        }
    } else {
        s->m.writes_failed++;
    }
}

static void propose_cb(struct node *node, void *data, int status, uint64_t index,
                       const struct ledger_result *results, size_t n_results)
{
    (void)node;
    struct pending *p = data;
    struct conn *c;
    bool live = pending_end(p, &c);
    struct rpc_server *s = c->srv;
    if (status == 0) {
        assert(n_results == 1);
        count_result(s, &results[0]);
        rpc_histogram_observe(&s->m.commit_latency_s, rpc_commit_latency_bounds_s,
                              (double)(now_ns() - p->start_ns) / 1e9);
    }
    if (live) {
        if (status != 0) {
            answer_node_error(c, p->req.seq, status);
        } else {
            struct rpc_response resp = {.seq = p->req.seq};
            resp.u.write.index = index;
            resp.u.write.result = results[0];
            answer(c, RPC_OP_WRITE, &resp);
        }
    }
    pending_free(p);
}

static void handle_write(struct conn *c, const struct rpc_request *req)
{
    struct pending *p = pending_new(c, req);
    if (p == NULL) {
        answer_error(c, req->seq, RPC_EBUSY, "out of memory", false);
        return;
    }
    /* The connection's principal is the actor, whatever the client wrote. */
    snprintf(p->req.u.write.actor, sizeof(p->req.u.write.actor), "%s", c->principal);
    int rv = node_propose(c->srv->node, &p->req.u.write, 1, propose_cb, p);
    if (rv != 0) {
        struct conn *cc;
        pending_end(p, &cc);
        answer_node_error(c, req->seq, rv);
        pending_free(p);
    }
}

/* ---- Reads. ---- */

struct collect {
    uint64_t skip;  /* items before the page */
    uint32_t limit; /* items in the page */
    uint32_t n;
    bool more;
    size_t size; /* item size */
    void *items;
};

static int collect_item(struct collect *k, const void *item)
{
    if (k->skip > 0) {
        k->skip--;
        return 0;
    }
    if (k->n == k->limit) {
        k->more = true;
        return 1;
    }
    memcpy((char *)k->items + (size_t)k->n * k->size, item, k->size);
    k->n++;
    return 0;
}

static int collect_account(void *ctx, const struct ledger_account_info *info)
{
    return collect_item(ctx, info);
}

static int collect_resv(void *ctx, const struct ledger_reservation_info *info)
{
    return collect_item(ctx, info);
}

static int collect_entry(void *ctx, const struct ledger_journal_entry *entry)
{
    return collect_item(ctx, entry);
}

/* Answer a list request from the local ledger, one page from offset `cursor`. */
static void answer_list(struct conn *c, const struct rpc_request *req)
{
    struct ledger *l = node_ledger(c->srv->node);
    struct collect k = {.skip = req->u.list.cursor, .limit = req->u.list.limit};
    k.size = req->op == RPC_OP_ACCOUNT_LIST ? sizeof(struct ledger_account_info)
             : req->op == RPC_OP_RESV_LIST  ? sizeof(struct ledger_reservation_info)
                                            : sizeof(struct ledger_journal_entry);
    k.items = calloc(k.limit, k.size);
    if (k.items == NULL) {
        answer_error(c, req->seq, RPC_EBUSY, "out of memory", false);
        return;
    }
    const char *filter = req->u.list.filter[0] != '\0' ? req->u.list.filter : NULL;
    int rv;
    if (req->op == RPC_OP_ACCOUNT_LIST) {
        rv = ledger_account_list(l, filter, collect_account, &k);
    } else if (req->op == RPC_OP_RESV_LIST) {
        rv = ledger_reservation_list(l, filter, collect_resv, &k);
    } else {
        int64_t until = req->u.list.until_ms > 0 ? req->u.list.until_ms : INT64_MAX;
        rv = ledger_journal_list(l, filter, req->u.list.since_ms, until, collect_entry, &k);
    }
    if (rv < 0) {
        answer_error(c, req->seq, rv == -LEDGER_ENOTFOUND ? RPC_ENOTFOUND : RPC_EINTERNAL,
                     ledger_strerror(rv), false);
    } else {
        struct rpc_response resp = {.seq = req->seq};
        resp.u.list.n = k.n;
        resp.u.list.next = k.more ? req->u.list.cursor + k.n : 0;
        resp.u.list.items.accounts = k.items;
        answer(c, req->op, &resp);
    }
    free(k.items);
}

static void answer_read(struct conn *c, const struct rpc_request *req)
{
    struct ledger *l = node_ledger(c->srv->node);
    struct rpc_response resp = {.seq = req->seq};
    int rv;
    switch (req->op) {
    case RPC_OP_ACCOUNT_GET:
        rv = ledger_account_get(l, req->u.get.name, &resp.u.account);
        break;
    case RPC_OP_RESV_GET:
        rv = ledger_reservation_get(l, req->u.get.request_id, &resp.u.reservation);
        break;
    case RPC_OP_KEY_GET: {
        int revoked = 0;
        rv = ledger_key_get(l, req->u.get.key_hash, resp.u.key.account, &revoked);
        resp.u.key.revoked = revoked != 0;
        break;
    }
    default:
        answer_list(c, req);
        return;
    }
    if (rv == 0) {
        answer(c, req->op, &resp);
    } else {
        answer_error(c, req->seq, rv == -LEDGER_ENOTFOUND ? RPC_ENOTFOUND : RPC_EINTERNAL,
                     ledger_strerror(rv), false);
    }
}

static void read_barrier_cb(struct node *node, void *data, int status)
{
    (void)node;
    struct pending *p = data;
    struct conn *c;
    if (pending_end(p, &c)) {
        if (status == 0) {
            answer_read(c, &p->req);
        } else {
            answer_node_error(c, p->req.seq, status);
        }
    }
    pending_free(p);
}

static void handle_read(struct conn *c, const struct rpc_request *req)
{
    uint32_t flags = req->op == RPC_OP_ACCOUNT_GET || req->op == RPC_OP_RESV_GET ||
                             req->op == RPC_OP_KEY_GET
                         ? req->u.get.flags
                         : req->u.list.flags;
    if (flags & RPC_READ_STALE) {
        answer_read(c, req);
        return;
    }
    struct pending *p = pending_new(c, req);
    if (p == NULL) {
        answer_error(c, req->seq, RPC_EBUSY, "out of memory", false);
        return;
    }
    int rv = node_read_barrier(c->srv->node, read_barrier_cb, p);
    if (rv != 0) {
        struct conn *cc;
        pending_end(p, &cc);
        answer_node_error(c, req->seq, rv);
        pending_free(p);
    }
}

/* ---- Status and membership. ---- */

static void answer_status(struct conn *c, const struct rpc_request *req)
{
    struct rpc_server *s = c->srv;
    struct rpc_response resp = {.seq = req->seq};
    struct rpc_node_status *st = &resp.u.status;
    struct node_stats ns;
    node_stats(s->node, &ns);
    st->node_id = node_id(s->node);
    st->term = ns.term;
    st->raft_state = (uint8_t)ns.state;
    st->serving = node_ready(s->node);
    node_leader(s->node, &st->leader_id, NULL);
    for (unsigned i = 0; i < s->n_members; i++) {
        if (s->members[i].id == st->leader_id) {
            snprintf(st->leader_address, sizeof(st->leader_address), "%s",
                     s->members[i].client_address);
        }
    }
    st->commit_index = ns.commit_index;
    st->applied_index = ns.last_applied;
    st->ledger_now_ms = ledger_now_ms(node_ledger(s->node));
    struct node_member members[RPC_MEMBERS_MAX];
    int roles[RPC_MEMBERS_MAX];
    st->n_members = node_members(s->node, members, roles, RPC_MEMBERS_MAX);
    for (unsigned i = 0; i < st->n_members; i++) {
        struct rpc_member *m = &st->members[i];
        m->id = members[i].id;
        m->role = (uint8_t)roles[i];
        snprintf(m->peer_address, sizeof(m->peer_address), "%s", members[i].address);
        for (unsigned j = 0; j < s->n_members; j++) {
            if (s->members[j].id == m->id) {
                snprintf(m->client_address, sizeof(m->client_address), "%s",
                         s->members[j].client_address);
            }
        }
    }
    answer(c, RPC_OP_STATUS, &resp);
}

static void answer_hash(struct conn *c, const struct rpc_request *req)
{
    struct ledger *l = node_ledger(c->srv->node);
    struct rpc_response resp = {.seq = req->seq};
    resp.u.hash.applied_index = ledger_applied_index(l);
    int rv = ledger_state_hash(l, resp.u.hash.state_hash);
    if (rv != 0) {
        answer_error(c, req->seq, RPC_EINTERNAL, ledger_strerror(rv), false);
        return;
    }
    answer(c, RPC_OP_HASH, &resp);
}

static void change_cb(struct node *node, void *data, int status)
{
    struct pending *p = data;
    struct conn *c;
    if (pending_end(p, &c)) {
        if (status == 0) {
            struct rpc_response resp = {.seq = p->req.seq};
            answer(c, RPC_OP_MEMBERSHIP, &resp);
        } else if (status == -NODE_ERAFT) {
            answer_error(c, p->req.seq, RPC_EBADREQ, node_errmsg(node), false);
        } else {
            answer_node_error(c, p->req.seq, status);
        }
    }
    pending_free(p);
}

static void handle_membership(struct conn *c, const struct rpc_request *req)
{
    struct pending *p = pending_new(c, req);
    if (p == NULL) {
        answer_error(c, req->seq, RPC_EBUSY, "out of memory", false);
        return;
    }
    struct node *n = c->srv->node;
    int rv;
    if (!node_ready(n)) {
        rv = -NODE_ENOTLEADER;
    } else if (req->u.membership.kind == RPC_MEMBER_ADD) {
        rv = node_add(n, req->u.membership.id, req->u.membership.address, change_cb, p);
    } else if (req->u.membership.kind == RPC_MEMBER_REMOVE) {
        rv = node_remove(n, req->u.membership.id, change_cb, p);
    } else {
        rv = node_transfer(n, req->u.membership.id, change_cb, p);
    }
    if (rv != 0) {
        struct conn *cc;
        pending_end(p, &cc);
        if (rv == -NODE_ERAFT || rv == -NODE_EINVAL) {
            answer_error(c, req->seq, RPC_EBADREQ, node_errmsg(n), false);
        } else {
            answer_node_error(c, req->seq, rv);
        }
        pending_free(p);
    }
}

/* ---- Requests. ---- */

static void handle_hello(struct conn *c, const struct rpc_request *req)
{
    struct rpc_server *s = c->srv;
    if (req->u.hello.version != RPC_PROTOCOL_VERSION) {
        s->m.auth_failures++;
        answer_error(c, req->seq, RPC_EAUTH, "unsupported protocol version", true);
        return;
    }
    if (req->u.hello.token[0] == '\0' && c->tls != NULL) {
        char principal[RPC_TOKEN_MAX];
        int role = rpc_tls_peer_role(c->tls, principal, sizeof(principal));
        if (role == RPC_ROLE_NONE || !principal_valid(principal)) {
            s->m.auth_failures++;
            answer_error(c, req->seq, RPC_EAUTH,
                         "no token, and no client certificate naming a role (OU) and a "
                         "principal (CN)",
                         true);
            return;
        }
        c->role = role;
        memcpy(c->principal, principal, strlen(principal) + 1); /* <= 48 bytes: checked */
    } else {
        const struct rpc_token *t = token_find(s, req->u.hello.token);
        if (t == NULL) {
            s->m.auth_failures++;
            answer_error(c, req->seq, RPC_EAUTH, "unknown token", true);
            return;
        }
        c->role = t->role;
        snprintf(c->principal, sizeof(c->principal), "%s", t->name);
    }
    struct rpc_response resp = {.seq = req->seq};
    resp.u.hello.role = (uint8_t)c->role;
    resp.u.hello.node_id = node_id(s->node);
    answer(c, RPC_OP_HELLO, &resp);
}

static void handle_request(struct conn *c, const struct rpc_request *req)
{
    struct rpc_server *s = c->srv;
    if (req->op < RPC_OP_SLOTS) {
        s->m.requests[req->op]++;
    }
    if (c->role == RPC_ROLE_NONE && req->op != RPC_OP_HELLO) {
        s->m.auth_failures++;
        answer_error(c, req->seq, RPC_EAUTH, "the first request must be hello", true);
        return;
    }
    if (!rpc_role_allows(c->role, req->op, req->op == RPC_OP_WRITE ? req->u.write.type : 0)) {
        answer_error(c, req->seq, RPC_EFORBIDDEN, "the connection's role may not do this",
                     false);
        return;
    }
    switch (req->op) {
    case RPC_OP_HELLO:
        if (c->role != RPC_ROLE_NONE) {
            answer_error(c, req->seq, RPC_EBADREQ, "already authenticated", false);
        } else {
            handle_hello(c, req);
        }
        break;
    case RPC_OP_WRITE:
        handle_write(c, req);
        break;
    case RPC_OP_STATUS:
        answer_status(c, req);
        break;
    case RPC_OP_HASH:
        answer_hash(c, req);
        break;
    case RPC_OP_MEMBERSHIP:
        handle_membership(c, req);
        break;
    default:
        handle_read(c, req);
        break;
    }
}

/* Decode and handle every complete frame buffered on `c`. */
static void conn_process(struct conn *c)
{
    struct rpc_server *s = c->srv;
    const uint8_t *body;
    size_t len;
    int rv;
    while (!c->closing && !c->close_after_flush &&
           (rv = rpc_framer_next(&c->framer, &body, &len)) != 0) {
        if (rv < 0) {
            s->m.protocol_errors++;
            answer_error(c, 0, rv == -1 ? RPC_ETOOBIG : RPC_EINTERNAL,
                         rv == -1 ? "frame longer than the limit" : "out of memory", true);
            return;
        }
        struct rpc_request req;
        uint64_t seq = 0;
        char why[RPC_MESSAGE_MAX + 1];
        if (rpc_request_decode(body, len, &req, &seq, why) != 0) {
            s->m.protocol_errors++;
            /* The framing still holds, so the stream can go on, unless the peer never
             * authenticated: then it is not worth serving. */
            answer_error(c, seq, RPC_EBADREQ, why, c->role == RPC_ROLE_NONE);
            continue;
        }
        handle_request(c, &req);
    }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct conn *c = h->data;
    struct rpc_server *s = c->srv;
    /* One shared buffer: read callbacks never nest on one loop thread. */
    *buf = uv_buf_init(s->read_buf, sizeof(s->read_buf));
}

/* Bytes read from the socket: decrypted on a TLS connection, then framed. 0, or -1 if
 * the connection is being closed. */
static int conn_input(struct conn *c, const void *data, size_t n)
{
    if (c->tls == NULL) {
        if (rpc_framer_feed(&c->framer, data, n) != 0) {
            conn_close(c);
            return -1;
        }
        return 0;
    }
    struct rpc_buf plain = {0};
    int rv = rpc_tls_input(c->tls, data, n, &plain);
    if (rv == 0 && plain.len > 0) {
        rv = rpc_framer_feed(&c->framer, plain.data, plain.len);
    }
    rpc_buf_free(&plain);
    if (rpc_tls_has_output(c->tls)) {
        schedule_flush(c); /* handshake records, or the alert of a failure */
    }
    if (rv != 0) {
        c->srv->m.protocol_errors++;
        c->close_after_flush = true;
        read_stop(c);
        if (!rpc_tls_has_output(c->tls)) {
            conn_close(c);
        }
        return -1;
    }
    return 0;
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct conn *c = stream->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0) {
        return;
    }
    if (conn_input(c, c->srv->read_buf, (size_t)nread) != 0) {
        return;
    }
    conn_process(c);
    if (!c->closing) {
        backpressure_update(c);
    }
}

static void read_start(struct conn *c)
{
    if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0) {
        c->reading = true;
        /* Frames buffered while reading was stopped are handled now. */
        conn_process(c);
    }
}

static void read_stop(struct conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void accept_cb(uv_stream_t *listener, int status)
{
    struct rpc_server *s = listener->data;
    if (status != 0 || s->closing) {
        return;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL || uv_tcp_init(s->loop, &c->tcp) != 0) {
        free(c);
        return;
    }
    c->tcp.data = c;
    c->srv = s;
    c->refs = 1;
    s->refs++;
    rpc_framer_init(&c->framer, s->max_frame);
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 ||
        (s->tls_ctx != NULL && rpc_tls_new(&c->tls, s->tls_ctx) != 0)) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
        return;
    }
    c->next = s->conns;
    if (s->conns != NULL) {
        s->conns->prev = c;
    }
    s->conns = c;
    s->n_conns++;
    s->m.connections_total++;
    s->m.connections_open = s->n_conns;
    if (s->n_conns > s->max_connections) {
        answer_error(c, 0, RPC_EBUSY, "too many connections", true);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    read_start(c);
}

/* ---- Life cycle. ---- */

static int parse_ipv4(const char *address, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(address, ':');
    char *end;
    if (colon == NULL || (size_t)(colon - address) >= sizeof(host)) {
        return -1;
    }
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || colon[1] == '\0' || port < 0 || port > 65535) {
        return -1;
    }
    snprintf(host, sizeof(host), "%.*s", (int)(colon - address), address);
    return uv_ip4_addr(host, (int)port, sa) == 0 ? 0 : -1;
}

int rpc_server_start(struct rpc_server **out, uv_loop_t *loop, struct node *node,
                     const struct rpc_server_config *cfg, char *errmsg, size_t size)
{
    struct sockaddr_in sa;
    if (cfg->address == NULL || parse_ipv4(cfg->address, &sa) != 0) {
        snprintf(errmsg, size, "client address \"%s\" is not IPv4 host:port",
                 cfg->address != NULL ? cfg->address : "");
        return -1;
    }
    if (cfg->n_members > RPC_MEMBERS_MAX) {
        snprintf(errmsg, size, "at most %d members", RPC_MEMBERS_MAX);
        return -1;
    }
    struct rpc_server *s = calloc(1, sizeof(*s));
    if (s == NULL || (cfg->n_tokens > 0 &&
                      (s->tokens = malloc(cfg->n_tokens * sizeof(*s->tokens))) == NULL)) {
        free(s);
        snprintf(errmsg, size, "out of memory");
        return -1;
    }
    if (cfg->n_tokens > 0) {
        memcpy(s->tokens, cfg->tokens, cfg->n_tokens * sizeof(*s->tokens));
    }
    s->n_tokens = cfg->n_tokens;
    memcpy(s->members, cfg->members, cfg->n_members * sizeof(*s->members));
    s->n_members = cfg->n_members;
    s->loop = loop;
    s->node = node;
    s->refs = 1;
    s->max_frame = cfg->max_frame != 0 ? cfg->max_frame : RPC_FRAME_MAX;
    s->max_inflight = cfg->max_inflight != 0 ? cfg->max_inflight : 4096;
    s->max_connections = cfg->max_connections != 0 ? cfg->max_connections : 4096;
    s->m.node_id = node_id(node);
    if (s->max_frame > RPC_FRAME_LIMIT) {
        s->max_frame = RPC_FRAME_LIMIT;
    }
    if (cfg->tls_cert_file != NULL &&
        rpc_tls_ctx_new(&s->tls_ctx, cfg->tls_cert_file, cfg->tls_key_file,
                        cfg->tls_client_ca_file, errmsg, size) != 0) {
        free(s->tokens);
        free(s);
        return -1;
    }
    uv_tcp_init(loop, &s->listener);
    uv_check_init(loop, &s->check);
    uv_idle_init(loop, &s->idle);
    s->open_handles = 3;
    s->listener.data = s->check.data = s->idle.data = s;
    int rv = uv_tcp_bind(&s->listener, (const struct sockaddr *)&sa, 0);
    if (rv == 0) {
        rv = uv_listen((uv_stream_t *)&s->listener, 511, accept_cb);
    }
    if (rv != 0) {
        snprintf(errmsg, size, "cannot listen on %s: %s", cfg->address, uv_strerror(rv));
        rpc_server_close(s, NULL, NULL);
        return -1;
    }
    uv_check_start(&s->check, check_cb);
    *out = s;
    return 0;
}

void rpc_server_metrics(struct rpc_server *s, struct rpc_metrics *m)
{
    struct node_stats ns;
    *m = s->m;
    node_stats(s->node, &ns);
    m->term = ns.term;
    m->raft_state = ns.state;
    node_leader(s->node, &m->leader_id, NULL);
    m->commit_index = ns.commit_index;
    m->applied_index = ns.last_applied;
    m->serving = node_ready(s->node);
    m->last_index = ns.last_index;
    struct node_member members[RPC_METRICS_PEERS_MAX];
    int roles[RPC_METRICS_PEERS_MAX];
    unsigned n = node_members(s->node, members, roles, RPC_METRICS_PEERS_MAX);
    m->n_peers = 0;
    for (unsigned i = 0; i < n; i++) {
        struct rpc_peer_progress *p = &m->peers[m->n_peers];
        if (members[i].id != m->node_id &&
            node_peer_match(s->node, members[i].id, &p->match_index) == 0) {
            p->id = members[i].id;
            m->n_peers++;
        }
    }
    memset(&m->batch_size, 0, sizeof(m->batch_size));
    for (unsigned i = 0; i < NODE_BATCH_SIZE_BUCKETS && i < RPC_HIST_BUCKETS; i++) {
        m->batch_size.bucket[i] = ns.batch_sizes[i];
        m->batch_size.count += ns.batch_sizes[i];
    }
    m->batch_size.sum = (double)ns.commands;
}

static void server_handle_closed(uv_handle_t *h)
{
    struct rpc_server *s = h->data;
    if (--s->open_handles == 0) {
        if (s->close_cb != NULL) {
            s->close_cb(s->close_data);
        }
        server_release(s);
    }
}

void rpc_server_close(struct rpc_server *s, void (*cb)(void *), void *data)
{
    assert(!s->closing);
    s->closing = true;
    s->close_cb = cb;
    s->close_data = data;
    while (s->conns != NULL) {
        conn_close(s->conns);
    }
    /* Connections marked dirty keep a reference until the check handle runs; it will
     * not run again, so drop them here. */
    struct conn *c = s->dirty;
    s->dirty = NULL;
    while (c != NULL) {
        struct conn *next = c->dirty_next;
        c->dirty = false;
        conn_release(c);
        c = next;
    }
    uv_close((uv_handle_t *)&s->listener, server_handle_closed);
    uv_close((uv_handle_t *)&s->check, server_handle_closed);
    uv_close((uv_handle_t *)&s->idle, server_handle_closed);
}
