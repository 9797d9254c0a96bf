/*
 * tallyd_auth_test.c: credentials on a real three-node tallyd cluster: failed logins in
 * the log, and the token file reloaded on SIGHUP.
 *
 *   tallyd_auth_test <path to tallyd> [tls]
 *
 * Failed logins: a bad token is logged with the peer's address and the reason, never
 * with the token; a burst of them is cut to RPC__AUTH_LOG_PER_SECOND lines a second and
 * the next line says how many were left out. With `tls`, a certificate the CA signed but
 * the token file does not list is logged with its fingerprint, and one of another CA as
 * a bad certificate.
 *
 * Reload: with a token removed and another added to the file, a SIGHUP makes every node
 * refuse the removed one and accept the added one without a restart; a connection
 * authenticated with the removed token is closed, one with a kept token stays. A file
 * that does not parse, and an empty one, change nothing and are logged.
 */
#define _GNU_SOURCE
#include "cluster.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BAD_TOKEN "leaked-or-mistyped-secret-1234"
#define NEW_READER_TOKEN "reader-secret-after-reload"
#define LOG_LINES_PER_SECOND 10 /* RPC__AUTH_LOG_PER_SECOND */

/* How many lines of node i's log contain `a` and, unless NULL, `b` and `c`. */
static int log_count(int i, const char *a, const char *b, const char *c)
{
    FILE *f = fopen(cl_nodes[i].p.log, "r");
    char line[4096];
    int n = 0;
    if (f == NULL) {
        H_FAIL("open %s", cl_nodes[i].p.log);
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        n += strstr(line, a) != NULL && (b == NULL || strstr(line, b) != NULL) &&
             (c == NULL || strstr(line, c) != NULL);
    }
    fclose(f);
    return n;
}

/* HELLO with `token` on a new connection to node i: the status, -1 if none. */
static int hello_status(int i, const char *token)
{
    struct rc c;
    int status = -1;
    if (rc_open(&c, i) == 0) {
        status = rc_hello(&c, token);
        rc_close(&c);
    }
    return status;
}

/* Wait until every node answers HELLO with `token` by `status` (5 s). */
static void expect_everywhere(const char *token, int status, const char *what)
{
    int64_t deadline = h_now_ms() + 5000;
    for (int i = 0; i < CL_NODES; i++) {
        int got;
        while ((got = hello_status(i, token)) != status) {
            if (h_now_ms() > deadline) {
                H_FAIL("node %d: %s: hello answered %d, expected %s", i + 1, what, got,
                       rpc_status_name(status));
            }
            h_sleep_ms(50);
        }
    }
    h_say("every node: %s", what);
}

/* Wait until node i's log has `n` lines with both strings (5 s). */
static void expect_log(int i, const char *a, const char *b, int n)
{
    int64_t deadline = h_now_ms() + 5000;
    while (log_count(i, a, b, NULL) < n) {
        if (h_now_ms() > deadline) {
            H_FAIL("node %d never logged %s %s", i + 1, a, b != NULL ? b : "");
        }
        h_sleep_ms(50);
    }
}

static void case_failed_login_logged(void)
{
    int leader = cl_leader(10000);
    int before = log_count(leader, "msg=\"login failed\"", NULL, NULL);
    if (hello_status(leader, BAD_TOKEN) != RPC_EAUTH) {
        H_FAIL("a bad token was not refused");
    }
    expect_log(leader, "msg=\"login failed\" peer=127.0.0.1:", "reason=\"unknown token\"",
               before + 1);
    h_say("a bad token is logged with the peer address and the reason");

    /* A burst: at most LOG_LINES_PER_SECOND lines in each second it spans. */
    before = log_count(leader, "msg=\"login failed\"", NULL, NULL);
    int64_t start_ms = h_now_ms();
    for (int k = 0; k < 40; k++) {
        hello_status(leader, BAD_TOKEN);
    }
    int seconds = (int)((h_now_ms() - start_ms) / 1000) + 2;
    int logged = log_count(leader, "msg=\"login failed\"", NULL, NULL) - before;
    if (logged > seconds * LOG_LINES_PER_SECOND || logged == 40) {
        H_FAIL("40 failed logins in %d s logged %d lines", seconds - 1, logged);
    }
    h_sleep_ms(1100);
    hello_status(leader, BAD_TOKEN);
    expect_log(leader, "msg=\"login failed\"", " suppressed=", 1);
    h_say("40 failed logins: %d lines, and the next line counts the suppressed ones", logged);
    if (log_count(leader, BAD_TOKEN, NULL, NULL) != 0) {
        H_FAIL("the token itself is in the log");
    }
}

