/*
 * cluster.h: three real tallyd processes on loopback for integration tests, and a raw
 * protocol connection (wire/wire.h over a blocking socket) to poke them with.
 *
 * Tokens: the cluster's token file accepts CL_ADMIN_TOKEN (admin), CL_GATEWAY_TOKEN
 * (gateway) and CL_READER_TOKEN (reader), all unscoped, and the scoped CL_GATEWAY_A_TOKEN
 * (gateway, scope=org-a), CL_GATEWAY_B_TOKEN (gateway, scope=org-b) and CL_ADMIN_A_TOKEN
 * (admin, scope=org-a), until a test writes another one.
 */
#ifndef TALLY_TESTS_CLUSTER_H
#define TALLY_TESTS_CLUSTER_H

#include "harness.h"
#include "wire/wire.h"

#define CL_NODES 3
#define CL_ADMIN_TOKEN "admin-secret-for-tests"
#define CL_GATEWAY_TOKEN "gateway-secret-for-tests"
#define CL_READER_TOKEN "reader-secret-for-tests"
#define CL_GATEWAY_A_TOKEN "gateway-org-a-secret-for-tests"
#define CL_GATEWAY_B_TOKEN "gateway-org-b-secret-for-tests"
#define CL_ADMIN_A_TOKEN "admin-org-a-secret-for-tests"

struct cl_node {
    struct h_proc p;
    int peer_port, client_port, http_port;
    char dir[PATH_MAX];
};

extern struct cl_node cl_nodes[CL_NODES];

/*
 * TLS: cl_tls_setup() writes a CA, a server certificate for 127.0.0.1 and client
 * certificates into the scratch dir (with the openssl command), and makes cl_start()
 * run the nodes with TLS and rc_open() connect with TLS (verifying the server against
 * the CA), and run the peer links with mutual TLS (member certificates "memberN", SAN URI
 * tally://member/N; without cl_tls_setup() the nodes run --peer-insecure). Certificate
 * files are "<h_dir>/tls/NAME.pem" and "NAME.key"; for peer tests there are also
 * "member7" (a member outside the configuration), "othermember" (member 1, another CA)
 * and "expiredmember" (member 2, expired).
 */
void cl_tls_setup(void);
/* The client certificate rc_open() presents: NULL for none, else a NAME made by
 * cl_tls_setup(): "admin" and "gateway" (in the token file by fingerprint as admin
 * ops-cert and gateway gw-cert; their OUs name other roles, which grant nothing),
 * "stranger" (signed by the CA, not in the token file), "rogue" (signed by another CA). */
extern const char *cl_tls_client;

/* One bearer token of the token file: its role, name and the token (hashed when written). */
struct cl_token {
    const char *role, *name, *token;
    const char *scope; /* "" unscoped, else the roots of its scope= field */
};

/* The tokens listed above: CL_ADMIN_TOKEN, CL_GATEWAY_TOKEN and CL_READER_TOKEN (names
 * test-admin, test-gateway, test-reader), then the scoped CL_GATEWAY_A_TOKEN,
 * CL_GATEWAY_B_TOKEN and CL_ADMIN_A_TOKEN. */
#define CL_DEFAULT_TOKENS 6
extern const struct cl_token cl_default_tokens[CL_DEFAULT_TOKENS];

/* The nodes' token file ("<h_dir>/tokens"), set by cl_write_tokens(). */
extern char cl_token_file[PATH_MAX];

/* (Re)write the token file with `tokens` (n) and, under TLS, the admin and gateway
 * certificates' cert: lines; atomically (a new file renamed over the old). cl_start()
 * writes cl_default_tokens. */
void cl_write_tokens(const struct cl_token *tokens, size_t n);

/* SIGHUP every running node: each rereads the token file. */
void cl_reload_tokens(void);

/* Flags added to every node's command line by cl_start() and cl_spawn() (NULL-terminated,
 * borrowed; NULL, the default: none), e.g. a small --max-ledger-bytes. */
extern const char *const *cl_extra_flags;

/* Pick ports, write the token file and start all three nodes (tallyd at `tallyd`); wait
 * until one of them leads and serves. */
void cl_start(const char *tallyd);

/* Run tallyd at `tallyd` for a one-node cluster (ports 1 and 2, an empty token file, data
 * in "<h_dir>/NAME") with the flags `extra` (NULL-terminated) added, for a configuration
 * it must refuse: wait for it to exit and return the wait status; its log is NAME.log. */
int cl_config_status(const char *tallyd, const char *name, const char *const extra[]);

/* Start node i again (same ports and data dir) and wait until it answers STATUS. */
void cl_spawn(int i);

/* Stop node i with `sig` and reap it; SIGTERM must end in exit status 0. */
void cl_stop(int i, int sig);

/* The end of a test: wait until the three nodes converge (cl_converged, 20 s), then stop
 * each with SIGTERM (cl_stop). */
void cl_converge_and_stop(void);

/* Index of the node that leads and serves, waiting up to timeout_ms; -1 if none. */
int cl_leader(int timeout_ms);

/* "127.0.0.1:P" of node i's client port, or of all running nodes comma-separated. */
void cl_endpoint(int i, char *out, size_t size);
void cl_endpoints(char *out, size_t size);

/* The value of one /metrics series of node i (`series` as it starts its line, labels
 * included, e.g. "tally_raft_peer_lag_entries{peer=\"2\"}"): 0, or -1 if the node did
 * not answer or has no such line. */
int cl_metric(int i, const char *series, uint64_t *value);

/* HASH of node i over a fresh connection: 0 with its applied index and state hash in hex
 * (65 bytes), or -1 if it does not answer. */
int cl_hash(int i, uint64_t *applied, char hex[65]);

/* Wait until every running node reports the same applied index (>= min_index) and state
 * hash; returns that hash in hex (65 bytes). */
void cl_converged(int timeout_ms, uint64_t min_index, char hash_hex[65]);

/* ---- Raw protocol connections. ---- */

struct rc {
    int fd;
    void *ssl; /* SSL * when the cluster runs TLS */
    uint64_t seq;
    struct rpc_framer framer;
};

/* Connect to node i's client port; -1 if it does not accept within 2 s. */
int rc_open(struct rc *c, int i);
void rc_close(struct rc *c);

/* Send raw bytes. 0 or -1. */
int rc_send_raw(struct rc *c, const void *data, size_t len);

/* Send `req` (its seq is assigned here). 0 or -1. */
int rc_send(struct rc *c, struct rpc_request *req);

/* Receive the next response and decode it as an answer to `op`. 0, or -1 if the
 * connection closed or nothing came within timeout_ms, or the answer did not decode. */
int rc_recv(struct rc *c, int op, struct rpc_response *resp, int timeout_ms);

/* Send and receive one request. */
int rc_call(struct rc *c, struct rpc_request *req, struct rpc_response *resp);

/* HELLO with `token`; returns the response status (or -1 if no answer). */
int rc_hello(struct rc *c, const char *token);

/* Whether the peer closed the connection within timeout_ms (reading and discarding). */
bool rc_closed(struct rc *c, int timeout_ms);

#endif /* TALLY_TESTS_CLUSTER_H */
