/*
 * ledger_codec_test.c: batch encoding and decoding (ledger.h "Encoding").
 *
 * Round trips put every field of every command type at its bounds. The decoder is
 * then fed hostile input: every truncation, random bytes, and mutations of a valid
 * batch made node by node. A small msgpack walker below finds the nodes of a valid
 * encoding (offset, header and total length), so a mutation is a byte splice that
 * leaves the rest of the batch intact and only the intended defect in it. Every
 * decode reads a private heap copy of exactly its length, so under ASan a read past
 * the end is caught.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */
#endif

#include "cmd_equal.h"
#include "ledger_testlib.h"
#include "mp_walk.h"

#include <stdbool.h>

#define MAX_DECODE (LEDGER_BATCH_MAX_CMDS + 1)

static struct ledger_cmd decoded[MAX_DECODE];
static struct ledger_cmd many[MAX_DECODE];

static const char NAME_ALPHABET[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/@-";

/* ---- Commands at their bounds. ---- */

/* `len` characters of `alphabet` from position `seed` on, NUL-terminated. */
static void fill_text(char *dst, size_t len, const char *alphabet, size_t seed)
{
    size_t n = strlen(alphabet);
    for (size_t i = 0; i < len; i++) {
        dst[i] = alphabet[(seed + i) % n];
    }
    dst[len] = '\0';
}

/* A name of `max` bytes at the upper bound, else of `min` bytes. */
static void fill_name(char *dst, bool at_max, size_t min, size_t max, size_t seed)
{
    fill_text(dst, at_max ? max : min, NAME_ALPHABET, seed);
}

static void fill_bytes(uint8_t *dst, size_t len, bool at_max)
{
    for (size_t i = 0; i < len; i++) {
        dst[i] = at_max ? (uint8_t)(0xff - i) : 0;
    }
}

static struct ledger_limits limits_at_bounds(bool at_max)
{
    struct ledger_limits l = {0};
    if (at_max) {
        l = (struct ledger_limits){.set = LEDGER_LIM_ALL,
                                   .period_kind = LEDGER_PERIOD_FIXED,
                                   .blocked = 1,
                                   .expiry_policy = LEDGER_EXPIRY_RELEASE,
                                   .budget_micros = LEDGER_AMOUNT_MAX,
                                   .soft_budget_micros = LEDGER_AMOUNT_MAX,
                                   .period_ms = LEDGER_PERIOD_MAX_MS,
                                   .rpm = LEDGER_RATE_MAX,
                                   .rpm_burst = LEDGER_RATE_MAX,
                                   .tpm = LEDGER_RATE_MAX,
                                   .tpm_burst = LEDGER_RATE_MAX,
                                   .max_parallel = LEDGER_PARALLEL_MAX,
                                   .expires_at_ms = LEDGER_TIME_MAX_MS};
    }
    return l;
}

static struct ledger_model_limits model_limits_at_bounds(bool at_max)
{
    struct ledger_model_limits l = {0};
    if (at_max) {
        l = (struct ledger_model_limits){.set = LEDGER_LIM_BUDGET | LEDGER_LIM_RPM | LEDGER_LIM_TPM,
                                         .budget_micros = LEDGER_AMOUNT_MAX,
                                         .rpm = LEDGER_RATE_MAX,
                                         .rpm_burst = LEDGER_RATE_MAX,
                                         .tpm = LEDGER_RATE_MAX,
                                         .tpm_burst = LEDGER_RATE_MAX};
    }
    return l;
}

/* The command kinds: every type, reserve both by key and by account. */
static const struct {
    uint8_t type;
    uint8_t by_account;
} KINDS[] = {
    {LEDGER_CMD_ACCOUNT_CREATE, 0}, {LEDGER_CMD_ACCOUNT_UPDATE, 0},  {LEDGER_CMD_KEY_ADD, 0},
    {LEDGER_CMD_KEY_REVOKE, 0},     {LEDGER_CMD_MODEL_LIMIT_SET, 0}, {LEDGER_CMD_RESERVE, 0},
    {LEDGER_CMD_RESERVE, 1},        {LEDGER_CMD_SETTLE, 0},          {LEDGER_CMD_VOID, 0},
    {LEDGER_CMD_EXTEND, 0},         {LEDGER_CMD_CONFIG_SET, 0},
};
#define N_KINDS (sizeof(KINDS) / sizeof(KINDS[0]))

/*
 * Command kind `k` with every field at its upper bound (names 128 bytes, model 64,
 * actor 64, metadata 256, amounts 10^15, tokens and rates 10^12, ...) or its lower
 * bound. Strings a type does not use are filled too, so every string of an upper-bound
 * encoding is at its bound.
 */
static struct ledger_cmd command_at_bounds(size_t k, bool at_max)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = KINDS[k].type;
    fill_bytes(c.request_id, LEDGER_REQUEST_ID_SIZE, at_max);
    fill_text(c.actor, at_max ? LEDGER_ACTOR_MAX : 0,
              " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklm"
              "nopqrstuvwxyz{|}~",
              k);
    fill_text(c.scope, at_max ? LEDGER_SCOPE_MAX : 0, NAME_ALPHABET, k);
    int64_t amount = at_max ? LEDGER_AMOUNT_MAX : 0;
    uint64_t tokens = at_max ? LEDGER_TOKENS_MAX : 0;
    switch (c.type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        fill_name(c.u.create.name, at_max, 1, LEDGER_NAME_MAX, 1);
        fill_name(c.u.create.parent, at_max, 0, LEDGER_NAME_MAX, 2);
        c.u.create.limits = limits_at_bounds(at_max);
        break;
    case LEDGER_CMD_ACCOUNT_UPDATE:
        fill_name(c.u.update.name, at_max, 1, LEDGER_NAME_MAX, 3);
        c.u.update.limits = limits_at_bounds(at_max);
        c.u.update.clear = at_max ? LEDGER_LIM_ALL : 0;
        c.u.update.set_parent = at_max;
        fill_name(c.u.update.parent, at_max, 0, LEDGER_NAME_MAX, 4);
        break;
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        fill_name(c.u.key.account, at_max, c.type == LEDGER_CMD_KEY_ADD, LEDGER_NAME_MAX, 5);
        fill_bytes(c.u.key.key_hash, LEDGER_KEY_HASH_SIZE, at_max);
        break;
    case LEDGER_CMD_MODEL_LIMIT_SET:
        fill_name(c.u.model_limit.account, at_max, 1, LEDGER_NAME_MAX, 6);
        fill_name(c.u.model_limit.model, at_max, 1, LEDGER_MODEL_MAX, 7);
        c.u.model_limit.limits = model_limits_at_bounds(at_max);
        break;
    case LEDGER_CMD_RESERVE:
        c.u.reserve.by_account = KINDS[k].by_account;
        fill_bytes(c.u.reserve.key_hash, LEDGER_KEY_HASH_SIZE, at_max);
        fill_name(c.u.reserve.account, at_max, KINDS[k].by_account, LEDGER_NAME_MAX, 8);
        c.u.reserve.estimate_micros = amount;
        c.u.reserve.estimate_tokens = tokens;
        fill_name(c.u.reserve.model, at_max, 0, LEDGER_MODEL_MAX, 9);
        c.u.reserve.ttl_ms = at_max ? LEDGER_TTL_MAX_MS : 1;
        c.u.reserve.metadata_len = at_max ? LEDGER_METADATA_MAX : 0;
        fill_bytes(c.u.reserve.metadata, c.u.reserve.metadata_len, at_max);
        break;
    case LEDGER_CMD_SETTLE:
        c.u.settle.actual_micros = amount;
        c.u.settle.actual_tokens = tokens;
        break;
    case LEDGER_CMD_EXTEND:
        c.u.extend.ttl_ms = at_max ? LEDGER_TTL_MAX_MS : 1;
        break;
    case LEDGER_CMD_CONFIG_SET:
        c.u.config.retention_ms = at_max ? LEDGER_RETENTION_MAX_MS : 1;
        break;
    default:
        break;
    }
    return c;
}

