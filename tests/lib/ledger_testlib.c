/*
 * ledger_testlib.c: the builders and runners of ledger_testlib.h.
 *
 * The ledgers a test opens are recorded here and closed by the harness's end-of-test hook,
 * so a test that stops on a REQUIRE leaves nothing open.
 */
#include "ledger_testlib.h"

#include <openssl/sha.h>

/* Ledgers a test opened and has not closed: closed when the test ends. */
static struct ledger *tl_open_ledgers[64];

static void tl_close_all(void)
{
    for (int i = 0; i < 64; i++) {
        ledger_close(tl_open_ledgers[i]);
        tl_open_ledgers[i] = NULL;
    }
}

void tl_track(struct ledger *l, struct ledger *replace)
{
    test_end_hook = tl_close_all;
    for (int i = 0; i < 64; i++) {
        if (tl_open_ledgers[i] == replace) {
            tl_open_ledgers[i] = l;
            return;
        }
    }
    fprintf(stderr, "tl_track: too many open ledgers in one test\n");
    abort();
}

void tl_open_opts(struct tl *t, int64_t now_ms, const struct ledger_options *o)
{
    char err[LEDGER_ERRMSG_SIZE] = "";
    memset(t, 0, sizeof(*t));
    t->dir = test_tmpdir();
    t->now_ms = now_ms;
    t->next_id = 1;
    int rv = ledger_open(&t->l, t->dir, o, err);
    if (rv != 0) {
        fprintf(stderr, "ledger_open: %d %s\n", rv, err);
    }
    REQUIRE(rv == 0);
    tl_track(t->l, NULL);
}

void tl_open(struct tl *t, int64_t now_ms)
{
    tl_open_opts(t, now_ms, NULL);
}

void tl_close(struct tl *t)
{
    tl_track(NULL, t->l);
    ledger_close(t->l);
    t->l = NULL;
}

void tl_id(uint8_t id[LEDGER_REQUEST_ID_SIZE], uint64_t n)
{
    memset(id, 0, LEDGER_REQUEST_ID_SIZE);
    for (int i = 0; i < 8; i++) {
        id[i] = (uint8_t)(n >> (56 - 8 * i));
    }
}

void tl_key_hash(const char *secret, uint8_t out[LEDGER_KEY_HASH_SIZE])
{
    SHA256((const unsigned char *)secret, strlen(secret), out);
}

struct ledger_cmd tl_cmd(struct tl *t, uint8_t type)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = type;
    tl_id(c.request_id, t->next_id++);
    snprintf(c.actor, sizeof(c.actor), "test");
    return c;
}

int tl_apply(struct tl *t, const struct ledger_cmd *cmds, size_t n, struct ledger_result *out,
             size_t *n_out)
{
    void *buf = NULL;
    size_t len = 0;
    int rv = ledger_batch_encode(t->now_ms, cmds, n, &buf, &len);
    if (rv != 0) {
        return rv;
    }
    REQUIRE(len % 8 == 0);
    t->index++;
    rv = ledger_apply_batch(t->l, t->index, buf, len, out, n_out);
    free(buf);
    return rv;
}

struct ledger_result tl_run(struct tl *t, struct ledger_cmd c)
{
    static struct ledger_result results[LEDGER_BATCH_MAX_CMDS];
    size_t n = 0;
    int rv = tl_apply(t, &c, 1, results, &n);
    if (rv != 0) {
        fprintf(stderr, "tl_run: batch failed: %d (%s) %s\n", rv, ledger_strerror(rv),
                ledger_errmsg(t->l));
    }
    REQUIRE(rv == 0);
    REQUIRE(n == 1);
    return results[0];
}

struct ledger_cmd tl_create(struct tl *t, const char *name, const char *parent,
                            const struct ledger_limits *lim)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_ACCOUNT_CREATE);
    snprintf(c.u.create.name, sizeof(c.u.create.name), "%s", name);
    snprintf(c.u.create.parent, sizeof(c.u.create.parent), "%s", parent ? parent : "");
    if (lim) {
        c.u.create.limits = *lim;
    }
    return c;
}

