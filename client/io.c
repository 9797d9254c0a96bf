/*
 * io.c: the I/O thread of libtally: its loop, the calls it holds, and what it does with
 * the answers.
 *
 * One idea shapes this file: a single I/O thread owns everything that touches the network
 * (the socket, the frame reader, the sequence numbers, the table of requests awaiting an
 * answer, the retry timers), so none of that needs a lock. Callers of any thread only
 * build a `struct call` (validated and fully copied), append it to a submit list under the
 * client's mutex and wake the I/O thread through an eventfd. The I/O thread moves calls
 * through three places: the pending list (waiting for a connection or a retry timer), the
 * sent table (keyed by the seq of their last send) and, always, a deadline heap. A call
 * leaves the client exactly once, through finish(): with the cluster's answer, or with
 * UNAVAILABLE when the heap says its deadline passed. Blocking calls are the asynchronous
 * ones plus a condition variable.
 *
 * Retrying is safe because writes carry a request id that the ledger deduplicates: on a
 * lost connection every sent call simply goes back to the pending list and is sent again
 * (new seq, same id) on the next connection. NOT_LEADER answers move the connection to the
 * leader they name if it is one of the configured endpoints (the token goes nowhere else),
 * else to the next endpoint; "no quorum" answers back off and, when they repeat, rotate to
 * another endpoint. A reserve that ends UNAVAILABLE after it was sent at least once is followed by
 * a background void of its id, with a longer deadline of its own.
 *
 * The connection itself (connect, TLS, HELLO, reading and writing bytes) is conn.c's.
 */
#define _GNU_SOURCE
#include "client/tally.h"
#include "wire/wire.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "client/client_internal.h"

/* ---- The deadline heap (I/O thread). ---- */

static bool heap_less(const struct tally *c, size_t a, size_t b)
{
    return c->heap[a]->deadline_at_ms < c->heap[b]->deadline_at_ms;
}

static void heap_swap(struct tally *c, size_t a, size_t b)
{
    struct call *t = c->heap[a];
    c->heap[a] = c->heap[b];
    c->heap[b] = t;
    c->heap[a]->heap_idx = a;
    c->heap[b]->heap_idx = b;
}

