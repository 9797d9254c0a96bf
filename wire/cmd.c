/*
 * cmd.c: commands and batches, on the wire and in the Raft log.
 *
 * A batch is the msgpack array [format, stamp_ms, [command, ...]] followed by 0..7 zero
 * bytes so its length is a multiple of 8 (libraft's unit). A command is a flat array:
 * [type, request_id (bin 16), actor (str), scope (str), fields of its type...], fields
 * positional so a decoder needs no map lookups. Encoding uses msgpack-c's packer;
 * decoding uses the bounded reader of mp.h, which never allocates, so a hostile batch
 * cannot make the ledger allocate more than its fixed command array.
 *
 * The one idea: nothing here names a command's fields. Pack, read, the field counts, the
 * fingerprint, equality and the shape check are each one macro per field kind, expanded
 * over the command table of types.h, so a field added there is handled everywhere.
 * Only ledger_cmd_check()'s argument ranges are written per command, in the order the
 * ledger has always judged them.
 */
#include "wire/wire.h"
#include "wire/wire_internal.h"

#include <assert.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_FORMAT 2 /* 2: every command carries its scope */

/* ---- Names, scopes, errors. ---- */

bool ledger_name_valid(const char *name, size_t max)
{
    size_t n = strnlen(name, max + 1);
    if (n == 0 || n > max) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '/' || c == '@' || c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

bool ledger_scope_valid(const char *scope)
{
    size_t n = strnlen(scope, LEDGER_SCOPE_MAX + 1);
    if (n == 0) {
        return true;
    }
    if (n > LEDGER_SCOPE_MAX) {
        return false;
    }
    const char *p = scope;
    /* Bounded by the count of roots: each turn takes one or refuses. */
    for (unsigned roots = 1; roots <= LEDGER_SCOPE_ROOTS_MAX; roots++) {
        size_t len = strcspn(p, ",");
        char name[LEDGER_NAME_MAX + 1];
        if (len == 0 || len > LEDGER_NAME_MAX) {
            return false;
        }
        memcpy(name, p, len);
        name[len] = '\0';
        if (!ledger_name_valid(name, LEDGER_NAME_MAX)) {
            return false;
        }
        if (p[len] == '\0') {
            return true;
        }
        p += len + 1;
    }
    return false;
}

bool ledger_scope_has(const char *scope, const char *root)
{
    size_t n = strlen(root);
    if (scope[0] == '\0') {
        return true;
    }
    for (const char *p = scope; *p != '\0';) {
        size_t len = strcspn(p, ",");
        if (len == n && memcmp(p, root, n) == 0) {
            return true;
        }
        p += len + (p[len] == ',');
    }
    return false;
}

static const char *error_text(int code, bool message)
{
    static const char *const names[LEDGER_ECODE_MAX][2] = {
        [0] = {"ok", "ok"},
#define ERROR_TEXT(code, number, name, message) [number] = {name, message},
        LEDGER_ERRORS(ERROR_TEXT)
#undef ERROR_TEXT
    };
    code = code < 0 ? -code : code;
    if (code >= LEDGER_ECODE_MAX || names[code][0] == NULL) {
        return message ? "unknown error" : "unknown";
    }
    return names[code][message];
}

const char *ledger_strerror(int code)
{
    return error_text(code, true);
}

const char *ledger_error_name(int code)
{
    return error_text(code, false);
}

const char *ledger_deny_reason_name(int reason)
{
    static const char *names[LEDGER_DENY_MAX] = {
        [LEDGER_DENY_NONE] = "none",
        [LEDGER_DENY_UNKNOWN_KEY] = "unknown_key",
        [LEDGER_DENY_KEY_REVOKED] = "key_revoked",
        [LEDGER_DENY_BLOCKED] = "blocked",
        [LEDGER_DENY_EXPIRED] = "expired",
        [LEDGER_DENY_PARALLEL] = "parallel",
        [LEDGER_DENY_BUDGET] = "budget",
        [LEDGER_DENY_RPM] = "rpm",
        [LEDGER_DENY_TPM] = "tpm",
        [LEDGER_DENY_MODEL_BUDGET] = "model_budget",
        [LEDGER_DENY_MODEL_RPM] = "model_rpm",
        [LEDGER_DENY_MODEL_TPM] = "model_tpm",
    };
    if (reason < 0 || reason >= LEDGER_DENY_MAX) {
        return "unknown";
    }
    return names[reason];
}

/* ---- The table's functions, one macro per field kind and operation. ---- */

static void pack_model_limits(msgpack_packer *pk, const struct ledger_model_limits *l);
static bool read_model_limits(struct mp_reader *r, struct ledger_model_limits *l);

/* Fields of one list, counted at compile time. */
#define FIELD_COUNT(kind, name, bound) +1
#define LIMITS_FIELDS (0 LEDGER_LIMITS_FIELDS(FIELD_COUNT))
#define MODEL_LIMITS_FIELDS (0 LEDGER_MODEL_LIMITS_FIELDS(FIELD_COUNT))

/* Pack field `name` of the struct `v` points to. */
#define PACK_FIELD(kind, name, bound) PACK_##kind(&v->name, bound);
#define PACK_u8(p, bound) msgpack_pack_uint8(pk, *(p))
#define PACK_u32(p, bound) msgpack_pack_uint32(pk, *(p))
#define PACK_u64(p, bound) msgpack_pack_uint64(pk, *(p))
#define PACK_i64(p, bound) msgpack_pack_int64(pk, *(p))
#define PACK_str(p, bound) wire__pack_str(pk, *(p), bound)
#define PACK_key(p, bound) wire__pack_bin(pk, *(p), bound)
#define PACK_blob(p, bound) wire__pack_bin(pk, *(p), *(p##_len))
#define PACK_limits(p, bound) ledger_pack_limits(pk, p)
#define PACK_mlimits(p, bound) pack_model_limits(pk, p)
#define PACK_payer_key PACK_key
#define PACK_payer_account PACK_str

/* Read field `name` into the struct `v` points to; a failure sticks in the reader. */
#define READ_FIELD(kind, name, bound) READ_##kind(&v->name, bound);
#define READ_u8(p, bound) mp_read_u8(r, p)
#define READ_u32(p, bound) mp_read_u32(r, p)
#define READ_u64(p, bound) mp_read_u64(r, p)
#define READ_i64(p, bound) mp_read_i64(r, p)
#define READ_str(p, bound) mp_read_text(r, *(p), bound)
#define READ_key(p, bound) mp_read_fixed(r, *(p), bound)
#define READ_blob(p, bound) read_blob(r, *(p), p##_len, bound)
#define READ_limits(p, bound) ledger_read_limits(r, p)
#define READ_mlimits(p, bound) read_model_limits(r, p)
#define READ_payer_key READ_key
#define READ_payer_account READ_str

/* Whether field `name` can be encoded: strings and blobs within their bounds. */
#define SHAPE_FIELD(kind, name, bound) &&SHAPE_##kind(&v->name, bound)
#define SHAPE_u8(p, bound) true
#define SHAPE_u32(p, bound) true
#define SHAPE_u64(p, bound) true
#define SHAPE_i64(p, bound) true
#define SHAPE_str(p, bound) wire__str_fits(*(p), bound)
#define SHAPE_key(p, bound) true
#define SHAPE_blob(p, bound) (*(p##_len) <= (bound))
#define SHAPE_limits(p, bound) true
#define SHAPE_mlimits(p, bound) true
#define SHAPE_payer_key SHAPE_key
#define SHAPE_payer_account SHAPE_str
#define SHAPE_COMMON(kind, name, bound) &&SHAPE_##kind(&common->name, bound)

/* Whether field `name` is equal in the structs `a` and `b` point to. */
#define EQUAL_FIELD(kind, name, bound) &&EQUAL_##kind(&pa->name, &pb->name, bound)
#define EQUAL_u8(p, q, bound) (*(p) == *(q))
#define EQUAL_u32(p, q, bound) (*(p) == *(q))
#define EQUAL_u64(p, q, bound) (*(p) == *(q))
#define EQUAL_i64(p, q, bound) (*(p) == *(q))
#define EQUAL_str(p, q, bound) (strcmp(*(p), *(q)) == 0)
#define EQUAL_key(p, q, bound) (memcmp(*(p), *(q), bound) == 0)
#define EQUAL_blob(p, q, bound)                                                              \
    (*(p##_len) == *(q##_len) && memcmp(*(p), *(q), *(p##_len)) == 0)
#define EQUAL_limits(p, q, bound) limits_equal(p, q)
#define EQUAL_mlimits(p, q, bound) model_limits_equal(p, q)
#define EQUAL_payer_key(p, q, bound) (pa->by_account || EQUAL_key(p, q, bound))
#define EQUAL_payer_account(p, q, bound) (!pa->by_account || EQUAL_str(p, q, bound))

static bool read_blob(struct mp_reader *r, uint8_t *out, uint16_t *len, size_t max)
{
    const uint8_t *b;
    size_t n;
    if (!mp_read_bin(r, max, &b, &n)) {
        return false;
    }
    assert(n <= max);
    memcpy(out, b, n);
    *len = (uint16_t)n;
    return true;
}

void ledger_pack_limits(msgpack_packer *pk, const struct ledger_limits *v)
{
    msgpack_pack_array(pk, LIMITS_FIELDS);
    LEDGER_LIMITS_FIELDS(PACK_FIELD)
}

static void pack_model_limits(msgpack_packer *pk, const struct ledger_model_limits *v)
{
    msgpack_pack_array(pk, MODEL_LIMITS_FIELDS);
    LEDGER_MODEL_LIMITS_FIELDS(PACK_FIELD)
}

static bool limits_equal(const struct ledger_limits *pa, const struct ledger_limits *pb)
{
    return true LEDGER_LIMITS_FIELDS(EQUAL_FIELD);
}

static bool model_limits_equal(const struct ledger_model_limits *pa,
                               const struct ledger_model_limits *pb)
{
    return true LEDGER_MODEL_LIMITS_FIELDS(EQUAL_FIELD);
}

/* Fields every command has after its actor, and after those, for each command type. */
#define COMMON_FIELDS (0 LEDGER_CMD_COMMON(FIELD_COUNT))

static const uint8_t fields_of[LEDGER_CMD_TYPE_MAX] = {
#define CMD_FIELD_COUNT(type, number, member) [number] = 0 LEDGER_ARGS_##member(FIELD_COUNT),
    LEDGER_CMDS(CMD_FIELD_COUNT)
#undef CMD_FIELD_COUNT
};

static bool type_known(uint8_t type)
{
    return type >= LEDGER_CMD_ACCOUNT_CREATE && type < LEDGER_CMD_TYPE_MAX;
}

bool ledger_cmd_encodable(const struct ledger_cmd *c)
{
    if (!type_known(c->type) || !wire__str_fits(c->actor, LEDGER_ACTOR_MAX)) {
        return false;
    }
    const struct ledger_cmd *common = c;
    if (!(true LEDGER_CMD_COMMON(SHAPE_COMMON))) {
        return false;
    }
    switch (c->type) {
#define CMD_SHAPE(type, number, member)                                                      \
    case number: {                                                                           \
        __attribute__((unused)) const typeof(c->u.member) *v = &c->u.member;                 \
        return true LEDGER_ARGS_##member(SHAPE_FIELD);                                       \
    }
        LEDGER_CMDS(CMD_SHAPE)
#undef CMD_SHAPE
    }
    return false;
}

bool ledger_cmd_equal(const struct ledger_cmd *a, const struct ledger_cmd *b)
{
    if (a->type != b->type || memcmp(a->request_id, b->request_id, LEDGER_REQUEST_ID_SIZE) ||
        strcmp(a->actor, b->actor) != 0) {
        return false;
    }
    {
        const struct ledger_cmd *pa = a, *pb = b;
        if (!(true LEDGER_CMD_COMMON(EQUAL_FIELD))) {
            return false;
        }
    }
    switch (a->type) {
#define CMD_EQUAL(type, number, member)                                                      \
    case number: {                                                                           \
        __attribute__((unused)) const typeof(a->u.member) *pa = &a->u.member;                \
        __attribute__((unused)) const typeof(b->u.member) *pb = &b->u.member;                \
        return true LEDGER_ARGS_##member(EQUAL_FIELD);                                      \
    }
        LEDGER_CMDS(CMD_EQUAL)
#undef CMD_EQUAL
    }
    return true; /* the same unknown type: nothing else to compare */
}

void ledger_pack_cmd(msgpack_packer *pk, const struct ledger_cmd *c)
{
    /* Paired with the assertion in ledger_read_cmd(): what crosses is always encodable. */
    assert(ledger_cmd_encodable(c));
    msgpack_pack_array(pk, 3 + COMMON_FIELDS + fields_of[c->type]);
    msgpack_pack_uint8(pk, c->type);
    wire__pack_bin(pk, c->request_id, LEDGER_REQUEST_ID_SIZE);
    wire__pack_str(pk, c->actor, LEDGER_ACTOR_MAX);
    {
        const struct ledger_cmd *v = c;
        LEDGER_CMD_COMMON(PACK_FIELD)
    }
    switch (c->type) {
#define CMD_PACK(type, number, member)                                                       \
    case number: {                                                                           \
        __attribute__((unused)) const typeof(c->u.member) *v = &c->u.member;                 \
        LEDGER_ARGS_##member(PACK_FIELD) break;                                              \
    }
        LEDGER_CMDS(CMD_PACK)
#undef CMD_PACK
    }
}

/* msgpack-c's packer ignores its writer's failures; the protocol's growable buffer
 * records them (rpc_buf.failed), so both codecs write through it. */
static int buf_pack_write(void *data, const char *p, size_t n)
{
    return rpc_buf_append(data, p, n);
}

int ledger_batch_encode(int64_t stamp_ms, const struct ledger_cmd *cmds, size_t n, void **buf,
                        size_t *len)
{
    if (n == 0 || cmds == NULL) {
        return -LEDGER_EINVAL;
    }
    if (n > LEDGER_BATCH_MAX_CMDS) {
        return -LEDGER_ETOOBIG;
    }
    for (size_t i = 0; i < n; i++) {
        if (!ledger_cmd_encodable(&cmds[i])) {
            return -LEDGER_EINVAL;
        }
    }
    struct rpc_buf g = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &g, buf_pack_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint8(&pk, BATCH_FORMAT);
    msgpack_pack_int64(&pk, stamp_ms);
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++) {
        ledger_pack_cmd(&pk, &cmds[i]);
    }
    static const char zeros[8] = {0};
    rpc_buf_append(&g, zeros, (8 - g.len % 8) % 8);
    if (g.failed) {
        free(g.data);
        return -LEDGER_ENOMEM;
    }
    if (g.len > LEDGER_BATCH_MAX_BYTES) {
        free(g.data);
        return -LEDGER_ETOOBIG;
    }
    *buf = g.data;
    *len = g.len;
    return 0;
}

int ledger_cmd_encode(const struct ledger_cmd *c, void **buf, size_t *len)
{
    if (!ledger_cmd_encodable(c)) {
        return -LEDGER_EINVAL;
    }
    struct rpc_buf g = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &g, buf_pack_write);
    ledger_pack_cmd(&pk, c);
    if (g.failed) {
        free(g.data);
        return -LEDGER_ENOMEM;
    }
    *buf = g.data;
    *len = g.len;
    return 0;
}

/* ---- Checking one command. ---- */

static bool in_range(int64_t v, int64_t lo, int64_t hi)
{
    return v >= lo && v <= hi;
}

static bool rate_valid(uint64_t rate, uint64_t burst)
{
    return rate >= 1 && rate <= LEDGER_RATE_MAX && burst <= LEDGER_RATE_MAX;
}

/* The first failed check sets *why and returns its code. */
#define REFUSE_IF(cond, code, text)                                                          \
    do {                                                                                     \
        if (cond) {                                                                          \
            *why = (text);                                                                   \
            return -(code);                                                                  \
        }                                                                                    \
    } while (0)

/* An account's limits named by `bits` are in range. */
static int limits_check(const struct ledger_limits *lim, uint32_t bits, const char **why)
{
    REFUSE_IF(bits & ~(uint32_t)LEDGER_LIM_ALL, LEDGER_EINVAL, "unknown limit bits");
    REFUSE_IF((bits & LEDGER_LIM_BUDGET) && !in_range(lim->budget_micros, 0, LEDGER_AMOUNT_MAX),
              LEDGER_EINVAL, "budget out of range");
    REFUSE_IF((bits & LEDGER_LIM_SOFT_BUDGET) &&
                  !in_range(lim->soft_budget_micros, 0, LEDGER_AMOUNT_MAX),
              LEDGER_EINVAL, "soft budget out of range");
    REFUSE_IF((bits & LEDGER_LIM_PERIOD) && lim->period_kind >= LEDGER_PERIOD_MAX, LEDGER_EINVAL,
              "unknown period kind");
    REFUSE_IF((bits & LEDGER_LIM_PERIOD) && lim->period_kind == LEDGER_PERIOD_FIXED &&
                  !in_range(lim->period_ms, LEDGER_PERIOD_MIN_MS, LEDGER_PERIOD_MAX_MS),
              LEDGER_EINVAL, "period length out of range");
    REFUSE_IF((bits & LEDGER_LIM_RPM) && !rate_valid(lim->rpm, lim->rpm_burst), LEDGER_EINVAL,
              "rpm or its burst out of range");
    REFUSE_IF((bits & LEDGER_LIM_TPM) && !rate_valid(lim->tpm, lim->tpm_burst), LEDGER_EINVAL,
              "tpm or its burst out of range");
    REFUSE_IF((bits & LEDGER_LIM_PARALLEL) && lim->max_parallel > LEDGER_PARALLEL_MAX,
              LEDGER_EINVAL, "max_parallel out of range");
    REFUSE_IF((bits & LEDGER_LIM_EXPIRES) && !in_range(lim->expires_at_ms, 0, LEDGER_TIME_MAX_MS),
              LEDGER_EINVAL, "expiry time out of range");
    REFUSE_IF((bits & LEDGER_LIM_BLOCKED) && lim->blocked > 1, LEDGER_EINVAL,
              "blocked is not 0 or 1");
    REFUSE_IF((bits & LEDGER_LIM_EXPIRY_POLICY) && lim->expiry_policy > LEDGER_EXPIRY_RELEASE,
              LEDGER_EINVAL, "unknown expiry policy");
    return 0;
}

static int model_limits_check(const struct ledger_model_limits *m, const char **why)
{
    const uint32_t allowed = LEDGER_LIM_BUDGET | LEDGER_LIM_RPM | LEDGER_LIM_TPM;
    REFUSE_IF(m->set & ~allowed, LEDGER_EINVAL, "a model limit may set only budget, rpm, tpm");
    REFUSE_IF((m->set & LEDGER_LIM_BUDGET) && !in_range(m->budget_micros, 0, LEDGER_AMOUNT_MAX),
              LEDGER_EINVAL, "model budget out of range");
    REFUSE_IF((m->set & LEDGER_LIM_RPM) && !rate_valid(m->rpm, m->rpm_burst), LEDGER_EINVAL,
              "model rpm or its burst out of range");
    REFUSE_IF((m->set & LEDGER_LIM_TPM) && !rate_valid(m->tpm, m->tpm_burst), LEDGER_EINVAL,
              "model tpm or its burst out of range");
    return 0;
}

/* Names: `optional` accepts "" (a root's parent, no model). */
static bool name_ok(const char *name, size_t max, bool optional)
{
    return (optional && name[0] == '\0') || ledger_name_valid(name, max);
}

static int args_check(const struct ledger_cmd *c, const char **why)
{
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        REFUSE_IF(!name_ok(c->u.create.name, LEDGER_NAME_MAX, false) ||
                      !name_ok(c->u.create.parent, LEDGER_NAME_MAX, true),
                  LEDGER_ENAME, "invalid account or parent name");
        return limits_check(&c->u.create.limits, c->u.create.limits.set, why);
    case LEDGER_CMD_ACCOUNT_UPDATE:
        /* The new parent's name is checked by the ledger after the account is found. */
        REFUSE_IF(!name_ok(c->u.update.name, LEDGER_NAME_MAX, false), LEDGER_ENAME,
                  "invalid account name");
        REFUSE_IF(c->u.update.clear & ~(uint32_t)LEDGER_LIM_ALL, LEDGER_EINVAL,
                  "unknown limit bits to clear");
        REFUSE_IF(c->u.update.set_parent > 1, LEDGER_EINVAL, "set_parent is not 0 or 1");
        return limits_check(&c->u.update.limits, c->u.update.limits.set, why);
    case LEDGER_CMD_KEY_ADD:
        REFUSE_IF(!name_ok(c->u.key.account, LEDGER_NAME_MAX, false), LEDGER_ENAME,
                  "invalid account name");
        return 0;
    case LEDGER_CMD_MODEL_LIMIT_SET:
        REFUSE_IF(!name_ok(c->u.model_limit.account, LEDGER_NAME_MAX, false) ||
                      !name_ok(c->u.model_limit.model, LEDGER_MODEL_MAX, false),
                  LEDGER_ENAME, "invalid account or model name");
        return model_limits_check(&c->u.model_limit.limits, why);
    case LEDGER_CMD_RESERVE:
        REFUSE_IF(!in_range(c->u.reserve.estimate_micros, 0, LEDGER_AMOUNT_MAX), LEDGER_EINVAL,
                  "estimate out of range");
        REFUSE_IF(c->u.reserve.estimate_tokens > LEDGER_TOKENS_MAX, LEDGER_EINVAL,
                  "estimated tokens out of range");
        REFUSE_IF(!in_range(c->u.reserve.ttl_ms, 1, LEDGER_TTL_MAX_MS), LEDGER_EINVAL,
                  "ttl out of range");
        REFUSE_IF(c->u.reserve.by_account > 1, LEDGER_EINVAL, "by_account is not 0 or 1");
        REFUSE_IF(!name_ok(c->u.reserve.model, LEDGER_MODEL_MAX, true), LEDGER_ENAME,
                  "invalid model name");
        REFUSE_IF(c->u.reserve.by_account &&
                      !name_ok(c->u.reserve.account, LEDGER_NAME_MAX, false),
                  LEDGER_ENAME, "invalid account name");
        return 0;
    case LEDGER_CMD_SETTLE:
        REFUSE_IF(!in_range(c->u.settle.actual_micros, 0, LEDGER_AMOUNT_MAX), LEDGER_EINVAL,
                  "actual cost out of range");
        REFUSE_IF(c->u.settle.actual_tokens > LEDGER_TOKENS_MAX, LEDGER_EINVAL,
                  "actual tokens out of range");
        return 0;
    case LEDGER_CMD_EXTEND:
        REFUSE_IF(!in_range(c->u.extend.ttl_ms, 1, LEDGER_TTL_MAX_MS), LEDGER_EINVAL,
                  "ttl out of range");
        return 0;
    case LEDGER_CMD_CONFIG_SET:
        REFUSE_IF(!in_range(c->u.config.retention_ms, 1, LEDGER_RETENTION_MAX_MS), LEDGER_EINVAL,
                  "retention out of range");
        return 0;
    default: /* KEY_REVOKE names only a key hash; VOID only its request id */
        return 0;
    }
}

