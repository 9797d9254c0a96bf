/*
 * leader.c: leadership, read barriers, membership changes, leadership transfer and the
 * node's queries.
 *
 * Leadership: the check handle (node__check_cb) also watches raft_state() and the term.
 * A new term as leader submits its barrier, a batch of one TERM_START command that names
 * the commit index the leader knew when elected (ledger/ambiguous.c); the node is ready
 * (and flushes its queue) only once the barrier of that term is applied. Losing leadership
 * fails queued commands with -NODE_ENOTLEADER; proposed batches are failed by libraft
 * (outcome unknown).
 *
 * Membership: one change or transfer at a time (n->change). node_add() adds the server
 * as a non-voter and, once libraft has caught it up, promotes it from the check handle,
 * not from libraft's callback.
 */
#include "raft/node_internal.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct node_barrier {
    struct raft_apply req;
    struct node *node;
    uint64_t term;
};

/* The one membership change or leadership transfer in progress. */
struct node_change {
    union {
        struct raft_change change;
        struct raft_transfer transfer;
    } req;
    struct node *node;
    node_change_cb cb;
    void *data;
    uint64_t id;
    bool promote;    /* node_add: raft_assign(voter) after raft_add succeeds */
    bool assign_due; /* raft_add done: the check handle submits raft_assign */
    bool promoting;  /* node_add's raft_assign(voter) is under way */
};

/* ---- Leadership: barrier, readiness, and watching the state each iteration. ---- */

static void barrier_cb(struct raft_apply *req, int status, void *result)
{
    (void)result; /* the TERM_START's answer: nothing to tell anyone */
    struct node_barrier *nb = req->data;
    struct node *n = nb->node;
    uint64_t term = nb->term;
    free(nb);
    if (n->closing) {
        return;
    }
    n->barrier_pending = false;
    if (status == 0 && n->leader_term == term && raft_state(&n->raft) == RAFT_LEADER &&
        raft_current_term(&n->raft) == term) {
        n->ready = true;
        node__logf(n, "info", "msg=\"leader ready\" term=%" PRIu64 " applied=%" PRIu64, term,
                   (uint64_t)raft_last_applied(&n->raft));
        node__kick(n);
    }
}

/* The election barrier as a batch of one TERM_START, so the ledger sees it: it names the
 * commit index this leader knew when elected, and with it the entries of earlier terms it
 * is about to commit without knowing whether they were answered (ledger/ambiguous.c).
 * Its stamp is 0: the ledger keeps its own clock (time only comes from batches of
 * commands), so the barrier neither moves nor depends on ledger time. */
static int barrier_encode(struct node *n, struct raft_buffer *out)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = LEDGER_CMD_TERM_START;
    uint64_t term = n->leader_term;
    memcpy(c.request_id, &term, sizeof(term));
    snprintf(c.actor, sizeof(c.actor), "raft");
    /* What this node knows committed: libraft's commit index, which starts again from
     * the last snapshot after a restart, or what its ledger applied before, if more (an
     * applied entry was committed; this node answered nothing it had not applied). */
    uint64_t commit_index = (uint64_t)raft_commit_index(&n->raft);
    uint64_t applied_index = ledger_applied_index(n->ledger);
    c.u.term_start.commit_index = applied_index > commit_index ? applied_index : commit_index;
    void *enc = NULL;
    size_t len = 0;
    if (ledger_batch_encode(0, &c, 1, &enc, &len) != 0) {
        return -1;
    }
    out->base = raft_malloc(len);
    if (out->base == NULL) {
        free(enc);
        return -1;
    }
    memcpy(out->base, enc, len);
    out->len = len;
    free(enc);
    return 0;
}

static void barrier_submit(struct node *n)
{
    struct node_barrier *nb = calloc(1, sizeof(*nb));
    struct raft_buffer buf = {0};
    if (nb == NULL || barrier_encode(n, &buf) != 0) {
        free(nb);
        return; /* retried on the next iteration */
    }
    nb->node = n;
    nb->term = n->leader_term;
    nb->req.data = nb;
    int rv = raft_apply(&n->raft, &nb->req, &buf, 1, barrier_cb);
    if (rv != 0) {
        node__logf(n, "warn", "msg=\"barrier failed\" error=\"%s\"", raft_strerror(rv));
        raft_free(buf.base);
        free(nb);
        return;
    }
    n->barrier_pending = true;
}

