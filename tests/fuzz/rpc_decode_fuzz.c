/*
 * rpc_decode_fuzz.c: libFuzzer target for the wire protocol's decoders and framer
 * (wire/wire.h).
 *
 * Frame bodies come from the network, from any client or any node, so the decoders must
 * never crash, never read outside their input (ASan) and never hit undefined behaviour
 * (UBSan). Beyond that the target checks what the API promises, for each input:
 *
 *   - rpc_request_decode(): a refusal says why; what decodes reports its seq, encodes
 *     again into one well-formed frame, and decode then encode reaches a fixpoint:
 *     encode(decode(encode(decode(x)))) == encode(decode(x)).
 *   - rpc_response_decode() for every op (the unknown ones 0 and RPC_OP_MAX included):
 *     a refusal owns nothing; what decodes is within its bounds (items, members), agrees
 *     with rpc_response_seq(), and reaches the same fixpoint through
 *     rpc_response_encode(); then rpc_response_free().
 *   - the framer, with a small max_body taken from the first byte and the rest of the
 *     input as the stream, fed in chunks whose sizes (0 included) come from a generator
 *     seeded by the input: it hands out exactly the frames a reference reading of the
 *     stream finds, byte for byte, never one longer than max_body, refuses (-1) at the
 *     first length over the bound whether or not its body has arrived, and never holds a
 *     complete frame back.
 *
 * Built with -DRPC_FUZZ_SEEDS this file is instead a program that writes a seed corpus
 * into the directory given as its argument: valid bodies of every request and response
 * (every command type, pages of 0, 1 and 3 items, a full status, failures) and a few
 * framer streams. tests/fuzz/run.sh builds both and runs the fuzzer.
 */
#include "wire/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fail(const char *what, int op, int rv)
{
    fprintf(stderr, "rpc_decode_fuzz: %s (op %d, rv %d)\n", what, op, rv);
    abort();
}

/* The body of the one frame that `b` holds, checked against its header. */
static const uint8_t *frame_body(const struct rpc_buf *b, size_t *len, int op)
{
    if (b->failed || b->len < RPC_FRAME_HEADER) {
        fail("encode returned 0 without a whole frame", op, 0);
    }
    const uint8_t *h = b->data;
    size_t n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
    if (n + RPC_FRAME_HEADER != b->len || n > RPC_FRAME_LIMIT) {
        fail("the frame header does not match the bytes written", op, (int)n);
    }
    *len = n;
    return b->data + RPC_FRAME_HEADER;
}

static void check_why(const char *why, int op)
{
    if (why[0] == '\0' || strnlen(why, RPC_MESSAGE_MAX + 1) > RPC_MESSAGE_MAX) {
        fail("a refusal without a reason, or one over RPC_MESSAGE_MAX", op, -1);
    }
}

static void fuzz_request(const uint8_t *data, size_t size)
{
    static struct rpc_request req, again;
    char why[RPC_MESSAGE_MAX + 1] = "";
    uint64_t seq = 0;
    if (rpc_request_decode(data, size, &req, &seq, why) != 0) {
        check_why(why, -1);
        return;
    }
    if (seq != req.seq || req.op == 0 || req.op >= RPC_OP_MAX) {
        fail("a decoded request has another seq or an unknown op", req.op, 0);
    }
    struct rpc_buf one = {0}, two = {0};
    int rv = rpc_request_encode(&one, &req);
    if (rv != 0) {
        fail("a decoded request does not encode", req.op, rv);
    }
    size_t len;
    const uint8_t *body = frame_body(&one, &len, req.op);
    rv = rpc_request_decode(body, len, &again, NULL, why);
    if (rv != 0) {
        fprintf(stderr, "rpc_decode_fuzz: %s\n", why);
        fail("a re-encoded request does not decode", req.op, rv);
    }
    /* The decoder zeroes the struct first and copies strings NUL-padded, so two decodes
     * of the same message are equal byte for byte: an encoder that loses a field shows
     * here even though the bytes below would still reach a fixpoint. */
    if (memcmp(&req, &again, sizeof(req)) != 0) {
        fail("request: decode(encode(decode(x))) differs from decode(x)", req.op, 0);
    }
    rv = rpc_request_encode(&two, &again);
    if (rv != 0 || two.len != one.len || memcmp(two.data, one.data, one.len) != 0) {
        fail("request: encode(decode(encode(decode(x)))) differs from encode(decode(x))", req.op,
             rv);
    }
    rpc_buf_free(&one);
    rpc_buf_free(&two);
}