/* One command of every kind into `out` (N_KINDS entries). */
static void commands_at_bounds(struct ledger_cmd *out, bool at_max)
{
    for (size_t k = 0; k < N_KINDS; k++) {
        out[k] = command_at_bounds(k, at_max);
    }
}

/* ---- Encoding and decoding helpers. ---- */

static void encode_ok(int64_t stamp, const struct ledger_cmd *cmds, size_t n, uint8_t **buf,
                      size_t *len)
{
    void *b = NULL;
    int rv = ledger_batch_encode(stamp, cmds, n, &b, len);
    CHECK_EQ_INT(rv, 0);
    REQUIRE(rv == 0);
    CHECK_EQ_INT(*len % 8, 0);
    *buf = b;
}

/* Decode a private heap copy of exactly `len` bytes into `decoded`. */
static int decode_copy(const void *buf, size_t len, size_t max, int64_t *stamp, size_t *n)
{
    uint8_t *copy = malloc(len ? len : 1);
    REQUIRE(copy != NULL);
    if (len) {
        memcpy(copy, buf, len);
    }
    *n = 0;
    int rv = ledger_batch_decode(copy, len, stamp, decoded, max, n);
    free(copy);
    return rv;
}

/* Encode `n` commands at `stamp`, decode them back and compare. */
static void check_round_trip(int64_t stamp, const struct ledger_cmd *cmds, size_t n)
{
    uint8_t *buf;
    size_t len, got_n;
    int64_t got_stamp = 0;
    encode_ok(stamp, cmds, n, &buf, &len);
    int rv = decode_copy(buf, len, MAX_DECODE, &got_stamp, &got_n);
    free(buf);
    CHECK_EQ_INT(rv, 0);
    REQUIRE(rv == 0);
    CHECK_EQ_INT(got_stamp, stamp);
    CHECK_EQ_INT(got_n, n);
    REQUIRE(got_n == n);
    for (size_t i = 0; i < n; i++) {
        check_cmd_equal(&cmds[i], &decoded[i]);
    }
}

/* Decoding these bytes fails with -LEDGER_EDECODE or -LEDGER_ETOOBIG; `what` and `where`
 * say which input it was when it does not. */
static void check_rejected_max(const void *buf, size_t len, size_t max, const char *what,
                               size_t where)
{
    int64_t stamp;
    size_t n;
    int rv = decode_copy(buf, len, max, &stamp, &n);
    if (rv != -LEDGER_EDECODE && rv != -LEDGER_ETOOBIG) {
        fprintf(stderr, "  %s at %zu (len %zu): decode returned %d, n %zu\n", what, where, len, rv,
                n);
        CHECK(rv == -LEDGER_EDECODE || rv == -LEDGER_ETOOBIG);
    }
}

static void check_rejected(const void *buf, size_t len, const char *what, size_t where)
{
    check_rejected_max(buf, len, MAX_DECODE, what, where);
}

/* ---- Valid encodings, walked (mp_walk.h). ---- */

/* An encoded batch and its nodes in pre-order; nodes[0] is the whole batch. */
struct enc {
    uint8_t *buf;
    size_t len, content_len;
    struct mpw_tree tree;
};