static void heap_up(struct tally *c, size_t i)
{
    while (i > 0 && heap_less(c, i, (i - 1) / 2)) {
        heap_swap(c, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(struct tally *c, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < c->heap_len && heap_less(c, l, m)) {
            m = l;
        }
        if (r < c->heap_len && heap_less(c, r, m)) {
            m = r;
        }
        if (m == i) {
            return;
        }
        heap_swap(c, i, m);
        i = m;
    }
}

static void heap_push(struct tally *c, struct call *call)
{
    /* Room is reserved: callers' calls are bounded by max_inflight, background voids too. */
    assert(c->heap_len < c->heap_cap);
    call->heap_idx = c->heap_len;
    c->heap[c->heap_len++] = call;
    heap_up(c, call->heap_idx);
}

static void heap_remove(struct tally *c, struct call *call)
{
    size_t i = call->heap_idx;
    assert(i < c->heap_len && c->heap[i] == call);
    c->heap_len--;
    if (i != c->heap_len) {
        c->heap[i] = c->heap[c->heap_len];
        c->heap[i]->heap_idx = i;
        heap_down(c, i);
        heap_up(c, i);
    }
    call->heap_idx = SIZE_MAX;
}

/* ---- The pending list and the sent table (I/O thread). ---- */

static void pending_push(struct tally *c, struct call *call, bool front)
{
    assert(call->where == WHERE_NONE);
    call->where = WHERE_PENDING;
    call->prev = call->next = NULL;
    if (c->pending_head == NULL) {
        c->pending_head = c->pending_tail = call;
    } else if (front) {
        call->next = c->pending_head;
        c->pending_head->prev = call;
        c->pending_head = call;
    } else {
        call->prev = c->pending_tail;
        c->pending_tail->next = call;
        c->pending_tail = call;
    }
}

static void pending_remove(struct tally *c, struct call *call)
{
    assert(call->where == WHERE_PENDING);
    if (call->prev != NULL) {
        call->prev->next = call->next;
    } else {
        c->pending_head = call->next;
    }
    if (call->next != NULL) {
        call->next->prev = call->prev;
    } else {
        c->pending_tail = call->prev;
    }
    call->prev = call->next = NULL;
    call->where = WHERE_NONE;
}

static void table_insert(struct tally *c, struct call *call)
{
    assert(call->where == WHERE_NONE);
    struct call **bucket = &c->table[call->req.seq & c->table_mask];
    call->hnext = *bucket;
    *bucket = call;
    call->where = WHERE_SENT;
    c->conn.n_sent++;
}

static struct call *table_find(struct tally *c, uint64_t seq)
{
    for (struct call *x = c->table[seq & c->table_mask]; x != NULL; x = x->hnext) {
        if (x->req.seq == seq) {
            return x;
        }
    }
    return NULL;
}

static void table_remove(struct tally *c, struct call *call)
{
    assert(call->where == WHERE_SENT);
    struct call **p = &c->table[call->req.seq & c->table_mask];
    while (*p != call) {
        assert(*p != NULL);
        p = &(*p)->hnext;
    }
    *p = call->hnext;
    call->hnext = NULL;
    call->where = WHERE_NONE;
    assert(c->conn.n_sent > 0);
    c->conn.n_sent--;
}

/* Take `call` out of the pending list or the sent table, wherever it is. */
static void call_unlink(struct tally *c, struct call *call)
{
    if (call->where == WHERE_PENDING) {
        pending_remove(c, call);
    } else if (call->where == WHERE_SENT) {
        table_remove(c, call);
    }
}

/* ---- Backoff. ---- */

static uint64_t rng_next(struct tally *c)
{
    /* xorshift64*: jitter only, never security. */
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return c->rng * 2685821657736338717ULL;
}

/* Delay before attempt `step` (0: none): min doubling to max, jittered into [d/2, d]. */
static int64_t backoff_ms(struct tally *c, uint32_t step)
{
    if (step == 0) {
        return 0;
    }
    int64_t d = c->backoff_min_ms;
    for (uint32_t i = 1; i < step && d < c->backoff_max_ms; i++) {
        d *= 2;
    }
    if (d > c->backoff_max_ms) {
        d = c->backoff_max_ms;
    }
    int64_t half = d / 2;
    return half + (int64_t)(rng_next(c) % (uint64_t)(d - half + 1));
}

/* ---- Finishing calls (I/O thread). ---- */

/* splitmix64's finalizer: every input bit moves about half the output bits. */
static uint64_t mix64(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Every byte of the id counts: gateways often number ids (a prefix and a counter in
 * the last bytes), and a hash blind to some bytes put all of one client's ids in one
 * slot, so each grant evicted the one before. */
static size_t granted_set(const uint8_t *id)
{
    uint64_t a, b;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    return (size_t)(mix64(a ^ mix64(b)) % GRANTED_SETS);
}

/* The way of `id` in set `s` (its set, granted_set(id)), or -1. */
static int granted_way(const struct tally *c, size_t s, const uint8_t *id)
{
    /* An empty way is all zeros: an all-zero id must not match it. */
    static const uint8_t zero[LEDGER_REQUEST_ID_SIZE];
    if (memcmp(id, zero, sizeof(zero)) == 0) {
        return -1;
    }
    for (int w = 0; w < GRANTED_WAYS; w++) {
        if (memcmp(c->granted[s][w], id, LEDGER_REQUEST_ID_SIZE) == 0) {
            return w;
        }
    }
    return -1;
}

static void granted_remember(struct tally *c, const uint8_t *id)
{
    size_t s = granted_set(id);
    int w = granted_way(c, s, id);
    uint8_t (*set)[LEDGER_REQUEST_ID_SIZE] = c->granted[s];
    /* Newest first: shift the newer ones over the id's old place (or the oldest). */
    int last = w >= 0 ? w : GRANTED_WAYS - 1;
    memmove(set[1], set[0], (size_t)last * LEDGER_REQUEST_ID_SIZE);
    memcpy(set[0], id, LEDGER_REQUEST_ID_SIZE);
}

static bool granted_seen(const struct tally *c, const uint8_t *id)
{
    return granted_way(c, granted_set(id), id) >= 0;
}

static void bg_void_start(struct tally *c, const struct call *reserve, int64_t now_ms);
static void conn_drop(struct tally *c, int64_t now_ms, bool connect_failed, const char *why);

/* Void the id of reserve `call`, whose outcome the caller will not learn, if it was sent
 * and this client has not seen it granted (a resubmission of a held grant). */
static void void_unknown_outcome(struct tally *c, const struct call *call, int64_t now_ms)
{
    if (call->attempts == 0) {
        return;
    }
    if (granted_seen(c, call->req.u.write.request_id)) {
        client__stat_add(&c->stats.voids_skipped, 1);
    } else {
        bg_void_start(c, call, now_ms);
    }
}

/*
 * Deliver the final answer of `call` and free it. `r` is the answer (the I/O thread's);
 * query outputs were already written into the caller's memory. Applies fail-open and
 * starts the background void of an UNAVAILABLE reserve.
 */
static void finish(struct tally *c, struct call *call, struct tally_result *r, int64_t now_ms)
{
    call_unlink(c, call);
    heap_remove(c, call);
    r->attempts = call->attempts;
    if (call->kind == CALL_BG_VOID) {
        bool done = r->outcome == TALLY_GRANTED || r->error == TALLY_ERESOLVED ||
                    r->error == TALLY_ENOTFOUND;
        client__stat_add(done ? &c->stats.voids_done : &c->stats.voids_failed, 1);
        assert(c->n_bg > 0);
        c->n_bg--;
        free(call);
        return;
    }
    const uint8_t *id = call->req.u.write.request_id;
    if (call->kind == CALL_RESERVE && r->outcome == TALLY_GRANTED) {
        granted_remember(c, id);
    }
    if (call->kind == CALL_RESERVE && r->outcome == TALLY_ERROR &&
        (r->error == TALLY_EPROTO || r->error == TALLY_EINTERNAL)) {
        /* The node may have granted it and lost or garbled the answer: the caller is told
         * it failed, so no hold may stay. */
        void_unknown_outcome(c, call, now_ms);
    }
    if (r->outcome == TALLY_UNAVAILABLE) {
        client__stat_add(&c->stats.unavailable, 1);
        if (call->kind == CALL_RESERVE && r->error != TALLY_ECLOSED) {
            void_unknown_outcome(c, call, now_ms);
            if (c->fail_open) {
                r->outcome = TALLY_GRANTED;
                r->failed_open = 1;
                client__stat_add(&c->stats.failed_open, 1);
            }
        }
    }
    struct waiter *w = call->waiter;
    tally_cb cb = call->cb;
    void *cb_arg = call->cb_arg;
    if (w != NULL) {
        *call->res = *r;
    }
    free(call);

    pthread_mutex_lock(&c->mu);
    assert(c->n_calls > 0);
    c->n_calls--;
    if (c->n_room_waiters > 0) {
        pthread_cond_signal(&c->room_cond);
    }
    if (w != NULL) {
        w->done = true;
        pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&c->mu);
    if (cb != NULL) {
        cb(cb_arg, r); /* without the lock: it may submit more calls */
    }
}

/* End `call` with UNAVAILABLE (or `code`), its last failure in the message. */
static void finish_unavailable(struct tally *c, struct call *call, int code, int64_t now_ms)
{
    struct tally_result r;
    const char *why = call->why[0] != '\0'     ? call->why
                      : c->conn_why[0] != '\0' ? c->conn_why
                                               : "not sent";
    /* A certificate that did not verify is a configuration error an operator must see,
     * even when the last attempt failed otherwise (another endpoint down). */
    const char *tls = code == TALLY_EUNAVAILABLE && c->tls_verify_why[0] != '\0' &&
                              strcmp(why, c->tls_verify_why) != 0
                          ? c->tls_verify_why
                          : "";
    client__result_init(&r, call);
    client__result_fail(&r, TALLY_UNAVAILABLE, code, "%s (%s%s%s)",
                        code == TALLY_ECLOSED ? "the client is closing"
                                              : "no answer before the deadline",
                        tls, tls[0] != '\0' ? "; last: " : "", why);
    finish(c, call, &r, now_ms);
}

static void finish_error(struct tally *c, struct call *call, int code, const char *message,
                         int64_t now_ms)
{
    struct tally_result r;
    client__result_init(&r, call);
    client__result_fail(&r, code == TALLY_EUNAVAILABLE ? TALLY_UNAVAILABLE : TALLY_ERROR, code,
                        "%s", message);
    finish(c, call, &r, now_ms);
}

/* A background void's delay before try `step` + 1: VOID_BACKOFF_MIN_MS doubling to
 * VOID_BACKOFF_MAX_MS. Not jittered: at most one void per UNAVAILABLE reserve, and the
 * server answers them in one batch. */
static int64_t void_backoff_ms(uint32_t step)
{
    int64_t d = VOID_BACKOFF_MIN_MS;
    for (uint32_t i = 1; i < step && d < VOID_BACKOFF_MAX_MS; i++) {
        d *= 2;
    }
    return d < VOID_BACKOFF_MAX_MS ? d : VOID_BACKOFF_MAX_MS;
}

/* Put a call that failed retryably back in the pending list, to be sent after a delay. */
static void requeue(struct tally *c, struct call *call, bool backoff, int64_t now_ms,
                    const char *why)
{
    call_unlink(c, call);
    client__copy_text(call->why, sizeof(call->why), why);
    call->next_try_at_ms = now_ms;
    if (backoff && call->kind == CALL_BG_VOID) {
        call->next_try_at_ms += void_backoff_ms(++call->backoff_step);
    } else if (backoff) {
        call->next_try_at_ms += backoff_ms(c, ++call->backoff_step);
    }
    pending_push(c, call, false);
}

/* Queue a void of `reserve`'s request id. It has no deadline: it is retried with capped
 * backoff until the cluster answers it or the client closes, so a hold committed after a
 * long outage is still voided. At most max_inflight of them wait; past that the new one
 * is dropped (voids_failed) and its hold, if it committed, ends at its ttl, released if
 * the ledger found it unconfirmed (docs/ledger.md). */
static void bg_void_start(struct tally *c, const struct call *reserve, int64_t now_ms)
{
    if (c->n_bg >= c->max_inflight) {
        client__stat_add(&c->stats.voids_failed, 1); /* dropped: the hold expires at its ttl */
        return;
    }
    struct call *v = calloc(1, sizeof(*v));
    if (v == NULL) {
        client__stat_add(&c->stats.voids_failed, 1);
        return;
    }
    v->kind = CALL_BG_VOID;
    v->heap_idx = SIZE_MAX;
    v->req.op = RPC_OP_WRITE;
    v->req.u.write.type = LEDGER_CMD_VOID;
    memcpy(v->req.u.write.request_id, reserve->req.u.write.request_id, LEDGER_REQUEST_ID_SIZE);
    v->deadline_at_ms = INT64_MAX;
    v->next_try_at_ms = now_ms;
    c->n_bg++;
    heap_push(c, v);
    pending_push(c, v, false);
    client__stat_add(&c->stats.voids_queued, 1);
}

/* ---- Answers (I/O thread). ---- */

static void answer_ok(struct tally *c, struct call *call, const struct rpc_response *resp,
                      int64_t now_ms)
{
    struct tally_result r;
    char why[WHY_MAX];
    if (client__answer_matches(call, resp, why, sizeof(why)) != 0) {
        char msg[WHY_MAX + RPC_ADDRESS_MAX + 16];
        snprintf(msg, sizeof(msg), "%s: %s", c->conn.target, why);
        finish_error(c, call, TALLY_EPROTO, msg, now_ms);
        conn_drop(c, now_ms, false, msg);
        return;
    }
    client__result_init(&r, call);
    if (call->req.op != RPC_OP_WRITE) {
        client__result_answered(&r, TALLY_GRANTED); /* a write's outcome is its result's */
    }
    if (client__answer_payload(call, resp, &r) != 0) {
        finish_error(c, call, TALLY_EPROTO, "the server answered more items than asked for",
                     now_ms);
        return;
    }
    /* A background void whose reserve may still be on its way: look again a bit later. */
    if (call->kind == CALL_BG_VOID && r.error == TALLY_ENOTFOUND &&
        call->notfound_retries < VOID_NOTFOUND_RETRIES &&
        now_ms + VOID_NOTFOUND_DELAY_MS < call->deadline_at_ms) {
        call->notfound_retries++;
        call_unlink(c, call);
        call->next_try_at_ms = now_ms + VOID_NOTFOUND_DELAY_MS;
        pending_push(c, call, false);
        return;
    }
    finish(c, call, &r, now_ms);
}

/* Whether `address` ("host:port") names configured endpoint `ep`: the same port, and the
 * same host but for case. */
static bool endpoint_is(const struct endpoint *ep, const char *address)
{
    struct endpoint named;
    return client__endpoint_parse(address, strlen(address), &named) == 0 &&
           strcasecmp(named.host, ep->host) == 0 && atoi(named.port) == atoi(ep->port);
}

/*
 * After NOT_LEADER naming `address`: connect next to it if it is one of the configured
 * endpoints (counted as a redirect), else, like after any other failure, to the next
 * endpoint in turn. A node's answer is not trusted to send the token elsewhere. Appends
 * to `why` (size bytes) when the address is not followed.
 */
static void follow_leader(struct tally *c, const char *address, char *why, size_t size)
{
    if (address[0] == '\0' || strcmp(address, c->conn.target) == 0) {
        return;
    }
    for (uint32_t i = 0; i < c->n_endpoints; i++) {
        if (endpoint_is(&c->endpoints[i], address)) {
            client__stat_add(&c->stats.redirects, 1);
            client__copy_text(c->redirect, sizeof(c->redirect), c->endpoints[i].text);
            return;
        }
    }
    size_t len = strlen(why);
    snprintf(why + len, size - len, " (leader %.*s is not a configured endpoint: not followed)",
             (int)WHY_MESSAGE_MAX / 2, address);
}

/* Handle one decoded answer to a call (the call is in the sent table). */
static void answer(struct tally *c, struct call *call, const struct rpc_response *resp,
                   int64_t now_ms)
{
    char why[WHY_MAX];
    snprintf(why, sizeof(why), "%s: %s%s%.*s", c->conn.target, rpc_status_name(resp->status),
             resp->message[0] != '\0' ? ": " : "", (int)WHY_MESSAGE_MAX, resp->message);
    switch (resp->status) {
    case RPC_OK:
        c->conn_failures = 0;
        c->conn.unavailable_streak = 0;
        answer_ok(c, call, resp, now_ms);
        return;
    case RPC_ENOTLEADER:
        follow_leader(c, resp->leader_address, why, sizeof(why));
        requeue(c, call, false, now_ms, why);
        conn_drop(c, now_ms, false, why);
        return;
    case RPC_EUNKNOWN:
        if (call->resend_unsafe) {
            finish_error(c, call, TALLY_EUNAVAILABLE, "the outcome is unknown", now_ms);
            return;
        }
        /* fallthrough */
    case RPC_EUNAVAILABLE:
        if (strncmp(resp->message, RPC_REASON_STORAGE ":", sizeof(RPC_REASON_STORAGE)) == 0) {
            /* Nothing was proposed, and space returns only by an operator's hand: waiting
             * out the deadline would only hold the caller. */
            finish_error(c, call, TALLY_EUNAVAILABLE, why, now_ms);
            return;
        }
        requeue(c, call, true, now_ms, why);
        if (++c->conn.unavailable_streak >= UNAVAILABLE_STREAK_ROTATE) {
            conn_drop(c, now_ms, false, why);
        }
        return;
    case RPC_ESHUTDOWN:
        requeue(c, call, true, now_ms, why);
        conn_drop(c, now_ms, false, why);
        return;
    case RPC_EBUSY:
        requeue(c, call, true, now_ms, why);
        return;
    case RPC_EPROTO:
    case RPC_ETOOBIG:
        finish_error(c, call, client__error_of_status(resp->status), why, now_ms);
        conn_drop(c, now_ms, false, why); /* the server closes it too */
        return;
    default:
        finish_error(c, call, client__error_of_status(resp->status), why, now_ms);
        return;
    }
}

/* Fail every call not yet answered with `code` (EAUTH: the token is wrong everywhere). */
static void fail_all(struct tally *c, int code, const char *message, int64_t now_ms)
{
    while (c->pending_head != NULL) {
        finish_error(c, c->pending_head, code, message, now_ms);
    }
    for (size_t i = 0; i <= c->table_mask; i++) {
        while (c->table[i] != NULL) {
            finish_error(c, c->table[i], code, message, now_ms);
        }
    }
}

static void hello_answer(struct tally *c, const struct rpc_response *resp, int64_t now_ms)
{
    char why[WHY_MAX];
    if (resp->status == RPC_OK) {
        c->conn.state = CONN_READY;
        c->conn.unavailable_streak = 0;
        c->conn_why[0] = '\0';
        client__stat_add(&c->stats.connects, 1);
        __atomic_store_n(&c->stats.connected, 1, __ATOMIC_RELAXED);
        return;
    }
    snprintf(why, sizeof(why), "%s refused HELLO: %s%s%.*s", c->conn.target,
             rpc_status_name(resp->status), resp->message[0] != '\0' ? ": " : "",
             (int)WHY_MESSAGE_MAX, resp->message);
    if (resp->status == RPC_EAUTH) {
        /* Not retried: a wrong token stays wrong. Every waiting call learns it now. */
        fail_all(c, TALLY_EAUTH, why, now_ms);
    }
    conn_drop(c, now_ms, false, why);
}

/* One frame from the server (the connection's frame report; `arg` is the client). */
static void handle_frame(void *arg, const uint8_t *body, size_t len, int64_t now_ms)
{
    struct tally *c = arg;
    uint64_t seq;
    char why[RPC_MESSAGE_MAX + 1] = "";
    if (rpc_response_seq(body, len, &seq) != 0) {
        conn_drop(c, now_ms, false, "malformed frame from the server");
        return;
    }
    struct rpc_response resp;
    if (c->conn.state == CONN_HELLO) {
        if (seq != c->conn.hello_seq ||
            rpc_response_decode(body, len, RPC_OP_HELLO, &resp, why) != 0) {
            conn_drop(c, now_ms, false, "malformed answer to HELLO");
            return;
        }
        hello_answer(c, &resp, now_ms);
        rpc_response_free(&resp);
        return;
    }
    struct call *call = table_find(c, seq);
    if (call == NULL) {
        return; /* the answer to a call whose deadline passed */
    }
    if (rpc_response_decode(body, len, call->req.op, &resp, why) != 0) {
        /* Not an answer to this call's op (or no answer at all): the call fails, it is
         * not resent to a server that answers something else. */
        char msg[WHY_MAX];
        snprintf(msg, sizeof(msg), "malformed answer from %s: %.*s", c->conn.target,
                 (int)WHY_MESSAGE_MAX, why);
        finish_error(c, call, TALLY_EPROTO, msg, now_ms);
        conn_drop(c, now_ms, false, msg);
        return;
    }
    answer(c, call, &resp, now_ms);
    rpc_response_free(&resp);
}

/*
 * Close the connection (if any) and decide where and when to connect next. Calls that
 * were sent on it go back to the pending list: a write is resent with the same id. With
 * `connect_failed` and more addresses of the same target left, the next one is tried at
 * once; otherwise the client moves to the redirect target or the next endpoint, after a
 * backoff that grows with consecutive failures.
 */
static void conn_drop(struct tally *c, int64_t now_ms, bool connect_failed, const char *why)
{
    struct conn *k = &c->conn;
    client__copy_text(c->conn_why, sizeof(c->conn_why), why);
    if (k->state == CONN_READY) {
        client__stat_add(&c->stats.reconnects, 1);
    }
    __atomic_store_n(&c->stats.connected, 0, __ATOMIC_RELAXED);
    client__conn_close(k);
    for (size_t i = 0; i <= c->table_mask; i++) {
        while (c->table[i] != NULL) {
            struct call *call = c->table[i];
            if (call->resend_unsafe) {
                finish_error(c, call, TALLY_EUNAVAILABLE,
                             "the connection was lost: the outcome is unknown", now_ms);
                continue;
            }
            table_remove(c, call);
            client__copy_text(call->why, sizeof(call->why), why);
            call->next_try_at_ms = now_ms;
            pending_push(c, call, true);
        }
    }
    assert(k->n_sent == 0);
    if (connect_failed && k->addr_next != NULL && c->redirect[0] == '\0') {
        c->reconnect_at_ms = now_ms; /* another address of the same name */
        return;
    }
    client__conn_forget_addrs(k);
    if (c->redirect[0] == '\0') {
        c->ep_idx = (c->ep_idx + 1) % c->n_endpoints;
    }
    c->reconnect_at_ms = now_ms + backoff_ms(c, c->conn_failures);
    if (c->conn_failures < 32) {
        c->conn_failures++;
    }
}

/* Remember the current endpoint for tally_stats(). */
static void set_endpoint_now(struct tally *c, const char *target)
{
    pthread_mutex_lock(&c->mu);
    client__copy_text(c->endpoint_now, sizeof(c->endpoint_now), target);
    pthread_mutex_unlock(&c->mu);
}

/* Resolve the next target (the redirect, else the current endpoint). Returns 0 or -1. */
static int conn_resolve(struct tally *c, char *why, size_t why_size)
{
    struct endpoint ep;
    if (c->redirect[0] != '\0') {
        int rc = client__endpoint_parse(c->redirect, strlen(c->redirect), &ep);
        c->redirect[0] = '\0';
        if (rc != 0) {
            snprintf(why, why_size, "the leader's address \"%s\" is not host:port", ep.text);
            return -1;
        }
    } else {
        ep = c->endpoints[c->ep_idx];
    }
    set_endpoint_now(c, ep.text);
    return client__conn_resolve(&c->conn, &ep, why, why_size);
}

/* Start a non-blocking connect to the next address. */
static void conn_start(struct tally *c, int64_t now_ms)
{
    struct conn *k = &c->conn;
    char why[WHY_MAX];
    assert(k->state == CONN_DOWN && k->fd < 0);
    c->tried_once = true;
    if (k->addr_next == NULL && conn_resolve(c, why, sizeof(why)) != 0) {
        conn_drop(c, now_ms, false, why);
        return;
    }
    client__conn_connect(k, now_ms);
    if (k->state == CONN_CONNECTING) {
        k->phase_deadline_ms = now_ms + c->connect_timeout_ms;
    }
}

/* The connection is up (its report; `arg` is the client): say HELLO. */
static void io_conn_up(void *arg, int64_t now_ms)
{
    struct tally *c = arg;
    if (c->conn.ssl != NULL) {
        c->tls_verify_why[0] = '\0'; /* this server's certificate verified */
    }
    client__conn_send_hello(&c->conn, c->next_seq++, now_ms);
}

/* The connection failed (its report; `arg` is the client). */
static void io_conn_failed(void *arg, int64_t now_ms, unsigned fail, const char *why)
{
    struct tally *c = arg;
    if (fail & CONN_FAIL_VERIFY) {
        client__copy_text(c->tls_verify_why, sizeof(c->tls_verify_why), why);
    }
    conn_drop(c, now_ms, (fail & (CONN_FAIL_CONNECT | CONN_FAIL_HANDSHAKE)) != 0, why);
}

static const struct conn_ops io_conn_ops = {
    .up = io_conn_up, .failed = io_conn_failed, .frame = handle_frame};

void client__io_init(struct tally *c)
{
    client__conn_init(&c->conn, c, &io_conn_ops, c);
}

/* Resolve the next target (the redirect, else the current endpoint). Returns 0 or -1. */
/* ---- Sending (I/O thread). ---- */

/* Encode `call` with a fresh seq and move it to the sent table. Returns 0 or -1 if the
 * call was finished instead (it cannot be encoded). */
static int send_call(struct tally *c, struct call *call, int64_t now_ms)
{
    struct conn *k = &c->conn;
    size_t before = k->out.len;
    call->req.seq = c->next_seq++;
    int rc = rpc_request_encode(&k->out, &call->req);
    bool over_frame = rc == 0 && k->out.len - before - RPC_FRAME_HEADER > c->max_frame_bytes;
    if (rc != 0 || over_frame) {
        k->out.failed = false;
        k->out.len = before;
        finish_error(c, call,
                     over_frame              ? TALLY_ETOOBIG
                     : rc == -WIRE_ENOMEM ? TALLY_ENOMEM
                                             : TALLY_EINVAL,
                     over_frame              ? "the request is larger than max_frame_bytes"
                     : rc == -WIRE_ENOMEM ? "out of memory encoding the request"
                                             : "the request is out of range",
                     now_ms);
        return -1;
    }
    pending_remove(c, call);
    table_insert(c, call);
    call->attempts++;
    snprintf(call->why, sizeof(call->why), "sent to %s, not answered", k->target);
    client__stat_add(&c->stats.requests_sent, 1);
    if (call->attempts > 1) {
        client__stat_add(&c->stats.retries, 1);
    }
    if (k->silent_since_ms == 0) {
        k->silent_since_ms = now_ms;
    }
    return 0;
}

/* Send every pending call that is due. Returns the earliest later retry time (INT64_MAX
 * if none). */
static int64_t send_due(struct tally *c, int64_t now_ms)
{
    int64_t next_ms = INT64_MAX;
    struct call *call = c->pending_head;
    while (call != NULL) {
        struct call *next = call->next;
        if (call->next_try_at_ms > now_ms) {
            if (call->next_try_at_ms < next_ms) {
                next_ms = call->next_try_at_ms;
            }
        } else {
            send_call(c, call, now_ms);
        }
        call = next;
    }
    return next_ms;
}

/* ---- The I/O loop. ---- */

/* Move submitted calls into the I/O thread's structures. Returns whether closing. */
static bool take_submissions(struct tally *c)
{
    uint64_t drained;
    if (read(c->wake_fd, &drained, sizeof(drained)) < 0) {
        /* EAGAIN: nothing to drain; the submit list is read under the lock anyway */
    }
    pthread_mutex_lock(&c->mu);
    struct call *list = c->submit_head;
    c->submit_head = c->submit_tail = NULL;
    c->wake_pending = false;
    bool closing = c->closing;
    pthread_mutex_unlock(&c->mu);
    while (list != NULL) {
        struct call *call = list;
        list = call->next;
        call->where = WHERE_NONE;
        heap_push(c, call);
        pending_push(c, call, false);
    }
    return closing;
}

/* Finish every call whose deadline has passed. */
static void expire_calls(struct tally *c, int64_t now_ms)
{
    while (c->heap_len > 0 && c->heap[0]->deadline_at_ms <= now_ms) {
        finish_unavailable(c, c->heap[0], TALLY_EUNAVAILABLE, now_ms);
    }
}

/* Connect when there is work (or once at start); time out slow connects and silence. */
static void manage_connection(struct tally *c, int64_t now_ms)
{
    struct conn *k = &c->conn;
    char why[WHY_MAX];
    switch (k->state) {
    case CONN_DOWN:
        if ((c->pending_head != NULL || !c->tried_once) && now_ms >= c->reconnect_at_ms) {
            conn_start(c, now_ms);
        }
        break;
    case CONN_CONNECTING:
    case CONN_TLS:
    case CONN_HELLO:
        /* One time-out covers the TCP connect, the TLS handshake and HELLO. */
        if (now_ms >= k->phase_deadline_ms) {
            snprintf(why, sizeof(why), "%s: no %s within %lld ms", k->target,
                     k->state == CONN_CONNECTING ? "connection"
                     : k->state == CONN_TLS      ? "TLS handshake"
                                                 : "answer to HELLO",
                     (long long)c->connect_timeout_ms);
            conn_drop(c, now_ms, k->state != CONN_HELLO, why);
        }
        break;
    case CONN_READY:
        if (k->silent_since_ms != 0 && now_ms - k->silent_since_ms >= c->silence_ms) {
            snprintf(why, sizeof(why), "%s: no answer for %lld ms", k->target,
                     (long long)(now_ms - k->silent_since_ms));
            conn_drop(c, now_ms, false, why);
        }
        break;
    }
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* How long poll() may sleep: until the next deadline, retry, reconnect or time-out. */
static int poll_timeout(const struct tally *c, int64_t now_ms, int64_t next_try_ms)
{
    const struct conn *k = &c->conn;
    int64_t at = INT64_MAX;
    if (c->heap_len > 0) {
        at = c->heap[0]->deadline_at_ms;
    }
    if (k->state == CONN_READY) {
        at = min64(at, next_try_ms);
        if (k->silent_since_ms != 0) {
            at = min64(at, k->silent_since_ms + c->silence_ms);
        }
    } else if (k->state == CONN_DOWN) {
        if (c->pending_head != NULL) {
            at = min64(at, c->reconnect_at_ms);
        }
    } else {
        at = min64(at, k->phase_deadline_ms);
    }
    if (at == INT64_MAX) {
        return -1;
    }
    int64_t wait_ms = at - now_ms;
    if (wait_ms < 0) {
        return 0;
    }
    return wait_ms > 60000 ? 60000 : (int)wait_ms;
}

/* On close: every call still in the client ends with ECLOSED; background voids drop. */
static void drain_on_close(struct tally *c, int64_t now_ms)
{
    while (c->heap_len > 0) {
        struct call *call = c->heap[0];
        if (call->kind == CALL_BG_VOID) {
            call_unlink(c, call);
            heap_remove(c, call);
            c->n_bg--;
            client__stat_add(&c->stats.voids_failed, 1);
            free(call);
        } else {
            finish_unavailable(c, call, TALLY_ECLOSED, now_ms);
        }
    }
}

void *client__io_main(void *arg)
{
    struct tally *c = arg;
    struct conn *k = &c->conn;
    for (;;) {
        int64_t now_ms = client__mono_ms();
        if (take_submissions(c)) {
            break;
        }
        expire_calls(c, now_ms);
        manage_connection(c, now_ms);
        int64_t next_try_ms = INT64_MAX;
        if (k->state == CONN_READY) {
            next_try_ms = send_due(c, now_ms);
            if (k->out.len > k->out_off) {
                client__conn_flush(k, now_ms);
            }
        }
        struct pollfd fds[2] = {{.fd = c->wake_fd, .events = POLLIN}, {.fd = -1}};
        nfds_t nfds = 1;
        if (k->fd >= 0) {
            fds[1].fd = k->fd;
            fds[1].events = client__conn_events(k);
            nfds = 2;
        }
        bool buffered = client__conn_buffered(k);
        int rc = poll(fds, nfds, buffered ? 0 : poll_timeout(c, now_ms, next_try_ms));
        if (rc < 0 || nfds < 2 || (fds[1].revents == 0 && !buffered)) {
            continue;
        }
        client__conn_io(k, fds[1].revents, buffered, client__mono_ms());
    }
    int64_t now_ms = client__mono_ms();
    drain_on_close(c, now_ms);
    conn_drop(c, now_ms, false, "closing");
    return NULL;
}
