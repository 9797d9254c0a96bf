/*
 * status.c: tally_status(), the one call that does not go through the I/O thread: it asks
 * one named node over a short-lived connection of its own, on the caller's thread.
 *
 * The connection is conn.c's, the code the I/O thread drives too (connect, TLS, HELLO,
 * frames); here a small blocking loop drives it, polling its one socket until the answer,
 * a failure or the call's deadline. Only that deadline bounds it (connect_timeout_ms does
 * not), and nothing is redirected or retried elsewhere: a failed TCP connect moves on to
 * the next address of the same name, as the I/O thread does, but anything later ends the
 * call. Nothing of the I/O thread's is touched: the client's configuration, all this
 * reads of it, is read-only after tally_open().
 */
#define _GNU_SOURCE
#include "client/tally.h"
#include "wire/wire.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include "client/client_internal.h"

/* One exchange with the node: the connection and what it reported. */
struct oneshot {
    struct conn conn;
    uint64_t seq;  /* of the request whose answer is awaited */
    uint8_t op;    /* its op, to decode the answer */
    bool answered; /* resp holds the answer to seq */
    bool failed;   /* the connection failed: fail, code and why say how */
    unsigned fail; /* enum conn_fail */
    int code;      /* positive tally error */
    char why[WHY_MAX];
    struct rpc_response resp;
};

/* End the exchange with error `code` and `why`; the connection closes. */
static void oneshot_end(struct oneshot *o, unsigned fail, int code, const char *why)
{
    o->failed = true;
    o->fail = fail;
    o->code = code;
    client__copy_text(o->why, sizeof(o->why), why);
    client__conn_close(&o->conn);
}

/* The connection's reports (`arg` is the struct oneshot). */
static void oneshot_up(void *arg, int64_t now_ms)
{
    struct oneshot *o = arg;
    client__conn_send_hello(&o->conn, o->seq, now_ms);
}

static void oneshot_failed(void *arg, int64_t now_ms, unsigned fail, const char *why)
{
    struct oneshot *o = arg;
    size_t n = strlen(o->conn.target);
    (void)now_ms;
    /* The call's message starts with the endpoint, so a text that starts with it too gives
     * it once; a failed connect's keeps it, as tally_status()'s messages always had it
     * ("host:port: host:port: connect: ..."). */
    if (fail & CONN_FAIL_CLOSED) {
        why = "the node closed the connection";
    } else if (fail & CONN_FAIL_PROTO) {
        why = "the answer is larger than the frame bound";
    } else if (!(fail & CONN_FAIL_CONNECT) && strncmp(why, o->conn.target, n) == 0 &&
               why[n] == ':' && why[n + 1] == ' ') {
        why += n + 2;
    }
    oneshot_end(o, fail,
                (fail & CONN_FAIL_NOMEM)   ? TALLY_ENOMEM
                : (fail & CONN_FAIL_PROTO) ? TALLY_EPROTO
                                           : TALLY_EUNAVAILABLE,
                why);
}

static void oneshot_frame(void *arg, const uint8_t *body, size_t len, int64_t now_ms)
{
    struct oneshot *o = arg;
    char reason[RPC_MESSAGE_MAX + 1] = "";
    char why[WHY_MAX];
    (void)now_ms;
    if (o->answered) {
        return; /* nothing else was asked */
    }
    if (rpc_response_decode(body, len, o->op, &o->resp, reason) != 0 || o->resp.seq != o->seq) {
        rpc_response_free(&o->resp);
        snprintf(why, sizeof(why), "malformed answer: %.*s", (int)WHY_MESSAGE_MAX, reason);
        oneshot_end(o, CONN_FAIL_PROTO, TALLY_EPROTO, why);
        return;
    }
    o->answered = true;
}

static const struct conn_ops oneshot_ops = {
    .up = oneshot_up, .failed = oneshot_failed, .frame = oneshot_frame};

/* The deadline passed (or poll() failed) with the connection in its current state. */
static void oneshot_timed_out(struct oneshot *o)
{
    const struct conn *k = &o->conn;
    char why[WHY_MAX];
    if (k->state == CONN_CONNECTING) {
        snprintf(why, sizeof(why), "%s: connect: %s", k->target, strerror(ETIMEDOUT));
    } else {
        snprintf(why, sizeof(why), "%s",
                 k->state == CONN_TLS      ? "no TLS handshake before the deadline"
                 : k->out.len > k->out_off ? "cannot send the request before the deadline"
                                           : "no answer before the deadline");
    }
    oneshot_end(o, 0, TALLY_EUNAVAILABLE, why);
}

/* Drive the connection (resolved) until the answer to o->seq, a failure or
 * `deadline_at_ms`. Returns 0 (o->resp holds the answer) or -code (o->why says why). */
