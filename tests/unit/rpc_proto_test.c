/*
 * rpc_proto_test.c: the wire protocol (wire/wire.h): messages, frames, names, roles.
 *
 * Every request op and every response op is encoded, cut out of its frame by the framer
 * and decoded again, with every field at a distinct value near the top (or the bottom) of
 * its type and every string at its bound (or empty), so a field dropped, swapped or
 * narrowed shows.
 * Encoders must refuse what is out of range and leave the caller's buffer exactly as it
 * was. Decoders are fed hostile input: every prefix of every valid body, trailing bytes,
 * array counts one off, every scalar wrapped in an array or replaced by nil, strings
 * with a NUL, fixed-size bins one byte off and every string one byte over its bound. A
 * small msgpack walker finds the nodes of a valid body so that each mutation is a splice
 * that leaves the rest of the message intact. Every decode reads a private heap copy of
 * exactly its input, so under ASan a read past the end is caught.
 */
#include "test.h"

#include "cmd_equal.h"
#include "mp_walk.h"

#include "ledger/ledger.h"
#include "wire/wire.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

static const char ALPHABET[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/@-";

/* ---- Small helpers. ---- */

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL && n > 0) {
        perror("malloc");
        abort();
    }
    return p;
}

/* `len` characters of the alphabet from position `seed` on, NUL-terminated. */
static void fill_text(char *dst, size_t len, size_t seed)
{
    size_t n = sizeof(ALPHABET) - 1;
    for (size_t i = 0; i < len; i++) {
        dst[i] = ALPHABET[(seed + i) % n];
    }
    dst[len] = '\0';
}

/* A string at its bound `max` (at_max), else empty. */
static void text(char *dst, bool at_max, size_t max, size_t seed)
{
    fill_text(dst, at_max ? max : 0, seed);
}

static void fill_bytes(uint8_t *dst, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        dst[i] = (uint8_t)(seed * 31u + i * 7u + 1u);
    }
}

/* Field number `k` of a message: distinct values near the top or the bottom of the type. */
static int64_t i64v(bool at_max, int k)
{
    return at_max ? INT64_MAX - k : INT64_MIN + k;
}

static uint64_t u64v(bool at_max, int k)
{
    return at_max ? UINT64_MAX - (uint64_t)k : (uint64_t)k;
}

static uint32_t u32v(bool at_max, int k)
{
    return at_max ? UINT32_MAX - (uint32_t)k : (uint32_t)k;
}

static uint8_t u8v(bool at_max, int k)
{
    return (uint8_t)(at_max ? 255 - k : k);
}

/* ---- Messages with every field set. ---- */

static struct ledger_limits limits_of(bool at_max)
{
    struct ledger_limits l;
    memset(&l, 0, sizeof(l));
    l.set = u32v(at_max, 1);
    l.period_kind = u8v(at_max, 2);
    l.blocked = u8v(at_max, 3);
    l.expiry_policy = u8v(at_max, 4);
    l.budget_micros = i64v(at_max, 5);
    l.soft_budget_micros = i64v(at_max, 6);
    l.period_ms = i64v(at_max, 7);
    l.rpm = u64v(at_max, 8);
    l.rpm_burst = u64v(at_max, 9);
    l.tpm = u64v(at_max, 10);
    l.tpm_burst = u64v(at_max, 11);
    l.max_parallel = u64v(at_max, 12);
    l.expires_at_ms = i64v(at_max, 13);
    return l;
}

static struct ledger_model_limits model_limits_of(bool at_max)
{
    struct ledger_model_limits l;
    memset(&l, 0, sizeof(l));
    l.set = u32v(at_max, 1);
    l.budget_micros = i64v(at_max, 2);
    l.rpm = u64v(at_max, 3);
    l.rpm_burst = u64v(at_max, 4);
    l.tpm = u64v(at_max, 5);
    l.tpm_burst = u64v(at_max, 6);
    return l;
}

/* A command of `type` with every field set; at_max puts strings and metadata at their
 * bounds, else they are empty. */
static struct ledger_cmd command_of(uint8_t type, bool at_max)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = type;
    fill_bytes(c.request_id, LEDGER_REQUEST_ID_SIZE, type);
    text(c.actor, at_max, LEDGER_ACTOR_MAX, 1);
    text(c.scope, at_max, LEDGER_SCOPE_MAX, 9);
    switch (type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        text(c.u.create.name, at_max, LEDGER_NAME_MAX, 2);
        text(c.u.create.parent, at_max, LEDGER_NAME_MAX, 3);
        c.u.create.limits = limits_of(at_max);
        break;
    case LEDGER_CMD_ACCOUNT_UPDATE:
        text(c.u.update.name, at_max, LEDGER_NAME_MAX, 4);
        c.u.update.limits = limits_of(at_max);
        c.u.update.clear = u32v(at_max, 20);
        c.u.update.set_parent = u8v(at_max, 21);
        text(c.u.update.parent, at_max, LEDGER_NAME_MAX, 5);
        break;
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        text(c.u.key.account, at_max, LEDGER_NAME_MAX, 6);
        fill_bytes(c.u.key.key_hash, LEDGER_KEY_HASH_SIZE, 40u + type);
        break;
    case LEDGER_CMD_MODEL_LIMIT_SET:
        text(c.u.model_limit.account, at_max, LEDGER_NAME_MAX, 7);
        text(c.u.model_limit.model, at_max, LEDGER_MODEL_MAX, 8);
        c.u.model_limit.limits = model_limits_of(at_max);
        break;
    case LEDGER_CMD_RESERVE:
        c.u.reserve.by_account = u8v(at_max, 22);
        fill_bytes(c.u.reserve.key_hash, LEDGER_KEY_HASH_SIZE, 9);
        text(c.u.reserve.account, at_max, LEDGER_NAME_MAX, 10);
        c.u.reserve.estimate_micros = i64v(at_max, 23);
        c.u.reserve.estimate_tokens = u64v(at_max, 24);
        text(c.u.reserve.model, at_max, LEDGER_MODEL_MAX, 11);
        c.u.reserve.ttl_ms = i64v(at_max, 25);
        c.u.reserve.metadata_len = at_max ? LEDGER_METADATA_MAX : 0;
        fill_bytes(c.u.reserve.metadata, c.u.reserve.metadata_len, 12);
        break;
    case LEDGER_CMD_SETTLE:
        c.u.settle.actual_micros = i64v(at_max, 26);
        c.u.settle.actual_tokens = u64v(at_max, 27);
        break;
    case LEDGER_CMD_EXTEND:
        c.u.extend.ttl_ms = i64v(at_max, 28);
        break;
    case LEDGER_CMD_CONFIG_SET:
        c.u.config.retention_ms = i64v(at_max, 29);
        break;
    default:
        break;
    }
    return c;
}

/* A request of `op` with every argument set (a WRITE carries a reserve). */
static struct rpc_request request_of(int op, bool at_max)
{
    struct rpc_request q;
    memset(&q, 0, sizeof(q));
    q.seq = u64v(at_max, 0);
    q.op = (uint8_t)op;
    switch (op) {
    case RPC_OP_HELLO:
        q.u.hello.version = u32v(at_max, 1);
        text(q.u.hello.token, at_max, RPC_TOKEN_MAX, 1);
        break;
    case RPC_OP_WRITE:
        q.u.write = command_of(LEDGER_CMD_RESERVE, at_max);
        break;
    case RPC_OP_ACCOUNT_GET:
        text(q.u.get.name, at_max, LEDGER_NAME_MAX, 2);
        q.u.get.flags = u32v(at_max, 2);
        break;
    case RPC_OP_RESV_GET:
        fill_bytes(q.u.get.request_id, LEDGER_REQUEST_ID_SIZE, 3);
        q.u.get.flags = u32v(at_max, 3);
        break;
    case RPC_OP_KEY_GET:
        fill_bytes(q.u.get.key_hash, LEDGER_KEY_HASH_SIZE, 4);
        q.u.get.flags = u32v(at_max, 4);
        break;
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
        text(q.u.list.filter, at_max, LEDGER_NAME_MAX, 5);
        if (op == RPC_OP_JOURNAL) {
            q.u.list.since_ms = i64v(at_max, 5);
            q.u.list.until_ms = i64v(at_max, 6);
        }
        q.u.list.cursor_len = at_max ? RPC_CURSOR_MAX : 9;
        fill_bytes(q.u.list.cursor, q.u.list.cursor_len, 7);
        q.u.list.limit = at_max ? RPC_LIST_MAX : 1;
        q.u.list.flags = u32v(at_max, 8);
        break;
    case RPC_OP_MEMBERSHIP:
        q.u.membership.kind = at_max ? RPC_MEMBER_TRANSFER : RPC_MEMBER_ADD;
        q.u.membership.id = u64v(at_max, 9);
        text(q.u.membership.address, at_max, RPC_ADDRESS_MAX, 6);
        break;
    default:
        break;
    }
    return q;
}

static struct ledger_result result_of(bool at_max)
{
    struct ledger_result x;
    memset(&x, 0, sizeof(x));
    x.status = at_max ? INT32_MAX : INT32_MIN;
    x.cmd_type = u8v(at_max, 1);
    x.deny_reason = u8v(at_max, 2);
    x.flags = (uint16_t)(at_max ? UINT16_MAX : 3);
    fill_bytes(x.request_id, LEDGER_REQUEST_ID_SIZE, 13);
    text(x.account, at_max, LEDGER_NAME_MAX, 12);
    x.remaining = i64v(at_max, 4);
    x.retry_after_ms = i64v(at_max, 5);
    x.charged_micros = i64v(at_max, 6);
    x.overrun_micros = i64v(at_max, 7);
    x.expires_at_ms = i64v(at_max, 8);
    return x;
}

/* Item `i` of a page: every item differs from the others. */
static struct ledger_account_info account_of(bool at_max, unsigned i)
{
    struct ledger_account_info a;
    memset(&a, 0, sizeof(a));
    a.id = at_max ? UINT64_MAX - i : i;
    text(a.name, at_max, LEDGER_NAME_MAX, i);
    text(a.parent, at_max, LEDGER_NAME_MAX, i + 1);
    a.depth = u32v(at_max, 1);
    a.limits = limits_of(at_max);
    a.created_ms = i64v(at_max, 2);
    a.spent_micros = i64v(at_max, 3);
    a.held_micros = i64v(at_max, 4);
    a.remaining_micros = i64v(at_max, 5);
    a.lifetime_spent_micros = i64v(at_max, 6);
    a.overrun_micros = i64v(at_max, 7);
    a.inflight = u64v(at_max, 8);
    a.period_start_ms = i64v(at_max, 9);
    a.period_end_ms = i64v(at_max, 10);
    a.rpm_available = u64v(at_max, 11);
    a.tpm_available = u64v(at_max, 12);
    a.n_keys = u32v(at_max, 13);
    return a;
}

static struct ledger_reservation_info resv_of(bool at_max, unsigned i)
{
    struct ledger_reservation_info v;
    memset(&v, 0, sizeof(v));
    fill_bytes(v.request_id, LEDGER_REQUEST_ID_SIZE, 50u + i);
    v.state = u8v(at_max, 1);
    text(v.account, at_max, LEDGER_NAME_MAX, i);
    text(v.model, at_max, LEDGER_MODEL_MAX, i + 2);
    v.estimate_micros = i64v(at_max, 2);
    v.estimate_tokens = u64v(at_max, 3);
    v.created_ms = i64v(at_max, 4);
    v.expires_at_ms = i64v(at_max, 5);
    v.charged_micros = i64v(at_max, 6);
    v.metadata_len = at_max ? LEDGER_METADATA_MAX : 0;
    fill_bytes(v.metadata, v.metadata_len, 60u + i);
    return v;
}

static struct ledger_journal_entry entry_of(bool at_max, unsigned i)
{
    struct ledger_journal_entry e;
    memset(&e, 0, sizeof(e));
    e.seq = at_max ? UINT64_MAX - i : i;
    e.ts_ms = i64v(at_max, 1);
    e.kind = u8v(at_max, 2);
    e.cmd_type = u8v(at_max, 3);
    text(e.account, at_max, LEDGER_NAME_MAX, i);
    text(e.actor, at_max, LEDGER_ACTOR_MAX, i + 3);
    fill_bytes(e.request_id, LEDGER_REQUEST_ID_SIZE, 70u + i);
    e.amount_micros = i64v(at_max, 4);
    e.tokens = u64v(at_max, 5);
    e.period_start_ms = i64v(at_max, 6);
    text(e.model, at_max, LEDGER_MODEL_MAX, i + 4);
    fill_bytes(e.admin_hash, sizeof(e.admin_hash), 80u + i);
    return e;
}

static struct rpc_node_status status_of(bool at_max, uint32_t n_members)
{
    struct rpc_node_status s;
    memset(&s, 0, sizeof(s));
    s.node_id = u64v(at_max, 1);
    s.term = u64v(at_max, 2);
    s.raft_state = u8v(at_max, 3);
    s.serving = u8v(at_max, 4);
    s.leader_id = u64v(at_max, 5);
    text(s.leader_address, at_max, RPC_ADDRESS_MAX, 1);
    s.commit_index = u64v(at_max, 6);
    s.applied_index = u64v(at_max, 7);
    s.ledger_now_ms = i64v(at_max, 8);
    s.n_members = n_members;
    for (uint32_t i = 0; i < n_members && i < RPC_MEMBERS_MAX; i++) {
        struct rpc_member *m = &s.members[i];
        m->id = at_max ? UINT64_MAX - i : i;
        text(m->peer_address, at_max, RPC_ADDRESS_MAX, i);
        text(m->client_address, at_max, RPC_ADDRESS_MAX, i + 5);
        m->role = u8v(at_max, (int)i);
    }
    return s;
}

