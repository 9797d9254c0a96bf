/*
 * main.c: tally-sim's command line.
 *
 *   tally-sim --seed N [-v|-vv]        replay one seed (prints its digest); -v traces
 *                                      faults and leaders, -vv also libraft's trace
 *   tally-sim --seeds N [--first S]    run seeds S .. S+N-1 and print a summary
 *   tally-sim --determinism N [--first S]   run each seed twice, digests must match
 *   tally-sim --scenario figure8|leader-disk-fault|snapshot-install
 *   tally-sim --scenario clock-steps [--seeds N] [--first S]   (40 seeds from 1 unless told)
 *
 * Knobs (the only environment read): TALLY_SIM_STEPS overrides the fault-phase steps
 * of every seed; TALLY_SIM_VERBOSE=1 (or 2) is -v (or -vv);
 * TALLY_SIM_ALLOW_MISATTRIBUTED_ACKS=1 counts instead of failing on apply callbacks
 * that carry another entry's results (a known raft/fsm.c bug; the other checks still
 * run); TALLY_SIM_HOSTILE=1 adds the faults libraft 0.22.1 or its fixture is known not
 * to survive (any I/O error of any server: double free or a leader that never commits
 * again; small snapshot thresholds: a NULL dereference when a snapshot is taken while
 * one is installed, a heap overflow in the fixture's truncate after an install; disks
 * that get faster, so that the fixture completes a server's writes out of order: the
 * server miscounts its pending writes and stays follower, rejecting every vote). A
 * crash prints the seed before the process dies.
 *
 * This file is also the one translation unit that includes the test harness
 * (tests/lib/test.h, through ledger_testlib.h): its counters end the run with the
 * "N passed, M failed" line CI reads, and its builders give the request ids and key
 * hashes the workload uses. The wall clock is read here only to report seconds.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */
#endif

#include "ledger_testlib.h"
#include "sim.h"

#include <signal.h>
#include <time.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

static struct sim_stats total;
static struct sim_options opts;

void sim_request_id(uint8_t id[LEDGER_REQUEST_ID_SIZE], uint64_t n);
void sim_key_hash(unsigned key, uint8_t out[LEDGER_KEY_HASH_SIZE]);

void sim_request_id(uint8_t id[LEDGER_REQUEST_ID_SIZE], uint64_t n)
{
    tl_id(id, n);
}

void sim_key_hash(unsigned key, uint8_t out[LEDGER_KEY_HASH_SIZE])
{
    char secret[32];
    snprintf(secret, sizeof(secret), "sk-sim-key-%u", key);
    tl_key_hash(secret, out);
}

/* What is running, for the crash report (a crash inside libraft is a failure too). */
static volatile sig_atomic_t crash_seed_set;
static volatile uint64_t crash_seed;
static const char *volatile crash_scenario;

static void put(const char *text)
{
    if (write(STDOUT_FILENO, text, strlen(text)) < 0) {
        /* nothing more to do in a dying process */
    }
}

/* Async-signal-safe: no stdio. */
static void report_crash(void)
{
    char digits[24];
    int d = sizeof(digits) - 1;
    uint64_t v = crash_seed;
    digits[d] = '\0';
    do {
        digits[--d] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0 && d > 0);
    if (crash_seed_set) {
        put("seed=");
        put(digits + d);
        put(" FAIL check=crash: the process died (replay: tally-sim --seed ");
        put(digits + d);
        put(" -vv)\n");
    } else if (crash_scenario != NULL) {
        put("scenario=");
        put(crash_scenario);
        put(" FAIL check=crash: the process died\n");
    }
}

