/*
 * calls.c: every call of the public API as a `struct call`: argument validation (the
 * bounds a request must keep before anything is queued), building the wire request,
 * and the way back: copying the wire's answers into the caller's public structs, and
 * the tally_result every call ends with.
 *
 * The shape: a builder checks and fully copies its arguments, so that the caller's memory
 * is not read again after it returns (outputs excepted: the caller keeps them alive until
 * the answer), then hands the call to client__run() (client.c). Nothing here touches the
 * network or the I/O thread's state.
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
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "client/client_internal.h"

/* ---- Results. ---- */

void client__result_init(struct tally_result *r, const struct call *call)
{
    memset(r, 0, sizeof(*r));
    if (call != NULL && call->req.op == RPC_OP_WRITE) {
        memcpy(r->request_id, call->req.u.write.request_id, TALLY_REQUEST_ID_SIZE);
    }
    if (call != NULL) {
        r->attempts = call->attempts;
    }
    r->outcome = TALLY_ERROR;
    r->error = TALLY_EINTERNAL;
    snprintf(r->message, sizeof(r->message), "no outcome was decided for this call");
}

void client__result_answered(struct tally_result *r, int outcome)
{
    assert(outcome == TALLY_GRANTED || outcome == TALLY_DENIED);
    r->outcome = outcome;
    r->error = TALLY_OK;
    r->message[0] = '\0';
}

void client__result_fail(struct tally_result *r, int outcome, int code, const char *fmt, ...)
{
    assert(code > 0 && code < TALLY_ECODE_MAX);
    r->outcome = outcome;
    r->error = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof(r->message), fmt, ap);
    va_end(ap);
}

int client__fail_early(struct tally_result *res, int code, const char *message)
{
    if (res != NULL) {
        client__result_init(res, NULL);
        client__result_fail(res, code == TALLY_EBUSY ? TALLY_UNAVAILABLE : TALLY_ERROR, code, "%s",
                            message);
    }
    return -code;
}

int client__error_of_status(int status)
{
    switch (status) {
    case RPC_EAUTH:
        return TALLY_EAUTH;
    case RPC_EFORBIDDEN:
        return TALLY_EFORBIDDEN;
    case RPC_EBADREQ:
        return TALLY_EBADREQ;
    case RPC_ETOOBIG:
        return TALLY_ETOOBIG;
    case RPC_ENOTFOUND:
        return TALLY_ENOTFOUND;
    case RPC_EINTERNAL:
        return TALLY_EINTERNAL;
    case RPC_EPROTO:
        return TALLY_EPROTO;
    default:
        return TALLY_EUNAVAILABLE;
    }
}

/* ---- Copying between the wire's structs and the public ones. ---- */

/*
 * The fields the public limits and the ledger's share, by name: all of struct tally_limits
 * and struct ledger_limits, and of struct tally_model_limits and struct ledger_model_limits.
 * COPY_FIELD(f) copies field f from `in` to `out`, the names every converter here uses.
 */
#define LIMITS_FIELDS(X)                                                                           \
    X(set)                                                                                         \
    X(period_kind)                                                                                 \
    X(blocked)                                                                                     \
    X(expiry_policy)                                                                               \
    X(budget_micros)                                                                               \
    X(soft_budget_micros)                                                                          \
    X(period_ms)                                                                                   \
    X(rpm)                                                                                         \
    X(rpm_burst)                                                                                   \
    X(tpm)                                                                                         \
    X(tpm_burst)                                                                                   \
    X(max_parallel)                                                                                \
    X(expires_at_ms)
#define MODEL_LIMITS_FIELDS(X) X(set) X(budget_micros) X(rpm) X(rpm_burst) X(tpm) X(tpm_burst)
#define COPY_FIELD(f) out->f = in->f;
_Static_assert(sizeof(struct tally_limits) == sizeof(struct ledger_limits), "limits fields");
_Static_assert(sizeof(struct tally_model_limits) == sizeof(struct ledger_model_limits),
               "model limits fields");

/* `in` (NULL: no limits) as the wire's limits. */
static void limits_to_wire(const struct tally_limits *in, struct ledger_limits *out)
{
    memset(out, 0, sizeof(*out));
    if (in != NULL) {
        LIMITS_FIELDS(COPY_FIELD)
    }
}

static void limits_from_wire(const struct ledger_limits *in, struct tally_limits *out)
{
    memset(out, 0, sizeof(*out));
    LIMITS_FIELDS(COPY_FIELD)
}