static void case_certificate_not_listed_logged(void)
{
    int leader = cl_leader(10000);
    int before = log_count(leader, "reason=\"client certificate not in the token file\"",
                           " cert_sha256=", NULL);
    cl_tls_client = "stranger";
    int status = hello_status(leader, "");
    cl_tls_client = NULL;
    if (status != RPC_EAUTH) {
        H_FAIL("a certificate not in the token file was not refused");
    }
    expect_log(leader, "reason=\"client certificate not in the token file\"",
               " cert_sha256=", before + 1);
    h_say("a certificate not in the token file is logged with its fingerprint");

    before = log_count(leader, "msg=\"login failed\"", "reason=\"bad certificate: ", NULL);
    cl_tls_client = "rogue";
    status = hello_status(leader, "");
    cl_tls_client = NULL;
    if (status == RPC_OK) {
        H_FAIL("a certificate of another CA was accepted");
    }
    expect_log(leader, "msg=\"login failed\"", "reason=\"bad certificate: ", before + 1);
    h_say("a certificate of another CA is logged as a bad certificate");
}

/* Replace the token file's content with `text` (atomically), SIGHUP, and wait until
 * every node logged one more failed reload. */
static void reload_fails(const char *text, const char *what)
{
    int before[CL_NODES];
    for (int i = 0; i < CL_NODES; i++) {
        before[i] = log_count(i, "msg=\"token reload failed: the old tokens stay\"", NULL, NULL);
    }
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.new", cl_token_file);
    FILE *f = fopen(tmp, "w");
    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0 || rename(tmp, cl_token_file) != 0) {
        H_FAIL("write %s", cl_token_file);
    }
    cl_reload_tokens();
    for (int i = 0; i < CL_NODES; i++) {
        expect_log(i, "msg=\"token reload failed: the old tokens stay\"", NULL, before[i] + 1);
    }
    expect_everywhere(NEW_READER_TOKEN, RPC_OK, what);
}

static void case_reload(void)
{
    int leader = cl_leader(10000);
    struct rc reader, gateway;
    if (rc_open(&reader, leader) != 0 || rc_hello(&reader, CL_READER_TOKEN) != RPC_OK ||
        rc_open(&gateway, leader) != 0 || rc_hello(&gateway, CL_GATEWAY_TOKEN) != RPC_OK) {
        H_FAIL("hello before the reload");
    }
    expect_everywhere(NEW_READER_TOKEN, RPC_EAUTH, "a token not yet in the file is refused");

    const struct cl_token after[] = {
        cl_default_tokens[0], cl_default_tokens[1], {"reader", "test-reader-2", NEW_READER_TOKEN, ""}};
    cl_write_tokens(after, 3);
    cl_reload_tokens();
    expect_everywhere(NEW_READER_TOKEN, RPC_OK, "the added token is accepted without a restart");
    expect_everywhere(CL_READER_TOKEN, RPC_EAUTH, "the removed token is refused without a restart");
    for (int i = 0; i < CL_NODES; i++) {
        expect_log(i, "msg=\"tokens reloaded\"", " tokens=", 1);
    }
    if (log_count(leader, "msg=\"tokens reloaded\"", " closed=0", NULL) != 0) {
        H_FAIL("the leader logged no connection closed by the reload");
    }
    if (!rc_closed(&reader, 5000)) {
        H_FAIL("a connection authenticated with the removed token stayed open");
    }
    struct rpc_request req = {.op = RPC_OP_STATUS};
    struct rpc_response resp;
    if (rc_call(&gateway, &req, &resp) != 0 || resp.status != RPC_OK) {
        H_FAIL("a connection with a kept token was disturbed by the reload");
    }
    rc_close(&reader);
    rc_close(&gateway);
    h_say("the removed token's connection was closed; a kept token's connection serves");

    reload_fails("admin ops not-a-hash\n", "a file that does not parse changes nothing");
    reload_fails("# nothing\n", "an empty file changes nothing");

    cl_write_tokens(cl_default_tokens, CL_DEFAULT_TOKENS);
    cl_reload_tokens();
    expect_everywhere(CL_READER_TOKEN, RPC_OK, "the first tokens are back");
}

int main(int argc, char **argv)
{
    bool tls = argc == 3 && strcmp(argv[2], "tls") == 0;
    if (argc != 2 && !tls) {
        fprintf(stderr, "usage: %s <tallyd> [tls]\n", argv[0]);
        return 2;
    }
    h_init("tally-auth-test", 150);
    if (tls) {
        cl_tls_setup();
    }
    cl_start(argv[1]);
    case_failed_login_logged();
    if (tls) {
        case_certificate_not_listed_logged();
    }
    case_reload();
    cl_converge_and_stop();
    h_pass();
    return 0;
}
