/*
 * cmd.c: commands and batches, on the wire and in the Raft log.
 *
 * A batch is the msgpack array [format, stamp_ms, [command, ...]] followed by 0..7 zero
 * bytes so its length is a multiple of 8 (libraft's unit). A command is a flat array:
 * [type, request_id (bin 16), actor (str), fields of its type...], fields positional so
 * a decoder needs no map lookups. Encoding uses msgpack-c's packer; decoding uses the
 * bounded reader of mp.h, which never allocates, so a hostile batch cannot make the
 * ledger allocate more than its fixed command array.
 */
#include "wire/wire.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_FORMAT 1
#define LIMITS_FIELDS 13
#define MODEL_LIMITS_FIELDS 6

/* ---- Names, errors. ---- */

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

const char *ledger_strerror(int code)
{
    static const char *names[LEDGER_ECODE_MAX] = {
        [0] = "ok",
        [LEDGER_EINVAL] = "invalid argument",
        [LEDGER_ENAME] = "invalid name",
        [LEDGER_ENOTFOUND] = "not found",
        [LEDGER_EEXIST] = "already exists",
        [LEDGER_ECONFLICT] = "request id reused with different arguments",
        [LEDGER_ERESOLVED] = "reservation already resolved",
        [LEDGER_EDEPTH] = "account chain too deep",
        [LEDGER_ECYCLE] = "parent would make a cycle",
        [LEDGER_EOVERFLOW] = "counter overflow",
        [LEDGER_EDECODE] = "malformed command or batch",
        [LEDGER_ETOOBIG] = "too big",
        [LEDGER_ENOMEM] = "out of memory",
        [LEDGER_EIO] = "storage error",
        [LEDGER_ECORRUPT] = "corrupt data",
        [LEDGER_ESTALE] = "index already applied",
    };
    if (code < 0) {
        code = -code;
    }
    if (code >= LEDGER_ECODE_MAX || names[code] == NULL) {
        return "unknown error";
    }
    return names[code];
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

/* ---- Encoding. ---- */

/* Strings in a command are NUL-terminated within their arrays. */
static bool str_ok(const char *s, size_t max)
{
    return strnlen(s, max + 1) <= max;
}

bool ledger_cmd_encodable(const struct ledger_cmd *c)
{
    if (c->type < LEDGER_CMD_ACCOUNT_CREATE || c->type >= LEDGER_CMD_TYPE_MAX ||
        !str_ok(c->actor, LEDGER_ACTOR_MAX)) {
        return false;
    }
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        return str_ok(c->u.create.name, LEDGER_NAME_MAX) &&
               str_ok(c->u.create.parent, LEDGER_NAME_MAX);
    case LEDGER_CMD_ACCOUNT_UPDATE:
        return str_ok(c->u.update.name, LEDGER_NAME_MAX) &&
               str_ok(c->u.update.parent, LEDGER_NAME_MAX);
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        return str_ok(c->u.key.account, LEDGER_NAME_MAX);
    case LEDGER_CMD_MODEL_LIMIT_SET:
        return str_ok(c->u.model_limit.account, LEDGER_NAME_MAX) &&
               str_ok(c->u.model_limit.model, LEDGER_MODEL_MAX);
    case LEDGER_CMD_RESERVE:
        return str_ok(c->u.reserve.account, LEDGER_NAME_MAX) &&
               str_ok(c->u.reserve.model, LEDGER_MODEL_MAX) &&
               c->u.reserve.metadata_len <= LEDGER_METADATA_MAX;
    default:
        return true;
    }
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_bin(msgpack_packer *pk, const void *b, size_t n)
{
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, b, n);
}

void ledger_pack_limits(msgpack_packer *pk, const struct ledger_limits *l)
{
    msgpack_pack_array(pk, LIMITS_FIELDS);
    msgpack_pack_uint32(pk, l->set);
    msgpack_pack_uint8(pk, l->period_kind);
    msgpack_pack_uint8(pk, l->blocked);
    msgpack_pack_uint8(pk, l->expiry_policy);
    msgpack_pack_int64(pk, l->budget_micros);
    msgpack_pack_int64(pk, l->soft_budget_micros);
    msgpack_pack_int64(pk, l->period_ms);
    msgpack_pack_uint64(pk, l->rpm);
    msgpack_pack_uint64(pk, l->rpm_burst);
    msgpack_pack_uint64(pk, l->tpm);
    msgpack_pack_uint64(pk, l->tpm_burst);
    msgpack_pack_uint64(pk, l->max_parallel);
    msgpack_pack_int64(pk, l->expires_at_ms);
}