static void account_from_wire(const struct ledger_account_info *in, struct tally_account *out)
{
    memset(out, 0, sizeof(*out));
    out->id = in->id;
    client__copy_text(out->name, sizeof(out->name), in->name);
    client__copy_text(out->parent, sizeof(out->parent), in->parent);
    out->depth = in->depth;
    limits_from_wire(&in->limits, &out->limits);
    out->created_ms = in->created_ms;
    out->spent_micros = in->spent_micros;
    out->held_micros = in->held_micros;
    out->remaining_micros = in->remaining_micros;
    out->lifetime_spent_micros = in->lifetime_spent_micros;
    out->overrun_micros = in->overrun_micros;
    out->inflight = in->inflight;
    out->period_start_ms = in->period_start_ms;
    out->period_end_ms = in->period_end_ms;
    out->rpm_available = in->rpm_available;
    out->tpm_available = in->tpm_available;
    out->n_keys = in->n_keys;
}

static void resv_from_wire(const struct ledger_reservation_info *in, struct tally_reservation *out)
{
    memset(out, 0, sizeof(*out));
    memcpy(out->request_id, in->request_id, TALLY_REQUEST_ID_SIZE);
    out->state = in->state;
    client__copy_text(out->account, sizeof(out->account), in->account);
    client__copy_text(out->model, sizeof(out->model), in->model);
    out->estimate_micros = in->estimate_micros;
    out->estimate_tokens = in->estimate_tokens;
    out->created_ms = in->created_ms;
    out->expires_at_ms = in->expires_at_ms;
    out->charged_micros = in->charged_micros;
    out->metadata_len = in->metadata_len <= TALLY_METADATA_MAX ? in->metadata_len : 0;
    memcpy(out->metadata, in->metadata, out->metadata_len);
}

static void entry_from_wire(const struct ledger_journal_entry *in, struct tally_journal_entry *out)
{
    memset(out, 0, sizeof(*out));
    out->seq = in->seq;
    out->ts_ms = in->ts_ms;
    out->kind = in->kind;
    out->cmd_type = in->cmd_type;
    client__copy_text(out->account, sizeof(out->account), in->account);
    client__copy_text(out->actor, sizeof(out->actor), in->actor);
    memcpy(out->request_id, in->request_id, TALLY_REQUEST_ID_SIZE);
    out->amount_micros = in->amount_micros;
    out->tokens = in->tokens;
    out->period_start_ms = in->period_start_ms;
    client__copy_text(out->model, sizeof(out->model), in->model);
    memcpy(out->admin_hash, in->admin_hash, sizeof(out->admin_hash));
}

void client__status_from_wire(const struct rpc_node_status *in, struct tally_node_status *out)
{
    memset(out, 0, sizeof(*out));
    out->node_id = in->node_id;
    out->term = in->term;
    out->raft_state = in->raft_state;
    out->serving = in->serving;
    out->leader_id = in->leader_id;
    client__copy_text(out->leader_address, sizeof(out->leader_address), in->leader_address);
    out->commit_index = in->commit_index;
    out->applied_index = in->applied_index;
    out->ledger_now_ms = in->ledger_now_ms;
    out->n_members = in->n_members <= TALLY_MEMBERS_MAX ? in->n_members : TALLY_MEMBERS_MAX;
    for (uint32_t i = 0; i < out->n_members; i++) {
        const struct rpc_member *m = &in->members[i];
        struct tally_member *t = &out->members[i];
        t->id = m->id;
        client__copy_text(t->peer_address, sizeof(t->peer_address), m->peer_address);
        client__copy_text(t->client_address, sizeof(t->client_address), m->client_address);
        t->role = m->role;
    }
}

/* The answer to a write, as a tally_result. */
static void result_from_ledger(struct tally_result *r, const struct ledger_result *x,
                               uint64_t index)
{
    r->index = index;
    r->flags = x->flags;
    client__copy_text(r->account, sizeof(r->account), x->account);
    r->remaining = x->remaining;
    r->retry_after_ms = x->retry_after_ms;
    r->charged_micros = x->charged_micros;
    r->overrun_micros = x->overrun_micros;
    r->expires_at_ms = x->expires_at_ms;
    if (x->status == LEDGER_OK) {
        client__result_answered(r, TALLY_GRANTED);
    } else if (x->status == LEDGER_DENIED) {
        client__result_answered(r, TALLY_DENIED);
        r->deny_reason = x->deny_reason < TALLY_DENY_MAX ? x->deny_reason : TALLY_DENY_NONE;
        snprintf(r->message, sizeof(r->message), "denied: %s on account %s",
                 tally_deny_reason_name(r->deny_reason), r->account);
    } else if (x->status < 0 && -x->status < LEDGER_ECODE_MAX) {
        client__result_fail(r, TALLY_ERROR, -x->status, "ledger: %s", tally_strerror(-x->status));
    } else {
        client__result_fail(r, TALLY_ERROR, TALLY_EPROTO, "ledger answered an unknown status %d",
                            (int)x->status);
    }
}