int ledger_cmd_check(const struct ledger_cmd *c, const char **why)
{
    const char *unused;
    why = why != NULL ? why : &unused;
    *why = "";
    REFUSE_IF(!ledger_cmd_encodable(c), LEDGER_EDECODE,
              "unknown command type, or a string or metadata over its bound");
    REFUSE_IF(!ledger_scope_valid(c->scope), LEDGER_EINVAL,
              "the scope is not 1-16 valid account names joined by ','");
    return args_check(c, why);
}

/* ---- Decoding. ---- */

bool ledger_read_limits(struct mp_reader *r, struct ledger_limits *v)
{
    uint32_t n;
    if (!mp_read_array(r, LIMITS_FIELDS, &n) || n != LIMITS_FIELDS) {
        r->ok = false;
        return false;
    }
    LEDGER_LIMITS_FIELDS(READ_FIELD)
    return r->ok;
}

static bool read_model_limits(struct mp_reader *r, struct ledger_model_limits *v)
{
    uint32_t n;
    if (!mp_read_array(r, MODEL_LIMITS_FIELDS, &n) || n != MODEL_LIMITS_FIELDS) {
        r->ok = false;
        return false;
    }
    LEDGER_MODEL_LIMITS_FIELDS(READ_FIELD)
    return r->ok;
}

