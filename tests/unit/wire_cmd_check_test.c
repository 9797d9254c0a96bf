/*
 * wire_cmd_check_test.c: ledger_cmd_check(), the one stateless check of a command, and
 * the two places that rely on it besides libtally: the ledger, whose answer to a bad
 * command must be exactly the check's code (paired on both sides of the log), and
 * node_propose(), which refuses a command that cannot be encoded before queueing it.
 */
#include "test.h" /* first: it sets _GNU_SOURCE */

#include "ledger_testlib.h"
#include "raft/node.h"

#include <uv.h>

/* A bad command: what the check must say, and the ledger must answer. */
struct bad_case {
    const char *what;
    struct ledger_cmd cmd;
    int code; /* negative LEDGER_E* */
};

static size_t bad_cases(struct tl *t, struct bad_case *out)
{
    size_t n = 0;
    struct ledger_limits lim = {.set = LEDGER_LIM_BUDGET, .budget_micros = -1};
    out[n++] = (struct bad_case){"negative budget", tl_create(t, "a", "", &lim), -LEDGER_EINVAL};
    out[n++] = (struct bad_case){"bad name", tl_create(t, "a b", "", NULL), -LEDGER_ENAME};
    out[n++] = (struct bad_case){"bad parent", tl_create(t, "a", "p q", NULL), -LEDGER_ENAME};
    /* A bad name is judged before bad limits, as the ledger always did. */
    out[n++] =
        (struct bad_case){"bad name and budget", tl_create(t, "a b", "", &lim), -LEDGER_ENAME};
    struct ledger_cmd c = tl_update(t, "a", NULL, 1u << 20);
    out[n++] = (struct bad_case){"unknown clear bits", c, -LEDGER_EINVAL};
    lim = (struct ledger_limits){.set = LEDGER_LIM_RPM, .rpm = 0};
    out[n++] = (struct bad_case){"rpm of 0", tl_update(t, "a", &lim, 0), -LEDGER_EINVAL};
    lim = (struct ledger_limits){
        .set = LEDGER_LIM_PERIOD, .period_kind = LEDGER_PERIOD_FIXED, .period_ms = 10};
    out[n++] =
        (struct bad_case){"fixed period of 10 ms", tl_update(t, "a", &lim, 0), -LEDGER_EINVAL};
    out[n++] = (struct bad_case){"key for a bad name", tl_key_add(t, "/!", "sk"), -LEDGER_ENAME};
    struct ledger_model_limits ml = {.set = LEDGER_LIM_PARALLEL};
    out[n++] =
        (struct bad_case){"model parallel limit", tl_model_limit(t, "a", "m", &ml), -LEDGER_EINVAL};
    out[n++] =
        (struct bad_case){"estimate over the bound",
                          tl_reserve(t, 900, "a", LEDGER_AMOUNT_MAX + 1, 0, 1000), -LEDGER_EINVAL};
    out[n++] = (struct bad_case){"ttl of 0", tl_reserve(t, 901, "a", 1, 0, 0), -LEDGER_EINVAL};
    out[n++] = (struct bad_case){
        "ttl over the bound", tl_reserve(t, 902, "a", 1, 0, LEDGER_TTL_MAX_MS + 1), -LEDGER_EINVAL};
    c = tl_reserve(t, 903, "a", 1, 0, 1000);
    snprintf(c.u.reserve.model, sizeof(c.u.reserve.model), "no spaces");
    out[n++] = (struct bad_case){"bad model name", c, -LEDGER_ENAME};
    out[n++] = (struct bad_case){"negative actual", tl_settle(t, 904, -1, 0), -LEDGER_EINVAL};
    out[n++] = (struct bad_case){"extend by 0", tl_extend(t, 905, 0), -LEDGER_EINVAL};
    out[n++] = (struct bad_case){"retention of 0", tl_config(t, 0), -LEDGER_EINVAL};
    out[n++] = (struct bad_case){"retention over the bound",
                                 tl_config(t, LEDGER_RETENTION_MAX_MS + 1), -LEDGER_EINVAL};
    return n;
}

static void check_names_each_refusal(void)
{
    struct tl t;
    tl_open(&t, 1000);
    struct bad_case cases[32];
    size_t n = bad_cases(&t, cases);
    for (size_t i = 0; i < n; i++) {
        const char *why = NULL;
        int rv = ledger_cmd_check(&cases[i].cmd, &why);
        if (rv != cases[i].code) {
            fprintf(stderr, "  case \"%s\": %d, want %d\n", cases[i].what, rv, cases[i].code);
        }
        CHECK_EQ_INT(rv, cases[i].code);
        CHECK(why != NULL && why[0] != '\0');
    }
    tl_close(&t);
}

