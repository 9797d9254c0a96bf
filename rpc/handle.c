/*
 * handle.c: what the server does with each request, and the answers it gives.
 *
 * The one idea: a request is answered at once when the local ledger can answer it
 * (status, stale reads, errors), or handed to the node as a `struct pending` (writes,
 * linearizable reads, membership changes) whose callback appends the answer later;
 * HASH alone goes to the thread pool (hash.c). The server never batches by itself:
 * every write becomes a node_propose() call at once and the node groups what one loop
 * iteration proposed into one Raft entry.
 * This file only appends answers to a connection's output; listener.c puts them on the
 * wire, and auth.c decides who may ask what.
 *
 * A pending request holds a reference on its connection and counts as one of its
 * requests in flight until its callback has run, whether or not the client is still
 * there to read the answer.
 */
#include "rpc/server_internal.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A request waiting for the node: a write, a linearizable read or a change. */
struct pending {
    struct rpc__conn *conn;
    uint64_t start_ns;
    struct rpc_request req;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- Answers. ---- */

/* The client address configured for member `id` ("" if none: redirect by id only). */
static const char *member_client_address(const struct rpc_server *s, uint64_t id)
{
    const char *address = "";
    for (unsigned i = 0; i < s->n_members; i++) {
        if (s->members[i].id == id) {
            address = s->members[i].client_address;
        }
    }
    return address;
}

void rpc__answer_error(struct rpc__conn *c, uint64_t seq, int status, const char *message,
                       bool close)
{
    struct rpc_server *s = c->srv;
    uint64_t leader_id = 0;
    const char *leader_address = "";
    if (status == RPC_ENOTLEADER) {
        node_leader(s->node, &leader_id, NULL);
        leader_address = member_client_address(s, leader_id);
        s->m.not_leader++;
    } else if (status == RPC_EUNAVAILABLE || status == RPC_EUNKNOWN) {
        s->m.unavailable++;
    }
    if (rpc_error_encode(&c->out, seq, status, message, leader_id, leader_address) != 0) {
        rpc__conn_close(c);
        return;
    }
    if (close) {
        c->close_after_flush = true;
        rpc__conn_read_stop(c);
    }
    rpc__conn_schedule_flush(c);
}

struct rpc_response rpc__answer_begin(uint64_t seq)
{
    struct rpc_response resp;
    memset(&resp, 0, sizeof(resp));
    resp.seq = seq;
    resp.status = RPC_EINTERNAL;
    snprintf(resp.message, sizeof(resp.message), "no answer was decided");
    return resp;
}

bool rpc__answer(struct rpc__conn *c, int op, const struct rpc_response *resp)
{
    if (rpc_response_encode(&c->out, op, resp) != 0) {
        rpc__answer_error(c, resp->seq, RPC_EINTERNAL, "answer could not be encoded", false);
        return false;
    }
    rpc__conn_schedule_flush(c);
    return true;
}

/* Map a node error from node_propose/node_read_barrier to an answer; returns the status
 * answered. */
static int answer_node_error(struct rpc__conn *c, uint64_t seq, int rv)
{
    int status = RPC_EINTERNAL;
    switch (-rv) {
    case NODE_ENOTLEADER: {
        uint64_t leader_id = 0;
        node_leader(c->srv->node, &leader_id, NULL);
        if (leader_id == 0 || leader_id == node_id(c->srv->node)) {
            /* No leader known, or this node was just elected and has not committed its
             * barrier yet: nothing was done, retry shortly. */
            status = RPC_EUNAVAILABLE;
            rpc__answer_error(c, seq, status, "no leader ready", false);
        } else {
            status = RPC_ENOTLEADER;
            rpc__answer_error(c, seq, status, "not the leader", false);
        }
        break;
    }
    case NODE_ELEADERSHIPLOST:
        status = RPC_EUNKNOWN;
        rpc__answer_error(c, seq, status, "leadership lost: retry with the same request id", false);
        break;
    case NODE_ESHUTDOWN:
        status = RPC_ESHUTDOWN;
        rpc__answer_error(c, seq, status, "node shutting down: retry elsewhere", false);
        break;
    case NODE_EBUSY:
        status = RPC_EBUSY;
        rpc__answer_error(c, seq, status, "node busy: back off and retry", false);
        break;
    case NODE_ESTORAGE:
        /* The reason is the message's first word, so clients and logs can tell it. */
        status = RPC_EUNAVAILABLE;
        rpc__answer_error(c, seq, status,
                          RPC_REASON_STORAGE ": the leader's ledger map or disk is past its "
                                             "reserve; nothing done, retry once space returns",
                          false);
        break;
    case NODE_ETOOBIG:
        status = RPC_ETOOBIG;
        rpc__answer_error(c, seq, status, "command too big", false);
        break;
    default:
        rpc__answer_error(c, seq, status, node_strerror(rv), false);
        break;
    }
    return status;
}

/* Answer a ledger error from a read: ENOTFOUND, EFORBIDDEN (outside the connection's
 * scope) and EINVAL (a cursor that is not one) are the client's, anything else ours. */
static void answer_ledger_error(struct rpc__conn *c, uint64_t seq, int rv)
{
    int status = rv == -LEDGER_ENOTFOUND    ? RPC_ENOTFOUND
                 : rv == -LEDGER_EFORBIDDEN ? RPC_EFORBIDDEN
                 : rv == -LEDGER_EINVAL     ? RPC_EBADREQ
                                            : RPC_EINTERNAL;
    rpc__answer_error(c, seq, status, ledger_strerror(rv), false);
}

/* ---- Pending requests. ---- */

/* A pending request for `req` (copied) on `c`, or NULL with RPC_EBUSY answered. */
static struct pending *pending_new(struct rpc__conn *c, const struct rpc_request *req)
{
    struct pending *p = malloc(sizeof(*p));
    if (p == NULL) {
        rpc__answer_error(c, req->seq, RPC_EBUSY, "out of memory", false);
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
static bool pending_end(struct pending *p, struct rpc__conn **out)
{
    struct rpc__conn *c = p->conn;
    c->inflight--;
    *out = c;
    return !c->closing;
}

static void pending_free(struct pending *p)
{
    struct rpc__conn *c = p->conn;
    if (!c->closing) {
        rpc__conn_backpressure_update(c);
    }
    free(p);
    rpc__conn_release(c);
}

/* `p` never reached the node, which refused it with `rv`: answer that and free `p`. */
static void pending_refuse(struct pending *p, int rv)
{
    struct rpc__conn *c;
    pending_end(p, &c);
    answer_node_error(c, p->req.seq, rv);
    pending_free(p);
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

static void lost_void_cb(struct node *node, void *data, int status, uint64_t index,
                         const struct ledger_result *results, size_t n_results)
{
    (void)node, (void)data, (void)status, (void)index, (void)results, (void)n_results;
}

/*
 * A reserve answered RPC_EINTERNAL may have been granted: its entry committed but the
 * node kept no answer for it (-NODE_EAPPLY), or the answer could not be encoded. The
 * gateway was told it failed, so the hold must not stay until its ttl: the server
 * proposes a void of the same request id and principal at once. The ledger decides it
 * like any void: a granted reservation is released, anything else is left as it is.
 * (libtally also voids a reserve that ends in EINTERNAL, should this proposal fail.)
 */
static void void_lost_reserve(struct rpc_server *s, const struct ledger_cmd *reserve)
{
    struct ledger_cmd v = *reserve;
    v.type = LEDGER_CMD_VOID;
    memset(&v.u, 0, sizeof(v.u));
    if (node_propose(s->node, &v, 1, lost_void_cb, NULL) == 0) {
        s->m.lost_answer_voids++;
    }
}

static void propose_cb(struct node *node, void *data, int status, uint64_t index,
                       const struct ledger_result *results, size_t n_results)
{
    (void)node;
    struct pending *p = data;
    struct rpc__conn *c;
    bool live = pending_end(p, &c);
    struct rpc_server *s = c->srv;
    if (status == 0) {
        assert(n_results == 1);
        count_result(s, &results[0]);
        rpc_histogram_observe(&s->m.commit_latency_s, rpc_commit_latency_bounds_s,
                              (double)(now_ns() - p->start_ns) / 1e9);
    }
    if (live) {
        bool internal;
        if (status != 0) {
            internal = answer_node_error(c, p->req.seq, status) == RPC_EINTERNAL;
        } else {
            struct rpc_response resp = rpc__answer_begin(p->req.seq);
            resp.u.write.index = index;
            resp.u.write.result = results[0];
            resp.status = RPC_OK;
            internal = !rpc__answer(c, RPC_OP_WRITE, &resp);
        }
        if (internal && p->req.u.write.type == LEDGER_CMD_RESERVE) {
            void_lost_reserve(s, &p->req.u.write);
        }
    }
    pending_free(p);
}

static void handle_write(struct rpc__conn *c, const struct rpc_request *req)
{
    struct pending *p = pending_new(c, req);
    if (p == NULL) {
        return;
    }
    /* The connection's principal is the actor and its credential's scope the scope,
     * whatever the client wrote: a scoped credential can never send an unscoped command. */
    snprintf(p->req.u.write.actor, sizeof(p->req.u.write.actor), "%s", c->principal);
    snprintf(p->req.u.write.scope, sizeof(p->req.u.write.scope), "%s", c->scope);
    int rv = node_propose(c->srv->node, &p->req.u.write, 1, propose_cb, p);
    if (rv != 0) {
        pending_refuse(p, rv);
    }
}

/* ---- Reads. ---- */

struct collect {
    uint32_t limit; /* items in the page */
    uint32_t n;
    bool more;
    size_t size; /* item size */
    void *items;
};

static int collect_item(struct collect *k, const void *item)
{
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

/* Answer a list request from the local ledger: the page after the request's cursor,
 * within the connection's scope. */
static void answer_list(struct rpc__conn *c, const struct rpc_request *req)
{
    struct ledger *l = node_ledger(c->srv->node);
    struct collect k = {.limit = req->u.list.limit};
    struct ledger_page page = {.scope = c->scope};
    assert(req->u.list.cursor_len <= sizeof(page.after)); /* the decoder's bound */
    page.after_len = req->u.list.cursor_len;
    memcpy(page.after, req->u.list.cursor, page.after_len);
    k.size = req->op == RPC_OP_ACCOUNT_LIST ? sizeof(struct ledger_account_info)
             : req->op == RPC_OP_RESV_LIST  ? sizeof(struct ledger_reservation_info)
                                            : sizeof(struct ledger_journal_entry);
    k.items = calloc(k.limit, k.size);
    if (k.items == NULL) {
        rpc__answer_error(c, req->seq, RPC_EBUSY, "out of memory", false);
        return;
    }
    const char *filter = req->u.list.filter[0] != '\0' ? req->u.list.filter : NULL;
    int rv;
    if (req->op == RPC_OP_ACCOUNT_LIST) {
        rv = ledger_account_list_page(l, filter, &page, collect_account, &k);
    } else if (req->op == RPC_OP_RESV_LIST) {
        rv = ledger_reservation_list_page(l, filter, &page, collect_resv, &k);
    } else {
        int64_t until = req->u.list.until_ms > 0 ? req->u.list.until_ms : INT64_MAX;
        rv = ledger_journal_list_page(l, filter, req->u.list.since_ms, until, &page, collect_entry,
                                      &k);
    }
    if (rv < 0) {
        answer_ledger_error(c, req->seq, rv);
    } else {
        struct rpc_response resp = rpc__answer_begin(req->seq);
        resp.u.list.n = k.n;
        /* A page that ended full has a cursor: the key of its last item. */
        assert(!k.more || (k.n > 0 && page.last_len > 0));
        resp.u.list.next_len = k.more ? page.last_len : 0;
        memcpy(resp.u.list.next, page.last, resp.u.list.next_len);
        resp.u.list.items.accounts = k.items;
        resp.status = RPC_OK;
        rpc__answer(c, req->op, &resp);
    }
    free(k.items);
}

static void answer_read(struct rpc__conn *c, const struct rpc_request *req)
{
    struct ledger *l = node_ledger(c->srv->node);
    struct rpc_response resp = rpc__answer_begin(req->seq);
    int rv;
    switch (req->op) {
    case RPC_OP_ACCOUNT_GET:
        rv = ledger_account_get_scoped(l, c->scope, req->u.get.name, &resp.u.account);
        break;
    case RPC_OP_RESV_GET:
        rv = ledger_reservation_get_scoped(l, c->scope, req->u.get.request_id, &resp.u.reservation);
        break;
    case RPC_OP_KEY_GET: {
        int revoked = 0;
        rv = ledger_key_get_scoped(l, c->scope, req->u.get.key_hash, resp.u.key.account, &revoked);
        resp.u.key.revoked = revoked != 0;
        break;
    }
    default:
        answer_list(c, req);
        return;
    }
    if (rv == 0) {
        resp.status = RPC_OK;
        rpc__answer(c, req->op, &resp);
    } else {
        answer_ledger_error(c, req->seq, rv);
    }
}

static void read_barrier_cb(struct node *node, void *data, int status)
{
    (void)node;
    struct pending *p = data;
    struct rpc__conn *c;
    if (pending_end(p, &c)) {
        if (status == 0) {
            answer_read(c, &p->req);
        } else {
            answer_node_error(c, p->req.seq, status);
        }
    }
    pending_free(p);
}

static void handle_read(struct rpc__conn *c, const struct rpc_request *req)
{
    uint32_t flags =
        req->op == RPC_OP_ACCOUNT_GET || req->op == RPC_OP_RESV_GET || req->op == RPC_OP_KEY_GET
            ? req->u.get.flags
            : req->u.list.flags;
    if (flags & RPC_READ_STALE) {
        answer_read(c, req);
        return;
    }
    struct pending *p = pending_new(c, req);
    if (p == NULL) {
        return;
    }
    int rv = node_read_barrier(c->srv->node, read_barrier_cb, p);
    if (rv != 0) {
        pending_refuse(p, rv);
    }
}

/* ---- Status and membership. ---- */

static void answer_status(struct rpc__conn *c, const struct rpc_request *req)
{
    struct rpc_server *s = c->srv;
    struct rpc_response resp = rpc__answer_begin(req->seq);
    struct rpc_node_status *st = &resp.u.status;
    struct node_stats ns;
    node_stats(s->node, &ns);
    st->node_id = node_id(s->node);
    st->term = ns.term;
    st->raft_state = (uint8_t)ns.state;
    st->serving = node_ready(s->node);
    node_leader(s->node, &st->leader_id, NULL);
    snprintf(st->leader_address, sizeof(st->leader_address), "%s",
             member_client_address(s, st->leader_id));
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
        snprintf(m->client_address, sizeof(m->client_address), "%s",
                 member_client_address(s, m->id));
    }
    resp.status = RPC_OK;
    rpc__answer(c, RPC_OP_STATUS, &resp);
}

static void change_cb(struct node *node, void *data, int status)
{
    struct pending *p = data;
    struct rpc__conn *c;
    if (pending_end(p, &c)) {
        if (status == 0) {
            struct rpc_response resp = rpc__answer_begin(p->req.seq);
            resp.status = RPC_OK;
            rpc__answer(c, RPC_OP_MEMBERSHIP, &resp);
        } else if (status == -NODE_ERAFT) {
            rpc__answer_error(c, p->req.seq, RPC_EBADREQ, node_errmsg(node), false);
        } else {
            answer_node_error(c, p->req.seq, status);
        }
    }
    pending_free(p);
}

static void handle_membership(struct rpc__conn *c, const struct rpc_request *req)
{
    struct pending *p = pending_new(c, req);
    if (p == NULL) {
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
        struct rpc__conn *cc;
        pending_end(p, &cc);
        if (rv == -NODE_ERAFT || rv == -NODE_EINVAL) {
            rpc__answer_error(c, req->seq, RPC_EBADREQ, node_errmsg(n), false);
        } else {
            answer_node_error(c, req->seq, rv);
        }
        pending_free(p);
    }
}

/* ---- Requests. ---- */

void rpc__handle_request(struct rpc__conn *c, const struct rpc_request *req)
{
    struct rpc_server *s = c->srv;
    if (req->op < RPC_OP_SLOTS) {
        s->m.requests[req->op]++;
    }
    if (!rpc__auth_check(c, req)) {
        return;
    }
    switch (req->op) {
    case RPC_OP_HELLO:
        rpc__auth_hello(c, req);
        break;
    case RPC_OP_WRITE:
        handle_write(c, req);
        break;
    case RPC_OP_STATUS:
        answer_status(c, req);
        break;
    case RPC_OP_HASH:
        rpc__hash_start(c, req);
        break;
    case RPC_OP_MEMBERSHIP:
        handle_membership(c, req);
        break;
    default:
        handle_read(c, req);
        break;
    }
}