static bool read_fields(struct mp_reader *r, struct ledger_cmd *c)
{
    switch (c->type) {
#define CMD_READ(type, number, member)                                                       \
    case number: {                                                                           \
        __attribute__((unused)) typeof(c->u.member) *v = &c->u.member;                       \
        LEDGER_ARGS_##member(READ_FIELD) return r->ok;                                       \
    }
        LEDGER_CMDS(CMD_READ)
#undef CMD_READ
    }
    return false;
}

bool ledger_read_cmd(struct mp_reader *r, struct ledger_cmd *c)
{
    uint32_t n;
    memset(c, 0, sizeof(*c));
    if (!mp_read_array(r, 32, &n) || n < 3 || !mp_read_u8(r, &c->type)) {
        return false;
    }
    if (!type_known(c->type) || n != 3u + COMMON_FIELDS + fields_of[c->type]) {
        return false;
    }
    mp_read_fixed(r, c->request_id, LEDGER_REQUEST_ID_SIZE);
    mp_read_text(r, c->actor, LEDGER_ACTOR_MAX);
    {
        struct ledger_cmd *v = c;
        LEDGER_CMD_COMMON(READ_FIELD)
    }
    if (!read_fields(r, c) || !r->ok) {
        return false;
    }
    /* Paired with ledger_pack_cmd()'s: the bounded reader yields only what packs. */
    assert(ledger_cmd_encodable(c));
    return true;
}

