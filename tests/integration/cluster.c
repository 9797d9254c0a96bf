/*
 * cluster.c: three tallyd processes and raw protocol connections for the integration
 * tests (see cluster.h).
 */
#define _GNU_SOURCE
#include "cluster.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

struct cl_node cl_nodes[CL_NODES];
const char *const *cl_extra_flags;
const char *cl_tls_client;
static const char *tallyd_bin;
char cl_token_file[PATH_MAX];
static char tls_dir[H_DIR_MAX + 8]; /* "" without TLS */

/* Run a shell command; fail the test if it does not exit 0. */
static void run(const char *cmd)
{
    int rv = system(cmd);
    if (rv != 0) {
        H_FAIL("command failed (%d): %s", rv, cmd);
    }
}

void cl_tls_setup(void)
{
    snprintf(tls_dir, sizeof(tls_dir), "%s/tls", h_dir);
    char cmd[16384];
    /* Two CAs (the second signs the rogue client), a server cert with IP SAN 127.0.0.1,
     * and client certs; the token file maps admin and gateway by fingerprint. Their OUs
     * say otherwise on purpose: OU grants nothing. And member certs for the peer links:
     * memberN for the three members, and for the peer tests member7 (not in the
     * configuration), othermember (member 1, signed by the other CA) and expiredmember
     * (member 2, expired). EC keys keep this fast. */
    snprintf(cmd, sizeof(cmd),
             "set -e; mkdir -p '%s'; cd '%s'; "
             "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1.key "
             "2>/dev/null; }; "
             "ca() { key $1; openssl req -x509 -new -key $1.key -subj \"/CN=$1\" -days 2 -out "
             "$1.pem 2>/dev/null; }; "
             "leaf() { key $1; openssl req -new -key $1.key -subj \"$2\" -out $1.csr 2>/dev/null; "
             "  printf '%%b\\n' \"$4\" > $1.ext; "
             "  openssl x509 -req -in $1.csr -CA $3.pem -CAkey $3.key -CAcreateserial -days "
             "${5:-2} -extfile $1.ext -out $1.pem 2>/dev/null; }; "
             "member() { leaf $1 \"/CN=$1\" $3 "
             "\"subjectAltName=URI:tally://member/"
             "$2,IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\" $4; }; "
             "ca ca; ca otherca; "
             "leaf server '/CN=127.0.0.1' ca 'subjectAltName=IP:127.0.0.1'; "
             "leaf admin '/OU=reader/CN=ops-cert' ca 'extendedKeyUsage=clientAuth'; "
             "leaf gateway '/OU=admin/CN=gw-cert' ca 'extendedKeyUsage=clientAuth'; "
             "leaf stranger '/OU=admin/CN=stranger' ca 'extendedKeyUsage=clientAuth'; "
             "leaf rogue '/OU=admin/CN=rogue' otherca 'extendedKeyUsage=clientAuth'; "
             "member member1 1 ca; member member2 2 ca; member member3 3 ca; "
             "member member7 7 ca; member othermember 1 otherca; member expiredmember 2 ca -1",
             tls_dir, tls_dir);
    run(cmd);
    h_say("TLS material in %s", tls_dir);
}

const struct cl_token cl_default_tokens[CL_DEFAULT_TOKENS] = {
    {"admin", "test-admin", CL_ADMIN_TOKEN, ""},
    {"gateway", "test-gateway", CL_GATEWAY_TOKEN, ""},
    {"reader", "test-reader", CL_READER_TOKEN, ""},
    {"gateway", "test-gw-a", CL_GATEWAY_A_TOKEN, "org-a"},
    {"gateway", "test-gw-b", CL_GATEWAY_B_TOKEN, "org-b"},
    {"admin", "test-admin-a", CL_ADMIN_A_TOKEN, "org-a"},
};

/* "cert:" and the SHA-256 hex of the DER of certificate NAME made by cl_tls_setup(). */
static void cert_credential(const char *name, char out[70])
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/%s.pem", tls_dir, name);
    FILE *f = fopen(path, "r");
    X509 *cert = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    uint8_t h[32];
    unsigned int len = 0;
    if (f != NULL) {
        fclose(f);
    }
    if (cert == NULL || X509_digest(cert, EVP_sha256(), h, &len) != 1 || len != 32) {
        H_FAIL("fingerprint of %s", path);
    }
    X509_free(cert);
    memcpy(out, "cert:", 5);
    rpc_hex(h, sizeof(h), out + 5);
}

