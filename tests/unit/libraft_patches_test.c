/*
 * libraft_patches_test.c: regression tests for the fixes tally applies to libraft 0.22.1
 * (third_party/libraft/patches/).
 *
 * Each test drives libraft's own deterministic raft_fixture (in-memory I/O, fixture time
 * only) into the state its patch is about, then asserts what the patched library does.
 * The scenarios are forced, not hoped for: before asserting, each test REQUIREs that it
 * reached the state the bug needs (a configuration change delivered behind other new
 * entries; an InstallSnapshot held back by the follower's own snapshot; a snapshot
 * decided on while a newer one was being stored), so a change in libraft's timing shows
 * as a failed precondition instead of a vacuous pass.
 *
 * Against Debian's unpatched libraft0 0.22.1 the first test fails its assertions and the
 * others crash inside libraft (the last two with the double frees patch 0005 removes);
 * those run in a child process so that a crash is reported as a failure of that test.
 * (0004's test reads libraft's private progress.h, which only the source tree has.)
 * 0006's use of a freed address shows only under AddressSanitizer: the fixture's own send
 * never reads the address, so the test wraps it with one that does, as raft_uv's does.
 *
 * Patch 0007 is about bytes from the network, not about the fixture: its tests run a real
 * raft_uv_tcp listener on a loopback port of a private uv loop and send it handshakes over
 * a plain socket. Unpatched, the unterminated address overflows the heap (an ASan report)
 * and reaches the accept callback; an oversized length is allocated and waited for.
 */
#include "test.h"

#include <raft.h>
#include <raft/fixture.h>

#include "progress.h"    /* libraft's private header: a leader's per-follower progress */
#include "uv_encoding.h" /* libraft's private header: the peer message decoder */
#include <raft/uv.h>
#include <uv.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <stdbool.h>
#include <stdint.h>
#include <sys/wait.h>

#define N_SERVERS 3
#define STEP_BOUND_MS 3000 /* fixture time any single wait may take */

/* ---- A counter FSM: commands are 8-byte numbers, the state is their count and sum. ---- */

struct counter {
    uint64_t n_applied;
    uint64_t sum;
    unsigned n_restores;
};

static int counter_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    struct counter *c = fsm->data;
    uint64_t v;
    if (buf->len != sizeof v) {
        return RAFT_MALFORMED;
    }
    memcpy(&v, buf->base, sizeof v);
    c->n_applied++;
    c->sum += v;
    *result = NULL;
    return 0;
}

/* One buffer of 16 bytes; libraft frees both the buffer and the array (no finalize). */
static int counter_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct counter *c = fsm->data;
    *bufs = raft_malloc(sizeof **bufs);
    if (*bufs == NULL) {
        return RAFT_NOMEM;
    }
    (*bufs)[0].len = 2 * sizeof(uint64_t);
    (*bufs)[0].base = raft_malloc((*bufs)[0].len);
    if ((*bufs)[0].base == NULL) {
        raft_free(*bufs);
        return RAFT_NOMEM;
    }
    memcpy((*bufs)[0].base, &c->n_applied, sizeof(uint64_t));
    memcpy((uint8_t *)(*bufs)[0].base + sizeof(uint64_t), &c->sum, sizeof(uint64_t));
    *n_bufs = 1;
    return 0;
}

/* Takes ownership of buf->base on success. */
static int counter_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct counter *c = fsm->data;
    if (buf->len != 2 * sizeof(uint64_t)) {
        return RAFT_MALFORMED;
    }
    memcpy(&c->n_applied, buf->base, sizeof(uint64_t));
    memcpy(&c->sum, (uint8_t *)buf->base + sizeof(uint64_t), sizeof(uint64_t));
    c->n_restores++;
    raft_free(buf->base);
    return 0;
}

/* ---- The cluster: N_SERVERS voters (ids 1..N_SERVERS), server 0 elected leader. ---- */

/* The fixture's own tracer prints every diagnostic; it is kept only with LIBRAFT_TRACE set. */
static void quiet_emit(struct raft_tracer *t, int type, const void *data)
{
    (void)t;
    (void)type;
    (void)data;
}

static struct raft_tracer quiet_tracer = {.impl = NULL, .version = 2, .emit = quiet_emit};

struct cluster {
    struct raft_fixture f;
    struct raft_fsm fsms[N_SERVERS];
    struct counter counters[N_SERVERS];
    struct raft_apply applies[32]; /* requests stay alive until the fixture is closed */
    unsigned n_applies;
    uint64_t next_value;
};

static void cluster_start(struct cluster *c)
{
    memset(c, 0, sizeof *c);
    REQUIRE(raft_fixture_init(&c->f) == 0);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        c->fsms[i] = (struct raft_fsm){.version = 1,
                                       .data = &c->counters[i],
                                       .apply = counter_apply,
                                       .snapshot = counter_snapshot,
                                       .restore = counter_restore};
        REQUIRE(raft_fixture_grow(&c->f, &c->fsms[i]) == 0);
        if (getenv("LIBRAFT_TRACE") == NULL) {
            raft_fixture_get(&c->f, i)->tracer = &quiet_tracer;
        }
    }
    struct raft_configuration conf;
    REQUIRE(raft_fixture_configuration(&c->f, N_SERVERS, &conf) == 0);
    int rv = raft_fixture_bootstrap(&c->f, &conf);
    raft_configuration_close(&conf);
    REQUIRE(rv == 0);
    REQUIRE(raft_fixture_start(&c->f) == 0);
    raft_fixture_elect(&c->f, 0);
    REQUIRE(raft_state(raft_fixture_get(&c->f, 0)) == RAFT_LEADER);
}