/* Encode `n` commands and walk the encoding; the bytes after it are the zero padding. */
static void enc_make(struct enc *e, int64_t stamp, const struct ledger_cmd *cmds, size_t n)
{
    memset(e, 0, sizeof(*e));
    encode_ok(stamp, cmds, n, &e->buf, &e->len);
    e->content_len = mpw_walk(&e->tree, e->buf, e->len, 0, SIZE_MAX);
    REQUIRE(e->content_len != 0);
    REQUIRE(e->len - e->content_len < 8);
    for (size_t i = e->content_len; i < e->len; i++) {
        REQUIRE(e->buf[i] == 0);
    }
}

static void enc_free(struct enc *e)
{
    free(e->buf);
    mpw_free(&e->tree);
    memset(e, 0, sizeof(*e));
}

/* A new batch: e's content with bytes [off, off + cut) replaced by `ins`, zero-padded to
 * a multiple of 8. Caller frees. */
static uint8_t *splice(const struct enc *e, size_t off, size_t cut, const void *ins, size_t ins_len,
                       size_t *out_len)
{
    size_t content = e->content_len - cut + ins_len;
    size_t len = (content + 7) / 8 * 8;
    uint8_t *out = calloc(1, len ? len : 1);
    REQUIRE(out != NULL);
    memcpy(out, e->buf, off);
    if (ins_len > 0) {
        memcpy(out + off, ins, ins_len);
    }
    memcpy(out + off + ins_len, e->buf + off + cut, e->content_len - off - cut);
    *out_len = len;
    return out;
}

/* Replace node `i` (whole, or only its header) by `ins` and check the result is rejected. */
static void check_splice_rejected(const struct enc *e, size_t i, bool header_only, const void *ins,
                                  size_t ins_len, const char *what)
{
    const struct mpw_node *nd = &e->tree.nodes[i];
    size_t len;
    uint8_t *b = splice(e, nd->off, header_only ? nd->hdr : nd->len, ins, ins_len, &len);
    check_rejected(b, len, what, i);
    free(b);
}

/* The smallest header for a str, bin or array of `n`; returns its length. */
static size_t put_header(uint8_t *out, enum mpw_kind kind, uint64_t n)
{
    static const uint8_t base[3][3] = {{0xd9, 0xda, 0xdb}, {0xc4, 0xc5, 0xc6}, {0, 0xdc, 0xdd}};
    int row = kind == MPW_STR ? 0 : kind == MPW_BIN ? 1 : 2;
    if (kind == MPW_STR && n < 32) {
        out[0] = (uint8_t)(0xa0 | n);
        return 1;
    }
    if (kind == MPW_ARRAY && n < 16) {
        out[0] = (uint8_t)(0x90 | n);
        return 1;
    }
    size_t w = n < 256 && kind != MPW_ARRAY ? 1 : n < 65536 ? 2 : 4;
    out[0] = base[row][w == 1 ? 0 : w == 2 ? 1 : 2];
    for (size_t i = 0; i < w; i++) {
        out[1 + i] = (uint8_t)(n >> (8 * (w - 1 - i)));
    }
    return 1 + w;
}

/* A copy of node i's body (bytes after its header) behind a new header for `n`. */
static uint8_t *reheader(const struct enc *e, size_t i, enum mpw_kind kind, uint64_t n,
                         size_t extra, size_t *out_len)
{
    const struct mpw_node *nd = &e->tree.nodes[i];
    size_t body = nd->len - nd->hdr;
    uint8_t *out = malloc(5 + body + extra);
    REQUIRE(out != NULL);
    size_t h = put_header(out, kind, n);
    memcpy(out + h, e->buf + nd->off + nd->hdr, body);
    memset(out + h + body, 'a', extra);
    *out_len = h + body + extra;
    return out;
}

/* The batch of every command kind at its upper bound, walked. */
static void enc_max_batch(struct enc *e)
{
    struct ledger_cmd cmds[N_KINDS];
    commands_at_bounds(cmds, true);
    enc_make(e, LEDGER_TIME_MAX_MS, cmds, N_KINDS);
}

/* Index of the node holding the command array: the array child of the batch array with
 * `count` elements. */
static size_t find_commands_node(const struct enc *e, uint64_t count)
{
    for (size_t i = 1; i < e->tree.n; i++) {
        if (e->tree.nodes[i].kind == MPW_ARRAY && e->tree.nodes[i].value == count &&
            e->tree.nodes[i].off + e->tree.nodes[i].len == e->content_len) {
            return i;
        }
    }
    REQUIRE(false);
    return 0;
}

/* Index of the node that starts at byte `off`. */
static size_t node_at(const struct enc *e, size_t off)
{
    for (size_t i = 0; i < e->tree.n; i++) {
        if (e->tree.nodes[i].off == off) {
            return i;
        }
    }
    REQUIRE(false);
    return 0;
}

/* Indexes of the elements of array node `parent` into `out` (at most `max`). */
static size_t children_of(const struct enc *e, size_t parent, size_t *out, size_t max)
{
    size_t off = e->tree.nodes[parent].off + e->tree.nodes[parent].hdr, n = 0;
    while (n < e->tree.nodes[parent].value && n < max) {
        out[n] = node_at(e, off);
        off += e->tree.nodes[out[n]].len;
        n++;
    }
    return n;
}

/* A batch of LEDGER_BATCH_MAX_CMDS copies of `c` plus one more: the command array's
 * header says 4097 and a copy of its first command follows the last. Caller frees. */