/* A successful answer to a non-list `op` with every field set. */
static struct rpc_response response_of(int op, bool at_max)
{
    struct rpc_response r;
    memset(&r, 0, sizeof(r));
    r.seq = u64v(at_max, 0);
    r.status = RPC_OK;
    switch (op) {
    case RPC_OP_HELLO:
        r.u.hello.role = u8v(at_max, 1);
        r.u.hello.node_id = u64v(at_max, 2);
        break;
    case RPC_OP_WRITE:
        r.u.write.index = u64v(at_max, 3);
        r.u.write.result = result_of(at_max);
        break;
    case RPC_OP_ACCOUNT_GET:
        r.u.account = account_of(at_max, 0);
        break;
    case RPC_OP_RESV_GET:
        r.u.reservation = resv_of(at_max, 0);
        break;
    case RPC_OP_KEY_GET:
        text(r.u.key.account, at_max, LEDGER_NAME_MAX, 9);
        r.u.key.revoked = u8v(at_max, 4);
        break;
    case RPC_OP_STATUS:
        r.u.status = status_of(at_max, at_max ? RPC_MEMBERS_MAX : 0);
        break;
    case RPC_OP_HASH:
        r.u.hash.applied_index = u64v(at_max, 5);
        fill_bytes(r.u.hash.state_hash, sizeof(r.u.hash.state_hash), 90);
        break;
    default:
        break;
    }
    return r;
}

/* Items of list pages (one page at a time; one past the bound for refusal tests). */
static struct ledger_account_info page_accounts[RPC_LIST_MAX + 1];
static struct ledger_reservation_info page_reservations[RPC_LIST_MAX + 1];
static struct ledger_journal_entry page_entries[RPC_LIST_MAX + 1];

static bool is_list_op(int op)
{
    return op == RPC_OP_ACCOUNT_LIST || op == RPC_OP_RESV_LIST || op == RPC_OP_JOURNAL;
}

/* A page of `n` items answering list `op`; the items live in the page_* arrays. */
static struct rpc_response list_response(int op, uint32_t n, bool at_max)
{
    struct rpc_response r;
    memset(&r, 0, sizeof(r));
    r.seq = u64v(at_max, 0);
    r.status = RPC_OK;
    r.u.list.n = n;
    r.u.list.next_len = at_max ? RPC_CURSOR_MAX : 9;
    fill_bytes(r.u.list.next, r.u.list.next_len, 1);
    for (uint32_t i = 0; i < n && i <= RPC_LIST_MAX; i++) {
        if (op == RPC_OP_ACCOUNT_LIST) {
            page_accounts[i] = account_of(at_max, i);
        } else if (op == RPC_OP_RESV_LIST) {
            page_reservations[i] = resv_of(at_max, i);
        } else {
            page_entries[i] = entry_of(at_max, i);
        }
    }
    if (op == RPC_OP_ACCOUNT_LIST) {
        r.u.list.items.accounts = page_accounts;
    } else if (op == RPC_OP_RESV_LIST) {
        r.u.list.items.reservations = page_reservations;
    } else {
        r.u.list.items.entries = page_entries;
    }
    return r;
}

/* A failure answer with the message and the address at their bounds (or empty). */
static struct rpc_response error_of(int status, bool at_max)
{
    struct rpc_response r;
    memset(&r, 0, sizeof(r));
    r.seq = u64v(at_max, 0);
    r.status = status;
    text(r.message, at_max, RPC_MESSAGE_MAX, 7);
    r.leader_id = u64v(at_max, 1);
    text(r.leader_address, at_max, RPC_ADDRESS_MAX, 8);
    return r;
}

/* ---- Comparing messages field by field. ---- */

static void check_request_equal(const struct rpc_request *a, const struct rpc_request *b)
{
    CHECK(a->seq == b->seq);
    CHECK_EQ_INT(a->op, b->op);
    if (a->op != b->op) {
        return;
    }
    switch (a->op) {
    case RPC_OP_HELLO:
        CHECK_EQ_INT(a->u.hello.version, b->u.hello.version);
        CHECK_EQ_STR(a->u.hello.token, b->u.hello.token);
        break;
    case RPC_OP_WRITE:
        check_cmd_equal(&a->u.write, &b->u.write);
        break;
    case RPC_OP_ACCOUNT_GET:
        CHECK_EQ_STR(a->u.get.name, b->u.get.name);
        CHECK_EQ_INT(a->u.get.flags, b->u.get.flags);
        break;
    case RPC_OP_RESV_GET:
        CHECK(memcmp(a->u.get.request_id, b->u.get.request_id, LEDGER_REQUEST_ID_SIZE) == 0);
        CHECK_EQ_INT(a->u.get.flags, b->u.get.flags);
        break;
    case RPC_OP_KEY_GET:
        CHECK(memcmp(a->u.get.key_hash, b->u.get.key_hash, LEDGER_KEY_HASH_SIZE) == 0);
        CHECK_EQ_INT(a->u.get.flags, b->u.get.flags);
        break;
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
        CHECK_EQ_STR(a->u.list.filter, b->u.list.filter);
        if (a->op == RPC_OP_JOURNAL) {
            CHECK_EQ_INT(a->u.list.since_ms, b->u.list.since_ms);
            CHECK_EQ_INT(a->u.list.until_ms, b->u.list.until_ms);
        }
        CHECK(a->u.list.cursor_len == b->u.list.cursor_len &&
              memcmp(a->u.list.cursor, b->u.list.cursor, a->u.list.cursor_len) == 0);
        CHECK_EQ_INT(a->u.list.limit, b->u.list.limit);
        CHECK_EQ_INT(a->u.list.flags, b->u.list.flags);
        break;
    case RPC_OP_MEMBERSHIP:
        CHECK_EQ_INT(a->u.membership.kind, b->u.membership.kind);
        CHECK(a->u.membership.id == b->u.membership.id);
        CHECK_EQ_STR(a->u.membership.address, b->u.membership.address);
        break;
    default:
        break;
    }
}

static void check_account_equal(const struct ledger_account_info *a,
                                const struct ledger_account_info *b)
{
    CHECK(a->id == b->id);
    CHECK_EQ_STR(a->name, b->name);
    CHECK_EQ_STR(a->parent, b->parent);
    CHECK_EQ_INT(a->depth, b->depth);
    check_limits_equal(&a->limits, &b->limits);
    CHECK_EQ_INT(a->created_ms, b->created_ms);
    CHECK_EQ_INT(a->spent_micros, b->spent_micros);
    CHECK_EQ_INT(a->held_micros, b->held_micros);
    CHECK_EQ_INT(a->remaining_micros, b->remaining_micros);
    CHECK_EQ_INT(a->lifetime_spent_micros, b->lifetime_spent_micros);
    CHECK_EQ_INT(a->overrun_micros, b->overrun_micros);
    CHECK(a->inflight == b->inflight);
    CHECK_EQ_INT(a->period_start_ms, b->period_start_ms);
    CHECK_EQ_INT(a->period_end_ms, b->period_end_ms);
    CHECK(a->rpm_available == b->rpm_available);
    CHECK(a->tpm_available == b->tpm_available);
    CHECK_EQ_INT(a->n_keys, b->n_keys);
}

static void check_resv_equal(const struct ledger_reservation_info *a,
                             const struct ledger_reservation_info *b)
{
    CHECK(memcmp(a->request_id, b->request_id, LEDGER_REQUEST_ID_SIZE) == 0);
    CHECK_EQ_INT(a->state, b->state);
    CHECK_EQ_STR(a->account, b->account);
    CHECK_EQ_STR(a->model, b->model);
    CHECK_EQ_INT(a->estimate_micros, b->estimate_micros);
    CHECK(a->estimate_tokens == b->estimate_tokens);
    CHECK_EQ_INT(a->created_ms, b->created_ms);
    CHECK_EQ_INT(a->expires_at_ms, b->expires_at_ms);
    CHECK_EQ_INT(a->charged_micros, b->charged_micros);
    CHECK_EQ_INT(a->metadata_len, b->metadata_len);
    if (a->metadata_len == b->metadata_len) {
        CHECK(memcmp(a->metadata, b->metadata, a->metadata_len) == 0);
    }
}

static void check_entry_equal(const struct ledger_journal_entry *a,
                              const struct ledger_journal_entry *b)
{
    CHECK(a->seq == b->seq);
    CHECK_EQ_INT(a->ts_ms, b->ts_ms);
    CHECK_EQ_INT(a->kind, b->kind);
    CHECK_EQ_INT(a->cmd_type, b->cmd_type);
    CHECK_EQ_STR(a->account, b->account);
    CHECK_EQ_STR(a->actor, b->actor);
    CHECK(memcmp(a->request_id, b->request_id, LEDGER_REQUEST_ID_SIZE) == 0);
    CHECK_EQ_INT(a->amount_micros, b->amount_micros);
    CHECK(a->tokens == b->tokens);
    CHECK_EQ_INT(a->period_start_ms, b->period_start_ms);
    CHECK_EQ_STR(a->model, b->model);
    CHECK(memcmp(a->admin_hash, b->admin_hash, sizeof(a->admin_hash)) == 0);
}

static void check_status_equal(const struct rpc_node_status *a, const struct rpc_node_status *b)
{
    CHECK(a->node_id == b->node_id);
    CHECK(a->term == b->term);
    CHECK_EQ_INT(a->raft_state, b->raft_state);
    CHECK_EQ_INT(a->serving, b->serving);
    CHECK(a->leader_id == b->leader_id);
    CHECK_EQ_STR(a->leader_address, b->leader_address);
    CHECK(a->commit_index == b->commit_index);
    CHECK(a->applied_index == b->applied_index);
    CHECK_EQ_INT(a->ledger_now_ms, b->ledger_now_ms);
    CHECK_EQ_INT(a->n_members, b->n_members);
    for (uint32_t i = 0; i < a->n_members && i < b->n_members && i < RPC_MEMBERS_MAX; i++) {
        CHECK(a->members[i].id == b->members[i].id);
        CHECK_EQ_STR(a->members[i].peer_address, b->members[i].peer_address);
        CHECK_EQ_STR(a->members[i].client_address, b->members[i].client_address);
        CHECK_EQ_INT(a->members[i].role, b->members[i].role);
    }
}

static void check_response_equal(int op, const struct rpc_response *a, const struct rpc_response *b)
{
    CHECK(a->seq == b->seq);
    CHECK_EQ_INT(a->status, b->status);
    if (a->status != b->status) {
        return;
    }
    if (a->status != RPC_OK) {
        CHECK_EQ_STR(a->message, b->message);
        CHECK(a->leader_id == b->leader_id);
        CHECK_EQ_STR(a->leader_address, b->leader_address);
        return;
    }
    CHECK_EQ_STR(b->message, "");
    CHECK_EQ_INT(b->leader_id, 0);
    CHECK_EQ_STR(b->leader_address, "");
    switch (op) {
    case RPC_OP_HELLO:
        CHECK_EQ_INT(a->u.hello.role, b->u.hello.role);
        CHECK(a->u.hello.node_id == b->u.hello.node_id);
        break;
    case RPC_OP_WRITE:
        CHECK(a->u.write.index == b->u.write.index);
        check_result_equal(&a->u.write.result, &b->u.write.result);
        break;
    case RPC_OP_ACCOUNT_GET:
        check_account_equal(&a->u.account, &b->u.account);
        break;
    case RPC_OP_RESV_GET:
        check_resv_equal(&a->u.reservation, &b->u.reservation);
        break;
    case RPC_OP_KEY_GET:
        CHECK_EQ_STR(a->u.key.account, b->u.key.account);
        CHECK_EQ_INT(a->u.key.revoked, b->u.key.revoked);
        break;
    case RPC_OP_STATUS:
        check_status_equal(&a->u.status, &b->u.status);
        break;
    case RPC_OP_HASH:
        CHECK(a->u.hash.applied_index == b->u.hash.applied_index);
        CHECK(memcmp(a->u.hash.state_hash, b->u.hash.state_hash, 32) == 0);
        break;
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
        CHECK_EQ_INT(a->u.list.n, b->u.list.n);
        CHECK(a->u.list.next_len == b->u.list.next_len &&
              memcmp(a->u.list.next, b->u.list.next, a->u.list.next_len) == 0);
        CHECK(b->owned != NULL);
        if (a->u.list.n != b->u.list.n) {
            break;
        }
        for (uint32_t i = 0; i < a->u.list.n; i++) {
            if (op == RPC_OP_ACCOUNT_LIST) {
                check_account_equal(&a->u.list.items.accounts[i], &b->u.list.items.accounts[i]);
            } else if (op == RPC_OP_RESV_LIST) {
                check_resv_equal(&a->u.list.items.reservations[i],
                                 &b->u.list.items.reservations[i]);
            } else {
                check_entry_equal(&a->u.list.items.entries[i], &b->u.list.items.entries[i]);
            }
        }
        break;
    default:
        break;
    }
}