int client__answer_matches(const struct call *call, const struct rpc_response *resp, char *why,
                           size_t size)
{
    const struct rpc_request *q = &call->req;
    switch (q->op) {
    case RPC_OP_WRITE: {
        const struct ledger_result *x = &resp->u.write.result;
        if (memcmp(x->request_id, q->u.write.request_id, LEDGER_REQUEST_ID_SIZE) != 0) {
            snprintf(why, size, "the answer to a write carries another request id");
            return -1;
        }
        if (x->cmd_type != q->u.write.type) {
            snprintf(why, size, "the answer to a write of command type %u is of type %u",
                     (unsigned)q->u.write.type, (unsigned)x->cmd_type);
            return -1;
        }
        return 0;
    }
    case RPC_OP_RESV_GET:
        if (memcmp(resp->u.reservation.request_id, q->u.get.request_id, LEDGER_REQUEST_ID_SIZE) !=
            0) {
            snprintf(why, size, "the answer to a reservation read carries another request id");
            return -1;
        }
        return 0;
    case RPC_OP_ACCOUNT_GET:
        if (strcmp(resp->u.account.name, q->u.get.name) != 0) {
            snprintf(why, size, "the answer to an account read is another account");
            return -1;
        }
        return 0;
    default:
        return 0;
    }
}

int client__answer_payload(struct call *call, const struct rpc_response *resp,
                           struct tally_result *r)
{
    switch (call->req.op) {
    case RPC_OP_WRITE:
        result_from_ledger(r, &resp->u.write.result, resp->u.write.index);
        return 0;
    case RPC_OP_ACCOUNT_GET:
        account_from_wire(&resp->u.account, call->out);
        return 0;
    case RPC_OP_RESV_GET:
        resv_from_wire(&resp->u.reservation, call->out);
        return 0;
    case RPC_OP_KEY_GET:
        client__copy_text(call->out_account, TALLY_NAME_MAX + 1, resp->u.key.account);
        if (call->out_revoked != NULL) {
            *call->out_revoked = resp->u.key.revoked != 0;
        }
        return 0;
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
        if (resp->u.list.n > call->out_cap) {
            return -1; /* more than asked for: never write past the caller's array */
        }
        for (uint32_t i = 0; i < resp->u.list.n; i++) {
            if (call->req.op == RPC_OP_ACCOUNT_LIST) {
                account_from_wire(&resp->u.list.items.accounts[i],
                                  (struct tally_account *)call->out + i);
            } else if (call->req.op == RPC_OP_RESV_LIST) {
                resv_from_wire(&resp->u.list.items.reservations[i],
                               (struct tally_reservation *)call->out + i);
            } else {
                entry_from_wire(&resp->u.list.items.entries[i],
                                (struct tally_journal_entry *)call->out + i);
            }
        }
        *call->out_n = resp->u.list.n;
        if (call->out_next != NULL) {
            assert(resp->u.list.next_len <= TALLY_CURSOR_MAX); /* the decoder's bound */
            call->out_next->len = resp->u.list.next_len;
            memcpy(call->out_next->bytes, resp->u.list.next, resp->u.list.next_len);
        }
        return 0;
    case RPC_OP_MEMBERSHIP:
        return 0;
    default:
        return -1;
    }
}

/* ---- Building calls. ---- */

/* Set up a write of command `type` with `request_id` (NULL: a fresh one). Returns 0 or a
 * positive error code. */
static int call_write(struct call *call, uint8_t type, const uint8_t *request_id)
{
    call->req.op = RPC_OP_WRITE;
    call->req.u.write.type = type;
    if (request_id != NULL) {
        memcpy(call->req.u.write.request_id, request_id, LEDGER_REQUEST_ID_SIZE);
        return 0;
    }
    return client__random_bytes(call->req.u.write.request_id, LEDGER_REQUEST_ID_SIZE) == 0
               ? 0
               : TALLY_EINTERNAL;
}

/* The command a write call carries passes wire/'s check, the same one the ledger makes:
 * a bad argument fails here, before anything is sent. Returns 0 or a positive TALLY_E*
 * code (the ledger's codes and libtally's are the same numbers) with `msg`. */
static int write_check(const struct call *call, const char **msg)
{
    return -ledger_cmd_check(&call->req.u.write, msg);
}