static void pack_model_limits(msgpack_packer *pk, const struct ledger_model_limits *l)
{
    msgpack_pack_array(pk, MODEL_LIMITS_FIELDS);
    msgpack_pack_uint32(pk, l->set);
    msgpack_pack_int64(pk, l->budget_micros);
    msgpack_pack_uint64(pk, l->rpm);
    msgpack_pack_uint64(pk, l->rpm_burst);
    msgpack_pack_uint64(pk, l->tpm);
    msgpack_pack_uint64(pk, l->tpm_burst);
}

/* Number of fields after [type, request_id, actor] for each command type. */
static const uint8_t fields_of[LEDGER_CMD_TYPE_MAX] = {
    [LEDGER_CMD_ACCOUNT_CREATE] = 3, [LEDGER_CMD_ACCOUNT_UPDATE] = 5,
    [LEDGER_CMD_KEY_ADD] = 2,        [LEDGER_CMD_KEY_REVOKE] = 2,
    [LEDGER_CMD_MODEL_LIMIT_SET] = 3, [LEDGER_CMD_RESERVE] = 8,
    [LEDGER_CMD_SETTLE] = 2,         [LEDGER_CMD_VOID] = 0,
    [LEDGER_CMD_EXTEND] = 1,         [LEDGER_CMD_CONFIG_SET] = 1,
};

void ledger_pack_cmd(msgpack_packer *pk, const struct ledger_cmd *c)
{
    msgpack_pack_array(pk, 3 + fields_of[c->type]);
    msgpack_pack_uint8(pk, c->type);
    pack_bin(pk, c->request_id, LEDGER_REQUEST_ID_SIZE);
    pack_str(pk, c->actor);
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        pack_str(pk, c->u.create.name);
        pack_str(pk, c->u.create.parent);
        ledger_pack_limits(pk, &c->u.create.limits);
        break;
    case LEDGER_CMD_ACCOUNT_UPDATE:
        pack_str(pk, c->u.update.name);
        ledger_pack_limits(pk, &c->u.update.limits);
        msgpack_pack_uint32(pk, c->u.update.clear);
        msgpack_pack_uint8(pk, c->u.update.set_parent);
        pack_str(pk, c->u.update.parent);
        break;
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        pack_str(pk, c->u.key.account);
        pack_bin(pk, c->u.key.key_hash, LEDGER_KEY_HASH_SIZE);
        break;
    case LEDGER_CMD_MODEL_LIMIT_SET:
        pack_str(pk, c->u.model_limit.account);
        pack_str(pk, c->u.model_limit.model);
        pack_model_limits(pk, &c->u.model_limit.limits);
        break;
    case LEDGER_CMD_RESERVE:
        msgpack_pack_uint8(pk, c->u.reserve.by_account);
        pack_bin(pk, c->u.reserve.key_hash, LEDGER_KEY_HASH_SIZE);
        pack_str(pk, c->u.reserve.account);
        msgpack_pack_int64(pk, c->u.reserve.estimate_micros);
        msgpack_pack_uint64(pk, c->u.reserve.estimate_tokens);
        pack_str(pk, c->u.reserve.model);
        msgpack_pack_int64(pk, c->u.reserve.ttl_ms);
        pack_bin(pk, c->u.reserve.metadata, c->u.reserve.metadata_len);
        break;
    case LEDGER_CMD_SETTLE:
        msgpack_pack_int64(pk, c->u.settle.actual_micros);
        msgpack_pack_uint64(pk, c->u.settle.actual_tokens);
        break;
    case LEDGER_CMD_EXTEND:
        msgpack_pack_int64(pk, c->u.extend.ttl_ms);
        break;
    case LEDGER_CMD_CONFIG_SET:
        msgpack_pack_int64(pk, c->u.config.retention_ms);
        break;
    default:
        break;
    }
}

/* msgpack-c's sbuffer aborts the pack on allocation failure only through its return
 * code, which the packer ignores; this writer records the failure instead. */
struct grow_buf {
    char *data;
    size_t len, cap;
    bool failed;
};

static int grow_write(void *data, const char *buf, size_t len)
{
    struct grow_buf *g = data;
    if (g->failed) {
        return -1;
    }
    if (g->len + len > g->cap) {
        size_t cap = g->cap ? g->cap : 4096;
        while (cap < g->len + len) {
            cap *= 2;
        }
        char *p = realloc(g->data, cap);
        if (p == NULL) {
            g->failed = true;
            return -1;
        }
        g->data = p;
        g->cap = cap;
    }
    memcpy(g->data + g->len, buf, len);
    g->len += len;
    return 0;
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
    struct grow_buf g = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &g, grow_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint8(&pk, BATCH_FORMAT);
    msgpack_pack_int64(&pk, stamp_ms);
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++) {
        ledger_pack_cmd(&pk, &cmds[i]);
    }
    static const char zeros[8] = {0};
    grow_write(&g, zeros, (8 - g.len % 8) % 8);
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
    struct grow_buf g = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &g, grow_write);
    ledger_pack_cmd(&pk, c);
    if (g.failed) {
        free(g.data);
        return -LEDGER_ENOMEM;
    }
    *buf = g.data;
    *len = g.len;
    return 0;
}