static int oneshot_wait(struct oneshot *o, int64_t deadline_at_ms)
{
    struct conn *k = &o->conn;
    o->answered = false;
    while (!o->answered) {
        int64_t now_ms = client__mono_ms();
        if (k->state == CONN_DOWN) {
            if (o->failed && (!(o->fail & CONN_FAIL_CONNECT) || k->addr_next == NULL)) {
                return -o->code;
            }
            o->failed = false;
            client__conn_connect(k, now_ms);
            continue;
        }
        int64_t left_ms = deadline_at_ms - now_ms;
        if (left_ms <= 0) {
            oneshot_timed_out(o);
            return -o->code;
        }
        bool buffered = client__conn_buffered(k);
        struct pollfd p = {.fd = k->fd, .events = client__conn_events(k)};
        int rc = poll(&p, 1, buffered ? 0 : left_ms > 60000 ? 60000 : (int)left_ms);
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (rc < 0) {
            oneshot_timed_out(o);
            return -o->code;
        }
        if (rc > 0 || buffered) {
            client__conn_io(k, rc > 0 ? p.revents : 0, buffered, client__mono_ms());
        }
    }
    return 0;
}

/* Send STATUS (seq 2) on the connection HELLO was answered on. Returns 0 or -code. */
static int oneshot_send_status(struct oneshot *o)
{
    struct conn *k = &o->conn;
    struct rpc_request req;
    if (o->failed) {
        return -o->code; /* the node closed the connection after its answer to HELLO */
    }
    memset(&req, 0, sizeof(req));
    req.seq = o->seq = 2;
    req.op = o->op = RPC_OP_STATUS;
    if (rpc_request_encode(&k->out, &req) != 0) {
        k->out.failed = false;
        oneshot_end(o, CONN_FAIL_NOMEM, TALLY_ENOMEM, "cannot encode the request");
        return -o->code;
    }
    k->state = CONN_READY;
    return client__conn_flush(k, client__mono_ms()) == 0 ? 0 : -o->code;
}

/* HELLO then STATUS to the node at `ep` by `deadline_at_ms`. Returns 0 or -code with
 * `why`. */
static int status_ask(struct tally *c, const struct endpoint *ep, int64_t deadline_at_ms,
                      struct tally_node_status *out, char *why, size_t why_size)
{
    struct oneshot o;
    memset(&o, 0, sizeof(o));
    client__conn_init(&o.conn, c, &oneshot_ops, &o);
    o.seq = 1;
    o.op = RPC_OP_HELLO;
    int rc = client__conn_resolve(&o.conn, ep, o.why, sizeof(o.why)) == 0
                 ? oneshot_wait(&o, deadline_at_ms)
                 : -TALLY_EUNAVAILABLE;
    client__copy_text(why, why_size, o.why);
    if (rc == 0 && o.resp.status != RPC_OK) {
        snprintf(why, why_size, "HELLO refused: %s: %s", rpc_status_name(o.resp.status),
                 o.resp.message);
        rc = o.resp.status == RPC_EAUTH ? -TALLY_EAUTH : -client__error_of_status(o.resp.status);
    }
    rpc_response_free(&o.resp);
    if (rc == 0) {
        rc = oneshot_send_status(&o);
        if (rc == 0) {
            rc = oneshot_wait(&o, deadline_at_ms);
        }
        client__copy_text(why, why_size, o.why);
        if (rc == 0 && o.resp.status != RPC_OK) {
            snprintf(why, why_size, "%s: %s", rpc_status_name(o.resp.status), o.resp.message);
            rc = -client__error_of_status(o.resp.status);
        } else if (rc == 0) {
            client__status_from_wire(&o.resp.u.status, out);
        }
        rpc_response_free(&o.resp);
    }
    client__conn_free(&o.conn);
    return rc;
}

int tally_status(struct tally *c, const char *endpoint, int64_t deadline_ms,
                 struct tally_node_status *out, struct tally_result *res)
{
    struct endpoint ep;
    const char *msg;
    int code = client__check_call(c, deadline_ms, true, &msg);
    if (code != 0) {
        return client__fail_early(res, code, msg);
    }
    if (endpoint == NULL || out == NULL ||
        client__endpoint_parse(endpoint, strlen(endpoint), &ep) != 0) {
        return client__fail_early(res, TALLY_EINVAL, "endpoint is not host:port, or out is NULL");
    }
    int64_t deadline_at_ms = client__mono_ms() + (deadline_ms != 0 ? deadline_ms : c->deadline_ms);
    char why[WHY_MAX];
    int rc = status_ask(c, &ep, deadline_at_ms, out, why, sizeof(why));
    if (res != NULL) {
        client__result_init(res, NULL);
        if (rc == 0) {
            client__result_answered(res, TALLY_GRANTED);
        } else {
            client__result_fail(res, rc == -TALLY_EUNAVAILABLE ? TALLY_UNAVAILABLE : TALLY_ERROR,
                                -rc, "%s: %s", ep.text, why);
        }
    }
    return rc;
}