/* The hash of a key into `out`: `key_hash` when given, else the hash of `key_secret`. */
static void key_hash_of(const char *key_secret, const uint8_t *key_hash,
                        uint8_t out[LEDGER_KEY_HASH_SIZE])
{
    if (key_hash != NULL) {
        memcpy(out, key_hash, LEDGER_KEY_HASH_SIZE);
    } else {
        tally_key_hash(key_secret, out);
    }
}

/* Validate a reserve's arguments. Returns 0 or a positive code with `msg`. */
static int reserve_check(const struct tally_reserve_args *a, const char **msg)
{
    if (a == NULL) {
        *msg = "args is NULL";
        return TALLY_EINVAL;
    }
    int payers = (a->key_secret != NULL) + (a->key_hash != NULL) + (a->account != NULL);
    if (payers != 1) {
        *msg = "name exactly one of key_secret, key_hash and account";
        return TALLY_EINVAL;
    }
    if (a->key_secret != NULL && a->key_secret[0] == '\0') {
        *msg = "key_secret is empty";
        return TALLY_EINVAL;
    }
    if (a->account != NULL && !client__name_valid(a->account, TALLY_NAME_MAX)) {
        *msg = "account is not a valid name (1-128 bytes of [A-Za-z0-9._:/@-])";
        return TALLY_ENAME;
    }
    if (!client__is_empty(a->model) && !client__name_valid(a->model, TALLY_MODEL_MAX)) {
        *msg = "model is not a valid name (1-64 bytes of [A-Za-z0-9._:/@-])";
        return TALLY_ENAME;
    }
    /* The estimate and ttl are judged with the built command (write_check). */
    if (a->metadata_len > TALLY_METADATA_MAX || (a->metadata_len > 0 && a->metadata == NULL)) {
        *msg = "metadata longer than 256 bytes, or NULL with a length";
        return TALLY_EINVAL;
    }
    return 0;
}

/* Build a reserve call (NULL with *code and *msg on failure). */
static struct call *reserve_call(struct tally *c, const struct tally_reserve_args *a,
                                 int64_t deadline_ms, bool blocking, int *code, const char **msg)
{
    *code = client__check_call(c, deadline_ms, blocking, msg);
    if (*code == 0) {
        *code = reserve_check(a, msg);
    }
    if (*code != 0) {
        return NULL;
    }
    struct call *call = client__call_new(c, RPC_OP_WRITE, deadline_ms);
    if (call == NULL) {
        *code = TALLY_ENOMEM;
        *msg = "out of memory";
        return NULL;
    }
    call->kind = CALL_RESERVE;
    *code = call_write(call, LEDGER_CMD_RESERVE, a->request_id);
    if (*code != 0) {
        free(call);
        *msg = "getrandom failed";
        return NULL;
    }
    struct ledger_cmd *cmd = &call->req.u.write;
    if (a->account != NULL) {
        cmd->u.reserve.by_account = 1;
        client__copy_text(cmd->u.reserve.account, sizeof(cmd->u.reserve.account), a->account);
    } else {
        key_hash_of(a->key_secret, a->key_hash, cmd->u.reserve.key_hash);
    }
    cmd->u.reserve.estimate_micros = a->estimate_micros;
    cmd->u.reserve.estimate_tokens = a->estimate_tokens;
    client__copy_text(cmd->u.reserve.model, sizeof(cmd->u.reserve.model), a->model);
    cmd->u.reserve.ttl_ms = a->ttl_ms;
    cmd->u.reserve.metadata_len = (uint16_t)a->metadata_len;
    if (a->metadata_len > 0) {
        memcpy(cmd->u.reserve.metadata, a->metadata, a->metadata_len);
    }
    *code = write_check(call, msg);
    if (*code != 0) {
        free(call);
        return NULL;
    }
    return call;
}

/* A reserve, blocking (`cb` NULL: the answer in `res`) or asynchronous (`cb` runs). */
static int reserve_run(struct tally *c, const struct tally_reserve_args *args, int64_t deadline_ms,
                       struct tally_result *res, tally_cb cb, void *arg)
{
    int code;
    const char *msg;
    struct call *call = reserve_call(c, args, deadline_ms, cb == NULL, &code, &msg);
    if (call == NULL) {
        return cb != NULL ? -code : client__fail_early(res, code, msg);
    }
    return client__run(c, call, res, cb, arg);
}

int tally_reserve(struct tally *c, const struct tally_reserve_args *args, int64_t deadline_ms,
                  struct tally_result *res)
{
    if (res == NULL) {
        return -TALLY_EINVAL;
    }
    return reserve_run(c, args, deadline_ms, res, NULL, NULL);
}