static bool is_list_op(int op)
{
    return op == RPC_OP_ACCOUNT_LIST || op == RPC_OP_RESV_LIST || op == RPC_OP_JOURNAL;
}

/* What a decoded response may hold. */
static void check_response_bounds(const struct rpc_response *r, int op)
{
    if (r->status < RPC_OK || r->status >= RPC_STATUS_MAX) {
        fail("a decoded response has an unknown status", op, r->status);
    }
    if (r->status != RPC_OK) {
        if (r->owned != NULL) {
            fail("a decoded failure owns memory", op, r->status);
        }
        return;
    }
    if (op <= 0 || op >= RPC_OP_MAX) {
        fail("a success decoded for an unknown op", op, 0);
    }
    if (is_list_op(op) && (r->u.list.n > RPC_LIST_MAX || r->owned == NULL)) {
        fail("a decoded page is over RPC_LIST_MAX or has no items array", op, (int)r->u.list.n);
    }
    if (!is_list_op(op) && r->owned != NULL) {
        fail("a decoded response that is not a page owns memory", op, 0);
    }
    if (op == RPC_OP_STATUS && r->u.status.n_members > RPC_MEMBERS_MAX) {
        fail("a decoded status has more than RPC_MEMBERS_MAX members", op,
             (int)r->u.status.n_members);
    }
}

/* Two decoded responses hold the same values (see fuzz_request for why bytes compare):
 * the structs apart from the pointers to page items, then the items. */
static bool same_response(const struct rpc_response *a, const struct rpc_response *b, int op)
{
    static struct rpc_response x, y;
    x = *a;
    y = *b;
    x.owned = y.owned = NULL;
    bool page = a->status == RPC_OK && is_list_op(op);
    if (page) {
        memset(&x.u.list.items, 0, sizeof(x.u.list.items));
        memset(&y.u.list.items, 0, sizeof(y.u.list.items));
    }
    if (memcmp(&x, &y, sizeof(x)) != 0) {
        return false;
    }
    if (!page) {
        return true;
    }
    size_t size = op == RPC_OP_ACCOUNT_LIST ? sizeof(struct ledger_account_info)
                  : op == RPC_OP_RESV_LIST  ? sizeof(struct ledger_reservation_info)
                                            : sizeof(struct ledger_journal_entry);
    return a->u.list.n == 0 || memcmp(a->owned, b->owned, a->u.list.n * size) == 0;
}

static void fuzz_response(const uint8_t *data, size_t size, int op)
{
    static struct rpc_response resp, again;
    char why[RPC_MESSAGE_MAX + 1] = "";
    if (rpc_response_decode(data, size, op, &resp, why) != 0) {
        check_why(why, op);
        if (resp.owned != NULL) {
            fail("a refused response still owns memory", op, -1);
        }
        return;
    }
    check_response_bounds(&resp, op);
    uint64_t seq = 0;
    if (rpc_response_seq(data, size, &seq) != 0 || seq != resp.seq) {
        fail("rpc_response_seq disagrees with rpc_response_decode", op, 0);
    }
    struct rpc_buf one = {0}, two = {0};
    int rv = rpc_response_encode(&one, op, &resp);
    if (rv != 0) {
        fail("a decoded response does not encode", op, rv);
    }
    size_t len;
    const uint8_t *body = frame_body(&one, &len, op);
    rv = rpc_response_decode(body, len, op, &again, why);
    if (rv != 0) {
        fprintf(stderr, "rpc_decode_fuzz: %s\n", why);
        fail("a re-encoded response does not decode", op, rv);
    }
    check_response_bounds(&again, op);
    if (!same_response(&resp, &again, op)) {
        fail("response: decode(encode(decode(x))) differs from decode(x)", op, 0);
    }
    rv = rpc_response_encode(&two, op, &again);
    if (rv != 0 || two.len != one.len || memcmp(two.data, one.data, one.len) != 0) {
        fail("response: encode(decode(encode(decode(x)))) differs from encode(decode(x))", op, rv);
    }
    rpc_response_free(&resp);
    rpc_response_free(&again);
    if (resp.owned != NULL || again.owned != NULL) {
        fail("rpc_response_free left memory owned", op, 0);
    }
    rpc_buf_free(&one);
    rpc_buf_free(&two);
}