static void ledger_answers_what_the_check_says(void)
{
    struct tl t;
    tl_open(&t, 1000);
    struct bad_case cases[32];
    size_t n = bad_cases(&t, cases);
    for (size_t i = 0; i < n; i++) {
        struct ledger_result r = tl_run(&t, cases[i].cmd);
        if (r.status != cases[i].code) {
            fprintf(stderr, "  case \"%s\": ledger %d, want %d\n", cases[i].what, r.status,
                    cases[i].code);
        }
        CHECK_EQ_INT(r.status, ledger_cmd_check(&cases[i].cmd, NULL));
    }
    REQUIRE(ledger_check_invariants(t.l) == 0);
    tl_close(&t);
}

static void good_commands_pass(void)
{
    struct tl t;
    tl_open(&t, 1000);
    struct ledger_limits lim = {.set = LEDGER_LIM_BUDGET | LEDGER_LIM_RPM,
                                .budget_micros = LEDGER_AMOUNT_MAX,
                                .rpm = LEDGER_RATE_MAX};
    const struct ledger_cmd good[] = {
        tl_create(&t, "org", "", &lim),
        tl_create(&t, "org/team", "org", NULL),
        tl_key_add(&t, "org", "sk-1"),
        tl_key_revoke(&t, "sk-1"),
        tl_reserve(&t, 1, "org", LEDGER_AMOUNT_MAX, LEDGER_TOKENS_MAX, LEDGER_TTL_MAX_MS),
        tl_settle(&t, 1, 0, 0),
        tl_void(&t, 2),
        tl_extend(&t, 3, LEDGER_TTL_MAX_MS),
        tl_config(&t, LEDGER_RETENTION_MAX_MS),
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        const char *why = "unset";
        CHECK_EQ_INT(ledger_cmd_check(&good[i], &why), 0);
        CHECK_EQ_STR(why, "");
    }
    tl_close(&t);
}

static void unencodable_commands_are_malformed(void)
{
    struct tl t;
    tl_open(&t, 1000);
    struct ledger_cmd c = tl_cmd(&t, LEDGER_CMD_TYPE_MAX);
    CHECK_EQ_INT(ledger_cmd_check(&c, NULL), -LEDGER_EDECODE);
    c = tl_reserve(&t, 1, "a", 1, 0, 1000);
    c.u.reserve.metadata_len = LEDGER_METADATA_MAX + 1;
    CHECK_EQ_INT(ledger_cmd_check(&c, NULL), -LEDGER_EDECODE);
    c = tl_create(&t, "a", "", NULL);
    memset(c.u.create.name, 'a', sizeof(c.u.create.name)); /* no NUL within the bound */
    CHECK_EQ_INT(ledger_cmd_check(&c, NULL), -LEDGER_EDECODE);
    c = tl_config(&t, 1000);
    memset(c.actor, 'x', sizeof(c.actor));
    CHECK_EQ_INT(ledger_cmd_check(&c, NULL), -LEDGER_EDECODE);
    tl_close(&t);
}

static void count_answer(struct node *node, void *data, int status, uint64_t index,
                         const struct ledger_result *results, size_t n_results)
{
    (void)node, (void)status, (void)index, (void)results, (void)n_results;
    (*(int *)data)++;
}

static void node_refuses_a_malformed_command_at_once(void)
{
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    struct node_config cfg;
    node_config_init(&cfg);
    cfg.id = 1;
    cfg.dir = test_tmpdir();
    cfg.address = "127.0.0.1:1";
    cfg.peer_insecure = true; /* never started: no peer ever connects */
    cfg.on_fatal = node_exit_fatal;
    struct node *node = NULL;
    char errmsg[NODE_ERRMSG_SIZE];
    REQUIRE(node_open(&node, &loop, &cfg, errmsg) == 0);

    struct tl t = {0};
    struct ledger_cmd bad = tl_reserve(&t, 1, "a", 1, 0, 1000);
    bad.u.reserve.metadata_len = LEDGER_METADATA_MAX + 1;
    struct ledger_cmd out_of_range = tl_reserve(&t, 2, "a", -5, 0, 1000);
    struct ledger_cmd pair[2] = {out_of_range, bad};
    int calls = 0;
    /* Refused before anything else: the node has not even started. */
    CHECK_EQ_INT(node_propose(node, &bad, 1, count_answer, &calls), -NODE_EINVAL);
    CHECK_EQ_INT(node_propose(node, pair, 2, count_answer, &calls), -NODE_EINVAL);
    /* An argument out of range is the ledger's to answer: it passes to the leader check. */
    CHECK_EQ_INT(node_propose(node, &out_of_range, 1, count_answer, &calls), -NODE_ENOTLEADER);
    CHECK_EQ_INT(calls, 0);

    node_close(node, NULL, NULL);
    REQUIRE(uv_run(&loop, UV_RUN_DEFAULT) == 0);
    REQUIRE(uv_loop_close(&loop) == 0);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(check_names_each_refusal);
    TEST(ledger_answers_what_the_check_says);
    TEST(good_commands_pass);
    TEST(unencodable_commands_are_malformed);
    TEST(node_refuses_a_malformed_command_at_once);
    TEST_MAIN_END;
}