static void cluster_close(struct cluster *c)
{
    raft_fixture_close(&c->f);
}

static void apply_done(struct raft_apply *req, int status, void *result)
{
    (void)req;
    (void)status;
    (void)result;
}

/* Submit one command on the leader (server 0); returns its log index. */
static raft_index submit(struct cluster *c)
{
    REQUIRE(c->n_applies < sizeof c->applies / sizeof c->applies[0]);
    struct raft *leader = raft_fixture_get(&c->f, 0);
    struct raft_buffer buf = {.base = raft_malloc(sizeof(uint64_t)), .len = sizeof(uint64_t)};
    REQUIRE(buf.base != NULL);
    uint64_t v = ++c->next_value;
    memcpy(buf.base, &v, sizeof v);
    int rv = raft_apply(leader, &c->applies[c->n_applies++], &buf, 1, apply_done);
    if (rv != 0) {
        raft_free(buf.base);
    }
    REQUIRE(rv == 0);
    return raft_last_index(leader);
}

static void disconnect_both_ways(struct cluster *c, unsigned i, unsigned j)
{
    raft_fixture_disconnect(&c->f, i, j);
    raft_fixture_disconnect(&c->f, j, i);
}

static void reconnect_both_ways(struct cluster *c, unsigned i, unsigned j)
{
    raft_fixture_reconnect(&c->f, i, j);
    raft_fixture_reconnect(&c->f, j, i);
}

/* ---- 0001: a configuration change that is not the first new entry of a batch. ---- */

/* How server 2's last log index moved: the first step that took it past `from`. */
static struct {
    raft_index from;
    raft_index jumped_to; /* 0 until the step that took it past `from` */
} watch;

static void watch_follower_log(struct raft_fixture *f, struct raft_fixture_event *event)
{
    (void)event;
    raft_index last = raft_last_index(raft_fixture_get(f, 2));
    if (watch.jumped_to == 0 && last > watch.from) {
        watch.jumped_to = last;
    }
}

/*
 * Follower 2 misses three commands and a raft_add of server 4, then receives all four in
 * one AppendEntries, the change as its fourth new entry. Unpatched, the follower records
 * the change as uncommitted at the index of the first new entry; the commit of the
 * change never matches it, so the follower's committed configuration stays the bootstrap
 * one and its uncommitted index stays set forever.
 */
static void follower_commits_config_change_not_first_in_batch(void)
{
    static struct cluster c;
    cluster_start(&c);
    struct raft *leader = raft_fixture_get(&c.f, 0);
    struct raft *follower = raft_fixture_get(&c.f, 2);
    raft_term term = leader->current_term;

    REQUIRE(raft_fixture_step_until_applied(&c.f, N_SERVERS, submit(&c), STEP_BOUND_MS));
    raft_index base = raft_last_index(follower);
    REQUIRE(base == raft_last_index(leader));

    disconnect_both_ways(&c, 0, 2);
    submit(&c);
    submit(&c);
    submit(&c);
    struct raft_change add;
    REQUIRE(raft_add(leader, &add, 4, "4", NULL) == 0);
    raft_index change_index = raft_last_index(leader);
    REQUIRE(change_index == base + 4);
    REQUIRE(raft_fixture_step_until_applied(&c.f, 0, change_index, STEP_BOUND_MS));
    REQUIRE(leader->configuration_committed_index == change_index);
    REQUIRE(raft_last_index(follower) == base);

    watch.from = base;
    watch.jumped_to = 0;
    raft_fixture_hook(&c.f, watch_follower_log);
    reconnect_both_ways(&c, 0, 2);
    REQUIRE(raft_fixture_step_until_applied(&c.f, 2, change_index, STEP_BOUND_MS));
    raft_fixture_hook(&c.f, NULL);

    /* Preconditions: one leader throughout, and the change reached the follower in one
     * message together with the three commands before it. */
    REQUIRE(raft_state(leader) == RAFT_LEADER && leader->current_term == term);
    REQUIRE(watch.jumped_to == change_index);

    CHECK_EQ_INT(follower->configuration_committed_index, change_index);
    CHECK_EQ_INT(follower->configuration_uncommitted_index, 0);
    CHECK_EQ_INT(follower->configuration_committed.n, 4);
    CHECK_EQ_INT(follower->configuration.n, 4);

    cluster_close(&c);
}

/* ---- 0002: an InstallSnapshot that waits for the follower's own snapshot. ---- */

static bool own_snapshot_taking(struct raft_fixture *f, void *arg)
{
    (void)arg;
    return raft_fixture_get(f, 2)->legacy.snapshot_taking;
}

static bool log_reaches(struct raft_fixture *f, void *arg)
{
    return raft_last_index(raft_fixture_get(f, 2)) >= *(raft_index *)arg;
}