static uint64_t next_random(uint64_t *state)
{
    /* xorshift64*: deterministic, so a crashing input replays exactly. */
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dULL;
}

static size_t be32(const uint8_t *p)
{
    return (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
}

static void fuzz_framer(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return;
    }
    size_t max_body = data[0] % 65; /* 0..64: small, so lengths cross it often */
    const uint8_t *stream = data + 1;
    size_t n = size - 1;
    uint64_t state = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < size; i++) {
        state = (state ^ data[i]) * 0x100000001b3ULL;
    }
    state |= 1;

    struct rpc_framer f;
    rpc_framer_init(&f, max_body);
    size_t fed = 0, next_frame = 0; /* reference reader: where the next header starts */
    bool refused = false;
    while (fed < n && !refused) {
        uint64_t r = next_random(&state);
        /* Mostly small reads, 0 now and then, sometimes a large one. */
        size_t chunk = r % 8 == 0   ? 0
                       : r % 8 == 1 ? (size_t)(r >> 8) % 4096
                                    : (size_t)(r >> 8) % 24;
        if (chunk > n - fed) {
            chunk = n - fed;
        }
        if (rpc_framer_feed(&f, stream + fed, chunk) != 0) {
            fail("rpc_framer_feed failed", 0, -2);
        }
        fed += chunk;
        for (;;) {
            const uint8_t *body = NULL;
            size_t len = 0;
            int want = 0;
            size_t want_len = 0;
            if (fed - next_frame >= RPC_FRAME_HEADER) {
                want_len = be32(stream + next_frame);
                if (want_len > max_body) {
                    want = -1;
                } else if (fed - next_frame >= RPC_FRAME_HEADER + want_len) {
                    want = 1;
                }
            }
            int rv = rpc_framer_next(&f, &body, &len);
            if (rv != want) {
                fail("the framer disagrees with the reference reader", want, rv);
            }
            if (rv == -WIRE_ERANGE) {
                refused = true;
                break;
            }
            if (rv == 0) {
                break;
            }
            if (len != want_len || len > max_body ||
                (len > 0 && memcmp(body, stream + next_frame + RPC_FRAME_HEADER, len) != 0)) {
                fail("the framer handed out a frame that is not the stream's", (int)len,
                     (int)want_len);
            }
            next_frame += RPC_FRAME_HEADER + want_len;
        }
        /* Nothing complete is held back: what is left is part of one frame. */
        if (!refused && f.len - f.consumed >= RPC_FRAME_HEADER + max_body + 1) {
            fail("the framer holds more than one incomplete frame", (int)(f.len - f.consumed), 0);
        }
    }
    rpc_framer_free(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t empty[1];
    if (size == 0) {
        data = empty; /* never hand the decoders a NULL pointer */
    }
    fuzz_request(data, size);
    for (int op = 0; op <= RPC_OP_MAX; op++) {
        fuzz_response(data, size, op);
    }
    fuzz_framer(data, size);
    return 0;
}

#ifdef RPC_FUZZ_SEEDS

