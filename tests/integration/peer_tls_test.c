/*
 * peer_tls_test.c: the peer port of a TLS cluster lets in only members, each as itself.
 *
 * Three tallyd nodes run with mutual TLS on their peer links (cl_tls_setup()); that they
 * elect a leader at all shows members accept each other. Then this test connects to node
 * 1's peer port as strangers and as members lying about who they are, and checks that
 * each is refused (the node closes the connection), that the node stays up and serves,
 * and that tally_peer_refused_total counts every refusal. A member that tells the truth
 * is not refused (the control). A node that connects to member 3 and reaches a server
 * with another member's certificate refuses it. It also checks that tallyd will not
 * start without a choice for its peer links.
 *
 * usage: peer_tls_test TALLYD
 */
#include "cluster.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CLOSE_WAIT_MS 3000         /* a refusal must come well inside this */
#define HANDSHAKE_DEADLINE_MS 5000 /* NODE_PEER_HANDSHAKE_MS */

/* libraft's handshake: protocol 1, the claimed id, the address length, the address. */
struct hello {
    uint8_t bytes[128];
    size_t len;
};

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

/* A handshake claiming `id`; `addr_len` bytes of address, NUL-terminated if `nul`. */
static struct hello make_hello(uint64_t id, uint64_t addr_len, bool nul)
{
    struct hello h = {.len = 24};
    put64(h.bytes, 1);
    put64(h.bytes + 8, id);
    put64(h.bytes + 16, addr_len);
    size_t body = addr_len <= sizeof(h.bytes) - 24 ? (size_t)addr_len : sizeof(h.bytes) - 24;
    memset(h.bytes + 24, 'x', body);
    if (nul && body > 0) {
        h.bytes[24 + body - 1] = '\0';
    }
    h.len += body;
    return h;
}

/* Wait for `fd` to be readable or writable as `ssl_err` asks, until `deadline_ms`. */
static bool wait_fd(int fd, int ssl_err, int64_t deadline_ms)
{
    int64_t left = deadline_ms - h_now_ms();
    if (left <= 0) {
        return false;
    }
    struct pollfd p = {.fd = fd, .events = ssl_err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN};
    return poll(&p, 1, (int)left) >= 0;
}

/*
 * Connect to node 1's peer port, with TLS presenting certificate `cert` (NULL: none) or
 * plaintext if !tls, send `h`, and report whether the node closed the connection within
 * wait_ms.
 */