void cl_write_tokens(const struct cl_token *tokens, size_t n)
{
    char tmp[PATH_MAX + 8];
    snprintf(cl_token_file, sizeof(cl_token_file), "%s/tokens", h_dir);
    snprintf(tmp, sizeof(tmp), "%s.new", cl_token_file);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        H_FAIL("write %s", tmp);
    }
    fprintf(f, "# test tokens\n");
    for (size_t i = 0; i < n; i++) {
        uint8_t h[32];
        char hex[65];
        SHA256((const unsigned char *)tokens[i].token, strlen(tokens[i].token), h);
        rpc_hex(h, sizeof(h), hex);
        fprintf(f, "%s %s %s%s%s\n", tokens[i].role, tokens[i].name, hex,
                tokens[i].scope[0] != '\0' ? " scope=" : "", tokens[i].scope);
    }
    if (tls_dir[0] != '\0') {
        char cred[70];
        cert_credential("admin", cred);
        fprintf(f, "admin ops-cert %s\n", cred);
        cert_credential("gateway", cred);
        fprintf(f, "gateway gw-cert %s\n", cred);
    }
    if (fclose(f) != 0 || rename(tmp, cl_token_file) != 0) {
        H_FAIL("write %s", cl_token_file);
    }
}

void cl_reload_tokens(void)
{
    for (int i = 0; i < CL_NODES; i++) {
        if (cl_nodes[i].p.pid > 0 && kill(cl_nodes[i].p.pid, SIGHUP) != 0) {
            H_FAIL("SIGHUP node %d", i + 1);
        }
    }
}

static void spawn_process(int i)
{
    struct cl_node *n = &cl_nodes[i];
    char id[16], peer[32], client[32], http[32], members[512] = "";
    for (int m = 0; m < CL_NODES; m++) {
        size_t len = strlen(members);
        snprintf(members + len, sizeof(members) - len, "%s%d=127.0.0.1:%d/127.0.0.1:%d",
                 m > 0 ? "," : "", m + 1, cl_nodes[m].peer_port, cl_nodes[m].client_port);
    }
    snprintf(id, sizeof(id), "%d", i + 1);
    snprintf(peer, sizeof(peer), "127.0.0.1:%d", n->peer_port);
    snprintf(client, sizeof(client), "127.0.0.1:%d", n->client_port);
    snprintf(http, sizeof(http), "127.0.0.1:%d", n->http_port);
    char cert[PATH_MAX + 16], key[PATH_MAX + 16], ca[PATH_MAX + 16];
    char peer_cert[PATH_MAX + 16], peer_key[PATH_MAX + 16];
    snprintf(cert, sizeof(cert), "%s/server.pem", tls_dir);
    snprintf(key, sizeof(key), "%s/server.key", tls_dir);
    snprintf(ca, sizeof(ca), "%s/ca.pem", tls_dir);
    snprintf(peer_cert, sizeof(peer_cert), "%s/member%d.pem", tls_dir, i + 1);
    snprintf(peer_key, sizeof(peer_key), "%s/member%d.key", tls_dir, i + 1);
    char *argv[48] = {(char *)tallyd_bin, "--id", id, "--data-dir", n->dir, "--peer-listen", peer,
                      "--client-listen", client, "--http-listen", http, "--members", members,
                      "--token-file", cl_token_file, "--snapshot-threshold", "256",
                      "--snapshot-trailing", "64",
                      /* small, so pipelining tests run into backpressure */
                      "--max-inflight", "64"};
    int argc = 21;
    if (tls_dir[0] != '\0') {
        argv[argc++] = "--tls-cert";
        argv[argc++] = cert;
        argv[argc++] = "--tls-key";
        argv[argc++] = key;
        argv[argc++] = "--tls-client-ca";
        argv[argc++] = ca;
        argv[argc++] = "--peer-cert";
        argv[argc++] = peer_cert;
        argv[argc++] = "--peer-key";
        argv[argc++] = peer_key;
        argv[argc++] = "--peer-ca";
        argv[argc++] = ca;
    } else {
        argv[argc++] = "--peer-insecure";
    }
    for (int k = 0; cl_extra_flags != NULL && cl_extra_flags[k] != NULL; k++) {
        if (argc >= 47) {
            H_FAIL("too many cl_extra_flags");
        }
        argv[argc++] = (char *)cl_extra_flags[k];
    }
    argv[argc] = NULL;
    h_spawn(&n->p, argv);
}