static const char ALPHABET[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/@-";

static void fill_text(char *dst, size_t len, size_t seed)
{
    for (size_t i = 0; i < len; i++) {
        dst[i] = ALPHABET[(seed + i) % (sizeof(ALPHABET) - 1)];
    }
    dst[len] = '\0';
}

static struct ledger_limits seed_limits(unsigned i)
{
    return (struct ledger_limits){.set = LEDGER_LIM_ALL,
                                  .period_kind = LEDGER_PERIOD_MONTH,
                                  .budget_micros = 1000000 * (int64_t)(i + 1),
                                  .soft_budget_micros = 800000,
                                  .rpm = 60,
                                  .tpm = 100000,
                                  .tpm_burst = 200000,
                                  .max_parallel = 4,
                                  .expires_at_ms = 1800000000000LL};
}

/* A command of `type` with plausible fields; `i` varies them. */
static struct ledger_cmd seed_cmd(uint8_t type, unsigned i)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = type;
    c.request_id[0] = (uint8_t)i;
    c.request_id[15] = type;
    snprintf(c.actor, sizeof(c.actor), "gateway@%u", i);
    switch (type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        snprintf(c.u.create.name, sizeof(c.u.create.name), "org/team-%u", i);
        snprintf(c.u.create.parent, sizeof(c.u.create.parent), "org");
        c.u.create.limits = seed_limits(i);
        break;
    case LEDGER_CMD_ACCOUNT_UPDATE:
        snprintf(c.u.update.name, sizeof(c.u.update.name), "org/team-%u", i);
        c.u.update.limits = seed_limits(i);
        c.u.update.clear = LEDGER_LIM_RPM;
        c.u.update.set_parent = 1;
        break;
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        snprintf(c.u.key.account, sizeof(c.u.key.account), "org/team-%u", i);
        memset(c.u.key.key_hash, 0x5a + (int)i, LEDGER_KEY_HASH_SIZE);
        break;
    case LEDGER_CMD_MODEL_LIMIT_SET:
        snprintf(c.u.model_limit.account, sizeof(c.u.model_limit.account), "org");
        snprintf(c.u.model_limit.model, sizeof(c.u.model_limit.model), "gpt-4o");
        c.u.model_limit.limits = (struct ledger_model_limits){
            .set = LEDGER_LIM_BUDGET | LEDGER_LIM_TPM, .budget_micros = 5000000, .tpm = 9000};
        break;
    case LEDGER_CMD_RESERVE:
        c.u.reserve.by_account = (uint8_t)(i & 1);
        memset(c.u.reserve.key_hash, 0x5a, LEDGER_KEY_HASH_SIZE);
        snprintf(c.u.reserve.account, sizeof(c.u.reserve.account), "org/team-%u", i);
        c.u.reserve.estimate_micros = 25000;
        c.u.reserve.estimate_tokens = 1500;
        snprintf(c.u.reserve.model, sizeof(c.u.reserve.model), "gpt-4o");
        c.u.reserve.ttl_ms = 120000;
        c.u.reserve.metadata_len = 12;
        memcpy(c.u.reserve.metadata, "{\"route\":1}", 12);
        break;
    case LEDGER_CMD_SETTLE:
        c.u.settle.actual_micros = 31000;
        c.u.settle.actual_tokens = 1800;
        break;
    case LEDGER_CMD_EXTEND:
        c.u.extend.ttl_ms = 60000;
        break;
    case LEDGER_CMD_CONFIG_SET:
        c.u.config.retention_ms = 3600000;
        break;
    default:
        break;
    }
    return c;
}