/* ---- Decoding. ---- */

bool ledger_read_limits(struct mp_reader *r, struct ledger_limits *l)
{
    uint32_t n;
    if (!mp_read_array(r, LIMITS_FIELDS, &n) || n != LIMITS_FIELDS) {
        r->ok = false;
        return false;
    }
    mp_read_u32(r, &l->set);
    mp_read_u8(r, &l->period_kind);
    mp_read_u8(r, &l->blocked);
    mp_read_u8(r, &l->expiry_policy);
    mp_read_i64(r, &l->budget_micros);
    mp_read_i64(r, &l->soft_budget_micros);
    mp_read_i64(r, &l->period_ms);
    mp_read_u64(r, &l->rpm);
    mp_read_u64(r, &l->rpm_burst);
    mp_read_u64(r, &l->tpm);
    mp_read_u64(r, &l->tpm_burst);
    mp_read_u64(r, &l->max_parallel);
    return mp_read_i64(r, &l->expires_at_ms);
}

static bool read_model_limits(struct mp_reader *r, struct ledger_model_limits *l)
{
    uint32_t n;
    if (!mp_read_array(r, MODEL_LIMITS_FIELDS, &n) || n != MODEL_LIMITS_FIELDS) {
        r->ok = false;
        return false;
    }
    mp_read_u32(r, &l->set);
    mp_read_i64(r, &l->budget_micros);
    mp_read_u64(r, &l->rpm);
    mp_read_u64(r, &l->rpm_burst);
    mp_read_u64(r, &l->tpm);
    return mp_read_u64(r, &l->tpm_burst);
}

static bool read_fields(struct mp_reader *r, struct ledger_cmd *c)
{
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        mp_read_text(r, c->u.create.name, LEDGER_NAME_MAX);
        mp_read_text(r, c->u.create.parent, LEDGER_NAME_MAX);
        return ledger_read_limits(r, &c->u.create.limits);
    case LEDGER_CMD_ACCOUNT_UPDATE:
        mp_read_text(r, c->u.update.name, LEDGER_NAME_MAX);
        ledger_read_limits(r, &c->u.update.limits);
        mp_read_u32(r, &c->u.update.clear);
        mp_read_u8(r, &c->u.update.set_parent);
        return mp_read_text(r, c->u.update.parent, LEDGER_NAME_MAX);
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        mp_read_text(r, c->u.key.account, LEDGER_NAME_MAX);
        return mp_read_fixed(r, c->u.key.key_hash, LEDGER_KEY_HASH_SIZE);
    case LEDGER_CMD_MODEL_LIMIT_SET:
        mp_read_text(r, c->u.model_limit.account, LEDGER_NAME_MAX);
        mp_read_text(r, c->u.model_limit.model, LEDGER_MODEL_MAX);
        return read_model_limits(r, &c->u.model_limit.limits);
    case LEDGER_CMD_RESERVE: {
        const uint8_t *meta;
        size_t meta_len;
        mp_read_u8(r, &c->u.reserve.by_account);
        mp_read_fixed(r, c->u.reserve.key_hash, LEDGER_KEY_HASH_SIZE);
        mp_read_text(r, c->u.reserve.account, LEDGER_NAME_MAX);
        mp_read_i64(r, &c->u.reserve.estimate_micros);
        mp_read_u64(r, &c->u.reserve.estimate_tokens);
        mp_read_text(r, c->u.reserve.model, LEDGER_MODEL_MAX);
        mp_read_i64(r, &c->u.reserve.ttl_ms);
        if (!mp_read_bin(r, LEDGER_METADATA_MAX, &meta, &meta_len)) {
            return false;
        }
        memcpy(c->u.reserve.metadata, meta, meta_len);
        c->u.reserve.metadata_len = (uint16_t)meta_len;
        return true;
    }
    case LEDGER_CMD_SETTLE:
        mp_read_i64(r, &c->u.settle.actual_micros);
        return mp_read_u64(r, &c->u.settle.actual_tokens);
    case LEDGER_CMD_VOID:
        return r->ok;
    case LEDGER_CMD_EXTEND:
        return mp_read_i64(r, &c->u.extend.ttl_ms);
    case LEDGER_CMD_CONFIG_SET:
        return mp_read_i64(r, &c->u.config.retention_ms);
    default:
        return false;
    }
}