static bool leader_compacted_past(struct raft_fixture *f, void *arg)
{
    struct raft *leader = raft_fixture_get(f, 0);
    return leader->trail.snapshot.index > *(raft_index *)arg && !leader->legacy.snapshot_taking;
}

static bool install_pending_or_own_done(struct raft_fixture *f, void *arg)
{
    (void)arg;
    struct raft *r = raft_fixture_get(f, 2);
    return r->legacy.snapshot_pending != NULL || !r->legacy.snapshot_taking;
}

/*
 * Follower 2 starts its own snapshot with a slow disk (1 s), is cut off while the leader
 * moves on and compacts its log past the follower's, and on reconnecting is sent an
 * InstallSnapshot, which libraft holds as pending until the follower's own snapshot is
 * stored. Unpatched, finishing the own snapshot clears the pending pointer before reading
 * it and persists a NULL request: a segfault.
 */
static void install_snapshot_waits_for_own_snapshot_scenario(void)
{
    static struct cluster c;
    cluster_start(&c);
    struct raft *leader = raft_fixture_get(&c.f, 0);
    struct raft *follower = raft_fixture_get(&c.f, 2);
    raft_term term = leader->current_term;

    submit(&c);
    submit(&c);
    REQUIRE(raft_fixture_step_until_applied(&c.f, N_SERVERS, submit(&c), STEP_BOUND_MS));
    raft_index a = raft_last_index(leader);

    /* The follower snapshots at the next commit; the leader and server 1 only after 8
     * more, keeping 2 entries, which leaves the follower's whole log behind. */
    raft_set_snapshot_threshold(follower, (unsigned)a + 1);
    for (unsigned i = 0; i < 2; i++) {
        raft_set_snapshot_threshold(raft_fixture_get(&c.f, i), (unsigned)a + 8);
        raft_set_snapshot_trailing(raft_fixture_get(&c.f, i), 2);
    }

    /* Entry a+1 reaches the follower at normal disk speed; only the snapshot its commit
     * then triggers gets the slow disk. */
    raft_index next = submit(&c);
    REQUIRE(raft_fixture_step_until(&c.f, log_reaches, &next, STEP_BOUND_MS));
    REQUIRE(follower->commit_index < next && !follower->legacy.snapshot_taking);
    raft_fixture_set_disk_latency(&c.f, 2, 1000);
    REQUIRE(raft_fixture_step_until(&c.f, own_snapshot_taking, NULL, STEP_BOUND_MS));
    raft_fixture_set_disk_latency(&c.f, 2, 10);

    disconnect_both_ways(&c, 0, 2);
    raft_index last = 0;
    for (int i = 0; i < 10; i++) {
        last = submit(&c);
    }
    REQUIRE(raft_fixture_step_until_applied(&c.f, 0, last, STEP_BOUND_MS));
    raft_index keep_above = next + 2; /* with 2 trailing entries, next is gone */
    REQUIRE(raft_fixture_step_until(&c.f, leader_compacted_past, &keep_above, STEP_BOUND_MS));
    REQUIRE(follower->legacy.snapshot_taking);

    reconnect_both_ways(&c, 0, 2);
    REQUIRE(raft_fixture_step_until(&c.f, install_pending_or_own_done, NULL, STEP_BOUND_MS));
    /* Precondition: the leader's InstallSnapshot arrived while the own snapshot was being
     * stored, and is waiting for it. */
    REQUIRE(follower->legacy.snapshot_taking && follower->legacy.snapshot_pending != NULL);

    /* Unpatched, the follower crashes in here when its own snapshot completes. */
    REQUIRE(raft_fixture_step_until_applied(&c.f, 2, last, STEP_BOUND_MS));

    CHECK(follower->legacy.snapshot_pending == NULL);
    CHECK(!follower->legacy.snapshot_taking);
    /* Its log starts at the leader's snapshot, not at its own older one (which would
     * leave the log pointing at an index it no longer holds, term 0). */
    CHECK(follower->trail.snapshot.index > next);
    CHECK(follower->trail.snapshot.term != 0);
    CHECK_EQ_INT(c.counters[2].n_restores, 1);
    CHECK_EQ_INT(c.counters[2].n_applied, c.counters[0].n_applied);
    CHECK_EQ_INT(c.counters[2].sum, c.counters[0].sum);
    CHECK_EQ_INT(raft_last_applied(follower), raft_last_applied(leader));
    CHECK(raft_state(leader) == RAFT_LEADER && leader->current_term == term);
    CHECK(raft_state(follower) == RAFT_FOLLOWER);

    cluster_close(&c);
}

/* ---- 0004: an InstallSnapshot whose snapshot was replaced on disk while loading. ---- */

/* The index of the snapshot the leader's raft first decided to send to server 2. */
static struct {
    unsigned slot; /* server 2's position in the leader's configuration */
    raft_index decided;
} sent;

static void watch_snapshot_decision(struct raft_fixture *f, struct raft_fixture_event *event)
{
    (void)event;
    struct raft *leader = raft_fixture_get(f, 0);
    if (sent.decided != 0 || raft_state(leader) != RAFT_LEADER) {
        return;
    }
    const struct raft_progress *p = &leader->leader_state.progress[sent.slot];
    if (p->state == PROGRESS__SNAPSHOT) {
        sent.decided = p->snapshot.index;
    }
}