/* A read barrier: its caller's callback, and the term the read was asked in. */
struct node_read {
    struct raft_barrier req;
    struct node *node;
    uint64_t term;
    node_change_cb cb;
    void *data;
};

static void read_barrier_cb(struct raft_barrier *req, int status)
{
    struct node_read *rd = req->data;
    struct node *n = rd->node;
    int rv = 0;
    if (n->closing) {
        rv = -NODE_ESHUTDOWN;
    } else if (status != 0 || raft_state(&n->raft) != RAFT_LEADER ||
               raft_current_term(&n->raft) != rd->term) {
        rv = -NODE_ELEADERSHIPLOST;
    }
    rd->cb(n, rd->data, rv);
    free(rd);
}

int node_read_barrier(struct node *n, node_change_cb cb, void *data)
{
    assert(cb != NULL);
    if (n->closing) {
        return -NODE_ESHUTDOWN;
    }
    if (!n->ready) {
        return -NODE_ENOTLEADER;
    }
    struct node_read *rd = calloc(1, sizeof(*rd));
    if (rd == NULL) {
        return -NODE_ENOMEM;
    }
    rd->node = n;
    rd->term = n->leader_term;
    rd->cb = cb;
    rd->data = data;
    rd->req.data = rd;
    int rv = raft_barrier(&n->raft, &rd->req, read_barrier_cb);
    if (rv != 0) {
        free(rd);
        return rv == RAFT_NOTLEADER || rv == RAFT_LEADERSHIPLOST
                   ? -NODE_ENOTLEADER
                   : node__error(n, -NODE_ERAFT, "raft_barrier: %s", raft_strerror(rv));
    }
    return 0;
}

unsigned node_members(struct node *n, struct node_member *out, int *roles, unsigned max)
{
    const struct raft_configuration *c = &n->raft.configuration;
    unsigned k = 0;
    for (unsigned i = 0; i < c->n && k < max; i++, k++) {
        out[k].id = c->servers[i].id;
        snprintf(out[k].address, sizeof(out[k].address), "%s", c->servers[i].address);
        roles[k] = c->servers[i].role;
    }
    return k;
}

static void track_leadership(struct node *n)
{
    int state = raft_state(&n->raft);
    if (state == RAFT_UNAVAILABLE) {
        /* libraft gives up by going unavailable when a tick or a peer's message fails to
         * step (libraft patch 0005): a log conflict at a committed index, a term or vote
         * it could not persist, no memory. Running on would leave a member whose memory
         * and disk disagree. */
        node__fatal(n, "raft became unavailable", raft_errmsg(&n->raft));
    }
    uint64_t term = raft_current_term(&n->raft);
    if (state != RAFT_LEADER || term != n->leader_term) {
        if (n->leader_term != 0) {
            node__logf(n, "info", "msg=\"leadership lost\" term=%" PRIu64, n->leader_term);
            n->leader_term = 0;
            n->ready = false;
            node__queue_fail(n, -NODE_ENOTLEADER);
        }
        if (state == RAFT_LEADER) {
            node__logf(n, "info", "msg=\"elected\" term=%" PRIu64, term);
            n->leader_term = term;
        }
    }
    if (n->leader_term != 0 && !n->ready && !n->barrier_pending) {
        barrier_submit(n);
    }
}

static void change_cb(struct raft_change *req, int status);

void node__change_finish(struct node_change *c, int status)
{
    struct node *n = c->node;
    n->change = NULL;
    node_change_cb cb = c->cb;
    void *data = c->data;
    free(c);
    if (cb != NULL) {
        cb(n, data, status);
    }
}

