/*
 * propose.c: proposals on the leader: the queue, group commit, batches in flight and
 * their results.
 *
 * Proposals: node_propose() copies commands into one bounded queue. A uv_check handle
 * runs after every poll phase, i.e. once per loop iteration after the I/O callbacks that
 * queued commands; it encodes the whole queue as ONE ledger batch, copies it into
 * raft_malloc'd memory and proposes it with ONE raft_apply (libraft fires the callback
 * after the first entry when given several buffers, so never more than one). A uv_idle
 * handle is started while commands wait, so a loop iteration never blocks in poll with
 * work queued from a timer.
 *
 * Results: libraft 0.22's legacy layer queues apply callbacks and fires them after the
 * whole commit step. The adapter keeps each entry's answers in a ring slot indexed by
 * Raft index (raft/fsm.h), so the callback copies its own entry's answers from
 * `result`; a slot that no longer holds its index fails the batch (NODE_EAPPLY).
 */
#include "raft/node_internal.h"

#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* One proposed entry, from raft_apply until its callback. */
struct node_batch {
    struct raft_apply req; /* req.data = this; req.index set by raft_apply */
    struct node *node;
    struct node_batch *prev, *next; /* in node->inflight, oldest first */
    size_t n_cmds;
    size_t n_props;
    struct node_prop *props;       /* n_props, owned */
    struct ledger_result *results; /* n_cmds, owned, filled in apply_cb */
};

/* ---- Proposals. ---- */

void node__kick(struct node *n)
{
    if (n->n_queued > 0 && n->handles && !n->closing) {
        int rv = uv_idle_start(&n->idle, node__idle_cb);
        assert(rv == 0); /* only fails on a closing handle or a NULL callback */
        (void)rv;
    }
}

void node__idle_cb(uv_idle_t *h)
{
    (void)h; /* only keeps poll from blocking while commands wait: see node__check_cb */
}

/*
 * Empty the queue into n->spare and return how many callers it held. Callbacks of those
 * callers may queue new commands, so they are answered from the spare array.
 */
static size_t queue_take(struct node *n)
{
    struct node_prop *taken = n->props;
    size_t count = n->n_props;
    n->props = n->spare;
    n->spare = taken;
    n->n_props = 0;
    n->n_queued = 0;
    return count;
}

void node__queue_fail(struct node *n, int status)
{
    size_t count = queue_take(n);
    for (size_t i = 0; i < count; i++) {
        n->spare[i].cb(n, n->spare[i].data, status, 0, NULL, 0);
    }
}

int node_propose(struct node *n, const struct ledger_cmd *cmds, size_t count, node_propose_cb cb,
                 void *data)
{
    if (n->closing) {
        return -NODE_ESHUTDOWN;
    }
    if (cmds == NULL || cb == NULL || count == 0 || count > NODE_QUEUE_MAX) {
        return -NODE_EINVAL;
    }
    /* A command that cannot be encoded is refused here, so every queued batch encodes.
     * Its arguments are left to the ledger, which judges them through the log: every
     * replica then records the same answer, and the request id stays bound to it. */
    for (size_t i = 0; i < count; i++) {
        if (!ledger_cmd_encodable(&cmds[i])) { /* ledger_cmd_check()'s -LEDGER_EDECODE */
            return -NODE_EINVAL;
        }
    }
    if (!n->started || raft_state(&n->raft) != RAFT_LEADER) {
        return -NODE_ENOTLEADER;
    }
    if (n->n_queued + count > NODE_QUEUE_MAX) {
        return -NODE_EBUSY;
    }
    /* Refused before it is in the log, so every replica stays deterministic: an entry once
     * proposed must apply everywhere, and the reserve is the room left for that. */
    if (!node__storage_allows(n)) {
        return -NODE_ESTORAGE;
    }
    memcpy(&n->queue[n->n_queued], cmds, count * sizeof(*cmds));
    n->props[n->n_props++] = (struct node_prop){cb, data, n->n_queued, count};
    n->n_queued += count;
    node__kick(n);
    return 0;
}

/*
 * Encode the queue into a raft_malloc'd buffer. Returns 0 or the error to answer every
 * caller with.
 */