static bool leader_taking_snapshot(struct raft_fixture *f, void *arg)
{
    (void)arg;
    return raft_fixture_get(f, 0)->legacy.snapshot_taking;
}

static void isolate(struct cluster *c, unsigned i)
{
    for (unsigned j = 0; j < N_SERVERS; j++) {
        if (j != i) {
            disconnect_both_ways(c, i, j);
        }
    }
}

static void rejoin(struct cluster *c, unsigned i)
{
    for (unsigned j = 0; j < N_SERVERS; j++) {
        if (j != i) {
            reconnect_both_ways(c, i, j);
        }
    }
}

/* Cut server 2 off, commit four commands on the leader without it, and have the leader
 * compact its log past `base` + 2, which server 2 then lacks. */
static void compact_past_cut_off_follower(struct cluster *c, raft_index base)
{
    struct raft *leader = raft_fixture_get(&c->f, 0);
    isolate(c, 2);
    raft_index last = 0;
    for (int i = 0; i < 4; i++) {
        last = submit(c);
    }
    REQUIRE(raft_fixture_step_until_applied(&c->f, 0, last, STEP_BOUND_MS));
    raft_set_snapshot_threshold(leader, 1);
    submit(c);
    raft_index keep_above = base + 2;
    REQUIRE(raft_fixture_step_until(&c->f, leader_compacted_past, &keep_above, STEP_BOUND_MS));
    raft_set_snapshot_threshold(leader, 1000);
}

/* Server `id`'s position in the leader's configuration (and progress array). */
static unsigned progress_slot(struct raft *leader, raft_id id)
{
    for (unsigned i = 0; i < leader->configuration.n; i++) {
        if (leader->configuration.servers[i].id == id) {
            return i;
        }
    }
    REQUIRE(false);
    return 0;
}

/*
 * The leader compacts to a snapshot S1 in term t1, is re-elected in term t2, and starts a
 * snapshot S2 in t2 on a slow disk (500 ms). Server 2, cut off since before S1, then
 * rejoins: the leader's raft decides to send S1, but by the time the load completes S2
 * is stored, and the load returns S2. Unpatched, the message carries S2's index with
 * S1's term; the follower installs a snapshot whose term is wrong, the leader's next
 * AppendEntries conflicts with it at a committed index, and the follower shuts down
 * (freeing the entries twice).
 */
static void install_snapshot_replaced_while_loading_scenario(void)
{
    static struct cluster c;
    cluster_start(&c);
    struct raft *leader = raft_fixture_get(&c.f, 0);
    struct raft *follower = raft_fixture_get(&c.f, 2);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        /* An isolated server must not raise its term and depose the leader on rejoining. */
        raft_set_pre_vote(raft_fixture_get(&c.f, i), true);
        raft_set_snapshot_trailing(raft_fixture_get(&c.f, i), 2);
        raft_set_snapshot_threshold(raft_fixture_get(&c.f, i), 1000);
    }
    REQUIRE(raft_fixture_step_until_applied(&c.f, N_SERVERS, submit(&c), STEP_BOUND_MS));
    raft_index base = raft_last_index(follower);

    /* S1, in the first term, covering entries server 2 never got. */
    compact_past_cut_off_follower(&c, base);
    raft_index last = 0;
    raft_index s1_index = leader->trail.snapshot.index;
    raft_term t1 = leader->trail.snapshot.term;

    /* The same leader, a new term. */
    raft_fixture_depose(&c.f);
    raft_fixture_elect(&c.f, 0);
    raft_term t2 = leader->current_term;
    REQUIRE(t2 > t1);
    for (int i = 0; i < 3; i++) {
        last = submit(&c);
    }
    REQUIRE(raft_fixture_step_until_applied(&c.f, 0, last, STEP_BOUND_MS));

    /* S2, in the new term, on a slow disk. */
    raft_fixture_set_disk_latency(&c.f, 0, 500);
    raft_set_snapshot_threshold(leader, 1);
    last = submit(&c);
    REQUIRE(raft_fixture_step_until(&c.f, leader_taking_snapshot, NULL, STEP_BOUND_MS));
    raft_set_snapshot_threshold(leader, 1000);
    raft_index s2_index = leader->commit_index;
    REQUIRE(s2_index > s1_index);

    sent.decided = 0;
    sent.slot = progress_slot(leader, follower->id);
    raft_fixture_hook(&c.f, watch_snapshot_decision);
    rejoin(&c, 2);
    /* Unpatched, the follower crashes in here. */
    bool caught_up = raft_fixture_step_until_applied(&c.f, 2, last, STEP_BOUND_MS);
    raft_fixture_hook(&c.f, NULL);

    /* Preconditions: raft decided on S1 while S2 was being stored, and the follower got
     * S2 (the newer snapshot on disk when the load completed). */
    REQUIRE(sent.decided == s1_index);
    REQUIRE(follower->trail.snapshot.index == s2_index);
    REQUIRE(raft_state(leader) == RAFT_LEADER && leader->current_term == t2);

    CHECK_EQ_INT(follower->trail.snapshot.term, t2);
    CHECK(caught_up);
    CHECK(raft_state(follower) == RAFT_FOLLOWER);
    CHECK_EQ_INT(raft_last_applied(follower), raft_last_applied(leader));
    CHECK_EQ_INT(c.counters[2].n_applied, c.counters[0].n_applied);
    CHECK_EQ_INT(c.counters[2].sum, c.counters[0].sum);

    cluster_close(&c);
}

