/*
 * admin.c: the admin commands: accounts (create, update, move), keys, model limits and
 * the retention setting, each stored with its answer and journaled in the admin hash
 * chain.
 *
 * An admin command's answer is stored under its request id before anything else is
 * decided, so a replay answers the same; its arguments are judged by ledger_cmd_check()
 * after that replay check and before any state is read, and only a command that passed
 * every check changes a record.
 */
#include "wire/wire.h"
#include "ledger/apply.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Admin commands. ---- */

static uint64_t burst_or_rate(uint64_t burst, uint64_t rate)
{
    return burst ? burst : rate;
}

/* Copy the limits named by `bits` into the record. */
static void limits_apply(struct acct_rec *a, const struct ledger_limits *lim, uint32_t bits)
{
    a->lim_set |= bits;
    if (bits & LEDGER_LIM_BUDGET) {
        a->budget_micros = lim->budget_micros;
    }
    if (bits & LEDGER_LIM_SOFT_BUDGET) {
        a->soft_budget_micros = lim->soft_budget_micros;
    }
    if (bits & LEDGER_LIM_PERIOD) {
        a->period_kind = lim->period_kind;
        a->period_ms = lim->period_kind == LEDGER_PERIOD_FIXED ? lim->period_ms : 0;
    }
    if (bits & LEDGER_LIM_RPM) {
        a->rpm = lim->rpm;
        a->rpm_burst = burst_or_rate(lim->rpm_burst, lim->rpm);
    }
    if (bits & LEDGER_LIM_TPM) {
        a->tpm = lim->tpm;
        a->tpm_burst = burst_or_rate(lim->tpm_burst, lim->tpm);
    }
    if (bits & LEDGER_LIM_PARALLEL) {
        a->max_parallel = lim->max_parallel;
    }
    if (bits & LEDGER_LIM_EXPIRES) {
        a->expires_at_ms = lim->expires_at_ms;
    }
    if (bits & LEDGER_LIM_BLOCKED) {
        a->blocked = lim->blocked;
    }
    if (bits & LEDGER_LIM_EXPIRY_POLICY) {
        a->expiry_policy = lim->expiry_policy;
    }
}

static void limits_clear(struct acct_rec *a, uint32_t bits)
{
    a->lim_set &= ~(uint64_t)bits;
    if (bits & LEDGER_LIM_BLOCKED) {
        a->blocked = 0;
    }
    if (bits & LEDGER_LIM_EXPIRY_POLICY) {
        a->expiry_policy = LEDGER_EXPIRY_CHARGE;
    }
    if (bits & LEDGER_LIM_PERIOD) {
        a->period_kind = LEDGER_PERIOD_NONE;
        a->period_ms = 0;
    }
}


/* Admin answers live in `answers`. Returns true if `c` was answered from there. */
static bool admin_replay(struct ledger *l, const struct ledger_cmd *c, const struct ledger__fp *fp,
                         struct ledger_result *r)
{
    uint8_t k[ANSWER_KEY_SIZE];
    MDB_val v;
    memcpy(k, c->request_id, LEDGER_REQUEST_ID_SIZE);
    k[LEDGER_REQUEST_ID_SIZE] = c->type;
    if (ledger__db_get(l, DB_ANSWERS, k, sizeof(k), &v) != 1) {
        return l->fatal != 0;
    }
    struct answer_rec a;
    if (v.mv_size != sizeof(a)) {
        ledger__failed(l, MDB_CORRUPTED);
        return true;
    }
    memcpy(&a, v.mv_data, sizeof(a));
    if (!ledger__fp_equal(&a.fp, fp)) {
        r->status = -LEDGER_ECONFLICT;
    } else {
        r->status = (int32_t)a.status;
        r->flags |= LEDGER_RESULT_REPLAYED;
    }
    return true;
}