static struct rpc_request seed_request(int op, unsigned i)
{
    struct rpc_request q;
    memset(&q, 0, sizeof(q));
    q.seq = 1000 + i;
    q.op = (uint8_t)op;
    switch (op) {
    case RPC_OP_HELLO:
        q.u.hello.version = RPC_PROTOCOL_VERSION;
        fill_text(q.u.hello.token, 32 + i, i);
        break;
    case RPC_OP_WRITE:
        q.u.write = seed_cmd(LEDGER_CMD_RESERVE, i);
        break;
    case RPC_OP_ACCOUNT_GET:
        snprintf(q.u.get.name, sizeof(q.u.get.name), "org/team-%u", i);
        q.u.get.flags = RPC_READ_STALE;
        break;
    case RPC_OP_RESV_GET:
        memset(q.u.get.request_id, 0x11 * (int)(i + 1), LEDGER_REQUEST_ID_SIZE);
        break;
    case RPC_OP_KEY_GET:
        memset(q.u.get.key_hash, 0x5a, LEDGER_KEY_HASH_SIZE);
        break;
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
        snprintf(q.u.list.filter, sizeof(q.u.list.filter), "%s", i == 0 ? "" : "org");
        q.u.list.since_ms = 1700000000000LL;
        q.u.list.until_ms = 1800000000000LL;
        q.u.list.cursor_len = (uint16_t)(i == 0 ? 0 : 9);
        memset(q.u.list.cursor, (int)i, q.u.list.cursor_len);
        q.u.list.limit = i == 0 ? RPC_LIST_MAX : 10;
        break;
    case RPC_OP_MEMBERSHIP:
        q.u.membership.kind = (uint8_t)(RPC_MEMBER_ADD + i % 3);
        q.u.membership.id = 4;
        snprintf(q.u.membership.address, sizeof(q.u.membership.address), "10.0.0.4:7000");
        break;
    default:
        break;
    }
    return q;
}

static struct ledger_account_info seed_account(unsigned i)
{
    struct ledger_account_info a;
    memset(&a, 0, sizeof(a));
    a.id = i + 1;
    snprintf(a.name, sizeof(a.name), "org/team-%u", i);
    snprintf(a.parent, sizeof(a.parent), "org");
    a.depth = 2;
    a.limits = seed_limits(i);
    a.created_ms = 1700000000000LL;
    a.spent_micros = 5000;
    a.held_micros = 25000;
    a.remaining_micros = 970000;
    a.lifetime_spent_micros = 5000;
    a.inflight = 1;
    a.period_start_ms = 1700000000000LL;
    a.period_end_ms = INT64_MAX;
    a.rpm_available = UINT64_MAX;
    a.tpm_available = 99000;
    a.n_keys = 2;
    return a;
}

static struct ledger_reservation_info seed_resv(unsigned i)
{
    struct ledger_reservation_info v;
    memset(&v, 0, sizeof(v));
    memset(v.request_id, 0x21 + (int)i, LEDGER_REQUEST_ID_SIZE);
    v.state = (uint8_t)(i % 5);
    snprintf(v.account, sizeof(v.account), "org/team-%u", i);
    snprintf(v.model, sizeof(v.model), "gpt-4o");
    v.estimate_micros = 25000;
    v.estimate_tokens = 1500;
    v.created_ms = 1700000000000LL;
    v.expires_at_ms = 1700000120000LL;
    v.metadata_len = (uint16_t)(i * 5);
    memset(v.metadata, 'm', v.metadata_len);
    return v;
}

static struct ledger_journal_entry seed_entry(unsigned i)
{
    struct ledger_journal_entry e;
    memset(&e, 0, sizeof(e));
    e.seq = i + 1;
    e.ts_ms = 1700000000000LL + i;
    e.kind = (uint8_t)(1 + i % 7);
    e.cmd_type = LEDGER_CMD_SETTLE;
    snprintf(e.account, sizeof(e.account), "org/team-%u", i);
    snprintf(e.actor, sizeof(e.actor), "gateway@%u", i);
    memset(e.request_id, 0x31 + (int)i, LEDGER_REQUEST_ID_SIZE);
    e.amount_micros = -31000 + (int64_t)i;
    e.tokens = 1800;
    e.period_start_ms = 1700000000000LL;
    snprintf(e.model, sizeof(e.model), "gpt-4o");
    memset(e.admin_hash, 0xa0 + (int)i, sizeof(e.admin_hash));
    return e;
}

static struct ledger_account_info seed_accounts[3];
static struct ledger_reservation_info seed_reservations[3];
static struct ledger_journal_entry seed_entries[3];