int cl_config_status(const char *tallyd, const char *name, const char *const extra[])
{
    struct h_proc p = {0};
    char dir[PATH_MAX], tokens[PATH_MAX];
    snprintf(p.log, sizeof(p.log), "%s/%s.log", h_dir, name);
    snprintf(dir, sizeof(dir), "%s/%s", h_dir, name);
    snprintf(tokens, sizeof(tokens), "%s/%s.tokens", h_dir, name);
    FILE *f = fopen(tokens, "w");
    if (f == NULL || fclose(f) != 0) {
        H_FAIL("write %s", tokens);
    }
    char *argv[32] = {(char *)tallyd,
                      "--id",
                      "1",
                      "--data-dir",
                      dir,
                      "--peer-listen",
                      "127.0.0.1:1",
                      "--client-listen",
                      "127.0.0.1:2",
                      "--members",
                      "1=127.0.0.1:1/127.0.0.1:2",
                      "--token-file",
                      tokens};
    int argc = 13;
    for (int k = 0; extra[k] != NULL && argc < 31; k++) {
        argv[argc++] = (char *)extra[k];
    }
    argv[argc] = NULL;
    h_register(&p);
    h_spawn(&p, argv);
    return h_stop(&p, 0);
}

/* STATUS of node i over a fresh connection: 0 and *st, or -1. */
static int node_status(int i, struct rpc_node_status *st)
{
    struct rc c;
    if (rc_open(&c, i) != 0) {
        return -1;
    }
    struct rpc_request req = {.op = RPC_OP_STATUS};
    struct rpc_response resp;
    int rv = -1;
    if (rc_hello(&c, CL_READER_TOKEN) == RPC_OK && rc_call(&c, &req, &resp) == 0 &&
        resp.status == RPC_OK) {
        *st = resp.u.status;
        rv = 0;
    }
    rc_close(&c);
    return rv;
}

void cl_spawn(int i)
{
    spawn_process(i);
    pid_t pid = cl_nodes[i].p.pid;
    int64_t deadline = h_now_ms() + 15000;
    struct rpc_node_status st;
    while (node_status(i, &st) != 0) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            cl_nodes[i].p.pid = 0;
            H_FAIL("node %d exited at start (status 0x%x)", i + 1, status);
        }
        if (h_now_ms() > deadline) {
            H_FAIL("node %d client port never came up", i + 1);
        }
        h_sleep_ms(50);
    }
    h_say("node %d started (pid %d)", i + 1, (int)pid);
}

void cl_stop(int i, int sig)
{
    int status = h_stop(&cl_nodes[i].p, sig);
    if (sig == SIGTERM && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
        H_FAIL("node %d did not exit cleanly on SIGTERM (status 0x%x)", i + 1, status);
    }
    h_say("node %d stopped (signal %d)", i + 1, sig);
}

int cl_leader(int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    do {
        for (int i = 0; i < CL_NODES; i++) {
            struct rpc_node_status st;
            if (cl_nodes[i].p.pid > 0 && node_status(i, &st) == 0 && st.serving) {
                return i;
            }
        }
        h_sleep_ms(50);
    } while (h_now_ms() < deadline);
    return -1;
}

void cl_start(const char *tallyd)
{
    tallyd_bin = tallyd;
    cl_write_tokens(cl_default_tokens, CL_DEFAULT_TOKENS);
    for (int i = 0; i < CL_NODES; i++) {
        struct cl_node *n = &cl_nodes[i];
        n->peer_port = h_pick_port();
        n->client_port = h_pick_port();
        n->http_port = h_pick_port();
        snprintf(n->dir, sizeof(n->dir), "%s/node%d", h_dir, i + 1);
        snprintf(n->p.log, sizeof(n->p.log), "%s/node%d.log", h_dir, i + 1);
        h_register(&n->p);
    }
    for (int i = 0; i < CL_NODES; i++) {
        cl_spawn(i);
    }
    int leader = cl_leader(30000);
    if (leader < 0) {
        H_FAIL("no leader elected");
    }
    h_say("node %d leads", leader + 1);
}

void cl_endpoint(int i, char *out, size_t size)
{
    snprintf(out, size, "127.0.0.1:%d", cl_nodes[i].client_port);
}