static void admin_store(struct ledger *l, const struct ledger_cmd *c, const struct ledger__fp *fp,
                        int status)
{
    uint8_t k[ANSWER_KEY_SIZE];
    struct answer_rec a = {*fp, status};
    memcpy(k, c->request_id, LEDGER_REQUEST_ID_SIZE);
    k[LEDGER_REQUEST_ID_SIZE] = c->type;
    ledger__db_put(l, DB_ANSWERS, k, sizeof(k), &a, sizeof(a), 0);
    ledger__timer_put(l, l->now_ms + l->work.retention_ms, c->request_id, c->type);
}

/* Journal an applied admin command, chained to the previous one by SHA-256. */
static void admin_journal(struct ledger *l, const struct ledger_cmd *c, uint64_t account_id)
{
    struct jrec j;
    void *payload = NULL;
    size_t plen = 0;
    if (ledger_cmd_encode(c, &payload, &plen) != 0) {
        ledger__failed(l, ENOMEM);
        return;
    }
    ledger__jrec_init(l, &j, LEDGER_J_ADMIN, c->request_id, c->actor);
    j.cmd_type = c->type;
    j.chain_len = account_id ? 1 : 0;
    j.chain[0] = account_id;
    j.seq = l->work.journal_seq + 1;
    j.payload_len = plen;
    SHA256_CTX sha;
    SHA256_Init(&sha);
    SHA256_Update(&sha, l->work.admin_head, 32);
    SHA256_Update(&sha, &j, sizeof(j)); /* admin_hash is still zero here */
    SHA256_Update(&sha, payload, plen);
    SHA256_Final(j.admin_hash, &sha);
    memcpy(l->work.admin_head, j.admin_hash, 32);
    ledger__journal_append(l, &j, payload, plen);
    free(payload);
}

static int cmd_create(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    const char *name = c->u.create.name, *parent = c->u.create.parent;
    if (ledger__name_lookup(l, name) != 0) {
        return -LEDGER_EEXIST;
    }
    uint64_t parent_id = 0;
    if (parent[0] != '\0') {
        parent_id = ledger__name_lookup(l, parent);
        if (parent_id == 0) {
            return -LEDGER_ENOTFOUND;
        }
        if (ledger__acct_depth(l, parent_id) >= LEDGER_DEPTH_MAX) {
            return -LEDGER_EDEPTH;
        }
    }
    if (l->fatal) {
        return 0;
    }
    uint64_t id = l->work.next_account_id++;
    struct cache_entry *e = ledger__cache_insert(l, id);
    struct acct_rec *a = &e->rec;
    memset(a, 0, sizeof(*a));
    e->dirty = true;
    a->id = id;
    a->parent_id = parent_id;
    a->created_ms = l->now_ms;
    a->period_anchor_ms = l->now_ms;
    a->soft_alerted_period = -1;
    a->name_len = strlen(name);
    memcpy(a->name, name, a->name_len);
    limits_apply(a, &c->u.create.limits, c->u.create.limits.set);
    a->period_start_ms = ledger__acct_period_start(a, l->now_ms);

    uint8_t k[CHILD_KEY_MAX];
    ledger__be64(k, parent_id);
    memcpy(k + 8, name, a->name_len);
    ledger__db_put(l, DB_NAMES, name, a->name_len, &id, 8, 0);
    ledger__db_put(l, DB_CHILDREN, k, 8 + a->name_len, &id, 8, 0);
    *account_id = id;
    return 0;
}

/* Height of the subtree under `id` (1 for a leaf), at most LEDGER_DEPTH_MAX + 1. */
static uint32_t subtree_height(struct ledger *l, uint64_t id, uint32_t depth_left)
{
    if (depth_left == 0) {
        return LEDGER_DEPTH_MAX + 1; /* deeper than allowed: stop counting */
    }
    MDB_cursor *cur;
    if (ledger__failed(l, mdb_cursor_open(l->txn, l->dbi[DB_CHILDREN], &cur))) {
        return LEDGER_DEPTH_MAX + 1;
    }
    uint8_t prefix[8];
    ledger__be64(prefix, id);
    MDB_val k = {8, prefix}, v;
    uint32_t best = 0;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= 8 && memcmp(k.mv_data, prefix, 8) == 0) {
        uint64_t child;
        if (v.mv_size != 8) {
            ledger__failed(l, MDB_CORRUPTED);
            break;
        }
        memcpy(&child, v.mv_data, 8);
        uint32_t h = subtree_height(l, child, depth_left - 1);
        best = h > best ? h : best;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        ledger__failed(l, rc);
    }
    return best + 1;
}