static void on_crash(int sig)
{
    report_crash();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Print the seed when the process dies (under ASan: after its report). */
static void install_crash_report(void)
{
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_set_death_callback(report_crash);
#else
    signal(SIGSEGV, on_crash);
    signal(SIGBUS, on_crash);
    signal(SIGFPE, on_crash);
#endif
    signal(SIGABRT, on_crash);
}

static bool run_seed(uint64_t seed, uint64_t *digest)
{
    crash_seed = seed;
    crash_seed_set = 1;
    bool ok = sim_run_seed(seed, &opts, &total, digest);
    crash_seed_set = 0;
    return ok;
}

static double seconds_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void print_summary(const struct sim_stats *st, double seconds)
{
    printf("sim: seeds=%llu steps=%llu proposed=%llu rejected=%llu acked_batches=%llu "
           "acked_cmds=%llu failed_batches=%llu grants=%llu denials=%llu replays=%llu "
           "restores=%llu hash_checks=%llu grants_verified=%llu misattributed_acks=%llu "
           "gave_up=%llu clock_steps=%llu\n",
           (unsigned long long)st->seeds, (unsigned long long)st->steps,
           (unsigned long long)st->proposed, (unsigned long long)st->rejected,
           (unsigned long long)st->acked, (unsigned long long)st->acked_cmds,
           (unsigned long long)st->failed, (unsigned long long)st->grants,
           (unsigned long long)st->denials, (unsigned long long)st->replays,
           (unsigned long long)st->restores, (unsigned long long)st->hash_checks,
           (unsigned long long)st->grants_verified, (unsigned long long)st->misattributed,
           (unsigned long long)st->gave_up, (unsigned long long)st->clock_steps);
    printf("sim: faults");
    for (int k = 0; k < SIM_F_MAX; k++) {
        printf(" %s=%llu", sim_fault_name(k), (unsigned long long)st->faults[k]);
    }
    printf("\nsim: violations=%llu seconds=%.2f\n", (unsigned long long)st->violations, seconds);
}

static unsigned env_unsigned(const char *name)
{
    const char *v = getenv(name);
    return v != NULL ? (unsigned)strtoul(v, NULL, 10) : 0;
}

static void count(bool ok)
{
    if (ok) {
        test_passed++;
    } else {
        test_failed++;
    }
}

static void run_seeds(uint64_t first, uint64_t n)
{
    for (uint64_t seed = first; seed < first + n; seed++) {
        count(run_seed(seed, NULL));
    }
}

static void run_one(uint64_t seed)
{
    uint64_t digest = 0;
    bool ok = run_seed(seed, &digest);
    printf("seed=%llu %s digest=%016llx\n", (unsigned long long)seed, ok ? "ok" : "FAIL",
           (unsigned long long)digest);
    count(ok);
}

/* Each seed twice: the outcome and the digest (everything observable) must be equal.
 * A seed that fails the same way twice still replays exactly. */
static void run_determinism(uint64_t first, uint64_t n)
{
    for (uint64_t seed = first; seed < first + n; seed++) {
        uint64_t d1 = 0, d2 = 0;
        bool ok1 = run_seed(seed, &d1);
        bool ok2 = run_seed(seed, &d2);
        if (d1 != d2 || ok1 != ok2) {
            printf("seed=%llu FAIL check=determinism: digests %016llx and %016llx\n",
                   (unsigned long long)seed, (unsigned long long)d1, (unsigned long long)d2);
        }
        count(ok1 == ok2 && d1 == d2);
    }
}

static void figure8(void)
{
    crash_scenario = "figure8";
    CHECK(sim_scenario_figure8(&opts, &total));
}

static void leader_disk_fault(void)
{
    crash_scenario = "leader-disk-fault";
    CHECK(sim_scenario_leader_disk_fault(&opts, &total));
}

static void snapshot_install(void)
{
    crash_scenario = "snapshot-install";
    CHECK(sim_scenario_snapshot_install(&opts, &total));
}

#define CLOCK_STEPS_SEEDS 40
static uint64_t clock_first = 1, clock_seeds = CLOCK_STEPS_SEEDS;

static void clock_steps(void)
{
    crash_scenario = "clock-steps";
    CHECK(sim_scenario_clock_steps(&opts, &total, clock_first, clock_seeds));
}

static int usage(void)
{
    fprintf(stderr, "usage: tally-sim --seed N [-v|-vv] | --seeds N [--first S] |\n"
                    "       --determinism N [--first S] |\n"
                    "       --scenario figure8|leader-disk-fault|snapshot-install |\n"
                    "       --scenario clock-steps [--seeds N] [--first S]\n");
    return 2;
}

int main(int argc, char **argv)
{
    TEST_MAIN_BEGIN;
    install_crash_report();
    uint64_t seed = 0, n = 0, first = 1;
    const char *mode = NULL, *scenario = NULL;
    opts.verbose = (int)env_unsigned("TALLY_SIM_VERBOSE");
    opts.steps = env_unsigned("TALLY_SIM_STEPS");
    opts.allow_misattributed_acks = env_unsigned("TALLY_SIM_ALLOW_MISATTRIBUTED_ACKS") != 0;
    opts.hostile = env_unsigned("TALLY_SIM_HOSTILE") != 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(a, "-v") == 0 || strcmp(a, "-vv") == 0) {
            opts.verbose = (int)strlen(a) - 1;
        } else if (strcmp(a, "--first") == 0 && has_value) {
            first = strtoull(argv[++i], NULL, 0);
        } else if ((strcmp(a, "--seed") == 0 || strcmp(a, "--seeds") == 0 ||
                    strcmp(a, "--determinism") == 0) &&
                   has_value) {
            if (scenario == NULL) { /* with --scenario: how many seeds it runs */
                mode = a;
            }
            seed = n = strtoull(argv[++i], NULL, 0);
        } else if (strcmp(a, "--scenario") == 0 && has_value) {
            mode = a;
            scenario = argv[++i];
        } else {
            return usage();
        }
    }
    if (mode == NULL) {
        return usage();
    }
    double t0 = seconds_now();
    if (strcmp(mode, "--seed") == 0) {
        run_one(seed);
    } else if (strcmp(mode, "--seeds") == 0) {
        run_seeds(first, n);
    } else if (strcmp(mode, "--determinism") == 0) {
        run_determinism(first, n);
    } else if (strcmp(scenario, "figure8") == 0) {
        TEST(figure8);
    } else if (strcmp(scenario, "leader-disk-fault") == 0) {
        TEST(leader_disk_fault);
    } else if (strcmp(scenario, "snapshot-install") == 0) {
        TEST(snapshot_install);
    } else if (strcmp(scenario, "clock-steps") == 0) {
        clock_first = first;
        clock_seeds = n > 0 ? n : CLOCK_STEPS_SEEDS;
        TEST(clock_steps);
    } else {
        return usage();
    }
    print_summary(&total, seconds_now() - t0);
    TEST_MAIN_END;
}