/* ---- Frames and decoding through heap copies. ---- */

/* Bytes cut out of a frame (malloc'd). */
struct body {
    uint8_t *p;
    size_t len;
};

/* The single frame in `b` through a framer: its body must be all the frame holds after
 * the header. Frees `b`. Returns a copy of the body, or {NULL, 0} (failure recorded). */
static struct body body_of_frame(struct rpc_buf *b)
{
    struct body out = {NULL, 0};
    struct rpc_framer f;
    rpc_framer_init(&f, RPC_FRAME_MAX);
    CHECK(!b->failed);
    CHECK(b->len > RPC_FRAME_HEADER);
    if (!b->failed && b->len > RPC_FRAME_HEADER) {
        const uint8_t *p;
        size_t n;
        CHECK_EQ_INT(rpc_framer_feed(&f, b->data, b->len), 0);
        int rv = rpc_framer_next(&f, &p, &n);
        CHECK_EQ_INT(rv, 1);
        if (rv == 1) {
            CHECK_EQ_INT(n + RPC_FRAME_HEADER, b->len);
            out.p = xmalloc(n);
            memcpy(out.p, p, n);
            out.len = n;
            CHECK_EQ_INT(rpc_framer_next(&f, &p, &n), 0);
        }
    }
    rpc_framer_free(&f);
    rpc_buf_free(b);
    return out;
}

static struct body request_body(const struct rpc_request *req)
{
    struct rpc_buf b = {0};
    CHECK_EQ_INT(rpc_request_encode(&b, req), 0);
    return body_of_frame(&b);
}

static struct body response_body(int op, const struct rpc_response *resp)
{
    struct rpc_buf b = {0};
    CHECK_EQ_INT(rpc_response_encode(&b, op, resp), 0);
    return body_of_frame(&b);
}

/* Decode a private heap copy of exactly `len` bytes. */
static int decode_request(const void *body, size_t len, struct rpc_request *req, uint64_t *seq,
                          char *why)
{
    uint8_t *copy = xmalloc(len);
    if (len > 0) {
        memcpy(copy, body, len);
    }
    int rv = rpc_request_decode(copy, len, req, seq, why);
    free(copy);
    return rv;
}

static int decode_response(const void *body, size_t len, int op, struct rpc_response *resp,
                           char *why)
{
    uint8_t *copy = xmalloc(len);
    if (len > 0) {
        memcpy(copy, body, len);
    }
    int rv = rpc_response_decode(copy, len, op, resp, why);
    free(copy);
    return rv;
}

/* The decoder refuses these bytes with -1, a reason, and (responses) nothing owned. */
static bool request_refused(const void *body, size_t len)
{
    struct rpc_request req;
    char why[RPC_MESSAGE_MAX + 1];
    why[0] = '\0';
    int rv = decode_request(body, len, &req, NULL, why);
    return rv == -WIRE_ERANGE && why[0] != '\0';
}

static bool response_refused(const void *body, size_t len, int op)
{
    struct rpc_response resp;
    char why[RPC_MESSAGE_MAX + 1];
    why[0] = '\0';
    int rv = decode_response(body, len, op, &resp, why);
    if (rv == 0) {
        rpc_response_free(&resp);
    }
    return rv == -WIRE_ERANGE && why[0] != '\0' && resp.owned == NULL;
}

static void check_request_round_trip(const struct rpc_request *req)
{
    struct body body = request_body(req);
    if (body.p == NULL) {
        return;
    }
    struct rpc_request got;
    uint64_t seq = 0;
    char why[RPC_MESSAGE_MAX + 1] = "";
    int rv = decode_request(body.p, body.len, &got, &seq, why);
    if (rv != 0) {
        fprintf(stderr, "  op %d (%s): %s\n", req->op, rpc_op_name(req->op), why);
    }
    CHECK_EQ_INT(rv, 0);
    if (rv == 0) {
        check_request_equal(req, &got);
        CHECK(seq == req->seq);
    }
    free(body.p);
}

static void check_response_round_trip(int op, const struct rpc_response *resp)
{
    struct body body = response_body(op, resp);
    if (body.p == NULL) {
        return;
    }
    struct rpc_response got;
    char why[RPC_MESSAGE_MAX + 1] = "";
    int rv = decode_response(body.p, body.len, op, &got, why);
    if (rv != 0) {
        fprintf(stderr, "  op %d (%s), status %d: %s\n", op, rpc_op_name(op), resp->status, why);
    }
    CHECK_EQ_INT(rv, 0);
    if (rv == 0) {
        check_response_equal(op, resp, &got);
        rpc_response_free(&got);
        CHECK(got.owned == NULL);
    }
    uint64_t seq = 0;
    CHECK_EQ_INT(rpc_response_seq(body.p, body.len, &seq), 0);
    CHECK(seq == resp->seq);
    free(body.p);
}

/* ---- Building msgpack by hand. ---- */

struct mpb {
    msgpack_sbuffer sb;
    msgpack_packer pk;
};

static void mpb_init(struct mpb *b)
{
    msgpack_sbuffer_init(&b->sb);
    msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

static void mpb_str(struct mpb *b, const char *s, size_t n)
{
    msgpack_pack_str(&b->pk, n);
    msgpack_pack_str_body(&b->pk, s, n);
}

static void mpb_bin(struct mpb *b, size_t n)
{
    uint8_t bytes[64] = {0};
    msgpack_pack_bin(&b->pk, n);
    msgpack_pack_bin_body(&b->pk, bytes, n);
}

static bool mpb_request_refused(struct mpb *b)
{
    bool refused = request_refused(b->sb.data, b->sb.size);
    msgpack_sbuffer_destroy(&b->sb);
    return refused;
}

static bool mpb_response_refused(struct mpb *b, int op)
{
    bool refused = response_refused(b->sb.data, b->sb.size, op);
    msgpack_sbuffer_destroy(&b->sb);
    return refused;
}

/* ---- Valid bodies, walked (mp_walk.h). ---- */

/* Every node of a valid body, which holds only integers, nil, strings, bins and arrays.
 * Aborts on anything else. */
static struct mpw_tree tree_of(const uint8_t *p, size_t len)
{
    struct mpw_tree t = {NULL, 0, 0};
    size_t end = mpw_walk(&t, p, len, 0, SIZE_MAX);
    if (end == 0) {
        abort();
    }
    if (end != len) {
        fprintf(stderr, "walk: %zu bytes after the message\n", len - end);
        abort();
    }
    for (size_t i = 0; i < t.n; i++) {
        enum mpw_kind k = t.nodes[i].kind;
        if (k == MPW_BOOL || k == MPW_FLOAT || k == MPW_MAP) {
            fprintf(stderr, "walk: unexpected type byte 0x%02x at %zu\n", p[t.nodes[i].off],
                    t.nodes[i].off);
            abort();
        }
    }
    return t;
}

/* The last direct child of node `idx`, or SIZE_MAX. */
static size_t last_child(const struct mpw_tree *t, size_t idx)
{
    size_t last = SIZE_MAX;
    for (size_t i = idx + 1; i < t->n && t->nodes[i].off < t->nodes[idx].off + t->nodes[idx].len;
         i++) {
        if (t->nodes[i].parent == idx) {
            last = i;
        }
    }
    return last;
}

/* Smallest headers (up to 5 bytes) for a str or bin of `n` bytes or an array of `n`. */
static size_t str_header(uint8_t *h, size_t n)
{
    if (n < 32) {
        h[0] = (uint8_t)(0xa0 | n);
        return 1;
    }
    if (n < 256) {
        h[0] = 0xd9;
        h[1] = (uint8_t)n;
        return 2;
    }
    h[0] = 0xda;
    h[1] = (uint8_t)(n >> 8);
    h[2] = (uint8_t)n;
    return 3;
}

static size_t bin_header(uint8_t *h, size_t n)
{
    if (n < 256) {
        h[0] = 0xc4;
        h[1] = (uint8_t)n;
        return 2;
    }
    h[0] = 0xc5;
    h[1] = (uint8_t)(n >> 8);
    h[2] = (uint8_t)n;
    return 3;
}

static size_t array_header(uint8_t *h, size_t n)
{
    if (n < 16) {
        h[0] = (uint8_t)(0x90 | n);
        return 1;
    }
    h[0] = 0xdc;
    h[1] = (uint8_t)(n >> 8);
    h[2] = (uint8_t)n;
    return 3;
}

/* A growable byte string for building mutated bodies. */
struct bytes {
    uint8_t *p;
    size_t len, cap;
};

static void bytes_add(struct bytes *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 256;
        while (cap < b->len + n) {
            cap *= 2;
        }
        b->p = realloc(b->p, cap);
        if (b->p == NULL) {
            abort();
        }
        b->cap = cap;
    }
    if (n > 0) {
        memcpy(b->p + b->len, p, n);
    }
    b->len += n;
}

/* The body with the node at [off, off + cut) replaced by `head` then `tail`. */
static struct bytes splice(const uint8_t *body, size_t len, size_t off, size_t cut,
                           const void *head, size_t head_len, const void *tail, size_t tail_len)
{
    struct bytes b = {NULL, 0, 0};
    bytes_add(&b, body, off);
    bytes_add(&b, head, head_len);
    bytes_add(&b, tail, tail_len);
    bytes_add(&b, body + off + cut, len - off - cut);
    return b;
}

/* ---- Valid bodies of every message, for the mutation tests. ---- */

struct sample {
    bool request;
    int op; /* the op a response answers */
    bool at_max;
    char name[64];
    struct body body;
};

#define SAMPLES_MAX 160
static struct sample samples[SAMPLES_MAX];
static size_t n_samples;

static void add_sample(bool request, int op, bool at_max, struct body body, const char *name)
{
    if (n_samples == SAMPLES_MAX) {
        fprintf(stderr, "too many samples\n");
        abort();
    }
    CHECK(body.p != NULL);
    if (body.p == NULL) {
        return;
    }
    struct sample *s = &samples[n_samples++];
    s->request = request;
    s->op = op;
    s->at_max = at_max;
    snprintf(s->name, sizeof(s->name), "%s %s%s", request ? "request" : "response", name,
             at_max ? " at max" : " at min");
    s->body = body;
}

/* Every request op and response op at both bounds, every command type, pages of 0, 1
 * and 2 items, status with 0, 1 and RPC_MEMBERS_MAX members, and failures. */
static void collect_samples(void)
{
    if (n_samples > 0) {
        return;
    }
    char name[64];
    for (int m = 0; m < 2; m++) {
        bool at_max = m == 1;
        for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
            struct rpc_request q = request_of(op, at_max);
            add_sample(true, op, at_max, request_body(&q), rpc_op_name(op));
        }
        for (uint8_t type = LEDGER_CMD_ACCOUNT_CREATE; type < LEDGER_CMD_TYPE_MAX; type++) {
            struct rpc_request q = request_of(RPC_OP_WRITE, at_max);
            q.u.write = command_of(type, at_max);
            snprintf(name, sizeof(name), "write of command %u", type);
            add_sample(true, RPC_OP_WRITE, at_max, request_body(&q), name);
        }
        for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
            if (is_list_op(op)) {
                for (uint32_t n = 0; n <= 2; n++) {
                    struct rpc_response r = list_response(op, n, at_max);
                    snprintf(name, sizeof(name), "%s of %u", rpc_op_name(op), n);
                    add_sample(false, op, at_max, response_body(op, &r), name);
                }
                continue;
            }
            struct rpc_response r = response_of(op, at_max);
            add_sample(false, op, at_max, response_body(op, &r), rpc_op_name(op));
        }
        struct rpc_response one = response_of(RPC_OP_STATUS, at_max);
        one.u.status = status_of(at_max, 1);
        add_sample(false, RPC_OP_STATUS, at_max, response_body(RPC_OP_STATUS, &one),
                   "status of 1 member");
        for (int status = RPC_ENOTLEADER; status < RPC_STATUS_MAX; status += 5) {
            struct rpc_response e = error_of(status, at_max);
            snprintf(name, sizeof(name), "error %s", rpc_status_name(status));
            add_sample(false, RPC_OP_WRITE, at_max, response_body(RPC_OP_WRITE, &e), name);
        }
    }
}

static void free_samples(void)
{
    for (size_t i = 0; i < n_samples; i++) {
        free(samples[i].body.p);
    }
    n_samples = 0;
}

static bool sample_refused(const struct sample *s, const void *p, size_t len)
{
    return s->request ? request_refused(p, len) : response_refused(p, len, s->op);
}

/* The decoder for `s` refuses these bytes; `what` and `where` name them when it does not. */
static void check_refused(const struct sample *s, const void *p, size_t len, const char *what,
                          size_t where)
{
    bool refused = sample_refused(s, p, len);
    if (!refused) {
        fprintf(stderr, "  %s: %s at %zu was accepted\n", s->name, what, where);
    }
    CHECK(refused);
}

/* ---- Round trips. ---- */

static void every_request_op_round_trips_at_upper_bounds(void)
{
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        struct rpc_request q = request_of(op, true);
        check_request_round_trip(&q);
    }
}

static void every_request_op_round_trips_at_lower_bounds(void)
{
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        struct rpc_request q = request_of(op, false);
        check_request_round_trip(&q);
    }
}