/* ---- 0006: an InstallSnapshot whose address is freed while its snapshot loads. ---- */

/* The leader's io->send, wrapped: an InstallSnapshot's address is read as raft_uv reads it
 * (uvGetClient compares it with strcmp), which the fixture's own send never does. */
static struct {
    int (*send)(struct raft_io *io, struct raft_io_send *req, const struct raft_message *m,
                raft_io_send_cb cb);
    unsigned n_install_snapshots;
    char address[32];
} wrapped;

static int send_reading_address(struct raft_io *io, struct raft_io_send *req,
                                const struct raft_message *m, raft_io_send_cb cb)
{
    if (m->type == RAFT_INSTALL_SNAPSHOT) {
        wrapped.n_install_snapshots++;
        snprintf(wrapped.address, sizeof wrapped.address, "%s", m->server_address);
    }
    return wrapped.send(io, req, m, cb);
}

static bool install_snapshot_loading(struct raft_fixture *f, void *arg)
{
    struct raft *leader = raft_fixture_get(f, 0);
    unsigned slot = *(unsigned *)arg;
    return leader->leader_state.progress[slot].state == PROGRESS__SNAPSHOT &&
           wrapped.n_install_snapshots == 0;
}

static bool install_snapshot_sent(struct raft_fixture *f, void *arg)
{
    (void)f;
    (void)arg;
    return wrapped.n_install_snapshots > 0;
}

static void change_done(struct raft_change *req, int status)
{
    (void)req;
    (void)status;
}

/*
 * Server 2 is cut off while the leader compacts its log past it, so the leader decides to
 * send it a snapshot and starts loading one from a slow disk (200 ms). Meanwhile a
 * membership change (adding server 4) replaces the leader's configuration, freeing the one
 * the InstallSnapshot borrowed server 2's address from. Unpatched, the send reads the
 * freed address (an ASan heap-use-after-free); patched, the message has its own copy.
 */
static void install_snapshot_address_outlives_configuration_scenario(void)
{
    static struct cluster c;
    cluster_start(&c);
    struct raft *leader = raft_fixture_get(&c.f, 0);
    struct raft *follower = raft_fixture_get(&c.f, 2);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        raft_set_snapshot_trailing(raft_fixture_get(&c.f, i), 2);
        raft_set_snapshot_threshold(raft_fixture_get(&c.f, i), 1000);
    }
    REQUIRE(raft_fixture_step_until_applied(&c.f, N_SERVERS, submit(&c), STEP_BOUND_MS));
    raft_index base = raft_last_index(follower);
    unsigned slot = progress_slot(leader, follower->id);

    memset(&wrapped, 0, sizeof wrapped);
    wrapped.send = leader->io->send;
    leader->io->send = send_reading_address;
    raft_fixture_set_disk_latency(&c.f, 0, 200);
    compact_past_cut_off_follower(&c, base);

    /* Precondition: the snapshot for server 2 is loading and nothing was sent yet. */
    REQUIRE(raft_fixture_step_until(&c.f, install_snapshot_loading, &slot, STEP_BOUND_MS));
    static struct raft_change change;
    REQUIRE(raft_add(leader, &change, 4, "4", change_done) == 0);
    REQUIRE(leader->configuration.n == N_SERVERS + 1);

    /* Unpatched, ASan reports the read of the freed address in here. */
    CHECK(raft_fixture_step_until(&c.f, install_snapshot_sent, NULL, STEP_BOUND_MS));
    CHECK(strcmp(wrapped.address, "3") == 0);

    leader->io->send = wrapped.send;
    cluster_close(&c);
}

/* ---- 0005: a message that contradicts the log at a committed index. ---- */

/*
 * Follower 2's record of its last committed entry's term is altered, as a snapshot
 * installed with the wrong term (finding F, patch 0004) would leave it; the leader's next
 * AppendEntries then conflicts with it at a committed index, which raft rejects as
 * "should never happen". Unpatched, the follower frees the entries twice (a crash), or,
 * for a heartbeat, ignores the error and never catches up. Patched, it goes unavailable
 * with the reason in its errmsg, and the others go on.
 */
static void follower_gives_up_on_conflict_at_committed_index_scenario(void)
{
    static struct cluster c;
    cluster_start(&c);
    struct raft *leader = raft_fixture_get(&c.f, 0);
    struct raft *follower = raft_fixture_get(&c.f, 2);
    REQUIRE(raft_fixture_step_until_applied(&c.f, N_SERVERS, submit(&c), STEP_BOUND_MS));
    REQUIRE(follower->commit_index == raft_last_index(follower));

    struct raft_trail *t = &follower->trail;
    REQUIRE(t->back != t->front);
    unsigned last_record = (t->back + t->size - 1) % t->size;
    REQUIRE(t->records[last_record].index == raft_last_index(follower));
    t->records[last_record].term += 7;

    raft_index next = submit(&c);
    REQUIRE(raft_fixture_step_until_applied(&c.f, 1, next, STEP_BOUND_MS));
    CHECK(raft_fixture_step_until_state_is(&c.f, 2, RAFT_UNAVAILABLE, STEP_BOUND_MS));
    CHECK(strstr(raft_errmsg(follower), "append entries from server 1: conflicts with this "
                                        "server's log at a committed index") != NULL);
    CHECK(raft_last_applied(follower) < next);

    /* Nothing steps the follower any more; the other two carry on. */
    raft_fixture_step_until_elapsed(&c.f, 1000);
    CHECK(raft_state(follower) == RAFT_UNAVAILABLE);
    next = submit(&c);
    CHECK(raft_fixture_step_until_applied(&c.f, 1, next, STEP_BOUND_MS));
    CHECK(raft_state(leader) == RAFT_LEADER);

    cluster_close(&c);
}