/* Second half of node_add, outside libraft's callback: promote the new server. */
static void change_assign(struct node *n)
{
    struct node_change *c = n->change;
    if (c == NULL || !c->assign_due) {
        return;
    }
    c->assign_due = false;
    c->promote = false;
    c->promoting = true;
    int rv = raft_assign(&n->raft, &c->req.change, c->id, RAFT_VOTER, change_cb);
    if (rv != 0) {
        node__error(n, -node__from_raft(rv), "raft_assign: %s", raft_errmsg(&n->raft));
        node__change_finish(c, node__from_raft(rv));
    }
}

void node__check_cb(uv_check_t *h)
{
    struct node *n = h->data;
    if (n->closing || !n->started) {
        return;
    }
    node__clock_observe(n);
    track_leadership(n);
    change_assign(n);
    if (n->ready && n->n_queued > 0 && n->n_inflight < NODE_INFLIGHT_MAX) {
        node__queue_flush(n);
    }
    if (n->n_queued == 0 || !n->ready || n->n_inflight >= NODE_INFLIGHT_MAX) {
        int rv = uv_idle_stop(&n->idle);
        assert(rv == 0);
        (void)rv;
    }
}

/* ---- Membership and leadership transfer. ---- */

static void change_cb(struct raft_change *req, int status)
{
    struct node_change *c = req->data;
    if (c->node->closing) {
        node__change_finish(c, -NODE_ESHUTDOWN);
        return;
    }
    if (status == 0 && c->promote) {
        c->assign_due = true; /* raft_assign from the check handle, not from here */
        return;
    }
    if (status == RAFT_NOCONNECTION && c->promoting) {
        /* libraft gave up catching the new server up: it stays a non-voter. */
        node__error(c->node, NODE_ERAFT,
                    "server %" PRIu64 " did not catch up (is it running and reachable?); it "
                    "stays a non-voter: start it and add it again to promote it",
                    c->id);
    } else if (status != 0) {
        node__error(c->node, -node__from_raft(status), "membership change: %s",
                    raft_strerror(status));
    }
    node__change_finish(c, node__from_raft(status));
}

static int change_begin(struct node *n, uint64_t id, node_change_cb cb, void *data,
                        struct node_change **out)
{
    if (n->closing) {
        return -NODE_ESHUTDOWN;
    }
    if (n->change != NULL) {
        return -NODE_EBUSY;
    }
    struct node_change *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return -NODE_ENOMEM;
    }
    c->node = n;
    c->cb = cb;
    c->data = data;
    c->id = id;
    *out = c;
    return 0;
}

/* After submitting: 0 and remember the change, or the mapped error. */
static int change_submitted(struct node *n, struct node_change *c, int rv, const char *what)
{
    if (rv != 0) {
        int err = node__from_raft(rv);
        node__error(n, -err, "%s: %s", what, raft_errmsg(&n->raft));
        free(c);
        return err;
    }
    n->change = c;
    return 0;
}

/* Server `id` in the current configuration, or NULL. */
static const struct raft_server *configured_server(const struct node *n, uint64_t id)
{
    const struct raft_configuration *c = &n->raft.configuration;
    for (unsigned i = 0; i < c->n; i++) {
        if (c->servers[i].id == id) {
            return &c->servers[i];
        }
    }
    return NULL;
}

int node_add(struct node *n, uint64_t id, const char *address, node_change_cb cb, void *data)
{
    struct node_change *c = NULL;
    if (id == 0 || address == NULL || strlen(address) >= NODE_ADDRESS_MAX) {
        return -NODE_EINVAL;
    }
    int rv = change_begin(n, id, cb, data, &c);
    if (rv != 0) {
        return rv;
    }
    c->req.change.data = c;
    /* An earlier add whose promotion failed (the server was down or too slow to catch
     * up) leaves it a non-voter at the same address: adding it again promotes it. */
    const struct raft_server *s = configured_server(n, id);
    if (s != NULL && s->role != RAFT_VOTER && strcmp(s->address, address) == 0) {
        c->promoting = true;
        rv = raft_assign(&n->raft, &c->req.change, id, RAFT_VOTER, change_cb);
        return change_submitted(n, c, rv, "raft_assign");
    }
    c->promote = true;
    rv = raft_add(&n->raft, &c->req.change, id, address, change_cb);
    return change_submitted(n, c, rv, "raft_add");
}