int tally_reserve_async(struct tally *c, const struct tally_reserve_args *args, int64_t deadline_ms,
                        tally_cb cb, void *arg)
{
    if (cb == NULL) {
        return -TALLY_EINVAL;
    }
    return reserve_run(c, args, deadline_ms, NULL, cb, arg);
}

/* Build a settle, void or extend of reservation `request_id`. */
static struct call *resolve_call(struct tally *c, uint8_t type, const uint8_t *request_id,
                                 int64_t amount, uint64_t tokens, int64_t deadline_ms,
                                 bool blocking, int *code, const char **msg)
{
    *code = client__check_call(c, deadline_ms, blocking, msg);
    if (*code != 0) {
        return NULL;
    }
    *code = TALLY_EINVAL;
    if (request_id == NULL) {
        *msg = "request_id is NULL";
        return NULL;
    }
    struct call *call = client__call_new(c, RPC_OP_WRITE, deadline_ms);
    if (call == NULL) {
        *code = TALLY_ENOMEM;
        *msg = "out of memory";
        return NULL;
    }
    *code = 0;
    call_write(call, type, request_id);
    if (type == LEDGER_CMD_SETTLE) {
        call->req.u.write.u.settle.actual_micros = amount;
        call->req.u.write.u.settle.actual_tokens = tokens;
    } else if (type == LEDGER_CMD_EXTEND) {
        call->req.u.write.u.extend.ttl_ms = amount;
    }
    *code = write_check(call, msg);
    if (*code != 0) {
        free(call);
        return NULL;
    }
    return call;
}

static int resolve_run(struct tally *c, uint8_t type, const uint8_t *request_id, int64_t amount,
                       uint64_t tokens, int64_t deadline_ms, struct tally_result *res, tally_cb cb,
                       void *arg)
{
    int code;
    const char *msg;
    struct call *call =
        resolve_call(c, type, request_id, amount, tokens, deadline_ms, cb == NULL, &code, &msg);
    if (call == NULL) {
        return cb != NULL ? -code : client__fail_early(res, code, msg);
    }
    return client__run(c, call, res, cb, arg);
}

int tally_settle(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                 int64_t actual_micros, uint64_t actual_tokens, int64_t deadline_ms,
                 struct tally_result *res)
{
    return resolve_run(c, LEDGER_CMD_SETTLE, request_id, actual_micros, actual_tokens, deadline_ms,
                       res, NULL, NULL);
}

int tally_void(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
               int64_t deadline_ms, struct tally_result *res)
{
    return resolve_run(c, LEDGER_CMD_VOID, request_id, 0, 0, deadline_ms, res, NULL, NULL);
}

int tally_extend(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE], int64_t ttl_ms,
                 int64_t deadline_ms, struct tally_result *res)
{
    return resolve_run(c, LEDGER_CMD_EXTEND, request_id, ttl_ms, 0, deadline_ms, res, NULL, NULL);
}

int tally_settle_async(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                       int64_t actual_micros, uint64_t actual_tokens, int64_t deadline_ms,
                       tally_cb cb, void *arg)
{
    if (cb == NULL) {
        return -TALLY_EINVAL;
    }
    return resolve_run(c, LEDGER_CMD_SETTLE, request_id, actual_micros, actual_tokens, deadline_ms,
                       NULL, cb, arg);
}

int tally_void_async(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                     int64_t deadline_ms, tally_cb cb, void *arg)
{
    if (cb == NULL) {
        return -TALLY_EINVAL;
    }
    return resolve_run(c, LEDGER_CMD_VOID, request_id, 0, 0, deadline_ms, NULL, cb, arg);
}

int tally_extend_async(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                       int64_t ttl_ms, int64_t deadline_ms, tally_cb cb, void *arg)
{
    if (cb == NULL) {
        return -TALLY_EINVAL;
    }
    return resolve_run(c, LEDGER_CMD_EXTEND, request_id, ttl_ms, 0, deadline_ms, NULL, cb, arg);
}

/* ---- Admin writes. ---- */

/* Start a blocking call of `op` after the common checks. NULL with *rc set on failure. */
static struct call *blocking_call(struct tally *c, uint8_t op, int64_t deadline_ms,
                                  struct tally_result *res, int *rc)
{
    const char *msg;
    int code = client__check_call(c, deadline_ms, true, &msg);
    if (code != 0) {
        *rc = client__fail_early(res, code, msg);
        return NULL;
    }
    struct call *call = client__call_new(c, op, deadline_ms);
    if (call == NULL) {
        *rc = client__fail_early(res, TALLY_ENOMEM, "out of memory");
    }
    return call;
}