/*
 * The leader's storage fails (every I/O request of server 0 fails from now on, as on a
 * full disk), and a command is submitted. Unpatched, libraft frees the command's buffer
 * before starting the write, raft_apply() returns the error, and the caller's free of
 * its buffer is a double free; and the leader, whose log can no longer be written, stays
 * leader and never commits again. Patched, raft_apply() fails with the buffer still the
 * caller's, the leader goes unavailable with the reason, and the others elect a leader
 * and go on.
 */
static bool another_leader(struct raft_fixture *f, void *arg)
{
    (void)arg;
    return raft_state(raft_fixture_get(f, 1)) == RAFT_LEADER ||
           raft_state(raft_fixture_get(f, 2)) == RAFT_LEADER;
}

static void leader_gives_up_when_its_log_cannot_be_written_scenario(void)
{
    static struct cluster c;
    cluster_start(&c);
    struct raft *leader = raft_fixture_get(&c.f, 0);
    REQUIRE(raft_fixture_step_until_applied(&c.f, N_SERVERS, submit(&c), STEP_BOUND_MS));

    raft_fixture_io_fault(&c.f, 0, 0, -1);
    static struct raft_apply req;
    uint64_t v = 42;
    struct raft_buffer buf = {.base = raft_malloc(sizeof v), .len = sizeof v};
    REQUIRE(buf.base != NULL);
    memcpy(buf.base, &v, sizeof v);
    int rv = raft_apply(leader, &req, &buf, 1, apply_done);
    CHECK(rv != 0);
    if (rv != 0) {
        raft_free(buf.base); /* the caller's, as raft_apply() promises on failure */
    }
    CHECK(raft_state(leader) == RAFT_UNAVAILABLE);
    CHECK(strstr(raft_errmsg(leader), "write entries") != NULL);

    /* The other two elect a leader among themselves and commit. */
    REQUIRE(raft_fixture_step_until(&c.f, another_leader, NULL, 10000));
    unsigned new_leader = raft_state(raft_fixture_get(&c.f, 1)) == RAFT_LEADER ? 1 : 2;
    struct raft *r = raft_fixture_get(&c.f, new_leader);
    static struct raft_apply req2;
    struct raft_buffer buf2 = {.base = raft_malloc(sizeof v), .len = sizeof v};
    REQUIRE(buf2.base != NULL);
    memcpy(buf2.base, &v, sizeof v);
    REQUIRE(raft_apply(r, &req2, &buf2, 1, apply_done) == 0);
    raft_index index = raft_last_index(r);
    CHECK(raft_fixture_step_until_applied(&c.f, 1, index, STEP_BOUND_MS));
    CHECK(raft_fixture_step_until_applied(&c.f, 2, index, STEP_BOUND_MS));
    CHECK(raft_state(leader) == RAFT_UNAVAILABLE);

    cluster_close(&c);
}

/* ---- 0007: the TCP transport's handshake from a stranger. ---- */

/*
 * A real raft_uv_tcp listener on a loopback port of a private uv loop, and a plain socket
 * that sends it handshake bytes. The accept callback copies the address as libraft's own
 * (uv_recv.c) does, with strlen: unpatched, an address without a NUL reaches it and the
 * copy reads past the buffer (an ASan report in the sanitizer build, and in any build an
 * accept that must not happen).
 */
enum handshake_outcome { HANDSHAKE_ACCEPTED, HANDSHAKE_CLOSED, HANDSHAKE_PENDING };

static struct {
    unsigned n_accepted;
    raft_id id;
    char address[64];
} accepted;

static void close_and_free(struct uv_handle_s *handle)
{
    raft_free(handle);
}

static void record_accept(struct raft_uv_transport *t, raft_id id, const char *address,
                          struct uv_stream_s *stream)
{
    (void)t;
    size_t len = strlen(address);
    accepted.n_accepted++;
    accepted.id = id;
    snprintf(accepted.address, sizeof accepted.address, "%.*s", (int)len, address);
    uv_close((struct uv_handle_s *)stream, close_and_free);
}

static void transport_closed(struct raft_uv_transport *t)
{
    (void)t;
}

