/*
 * run.c: one random seed from start to verdict.
 *
 * Phases: set-up (servers, a leader, the account forest through the log), faults
 * (random proposals and random faults for the seed's number of steps, every step
 * checked), heal (every fault undone), liveness (a new batch is acknowledged and every
 * server applies the leader's whole log within a bound in fixture time), verdict
 * (replicas converged, every acknowledged grant on every replica). The run's digest
 * mixes everything observable, so two runs of one seed can be compared.
 */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>

#define LIVENESS_MS 60000u /* fixture time allowed for a healed cluster to converge */

static void fault_phase(struct sim *s, unsigned steps)
{
    for (unsigned k = 0; k < steps && !s->failed; k++) {
        if (sim_rng_chance(&s->rng, s->cfg.propose_per_mille, 1000)) {
            sim_propose_random(s);
        }
        if (sim_rng_chance(&s->rng, s->cfg.fault_per_mille, 1000)) {
            sim_random_fault(s);
        }
        sim_step(s);
    }
}

/* After healing: a batch is acknowledged, then every server applies the leader's log. */
static void liveness_phase(struct sim *s)
{
    if (sim_propose_until_acked(s, LIVENESS_MS) != 0) {
        sim_fail(s, "check=liveness: no batch acknowledged within %u ms after healing",
                 LIVENESS_MS);
        return;
    }
    unsigned leader = sim_leader(s);
    if (leader == s->n) {
        sim_fail(s, "check=liveness: leader lost right after an acknowledgement");
        return;
    }
    if (!sim_wait_all_applied(s, leader, LIVENESS_MS)) {
        for (unsigned i = 0; i < s->n && !s->failed; i++) {
            struct raft *r = raft_fixture_get(&s->fx, i);
            if (raft_last_applied(r) < s->wait_index) {
                sim_fail(s, "check=liveness: server %u (%s, term %llu) applied %llu of %llu", i,
                         raft_state_name(raft_state(r)), (unsigned long long)r->current_term,
                         (unsigned long long)raft_last_applied(r),
                         (unsigned long long)s->wait_index);
            }
        }
    }
}

/* Run the phases on an opened sim. */
static void run_phases(struct sim *s, unsigned steps)
{
    if (sim_setup_accounts(s) != 0) {
        return;
    }
    fault_phase(s, steps);
    if (s->failed) {
        return;
    }
    sim_heal(s);
    liveness_phase(s);
    if (s->failed) {
        return;
    }
    sim_check_converged(s);
    sim_check_grants(s);
}

void sim_config_apply(struct sim_config *c, const struct sim_options *o)
{
    c->verbose = o->verbose >= 1;
    c->trace_raft = o->verbose >= 2;
    c->allow_misattributed_acks = o->allow_misattributed_acks;
    c->hostile = o->hostile;
    c->snapshots = o->hostile;
    if (o->steps > 0) {
        c->steps = o->steps;
    }
}

bool sim_run_seed(uint64_t seed, const struct sim_options *o, struct sim_stats *total,
                  uint64_t *digest)
{
    struct sim_config cfg;
    sim_config_from_seed(&cfg, seed);
    sim_config_apply(&cfg, o);
    struct sim *s = malloc(sizeof(*s));
    if (s == NULL) {
        fprintf(stderr, "seed=%llu check=oom\n", (unsigned long long)seed);
        return false;
    }
    if (cfg.verbose) {
        printf("seed=%llu servers=%u steps=%u election_timeout=%u pre_vote=%d snapshot=%u/%u "
               "retention=%lld\n",
               (unsigned long long)seed, cfg.n_servers, cfg.steps, cfg.election_timeout_ms,
               cfg.pre_vote, cfg.snapshot_threshold, cfg.snapshot_trailing,
               (long long)cfg.retention_ms);
    }
    if (sim_open(s, &cfg) == 0) {
        run_phases(s, cfg.steps);
    }
    bool ok = !s->failed;
    for (const char *c = s->failure; *c != '\0'; c++) {
        sim_digest(s, (uint8_t)*c);
    }
    if (!ok) {
        printf("seed=%llu FAIL %s (replay: tally-sim --seed %llu -v)\n", (unsigned long long)seed,
               s->failure, (unsigned long long)seed);
    }
    sim_close(s);
    s->stats.seeds = 1;
    sim_stats_add(total, &s->stats);
    if (digest != NULL) {
        *digest = s->digest;
    }
    free(s);
    return ok;
}