/*
 * Run an admin write of command `type`, whose fields are those of `cmd` (borrowed, copied;
 * only its `u` is read), as a blocking call with `request_id` (NULL: a fresh one). The
 * typed admin calls below check their arguments, fill a zeroed command and end here.
 */
static int admin_run(struct tally *c, uint8_t type, const struct ledger_cmd *cmd,
                     const uint8_t *request_id, int64_t deadline_ms, struct tally_result *res)
{
    int rc;
    struct call *call = blocking_call(c, RPC_OP_WRITE, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    if (call_write(call, type, request_id) != 0) {
        free(call);
        return client__fail_early(res, TALLY_EINTERNAL, "getrandom failed");
    }
    call->req.u.write.u = cmd->u;
    const char *msg;
    int code = write_check(call, &msg);
    if (code != 0) {
        free(call);
        return client__fail_early(res, code, msg);
    }
    return client__run(c, call, res, NULL, NULL);
}

int tally_account_create(struct tally *c, const char *name, const char *parent,
                         const struct tally_limits *limits, const uint8_t *request_id,
                         int64_t deadline_ms, struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (!client__name_valid(name, TALLY_NAME_MAX) ||
        (!client__is_empty(parent) && !client__name_valid(parent, TALLY_NAME_MAX))) {
        return client__fail_early(res, TALLY_ENAME, "not a valid account name");
    }
    memset(&cmd, 0, sizeof(cmd));
    client__copy_text(cmd.u.create.name, sizeof(cmd.u.create.name), name);
    client__copy_text(cmd.u.create.parent, sizeof(cmd.u.create.parent), parent);
    limits_to_wire(limits, &cmd.u.create.limits);
    return admin_run(c, LEDGER_CMD_ACCOUNT_CREATE, &cmd, request_id, deadline_ms, res);
}

int tally_account_update(struct tally *c, const char *name, const struct tally_limits *limits,
                         uint32_t clear, const char *new_parent, const uint8_t *request_id,
                         int64_t deadline_ms, struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (!client__name_valid(name, TALLY_NAME_MAX) ||
        (!client__is_empty(new_parent) && !client__name_valid(new_parent, TALLY_NAME_MAX))) {
        return client__fail_early(res, TALLY_ENAME, "not a valid account name");
    }
    memset(&cmd, 0, sizeof(cmd));
    client__copy_text(cmd.u.update.name, sizeof(cmd.u.update.name), name);
    limits_to_wire(limits, &cmd.u.update.limits);
    cmd.u.update.clear = clear;
    if (new_parent != NULL) {
        cmd.u.update.set_parent = 1;
        client__copy_text(cmd.u.update.parent, sizeof(cmd.u.update.parent), new_parent);
    }
    return admin_run(c, LEDGER_CMD_ACCOUNT_UPDATE, &cmd, request_id, deadline_ms, res);
}

int tally_key_add(struct tally *c, const char *account, const char *key_secret,
                  const uint8_t *key_hash, const uint8_t *request_id, int64_t deadline_ms,
                  struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (!client__name_valid(account, TALLY_NAME_MAX)) {
        return client__fail_early(res, TALLY_ENAME, "not a valid account name");
    }
    if ((key_secret == NULL) == (key_hash == NULL) ||
        (key_secret != NULL && key_secret[0] == '\0')) {
        return client__fail_early(res, TALLY_EINVAL, "give exactly one of key_secret and key_hash");
    }
    memset(&cmd, 0, sizeof(cmd));
    client__copy_text(cmd.u.key.account, sizeof(cmd.u.key.account), account);
    key_hash_of(key_secret, key_hash, cmd.u.key.key_hash);
    return admin_run(c, LEDGER_CMD_KEY_ADD, &cmd, request_id, deadline_ms, res);
}

int tally_key_revoke(struct tally *c, const uint8_t key_hash[TALLY_KEY_HASH_SIZE],
                     const uint8_t *request_id, int64_t deadline_ms, struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (key_hash == NULL) {
        return client__fail_early(res, TALLY_EINVAL, "key_hash is NULL");
    }
    memset(&cmd, 0, sizeof(cmd));
    memcpy(cmd.u.key.key_hash, key_hash, LEDGER_KEY_HASH_SIZE);
    return admin_run(c, LEDGER_CMD_KEY_REVOKE, &cmd, request_id, deadline_ms, res);
}

int tally_model_limit_set(struct tally *c, const char *account, const char *model,
                          const struct tally_model_limits *limits, const uint8_t *request_id,
                          int64_t deadline_ms, struct tally_result *res)
{
    struct ledger_cmd cmd;
    if (!client__name_valid(account, TALLY_NAME_MAX) ||
        !client__name_valid(model, TALLY_MODEL_MAX)) {
        return client__fail_early(res, TALLY_ENAME, "not a valid account or model name");
    }
    memset(&cmd, 0, sizeof(cmd));
    client__copy_text(cmd.u.model_limit.account, sizeof(cmd.u.model_limit.account), account);
    client__copy_text(cmd.u.model_limit.model, sizeof(cmd.u.model_limit.model), model);
    if (limits != NULL) {
        const struct tally_model_limits *in = limits;
        struct ledger_model_limits *out = &cmd.u.model_limit.limits;
        MODEL_LIMITS_FIELDS(COPY_FIELD)
    }
    return admin_run(c, LEDGER_CMD_MODEL_LIMIT_SET, &cmd, request_id, deadline_ms, res);
}

int tally_retention_set(struct tally *c, int64_t retention_ms, const uint8_t *request_id,
                        int64_t deadline_ms, struct tally_result *res)
{
    if (retention_ms < TALLY_RETENTION_MIN_MS) {
        return client__fail_early(res, TALLY_EINVAL,
                                  "retention_ms is below the minimum of 1 h (3600000 ms)");
    }
    struct ledger_cmd cmd;
    memset(&cmd, 0, sizeof(cmd));
    cmd.u.config.retention_ms = retention_ms;
    return admin_run(c, LEDGER_CMD_CONFIG_SET, &cmd, request_id, deadline_ms, res);
}

/* ---- Queries. ---- */

static bool read_flags_ok(unsigned flags)
{
    return (flags & ~(unsigned)TALLY_READ_STALE) == 0;
}

int tally_account_get(struct tally *c, const char *name, unsigned flags, int64_t deadline_ms,
                      struct tally_account *out, struct tally_result *res)
{
    int rc;
    if (!client__name_valid(name, TALLY_NAME_MAX)) {
        return client__fail_early(res, TALLY_ENAME, "not a valid account name");
    }
    if (out == NULL || !read_flags_ok(flags)) {
        return client__fail_early(res, TALLY_EINVAL, "out is NULL or unknown flags");
    }
    struct call *call = blocking_call(c, RPC_OP_ACCOUNT_GET, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    client__copy_text(call->req.u.get.name, sizeof(call->req.u.get.name), name);
    call->req.u.get.flags = flags;
    call->out = out;
    return client__run(c, call, res, NULL, NULL);
}

int tally_key_get(struct tally *c, const uint8_t key_hash[TALLY_KEY_HASH_SIZE], unsigned flags,
                  int64_t deadline_ms, char *account, int *revoked, struct tally_result *res)
{
    int rc;
    if (key_hash == NULL || account == NULL || !read_flags_ok(flags)) {
        return client__fail_early(res, TALLY_EINVAL,
                                  "key_hash or account is NULL, or unknown flags");
    }
    struct call *call = blocking_call(c, RPC_OP_KEY_GET, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    memcpy(call->req.u.get.key_hash, key_hash, LEDGER_KEY_HASH_SIZE);
    call->req.u.get.flags = flags;
    call->out_account = account;
    call->out_revoked = revoked;
    return client__run(c, call, res, NULL, NULL);
}

int tally_reservation_get(struct tally *c, const uint8_t request_id[TALLY_REQUEST_ID_SIZE],
                          unsigned flags, int64_t deadline_ms, struct tally_reservation *out,
                          struct tally_result *res)
{
    int rc;
    if (request_id == NULL || out == NULL || !read_flags_ok(flags)) {
        return client__fail_early(res, TALLY_EINVAL, "request_id or out is NULL, or unknown flags");
    }
    struct call *call = blocking_call(c, RPC_OP_RESV_GET, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    memcpy(call->req.u.get.request_id, request_id, LEDGER_REQUEST_ID_SIZE);
    call->req.u.get.flags = flags;
    call->out = out;
    return client__run(c, call, res, NULL, NULL);
}

/* Common part of the three paged lists. */
static int list_run(struct tally *c, uint8_t op, const char *filter, int64_t since_ms,
                    int64_t until_ms, const struct tally_cursor *cursor, uint32_t limit,
                    unsigned flags, int64_t deadline_ms, void *items, uint32_t *n,
                    struct tally_cursor *next, struct tally_result *res)
{
    int rc;
    if (!client__is_empty(filter) && !client__name_valid(filter, TALLY_NAME_MAX)) {
        return client__fail_early(res, TALLY_ENAME, "not a valid account name");
    }
    if (items == NULL || n == NULL || limit == 0 || limit > TALLY_LIST_MAX ||
        !read_flags_ok(flags) || since_ms > until_ms ||
        (cursor != NULL && cursor->len > TALLY_CURSOR_MAX)) {
        return client__fail_early(res, TALLY_EINVAL,
                                  "items or n is NULL, limit not 1 .. 512, unknown flags, "
                                  "since > until or a cursor over its bound");
    }
    /* `next` may be `cursor` itself: copy the cursor before clearing it. */
    struct tally_cursor after = {0};
    if (cursor != NULL) {
        after = *cursor;
    }
    *n = 0;
    if (next != NULL) {
        next->len = 0;
    }
    struct call *call = blocking_call(c, op, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    client__copy_text(call->req.u.list.filter, sizeof(call->req.u.list.filter), filter);
    call->req.u.list.since_ms = since_ms;
    call->req.u.list.until_ms = until_ms;
    call->req.u.list.cursor_len = after.len;
    memcpy(call->req.u.list.cursor, after.bytes, after.len);
    call->req.u.list.limit = limit;
    call->req.u.list.flags = flags;
    call->out = items;
    call->out_cap = limit;
    call->out_n = n;
    call->out_next = next;
    return client__run(c, call, res, NULL, NULL);
}

int tally_account_list(struct tally *c, const char *parent, const struct tally_cursor *cursor,
                       uint32_t limit, unsigned flags, int64_t deadline_ms,
                       struct tally_account *items, uint32_t *n, struct tally_cursor *next,
                       struct tally_result *res)
{
    return list_run(c, RPC_OP_ACCOUNT_LIST, parent, 0, 0, cursor, limit, flags, deadline_ms, items,
                    n, next, res);
}

int tally_reservation_list(struct tally *c, const char *account, const struct tally_cursor *cursor,
                           uint32_t limit, unsigned flags, int64_t deadline_ms,
                           struct tally_reservation *items, uint32_t *n, struct tally_cursor *next,
                           struct tally_result *res)
{
    return list_run(c, RPC_OP_RESV_LIST, account, 0, 0, cursor, limit, flags, deadline_ms, items, n,
                    next, res);
}

int tally_journal_list(struct tally *c, const char *account, int64_t since_ms, int64_t until_ms,
                       const struct tally_cursor *cursor, uint32_t limit, unsigned flags,
                       int64_t deadline_ms, struct tally_journal_entry *items, uint32_t *n,
                       struct tally_cursor *next, struct tally_result *res)
{
    return list_run(c, RPC_OP_JOURNAL, account, since_ms, until_ms, cursor, limit, flags,
                    deadline_ms, items, n, next, res);
}

/* ---- Membership. ---- */

static int membership_run(struct tally *c, uint8_t kind, uint64_t id, const char *address,
                          int64_t deadline_ms, struct tally_result *res)
{
    int rc;
    struct call *call = blocking_call(c, RPC_OP_MEMBERSHIP, deadline_ms, res, &rc);
    if (call == NULL) {
        return rc;
    }
    call->resend_unsafe = true;
    call->req.u.membership.kind = kind;
    call->req.u.membership.id = id;
    client__copy_text(call->req.u.membership.address, sizeof(call->req.u.membership.address),
                      address);
    return client__run(c, call, res, NULL, NULL);
}

int tally_member_add(struct tally *c, uint64_t id, const char *peer_address, int64_t deadline_ms,
                     struct tally_result *res)
{
    struct endpoint ep;
    if (id == 0 || peer_address == NULL ||
        client__endpoint_parse(peer_address, strlen(peer_address), &ep) != 0) {
        return client__fail_early(res, TALLY_EINVAL, "id must be > 0 and peer_address host:port");
    }
    return membership_run(c, RPC_MEMBER_ADD, id, peer_address, deadline_ms, res);
}

int tally_member_remove(struct tally *c, uint64_t id, int64_t deadline_ms, struct tally_result *res)
{
    if (id == 0) {
        return client__fail_early(res, TALLY_EINVAL, "id must be > 0");
    }
    return membership_run(c, RPC_MEMBER_REMOVE, id, "", deadline_ms, res);
}

int tally_leader_transfer(struct tally *c, uint64_t id, int64_t deadline_ms,
                          struct tally_result *res)
{
    return membership_run(c, RPC_MEMBER_TRANSFER, id, "", deadline_ms, res);
}
