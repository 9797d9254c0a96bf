/*
 * cmd_equal.c: the comparisons of cmd_equal.h.
 *
 * One function per struct, a switch over the command type; each field is compared with the
 * harness macro that prints both values, and the whole command with ledger_cmd_equal().
 */
#include "cmd_equal.h"

#include "test.h"

void check_limits_equal(const struct ledger_limits *a, const struct ledger_limits *b)
{
    CHECK_EQ_INT(a->set, b->set);
    CHECK_EQ_INT(a->period_kind, b->period_kind);
    CHECK_EQ_INT(a->blocked, b->blocked);
    CHECK_EQ_INT(a->expiry_policy, b->expiry_policy);
    CHECK_EQ_INT(a->budget_micros, b->budget_micros);
    CHECK_EQ_INT(a->soft_budget_micros, b->soft_budget_micros);
    CHECK_EQ_INT(a->period_ms, b->period_ms);
    CHECK(a->rpm == b->rpm && a->rpm_burst == b->rpm_burst);
    CHECK(a->tpm == b->tpm && a->tpm_burst == b->tpm_burst);
    CHECK(a->max_parallel == b->max_parallel);
    CHECK_EQ_INT(a->expires_at_ms, b->expires_at_ms);
}

void check_cmd_equal(const struct ledger_cmd *a, const struct ledger_cmd *b)
{
    /* Paired: the equality generated from wire/'s command table must agree with these
     * field-by-field checks, which name the field that differs. */
    CHECK(ledger_cmd_equal(a, b));
    CHECK_EQ_INT(a->type, b->type);
    CHECK(memcmp(a->request_id, b->request_id, LEDGER_REQUEST_ID_SIZE) == 0);
    CHECK_EQ_STR(a->actor, b->actor);
    CHECK_EQ_STR(a->scope, b->scope);
    if (a->type != b->type) {
        return;
    }
    switch (a->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        CHECK_EQ_STR(a->u.create.name, b->u.create.name);
        CHECK_EQ_STR(a->u.create.parent, b->u.create.parent);
        check_limits_equal(&a->u.create.limits, &b->u.create.limits);
        break;
    case LEDGER_CMD_ACCOUNT_UPDATE:
        CHECK_EQ_STR(a->u.update.name, b->u.update.name);
        check_limits_equal(&a->u.update.limits, &b->u.update.limits);
        CHECK_EQ_INT(a->u.update.clear, b->u.update.clear);
        CHECK_EQ_INT(a->u.update.set_parent, b->u.update.set_parent);
        CHECK_EQ_STR(a->u.update.parent, b->u.update.parent);
        break;
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        CHECK_EQ_STR(a->u.key.account, b->u.key.account);
        CHECK(memcmp(a->u.key.key_hash, b->u.key.key_hash, LEDGER_KEY_HASH_SIZE) == 0);
        break;
    case LEDGER_CMD_MODEL_LIMIT_SET: {
        const struct ledger_model_limits *x = &a->u.model_limit.limits;
        const struct ledger_model_limits *y = &b->u.model_limit.limits;
        CHECK_EQ_STR(a->u.model_limit.account, b->u.model_limit.account);
        CHECK_EQ_STR(a->u.model_limit.model, b->u.model_limit.model);
        CHECK(x->set == y->set && x->budget_micros == y->budget_micros);
        CHECK(x->rpm == y->rpm && x->rpm_burst == y->rpm_burst);
        CHECK(x->tpm == y->tpm && x->tpm_burst == y->tpm_burst);
        break;
    }
    case LEDGER_CMD_RESERVE:
        CHECK_EQ_INT(a->u.reserve.by_account, b->u.reserve.by_account);
        CHECK(memcmp(a->u.reserve.key_hash, b->u.reserve.key_hash, LEDGER_KEY_HASH_SIZE) == 0);
        CHECK_EQ_STR(a->u.reserve.account, b->u.reserve.account);
        CHECK_EQ_INT(a->u.reserve.estimate_micros, b->u.reserve.estimate_micros);
        CHECK(a->u.reserve.estimate_tokens == b->u.reserve.estimate_tokens);
        CHECK_EQ_STR(a->u.reserve.model, b->u.reserve.model);
        CHECK_EQ_INT(a->u.reserve.ttl_ms, b->u.reserve.ttl_ms);
        CHECK_EQ_INT(a->u.reserve.metadata_len, b->u.reserve.metadata_len);
        if (a->u.reserve.metadata_len == b->u.reserve.metadata_len) {
            size_t n = a->u.reserve.metadata_len;
            CHECK(memcmp(a->u.reserve.metadata, b->u.reserve.metadata, n) == 0);
        }
        break;
    case LEDGER_CMD_SETTLE:
        CHECK_EQ_INT(a->u.settle.actual_micros, b->u.settle.actual_micros);
        CHECK(a->u.settle.actual_tokens == b->u.settle.actual_tokens);
        break;
    case LEDGER_CMD_EXTEND:
        CHECK_EQ_INT(a->u.extend.ttl_ms, b->u.extend.ttl_ms);
        break;
    case LEDGER_CMD_CONFIG_SET:
        CHECK_EQ_INT(a->u.config.retention_ms, b->u.config.retention_ms);
        break;
    default:
        break;
    }
}

void check_result_equal(const struct ledger_result *a, const struct ledger_result *b)
{
    CHECK_EQ_INT(a->status, b->status);
    CHECK_EQ_INT(a->cmd_type, b->cmd_type);
    CHECK_EQ_INT(a->deny_reason, b->deny_reason);
    CHECK_EQ_INT(a->flags, b->flags);
    CHECK(memcmp(a->request_id, b->request_id, LEDGER_REQUEST_ID_SIZE) == 0);
    CHECK_EQ_STR(a->account, b->account);
    CHECK_EQ_INT(a->remaining, b->remaining);
    CHECK_EQ_INT(a->retry_after_ms, b->retry_after_ms);
    CHECK_EQ_INT(a->charged_micros, b->charged_micros);
    CHECK_EQ_INT(a->overrun_micros, b->overrun_micros);
    CHECK_EQ_INT(a->expires_at_ms, b->expires_at_ms);
}