static uint8_t *batch_with_one_command_too_many(const struct ledger_cmd *c, int64_t stamp,
                                                size_t *len)
{
    for (size_t i = 0; i < LEDGER_BATCH_MAX_CMDS; i++) {
        many[i] = *c;
    }
    struct enc e;
    enc_make(&e, stamp, many, LEDGER_BATCH_MAX_CMDS);
    size_t i = find_commands_node(&e, LEDGER_BATCH_MAX_CMDS);
    const struct mpw_node *first = &e.tree.nodes[i + 1];
    size_t more_len;
    uint8_t *more = reheader(&e, i, MPW_ARRAY, LEDGER_BATCH_MAX_CMDS + 1, first->len, &more_len);
    memcpy(more + more_len - first->len, e.buf + first->off, first->len);
    uint8_t *b = splice(&e, e.tree.nodes[i].off, e.tree.nodes[i].len, more, more_len, len);
    free(more);
    enc_free(&e);
    return b;
}

/* ---- Round trips. ---- */

static void every_command_type_round_trips_at_upper_bounds(void)
{
    struct ledger_cmd cmds[N_KINDS];
    commands_at_bounds(cmds, true);
    check_round_trip(LEDGER_TIME_MAX_MS, cmds, N_KINDS);
}

static void every_command_type_round_trips_at_lower_bounds(void)
{
    struct ledger_cmd cmds[N_KINDS];
    commands_at_bounds(cmds, false);
    check_round_trip(0, cmds, N_KINDS);
}

static void each_command_round_trips_alone(void)
{
    for (size_t k = 0; k < N_KINDS; k++) {
        struct ledger_cmd lo = command_at_bounds(k, false), hi = command_at_bounds(k, true);
        check_round_trip(1700000000000LL, &lo, 1);
        check_round_trip(1700000000000LL, &hi, 1);
    }
}

static void batch_of_max_commands_round_trips(void)
{
    for (size_t i = 0; i < LEDGER_BATCH_MAX_CMDS; i++) {
        many[i] = command_at_bounds(i % N_KINDS, i % 2 == 0);
        tl_id(many[i].request_id, i);
    }
    check_round_trip(1700000000000LL, many, LEDGER_BATCH_MAX_CMDS);
}

static void stamps_outside_the_time_range_round_trip(void)
{
    /* The ledger clamps them when it applies the batch; the codec carries them. */
    static const int64_t stamps[] = {-1, LEDGER_TIME_MAX_MS + 1, INT64_MIN, INT64_MAX};
    struct ledger_cmd c = command_at_bounds(N_KINDS - 1, false);
    for (size_t i = 0; i < sizeof(stamps) / sizeof(stamps[0]); i++) {
        check_round_trip(stamps[i], &c, 1);
    }
}

static void encoded_length_is_a_multiple_of_8(void)
{
    struct ledger_cmd cmds[3];
    for (size_t actor = 0; actor <= LEDGER_ACTOR_MAX; actor++) {
        for (size_t n = 1; n <= 3; n++) {
            for (size_t i = 0; i < n; i++) {
                cmds[i] = command_at_bounds((actor + i) % N_KINDS, false);
                fill_text(cmds[i].actor, actor, NAME_ALPHABET, i);
            }
            check_round_trip((int64_t)actor, cmds, n);
        }
    }
}

/* ---- Decoding hostile input. ---- */

static void decode_rejects_empty_buffer(void)
{
    uint8_t byte = 0;
    int64_t stamp;
    size_t n = 99;
    int rv = ledger_batch_decode(&byte, 0, &stamp, decoded, MAX_DECODE, &n);
    CHECK_EQ_INT(rv, -LEDGER_EDECODE);
    check_rejected(&byte, 0, "empty", 0);
}

static void decode_rejects_every_truncation_of_a_valid_batch(void)
{
    struct enc e;
    enc_max_batch(&e);
    for (size_t k = 0; k < e.len; k++) {
        check_rejected(e.buf, k, "truncated", k);
    }
    enc_free(&e);
}

static void decode_rejects_truncated_content_padded_to_8(void)
{
    /* Cut anywhere before the first command and pad with zeros again. */
    struct enc e;
    enc_max_batch(&e);
    size_t cmds_node = find_commands_node(&e, N_KINDS);
    for (size_t k = 0; k <= e.tree.nodes[cmds_node].off + e.tree.nodes[cmds_node].hdr; k++) {
        size_t len;
        uint8_t *b = splice(&e, k, e.content_len - k, NULL, 0, &len);
        check_rejected(b, len, "truncated and padded", k);
        free(b);
    }
    enc_free(&e);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void decode_rejects_random_garbage(void)
{
    uint8_t buf[1024];
    for (uint64_t seed = 1; seed <= 3000; seed++) {
        uint64_t s = seed;
        size_t len = 8 * (1 + splitmix(&s) % 128);
        for (size_t i = 0; i < len; i++) {
            buf[i] = (uint8_t)splitmix(&s);
        }
        /* Half the seeds start like a batch so the garbage reaches the commands. */
        if (seed % 2 == 0) {
            memcpy(buf, "\x93\x01\x00", 3);
        }
        check_rejected(buf, len, "garbage seed", seed);
    }
}

static void decode_survives_random_mutations_of_a_valid_batch(void)
{
    struct enc e;
    enc_max_batch(&e);
    uint8_t *b = malloc(e.len);
    REQUIRE(b != NULL);
    for (uint64_t seed = 1; seed <= 3000; seed++) {
        uint64_t s = seed;
        memcpy(b, e.buf, e.len);
        for (uint64_t flips = 1 + splitmix(&s) % 4; flips > 0; flips--) {
            b[splitmix(&s) % e.content_len] ^= (uint8_t)(1 + splitmix(&s) % 255);
        }
        int64_t stamp;
        size_t n;
        int rv = decode_copy(b, e.len, MAX_DECODE, &stamp, &n);
        if (rv == 0) {
            /* What decodes is within the bounds, so it encodes again. */
            void *again;
            size_t again_len;
            CHECK(n >= 1 && n <= N_KINDS);
            int erv = ledger_batch_encode(stamp, decoded, n, &again, &again_len);
            CHECK_EQ_INT(erv, 0);
            if (erv == 0) {
                free(again);
            }
        } else if (rv != -LEDGER_EDECODE && rv != -LEDGER_ETOOBIG) {
            fprintf(stderr, "  mutation seed %" PRIu64 ": %d\n", seed, rv);
            CHECK(false);
        }
    }
    free(b);
    enc_free(&e);
}

static void decode_rejects_wrong_top_level_types(void)
{
    static const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        {"\xc0", 1},
        {"\xc3", 1},
        {"\x2a", 1},
        {"\xa3"
         "abc",
         4},
        {"\xc4\x01x", 3},
        {"\xcb\x3f\xf0\0\0\0\0\0\0", 9},
        {"\x80", 1},
        {"\x90", 1},
        {"\x93\xa1x\x00\x91\x90", 6},
        {"\x93\x01\xa1x\x90", 5},
        {"\x93\x01\x00\x80", 4},
        {"\x93\x01\x00\x91\x80", 5},
        {"\x93\x01\x00\x91\xc0", 5},
        {"\x92\x01\x00", 3},
        {"\x94\x01\x00\x90\x00", 5},
        {"\x93\x02\x00\x91\x90", 5},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t buf[16] = {0};
        memcpy(buf, cases[i].bytes, cases[i].len);
        check_rejected(buf, 16, "top-level case", i);
    }
}

