/*
 * proto.c: frames and messages of the wire protocol (see the protocol section of wire.h).
 *
 * Encoding goes through msgpack-c's packer into an rpc_buf; decoding through the bounded
 * reader of wire/mp.h, never msgpack-c's unpacker, which allocates whatever a length
 * prefix asks for. Every message has a fixed shape (positional arrays of known length),
 * so the decoder knows each array's exact count before it reads it and nesting can
 * never go deeper than the shape.
 */
#include "wire/wire.h"
#include "wire/wire_internal.h"

#include <assert.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Names. ---- */

const char *rpc_op_name(int op)
{
    static const char *const names[RPC_OP_MAX] = {
#define OP_NAME(code, number, name, args, least) [number] = name,
        RPC_OPS(OP_NAME)
#undef OP_NAME
    };
    return op > 0 && op < RPC_OP_MAX && names[op] != NULL ? names[op] : "unknown";
}

const char *wire_strerror(int code)
{
    static const char *const names[WIRE_ECODE_MAX] = {
        [0] = "ok",
#define WIRE_ERROR_NAME(code, number, message) [number] = message,
        WIRE_ERRORS(WIRE_ERROR_NAME)
#undef WIRE_ERROR_NAME
    };
    code = code < 0 ? -code : code;
    return code < WIRE_ECODE_MAX ? names[code] : "unknown error";
}

const char *rpc_status_name(int status)
{
    static const char *const names[RPC_STATUS_MAX] = {
#define RPC_STATUS_NAME(code, number, name) [number] = name,
        RPC_STATUSES(RPC_STATUS_NAME)
#undef RPC_STATUS_NAME
    };
    return status >= 0 && status < RPC_STATUS_MAX ? names[status] : "unknown";
}

const char *rpc_role_name(int role)
{
    switch (role) {
    case RPC_ROLE_READER:
        return "reader";
    case RPC_ROLE_GATEWAY:
        return "gateway";
    case RPC_ROLE_ADMIN:
        return "admin";
    default:
        return "none";
    }
}

int rpc_role_parse(const char *name)
{
    for (int role = RPC_ROLE_READER; role <= RPC_ROLE_ADMIN; role++) {
        if (strcmp(name, rpc_role_name(role)) == 0) {
            return role;
        }
    }
    return -WIRE_ERANGE;
}

static bool op_known(int op)
{
    static const bool known[RPC_OP_MAX] = {
#define OP_KNOWN(code, number, name, args, least) [number] = true,
        RPC_OPS(OP_KNOWN)
#undef OP_KNOWN
    };
    return op > 0 && op < RPC_OP_MAX && known[op];
}

bool rpc_role_allows(int role, int op, int cmd_type)
{
    static const int least_role[RPC_OP_MAX] = {
#define OP_ROLE(code, number, name, args, least) [number] = least,
        RPC_OPS(OP_ROLE)
#undef OP_ROLE
    };
    if (!op_known(op)) {
        return false;
    }
    if (role < RPC_ROLE_READER || role > RPC_ROLE_ADMIN) {
        return op == RPC_OP_HELLO; /* unauthenticated, or not a role at all */
    }
    if (op == RPC_OP_WRITE && cmd_type == LEDGER_CMD_TERM_START) {
        return false; /* written only by a new leader, never by a connection */
    }
    if (op == RPC_OP_WRITE && role == RPC_ROLE_GATEWAY) {
        return cmd_type == LEDGER_CMD_RESERVE || cmd_type == LEDGER_CMD_SETTLE ||
               cmd_type == LEDGER_CMD_VOID || cmd_type == LEDGER_CMD_EXTEND;
    }
    return role >= least_role[op];
}

/* ---- Buffers. ---- */