/* A loopback port nothing listens on: the kernel's pick for a socket bound to port 0. */
static struct sockaddr_in free_loopback_port(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    REQUIRE(bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
    REQUIRE(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
    close(fd);
    return sin;
}

/* Send `len` bytes of `bytes` to a fresh listener and run its loop for up to a second:
 * ACCEPTED once the accept callback ran, CLOSED once the listener closed the connection,
 * PENDING if neither happened (the listener still waits for more). */
static enum handshake_outcome send_handshake(const void *bytes, size_t len)
{
    static uv_loop_t loop;
    static struct raft_uv_transport tr;
    memset(&accepted, 0, sizeof accepted);
    static char address[32];
    struct sockaddr_in sin = free_loopback_port();
    snprintf(address, sizeof address, "127.0.0.1:%d", ntohs(sin.sin_port));
    REQUIRE(uv_loop_init(&loop) == 0);
    tr = (struct raft_uv_transport){.version = 1};
    REQUIRE(raft_uv_tcp_init(&tr, &loop) == 0);
    REQUIRE(tr.init(&tr, 1, address) == 0);
    REQUIRE(tr.listen(&tr, record_accept) == 0);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    REQUIRE(connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
    REQUIRE(write(fd, bytes, len) == (ssize_t)len);

    enum handshake_outcome outcome = HANDSHAKE_PENDING;
    for (int i = 0; i < 1000 && outcome == HANDSHAKE_PENDING; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        char c;
        if (accepted.n_accepted > 0) {
            outcome = HANDSHAKE_ACCEPTED;
        } else if (recv(fd, &c, 1, MSG_DONTWAIT) == 0) {
            outcome = HANDSHAKE_CLOSED;
        } else {
            usleep(1000);
        }
    }
    close(fd);
    tr.close(&tr, transport_closed);
    uv_run(&loop, UV_RUN_DEFAULT);
    raft_uv_tcp_close(&tr);
    REQUIRE(uv_loop_close(&loop) == 0);
    return outcome;
}

/* A handshake as raft_uv_tcp's connect side writes it: three little-endian words
 * (protocol 1, the server id, the address length) and the address; returns its size. */
static size_t handshake(uint8_t *out, size_t out_max, raft_id id, uint64_t address_len,
                        const void *address, size_t address_bytes)
{
    uint64_t words[3] = {1, id, address_len};
    REQUIRE(sizeof words + address_bytes <= out_max);
    for (int w = 0; w < 3; w++) {
        for (int b = 0; b < 8; b++) {
            out[w * 8 + b] = (uint8_t)(words[w] >> (8 * b));
        }
    }
    memcpy(out + sizeof words, address, address_bytes);
    return sizeof words + address_bytes;
}

static void handshake_with_terminated_address_is_accepted(void)
{
    uint8_t buf[64];
    static const char address[16] = "127.0.0.1:9"; /* NUL-padded to 16 bytes */
    REQUIRE(send_handshake(buf, handshake(buf, sizeof buf, 2, 16, address, 16)) ==
            HANDSHAKE_ACCEPTED);
    CHECK(accepted.id == 2);
    CHECK(strcmp(accepted.address, "127.0.0.1:9") == 0);
}

/* The 32-byte handshake of the finding: an 8-byte address with no NUL. */
static void handshake_with_unterminated_address_is_closed_scenario(void)
{
    uint8_t buf[64];
    size_t len = handshake(buf, sizeof buf, 2, 8, "AAAAAAAA", 8);
    REQUIRE(len == 32);
    CHECK(send_handshake(buf, len) == HANDSHAKE_CLOSED);
    CHECK(accepted.n_accepted == 0);
}

/* An address length past the bound (or empty) closes the connection at once, before
 * anything is allocated for it; unpatched, a megabyte is allocated and waited for. */
static void handshake_with_oversized_address_is_closed(void)
{
    uint8_t buf[64];
    CHECK(send_handshake(buf, handshake(buf, sizeof buf, 2, 1u << 20, "", 0)) == HANDSHAKE_CLOSED);
    CHECK(send_handshake(buf, handshake(buf, sizeof buf, 2, 520, "", 0)) == HANDSHAKE_CLOSED);
    CHECK(send_handshake(buf, handshake(buf, sizeof buf, 2, 0, "", 0)) == HANDSHAKE_CLOSED);
    CHECK(accepted.n_accepted == 0);
}

/* ---- 0008: a peer's message header shorter than what its decoder reads. ---- */

/*
 * uvDecodeMessage() on headers in buffers of exactly their declared length, as uv_recv.c
 * allocates them. Unpatched, each of these is read past its end (an ASan report); the
 * AppendEntries whose one entry has an unknown type is a NULL dereference in any build.
 */
static int decode_header(uint8_t type, uint8_t version, const uint8_t *bytes, size_t len,
                         size_t *payload_len)
{
    uv_buf_t header = {.base = malloc(len), .len = len};
    REQUIRE(header.base != NULL);
    memcpy(header.base, bytes, len);
    struct raft_message message;
    int rv = uvDecodeMessage(type, version, &header, &message, payload_len);
    free(header.base);
    if (rv == 0 && type == RAFT_APPEND_ENTRIES) {
        raft_free(message.append_entries.entries);
    }
    if (rv == 0 && type == RAFT_INSTALL_SNAPSHOT) {
        raft_configuration_close(&message.install_snapshot.conf);
    }
    return rv;
}

static void put_words(uint8_t *out, const uint64_t *words, size_t n)
{
    for (size_t w = 0; w < n; w++) {
        for (int b = 0; b < 8; b++) {
            out[w * 8 + b] = (uint8_t)(words[w] >> (8 * b));
        }
    }
}

static void peer_message_shorter_than_its_fields_is_refused_scenario(void)
{
    uint8_t buf[128] = {0};
    size_t payload_len;

    /* A RequestVote of four words: the decoder reads a fifth (its flags). */
    put_words(buf, (const uint64_t[]){5, 2, 9, 4}, 4);
    CHECK(decode_header(RAFT_REQUEST_VOTE, 0, buf, 32, &payload_len) == RAFT_MALFORMED);
    CHECK(decode_header(RAFT_REQUEST_VOTE, 2, buf, 40, &payload_len) == 0);

    /* An AppendEntries whose batch header claims 3 entries and holds one. */
    put_words(buf, (const uint64_t[]){5, 9, 4, 9, 3, 5, 8}, 7);
    CHECK(decode_header(RAFT_APPEND_ENTRIES, 0, buf, 56, &payload_len) == RAFT_MALFORMED);
    /* The same with a count of 1 is whole; its 8-byte entry is the payload. */
    put_words(buf, (const uint64_t[]){5, 9, 4, 9, 1, 5, RAFT_COMMAND | (8ull << 32), 0}, 8);
    CHECK(decode_header(RAFT_APPEND_ENTRIES, 0, buf, 64, &payload_len) == 0);
    CHECK(payload_len == 8);
    /* An entry of 5 bytes is laid out padded to 8: the payload counts the padding. */
    put_words(buf, (const uint64_t[]){5, 9, 4, 9, 1, 5, RAFT_COMMAND | (5ull << 32), 0}, 8);
    CHECK(decode_header(RAFT_APPEND_ENTRIES, 0, buf, 64, &payload_len) == 0);
    CHECK(payload_len == 8);
    /* An entry of an unknown type: refused, and nothing counted for it. */
    put_words(buf, (const uint64_t[]){5, 9, 4, 9, 1, 5, 77, 0}, 8);
    CHECK(decode_header(RAFT_APPEND_ENTRIES, 0, buf, 64, &payload_len) == RAFT_MALFORMED);

    /* An InstallSnapshot whose configuration is longer than the header. */
    put_words(buf, (const uint64_t[]){5, 9, 4, 8, 4096, 0}, 6);
    CHECK(decode_header(RAFT_INSTALL_SNAPSHOT, 0, buf, 48, &payload_len) == RAFT_MALFORMED);
    /* One whose configuration says it has 1000 servers in 16 bytes. */
    put_words(buf, (const uint64_t[]){5, 9, 4, 8, 16, 0x3e801, 0, 0}, 8);
    CHECK(decode_header(RAFT_INSTALL_SNAPSHOT, 0, buf, 64, &payload_len) == RAFT_MALFORMED);
}

/* Run `fn` in a child process, so that a crash inside libraft fails this test instead of
 * ending the run. The child's CHECK messages go to stderr as usual. It leaves with exit(),
 * so that in the sanitizer build LeakSanitizer checks it: this scenario has the leader
 * resend InstallSnapshot while the follower installs one, which leaked without patch 0003. */
static void run_in_child(void (*fn)(void))
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        test_failures_in_current = 0;
        if (setjmp(test_abort) == 0) {
            fn();
        }
        fflush(stdout);
        fflush(stderr);
        exit(test_failures_in_current == 0 ? 0 : 1);
    }
    int status;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "  child killed by signal %d (%s)\n", WTERMSIG(status),
                strsignal(WTERMSIG(status)));
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void follower_installs_snapshot_that_waited_for_its_own(void)
{
    run_in_child(install_snapshot_waits_for_own_snapshot_scenario);
}

static void follower_installs_snapshot_with_the_term_of_its_index(void)
{
    run_in_child(install_snapshot_replaced_while_loading_scenario);
}

static void install_snapshot_address_outlives_configuration(void)
{
    run_in_child(install_snapshot_address_outlives_configuration_scenario);
}

static void follower_gives_up_on_conflict_at_committed_index(void)
{
    run_in_child(follower_gives_up_on_conflict_at_committed_index_scenario);
}

static void leader_gives_up_when_its_log_cannot_be_written(void)
{
    run_in_child(leader_gives_up_when_its_log_cannot_be_written_scenario);
}

static void handshake_with_unterminated_address_is_closed(void)
{
    run_in_child(handshake_with_unterminated_address_is_closed_scenario);
}

static void peer_message_shorter_than_its_fields_is_refused(void)
{
    run_in_child(peer_message_shorter_than_its_fields_is_refused_scenario);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(follower_commits_config_change_not_first_in_batch);
    TEST(follower_installs_snapshot_that_waited_for_its_own);
    TEST(follower_installs_snapshot_with_the_term_of_its_index);
    TEST(install_snapshot_address_outlives_configuration);
    TEST(follower_gives_up_on_conflict_at_committed_index);
    TEST(leader_gives_up_when_its_log_cannot_be_written);
    TEST(handshake_with_terminated_address_is_accepted);
    TEST(handshake_with_unterminated_address_is_closed);
    TEST(handshake_with_oversized_address_is_closed);
    TEST(peer_message_shorter_than_its_fields_is_refused);
    TEST_MAIN_END;
}