int node_remove(struct node *n, uint64_t id, node_change_cb cb, void *data)
{
    struct node_change *c = NULL;
    if (id == 0) {
        return -NODE_EINVAL;
    }
    int rv = change_begin(n, id, cb, data, &c);
    if (rv != 0) {
        return rv;
    }
    c->req.change.data = c;
    rv = raft_remove(&n->raft, &c->req.change, id, change_cb);
    return change_submitted(n, c, rv, "raft_remove");
}

static void transfer_cb(struct raft_transfer *req)
{
    struct node_change *c = req->data;
    struct node *n = c->node;
    raft_id leader = 0;
    const char *address = NULL;
    raft_leader(&n->raft, &leader, &address);
    bool moved = raft_state(&n->raft) != RAFT_LEADER && (c->id == 0 || leader == c->id);
    node__change_finish(c, n->closing ? -NODE_ESHUTDOWN : moved ? 0 : -NODE_ETIMEDOUT);
}

int node_transfer(struct node *n, uint64_t id, node_change_cb cb, void *data)
{
    struct node_change *c = NULL;
    int rv = change_begin(n, id, cb, data, &c);
    if (rv != 0) {
        return rv;
    }
    c->req.transfer.data = c;
    rv = raft_transfer(&n->raft, &c->req.transfer, id, transfer_cb);
    return change_submitted(n, c, rv, "raft_transfer");
}

/* ---- Queries. ---- */

void node_leader(struct node *n, uint64_t *id, const char **address)
{
    raft_id leader = 0;
    const char *addr = NULL;
    if (n->started && !n->closing) {
        raft_leader(&n->raft, &leader, &addr);
    }
    *id = leader;
    if (address != NULL) {
        *address = addr;
    }
}

bool node_ready(struct node *n)
{
    return n->started && !n->closing && n->ready && raft_state(&n->raft) == RAFT_LEADER &&
           raft_current_term(&n->raft) == n->leader_term;
}

struct ledger *node_ledger(struct node *n)
{
    return n->ledger;
}

uint64_t node_id(const struct node *n)
{
    return n->id;
}

void node_set_lose_answers(struct node *n, bool on)
{
    if (on != n->lose_answers) {
        node__logf(n, "warn", "msg=\"losing the answers of committed batches\" on=%d", on);
    }
    n->lose_answers = on;
}

void node_set_clock_offset(struct node *n, int64_t offset_ms)
{
    if (offset_ms != n->clock_offset_ms) {
        node__logf(n, "warn", "msg=\"clock offset set\" offset_ms=%" PRId64, offset_ms);
    }
    n->clock_offset_ms = offset_ms;
}

void node_stats(struct node *n, struct node_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->term = raft_current_term(&n->raft);
    out->commit_index = raft_commit_index(&n->raft);
    out->last_applied = raft_last_applied(&n->raft);
    out->applied = n->fsm.applied;
    out->skipped = n->fsm.skipped;
    out->restores = n->fsm.restores;
    out->restores_skipped = n->fsm.restores_skipped;
    out->batches = n->batches;
    out->commands = n->commands;
    out->late_results = n->late_results;
    memcpy(out->batch_sizes, n->batch_sizes, sizeof(out->batch_sizes));
    out->state = raft_state(&n->raft);
    out->last_index = raft_last_index(&n->raft);
    out->peer_refused = node_transport_refused(&n->transport);
    out->clock_offset_ms = node__clock_offset_ms(n);
    out->clock_steps = n->clock.steps;
}

int node_peer_match(struct node *n, uint64_t id, uint64_t *match_index)
{
    /* libraft checks both: RAFT_NOTLEADER, or RAFT_BADID for an id not configured. */
    raft_index match = 0;
    int rv = raft_match_index(&n->raft, id, &match);
    if (rv == 0) {
        *match_index = match;
    }
    return node__from_raft(rv);
}

const char *node_errmsg(const struct node *n)
{
    return n->errmsg;
}