bool ledger_read_cmd(struct mp_reader *r, struct ledger_cmd *c)
{
    uint32_t n;
    memset(c, 0, sizeof(*c));
    if (!mp_read_array(r, 32, &n) || n < 3 || !mp_read_u8(r, &c->type)) {
        return false;
    }
    if (c->type < LEDGER_CMD_ACCOUNT_CREATE || c->type >= LEDGER_CMD_TYPE_MAX ||
        n != 3u + fields_of[c->type]) {
        return false;
    }
    mp_read_fixed(r, c->request_id, LEDGER_REQUEST_ID_SIZE);
    mp_read_text(r, c->actor, LEDGER_ACTOR_MAX);
    return read_fields(r, c) && r->ok;
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

struct fnv {
    uint64_t h;
};

static void fnv_bytes(struct fnv *f, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        f->h = (f->h ^ b[i]) * 0x100000001b3ULL;
    }
}

static void fnv_u64(struct fnv *f, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++) {
        b[i] = (uint8_t)(v >> (8 * i));
    }
    fnv_bytes(f, b, 8);
}

static void fnv_str(struct fnv *f, const char *s)
{
    size_t n = strlen(s);
    fnv_u64(f, n);
    fnv_bytes(f, s, n);
}

static void fnv_limits(struct fnv *f, const struct ledger_limits *l)
{
    fnv_u64(f, l->set);
    fnv_u64(f, l->period_kind);
    fnv_u64(f, l->blocked);
    fnv_u64(f, l->expiry_policy);
    fnv_u64(f, (uint64_t)l->budget_micros);
    fnv_u64(f, (uint64_t)l->soft_budget_micros);
    fnv_u64(f, (uint64_t)l->period_ms);
    fnv_u64(f, l->rpm);
    fnv_u64(f, l->rpm_burst);
    fnv_u64(f, l->tpm);
    fnv_u64(f, l->tpm_burst);
    fnv_u64(f, l->max_parallel);
    fnv_u64(f, (uint64_t)l->expires_at_ms);
}

uint64_t ledger_cmd_fingerprint(const struct ledger_cmd *c)
{
    struct fnv f = {0xcbf29ce484222325ULL};
    fnv_u64(&f, c->type);
    fnv_bytes(&f, c->request_id, LEDGER_REQUEST_ID_SIZE);
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        fnv_str(&f, c->u.create.name);
        fnv_str(&f, c->u.create.parent);
        fnv_limits(&f, &c->u.create.limits);
        break;
    case LEDGER_CMD_ACCOUNT_UPDATE:
        fnv_str(&f, c->u.update.name);
        fnv_limits(&f, &c->u.update.limits);
        fnv_u64(&f, c->u.update.clear);
        fnv_u64(&f, c->u.update.set_parent);
        fnv_str(&f, c->u.update.parent);
        break;
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        fnv_str(&f, c->u.key.account);
        fnv_bytes(&f, c->u.key.key_hash, LEDGER_KEY_HASH_SIZE);
        break;
    case LEDGER_CMD_MODEL_LIMIT_SET: {
        const struct ledger_model_limits *m = &c->u.model_limit.limits;
        fnv_str(&f, c->u.model_limit.account);
        fnv_str(&f, c->u.model_limit.model);
        fnv_u64(&f, m->set);
        fnv_u64(&f, (uint64_t)m->budget_micros);
        fnv_u64(&f, m->rpm);
        fnv_u64(&f, m->rpm_burst);
        fnv_u64(&f, m->tpm);
        fnv_u64(&f, m->tpm_burst);
        break;
    }
    case LEDGER_CMD_RESERVE:
        fnv_u64(&f, c->u.reserve.by_account);
        if (c->u.reserve.by_account) {
            fnv_str(&f, c->u.reserve.account);
        } else {
            fnv_bytes(&f, c->u.reserve.key_hash, LEDGER_KEY_HASH_SIZE);
        }
        fnv_u64(&f, (uint64_t)c->u.reserve.estimate_micros);
        fnv_u64(&f, c->u.reserve.estimate_tokens);
        fnv_str(&f, c->u.reserve.model);
        fnv_u64(&f, (uint64_t)c->u.reserve.ttl_ms);
        fnv_u64(&f, c->u.reserve.metadata_len);
        fnv_bytes(&f, c->u.reserve.metadata, c->u.reserve.metadata_len);
        break;
    case LEDGER_CMD_SETTLE:
        fnv_u64(&f, (uint64_t)c->u.settle.actual_micros);
        fnv_u64(&f, c->u.settle.actual_tokens);
        break;
    case LEDGER_CMD_EXTEND:
        fnv_u64(&f, (uint64_t)c->u.extend.ttl_ms);
        break;
    case LEDGER_CMD_CONFIG_SET:
        fnv_u64(&f, (uint64_t)c->u.config.retention_ms);
        break;
    default:
        break;
    }
    return f.h;
}