static void decode_rejects_wrong_type_in_every_field(void)
{
    struct enc e;
    enc_max_batch(&e);
    static const uint8_t not_int[][9] = {
        {0xa1, 'x'}, {0xc0}, {0xc3}, {0xcb, 0x3f, 0xf0}, {0xc4, 0x01, 'x'}};
    static const size_t not_int_len[] = {2, 1, 1, 9, 3};
    static const uint8_t int7 = 0x07, nil = 0xc0, empty_map = 0x80;
    for (size_t i = 0; i < e.tree.n; i++) {
        const struct mpw_node *nd = &e.tree.nodes[i];
        if (nd->kind == MPW_UINT || nd->kind == MPW_INT) {
            for (size_t j = 0; j < sizeof(not_int_len) / sizeof(not_int_len[0]); j++) {
                check_splice_rejected(&e, i, false, not_int[j], not_int_len[j], "not an int");
            }
            continue;
        }
        check_splice_rejected(&e, i, false, &int7, 1, "int instead");
        check_splice_rejected(&e, i, false, &nil, 1, "nil instead");
        if (nd->kind == MPW_ARRAY) {
            check_splice_rejected(&e, i, false, &empty_map, 1, "map instead");
        } else if (nd->kind == MPW_STR || nd->kind == MPW_BIN) {
            /* The same bytes as the other of str and bin. */
            size_t len;
            uint8_t *swapped =
                reheader(&e, i, nd->kind == MPW_STR ? MPW_BIN : MPW_STR, nd->value, 0, &len);
            check_splice_rejected(&e, i, false, swapped, len, "str/bin swapped");
            free(swapped);
        }
    }
    enc_free(&e);
}

static void decode_rejects_huge_counts_in_every_header(void)
{
    static const uint8_t top[][8] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff},
        {0xdf, 0xff, 0xff, 0xff, 0xff},
        {0xdb, 0xff, 0xff, 0xff, 0xff},
        {0xc6, 0xff, 0xff, 0xff, 0xff},
        {0xdc, 0xff, 0xff},
        {0xc9, 0xff, 0xff, 0xff, 0xff, 0x01},
        {0x93, 0x01, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff},
    };
    for (size_t i = 0; i < sizeof(top) / sizeof(top[0]); i++) {
        check_rejected(top[i], 8, "top-level huge header", i);
    }

    struct enc e;
    enc_max_batch(&e);
    static const uint8_t huge[3][2][5] = {
        {{0xdb, 0xff, 0xff, 0xff, 0xff}, {0xda, 0xff, 0xff}},
        {{0xc6, 0xff, 0xff, 0xff, 0xff}, {0xc5, 0xff, 0xff}},
        {{0xdd, 0xff, 0xff, 0xff, 0xff}, {0xdc, 0xff, 0xff}},
    };
    for (size_t i = 0; i < e.tree.n; i++) {
        enum mpw_kind k = e.tree.nodes[i].kind;
        if (k != MPW_STR && k != MPW_BIN && k != MPW_ARRAY) {
            continue;
        }
        int row = k == MPW_STR ? 0 : k == MPW_BIN ? 1 : 2;
        check_splice_rejected(&e, i, true, huge[row][0], 5, "count 2^32-1");
        check_splice_rejected(&e, i, true, huge[row][1], 3, "count 2^16-1");
    }
    enc_free(&e);
}

static void decode_rejects_every_string_one_byte_over_its_bound(void)
{
    /* In the upper-bound batch every str and bin is as long as it may be. */
    struct enc e;
    enc_max_batch(&e);
    size_t grown = 0;
    for (size_t i = 0; i < e.tree.n; i++) {
        const struct mpw_node *nd = &e.tree.nodes[i];
        if (nd->kind != MPW_STR && nd->kind != MPW_BIN) {
            continue;
        }
        size_t len;
        uint8_t *longer = reheader(&e, i, nd->kind, nd->value + 1, 1, &len);
        check_splice_rejected(&e, i, false, longer, len, "one byte over");
        free(longer);
        grown++;
    }
    /* Per command: request_id, actor, scope and its strings (2, 2, 2, 2, 2, 4, 4, 0, 0, 0,
     * 0). */
    CHECK_EQ_INT(grown, 3 * N_KINDS + 18);
    enc_free(&e);
}