/* A successful answer to `op`; pages and the status hold `n` items or members. */
static struct rpc_response seed_response(int op, uint32_t n)
{
    struct rpc_response r;
    memset(&r, 0, sizeof(r));
    r.seq = 2000 + n;
    switch (op) {
    case RPC_OP_HELLO:
        r.u.hello.role = RPC_ROLE_GATEWAY;
        r.u.hello.node_id = 2;
        break;
    case RPC_OP_WRITE:
        r.u.write.index = 12345;
        r.u.write.result.status = n == 0 ? LEDGER_OK : LEDGER_DENIED;
        r.u.write.result.cmd_type = LEDGER_CMD_RESERVE;
        r.u.write.result.deny_reason = n == 0 ? LEDGER_DENY_NONE : LEDGER_DENY_BUDGET;
        r.u.write.result.flags = LEDGER_RESULT_SOFT_BUDGET;
        memset(r.u.write.result.request_id, 0x41, LEDGER_REQUEST_ID_SIZE);
        snprintf(r.u.write.result.account, sizeof(r.u.write.result.account), "org");
        r.u.write.result.remaining = 100;
        r.u.write.result.retry_after_ms = -1;
        r.u.write.result.expires_at_ms = 1700000120000LL;
        if (n == 3) { /* every integer width at its extreme */
            r.u.write.index = UINT64_MAX;
            r.u.write.result.status = INT32_MIN;
            r.u.write.result.flags = UINT16_MAX;
            r.u.write.result.remaining = INT64_MIN;
            r.u.write.result.charged_micros = INT64_MAX;
        }
        break;
    case RPC_OP_ACCOUNT_GET:
        r.u.account = seed_account(n);
        break;
    case RPC_OP_RESV_GET:
        r.u.reservation = seed_resv(n);
        break;
    case RPC_OP_KEY_GET:
        snprintf(r.u.key.account, sizeof(r.u.key.account), "org/team-1");
        r.u.key.revoked = (uint8_t)(n & 1);
        break;
    case RPC_OP_STATUS:
        r.u.status.node_id = 1;
        r.u.status.term = 7;
        r.u.status.raft_state = 3;
        r.u.status.serving = 1;
        r.u.status.leader_id = 1;
        snprintf(r.u.status.leader_address, sizeof(r.u.status.leader_address), "10.0.0.1:7100");
        r.u.status.commit_index = 99;
        r.u.status.applied_index = 98;
        r.u.status.ledger_now_ms = 1700000000000LL;
        r.u.status.n_members = n;
        for (uint32_t i = 0; i < n; i++) {
            r.u.status.members[i].id = i + 1;
            snprintf(r.u.status.members[i].peer_address, RPC_ADDRESS_MAX + 1, "10.0.0.%u:7000",
                     i + 1);
            snprintf(r.u.status.members[i].client_address, RPC_ADDRESS_MAX + 1, "10.0.0.%u:7100",
                     i + 1);
            r.u.status.members[i].role = (uint8_t)(i % 3);
        }
        break;
    case RPC_OP_HASH:
        r.u.hash.applied_index = 98;
        memset(r.u.hash.state_hash, 0xcd, sizeof(r.u.hash.state_hash));
        break;
    case RPC_OP_ACCOUNT_LIST:
    case RPC_OP_RESV_LIST:
    case RPC_OP_JOURNAL:
        r.u.list.n = n;
        r.u.list.next_len = n == 3 ? 9 : 0;
        memset(r.u.list.next, 4, r.u.list.next_len);
        for (uint32_t i = 0; i < n; i++) {
            seed_accounts[i] = seed_account(i);
            seed_reservations[i] = seed_resv(i);
            seed_entries[i] = seed_entry(i);
        }
        if (op == RPC_OP_ACCOUNT_LIST) {
            r.u.list.items.accounts = seed_accounts;
        } else if (op == RPC_OP_RESV_LIST) {
            r.u.list.items.reservations = seed_reservations;
        } else {
            r.u.list.items.entries = seed_entries;
        }
        break;
    default:
        break;
    }
    return r;
}