static void write_round_trips_every_command_type_at_both_bounds(void)
{
    for (int m = 0; m < 2; m++) {
        for (uint8_t type = LEDGER_CMD_ACCOUNT_CREATE; type < LEDGER_CMD_TYPE_MAX; type++) {
            struct rpc_request q = request_of(RPC_OP_WRITE, m == 1);
            q.u.write = command_of(type, m == 1);
            check_request_round_trip(&q);
        }
    }
}

static void write_of_reserve_keeps_metadata_of_every_length(void)
{
    static const uint16_t lens[] = {0, 1, 12, 31, 32, 255, LEDGER_METADATA_MAX};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        struct rpc_request q = request_of(RPC_OP_WRITE, true);
        q.u.write.u.reserve.metadata_len = lens[i];
        fill_bytes(q.u.write.u.reserve.metadata, lens[i], (unsigned)i);
        if (lens[i] > 0) {
            q.u.write.u.reserve.metadata[0] = 0; /* binary, NUL included */
        }
        check_request_round_trip(&q);
    }
}

static void membership_round_trips_every_kind(void)
{
    for (uint8_t kind = RPC_MEMBER_ADD; kind <= RPC_MEMBER_TRANSFER; kind++) {
        struct rpc_request q = request_of(RPC_OP_MEMBERSHIP, kind == RPC_MEMBER_ADD);
        q.u.membership.kind = kind;
        check_request_round_trip(&q);
    }
}

static void every_response_op_round_trips_at_both_bounds(void)
{
    for (int m = 0; m < 2; m++) {
        for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
            struct rpc_response r =
                is_list_op(op) ? list_response(op, 3, m == 1) : response_of(op, m == 1);
            check_response_round_trip(op, &r);
        }
    }
}

static void list_responses_round_trip_with_0_1_and_max_items(void)
{
    static const uint32_t counts[] = {0, 1, RPC_LIST_MAX};
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        if (!is_list_op(op)) {
            continue;
        }
        for (size_t i = 0; i < 3; i++) {
            for (int m = 0; m < 2; m++) {
                struct rpc_response r = list_response(op, counts[i], m == 1);
                check_response_round_trip(op, &r);
            }
        }
    }
}

static void max_list_page_at_bounds_fits_the_default_frame_bound(void)
{
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        if (!is_list_op(op)) {
            continue;
        }
        struct rpc_response r = list_response(op, RPC_LIST_MAX, true);
        struct body body = response_body(op, &r);
        CHECK(body.p != NULL);
        CHECK(body.len <= RPC_FRAME_MAX);
        free(body.p);
    }
}

static void status_round_trips_with_0_1_and_max_members(void)
{
    static const uint32_t counts[] = {0, 1, RPC_MEMBERS_MAX};
    for (size_t i = 0; i < 3; i++) {
        for (int m = 0; m < 2; m++) {
            struct rpc_response r = response_of(RPC_OP_STATUS, m == 1);
            r.u.status = status_of(m == 1, counts[i]);
            check_response_round_trip(RPC_OP_STATUS, &r);
        }
    }
}

static void error_response_round_trips_every_status_for_every_op(void)
{
    for (int status = RPC_ENOTLEADER; status < RPC_STATUS_MAX; status++) {
        for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
            struct rpc_response r = error_of(status, (op + status) % 2 == 0);
            check_response_round_trip(op, &r);
        }
    }
    /* A failure carries no payload, so it decodes whatever op it answers. */
    struct rpc_response r = error_of(RPC_ENOTLEADER, true);
    check_response_round_trip(0, &r);
    check_response_round_trip(RPC_OP_MAX, &r);
}

static void error_encode_writes_the_failure_form(void)
{
    struct rpc_buf b = {0};
    CHECK_EQ_INT(rpc_error_encode(&b, 42, RPC_ENOTLEADER, "ask node 3", 3, "10.0.0.3:7100"), 0);
    struct body body = body_of_frame(&b);
    REQUIRE(body.p != NULL);
    struct rpc_response r;
    char why[RPC_MESSAGE_MAX + 1] = "";
    int rv = decode_response(body.p, body.len, RPC_OP_WRITE, &r, why);
    free(body.p);
    CHECK_EQ_INT(rv, 0);
    CHECK(r.seq == 42);
    CHECK_EQ_INT(r.status, RPC_ENOTLEADER);
    CHECK_EQ_STR(r.message, "ask node 3");
    CHECK(r.leader_id == 3);
    CHECK_EQ_STR(r.leader_address, "10.0.0.3:7100");
    CHECK(r.owned == NULL);
}

static void error_encode_truncates_message_and_address_to_their_bounds(void)
{
    char message[RPC_MESSAGE_MAX + 51], address[RPC_ADDRESS_MAX + 21];
    fill_text(message, sizeof(message) - 1, 3);
    fill_text(address, sizeof(address) - 1, 4);
    struct rpc_buf b = {0};
    CHECK_EQ_INT(rpc_error_encode(&b, 1, RPC_EUNAVAILABLE, message, 7, address), 0);
    struct body body = body_of_frame(&b);
    REQUIRE(body.p != NULL);
    struct rpc_response r;
    int rv = decode_response(body.p, body.len, RPC_OP_HELLO, &r, NULL);
    free(body.p);
    CHECK_EQ_INT(rv, 0);
    CHECK_EQ_INT(strlen(r.message), RPC_MESSAGE_MAX);
    CHECK(strncmp(r.message, message, RPC_MESSAGE_MAX) == 0);
    CHECK_EQ_INT(strlen(r.leader_address), RPC_ADDRESS_MAX);
    CHECK(strncmp(r.leader_address, address, RPC_ADDRESS_MAX) == 0);
}

static void error_encode_treats_null_message_and_address_as_empty(void)
{
    struct rpc_buf b = {0};
    CHECK_EQ_INT(rpc_error_encode(&b, 9, RPC_EBUSY, NULL, 0, NULL), 0);
    struct body body = body_of_frame(&b);
    REQUIRE(body.p != NULL);
    struct rpc_response r;
    int rv = decode_response(body.p, body.len, RPC_OP_STATUS, &r, NULL);
    free(body.p);
    CHECK_EQ_INT(rv, 0);
    CHECK_EQ_INT(r.status, RPC_EBUSY);
    CHECK_EQ_STR(r.message, "");
    CHECK_EQ_STR(r.leader_address, "");
}

static void response_seq_reads_the_seq_of_any_response_and_refuses_garbage(void)
{
    collect_samples();
    for (size_t i = 0; i < n_samples; i++) {
        const struct sample *s = &samples[i];
        if (s->request) {
            continue;
        }
        uint64_t seq = 12345;
        CHECK_EQ_INT(rpc_response_seq(s->body.p, s->body.len, &seq), 0);
        CHECK(seq == u64v(s->at_max, 0));
    }
    static const uint8_t garbage[][3] = {{0xc0, 0, 0}, {0x91, 0x01, 0}, {0x92, 0xff, 0}};
    for (size_t i = 0; i < 3; i++) {
        uint64_t seq;
        CHECK_EQ_INT(rpc_response_seq(garbage[i], 2, &seq), -1);
    }
    uint64_t seq;
    CHECK_EQ_INT(rpc_response_seq(garbage[0], 0, &seq), -1);
}

static void response_free_is_safe_twice_and_after_a_refused_decode(void)
{
    struct rpc_response r = list_response(RPC_OP_JOURNAL, 2, true);
    struct body body = response_body(RPC_OP_JOURNAL, &r);
    REQUIRE(body.p != NULL);
    struct rpc_response got;
    CHECK_EQ_INT(decode_response(body.p, body.len, RPC_OP_JOURNAL, &got, NULL), 0);
    rpc_response_free(&got);
    rpc_response_free(&got);
    CHECK(got.owned == NULL);
    /* Cut inside the second item: the first one was already allocated and read. */
    CHECK_EQ_INT(decode_response(body.p, body.len - 20, RPC_OP_JOURNAL, &got, NULL), -1);
    CHECK(got.owned == NULL);
    rpc_response_free(&got);
    free(body.p);
}

/* ---- Encoders refuse what is out of range, and leave nothing behind. ---- */

/* Encoding `req` after a valid frame fails with -1 and leaves the buffer exactly as it
 * was; the buffer then still takes the next frame. Alone, it leaves an empty buffer. */
static void check_request_encode_refused(const struct rpc_request *req, const char *what)
{
    struct rpc_buf b = {0};
    struct rpc_request first = request_of(RPC_OP_HASH, true);
    CHECK_EQ_INT(rpc_request_encode(&b, &first), 0);
    size_t before = b.len;
    uint8_t saved[64];
    REQUIRE(before <= sizeof(saved));
    memcpy(saved, b.data, before);
    int rv = rpc_request_encode(&b, req);
    bool ok = rv == -WIRE_ERANGE && b.len == before && !b.failed && memcmp(b.data, saved, before) == 0;
    if (!ok) {
        fprintf(stderr, "  %s: rv %d, %zu bytes in the buffer (had %zu)\n", what, rv, b.len,
                before);
    }
    CHECK(ok);
    CHECK_EQ_INT(rpc_request_encode(&b, &first), 0);
    CHECK_EQ_INT(b.len, 2 * before);
    CHECK(memcmp(b.data + before, saved, before) == 0);
    rpc_buf_free(&b);

    struct rpc_buf e = {0};
    CHECK_EQ_INT(rpc_request_encode(&e, req), -WIRE_ERANGE);
    CHECK_EQ_INT(e.len, 0);
    rpc_buf_free(&e);
}

static void check_response_encode_refused(int op, const struct rpc_response *resp, const char *what)
{
    struct rpc_buf b = {0};
    struct rpc_response first = response_of(RPC_OP_HELLO, true);
    CHECK_EQ_INT(rpc_response_encode(&b, RPC_OP_HELLO, &first), 0);
    size_t before = b.len;
    uint8_t saved[64];
    REQUIRE(before <= sizeof(saved));
    memcpy(saved, b.data, before);
    int rv = rpc_response_encode(&b, op, resp);
    bool ok = rv == -WIRE_ERANGE && b.len == before && !b.failed && memcmp(b.data, saved, before) == 0;
    if (!ok) {
        fprintf(stderr, "  %s: rv %d, %zu bytes in the buffer (had %zu)\n", what, rv, b.len,
                before);
    }
    CHECK(ok);
    rpc_buf_free(&b);

    struct rpc_buf e = {0};
    CHECK_EQ_INT(rpc_response_encode(&e, op, resp), -1);
    CHECK_EQ_INT(e.len, 0);
    rpc_buf_free(&e);
}

static void request_encode_refuses_token_longer_than_max(void)
{
    struct rpc_request q = request_of(RPC_OP_HELLO, true);
    memset(q.u.hello.token, 'a', sizeof(q.u.hello.token)); /* RPC_TOKEN_MAX + 1, no NUL */
    check_request_encode_refused(&q, "token of RPC_TOKEN_MAX + 1 bytes");
}

static void request_encode_refuses_list_limit_0_or_over_max(void)
{
    static const uint32_t limits[] = {0, RPC_LIST_MAX + 1, UINT32_MAX};
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        if (!is_list_op(op)) {
            continue;
        }
        for (size_t i = 0; i < 3; i++) {
            struct rpc_request q = request_of(op, true);
            q.u.list.limit = limits[i];
            check_request_encode_refused(&q, "list limit");
        }
    }
}

static void request_encode_refuses_unknown_op(void)
{
    static const int ops[] = {0, RPC_OP_MAX, 200, 255};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        struct rpc_request q = request_of(RPC_OP_STATUS, true);
        q.op = (uint8_t)ops[i];
        check_request_encode_refused(&q, "unknown op");
    }
}

static void request_encode_refuses_bad_commands(void)
{
    static const uint8_t types[] = {0, LEDGER_CMD_TYPE_MAX, 255};
    for (size_t i = 0; i < 3; i++) {
        struct rpc_request q = request_of(RPC_OP_WRITE, true);
        q.u.write.type = types[i];
        check_request_encode_refused(&q, "unknown command type");
    }
    struct rpc_request q = request_of(RPC_OP_WRITE, true);
    q.u.write.u.reserve.metadata_len = LEDGER_METADATA_MAX + 1;
    check_request_encode_refused(&q, "metadata of LEDGER_METADATA_MAX + 1");
    q.u.write.u.reserve.metadata_len = UINT16_MAX;
    check_request_encode_refused(&q, "metadata of 65535");

    q = request_of(RPC_OP_WRITE, true);
    memset(q.u.write.actor, 'a', sizeof(q.u.write.actor));
    check_request_encode_refused(&q, "unterminated actor");
    q = request_of(RPC_OP_WRITE, true);
    memset(q.u.write.u.reserve.model, 'm', sizeof(q.u.write.u.reserve.model));
    check_request_encode_refused(&q, "unterminated model");
    q = request_of(RPC_OP_WRITE, true);
    q.u.write = command_of(LEDGER_CMD_ACCOUNT_CREATE, true);
    memset(q.u.write.u.create.name, 'n', sizeof(q.u.write.u.create.name));
    check_request_encode_refused(&q, "unterminated account name");
}

