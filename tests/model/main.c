/*
 * ledger_model_test: a randomized differential test of the ledger against a reference model.
 *
 * The reference model is in model.c, the driver that draws the commands and compares the
 * ledger with the model in driver.c; this file reads the knobs and runs the test. The seed
 * is TALLY_SEED or argv[1] (default 20240309); TALLY_MODEL_STEPS sets the number of
 * commands (default 100,000); TALLY_MODEL_CHECK_EVERY runs ledger_check_invariants every
 * that many batches (default 1); TALLY_MODEL_TRACE=1 prints every batch. A mismatch prints
 * the seed that replays it.
 */
#include "model.h"

#include <time.h>

/* ---- The test. ---- */

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *s = getenv(name);
    return s != NULL && *s != '\0' ? strtoull(s, NULL, 0) : dflt;
}

static uint64_t seed_arg;

static void print_stats(double secs)
{
    printf("commands=%" PRIu64 " batches=%" PRIu64 " grants=%" PRIu64 " (soft_budget=%" PRIu64
           ") replays=%" PRIu64 " conflicts=%" PRIu64 " settles=%" PRIu64 " voids=%" PRIu64
           " late=%" PRIu64 " extends=%" PRIu64 " expired=%" PRIu64 " stale=%" PRIu64
           " garbage=%" PRIu64 " invariant_checks=%" PRIu64 " sim_days=%.1f secs=%.1f\n",
           S.cmds, S.batches, S.grants, S.soft_flagged, S.replays, S.conflicts, S.settles, S.voids,
           S.late, S.extends, S.expired, S.stale, S.garbage, S.invariant_checks,
           (double)(M.now - T0_MS) / DAY_MS, secs);
    printf("term_starts=%" PRIu64 " unconfirmed_released=%" PRIu64 "\n", S.term_starts,
           S.unconfirmed_released);
    printf("denials:");
    for (int r = 1; r < LEDGER_DENY_MAX; r++) {
        printf(" %s=%" PRIu64, ledger_deny_reason_name(r), S.denies[r]);
    }
    printf("\nerrors:");
    for (int e = 1; e < LEDGER_ECODE_MAX; e++) {
        if (S.errors[e] > 0) {
            printf(" %s=%" PRIu64, ledger_strerror(-e), S.errors[e]);
        }
    }
    printf("\n");
}

static void model_matches_ledger(void)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    memset(&D, 0, sizeof(D));
    memset(&S, 0, sizeof(S));
    D.seed = seed_arg;
    D.steps_total = env_u64("TALLY_MODEL_STEPS", STEPS_DEFAULT);
    D.check_every = (unsigned)env_u64("TALLY_MODEL_CHECK_EVERY", 1);
    D.check_every = D.check_every ? D.check_every : 1;
    D.trace = env_u64("TALLY_MODEL_TRACE", 0) != 0;
    D.hist = xrealloc(NULL, HIST_MAX * sizeof(*D.hist));
    rng_state = D.seed;
    printf("seed=%" PRIu64 " steps=%" PRIu64 "\n", D.seed, D.steps_total);

    struct ledger_options opts = {.flags = LEDGER_OPEN_NOSYNC};
    tl_open_opts(&D.t, T0_MS, &opts);
    m_init(0);
    pick_index();
    m_begin_batch(T0_MS);
    D.n = 0;
    setup_forest();
    for (size_t i = 0; i < D.n; i++) {
        D.exp[i] = m_apply(&D.cmds[i]);
        note_command(&D.cmds[i], &D.exp[i]);
        REQUIRE(D.exp[i].status == LEDGER_OK);
    }
    D.step += D.n;
    setup_accounts = M.n_acct;
    apply_batch(T0_MS);
    D.batch++;
    check_batch_results();
    check_state();

    while (D.step < D.steps_total) {
        if (rng_chance(5)) {
            apply_garbage();
        }
        int64_t stamp = next_stamp();
        pick_index();
        /* Expiry runs before the commands are drawn, so targets see the batch's state. */
        S.expired += m_begin_batch(stamp);
        uint64_t left = D.steps_total - D.step;
        D.n = (size_t)rng_range(1, BATCH_MAX);
        D.n = D.n < left ? D.n : (size_t)left;
        for (size_t i = 0; i < D.n; i++) {
            D.cmds[i] = gen_command();
            D.exp[i] = m_apply(&D.cmds[i]);
            note_command(&D.cmds[i], &D.exp[i]);
        }
        D.step += D.n;
        if (D.trace) {
            print_batch(false);
        }
        apply_batch(stamp);
        D.batch++;
        S.batches++;
        if (D.trace) {
            print_batch(true);
        }
        check_batch_results();
        check_state();
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    print_stats((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    tl_close(&D.t);
    free(D.hist);
    m_free();
}

int main(int argc, char **argv)
{
    TEST_MAIN_BEGIN;
    seed_arg = argc > 1 ? strtoull(argv[1], NULL, 0) : env_u64("TALLY_SEED", SEED_DEFAULT);
    TEST(model_matches_ledger);
    TEST_MAIN_END;
}