int ledger_batch_decode(const void *buf, size_t len, int64_t *stamp_ms, struct ledger_cmd *cmds,
                        size_t max, size_t *n)
{
    struct mp_reader r;
    uint32_t top, count;
    uint8_t format;
    if (buf == NULL || len == 0 || len % 8 != 0) {
        return -LEDGER_EDECODE;
    }
    if (len > LEDGER_BATCH_MAX_BYTES) {
        return -LEDGER_ETOOBIG;
    }
    mp_reader_init(&r, buf, len);
    if (!mp_read_array(&r, 3, &top) || top != 3 || !mp_read_u8(&r, &format) ||
        format != BATCH_FORMAT || !mp_read_i64(&r, stamp_ms)) {
        return -LEDGER_EDECODE;
    }
    if (!mp_read_array(&r, UINT32_MAX, &count) || count == 0) {
        return -LEDGER_EDECODE;
    }
    if (count > LEDGER_BATCH_MAX_CMDS || count > max) {
        return -LEDGER_ETOOBIG;
    }
    for (uint32_t i = 0; i < count; i++) {
        if (!ledger_read_cmd(&r, &cmds[i])) {
            return -LEDGER_EDECODE;
        }
    }
    /* Only the zero padding may follow. */
    if (mp_left(&r) >= 8) {
        return -LEDGER_EDECODE;
    }
    for (const uint8_t *p = r.p; p < r.end; p++) {
        if (*p != 0) {
            return -LEDGER_EDECODE;
        }
    }
    *n = count;
    return 0;
}