static void request_encode_refuses_unterminated_strings(void)
{
    struct rpc_request q = request_of(RPC_OP_ACCOUNT_GET, true);
    memset(q.u.get.name, 'n', sizeof(q.u.get.name));
    check_request_encode_refused(&q, "unterminated account name");
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        if (is_list_op(op)) {
            q = request_of(op, true);
            memset(q.u.list.filter, 'f', sizeof(q.u.list.filter));
            check_request_encode_refused(&q, "unterminated filter");
        }
    }
    q = request_of(RPC_OP_MEMBERSHIP, true);
    memset(q.u.membership.address, 'a', sizeof(q.u.membership.address));
    check_request_encode_refused(&q, "unterminated address");
}

static void response_encode_refuses_unknown_op(void)
{
    static const int ops[] = {0, -1, RPC_OP_MAX, 255};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        struct rpc_response r = response_of(RPC_OP_HASH, true);
        check_response_encode_refused(ops[i], &r, "unknown op");
    }
}

static void response_encode_refuses_more_than_max_items_or_members(void)
{
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        if (!is_list_op(op)) {
            continue;
        }
        struct rpc_response r = list_response(op, RPC_LIST_MAX + 1, false);
        check_response_encode_refused(op, &r, "RPC_LIST_MAX + 1 items");
        r.u.list.n = UINT32_MAX;
        check_response_encode_refused(op, &r, "UINT32_MAX items");
    }
    struct rpc_response r = response_of(RPC_OP_STATUS, true);
    r.u.status.n_members = RPC_MEMBERS_MAX + 1;
    check_response_encode_refused(RPC_OP_STATUS, &r, "RPC_MEMBERS_MAX + 1 members");
}

static void response_encode_refuses_reservation_metadata_over_max(void)
{
    struct rpc_response r = response_of(RPC_OP_RESV_GET, true);
    r.u.reservation.metadata_len = LEDGER_METADATA_MAX + 1;
    check_response_encode_refused(RPC_OP_RESV_GET, &r, "metadata of LEDGER_METADATA_MAX + 1");
    r.u.reservation.metadata_len = UINT16_MAX;
    check_response_encode_refused(RPC_OP_RESV_GET, &r, "metadata of 65535");
    r = list_response(RPC_OP_RESV_LIST, 3, true);
    page_reservations[2].metadata_len = LEDGER_METADATA_MAX + 1;
    check_response_encode_refused(RPC_OP_RESV_LIST, &r, "a page item with metadata over max");
}

static void error_encode_refuses_status_outside_the_failure_range(void)
{
    static const int statuses[] = {RPC_OK, -1, RPC_STATUS_MAX, 1000};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        struct rpc_buf b = {0};
        CHECK_EQ_INT(rpc_error_encode(&b, 1, statuses[i], "x", 0, ""), -1);
        CHECK_EQ_INT(b.len, 0);
        rpc_buf_free(&b);
        struct rpc_response r = error_of(RPC_EBUSY, true);
        r.status = statuses[i];
        if (statuses[i] != RPC_OK) {
            check_response_encode_refused(RPC_OP_WRITE, &r, "status out of range");
        }
    }
}

/* ---- Decoders refuse malformed input: specific cases. ---- */

static void request_decode_refuses_trailing_bytes(void)
{
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        struct rpc_request q = request_of(op, false);
        struct body body = request_body(&q);
        REQUIRE(body.p != NULL);
        static const uint8_t extra[] = {0x00, 0xc0, 0x90};
        for (size_t i = 0; i < sizeof(extra); i++) {
            struct bytes b = splice(body.p, body.len, body.len, 0, &extra[i], 1, NULL, 0);
            CHECK(request_refused(b.p, b.len));
            free(b.p);
        }
        struct bytes twice = splice(body.p, body.len, body.len, 0, body.p, body.len, NULL, 0);
        CHECK(request_refused(twice.p, twice.len));
        free(twice.p);
        free(body.p);
    }
}

static void request_decode_refuses_unknown_op_and_reports_its_seq(void)
{
    static const int64_t ops[] = {0, RPC_OP_MAX, 200, 255, 256, 65536, -1};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        for (uint32_t extra = 0; extra <= 6; extra++) {
            struct mpb b;
            mpb_init(&b);
            msgpack_pack_array(&b.pk, 2 + extra);
            msgpack_pack_uint64(&b.pk, 77);
            msgpack_pack_int64(&b.pk, ops[i]);
            for (uint32_t k = 0; k < extra; k++) {
                msgpack_pack_uint8(&b.pk, 1);
            }
            struct rpc_request q;
            uint64_t seq = 0;
            char why[RPC_MESSAGE_MAX + 1] = "";
            CHECK_EQ_INT(decode_request(b.sb.data, b.sb.size, &q, &seq, why), -1);
            CHECK(seq == 77);
            CHECK(why[0] != '\0');
            msgpack_sbuffer_destroy(&b.sb);
        }
    }
}

static void request_decode_reports_the_seq_of_a_request_with_bad_arguments(void)
{
    struct mpb b;
    mpb_init(&b);
    msgpack_pack_array(&b.pk, 4);
    msgpack_pack_uint64(&b.pk, UINT64_MAX);
    msgpack_pack_uint8(&b.pk, RPC_OP_ACCOUNT_GET);
    msgpack_pack_nil(&b.pk);
    msgpack_pack_uint8(&b.pk, 0);
    struct rpc_request q;
    uint64_t seq = 0;
    char why[RPC_MESSAGE_MAX + 1] = "";
    CHECK_EQ_INT(decode_request(b.sb.data, b.sb.size, &q, &seq, why), -1);
    CHECK(seq == UINT64_MAX);
    CHECK(why[0] != '\0');
    msgpack_sbuffer_destroy(&b.sb);
}

static void request_decode_refuses_wrong_field_counts_for_every_op(void)
{
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        for (int m = 0; m < 2; m++) {
            struct rpc_request q = request_of(op, m == 1);
            struct body body = request_body(&q);
            REQUIRE(body.p != NULL);
            REQUIRE(body.p[0] >= 0x92 && body.p[0] <= 0x98);
            uint32_t n = body.p[0] & 0x0f;
            /* One field more (a 0 appended), one fewer (the last dropped). */
            uint8_t more = (uint8_t)(0x90 | (n + 1)), fewer = (uint8_t)(0x90 | (n - 1));
            static const uint8_t zero = 0;
            struct bytes b = splice(body.p, body.len, 0, 1, &more, 1, NULL, 0);
            bytes_add(&b, &zero, 1);
            CHECK(request_refused(b.p, b.len));
            free(b.p);
            struct mpw_tree t = tree_of(body.p, body.len);
            size_t last = last_child(&t, 0);
            REQUIRE(last != SIZE_MAX);
            b = splice(body.p, t.nodes[last].off, 0, 1, &fewer, 1, NULL, 0);
            CHECK(request_refused(b.p, b.len));
            free(b.p);
            free(t.nodes);
            free(body.p);
        }
    }
}

static void request_decode_refuses_a_string_with_an_embedded_nul(void)
{
    static const char with_nul[] = "org\0team";
    struct mpb b;
    mpb_init(&b);
    msgpack_pack_array(&b.pk, 4);
    msgpack_pack_uint8(&b.pk, 1);
    msgpack_pack_uint8(&b.pk, RPC_OP_HELLO);
    msgpack_pack_uint8(&b.pk, RPC_PROTOCOL_VERSION);
    mpb_str(&b, with_nul, sizeof(with_nul) - 1);
    CHECK(mpb_request_refused(&b));

    mpb_init(&b);
    msgpack_pack_array(&b.pk, 4);
    msgpack_pack_uint8(&b.pk, 1);
    msgpack_pack_uint8(&b.pk, RPC_OP_ACCOUNT_GET);
    mpb_str(&b, with_nul, sizeof(with_nul) - 1);
    msgpack_pack_uint8(&b.pk, 0);
    CHECK(mpb_request_refused(&b));

    /* A NUL as the last byte: the C string would silently end one byte early. */
    mpb_init(&b);
    msgpack_pack_array(&b.pk, 4);
    msgpack_pack_uint8(&b.pk, 1);
    msgpack_pack_uint8(&b.pk, RPC_OP_ACCOUNT_GET);
    mpb_str(&b, "org", 4);
    msgpack_pack_uint8(&b.pk, 0);
    CHECK(mpb_request_refused(&b));

    /* The same message without the NUL is fine. */
    mpb_init(&b);
    msgpack_pack_array(&b.pk, 4);
    msgpack_pack_uint8(&b.pk, 1);
    msgpack_pack_uint8(&b.pk, RPC_OP_ACCOUNT_GET);
    mpb_str(&b, "org", 3);
    msgpack_pack_uint8(&b.pk, 0);
    CHECK(!mpb_request_refused(&b));
}

/* [1, op, bin of `n` bytes, 0]: RESV_GET or KEY_GET. */
static bool get_with_bin_refused(int op, size_t n)
{
    struct mpb b;
    mpb_init(&b);
    msgpack_pack_array(&b.pk, 4);
    msgpack_pack_uint8(&b.pk, 1);
    msgpack_pack_uint8(&b.pk, (uint8_t)op);
    mpb_bin(&b, n);
    msgpack_pack_uint8(&b.pk, 0);
    return mpb_request_refused(&b);
}

static void request_decode_refuses_request_id_and_key_hash_of_the_wrong_size(void)
{
    CHECK(!get_with_bin_refused(RPC_OP_RESV_GET, LEDGER_REQUEST_ID_SIZE));
    CHECK(get_with_bin_refused(RPC_OP_RESV_GET, 0));
    CHECK(get_with_bin_refused(RPC_OP_RESV_GET, LEDGER_REQUEST_ID_SIZE - 1));
    CHECK(get_with_bin_refused(RPC_OP_RESV_GET, LEDGER_REQUEST_ID_SIZE + 1));
    CHECK(get_with_bin_refused(RPC_OP_RESV_GET, LEDGER_KEY_HASH_SIZE));
    CHECK(!get_with_bin_refused(RPC_OP_KEY_GET, LEDGER_KEY_HASH_SIZE));
    CHECK(get_with_bin_refused(RPC_OP_KEY_GET, LEDGER_KEY_HASH_SIZE - 1));
    CHECK(get_with_bin_refused(RPC_OP_KEY_GET, LEDGER_KEY_HASH_SIZE + 1));
    CHECK(get_with_bin_refused(RPC_OP_KEY_GET, LEDGER_REQUEST_ID_SIZE));

    /* A str of the right length is not a bin. */
    struct mpb b;
    mpb_init(&b);
    msgpack_pack_array(&b.pk, 4);
    msgpack_pack_uint8(&b.pk, 1);
    msgpack_pack_uint8(&b.pk, RPC_OP_RESV_GET);
    mpb_str(&b, "0123456789abcdef", LEDGER_REQUEST_ID_SIZE);
    msgpack_pack_uint8(&b.pk, 0);
    CHECK(mpb_request_refused(&b));
}

/* [1, op, "", (since, until,) cursor, limit, 0] */
static bool list_with_limit_refused(int op, uint64_t limit)
{
    struct mpb b;
    mpb_init(&b);
    msgpack_pack_array(&b.pk, op == RPC_OP_JOURNAL ? 8 : 6);
    msgpack_pack_uint8(&b.pk, 1);
    msgpack_pack_uint8(&b.pk, (uint8_t)op);
    mpb_str(&b, "", 0);
    if (op == RPC_OP_JOURNAL) {
        msgpack_pack_int64(&b.pk, 0);
        msgpack_pack_int64(&b.pk, 1);
    }
    msgpack_pack_bin(&b.pk, 0);
    msgpack_pack_uint64(&b.pk, limit);
    msgpack_pack_uint8(&b.pk, 0);
    return mpb_request_refused(&b);
}

/* [1, 9, kind, 2, "h:1"] */
static bool membership_with_kind_refused(int64_t kind)
{
    struct mpb b;
    mpb_init(&b);
    msgpack_pack_array(&b.pk, 5);
    msgpack_pack_uint8(&b.pk, 1);
    msgpack_pack_uint8(&b.pk, RPC_OP_MEMBERSHIP);
    msgpack_pack_int64(&b.pk, kind);
    msgpack_pack_uint8(&b.pk, 2);
    mpb_str(&b, "h:1", 3);
    return mpb_request_refused(&b);
}

static void request_decode_refuses_list_limit_0_or_over_max_and_unknown_membership_kind(void)
{
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        if (!is_list_op(op)) {
            continue;
        }
        CHECK(!list_with_limit_refused(op, 1));
        CHECK(!list_with_limit_refused(op, RPC_LIST_MAX));
        CHECK(list_with_limit_refused(op, 0));
        CHECK(list_with_limit_refused(op, RPC_LIST_MAX + 1));
        CHECK(list_with_limit_refused(op, UINT32_MAX));
        CHECK(list_with_limit_refused(op, (uint64_t)UINT32_MAX + 1));
    }
    for (int64_t kind = RPC_MEMBER_ADD; kind <= RPC_MEMBER_TRANSFER; kind++) {
        CHECK(!membership_with_kind_refused(kind));
    }
    CHECK(membership_with_kind_refused(0));
    CHECK(membership_with_kind_refused(RPC_MEMBER_TRANSFER + 1));
    CHECK(membership_with_kind_refused(256));
    CHECK(membership_with_kind_refused(-1));
}