static void decode_rejects_fixed_size_fields_one_byte_short(void)
{
    struct enc e;
    enc_max_batch(&e);
    for (size_t i = 0; i < e.tree.n; i++) {
        const struct mpw_node *nd = &e.tree.nodes[i];
        if (nd->kind == MPW_BIN &&
            (nd->value == LEDGER_REQUEST_ID_SIZE || nd->value == LEDGER_KEY_HASH_SIZE)) {
            uint8_t shorter[2 + LEDGER_KEY_HASH_SIZE] = {0xc4, (uint8_t)(nd->value - 1)};
            memcpy(shorter + 2, e.buf + nd->off + nd->hdr, nd->value - 1);
            check_splice_rejected(&e, i, false, shorter, 1 + nd->value, "one byte short");
        }
    }
    enc_free(&e);
}

static void decode_rejects_commands_with_a_field_missing_or_extra(void)
{
    struct enc e;
    enc_max_batch(&e);
    size_t cmds[N_KINDS], fields[32];
    REQUIRE(children_of(&e, find_commands_node(&e, N_KINDS), cmds, N_KINDS) == N_KINDS);
    for (size_t k = 0; k < N_KINDS; k++) {
        const struct mpw_node *cmd = &e.tree.nodes[cmds[k]];
        size_t nf = children_of(&e, cmds[k], fields, 32), len;
        REQUIRE(nf == cmd->value && nf >= 2);
        /* One more element ('a', a positive fixint) after the last field. */
        uint8_t *b = reheader(&e, cmds[k], MPW_ARRAY, cmd->value + 1, 1, &len);
        check_splice_rejected(&e, cmds[k], false, b, len, "extra field");
        free(b);
        /* The last field and its count removed. */
        b = reheader(&e, cmds[k], MPW_ARRAY, cmd->value - 1, 0, &len);
        len -= e.tree.nodes[fields[nf - 1]].len;
        check_splice_rejected(&e, cmds[k], false, b, len, "missing field");
        free(b);
    }
    enc_free(&e);
}