struct ledger_cmd tl_update(struct tl *t, const char *name, const struct ledger_limits *lim,
                            uint32_t clear)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_ACCOUNT_UPDATE);
    snprintf(c.u.update.name, sizeof(c.u.update.name), "%s", name);
    if (lim) {
        c.u.update.limits = *lim;
    }
    c.u.update.clear = clear;
    return c;
}

struct ledger_cmd tl_move(struct tl *t, const char *name, const char *parent)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_ACCOUNT_UPDATE);
    snprintf(c.u.update.name, sizeof(c.u.update.name), "%s", name);
    c.u.update.set_parent = 1;
    snprintf(c.u.update.parent, sizeof(c.u.update.parent), "%s", parent ? parent : "");
    return c;
}

struct ledger_cmd tl_key_add(struct tl *t, const char *account, const char *secret)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_KEY_ADD);
    snprintf(c.u.key.account, sizeof(c.u.key.account), "%s", account);
    tl_key_hash(secret, c.u.key.key_hash);
    return c;
}

struct ledger_cmd tl_key_revoke(struct tl *t, const char *secret)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_KEY_REVOKE);
    tl_key_hash(secret, c.u.key.key_hash);
    return c;
}

struct ledger_cmd tl_model_limit(struct tl *t, const char *account, const char *model,
                                 const struct ledger_model_limits *lim)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_MODEL_LIMIT_SET);
    snprintf(c.u.model_limit.account, sizeof(c.u.model_limit.account), "%s", account);
    snprintf(c.u.model_limit.model, sizeof(c.u.model_limit.model), "%s", model);
    if (lim) {
        c.u.model_limit.limits = *lim;
    }
    return c;
}

struct ledger_cmd tl_reserve(struct tl *t, uint64_t id, const char *account,
                             int64_t estimate_micros, uint64_t tokens, int64_t ttl_ms)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_RESERVE);
    tl_id(c.request_id, id);
    c.u.reserve.by_account = 1;
    snprintf(c.u.reserve.account, sizeof(c.u.reserve.account), "%s", account);
    c.u.reserve.estimate_micros = estimate_micros;
    c.u.reserve.estimate_tokens = tokens;
    c.u.reserve.ttl_ms = ttl_ms;
    return c;
}

struct ledger_cmd tl_reserve_key(struct tl *t, uint64_t id, const char *secret,
                                 int64_t estimate_micros, uint64_t tokens, int64_t ttl_ms)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_RESERVE);
    tl_id(c.request_id, id);
    tl_key_hash(secret, c.u.reserve.key_hash);
    c.u.reserve.estimate_micros = estimate_micros;
    c.u.reserve.estimate_tokens = tokens;
    c.u.reserve.ttl_ms = ttl_ms;
    return c;
}

struct ledger_cmd tl_settle(struct tl *t, uint64_t id, int64_t actual_micros,
                            uint64_t actual_tokens)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_SETTLE);
    tl_id(c.request_id, id);
    c.u.settle.actual_micros = actual_micros;
    c.u.settle.actual_tokens = actual_tokens;
    return c;
}

struct ledger_cmd tl_void(struct tl *t, uint64_t id)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_VOID);
    tl_id(c.request_id, id);
    return c;
}

struct ledger_cmd tl_extend(struct tl *t, uint64_t id, int64_t ttl_ms)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_EXTEND);
    tl_id(c.request_id, id);
    c.u.extend.ttl_ms = ttl_ms;
    return c;
}

struct ledger_cmd tl_config(struct tl *t, int64_t retention_ms)
{
    struct ledger_cmd c = tl_cmd(t, LEDGER_CMD_CONFIG_SET);
    c.u.config.retention_ms = retention_ms;
    return c;
}

void tl_tick(struct tl *t)
{
    struct ledger_cmd c = tl_extend(t, UINT64_MAX, 1);
    struct ledger_result r = tl_run(t, c);
    REQUIRE(r.status == -LEDGER_ENOTFOUND);
}

struct ledger_account_info tl_account(struct tl *t, const char *name)
{
    struct ledger_account_info a;
    int rv = ledger_account_get(t->l, name, &a);
    if (rv != 0) {
        fprintf(stderr, "tl_account(%s): %d\n", name, rv);
    }
    REQUIRE(rv == 0);
    return a;
}