static void request_decode_refuses_bad_top_levels(void)
{
    static const uint8_t empty_array[] = {0x90};
    static const uint8_t seq_only[] = {0x91, 0x01};
    static const uint8_t map[] = {0x82, 0x01, 0x08, 0x02, 0x03};
    static const uint8_t integer[] = {0x08};
    static const uint8_t nil[] = {0xc0};
    static const uint8_t negative_seq[] = {0x92, 0xff, 0x08};
    static const uint8_t str_seq[] = {0x92, 0xa1, '1', 0x08};
    static const uint8_t status_ok[] = {0x92, 0x01, 0x08};
    CHECK(request_refused(empty_array, 0));
    CHECK(request_refused(empty_array, sizeof(empty_array)));
    CHECK(request_refused(seq_only, sizeof(seq_only)));
    CHECK(request_refused(map, sizeof(map)));
    CHECK(request_refused(integer, sizeof(integer)));
    CHECK(request_refused(nil, sizeof(nil)));
    CHECK(request_refused(negative_seq, sizeof(negative_seq)));
    CHECK(request_refused(str_seq, sizeof(str_seq)));
    CHECK(!request_refused(status_ok, sizeof(status_ok)));

    /* An array of 17 with enough bytes behind it: over the top-level bound. */
    uint8_t big[3 + 17] = {0xdc, 0x00, 17};
    memset(big + 3, 0x01, 17);
    CHECK(request_refused(big, sizeof(big)));
    /* A huge count with few bytes behind it. */
    static const uint8_t huge[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x08};
    CHECK(request_refused(huge, sizeof(huge)));
}

static void request_decode_refuses_an_array_where_an_integer_is_expected(void)
{
    static const uint8_t nested_seq[] = {0x92, 0x91, 0x01, 0x08};
    static const uint8_t nested_op[] = {0x92, 0x01, 0x91, 0x08};
    static const uint8_t nested_version[] = {0x94, 0x01, 0x01, 0x91, 0x01, 0xa1, 't'};
    static const uint8_t nested_token[] = {0x94, 0x01, 0x01, 0x01, 0x91, 0xa1, 't'};
    CHECK(request_refused(nested_seq, sizeof(nested_seq)));
    CHECK(request_refused(nested_op, sizeof(nested_op)));
    CHECK(request_refused(nested_version, sizeof(nested_version)));
    CHECK(request_refused(nested_token, sizeof(nested_token)));

    /* Deep nesting is refused at the first level without recursion. */
    size_t depth = 100000;
    uint8_t *deep = xmalloc(depth + 1);
    memset(deep, 0x91, depth);
    deep[depth] = 0x01;
    CHECK(request_refused(deep, depth + 1));
    deep[0] = 0x93; /* [1, 2, [[[...]]]]: a write whose command nests */
    deep[1] = 0x01;
    deep[2] = RPC_OP_WRITE;
    CHECK(request_refused(deep, depth + 1));
    free(deep);
}

static void response_decode_refuses_unknown_op_and_status(void)
{
    static const uint8_t ok_no_payload[] = {0x92, 0x01, 0x00};
    CHECK(!response_refused(ok_no_payload, sizeof(ok_no_payload), RPC_OP_MEMBERSHIP));
    CHECK(response_refused(ok_no_payload, sizeof(ok_no_payload), 0));
    CHECK(response_refused(ok_no_payload, sizeof(ok_no_payload), -1));
    CHECK(response_refused(ok_no_payload, sizeof(ok_no_payload), RPC_OP_MAX));
    CHECK(response_refused(ok_no_payload, sizeof(ok_no_payload), 1000));
    static const int64_t statuses[] = {RPC_STATUS_MAX, -1, 255, INT32_MAX, (int64_t)1 << 32};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        struct mpb b;
        mpb_init(&b);
        msgpack_pack_array(&b.pk, 5);
        msgpack_pack_uint8(&b.pk, 1);
        msgpack_pack_int64(&b.pk, statuses[i]);
        mpb_str(&b, "m", 1);
        msgpack_pack_uint8(&b.pk, 0);
        mpb_str(&b, "", 0);
        CHECK(mpb_response_refused(&b, RPC_OP_WRITE));
    }
}

static void response_decode_refuses_failure_form_with_wrong_field_count(void)
{
    for (uint32_t n = 2; n <= 7; n++) {
        struct mpb b;
        mpb_init(&b);
        msgpack_pack_array(&b.pk, n);
        msgpack_pack_uint8(&b.pk, 1);
        msgpack_pack_uint8(&b.pk, RPC_EBUSY);
        if (n > 2) {
            mpb_str(&b, "m", 1);
        }
        if (n > 3) {
            msgpack_pack_uint8(&b.pk, 0);
        }
        if (n > 4) {
            mpb_str(&b, "", 0);
        }
        for (uint32_t k = 5; k < n; k++) {
            msgpack_pack_uint8(&b.pk, 0);
        }
        bool refused = mpb_response_refused(&b, RPC_OP_MEMBERSHIP);
        CHECK(refused == (n != 5));
    }
}

/* Body of `resp` with its array of records (the root's child `which`) one longer: the
 * first record repeated. */
static struct bytes one_more_record(const struct body *body, size_t which)
{
    struct mpw_tree t = tree_of(body->p, body->len);
    size_t list = SIZE_MAX, k = 0;
    for (size_t i = 1; i < t.n; i++) {
        if (t.nodes[i].parent == 0 && k++ == which) {
            list = i;
        }
    }
    if (list == SIZE_MAX || t.nodes[list].kind != MPW_ARRAY || t.nodes[list].value == 0) {
        fprintf(stderr, "one_more_record: no records\n");
        abort();
    }
    const struct mpw_node *a = &t.nodes[list], *first = &t.nodes[list + 1];
    uint8_t h[5];
    size_t hl = array_header(h, a->value + 1);
    struct bytes b = splice(body->p, body->len, a->off, a->hdr, h, hl, NULL, 0);
    /* The first record again, right after the new header. */
    struct bytes c = splice(b.p, b.len, a->off + hl, 0, body->p + first->off, first->len, NULL, 0);
    free(b.p);
    free(t.nodes);
    return c;
}

static void response_decode_refuses_more_than_max_items_or_members(void)
{
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        if (!is_list_op(op)) {
            continue;
        }
        struct rpc_response r = list_response(op, RPC_LIST_MAX, false);
        struct body body = response_body(op, &r);
        REQUIRE(body.p != NULL);
        CHECK(!response_refused(body.p, body.len, op));
        struct bytes b = one_more_record(&body, 2);
        CHECK(response_refused(b.p, b.len, op));
        free(b.p);
        free(body.p);
    }
    struct rpc_response r = response_of(RPC_OP_STATUS, true);
    struct body body = response_body(RPC_OP_STATUS, &r);
    REQUIRE(body.p != NULL);
    /* The status record is the root's third child; its members are its tenth. */
    struct mpw_tree t = tree_of(body.p, body.len);
    size_t status = SIZE_MAX;
    for (size_t i = 1; i < t.n; i++) {
        if (t.nodes[i].parent == 0 && t.nodes[i].kind == MPW_ARRAY) {
            status = i;
        }
    }
    REQUIRE(status != SIZE_MAX);
    struct body inner = {body.p + t.nodes[status].off, t.nodes[status].len};
    struct bytes members = one_more_record(&inner, 9);
    struct bytes b = splice(body.p, body.len, t.nodes[status].off, t.nodes[status].len, members.p,
                            members.len, NULL, 0);
    CHECK(response_refused(b.p, b.len, RPC_OP_STATUS));
    free(b.p);
    free(members.p);
    free(t.nodes);
    free(body.p);
}

static void response_decode_refuses_out_of_range_narrow_fields(void)
{
    /* HELLO's role is a u8. */
    static const uint8_t role_256[] = {0x94, 0x01, 0x00, 0xcd, 0x01, 0x00, 0x01};
    static const uint8_t role_255[] = {0x94, 0x01, 0x00, 0xcc, 0xff, 0x01};
    CHECK(response_refused(role_256, sizeof(role_256), RPC_OP_HELLO));
    CHECK(!response_refused(role_255, sizeof(role_255), RPC_OP_HELLO));

    /* WRITE's result: status an int32, flags a u16. */
    static const int64_t statuses[] = {(int64_t)INT32_MAX + 1, (int64_t)INT32_MIN - 1};
    for (size_t i = 0; i < 4; i++) { /* the last one is valid: the control */
        struct mpb b;
        mpb_init(&b);
        msgpack_pack_array(&b.pk, 4);
        msgpack_pack_uint8(&b.pk, 1);
        msgpack_pack_uint8(&b.pk, 0);
        msgpack_pack_uint8(&b.pk, 5);
        msgpack_pack_array(&b.pk, 11);
        msgpack_pack_int64(&b.pk, i < 2 ? statuses[i] : 0);
        msgpack_pack_uint8(&b.pk, 6);
        msgpack_pack_uint8(&b.pk, 0);
        msgpack_pack_uint32(&b.pk, i == 2 ? UINT16_MAX + 1u : UINT16_MAX);
        mpb_bin(&b, LEDGER_REQUEST_ID_SIZE);
        mpb_str(&b, "a", 1);
        for (int k = 0; k < 5; k++) {
            msgpack_pack_int64(&b.pk, k);
        }
        CHECK(mpb_response_refused(&b, RPC_OP_WRITE) == (i < 3));
    }
}

/* ---- Decoders refuse malformed input: every valid message, mutated node by node. ---- */

static void decode_refuses_every_truncation_of_every_message(void)
{
    collect_samples();
    for (size_t i = 0; i < n_samples; i++) {
        const struct sample *s = &samples[i];
        CHECK(!sample_refused(s, s->body.p, s->body.len));
        for (size_t len = 0; len < s->body.len; len++) {
            check_refused(s, s->body.p, len, "truncation", len);
        }
    }
}

static void decode_refuses_truncations_of_max_pages(void)
{
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        if (!is_list_op(op)) {
            continue;
        }
        struct rpc_response r = list_response(op, RPC_LIST_MAX, true);
        struct body body = response_body(op, &r);
        REQUIRE(body.p != NULL);
        /* Sampled cuts (all of them would be quadratic): every 251st byte and the tail. */
        for (size_t len = 0; len < body.len; len += len + 300 < body.len ? 251 : 1) {
            if (!response_refused(body.p, len, op)) {
                fprintf(stderr, "  %s page: truncation at %zu accepted\n", rpc_op_name(op), len);
                CHECK(false);
            }
        }
        free(body.p);
    }
}

static void decode_refuses_trailing_bytes_after_every_message(void)
{
    collect_samples();
    static const uint8_t extra[] = {0x00, 0xc0, 0x90, 0xa0};
    for (size_t i = 0; i < n_samples; i++) {
        const struct sample *s = &samples[i];
        for (size_t k = 0; k < sizeof(extra); k++) {
            struct bytes b = splice(s->body.p, s->body.len, s->body.len, 0, &extra[k], 1, NULL, 0);
            check_refused(s, b.p, b.len, "one trailing byte", k);
            free(b.p);
        }
        struct bytes b =
            splice(s->body.p, s->body.len, s->body.len, 0, s->body.p, s->body.len, NULL, 0);
        check_refused(s, b.p, b.len, "the message twice", 0);
        free(b.p);
    }
}

static void decode_refuses_array_counts_one_off_in_every_message(void)
{
    collect_samples();
    static const uint8_t zero = 0x00;
    for (size_t i = 0; i < n_samples; i++) {
        const struct sample *s = &samples[i];
        struct mpw_tree t = tree_of(s->body.p, s->body.len);
        for (size_t k = 0; k < t.n; k++) {
            const struct mpw_node *a = &t.nodes[k];
            if (a->kind != MPW_ARRAY) {
                continue;
            }
            uint8_t h[5];
            /* A count one off with the elements left as they are. */
            size_t hl = array_header(h, a->value + 1);
            struct bytes d = splice(s->body.p, s->body.len, a->off, a->hdr, h, hl, NULL, 0);
            check_refused(s, d.p, d.len, "array count one more than its elements", a->off);
            free(d.p);
            if (a->value > 0) {
                hl = array_header(h, a->value - 1);
                d = splice(s->body.p, s->body.len, a->off, a->hdr, h, hl, NULL, 0);
                check_refused(s, d.p, d.len, "array count one less than its elements", a->off);
                free(d.p);
            }
            /* One element more (a 0 appended): refused by every array, fixed or not. */
            hl = array_header(h, a->value + 1);
            struct bytes b = splice(s->body.p, s->body.len, a->off, a->len, h, hl,
                                    s->body.p + a->off + a->hdr, a->len - a->hdr);
            struct bytes c =
                splice(b.p, b.len, a->off + hl + a->len - a->hdr, 0, &zero, 1, NULL, 0);
            check_refused(s, c.p, c.len, "array with an element appended", a->off);
            free(b.p);
            free(c.p);
            /* One element fewer (the last dropped): refused by records of fixed shape. */
            size_t last = last_child(&t, k);
            if (a->all_arrays || last == SIZE_MAX) {
                continue;
            }
            hl = array_header(h, a->value - 1);
            b = splice(s->body.p, s->body.len, a->off, a->len, h, hl, s->body.p + a->off + a->hdr,
                       t.nodes[last].off - a->off - a->hdr);
            check_refused(s, b.p, b.len, "array with its last element dropped", a->off);
            free(b.p);
        }
        free(t.nodes);
    }
}