void cl_endpoints(char *out, size_t size)
{
    out[0] = '\0';
    for (int i = 0; i < CL_NODES; i++) {
        size_t len = strlen(out);
        snprintf(out + len, size - len, "%s127.0.0.1:%d", i > 0 ? "," : "",
                 cl_nodes[i].client_port);
    }
}

int cl_metric(int i, const char *series, uint64_t *value)
{
    static char body[1 << 18]; /* /metrics is a few KiB; more than this is a failure */
    int fd = h_connect(cl_nodes[i].http_port, 2000);
    static const char get[] = "GET /metrics HTTP/1.0\r\n\r\n";
    if (fd < 0 || h_send_all(fd, get, sizeof(get) - 1, 2000) != 0) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    size_t len = 0;
    ssize_t n;
    while (len < sizeof(body) - 1 &&
           (n = h_recv_some(fd, body + len, sizeof(body) - 1 - len, 2000)) > 0) {
        len += (size_t)n;
    }
    close(fd);
    body[len] = '\0';
    size_t want = strlen(series);
    for (const char *line = body; line != NULL && *line != '\0';) {
        if (strncmp(line, series, want) == 0 && line[want] == ' ') {
            unsigned long long v = 0;
            if (sscanf(line + want + 1, "%llu", &v) != 1) {
                return -1;
            }
            *value = v;
            return 0;
        }
        line = strchr(line, '\n');
        line = line != NULL ? line + 1 : NULL;
    }
    return -1;
}

int cl_hash(int i, uint64_t *applied, char hex[65])
{
    struct rc c;
    if (rc_open(&c, i) != 0) {
        return -1;
    }
    struct rpc_request req = {.op = RPC_OP_HASH};
    struct rpc_response resp;
    int rv = -1;
    if (rc_hello(&c, CL_ADMIN_TOKEN) == RPC_OK && rc_call(&c, &req, &resp) == 0 &&
        resp.status == RPC_OK) {
        *applied = resp.u.hash.applied_index;
        rpc_hex(resp.u.hash.state_hash, 32, hex);
        rv = 0;
    }
    rc_close(&c);
    return rv;
}

void cl_converged(int timeout_ms, uint64_t min_index, char hash_hex[65])
{
    int64_t deadline = h_now_ms() + timeout_ms;
    char hex[CL_NODES][65];
    uint64_t applied[CL_NODES];
    for (;;) {
        bool same = true;
        int first = -1;
        for (int i = 0; i < CL_NODES; i++) {
            snprintf(hex[i], sizeof(hex[i]), "-");
            applied[i] = 0;
            if (cl_nodes[i].p.pid == 0) {
                continue;
            }
            if (cl_hash(i, &applied[i], hex[i]) != 0 || applied[i] < min_index ||
                (first >= 0 && (applied[i] != applied[first] || strcmp(hex[i], hex[first]) != 0))) {
                same = false;
            }
            first = first < 0 ? i : first;
        }
        if (same && first >= 0) {
            snprintf(hash_hex, 65, "%s", hex[first]);
            h_say("converged at applied index %llu, state hash %.16s...",
                  (unsigned long long)applied[first], hex[first]);
            return;
        }
        if (h_now_ms() > deadline) {
            H_FAIL("no convergence: %llu %.12s / %llu %.12s / %llu %.12s",
                   (unsigned long long)applied[0], hex[0], (unsigned long long)applied[1], hex[1],
                   (unsigned long long)applied[2], hex[2]);
        }
        h_sleep_ms(100);
    }
}

/* ---- Raw connections. ---- */