static void decode_rejects_unknown_command_type(void)
{
    struct ledger_cmd c = command_at_bounds(N_KINDS - 1, false); /* config_set */
    c.u.config.retention_ms = 12345;
    struct enc e;
    enc_make(&e, 1000, &c, 1);
    size_t found = 0;
    static const uint8_t bad_types[][9] = {
        {0x00},
        {0x0c},
        {0x7f},
        {0xcc, 0xff},
        {0xcd, 0x01, 0x0a},
        {0xff},
        {0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
    };
    static const size_t bad_len[] = {1, 1, 1, 2, 3, 1, 9};
    for (size_t i = 0; i < e.tree.n; i++) {
        if (e.tree.nodes[i].kind != MPW_UINT || e.tree.nodes[i].value != LEDGER_CMD_CONFIG_SET) {
            continue;
        }
        found++;
        for (size_t j = 0; j < sizeof(bad_len) / sizeof(bad_len[0]); j++) {
            check_splice_rejected(&e, i, false, bad_types[j], bad_len[j], "command type");
        }
    }
    CHECK_EQ_INT(found, 1);
    enc_free(&e);
}

static void decode_rejects_batch_without_commands(void)
{
    struct ledger_cmd c = command_at_bounds(N_KINDS - 1, false);
    struct enc e;
    enc_make(&e, 1000, &c, 1);
    size_t i = find_commands_node(&e, 1);
    static const uint8_t empty = 0x90;
    check_splice_rejected(&e, i, false, &empty, 1, "no commands");
    enc_free(&e);
}

static void decode_rejects_more_than_max_commands(void)
{
    struct ledger_cmd v = command_at_bounds(8, false); /* void: the smallest command */
    size_t len;
    uint8_t *b = batch_with_one_command_too_many(&v, 1000, &len);
    check_rejected(b, len, "4097 commands", LEDGER_BATCH_MAX_CMDS + 1);
    free(b);
}

static void decode_rejects_batch_larger_than_the_callers_array(void)
{
    struct ledger_cmd cmds[N_KINDS];
    commands_at_bounds(cmds, false);
    uint8_t *buf;
    size_t len;
    encode_ok(1000, cmds, N_KINDS, &buf, &len);
    /* The entry after the caller's array is left alone. */
    memset(&decoded[N_KINDS - 1], 0xa5, sizeof(decoded[0]));
    check_rejected_max(buf, len, N_KINDS - 1, "max below count", N_KINDS - 1);
    uint8_t expect[sizeof(decoded[0])];
    memset(expect, 0xa5, sizeof(expect));
    CHECK(memcmp(&decoded[N_KINDS - 1], expect, sizeof(expect)) == 0);
    free(buf);
}

static void decode_rejects_deep_nesting(void)
{
    size_t depth = 100000, len = (depth + 1 + 7) / 8 * 8;
    uint8_t *deep = calloc(1, len);
    REQUIRE(deep != NULL);
    memset(deep, 0x91, depth);
    deep[depth] = 0xc0;
    check_rejected(deep, len, "nested arrays", depth);
    memcpy(deep, "\x93\x01\x00", 3); /* a batch whose commands nest */
    check_rejected(deep, len, "nested commands", depth);

    /* Every field replaced by 1000 nested arrays around a nil. */
    memset(deep, 0x91, 1000);
    deep[1000] = 0xc0;
    struct enc e;
    enc_max_batch(&e);
    for (size_t i = 1; i < e.tree.n; i++) {
        check_splice_rejected(&e, i, false, deep, 1001, "nested field");
    }
    enc_free(&e);
    free(deep);
}

static void decode_rejects_non_zero_padding_and_trailing_bytes(void)
{
    struct ledger_cmd c = command_at_bounds(N_KINDS - 1, false);
    struct enc e;
    enc_make(&e, 1000, &c, 1);
    static const uint8_t junk[8] = {0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0};
    size_t len;
    uint8_t *b = splice(&e, e.content_len, 0, junk, 8, &len);
    check_rejected(b, len, "trailing nils", len);
    free(b);
    if (e.len > e.content_len) {
        uint8_t *p = malloc(e.len);
        REQUIRE(p != NULL);
        memcpy(p, e.buf, e.len);
        p[e.len - 1] = 1;
        check_rejected(p, e.len, "non-zero padding", e.len - 1);
        free(p);
    }
    enc_free(&e);
}

static void decode_rejects_buffer_over_max_bytes(void)
{
    struct ledger_cmd c = command_at_bounds(N_KINDS - 1, false);
    uint8_t *buf;
    size_t len;
    encode_ok(1000, &c, 1, &buf, &len);
    size_t big = LEDGER_BATCH_MAX_BYTES + 8;
    uint8_t *b = calloc(1, big);
    REQUIRE(b != NULL);
    memcpy(b, buf, len);
    int64_t stamp;
    size_t n;
    CHECK_EQ_INT(decode_copy(b, big, MAX_DECODE, &stamp, &n), -LEDGER_ETOOBIG);
    free(b);
    free(buf);
}

/* ---- Applying what does not decode. ---- */

/* A ledger with one account holding a reservation; its state is what must not change. */
static void open_with_reservation(struct tl *t)
{
    tl_open(t, 1700000000000LL);
    struct ledger_limits lim = {.set = LEDGER_LIM_BUDGET, .budget_micros = 1000};
    REQUIRE(tl_run(t, tl_create(t, "acct", "", &lim)).status == LEDGER_OK);
    REQUIRE(tl_run(t, tl_reserve(t, 1, "acct", 100, 0, 60000)).status == LEDGER_OK);
}

/* Apply raw bytes at the next index: -LEDGER_EDECODE, no results, index recorded, and
 * the account unchanged. */
static void check_apply_rejected(struct tl *t, const void *buf, size_t len)
{
    static struct ledger_result results[LEDGER_BATCH_MAX_CMDS];
    struct ledger_account_info before = tl_account(t, "acct");
    size_t n = 99;
    t->index++;
    CHECK_EQ_INT(ledger_apply_batch(t->l, t->index, buf, len, results, &n), -LEDGER_EDECODE);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(ledger_applied_index(t->l), t->index);
    struct ledger_account_info after = tl_account(t, "acct");
    CHECK_EQ_INT(after.spent_micros, before.spent_micros);
    CHECK_EQ_INT(after.held_micros, before.held_micros);
    CHECK_EQ_INT(after.inflight, before.inflight);
    CHECK_EQ_INT(after.remaining_micros, before.remaining_micros);
    CHECK_EQ_INT(after.limits.budget_micros, before.limits.budget_micros);
    /* The index is taken: applying it again is stale. */
    n = 99;
    CHECK_EQ_INT(ledger_apply_batch(t->l, t->index, buf, len, results, &n), -LEDGER_ESTALE);
    TL_CHECK_INVARIANTS(t);
}

static void apply_of_garbage_is_recorded_and_changes_nothing(void)
{
    struct tl t;
    open_with_reservation(&t);
    static const uint8_t garbage[16] = {0xc1, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1,
                                        0xde, 0xad, 0xbe, 0xef, 0,    0,    0,    0};
    check_apply_rejected(&t, garbage, sizeof(garbage));
    /* The next batch applies normally. */
    CHECK_EQ_INT(tl_run(&t, tl_settle(&t, 1, 70, 0)).status, LEDGER_OK);
    CHECK_EQ_INT(tl_account(&t, "acct").spent_micros, 70);
    tl_close(&t);
}

static void apply_of_truncated_batch_applies_none_of_its_commands(void)
{
    struct tl t;
    open_with_reservation(&t);
    struct ledger_cmd cmds[3] = {tl_create(&t, "other", "", NULL), tl_settle(&t, 1, 70, 0),
                                 tl_create(&t, "third", "", NULL)};
    fill_text(cmds[2].actor, LEDGER_ACTOR_MAX, NAME_ALPHABET, 0);
    uint8_t *buf;
    size_t len;
    encode_ok(t.now_ms, cmds, 3, &buf, &len);
    check_apply_rejected(&t, buf, len - 8); /* cut inside the last command */
    struct ledger_account_info info;
    CHECK_EQ_INT(ledger_account_get(t.l, "other", &info), -LEDGER_ENOTFOUND);
    free(buf);
    tl_close(&t);
}

static void apply_of_more_than_max_commands_is_edecode(void)
{
    struct tl t;
    open_with_reservation(&t);
    struct ledger_cmd v = tl_settle(&t, 1, 70, 0);
    size_t len;
    uint8_t *b = batch_with_one_command_too_many(&v, t.now_ms, &len);
    check_apply_rejected(&t, b, len);
    free(b);
    tl_close(&t);
}

/* ---- Encoding rejects. ---- */

static int encode_one(const struct ledger_cmd *c)
{
    void *buf = NULL;
    size_t len = 0;
    int rv = ledger_batch_encode(1000, c, 1, &buf, &len);
    if (rv == 0) {
        free(buf);
    }
    return rv;
}

/* An encode result that rejects: -LEDGER_EINVAL or -LEDGER_ETOOBIG. */
static void check_encode_rv_rejected(int rv, const char *what)
{
    if (rv != -LEDGER_EINVAL && rv != -LEDGER_ETOOBIG) {
        fprintf(stderr, "  %s: encode returned %d\n", what, rv);
        CHECK(rv == -LEDGER_EINVAL || rv == -LEDGER_ETOOBIG);
    }
}

static void check_encode_rejected(const struct ledger_cmd *c, const char *what)
{
    check_encode_rv_rejected(encode_one(c), what);
}

static void encode_rejects_zero_commands(void)
{
    struct ledger_cmd c = command_at_bounds(0, false);
    void *buf = NULL;
    size_t len = 0;
    CHECK_EQ_INT(ledger_batch_encode(1000, &c, 0, &buf, &len), -LEDGER_EINVAL);
}

static void encode_rejects_more_than_max_commands(void)
{
    struct ledger_cmd v = command_at_bounds(8, false);
    for (size_t i = 0; i < MAX_DECODE; i++) {
        many[i] = v;
    }
    void *buf = NULL;
    size_t len = 0;
    check_encode_rv_rejected(ledger_batch_encode(1000, many, MAX_DECODE, &buf, &len), "4097");
}

static void encode_rejects_unterminated_strings(void)
{
    struct ledger_cmd c = command_at_bounds(0, false);
    memset(&c.u.create, 'a', 200); /* name and the start of parent, no NUL */
    check_encode_rejected(&c, "create 200 'a'");

    c = command_at_bounds(0, false);
    memset(c.u.create.parent, 'a', sizeof(c.u.create.parent));
    check_encode_rejected(&c, "create parent");

    c = command_at_bounds(1, false);
    memset(c.u.update.parent, 'a', sizeof(c.u.update.parent));
    check_encode_rejected(&c, "update parent");

    c = command_at_bounds(2, false);
    memset(c.u.key.account, 'a', sizeof(c.u.key.account));
    check_encode_rejected(&c, "key account");

    c = command_at_bounds(4, false);
    memset(c.u.model_limit.model, 'a', sizeof(c.u.model_limit.model));
    check_encode_rejected(&c, "model");

    c = command_at_bounds(6, false);
    memset(c.u.reserve.account, 'a', sizeof(c.u.reserve.account));
    check_encode_rejected(&c, "reserve account");

    c = command_at_bounds(6, false);
    memset(c.u.reserve.model, 'a', sizeof(c.u.reserve.model));
    check_encode_rejected(&c, "reserve model");

    for (size_t k = 0; k < N_KINDS; k++) {
        c = command_at_bounds(k, false);
        memset(c.actor, 'a', sizeof(c.actor));
        check_encode_rejected(&c, "actor");
    }
}

static void encode_rejects_metadata_over_max(void)
{
    struct ledger_cmd c = command_at_bounds(5, true);
    c.u.reserve.metadata_len = LEDGER_METADATA_MAX + 1;
    check_encode_rejected(&c, "metadata 257");
    c.u.reserve.metadata_len = UINT16_MAX;
    check_encode_rejected(&c, "metadata 65535");
}

static void encode_rejects_unknown_command_type(void)
{
    struct ledger_cmd c = command_at_bounds(8, false);
    c.type = 0;
    CHECK_EQ_INT(encode_one(&c), -LEDGER_EINVAL);
    c.type = LEDGER_CMD_TYPE_MAX;
    CHECK_EQ_INT(encode_one(&c), -LEDGER_EINVAL);
    c.type = 255;
    CHECK_EQ_INT(encode_one(&c), -LEDGER_EINVAL);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(every_command_type_round_trips_at_upper_bounds);
    TEST(every_command_type_round_trips_at_lower_bounds);
    TEST(each_command_round_trips_alone);
    TEST(batch_of_max_commands_round_trips);
    TEST(stamps_outside_the_time_range_round_trip);
    TEST(encoded_length_is_a_multiple_of_8);
    TEST(decode_rejects_empty_buffer);
    TEST(decode_rejects_every_truncation_of_a_valid_batch);
    TEST(decode_rejects_truncated_content_padded_to_8);
    TEST(decode_rejects_random_garbage);
    TEST(decode_survives_random_mutations_of_a_valid_batch);
    TEST(decode_rejects_wrong_top_level_types);
    TEST(decode_rejects_wrong_type_in_every_field);
    TEST(decode_rejects_huge_counts_in_every_header);
    TEST(decode_rejects_every_string_one_byte_over_its_bound);
    TEST(decode_rejects_fixed_size_fields_one_byte_short);
    TEST(decode_rejects_commands_with_a_field_missing_or_extra);
    TEST(decode_rejects_unknown_command_type);
    TEST(decode_rejects_batch_without_commands);
    TEST(decode_rejects_more_than_max_commands);
    TEST(decode_rejects_batch_larger_than_the_callers_array);
    TEST(decode_rejects_deep_nesting);
    TEST(decode_rejects_non_zero_padding_and_trailing_bytes);
    TEST(decode_rejects_buffer_over_max_bytes);
    TEST(apply_of_garbage_is_recorded_and_changes_nothing);
    TEST(apply_of_truncated_batch_applies_none_of_its_commands);
    TEST(apply_of_more_than_max_commands_is_edecode);
    TEST(encode_rejects_zero_commands);
    TEST(encode_rejects_more_than_max_commands);
    TEST(encode_rejects_unterminated_strings);
    TEST(encode_rejects_metadata_over_max);
    TEST(encode_rejects_unknown_command_type);
    TEST_MAIN_END;
}