static void decode_refuses_every_scalar_nested_in_an_array(void)
{
    collect_samples();
    static const uint8_t wrap = 0x91;
    for (size_t i = 0; i < n_samples; i++) {
        const struct sample *s = &samples[i];
        struct mpw_tree t = tree_of(s->body.p, s->body.len);
        for (size_t k = 0; k < t.n; k++) {
            const struct mpw_node *nd = &t.nodes[k];
            if (nd->kind == MPW_ARRAY) {
                continue;
            }
            struct bytes b = splice(s->body.p, s->body.len, nd->off, 0, &wrap, 1, NULL, 0);
            check_refused(s, b.p, b.len, "scalar wrapped in an array", nd->off);
            free(b.p);
        }
        free(t.nodes);
    }
}

static void decode_refuses_nil_in_place_of_every_node(void)
{
    collect_samples();
    static const uint8_t nil = 0xc0;
    for (size_t i = 0; i < n_samples; i++) {
        const struct sample *s = &samples[i];
        struct mpw_tree t = tree_of(s->body.p, s->body.len);
        for (size_t k = 0; k < t.n; k++) {
            const struct mpw_node *nd = &t.nodes[k];
            struct bytes b = splice(s->body.p, s->body.len, nd->off, nd->len, &nil, 1, NULL, 0);
            check_refused(s, b.p, b.len, "nil in place of a node", nd->off);
            free(b.p);
        }
        free(t.nodes);
    }
}

static void decode_refuses_embedded_nul_in_every_string(void)
{
    collect_samples();
    size_t tried = 0;
    for (size_t i = 0; i < n_samples; i++) {
        const struct sample *s = &samples[i];
        struct mpw_tree t = tree_of(s->body.p, s->body.len);
        for (size_t k = 0; k < t.n; k++) {
            const struct mpw_node *nd = &t.nodes[k];
            size_t content = nd->len - nd->hdr;
            if (nd->kind != MPW_STR || content == 0) {
                continue;
            }
            /* A NUL first, in the middle and last. */
            size_t at[3] = {0, content / 2, content - 1};
            for (size_t j = 0; j < 3; j++) {
                struct bytes b = splice(s->body.p, s->body.len, 0, 0, NULL, 0, NULL, 0);
                b.p[nd->off + nd->hdr + at[j]] = 0;
                check_refused(s, b.p, b.len, "string with a NUL", nd->off + nd->hdr + at[j]);
                free(b.p);
                tried++;
            }
        }
        free(t.nodes);
    }
    CHECK(tried > 100);
}

static void decode_refuses_fixed_size_bins_one_byte_off(void)
{
    collect_samples();
    size_t tried = 0;
    for (size_t i = 0; i < n_samples; i++) {
        const struct sample *s = &samples[i];
        struct mpw_tree t = tree_of(s->body.p, s->body.len);
        for (size_t k = 0; k < t.n; k++) {
            const struct mpw_node *nd = &t.nodes[k];
            size_t content = nd->len - nd->hdr;
            /* Request ids are 16 bytes; key hashes, state and admin hashes 32. Metadata,
             * the only bin of varying length, is 0 or 256 bytes in the samples. */
            if (nd->kind != MPW_BIN || (content != 16 && content != 32)) {
                continue;
            }
            uint8_t h[5], extra = 0xee;
            size_t hl = bin_header(h, content - 1);
            struct bytes b = splice(s->body.p, s->body.len, nd->off, nd->len, h, hl,
                                    s->body.p + nd->off + nd->hdr, content - 1);
            check_refused(s, b.p, b.len, "bin one byte short", nd->off);
            free(b.p);
            hl = bin_header(h, content + 1);
            b = splice(s->body.p, s->body.len, nd->off, nd->len, h, hl,
                       s->body.p + nd->off + nd->hdr, content);
            struct bytes c = splice(b.p, b.len, nd->off + hl + content, 0, &extra, 1, NULL, 0);
            check_refused(s, c.p, c.len, "bin one byte long", nd->off);
            free(b.p);
            free(c.p);
            tried++;
        }
        free(t.nodes);
    }
    CHECK(tried > 50);
}

static void decode_refuses_every_string_and_bin_one_byte_over_its_bound(void)
{
    collect_samples();
    size_t tried = 0;
    for (size_t i = 0; i < n_samples; i++) {
        const struct sample *s = &samples[i];
        if (!s->at_max) {
            continue; /* only there is every string and bin at its bound */
        }
        struct mpw_tree t = tree_of(s->body.p, s->body.len);
        for (size_t k = 0; k < t.n; k++) {
            const struct mpw_node *nd = &t.nodes[k];
            if (nd->kind != MPW_STR && nd->kind != MPW_BIN) {
                continue;
            }
            size_t content = nd->len - nd->hdr;
            uint8_t h[5], extra = 'x';
            size_t hl =
                nd->kind == MPW_STR ? str_header(h, content + 1) : bin_header(h, content + 1);
            struct bytes b = splice(s->body.p, s->body.len, nd->off, nd->len, h, hl,
                                    s->body.p + nd->off + nd->hdr, content);
            struct bytes c = splice(b.p, b.len, nd->off + hl + content, 0, &extra, 1, NULL, 0);
            check_refused(s, c.p, c.len, "string or bin one byte over its bound", nd->off);
            free(b.p);
            free(c.p);
            tried++;
        }
        free(t.nodes);
    }
    CHECK(tried > 100);
}

/* ---- The framer. ---- */

static void framer_returns_frames_fed_one_byte_at_a_time(void)
{
    struct rpc_request reqs[3] = {request_of(RPC_OP_HELLO, true), request_of(RPC_OP_WRITE, true),
                                  request_of(RPC_OP_STATUS, false)};
    struct rpc_buf b = {0};
    size_t ends[3];
    for (size_t i = 0; i < 3; i++) {
        CHECK_EQ_INT(rpc_request_encode(&b, &reqs[i]), 0);
        ends[i] = b.len;
    }
    struct rpc_framer f;
    rpc_framer_init(&f, RPC_FRAME_MAX);
    size_t got = 0;
    for (size_t i = 0; i < b.len; i++) {
        CHECK_EQ_INT(rpc_framer_feed(&f, b.data + i, 1), 0);
        const uint8_t *body;
        size_t len;
        int rv = rpc_framer_next(&f, &body, &len);
        if (got < 3 && i + 1 == ends[got]) {
            CHECK_EQ_INT(rv, 1);
            if (rv == 1) {
                struct rpc_request q;
                CHECK_EQ_INT(decode_request(body, len, &q, NULL, NULL), 0);
                check_request_equal(&reqs[got], &q);
                got++;
            }
        } else {
            CHECK_EQ_INT(rv, 0);
        }
    }
    CHECK_EQ_INT(got, 3);
    rpc_framer_free(&f);
    rpc_buf_free(&b);
}

static void framer_returns_every_frame_of_one_feed_in_order(void)
{
    struct rpc_buf b = {0};
    struct rpc_request reqs[RPC_OP_MAX];
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        reqs[op] = request_of(op, op % 2 == 0);
        CHECK_EQ_INT(rpc_request_encode(&b, &reqs[op]), 0);
    }
    struct rpc_framer f;
    rpc_framer_init(&f, RPC_FRAME_MAX);
    CHECK_EQ_INT(rpc_framer_feed(&f, b.data, b.len), 0);
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        const uint8_t *body;
        size_t len;
        int rv = rpc_framer_next(&f, &body, &len);
        CHECK_EQ_INT(rv, 1);
        if (rv != 1) {
            break;
        }
        struct rpc_request q;
        CHECK_EQ_INT(decode_request(body, len, &q, NULL, NULL), 0);
        check_request_equal(&reqs[op], &q);
    }
    const uint8_t *body;
    size_t len;
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 0);
    rpc_framer_free(&f);
    rpc_buf_free(&b);
}

static void framer_refuses_a_length_over_max_body_before_the_body_arrives(void)
{
    struct rpc_framer f;
    const uint8_t *body;
    size_t len;
    static const uint8_t over[4] = {0x00, 0x00, 0x00, 101};
    rpc_framer_init(&f, 100);
    for (size_t i = 0; i < 3; i++) {
        CHECK_EQ_INT(rpc_framer_feed(&f, over + i, 1), 0);
        CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 0);
    }
    CHECK_EQ_INT(rpc_framer_feed(&f, over + 3, 1), 0);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), -1);
    /* The stream cannot be trusted any more: the answer stays -1. */
    CHECK_EQ_INT(rpc_framer_feed(&f, "abcdef", 6), 0);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), -1);
    rpc_framer_free(&f);

    /* The largest length a header can hold, with the default bound. */
    static const uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    rpc_framer_init(&f, RPC_FRAME_MAX);
    CHECK_EQ_INT(rpc_framer_feed(&f, huge, 4), 0);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), -1);
    CHECK(f.cap <= 4096);
    rpc_framer_free(&f);

    /* A good frame first is still handed out; the bad length after it is refused. */
    struct rpc_buf b = {0};
    struct rpc_request q = request_of(RPC_OP_STATUS, true);
    CHECK_EQ_INT(rpc_request_encode(&b, &q), 0);
    rpc_framer_init(&f, 100);
    CHECK_EQ_INT(rpc_framer_feed(&f, b.data, b.len), 0);
    CHECK_EQ_INT(rpc_framer_feed(&f, over, 4), 0);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 1);
    CHECK_EQ_INT(len + RPC_FRAME_HEADER, b.len);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), -1);
    rpc_framer_free(&f);
    rpc_buf_free(&b);
}

static void framer_accepts_a_length_of_exactly_max_body(void)
{
    static const size_t max_bodies[] = {1, 100, 4096, 70000};
    for (size_t k = 0; k < sizeof(max_bodies) / sizeof(max_bodies[0]); k++) {
        size_t max = max_bodies[k];
        uint8_t *frame = xmalloc(RPC_FRAME_HEADER + max);
        frame[0] = (uint8_t)(max >> 24);
        frame[1] = (uint8_t)(max >> 16);
        frame[2] = (uint8_t)(max >> 8);
        frame[3] = (uint8_t)max;
        fill_bytes(frame + RPC_FRAME_HEADER, max, 5);
        struct rpc_framer f;
        rpc_framer_init(&f, max);
        const uint8_t *body;
        size_t len;
        CHECK_EQ_INT(rpc_framer_feed(&f, frame, RPC_FRAME_HEADER + max - 1), 0);
        CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 0);
        CHECK_EQ_INT(rpc_framer_feed(&f, frame + RPC_FRAME_HEADER + max - 1, 1), 0);
        int rv = rpc_framer_next(&f, &body, &len);
        CHECK_EQ_INT(rv, 1);
        if (rv == 1) {
            CHECK_EQ_INT(len, max);
            CHECK(memcmp(body, frame + RPC_FRAME_HEADER, max) == 0);
        }
        CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 0);
        rpc_framer_free(&f);
        free(frame);
    }
}

static void framer_returns_an_empty_body(void)
{
    static const uint8_t empty[8] = {0};
    struct rpc_framer f;
    rpc_framer_init(&f, 0);
    const uint8_t *body;
    size_t len = 99;
    CHECK_EQ_INT(rpc_framer_feed(&f, empty, sizeof(empty)), 0);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 1);
    CHECK_EQ_INT(len, 0);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 1);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 0);
    rpc_framer_free(&f);
}

static void framer_feed_of_zero_bytes_changes_nothing(void)
{
    struct rpc_framer f;
    rpc_framer_init(&f, 100);
    const uint8_t *body;
    size_t len;
    CHECK_EQ_INT(rpc_framer_feed(&f, "", 0), 0);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 0);
    static const uint8_t frame[] = {0, 0, 0, 2, 0x92, 0x01};
    CHECK_EQ_INT(rpc_framer_feed(&f, frame, sizeof(frame)), 0);
    CHECK_EQ_INT(rpc_framer_feed(&f, "", 0), 0);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 1);
    CHECK_EQ_INT(len, 2);
    CHECK_EQ_INT(rpc_framer_feed(&f, "", 0), 0);
    CHECK_EQ_INT(rpc_framer_next(&f, &body, &len), 0);
    rpc_framer_free(&f);
}

static void framer_buffer_stays_bounded_when_frames_are_consumed_as_they_arrive(void)
{
    struct rpc_buf b = {0};
    struct rpc_request q = request_of(RPC_OP_JOURNAL, true);
    CHECK_EQ_INT(rpc_request_encode(&b, &q), 0);
    struct rpc_framer f;
    rpc_framer_init(&f, 1024);
    size_t frames = 0;
    /* 10000 frames fed in reads that cut them anywhere, each consumed when complete. */
    size_t read = 97, off = 0, total = 10000 * b.len;
    while (off < total) {
        uint8_t chunk[97];
        size_t n = total - off < read ? total - off : read;
        for (size_t i = 0; i < n; i++) {
            chunk[i] = b.data[(off + i) % b.len];
        }
        CHECK_EQ_INT(rpc_framer_feed(&f, chunk, n), 0);
        off += n;
        const uint8_t *body;
        size_t len;
        int rv;
        while ((rv = rpc_framer_next(&f, &body, &len)) == 1) {
            CHECK_EQ_INT(len + RPC_FRAME_HEADER, b.len);
            frames++;
        }
        CHECK_EQ_INT(rv, 0);
        CHECK(f.cap <= 4096);
    }
    CHECK_EQ_INT(frames, 10000);
    rpc_framer_free(&f);
    rpc_buf_free(&b);
}

