/*
 * hash.c: the HASH request, computed off the loop thread (see server_internal.h for how
 * the server is split).
 *
 * The one idea: a state hash walks every record of the ledger, which on a large ledger
 * takes long enough to delay heartbeats and every other client if the loop thread did
 * it. So the loop thread only freezes the state (ledger_snapshot_begin(): an LMDB read
 * transaction, which MDB_NOTLS lets another thread use) and libuv's thread pool walks
 * it (ledger_snapshot_hash(), the same walk as ledger_state_hash(), so the hash is the
 * one every replica computes at that index). The answer is appended on the loop thread
 * when the job ends. One job at a time per server: it holds a frozen view, which stops
 * the ledger's map from growing until it ends, and a thread of the pool raft_uv also
 * uses for its disk work.
 *
 * Lifetimes: the job holds a reference on its connection and counts as one of its
 * requests in flight; it also holds the server open (rpc__server_handle_done()), so
 * rpc_server_close() calls back, and the node closes its ledger, only after the pool is
 * done with the ledger's environment.
 */
#include "rpc/server_internal.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

struct rpc__hash_job {
    uv_work_t work;
    struct rpc__conn *conn;
    uint64_t seq;
    struct ledger_snapshot *snap;
    uint64_t applied_index;
    uint8_t hash[32];
    int rv; /* of ledger_snapshot_hash() */
};

/* On the thread pool: nothing here may touch loop state. */
static void hash_work_cb(uv_work_t *w)
{
    struct rpc__hash_job *job = w->data;
    job->rv = ledger_snapshot_hash(job->snap, job->hash);
}

static void hash_done_cb(uv_work_t *w, int status)
{
    struct rpc__hash_job *job = w->data;
    struct rpc__conn *c = job->conn;
    struct rpc_server *s = c->srv;
    assert(s->hash_job == job);
    (void)status; /* the job is never cancelled */
    ledger_snapshot_end(job->snap);
    s->hash_job = NULL;
    c->inflight--;
    if (!c->closing) {
        if (job->rv != 0) {
            rpc__answer_error(c, job->seq, RPC_EINTERNAL, ledger_strerror(job->rv), false);
        } else {
            struct rpc_response resp = rpc__answer_begin(job->seq);
            resp.u.hash.applied_index = job->applied_index;
            memcpy(resp.u.hash.state_hash, job->hash, sizeof(job->hash));
            resp.status = RPC_OK;
            rpc__answer(c, RPC_OP_HASH, &resp);
        }
        rpc__conn_backpressure_update(c);
    }
    free(job);
    rpc__conn_release(c);
    rpc__server_handle_done(s);
}

void rpc__hash_start(struct rpc__conn *c, const struct rpc_request *req)
{
    struct rpc_server *s = c->srv;
    if (s->hash_job != NULL) {
        rpc__answer_error(c, req->seq, RPC_EBUSY, "a state hash is being computed: retry", false);
        return;
    }
    struct rpc__hash_job *job = calloc(1, sizeof(*job));
    if (job == NULL) {
        rpc__answer_error(c, req->seq, RPC_EBUSY, "out of memory", false);
        return;
    }
    int rv = ledger_snapshot_begin(node_ledger(s->node), &job->snap);
    if (rv != 0) {
        free(job);
        rpc__answer_error(c, req->seq, RPC_EINTERNAL, ledger_strerror(rv), false);
        return;
    }
    job->conn = c;
    job->seq = req->seq;
    job->applied_index = ledger_snapshot_index(job->snap);
    job->work.data = job;
    rv = uv_queue_work(s->loop, &job->work, hash_work_cb, hash_done_cb);
    if (rv != 0) {
        ledger_snapshot_end(job->snap);
        free(job);
        rpc__answer_error(c, req->seq, RPC_EINTERNAL, uv_strerror(rv), false);
        return;
    }
    s->hash_job = job;
    s->open_handles++;
    c->refs++;
    c->inflight++;
}