static bool peer_refused(bool tls, const char *cert, const struct hello *h, int wait_ms)
{
    int fd = h_connect(cl_nodes[0].peer_port, 2000);
    if (fd < 0) {
        H_FAIL("connect to the peer port");
    }
    int64_t deadline = h_now_ms() + wait_ms;
    bool closed = false;
    if (!tls) {
        char buf[256];
        if (h->len > 0) {
            h_send_all(fd, h->bytes, h->len, 2000);
        }
        ssize_t n;
        while ((n = h_recv_some(fd, buf, sizeof(buf), (int)(deadline - h_now_ms()))) > 0) {
        }
        closed = n == 0 || (n < 0 && h_now_ms() < deadline);
        close(fd);
        return closed;
    }
    char path[PATH_MAX + 32], key[PATH_MAX + 32];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    snprintf(path, sizeof(path), "%s/tls/ca.pem", h_dir);
    if (ctx == NULL || SSL_CTX_load_verify_locations(ctx, path, NULL) != 1) {
        H_FAIL("client TLS context");
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (cert != NULL) {
        snprintf(path, sizeof(path), "%s/tls/%s.pem", h_dir, cert);
        snprintf(key, sizeof(key), "%s/tls/%s.key", h_dir, cert);
        if (SSL_CTX_use_certificate_file(ctx, path, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            H_FAIL("load %s", path);
        }
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    int rv;
    while ((rv = SSL_connect(ssl)) != 1) {
        int err = SSL_get_error(ssl, rv);
        if ((err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) ||
            !wait_fd(fd, err, deadline)) {
            closed = err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE;
            goto out;
        }
    }
    size_t sent = 0;
    while (sent < h->len) {
        rv = SSL_write(ssl, h->bytes + sent, (int)(h->len - sent));
        if (rv > 0) {
            sent += (size_t)rv;
            continue;
        }
        int err = SSL_get_error(ssl, rv);
        if ((err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) ||
            !wait_fd(fd, err, deadline)) {
            closed = err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE;
            goto out;
        }
    }
    for (;;) {
        char buf[256];
        rv = SSL_read(ssl, buf, sizeof(buf));
        if (rv > 0) {
            continue;
        }
        int err = SSL_get_error(ssl, rv);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
            closed = true;
            break;
        }
        if (!wait_fd(fd, err, deadline) || h_now_ms() >= deadline) {
            break;
        }
    }
out:
    ERR_clear_error();
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return closed;
}

static uint64_t refused_count(void)
{
    uint64_t v = 0;
    if (cl_metric(0, "tally_peer_refused_total", &v) != 0) {
        H_FAIL("node 1 has no tally_peer_refused_total (or is down)");
    }
    return v;
}

static void expect_within(const char *what, bool tls, const char *cert, struct hello h,
                          bool refused, int wait_ms)
{
    uint64_t before = refused_count();
    bool closed = peer_refused(tls, cert, &h, wait_ms);
    if (closed != refused) {
        H_FAIL("%s: connection %s", what, closed ? "closed" : "kept open");
    }
    /* The count is published every 250 ms. */
    uint64_t after = before;
    for (int t = 0; t < 40 && after == before; t++) {
        h_sleep_ms(50);
        after = refused_count();
    }
    if (after != before + (refused ? 1 : 0)) {
        H_FAIL("%s: tally_peer_refused_total went %llu -> %llu", what, (unsigned long long)before,
               (unsigned long long)after);
    }
    if (cl_leader(5000) < 0) {
        H_FAIL("%s: no leader serving afterwards", what);
    }
    h_say("%s: %s", what, refused ? "refused and counted" : "accepted");
}

static void expect(const char *what, bool tls, const char *cert, struct hello h, bool refused)
{
    expect_within(what, tls, cert, h, refused, CLOSE_WAIT_MS);
}

/* 200 silent connections: those past the 128 still in their handshake are refused at
 * once, and the rest at the deadline; the node stays up throughout. */
static void unauthenticated_connections_are_bounded(void)
{
    enum { N = 200, UNAUTH_MAX = 128 };
    int fds[N];
    uint64_t before = refused_count();
    for (int i = 0; i < N; i++) {
        fds[i] = h_connect(cl_nodes[0].peer_port, 2000);
        if (fds[i] < 0) {
            H_FAIL("connection %d to the peer port", i);
        }
    }
    h_sleep_ms(1000);
    int closed = 0;
    for (int i = 0; i < N; i++) {
        char c;
        closed += h_recv_some(fds[i], &c, 1, 1) == 0;
    }
    uint64_t after = refused_count();
    for (int i = 0; i < N; i++) {
        close(fds[i]);
    }
    h_sleep_ms(1000); /* the rest are refused (closed in their handshake) and published */
    if (closed < N - UNAUTH_MAX || after - before < (uint64_t)(N - UNAUTH_MAX)) {
        H_FAIL("%d silent connections: %d closed at once, %llu refused (want >= %d)", N, closed,
               (unsigned long long)(after - before), N - UNAUTH_MAX);
    }
    h_say("%d silent connections: %d refused at once (at most %d wait in their handshake)", N,
          closed, UNAUTH_MAX);
}

/* Serve TLS with member 2's certificate on node 3's peer port for `ms` (node 3 is down):
 * whoever connects to member 3 reaches someone else. Returns the connections accepted. */
static int impostor(int ms)
{
    char cert[PATH_MAX + 32], key[PATH_MAX + 32];
    snprintf(cert, sizeof(cert), "%s/tls/member2.pem", h_dir);
    snprintf(key, sizeof(key), "%s/tls/member2.key", h_dir);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        H_FAIL("impostor TLS context");
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)cl_nodes[2].peer_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 16) != 0) {
        H_FAIL("impostor listen on node 3's peer port: %s", strerror(errno));
    }
    int accepted = 0;
    int64_t deadline = h_now_ms() + ms;
    while (h_now_ms() < deadline) {
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - h_now_ms())) <= 0) {
            continue;
        }
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        accepted++;
        struct timeval tv = {.tv_sec = 1};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        if (SSL_accept(ssl) == 1) {
            char buf[256];
            while (SSL_read(ssl, buf, sizeof(buf)) > 0) {
            }
        }
        ERR_clear_error();
        SSL_free(ssl);
        close(fd);
    }
    close(lfd);
    SSL_CTX_free(ctx);
    return accepted;
}