/* ---- Hex. ---- */

static void hex_round_trips_every_byte_value(void)
{
    uint8_t bytes[256], back[256];
    char hex[2 * 256 + 1];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (uint8_t)i;
    }
    rpc_hex(bytes, 256, hex);
    CHECK_EQ_INT(strlen(hex), 512);
    CHECK(strncmp(hex, "000102030405060708090a0b0c0d0e0f10", 34) == 0);
    CHECK_EQ_STR(hex + 500, "fafbfcfdfeff");
    memset(back, 0, sizeof(back));
    CHECK_EQ_INT(rpc_unhex(hex, back, 256), 0);
    CHECK(memcmp(bytes, back, 256) == 0);
    char empty[1] = {'x'};
    rpc_hex(bytes, 0, empty);
    CHECK_EQ_STR(empty, "");
    CHECK_EQ_INT(rpc_unhex("", back, 0), 0);
}

static void unhex_accepts_upper_and_lower_case(void)
{
    uint8_t out[4];
    CHECK_EQ_INT(rpc_unhex("DEADbeef", out, 4), 0);
    CHECK(out[0] == 0xde && out[1] == 0xad && out[2] == 0xbe && out[3] == 0xef);
}

static void unhex_rejects_wrong_length_and_non_hex_characters(void)
{
    static const char *const bad[] = {"",      "a",    "abc",  "abcde", "abcdef",
                                      "0x12",  "ab c", "abcg", "zz00",  "-1ab",
                                      "ab\n0", " abc", "abc ", "+0ab",  "\377\37700"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t out[2];
        int rv = rpc_unhex(bad[i], out, 2);
        if (rv != -1) {
            fprintf(stderr, "  rpc_unhex accepted \"%s\"\n", bad[i]);
        }
        CHECK_EQ_INT(rv, -1);
    }
    uint8_t one;
    CHECK_EQ_INT(rpc_unhex("00", &one, 0), -1);
    CHECK_EQ_INT(rpc_unhex("", &one, 1), -1);
}

/* ---- Roles and names. ---- */

static bool is_query(int op)
{
    return op == RPC_OP_ACCOUNT_GET || op == RPC_OP_ACCOUNT_LIST || op == RPC_OP_RESV_GET ||
           op == RPC_OP_RESV_LIST || op == RPC_OP_JOURNAL || op == RPC_OP_STATUS ||
           op == RPC_OP_KEY_GET;
}

/* The table the protocol promises (proto.h, enum rpc_role). */
static bool expected_allowed(int role, int op, int cmd_type)
{
    bool gateway_cmd = cmd_type == LEDGER_CMD_RESERVE || cmd_type == LEDGER_CMD_SETTLE ||
                       cmd_type == LEDGER_CMD_VOID || cmd_type == LEDGER_CMD_EXTEND;
    if (op == RPC_OP_HELLO) {
        return true; /* every connection, authenticated or not, may say hello */
    }
    if (op == RPC_OP_WRITE && cmd_type == LEDGER_CMD_TERM_START) {
        return false; /* only a new leader writes it, never a connection */
    }
    switch (role) {
    case RPC_ROLE_READER:
        return is_query(op);
    case RPC_ROLE_GATEWAY:
        return is_query(op) || (op == RPC_OP_WRITE && gateway_cmd);
    case RPC_ROLE_ADMIN:
        /* HASH covers every tenant's state: admins only (and auth.c: unscoped ones). */
        return is_query(op) || op == RPC_OP_WRITE || op == RPC_OP_MEMBERSHIP || op == RPC_OP_HASH;
    default:
        return false;
    }
}

static void role_allows_matches_the_role_table(void)
{
    for (int role = RPC_ROLE_NONE; role <= RPC_ROLE_ADMIN; role++) {
        for (int op = -1; op <= RPC_OP_MAX + 1; op++) {
            int first = op == RPC_OP_WRITE ? LEDGER_CMD_ACCOUNT_CREATE : 0;
            int last = op == RPC_OP_WRITE ? LEDGER_CMD_TYPE_MAX - 1 : 0;
            for (int cmd = first; cmd <= last; cmd++) {
                bool want = op > 0 && op < RPC_OP_MAX && expected_allowed(role, op, cmd);
                bool got = rpc_role_allows(role, op, cmd);
                if (got != want) {
                    fprintf(stderr, "  role %s, op %s, command %d: %d, want %d\n",
                            rpc_role_name(role), rpc_op_name(op), cmd, got, want);
                }
                CHECK(got == want);
            }
        }
    }
    /* The cases that matter most, spelled out. */
    CHECK(rpc_role_allows(RPC_ROLE_GATEWAY, RPC_OP_WRITE, LEDGER_CMD_RESERVE));
    CHECK(rpc_role_allows(RPC_ROLE_GATEWAY, RPC_OP_WRITE, LEDGER_CMD_SETTLE));
    CHECK(rpc_role_allows(RPC_ROLE_GATEWAY, RPC_OP_WRITE, LEDGER_CMD_VOID));
    CHECK(rpc_role_allows(RPC_ROLE_GATEWAY, RPC_OP_WRITE, LEDGER_CMD_EXTEND));
    CHECK(!rpc_role_allows(RPC_ROLE_GATEWAY, RPC_OP_WRITE, LEDGER_CMD_ACCOUNT_CREATE));
    CHECK(!rpc_role_allows(RPC_ROLE_GATEWAY, RPC_OP_WRITE, LEDGER_CMD_KEY_ADD));
    CHECK(!rpc_role_allows(RPC_ROLE_GATEWAY, RPC_OP_WRITE, LEDGER_CMD_CONFIG_SET));
    CHECK(!rpc_role_allows(RPC_ROLE_GATEWAY, RPC_OP_MEMBERSHIP, 0));
    CHECK(!rpc_role_allows(RPC_ROLE_READER, RPC_OP_WRITE, LEDGER_CMD_RESERVE));
    CHECK(!rpc_role_allows(RPC_ROLE_READER, RPC_OP_MEMBERSHIP, 0));
    CHECK(rpc_role_allows(RPC_ROLE_READER, RPC_OP_JOURNAL, 0));
    CHECK(!rpc_role_allows(RPC_ROLE_NONE, RPC_OP_STATUS, 0));
    CHECK(rpc_role_allows(RPC_ROLE_ADMIN, RPC_OP_MEMBERSHIP, 0));
    CHECK(rpc_role_allows(RPC_ROLE_ADMIN, RPC_OP_WRITE, LEDGER_CMD_ACCOUNT_CREATE));
}

static void role_names_parse_back_and_unknown_names_are_refused(void)
{
    for (int role = RPC_ROLE_READER; role <= RPC_ROLE_ADMIN; role++) {
        CHECK_EQ_INT(rpc_role_parse(rpc_role_name(role)), role);
    }
    CHECK_EQ_STR(rpc_role_name(RPC_ROLE_READER), "reader");
    CHECK_EQ_STR(rpc_role_name(RPC_ROLE_GATEWAY), "gateway");
    CHECK_EQ_STR(rpc_role_name(RPC_ROLE_ADMIN), "admin");
    CHECK_EQ_STR(rpc_role_name(RPC_ROLE_NONE), "none");
    static const char *const bad[] = {"none", "", "Admin", "admin ", "administrator", "read"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ_INT(rpc_role_parse(bad[i]), -1);
    }
}

static void names_are_never_null(void)
{
    for (int v = -300; v <= 300; v++) {
        CHECK(rpc_op_name(v) != NULL);
        CHECK(rpc_status_name(v) != NULL);
        CHECK(rpc_role_name(v) != NULL);
    }
    CHECK(rpc_op_name(INT32_MIN) != NULL && rpc_op_name(INT32_MAX) != NULL);
    CHECK(rpc_status_name(INT32_MIN) != NULL && rpc_status_name(INT32_MAX) != NULL);
    /* Known values have their own distinct names; others are "unknown". */
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        CHECK(strcmp(rpc_op_name(op), "unknown") != 0);
        for (int other = RPC_OP_HELLO; other < op; other++) {
            CHECK(strcmp(rpc_op_name(op), rpc_op_name(other)) != 0);
        }
    }
    for (int s = RPC_OK; s < RPC_STATUS_MAX; s++) {
        CHECK(strcmp(rpc_status_name(s), "unknown") != 0);
        for (int other = RPC_OK; other < s; other++) {
            CHECK(strcmp(rpc_status_name(s), rpc_status_name(other)) != 0);
        }
    }
    CHECK_EQ_STR(rpc_op_name(0), "unknown");
    CHECK_EQ_STR(rpc_op_name(RPC_OP_MAX), "unknown");
    CHECK_EQ_STR(rpc_status_name(-1), "unknown");
    CHECK_EQ_STR(rpc_status_name(RPC_STATUS_MAX), "unknown");
    CHECK_EQ_STR(rpc_op_name(RPC_OP_WRITE), "write");
    CHECK_EQ_STR(rpc_status_name(RPC_ENOTLEADER), "not_leader");
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(every_request_op_round_trips_at_upper_bounds);
    TEST(every_request_op_round_trips_at_lower_bounds);
    TEST(write_round_trips_every_command_type_at_both_bounds);
    TEST(write_of_reserve_keeps_metadata_of_every_length);
    TEST(membership_round_trips_every_kind);
    TEST(every_response_op_round_trips_at_both_bounds);
    TEST(list_responses_round_trip_with_0_1_and_max_items);
    TEST(max_list_page_at_bounds_fits_the_default_frame_bound);
    TEST(status_round_trips_with_0_1_and_max_members);
    TEST(error_response_round_trips_every_status_for_every_op);
    TEST(error_encode_writes_the_failure_form);
    TEST(error_encode_truncates_message_and_address_to_their_bounds);
    TEST(error_encode_treats_null_message_and_address_as_empty);
    TEST(response_seq_reads_the_seq_of_any_response_and_refuses_garbage);
    TEST(response_free_is_safe_twice_and_after_a_refused_decode);
    TEST(request_encode_refuses_token_longer_than_max);
    TEST(request_encode_refuses_list_limit_0_or_over_max);
    TEST(request_encode_refuses_unknown_op);
    TEST(request_encode_refuses_bad_commands);
    TEST(request_encode_refuses_unterminated_strings);
    TEST(response_encode_refuses_unknown_op);
    TEST(response_encode_refuses_more_than_max_items_or_members);
    TEST(response_encode_refuses_reservation_metadata_over_max);
    TEST(error_encode_refuses_status_outside_the_failure_range);
    TEST(request_decode_refuses_trailing_bytes);
    TEST(request_decode_refuses_unknown_op_and_reports_its_seq);
    TEST(request_decode_reports_the_seq_of_a_request_with_bad_arguments);
    TEST(request_decode_refuses_wrong_field_counts_for_every_op);
    TEST(request_decode_refuses_a_string_with_an_embedded_nul);
    TEST(request_decode_refuses_request_id_and_key_hash_of_the_wrong_size);
    TEST(request_decode_refuses_list_limit_0_or_over_max_and_unknown_membership_kind);
    TEST(request_decode_refuses_bad_top_levels);
    TEST(request_decode_refuses_an_array_where_an_integer_is_expected);
    TEST(response_decode_refuses_unknown_op_and_status);
    TEST(response_decode_refuses_failure_form_with_wrong_field_count);
    TEST(response_decode_refuses_more_than_max_items_or_members);
    TEST(response_decode_refuses_out_of_range_narrow_fields);
    TEST(decode_refuses_every_truncation_of_every_message);
    TEST(decode_refuses_truncations_of_max_pages);
    TEST(decode_refuses_trailing_bytes_after_every_message);
    TEST(decode_refuses_array_counts_one_off_in_every_message);
    TEST(decode_refuses_every_scalar_nested_in_an_array);
    TEST(decode_refuses_nil_in_place_of_every_node);
    TEST(decode_refuses_embedded_nul_in_every_string);
    TEST(decode_refuses_fixed_size_bins_one_byte_off);
    TEST(decode_refuses_every_string_and_bin_one_byte_over_its_bound);
    TEST(framer_returns_frames_fed_one_byte_at_a_time);
    TEST(framer_returns_every_frame_of_one_feed_in_order);
    TEST(framer_refuses_a_length_over_max_body_before_the_body_arrives);
    TEST(framer_accepts_a_length_of_exactly_max_body);
    TEST(framer_returns_an_empty_body);
    TEST(framer_feed_of_zero_bytes_changes_nothing);
    TEST(framer_buffer_stays_bounded_when_frames_are_consumed_as_they_arrive);
    TEST(hex_round_trips_every_byte_value);
    TEST(unhex_accepts_upper_and_lower_case);
    TEST(unhex_rejects_wrong_length_and_non_hex_characters);
    TEST(role_allows_matches_the_role_table);
    TEST(role_names_parse_back_and_unknown_names_are_refused);
    TEST(names_are_never_null);
    free_samples();
    TEST_MAIN_END;
}