/* A TLS client session on c->fd (made blocking with 5 s timeouts). 0 or -1. */
static int rc_tls_connect(struct rc *c)
{
    static SSL_CTX *ctx;
    static const char *ctx_client = "";
    char path[PATH_MAX + 32], key[PATH_MAX + 32];
    if (ctx == NULL || ctx_client != cl_tls_client) {
        SSL_CTX_free(ctx);
        ctx = SSL_CTX_new(TLS_client_method());
        snprintf(path, sizeof(path), "%s/ca.pem", tls_dir);
        if (ctx == NULL || SSL_CTX_load_verify_locations(ctx, path, NULL) != 1) {
            H_FAIL("client TLS context");
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (cl_tls_client != NULL) {
            snprintf(path, sizeof(path), "%s/%s.pem", tls_dir, cl_tls_client);
            snprintf(key, sizeof(key), "%s/%s.key", tls_dir, cl_tls_client);
            if (SSL_CTX_use_certificate_file(ctx, path, SSL_FILETYPE_PEM) != 1 ||
                SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
                H_FAIL("client certificate %s", path);
            }
        }
        ctx_client = cl_tls_client;
    }
    int flags = fcntl(c->fd, F_GETFL);
    struct timeval tv = {5, 0};
    fcntl(c->fd, F_SETFL, flags & ~O_NONBLOCK);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL) {
        return -1;
    }
    SSL_set_fd(ssl, c->fd);
    SSL_set1_host(ssl, "127.0.0.1");
    c->ssl = ssl;
    if (SSL_connect(ssl) != 1) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

int rc_open(struct rc *c, int i)
{
    memset(c, 0, sizeof(*c));
    c->fd = h_connect(cl_nodes[i].client_port, 2000);
    rpc_framer_init(&c->framer, RPC_FRAME_LIMIT);
    if (c->fd >= 0 && tls_dir[0] != '\0' && rc_tls_connect(c) != 0) {
        return -1;
    }
    return c->fd >= 0 ? 0 : -1;
}

void rc_close(struct rc *c)
{
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
    rpc_framer_free(&c->framer);
}

int rc_send_raw(struct rc *c, const void *data, size_t len)
{
    if (c->ssl != NULL) {
        return SSL_write(c->ssl, data, (int)len) == (int)len ? 0 : -1;
    }
    return h_send_all(c->fd, data, len, 5000);
}

/* Up to size bytes: count, 0 at EOF, -1 on error or timeout. */
static ssize_t rc_read(struct rc *c, void *buf, size_t size, int timeout_ms)
{
    if (c->ssl != NULL) {
        int n = SSL_read(c->ssl, buf, (int)size);
        if (n <= 0) {
            int err = SSL_get_error(c->ssl, n);
            ERR_clear_error();
            return err == SSL_ERROR_ZERO_RETURN || err == SSL_ERROR_SYSCALL ? 0 : -1;
        }
        return n;
    }
    return h_recv_some(c->fd, buf, size, timeout_ms);
}

int rc_send(struct rc *c, struct rpc_request *req)
{
    struct rpc_buf b = {0};
    req->seq = ++c->seq;
    int rv = rpc_request_encode(&b, req) == 0 ? rc_send_raw(c, b.data, b.len) : -1;
    rpc_buf_free(&b);
    return rv;
}

int rc_recv(struct rc *c, int op, struct rpc_response *resp, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    for (;;) {
        const uint8_t *body;
        size_t len;
        int rv = rpc_framer_next(&c->framer, &body, &len);
        if (rv < 0) {
            return -1;
        }
        if (rv == 1) {
            char why[RPC_MESSAGE_MAX + 1];
            return rpc_response_decode(body, len, op, resp, why);
        }
        uint8_t buf[65536];
        int left = (int)(deadline - h_now_ms());
        ssize_t n = left > 0 ? rc_read(c, buf, sizeof(buf), left) : -1;
        if (n <= 0 || rpc_framer_feed(&c->framer, buf, (size_t)n) != 0) {
            return -1;
        }
    }
}

int rc_call(struct rc *c, struct rpc_request *req, struct rpc_response *resp)
{
    if (rc_send(c, req) != 0) {
        return -1;
    }
    return rc_recv(c, req->op, resp, 10000);
}

int rc_hello(struct rc *c, const char *token)
{
    struct rpc_request req = {.op = RPC_OP_HELLO};
    struct rpc_response resp;
    req.u.hello.version = RPC_PROTOCOL_VERSION;
    snprintf(req.u.hello.token, sizeof(req.u.hello.token), "%s", token);
    return rc_call(c, &req, &resp) == 0 ? resp.status : -1;
}

bool rc_closed(struct rc *c, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    uint8_t buf[4096];
    for (;;) {
        int left = (int)(deadline - h_now_ms());
        if (left <= 0) {
            return false;
        }
        ssize_t n = rc_read(c, buf, sizeof(buf), left);
        if (n == 0) {
            return true;
        }
        if (n < 0) {
            return h_now_ms() < deadline; /* an error before the deadline: reset */
        }
    }
}

void cl_converge_and_stop(void)
{
    char hash[65];
    cl_converged(20000, 0, hash);
    for (int i = 0; i < CL_NODES; i++) {
        cl_stop(i, SIGTERM);
    }
}