void rpc_buf_free(struct rpc_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

static int buf_write(void *data, const char *p, size_t n)
{
    struct rpc_buf *b = data;
    if (b->failed) {
        return -1;
    }
    if (n > RPC_FRAME_LIMIT + RPC_FRAME_HEADER || b->len + n > SIZE_MAX / 2) {
        b->failed = true;
        return -1;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 256;
        while (cap < b->len + n) {
            cap *= 2;
        }
        uint8_t *q = realloc(b->data, cap);
        if (q == NULL) {
            b->failed = true;
            return -1;
        }
        b->data = q;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int rpc_buf_append(struct rpc_buf *b, const void *data, size_t n)
{
    return buf_write(b, data, n);
}

/* A frame under construction: the header is reserved first and filled in at the end. */
struct frame {
    struct rpc_buf *out;
    size_t start;
    msgpack_packer pk;
};

static void frame_begin(struct frame *f, struct rpc_buf *out)
{
    static const char header[RPC_FRAME_HEADER] = {0};
    f->out = out;
    f->start = out->len;
    buf_write(out, header, sizeof(header));
    msgpack_packer_init(&f->pk, out, buf_write);
}

static int frame_end(struct frame *f)
{
    struct rpc_buf *b = f->out;
    if (b->failed) {
        return -WIRE_ENOMEM;
    }
    size_t body = b->len - f->start - RPC_FRAME_HEADER;
    if (body > RPC_FRAME_LIMIT) {
        b->len = f->start;
        return -WIRE_ERANGE;
    }
    uint8_t *h = b->data + f->start;
    h[0] = (uint8_t)(body >> 24);
    h[1] = (uint8_t)(body >> 16);
    h[2] = (uint8_t)(body >> 8);
    h[3] = (uint8_t)body;
    return 0;
}

/* Undo a frame that turned out to be out of range. */
static int frame_abort(struct frame *f)
{
    f->out->len = f->start;
    return -WIRE_ERANGE;
}

/* ---- Requests. ---- */

/* One request argument, by kind: whether it can be packed, packing it, reading it. `p` is
 * a pointer to the field in the request's `u`. */
#define ARG_COUNT(kind, path, bound) +1
#define ARG_FITS(kind, path, bound) &&ARG_FITS_##kind(&req->u.path, bound)
#define ARG_FITS_u8(p, bound) true
#define ARG_FITS_u32(p, bound) true
#define ARG_FITS_u64(p, bound) true
#define ARG_FITS_i64(p, bound) true
#define ARG_FITS_str(p, bound) wire__str_fits(*(p), bound)
#define ARG_FITS_key(p, bound) true
#define ARG_FITS_blob(p, bound) (*(p##_len) <= (bound))
#define ARG_FITS_cmd(p, bound) ledger_cmd_encodable(p)
#define ARG_PACK(kind, path, bound) ARG_PACK_##kind(&req->u.path, bound);
#define ARG_PACK_u8(p, bound) msgpack_pack_uint8(pk, *(p))
#define ARG_PACK_u32(p, bound) msgpack_pack_uint32(pk, *(p))
#define ARG_PACK_u64(p, bound) msgpack_pack_uint64(pk, *(p))
#define ARG_PACK_i64(p, bound) msgpack_pack_int64(pk, *(p))
#define ARG_PACK_str(p, bound) wire__pack_str(pk, *(p), bound)
#define ARG_PACK_key(p, bound) wire__pack_bin(pk, *(p), bound)
#define ARG_PACK_blob(p, bound) wire__pack_bin(pk, *(p), *(p##_len))
#define ARG_PACK_cmd(p, bound) ledger_pack_cmd(pk, p)
#define ARG_READ(kind, path, bound) &&ARG_READ_##kind(&q->u.path, bound)
#define ARG_READ_u8(p, bound) mp_read_u8(r, p)
#define ARG_READ_u32(p, bound) mp_read_u32(r, p)
#define ARG_READ_u64(p, bound) mp_read_u64(r, p)
#define ARG_READ_i64(p, bound) mp_read_i64(r, p)
#define ARG_READ_str(p, bound) mp_read_text(r, *(p), bound)
#define ARG_READ_key(p, bound) mp_read_fixed(r, *(p), bound)
#define ARG_READ_blob(p, bound) read_blob(r, *(p), p##_len, bound)
#define ARG_READ_cmd(p, bound) ledger_read_cmd(r, p)

/* A bin of at most `max` bytes into `out`, its length into *len. */
static bool read_blob(struct mp_reader *r, uint8_t *out, uint16_t *len, size_t max)
{
    const uint8_t *b;
    size_t n;
    if (!mp_read_bin(r, max, &b, &n)) {
        return false;
    }
    assert(n <= max && max <= UINT16_MAX);
    memcpy(out, b, n);
    *len = (uint16_t)n;
    return true;
}

/* What the table cannot say: the ranges of a list's limit and of a membership kind. */
static bool request_ranges_ok(const struct rpc_request *q)
{
    switch (q->op) {
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
        return q->u.list.limit >= 1 && q->u.list.limit <= RPC_LIST_MAX;
    case RPC_OP_MEMBERSHIP:
        return q->u.membership.kind >= RPC_MEMBER_ADD &&
               q->u.membership.kind <= RPC_MEMBER_TRANSFER;
    default:
        return true;
    }
}

int rpc_request_encode(struct rpc_buf *out, const struct rpc_request *req)
{
    struct frame f;
    frame_begin(&f, out);
    msgpack_packer *pk = &f.pk;
    switch (req->op) {
#define OP_PACK(code, number, name, args, least)                                                \
    case number:                                                                             \
        if (!(true args(ARG_FITS)) || !request_ranges_ok(req)) {                             \
            return frame_abort(&f);                                                          \
        }                                                                                    \
        msgpack_pack_array(pk, 2 args(ARG_COUNT));                                           \
        msgpack_pack_uint64(pk, req->seq);                                                   \
        msgpack_pack_uint8(pk, req->op);                                                     \
        args(ARG_PACK) break;
        RPC_OPS(OP_PACK)
#undef OP_PACK
    default:
        return frame_abort(&f);
    }
    return frame_end(&f);
}

static void set_why(char *why, const char *text)
{
    if (why != NULL) {
        snprintf(why, RPC_MESSAGE_MAX + 1, "%s", text);
    }
}

/* Expected array length of each request op (0: not an op). */
static uint32_t request_fields(uint8_t op)
{
    static const uint8_t fields[RPC_OP_MAX] = {
#define OP_FIELDS(code, number, name, args, least) [number] = 2 args(ARG_COUNT),
        RPC_OPS(OP_FIELDS)
#undef OP_FIELDS
    };
    return op < RPC_OP_MAX ? fields[op] : 0;
}

static bool read_request_args(struct mp_reader *r, struct rpc_request *q)
{
    switch (q->op) {
#define OP_READ(code, number, name, args, least)                                                \
    case number:                                                                             \
        return true args(ARG_READ) && request_ranges_ok(q);
        RPC_OPS(OP_READ)
#undef OP_READ
    default:
        return false;
    }
}

int rpc_request_decode(const void *body, size_t len, struct rpc_request *req, uint64_t *seq_out,
                       char *why)
{
    struct mp_reader r;
    uint32_t n;
    memset(req, 0, sizeof(*req));
    mp_reader_init(&r, body, len);
    if (!mp_read_array(&r, 16, &n) || n < 2 || !mp_read_u64(&r, &req->seq)) {
        set_why(why, "a request is an array [seq, op, ...]");
        return -WIRE_ERANGE;
    }
    if (seq_out != NULL) {
        *seq_out = req->seq;
    }
    if (!mp_read_u8(&r, &req->op) || request_fields(req->op) == 0) {
        set_why(why, "unknown op");
        return -WIRE_ERANGE;
    }
    if (n != request_fields(req->op)) {
        set_why(why, "wrong number of arguments for the op");
        return -WIRE_ERANGE;
    }
    if (!read_request_args(&r, req) || !r.ok) {
        set_why(why, req->op == RPC_OP_WRITE ? "malformed command" : "malformed arguments");
        return -WIRE_ERANGE;
    }
    if (mp_left(&r) != 0) {
        set_why(why, "trailing bytes after the request");
        return -WIRE_ERANGE;
    }
    return 0;
}

/* ---- Responses: payloads. ---- */

#define RESULT_FIELDS 11
#define ACCOUNT_FIELDS 20
#define RESV_FIELDS 10
#define ENTRY_FIELDS 13
#define MEMBER_FIELDS 4
#define STATUS_FIELDS 11

static void pack_result(msgpack_packer *pk, const struct ledger_result *x)
{
    msgpack_pack_array(pk, RESULT_FIELDS);
    msgpack_pack_int32(pk, x->status);
    msgpack_pack_uint8(pk, x->cmd_type);
    msgpack_pack_uint8(pk, x->deny_reason);
    msgpack_pack_uint16(pk, x->flags);
    wire__pack_bin(pk, x->request_id, LEDGER_REQUEST_ID_SIZE);
    wire__pack_str(pk, x->account, LEDGER_NAME_MAX);
    msgpack_pack_int64(pk, x->remaining);
    msgpack_pack_int64(pk, x->retry_after_ms);
    msgpack_pack_int64(pk, x->charged_micros);
    msgpack_pack_int64(pk, x->overrun_micros);
    msgpack_pack_int64(pk, x->expires_at_ms);
}

static bool read_result(struct mp_reader *r, struct ledger_result *x)
{
    uint32_t n;
    int64_t status;
    uint32_t flags = 0;
    if (!mp_read_array(r, RESULT_FIELDS, &n) || n != RESULT_FIELDS || !mp_read_i64(r, &status) ||
        status < INT32_MIN || status > INT32_MAX) {
        return false;
    }
    x->status = (int32_t)status;
    bool ok = mp_read_u8(r, &x->cmd_type) && mp_read_u8(r, &x->deny_reason) && mp_read_u32(r, &flags) &&
              flags <= UINT16_MAX && mp_read_fixed(r, x->request_id, LEDGER_REQUEST_ID_SIZE) &&
              mp_read_text(r, x->account, LEDGER_NAME_MAX) && mp_read_i64(r, &x->remaining) &&
              mp_read_i64(r, &x->retry_after_ms) && mp_read_i64(r, &x->charged_micros) &&
              mp_read_i64(r, &x->overrun_micros) && mp_read_i64(r, &x->expires_at_ms);
    x->flags = (uint16_t)flags;
    return ok;
}

static void pack_account(msgpack_packer *pk, const struct ledger_account_info *a)
{
    msgpack_pack_array(pk, ACCOUNT_FIELDS);
    msgpack_pack_uint64(pk, a->id);
    wire__pack_str(pk, a->name, LEDGER_NAME_MAX);
    wire__pack_str(pk, a->parent, LEDGER_NAME_MAX);
    msgpack_pack_uint32(pk, a->depth);
    ledger_pack_limits(pk, &a->limits);
    msgpack_pack_int64(pk, a->created_ms);
    msgpack_pack_int64(pk, a->spent_micros);
    msgpack_pack_int64(pk, a->held_micros);
    msgpack_pack_int64(pk, a->remaining_micros);
    msgpack_pack_int64(pk, a->lifetime_spent_micros);
    msgpack_pack_int64(pk, a->overrun_micros);
    msgpack_pack_uint64(pk, a->inflight);
    msgpack_pack_int64(pk, a->period_start_ms);
    msgpack_pack_int64(pk, a->period_end_ms);
    msgpack_pack_uint64(pk, a->rpm_available);
    msgpack_pack_uint64(pk, a->tpm_available);
    msgpack_pack_uint32(pk, a->n_keys);
    /* Room to grow without a new format: three reserved zeros. */
    msgpack_pack_uint8(pk, 0);
    msgpack_pack_uint8(pk, 0);
    msgpack_pack_uint8(pk, 0);
}

static bool read_account(struct mp_reader *r, struct ledger_account_info *a)
{
    uint32_t n;
    uint64_t reserved;
    return mp_read_array(r, ACCOUNT_FIELDS, &n) && n == ACCOUNT_FIELDS && mp_read_u64(r, &a->id) &&
           mp_read_text(r, a->name, LEDGER_NAME_MAX) && mp_read_text(r, a->parent, LEDGER_NAME_MAX) &&
           mp_read_u32(r, &a->depth) && ledger_read_limits(r, &a->limits) &&
           mp_read_i64(r, &a->created_ms) && mp_read_i64(r, &a->spent_micros) &&
           mp_read_i64(r, &a->held_micros) && mp_read_i64(r, &a->remaining_micros) &&
           mp_read_i64(r, &a->lifetime_spent_micros) && mp_read_i64(r, &a->overrun_micros) &&
           mp_read_u64(r, &a->inflight) && mp_read_i64(r, &a->period_start_ms) &&
           mp_read_i64(r, &a->period_end_ms) && mp_read_u64(r, &a->rpm_available) &&
           mp_read_u64(r, &a->tpm_available) && mp_read_u32(r, &a->n_keys) &&
           mp_read_u64(r, &reserved) && mp_read_u64(r, &reserved) && mp_read_u64(r, &reserved);
}

static void pack_resv(msgpack_packer *pk, const struct ledger_reservation_info *v)
{
    msgpack_pack_array(pk, RESV_FIELDS);
    wire__pack_bin(pk, v->request_id, LEDGER_REQUEST_ID_SIZE);
    msgpack_pack_uint8(pk, v->state);
    wire__pack_str(pk, v->account, LEDGER_NAME_MAX);
    wire__pack_str(pk, v->model, LEDGER_MODEL_MAX);
    msgpack_pack_int64(pk, v->estimate_micros);
    msgpack_pack_uint64(pk, v->estimate_tokens);
    msgpack_pack_int64(pk, v->created_ms);
    msgpack_pack_int64(pk, v->expires_at_ms);
    msgpack_pack_int64(pk, v->charged_micros);
    wire__pack_bin(pk, v->metadata, v->metadata_len);
}

static bool read_resv(struct mp_reader *r, struct ledger_reservation_info *v)
{
    uint32_t n;
    const uint8_t *meta;
    size_t meta_len;
    if (!mp_read_array(r, RESV_FIELDS, &n) || n != RESV_FIELDS ||
        !mp_read_fixed(r, v->request_id, LEDGER_REQUEST_ID_SIZE) || !mp_read_u8(r, &v->state) ||
        !mp_read_text(r, v->account, LEDGER_NAME_MAX) || !mp_read_text(r, v->model, LEDGER_MODEL_MAX) ||
        !mp_read_i64(r, &v->estimate_micros) || !mp_read_u64(r, &v->estimate_tokens) ||
        !mp_read_i64(r, &v->created_ms) || !mp_read_i64(r, &v->expires_at_ms) ||
        !mp_read_i64(r, &v->charged_micros) ||
        !mp_read_bin(r, LEDGER_METADATA_MAX, &meta, &meta_len)) {
        return false;
    }
    memcpy(v->metadata, meta, meta_len);
    v->metadata_len = (uint16_t)meta_len;
    return true;
}

static void pack_entry(msgpack_packer *pk, const struct ledger_journal_entry *e)
{
    msgpack_pack_array(pk, ENTRY_FIELDS);
    msgpack_pack_uint64(pk, e->seq);
    msgpack_pack_int64(pk, e->ts_ms);
    msgpack_pack_uint8(pk, e->kind);
    msgpack_pack_uint8(pk, e->cmd_type);
    wire__pack_str(pk, e->account, LEDGER_NAME_MAX);
    wire__pack_str(pk, e->actor, LEDGER_ACTOR_MAX);
    wire__pack_bin(pk, e->request_id, LEDGER_REQUEST_ID_SIZE);
    msgpack_pack_int64(pk, e->amount_micros);
    msgpack_pack_uint64(pk, e->tokens);
    msgpack_pack_int64(pk, e->period_start_ms);
    wire__pack_str(pk, e->model, LEDGER_MODEL_MAX);
    wire__pack_bin(pk, e->admin_hash, sizeof(e->admin_hash));
    msgpack_pack_uint8(pk, 0); /* reserved */
}

static bool read_entry(struct mp_reader *r, struct ledger_journal_entry *e)
{
    uint32_t n;
    uint64_t reserved;
    return mp_read_array(r, ENTRY_FIELDS, &n) && n == ENTRY_FIELDS && mp_read_u64(r, &e->seq) &&
           mp_read_i64(r, &e->ts_ms) && mp_read_u8(r, &e->kind) && mp_read_u8(r, &e->cmd_type) &&
           mp_read_text(r, e->account, LEDGER_NAME_MAX) && mp_read_text(r, e->actor, LEDGER_ACTOR_MAX) &&
           mp_read_fixed(r, e->request_id, LEDGER_REQUEST_ID_SIZE) &&
           mp_read_i64(r, &e->amount_micros) && mp_read_u64(r, &e->tokens) &&
           mp_read_i64(r, &e->period_start_ms) && mp_read_text(r, e->model, LEDGER_MODEL_MAX) &&
           mp_read_fixed(r, e->admin_hash, sizeof(e->admin_hash)) && mp_read_u64(r, &reserved);
}

static void pack_status(msgpack_packer *pk, const struct rpc_node_status *s)
{
    msgpack_pack_array(pk, STATUS_FIELDS);
    msgpack_pack_uint64(pk, s->node_id);
    msgpack_pack_uint64(pk, s->term);
    msgpack_pack_uint8(pk, s->raft_state);
    msgpack_pack_uint8(pk, s->serving);
    msgpack_pack_uint64(pk, s->leader_id);
    wire__pack_str(pk, s->leader_address, RPC_ADDRESS_MAX);
    msgpack_pack_uint64(pk, s->commit_index);
    msgpack_pack_uint64(pk, s->applied_index);
    msgpack_pack_int64(pk, s->ledger_now_ms);
    msgpack_pack_array(pk, s->n_members);
    for (uint32_t i = 0; i < s->n_members; i++) {
        const struct rpc_member *m = &s->members[i];
        msgpack_pack_array(pk, MEMBER_FIELDS);
        msgpack_pack_uint64(pk, m->id);
        wire__pack_str(pk, m->peer_address, RPC_ADDRESS_MAX);
        wire__pack_str(pk, m->client_address, RPC_ADDRESS_MAX);
        msgpack_pack_uint8(pk, m->role);
    }
    msgpack_pack_uint8(pk, 0); /* reserved */
}

static bool read_status(struct mp_reader *r, struct rpc_node_status *s)
{
    uint32_t n, m;
    uint64_t reserved;
    if (!mp_read_array(r, STATUS_FIELDS, &n) || n != STATUS_FIELDS || !mp_read_u64(r, &s->node_id) ||
        !mp_read_u64(r, &s->term) || !mp_read_u8(r, &s->raft_state) || !mp_read_u8(r, &s->serving) ||
        !mp_read_u64(r, &s->leader_id) || !mp_read_text(r, s->leader_address, RPC_ADDRESS_MAX) ||
        !mp_read_u64(r, &s->commit_index) || !mp_read_u64(r, &s->applied_index) ||
        !mp_read_i64(r, &s->ledger_now_ms) || !mp_read_array(r, RPC_MEMBERS_MAX, &m)) {
        return false;
    }
    s->n_members = m;
    for (uint32_t i = 0; i < m; i++) {
        struct rpc_member *x = &s->members[i];
        uint32_t k;
        if (!mp_read_array(r, MEMBER_FIELDS, &k) || k != MEMBER_FIELDS || !mp_read_u64(r, &x->id) ||
            !mp_read_text(r, x->peer_address, RPC_ADDRESS_MAX) ||
            !mp_read_text(r, x->client_address, RPC_ADDRESS_MAX) || !mp_read_u8(r, &x->role)) {
            return false;
        }
    }
    return mp_read_u64(r, &reserved);
}

/* ---- Responses: frames. ---- */

int rpc_error_encode(struct rpc_buf *out, uint64_t seq, int status, const char *message,
                     uint64_t leader_id, const char *leader_address)
{
    char msg[RPC_MESSAGE_MAX + 1], addr[RPC_ADDRESS_MAX + 1];
    if (status <= RPC_OK || status >= RPC_STATUS_MAX) {
        return -WIRE_ERANGE;
    }
    snprintf(msg, sizeof(msg), "%s", message != NULL ? message : "");
    snprintf(addr, sizeof(addr), "%s", leader_address != NULL ? leader_address : "");
    struct frame f;
    frame_begin(&f, out);
    msgpack_pack_array(&f.pk, 5);
    msgpack_pack_uint64(&f.pk, seq);
    msgpack_pack_int32(&f.pk, status);
    wire__pack_str(&f.pk, msg, RPC_MESSAGE_MAX);
    msgpack_pack_uint64(&f.pk, leader_id);
    wire__pack_str(&f.pk, addr, RPC_ADDRESS_MAX);
    return frame_end(&f);
}

/* Number of payload fields after [seq, 0] for a successful answer to `op`. */
static uint32_t response_fields(int op)
{
    switch (op) {
    case RPC_OP_HELLO:
    case RPC_OP_WRITE:
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
    case RPC_OP_KEY_GET:
    case RPC_OP_HASH:
        return 2;
    case RPC_OP_ACCOUNT_GET:
    case RPC_OP_RESV_GET:
    case RPC_OP_STATUS:
        return 1;
    case RPC_OP_MEMBERSHIP:
        return 0;
    default:
        return UINT32_MAX;
    }
}

int rpc_response_encode(struct rpc_buf *out, int op, const struct rpc_response *resp)
{
    if (resp->status != RPC_OK) {
        return rpc_error_encode(out, resp->seq, resp->status, resp->message, resp->leader_id,
                                resp->leader_address);
    }
    uint32_t fields = response_fields(op);
    if (fields == UINT32_MAX) {
        return -WIRE_ERANGE;
    }
    struct frame f;
    frame_begin(&f, out);
    msgpack_packer *pk = &f.pk;
    msgpack_pack_array(pk, 2 + fields);
    msgpack_pack_uint64(pk, resp->seq);
    msgpack_pack_int32(pk, RPC_OK);
    switch (op) {
    case RPC_OP_HELLO:
        msgpack_pack_uint8(pk, resp->u.hello.role);
        msgpack_pack_uint64(pk, resp->u.hello.node_id);
        break;
    case RPC_OP_WRITE:
        msgpack_pack_uint64(pk, resp->u.write.index);
        pack_result(pk, &resp->u.write.result);
        break;
    case RPC_OP_ACCOUNT_GET:
        pack_account(pk, &resp->u.account);
        break;
    case RPC_OP_RESV_GET:
        if (resp->u.reservation.metadata_len > LEDGER_METADATA_MAX) {
            return frame_abort(&f); /* pack_bin would read past metadata[] */
        }
        pack_resv(pk, &resp->u.reservation);
        break;
    case RPC_OP_KEY_GET:
        wire__pack_str(pk, resp->u.key.account, LEDGER_NAME_MAX);
        msgpack_pack_uint8(pk, resp->u.key.revoked);
        break;
    case RPC_OP_HASH:
        msgpack_pack_uint64(pk, resp->u.hash.applied_index);
        wire__pack_bin(pk, resp->u.hash.state_hash, sizeof(resp->u.hash.state_hash));
        break;
    case RPC_OP_STATUS:
        if (resp->u.status.n_members > RPC_MEMBERS_MAX) {
            return frame_abort(&f);
        }
        pack_status(pk, &resp->u.status);
        break;
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
        if (resp->u.list.n > RPC_LIST_MAX) {
            return frame_abort(&f);
        }
        msgpack_pack_array(pk, resp->u.list.n);
        for (uint32_t i = 0; i < resp->u.list.n; i++) {
            if (op == RPC_OP_ACCOUNT_LIST) {
                pack_account(pk, &resp->u.list.items.accounts[i]);
            } else if (op == RPC_OP_RESV_LIST) {
                if (resp->u.list.items.reservations[i].metadata_len > LEDGER_METADATA_MAX) {
                    return frame_abort(&f);
                }
                pack_resv(pk, &resp->u.list.items.reservations[i]);
            } else {
                pack_entry(pk, &resp->u.list.items.entries[i]);
            }
        }
        if (resp->u.list.next_len > RPC_CURSOR_MAX) {
            return frame_abort(&f);
        }
        wire__pack_bin(pk, resp->u.list.next, resp->u.list.next_len);
        break;
    default:
        break;
    }
    return frame_end(&f);
}

int rpc_response_seq(const void *body, size_t len, uint64_t *seq)
{
    struct mp_reader r;
    uint32_t n;
    mp_reader_init(&r, body, len);
    return mp_read_array(&r, 16, &n) && n >= 2 && mp_read_u64(&r, seq) ? 0 : -1;
}

static bool read_list(struct mp_reader *r, int op, struct rpc_response *resp)
{
    uint32_t n;
    if (!mp_read_array(r, RPC_LIST_MAX, &n)) {
        return false;
    }
    size_t size = op == RPC_OP_ACCOUNT_LIST ? sizeof(struct ledger_account_info)
                  : op == RPC_OP_RESV_LIST  ? sizeof(struct ledger_reservation_info)
                                            : sizeof(struct ledger_journal_entry);
    void *items = calloc(n > 0 ? n : 1, size);
    if (items == NULL) {
        return false;
    }
    resp->owned = items;
    resp->u.list.items.accounts = items; /* union: the same pointer for every kind */
    resp->u.list.n = n;
    for (uint32_t i = 0; i < n; i++) {
        bool ok = op == RPC_OP_ACCOUNT_LIST ? read_account(r, &resp->u.list.items.accounts[i])
                  : op == RPC_OP_RESV_LIST
                      ? read_resv(r, &resp->u.list.items.reservations[i])
                      : read_entry(r, &resp->u.list.items.entries[i]);
        if (!ok) {
            return false;
        }
    }
    return read_blob(r, resp->u.list.next, &resp->u.list.next_len, RPC_CURSOR_MAX);
}

static bool read_payload(struct mp_reader *r, int op, struct rpc_response *resp)
{
    switch (op) {
    case RPC_OP_HELLO:
        return mp_read_u8(r, &resp->u.hello.role) && mp_read_u64(r, &resp->u.hello.node_id);
    case RPC_OP_WRITE:
        return mp_read_u64(r, &resp->u.write.index) && read_result(r, &resp->u.write.result);
    case RPC_OP_ACCOUNT_GET:
        return read_account(r, &resp->u.account);
    case RPC_OP_RESV_GET:
        return read_resv(r, &resp->u.reservation);
    case RPC_OP_KEY_GET:
        return mp_read_text(r, resp->u.key.account, LEDGER_NAME_MAX) &&
               mp_read_u8(r, &resp->u.key.revoked);
    case RPC_OP_STATUS:
        return read_status(r, &resp->u.status);
    case RPC_OP_HASH:
        return mp_read_u64(r, &resp->u.hash.applied_index) &&
               mp_read_fixed(r, resp->u.hash.state_hash, sizeof(resp->u.hash.state_hash));
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
        return read_list(r, op, resp);
    case RPC_OP_MEMBERSHIP:
        return true;
    default:
        return false;
    }
}

int rpc_response_decode(const void *body, size_t len, int op, struct rpc_response *resp,
                        char *why)
{
    struct mp_reader r;
    uint32_t n;
    int64_t status;
    memset(resp, 0, sizeof(*resp));
    mp_reader_init(&r, body, len);
    if (!mp_read_array(&r, 16, &n) || n < 2 || !mp_read_u64(&r, &resp->seq) ||
        !mp_read_i64(&r, &status) || status < 0 || status >= RPC_STATUS_MAX) {
        set_why(why, "a response is an array [seq, status, ...]");
        return -WIRE_ERANGE;
    }
    resp->status = (int32_t)status;
    bool ok;
    if (status != RPC_OK) {
        ok = n == 5 && mp_read_text(&r, resp->message, RPC_MESSAGE_MAX) &&
             mp_read_u64(&r, &resp->leader_id) &&
             mp_read_text(&r, resp->leader_address, RPC_ADDRESS_MAX);
    } else {
        uint32_t fields = response_fields(op);
        ok = fields != UINT32_MAX && n == 2 + fields && read_payload(&r, op, resp);
    }
    if (!ok || !r.ok || mp_left(&r) != 0) {
        rpc_response_free(resp);
        set_why(why, "malformed response");
        return -WIRE_ERANGE;
    }
    return 0;
}

void rpc_response_free(struct rpc_response *resp)
{
    free(resp->owned);
    resp->owned = NULL;
}

/* ---- Framer. ---- */

void rpc_framer_init(struct rpc_framer *f, size_t max_body)
{
    memset(f, 0, sizeof(*f));
    f->max_body = max_body;
}

void rpc_framer_free(struct rpc_framer *f)
{
    free(f->buf);
    memset(f, 0, sizeof(*f));
}

int rpc_framer_feed(struct rpc_framer *f, const void *data, size_t n)
{
    if (n == 0) { /* a fresh framer's buf is NULL: memcpy(NULL, data, 0) is undefined */
        return 0;
    }
    if (f->consumed > 0) { /* drop what was handed out */
        memmove(f->buf, f->buf + f->consumed, f->len - f->consumed);
        f->len -= f->consumed;
        f->consumed = 0;
    }
    if (f->len + n > f->cap) {
        size_t cap = f->cap != 0 ? f->cap : 4096;
        while (cap < f->len + n) {
            cap *= 2;
        }
        uint8_t *p = realloc(f->buf, cap);
        if (p == NULL) {
            return -WIRE_ENOMEM;
        }
        f->buf = p;
        f->cap = cap;
    }
    memcpy(f->buf + f->len, data, n);
    f->len += n;
    return 0;
}

int rpc_framer_next(struct rpc_framer *f, const uint8_t **body, size_t *len)
{
    size_t avail = f->len - f->consumed;
    if (avail < RPC_FRAME_HEADER) {
        return 0;
    }
    const uint8_t *h = f->buf + f->consumed;
    size_t body_len = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
    if (body_len > f->max_body) {
        return -WIRE_ERANGE;
    }
    if (avail < RPC_FRAME_HEADER + body_len) {
        return 0;
    }
    *body = h + RPC_FRAME_HEADER;
    *len = body_len;
    f->consumed += RPC_FRAME_HEADER + body_len;
    return 1;
}

/* ---- Hex. ---- */

void rpc_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

int rpc_unhex(const char *hex, uint8_t *out, size_t n)
{
    if (strlen(hex) != 2 * n) {
        return -WIRE_ERANGE;
    }
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -WIRE_ERANGE;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}