/* The connecting side checks whom it reached: with node 3 down and an impostor holding
 * member 2's certificate on its port, the leader refuses the connection it made. */
static void connect_checks_the_member(void)
{
    cl_stop(2, SIGTERM);
    int leader = cl_leader(5000);
    if (leader < 0) {
        H_FAIL("no leader with node 3 down");
    }
    uint64_t before = 0, after = 0;
    if (cl_metric(leader, "tally_peer_refused_total", &before) != 0) {
        H_FAIL("no tally_peer_refused_total on the leader");
    }
    int accepted = impostor(3000);
    h_sleep_ms(500); /* the count is published every 250 ms */
    if (cl_metric(leader, "tally_peer_refused_total", &after) != 0 || after <= before) {
        H_FAIL("the leader reached an impostor %d times and refused it %llu times", accepted,
               (unsigned long long)(after - before));
    }
    h_say("an impostor on member 3's port (member 2's certificate): the leader connected "
          "%d times and refused it %llu times",
          accepted, (unsigned long long)(after - before));
    cl_spawn(2);
}

/* tallyd with neither peer TLS nor --peer-insecure, or with part of the TLS files, or
 * with both, or with files that do not load, exits 3. */
static void start_needs_a_peer_choice(const char *tallyd)
{
    static const char *const extra[][7] = {
        {NULL},
        {"--peer-cert", "/nonexistent.pem", NULL},
        {"--peer-insecure", "--peer-cert", "a", NULL},
        {"--peer-cert", "/nonexistent.pem", "--peer-key", "/nonexistent.key", "--peer-ca",
         "/nonexistent-ca.pem", NULL},
    };
    for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "no-peer-choice-%zu", i);
        int status = cl_config_status(tallyd, name, extra[i]);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 3) {
            H_FAIL("tallyd without a peer choice (case %zu) did not exit 3 (status %d)", i, status);
        }
    }
    h_say("tallyd without exactly one of peer TLS and --peer-insecure, or with peer "
          "certificates that do not load: exit 3");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: peer_tls_test TALLYD\n");
        return 2;
    }
    h_init("peer_tls", 170);
    cl_tls_setup();
    cl_start(argv[1]);
    h_say("a 3-node cluster with mutual TLS on its peer links elected a leader");

    expect("member 2 as itself (control)", true, "member2", make_hello(2, 16, true), false);
    expect("member 2 claiming id 3", true, "member2", make_hello(3, 16, true), true);
    expect("member 1's name from another CA", true, "othermember", make_hello(1, 16, true), true);
    expect("an expired certificate of member 2", true, "expiredmember", make_hello(2, 16, true),
           true);
    expect("member 7, outside the configuration", true, "member7", make_hello(7, 16, true), true);
    expect("a client certificate that names no member", true, "admin", make_hello(2, 16, true),
           true);
    expect("no certificate", true, NULL, make_hello(2, 16, true), true);
    expect("plaintext handshake", false, NULL, make_hello(2, 16, true), true);
    expect("an address that does not end in NUL", true, "member2", make_hello(2, 16, false), true);
    expect("an address longer than the bound", true, "member2", make_hello(2, 4096, true), true);

    struct hello nothing = {.len = 0};
    expect_within("a connection that says nothing", false, NULL, nothing, true,
                  HANDSHAKE_DEADLINE_MS + 2000);

    /* Node 3, stopped for the impostor and started again, rejoins over TLS and the three
     * converge; then every node stops cleanly on SIGTERM, one with a stranger's connection
     * still in its handshake. */
    unauthenticated_connections_are_bounded();
    connect_checks_the_member();
    char hash[65];
    cl_converged(20000, 0, hash);
    h_say("node 3 restarted and the three converged on state hash %.16s...", hash);
    int idle = h_connect(cl_nodes[0].peer_port, 2000);
    for (int i = 0; i < CL_NODES; i++) {
        cl_stop(i, SIGTERM);
    }
    if (idle >= 0) {
        close(idle);
    }

    start_needs_a_peer_choice(argv[1]);
    h_pass();
    return 0;
}