static int write_file(const char *dir, unsigned k, const void *p, size_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/seed-%03u", dir, k);
    FILE *f = fopen(path, "wb");
    int bad = f == NULL || fwrite(p, 1, len, f) != len;
    if (f != NULL && fclose(f) != 0) {
        bad = 1;
    }
    if (bad) {
        perror(path);
    }
    return bad;
}

/* Writes the body of the one frame in `b` (the fuzz input is a body, not a frame). */
static int write_body(const char *dir, unsigned k, struct rpc_buf *b, int rv)
{
    if (rv != 0 || b->len <= RPC_FRAME_HEADER) {
        fprintf(stderr, "seed %u: encode: %d\n", k, rv);
        rpc_buf_free(b);
        return 1;
    }
    int bad = write_file(dir, k, b->data + RPC_FRAME_HEADER, b->len - RPC_FRAME_HEADER);
    rpc_buf_free(b);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    unsigned k = 0;
    int bad = 0;
    struct rpc_buf b = {0};
    /* Requests: every op twice, a write of every command type. */
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        for (unsigned i = 0; i < 2; i++) {
            struct rpc_request q = seed_request(op, i);
            int rv = rpc_request_encode(&b, &q);
            bad |= write_body(dir, k++, &b, rv);
        }
    }
    for (uint8_t type = LEDGER_CMD_ACCOUNT_CREATE; type < LEDGER_CMD_TYPE_MAX; type++) {
        struct rpc_request q = seed_request(RPC_OP_WRITE, type);
        q.u.write = seed_cmd(type, type);
        int rv = rpc_request_encode(&b, &q);
        bad |= write_body(dir, k++, &b, rv);
    }
    /* Responses: every op three times: pages of 0, 1 and 3 items, status also with all
     * members, a write result with extreme integers. */
    for (int op = RPC_OP_HELLO; op < RPC_OP_MAX; op++) {
        static const uint32_t counts[] = {0, 1, 3, RPC_MEMBERS_MAX};
        size_t variants = op == RPC_OP_STATUS ? 4 : 3;
        for (size_t v = 0; v < variants; v++) {
            struct rpc_response r = seed_response(op, counts[v]);
            int rv = rpc_response_encode(&b, op, &r);
            bad |= write_body(dir, k++, &b, rv);
        }
    }
    for (int status = RPC_ENOTLEADER; status < RPC_STATUS_MAX; status++) {
        int rv = rpc_error_encode(&b, 3000 + (uint64_t)status, status, rpc_status_name(status),
                                  status == RPC_ENOTLEADER ? 3 : 0,
                                  status == RPC_ENOTLEADER ? "10.0.0.3:7100" : "");
        bad |= write_body(dir, k++, &b, rv);
    }
    /* Framer streams: a max_body byte (64), then whole frames; the last stream ends with a
     * length over the bound. */
    for (unsigned s = 0; s < 3; s++) {
        static const uint8_t max_body = 64;
        static const uint8_t over[] = {0x00, 0x00, 0x00, 0x41, 0x90};
        struct rpc_buf stream = {0};
        bool ok = true;
        for (unsigned i = 0; i <= s + 1 && ok; i++) {
            struct rpc_request q = seed_request(i % 2 == 0 ? RPC_OP_STATUS : RPC_OP_RESV_GET, i);
            ok = rpc_request_encode(&stream, &q) == 0;
        }
        if (!ok) {
            fprintf(stderr, "stream %u: encode failed\n", s);
            bad = 1;
            rpc_buf_free(&stream);
            continue;
        }
        uint8_t *p = malloc(1 + stream.len + sizeof(over));
        if (p == NULL) {
            perror("malloc");
            return 1;
        }
        p[0] = max_body;
        memcpy(p + 1, stream.data, stream.len);
        size_t len = 1 + stream.len;
        if (s == 2) {
            memcpy(p + len, over, sizeof(over));
            len += sizeof(over);
        }
        bad |= write_file(dir, k++, p, len);
        free(p);
        rpc_buf_free(&stream);
    }
    return bad;
}

#endif /* RPC_FUZZ_SEEDS */