/* Validate a move of `a` under `parent` ("" = root); 0 with *new_parent set. */
static int move_check(struct ledger *l, const struct acct_rec *a, const char *parent,
                      uint64_t *new_parent)
{
    *new_parent = 0;
    if (parent[0] == '\0') {
        return subtree_height(l, a->id, LEDGER_DEPTH_MAX) > LEDGER_DEPTH_MAX ? -LEDGER_EDEPTH
                                                                                : 0;
    }
    if (!ledger_name_valid(parent, LEDGER_NAME_MAX)) {
        return -LEDGER_ENAME;
    }
    uint64_t pid = ledger__name_lookup(l, parent);
    if (pid == 0) {
        return -LEDGER_ENOTFOUND;
    }
    uint64_t ids[LEDGER_DEPTH_MAX];
    struct acct_rec *recs[LEDGER_DEPTH_MAX];
    uint32_t depth = ledger__chain_load(l, pid, ids, recs);
    for (uint32_t i = 0; i < depth; i++) {
        if (ids[i] == a->id) {
            return -LEDGER_ECYCLE;
        }
    }
    if (depth + subtree_height(l, a->id, LEDGER_DEPTH_MAX) > LEDGER_DEPTH_MAX) {
        return -LEDGER_EDEPTH;
    }
    *new_parent = pid;
    return 0;
}

static void move_apply(struct ledger *l, struct acct_rec *a, uint64_t new_parent)
{
    assert(new_parent != a->id && "I6: move_check refused a cycle");
    uint8_t k[CHILD_KEY_MAX];
    memcpy(k + 8, a->name, a->name_len);
    ledger__be64(k, a->parent_id);
    ledger__db_del(l, DB_CHILDREN, k, 8 + a->name_len);
    ledger__be64(k, new_parent);
    ledger__db_put(l, DB_CHILDREN, k, 8 + a->name_len, &a->id, 8, 0);
    a->parent_id = new_parent;
}

static int cmd_update(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    const struct ledger_limits *lim = &c->u.update.limits;
    int rv;
    uint64_t id = ledger__name_lookup(l, c->u.update.name);
    struct acct_rec *a = id ? ledger__acct_load(l, id) : NULL;
    if (a == NULL) {
        return -LEDGER_ENOTFOUND;
    }
    uint64_t new_parent = a->parent_id;
    if (c->u.update.set_parent) {
        rv = move_check(l, a, c->u.update.parent, &new_parent);
        if (rv != 0) {
            return rv;
        }
    }
    if (l->fatal) {
        return 0;
    }
    ledger__acct_roll(a, l->now_ms);
    limits_clear(a, c->u.update.clear);
    limits_apply(a, lim, lim->set);
    if ((lim->set | c->u.update.clear) & LEDGER_LIM_PERIOD) {
        a->period_anchor_ms = l->now_ms;
        ledger__acct_roll(a, l->now_ms);
    }
    if (new_parent != a->parent_id) {
        move_apply(l, a, new_parent);
    }
    ledger__acct_dirty(a);
    *account_id = id;
    return 0;
}

int ledger__key_get(struct ledger *l, const uint8_t *hash, struct key_rec *out)
{
    return ledger__db_get_fixed(l, DB_KEYS, hash, LEDGER_KEY_HASH_SIZE, out, sizeof(*out));
}

static int cmd_key_add(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    struct key_rec k;
    uint64_t id = ledger__name_lookup(l, c->u.key.account);
    struct acct_rec *a = id ? ledger__acct_load(l, id) : NULL;
    if (a == NULL) {
        return -LEDGER_ENOTFOUND;
    }
    if (ledger__key_get(l, c->u.key.key_hash, &k) != 0) {
        return -LEDGER_EEXIST;
    }
    k = (struct key_rec){id, 0, l->now_ms};
    ledger__db_put(l, DB_KEYS, c->u.key.key_hash, LEDGER_KEY_HASH_SIZE, &k, sizeof(k), 0);
    a->n_keys++;
    ledger__acct_dirty(a);
    *account_id = id;
    return 0;
}