static int queue_encode(struct node *n, int64_t stamp_ms, struct raft_buffer *out)
{
    void *enc = NULL;
    size_t len = 0;
    int rv = ledger_batch_encode(stamp_ms, n->queue, n->n_queued, &enc, &len);
    /* node_propose() let in only commands that encode. */
    assert(rv != -LEDGER_EINVAL);
    if (rv != 0) {
        return rv == -LEDGER_ETOOBIG ? -NODE_ETOOBIG : -NODE_ENOMEM;
    }
    assert(len % 8 == 0);
    out->base = raft_malloc(len);
    if (out->base == NULL) {
        free(enc);
        return -NODE_ENOMEM;
    }
    memcpy(out->base, enc, len);
    out->len = len;
    free(enc);
    return 0;
}

static void batch_free(struct node_batch *b)
{
    if (b != NULL) {
        free(b->props);
        free(b->results);
        free(b);
    }
}

static struct node_batch *batch_alloc(struct node *n)
{
    struct node_batch *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        return NULL;
    }
    b->props = malloc(n->n_props * sizeof(*b->props));
    b->results = calloc(n->n_queued, sizeof(*b->results));
    if (b->props == NULL || b->results == NULL) {
        batch_free(b);
        return NULL;
    }
    b->node = n;
    b->req.data = b;
    return b;
}

static void inflight_link(struct node *n, struct node_batch *b)
{
    b->prev = n->inflight_tail;
    b->next = NULL;
    if (n->inflight_tail != NULL) {
        n->inflight_tail->next = b;
    } else {
        n->inflight_head = b;
    }
    n->inflight_tail = b;
    n->n_inflight++;
}

void node__inflight_unlink(struct node *n, struct node_batch *b)
{
    if (b->prev != NULL) {
        b->prev->next = b->next;
    } else {
        n->inflight_head = b->next;
    }
    if (b->next != NULL) {
        b->next->prev = b->prev;
    } else {
        n->inflight_tail = b->prev;
    }
    b->prev = b->next = NULL;
    assert(n->n_inflight > 0);
    n->n_inflight--;
}

void node__batch_finish(struct node *n, struct node_batch *b, int status)
{
    for (size_t i = 0; i < b->n_props; i++) {
        const struct node_prop *p = &b->props[i];
        if (status == 0) {
            p->cb(n, p->data, 0, b->req.index, &b->results[p->first], p->n);
        } else {
            p->cb(n, p->data, status, 0, NULL, 0);
        }
    }
    batch_free(b);
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    struct node_batch *b = req->data;
    struct node *n = b->node;
    const struct node_apply_result *r = result;
    node__inflight_unlink(n, b);
    int err = 0;
    if (status != 0) {
        err = n->closing ? -NODE_ESHUTDOWN : -NODE_ELEADERSHIPLOST;
    } else if (n->lose_answers || r == NULL || r->index != req->index || r->status != 0 ||
               r->n != b->n_cmds) {
        /* The ring slot was reused (more than NODE_RESULT_RING entries in one commit
         * step) or the entry is not the batch we proposed. */
        n->late_results++;
        node__logf(n, "error",
                   "msg=\"entry applied without its results\" index=%" PRIu64 " status=%d",
                   (uint64_t)req->index, r ? r->status : 0);
        err = -NODE_EAPPLY;
    } else {
        memcpy(b->results, r->results, r->n * sizeof(*r->results));
    }
    node__batch_finish(n, b, err);
    node__kick(n);
}

void node__queue_flush(struct node *n)
{
    int64_t stamp_ms = node__clock_stamp(n);
    struct raft_buffer buf = {NULL, 0};
    int rv = queue_encode(n, stamp_ms, &buf);
    struct node_batch *b = rv == 0 ? batch_alloc(n) : NULL;
    if (rv == 0 && b == NULL) {
        rv = -NODE_ENOMEM;
    }
    if (rv == 0) {
        rv = raft_apply(&n->raft, &b->req, &buf, 1, apply_cb);
        if (rv != 0) {
            node__logf(n, "warn", "msg=\"raft_apply failed\" error=\"%s\"", raft_strerror(rv));
            rv = node__from_raft(rv);
        }
    }
    if (rv != 0) {
        raft_free(buf.base);
        batch_free(b);
        node__queue_fail(n, rv);
        return;
    }
    memcpy(b->props, n->props, n->n_props * sizeof(*b->props));
    b->n_props = n->n_props;
    b->n_cmds = n->n_queued;
    inflight_link(n, b);
    n->batches++;
    n->commands += n->n_queued;
    unsigned bucket = 0;
    while (bucket + 1 < NODE_BATCH_SIZE_BUCKETS && ((size_t)1 << bucket) < n->n_queued) {
        bucket++;
    }
    n->batch_sizes[bucket]++;
    n->n_queued = 0;
    n->n_props = 0;
}
