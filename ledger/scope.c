/*
 * scope.c: whether a command stays inside the scope it carries.
 *
 * A command from a scoped credential carries the root accounts it may act for
 * (ledger_cmd.scope, set by the server from the connection). Before a command looks at
 * anything else, even its stored answer, the ledger finds the root of what it names and
 * refuses it with EFORBIDDEN when that root is not in the scope; so a refused command
 * leaves nothing (no hold, no journal record, no stored answer) and a stored answer is
 * only ever replayed to a sender whose scope covers it.
 *
 * The one idea: what a command names is resolved to a root the same way on every
 * replica, from the state the batch has reached, so the check is as deterministic as
 * the command. An account name that is not an existing account under the roots is
 * refused like one under another root, so a scoped sender cannot probe the names of
 * other tenants; a key hash or a request id that names nothing goes on to the command's
 * own answer (unknown_key, ENOTFOUND), since such a 256- or 128-bit value is known only
 * to whoever was given it.
 */
#include "wire/wire.h"
#include "ledger/apply.h"

#include <assert.h>
#include <string.h>

/* Whether the root of account `id`'s chain (its current one) is in `scope`. */
static bool id_in_scope(struct ledger *l, const char *scope, uint64_t id)
{
    uint64_t ids[LEDGER_DEPTH_MAX];
    struct acct_rec *recs[LEDGER_DEPTH_MAX];
    uint32_t n = id != 0 ? ledger__chain_load(l, id, ids, recs) : 0;
    if (n == 0) {
        return false;
    }
    char root[LEDGER_NAME_MAX + 1];
    ledger__copy_name(root, recs[n - 1]->name, recs[n - 1]->name_len, LEDGER_NAME_MAX);
    return ledger_scope_has(scope, root);
}

static bool name_in_scope(struct ledger *l, const char *scope, const char *name)
{
    return name[0] != '\0' && id_in_scope(l, scope, ledger__name_lookup(l, name));
}

/* A key hash that names no account is the command's own business (unknown_key,
 * ENOTFOUND); one that does must name an account in scope. */
static bool key_in_scope(struct ledger *l, const char *scope, const uint8_t *hash)
{
    struct key_rec k;
    int rc = ledger__key_get(l, hash, &k);
    return rc <= 0 || id_in_scope(l, scope, k.account_id);
}

/* Likewise a request id naming no reservation; a reservation is in scope when the root
 * of the chain it was granted on is. */
static bool resv_in_scope(struct ledger *l, const char *scope, const uint8_t *id)
{
    struct resv_rec r;
    int rc = ledger__resv_get(l, id, &r);
    if (rc <= 0 || r.chain_len == 0) {
        return true;
    }
    assert(r.chain_len <= LEDGER_DEPTH_MAX);
    return id_in_scope(l, scope, r.chain[r.chain_len - 1]);
}

bool ledger__scope_allows(struct ledger *l, const struct ledger_cmd *c)
{
    const char *scope = c->scope;
    if (scope[0] == '\0') {
        return true;
    }
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        /* A new root is an unscoped admin's act: parent "" is never in scope. */
        return name_in_scope(l, scope, c->u.create.parent);
    case LEDGER_CMD_ACCOUNT_UPDATE:
        return name_in_scope(l, scope, c->u.update.name) &&
               (!c->u.update.set_parent || name_in_scope(l, scope, c->u.update.parent));
    case LEDGER_CMD_KEY_ADD:
        return name_in_scope(l, scope, c->u.key.account);
    case LEDGER_CMD_KEY_REVOKE:
        return key_in_scope(l, scope, c->u.key.key_hash);
    case LEDGER_CMD_MODEL_LIMIT_SET:
        return name_in_scope(l, scope, c->u.model_limit.account);
    case LEDGER_CMD_RESERVE:
        return c->u.reserve.by_account ? name_in_scope(l, scope, c->u.reserve.account)
                                       : key_in_scope(l, scope, c->u.reserve.key_hash);
    case LEDGER_CMD_SETTLE:
    case LEDGER_CMD_VOID:
    case LEDGER_CMD_EXTEND:
        return resv_in_scope(l, scope, c->request_id);
    default: /* CONFIG_SET and anything cluster-wide */
        return false;
    }
}