/* ---- Fingerprints. ---- */

/* Where the fingerprint's bytes go: the caller's hash. */
struct fp_sink {
    void (*feed)(void *ctx, const void *p, size_t n);
    void *ctx;
};

static void fp_bytes(const struct fp_sink *f, const void *p, size_t n)
{
    f->feed(f->ctx, p, n);
}

static void fp_u64(const struct fp_sink *f, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++) {
        b[i] = (uint8_t)(v >> (8 * i));
    }
    fp_bytes(f, b, 8);
}

/* Length first, so that no two different argument lists feed the same bytes. */
static void fp_str(const struct fp_sink *f, const char *s)
{
    size_t n = strlen(s);
    fp_u64(f, n);
    fp_bytes(f, s, n);
}

/* Feed field `name` of the struct `v` points to, in wire order. */
#define FP_FIELD(kind, name, bound) FP_##kind(&v->name, bound);
#define FP_u8(p, bound) fp_u64(f, *(p))
#define FP_u32(p, bound) fp_u64(f, *(p))
#define FP_u64(p, bound) fp_u64(f, *(p))
#define FP_i64(p, bound) fp_u64(f, (uint64_t) * (p))
#define FP_str(p, bound) fp_str(f, *(p))
#define FP_key(p, bound) fp_bytes(f, *(p), bound)
#define FP_blob(p, bound) (fp_u64(f, *(p##_len)), fp_bytes(f, *(p), *(p##_len)))
#define FP_limits(p, bound) fp_limits(f, p)
#define FP_mlimits(p, bound) fp_model_limits(f, p)
#define FP_payer_key(p, bound) (v->by_account ? (void)0 : FP_key(p, bound))
#define FP_payer_account(p, bound) (v->by_account ? FP_str(p, bound) : (void)0)

static void fp_limits(const struct fp_sink *f, const struct ledger_limits *v)
{
    LEDGER_LIMITS_FIELDS(FP_FIELD)
}

static void fp_model_limits(const struct fp_sink *f, const struct ledger_model_limits *v)
{
    LEDGER_MODEL_LIMITS_FIELDS(FP_FIELD)
}

void ledger_cmd_fingerprint_feed(const struct ledger_cmd *c,
                                 void (*feed)(void *ctx, const void *p, size_t n), void *ctx)
{
    const struct fp_sink sink = {feed, ctx}, *f = &sink;
    fp_u64(f, c->type);
    fp_bytes(f, c->request_id, LEDGER_REQUEST_ID_SIZE);
    switch (c->type) {
#define CMD_FP(type, number, member)                                                         \
    case number: {                                                                           \
        __attribute__((unused)) const typeof(c->u.member) *v = &c->u.member;                 \
        LEDGER_ARGS_##member(FP_FIELD) break;                                                \
    }
        LEDGER_CMDS(CMD_FP)
#undef CMD_FP
    }
}