static int cmd_key_revoke(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    struct key_rec k;
    if (ledger__key_get(l, c->u.key.key_hash, &k) != 1) {
        return -LEDGER_ENOTFOUND;
    }
    *account_id = k.account_id;
    if (k.revoked) {
        return 0;
    }
    struct acct_rec *a = ledger__acct_load(l, k.account_id);
    if (a == NULL) {
        ledger__failed(l, MDB_CORRUPTED);
        return 0;
    }
    k.revoked = 1;
    ledger__db_put(l, DB_KEYS, c->u.key.key_hash, LEDGER_KEY_HASH_SIZE, &k, sizeof(k), 0);
    assert(a->n_keys > 0);
    a->n_keys--;
    ledger__acct_dirty(a);
    return 0;
}

static int cmd_model_limit(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    const struct ledger_model_limits *m = &c->u.model_limit.limits;
    uint64_t id = ledger__name_lookup(l, c->u.model_limit.account);
    struct acct_rec *a = id ? ledger__acct_load(l, id) : NULL;
    if (a == NULL) {
        return -LEDGER_ENOTFOUND;
    }
    struct model_rec rec;
    int found = ledger__model_get(l, id, c->u.model_limit.model, &rec);
    if (found < 0) {
        return 0;
    }
    if (found == 0) {
        /* Records are never deleted: open reservations may count on them. */
        memset(&rec, 0, sizeof(rec));
        rec.period_start_ms = ledger__acct_period_start(a, l->now_ms);
        a->n_models++;
        ledger__acct_dirty(a);
    }
    rec.lim_set = m->set;
    rec.budget_micros = m->budget_micros;
    rec.rpm = m->rpm;
    rec.rpm_burst = burst_or_rate(m->rpm_burst, m->rpm);
    rec.tpm = m->tpm;
    rec.tpm_burst = burst_or_rate(m->tpm_burst, m->tpm);
    ledger__model_put(l, id, c->u.model_limit.model, &rec);
    *account_id = id;
    return 0;
}

static int cmd_config(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    *account_id = 0;
    if (c->u.config.retention_ms < l->retention_min_ms) {
        return -LEDGER_EINVAL;
    }
    l->work.retention_ms = c->u.config.retention_ms;
    return 0;
}

/* Run one admin command whose arguments passed ledger_cmd_check(). */
static int cmd_admin(struct ledger *l, const struct ledger_cmd *c, uint64_t *account_id)
{
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        return cmd_create(l, c, account_id);
    case LEDGER_CMD_ACCOUNT_UPDATE:
        return cmd_update(l, c, account_id);
    case LEDGER_CMD_KEY_ADD:
        return cmd_key_add(l, c, account_id);
    case LEDGER_CMD_KEY_REVOKE:
        return cmd_key_revoke(l, c, account_id);
    case LEDGER_CMD_MODEL_LIMIT_SET:
        return cmd_model_limit(l, c, account_id);
    default:
        assert(c->type == LEDGER_CMD_CONFIG_SET);
        return cmd_config(l, c, account_id);
    }
}

void ledger__exec_admin(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    struct ledger__fp fp = ledger__cmd_fingerprint(c);
    if (admin_replay(l, c, &fp, r)) {
        return;
    }
    uint64_t account_id = 0;
    /* The arguments are judged after the replay check, so that a reused request id is a
     * conflict whatever its new arguments are. */
    int rv = ledger_cmd_check(c, NULL);
    if (rv == 0) {
        rv = cmd_admin(l, c, &account_id);
    }
    if (l->fatal) {
        return;
    }
    if (rv == 0) {
        admin_journal(l, c, account_id);
        ledger__result_account(l, r, account_id);
    }
    r->status = rv;
    admin_store(l, c, &fp, rv);
}
