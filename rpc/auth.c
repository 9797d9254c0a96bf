/*
 * auth.c: who a connection is and what it may do: token files, HELLO, client
 * certificates, and the role/op check before every request.
 *
 * The one idea: a secret never stays in memory. A token file holds SHA-256 hashes (of
 * bearer tokens, or of client certificates' DER), and HELLO hashes what the client shows
 * and compares it with every entry in constant time. What authentication decides is
 * fixed on the connection once (a role, a principal, the actor of every command it
 * sends, a scope, the roots every command and read is confined to, and the entry it
 * matched, so a reload can tell who lost theirs); rpc_role_allows (wire/proto.c, shared
 * with the client) then gates each request by role and op, and the scope travels with
 * each command to the ledger, which judges it. A failed login is logged with the peer's
 * address and the reason, never with what the client sent, at most
 * RPC__AUTH_LOG_PER_SECOND lines a second.
 */
#include "rpc/server_internal.h"
#include "rpc/tls.h"

#include <ctype.h>
#include <errno.h>
#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Tokens. ---- */

void rpc_token_hash(const char *token, uint8_t out[32])
{
    SHA256((const unsigned char *)token, strlen(token), out);
}

static bool principal_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > RPC_TOKEN_NAME_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)s[i]) && strchr("._:@-", s[i]) == NULL) {
            return false;
        }
    }
    return true;
}

/* The optional 4th field "scope=ROOT[,ROOT...]" (NULL: none, unscoped) into t. */
static const char *token_parse_scope(const char *field, struct rpc_token *t)
{
    t->scope[0] = '\0';
    if (field == NULL) {
        return NULL;
    }
    const char *roots = field + strlen("scope=");
    if (strncmp(field, "scope=", strlen("scope=")) != 0 || roots[0] == '\0' ||
        !ledger_scope_valid(roots)) {
        return "the 4th field must be scope=ROOT[,ROOT...]: 1-16 account names";
    }
    snprintf(t->scope, sizeof(t->scope), "%s", roots); /* fits: ledger_scope_valid */
    return NULL;
}

/* Parse one non-comment line "ROLE NAME [cert:]HEX [scope=ROOTS]" into t. */
static const char *token_parse_line(char *line, struct rpc_token *t)
{
    char *save = NULL;
    char *role = strtok_r(line, " \t", &save);
    char *name = strtok_r(NULL, " \t", &save);
    char *hex = strtok_r(NULL, " \t", &save);
    char *scope = strtok_r(NULL, " \t", &save);
    if (role == NULL || name == NULL || hex == NULL || strtok_r(NULL, " \t", &save) != NULL) {
        return "expected \"ROLE NAME [cert:]SHA256HEX [scope=ROOT[,ROOT...]]\"";
    }
    memset(t, 0, sizeof(*t));
    t->cert = strncmp(hex, "cert:", 5) == 0;
    hex += t->cert ? 5 : 0;
    t->role = rpc_role_parse(role);
    if (t->role < 0) {
        return "role must be admin, gateway or reader";
    }
    if (!principal_valid(name)) {
        return "name must be 1-48 bytes of [A-Za-z0-9._:@-]";
    }
    if (rpc_unhex(hex, t->sha256, sizeof(t->sha256)) != 0) {
        return t->cert ? "cert: must be followed by 64 hex digits (SHA-256 of the DER)"
                       : "the hash must be 64 hex digits (SHA-256 of the token)";
    }
    snprintf(t->name, sizeof(t->name), "%s", name);
    return token_parse_scope(scope, t);
}

int rpc_token_file_load(const char *path, struct rpc_token **out, size_t *n, char *errmsg,
                        size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(errmsg, size, "%s: %s", path, strerror(errno));
        return -RPC_START_ECONFIG;
    }
    struct rpc_token *tokens = NULL;
    size_t count = 0;
    char line[514];
    int lineno = 0;
    const char *why = NULL;
    while (why == NULL && fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
            why = "line longer than 512 bytes";
            break;
        }
        char *hash = strchr(line, '#');
        if (hash != NULL) {
            *hash = '\0';
        }
        line[strcspn(line, "\r\n")] = '\0';
        if (strspn(line, " \t") == strlen(line)) {
            continue;
        }
        if (count == RPC_TOKENS_MAX) {
            why = "more than 1024 tokens";
            break;
        }
        struct rpc_token *grown = realloc(tokens, (count + 1) * sizeof(*tokens));
        if (grown == NULL) {
            why = "out of memory";
            break;
        }
        tokens = grown;
        why = token_parse_line(line, &tokens[count]);
        count += why == NULL;
    }
    if (why == NULL && ferror(f)) {
        why = strerror(errno);
    }
    fclose(f);
    if (why != NULL) {
        snprintf(errmsg, size, "%s:%d: %s", path, lineno, why);
        free(tokens);
        return -RPC_START_ECONFIG;
    }
    *out = tokens;
    *n = count;
    return 0;
}

/* The entry of kind `cert` whose hash is `h`, compared in constant time against every
 * entry. */
static const struct rpc_token *token_find(const struct rpc_server *s, const uint8_t h[32],
                                          bool cert)
{
    const struct rpc_token *found = NULL;
    for (size_t i = 0; i < s->n_tokens; i++) {
        if (CRYPTO_memcmp(h, s->tokens[i].sha256, 32) == 0 && s->tokens[i].cert == cert &&
            found == NULL) {
            found = &s->tokens[i];
        }
    }
    return found;
}

static bool token_listed(const struct rpc_token *tokens, size_t n, const struct rpc_token *t)
{
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&tokens[i], t, sizeof(*t)) == 0) {
            return true;
        }
    }
    return false;
}

int rpc_server_set_tokens(struct rpc_server *s, const struct rpc_token *tokens, size_t n,
                          unsigned *closed)
{
    struct rpc_token *copy = NULL;
    if (n > 0 && (copy = malloc(n * sizeof(*copy))) == NULL) {
        return -RPC_START_ENOMEM;
    }
    if (n > 0) {
        memcpy(copy, tokens, n * sizeof(*copy));
    }
    free(s->tokens);
    s->tokens = copy;
    s->n_tokens = n;
    unsigned count = 0;
    struct rpc__conn *next;
    for (struct rpc__conn *c = s->conns; c != NULL; c = next) {
        next = c->next; /* closing unlinks c */
        if (c->role != RPC_ROLE_NONE && !token_listed(copy, n, &c->cred)) {
            rpc__conn_close(c); /* a revoked credential must not stay in use */
            count++;
        }
    }
    if (closed != NULL) {
        *closed = count;
    }
    return 0;
}

/* ---- Failed logins. ---- */

/* "a.b.c.d:port" of `c`'s peer, or "unknown". */
static void peer_address(struct rpc__conn *c, char *out, size_t size)
{
    struct sockaddr_storage sa;
    int len = sizeof(sa);
    char host[64] = "";
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &len) != 0 || sa.ss_family != AF_INET ||
        uv_ip4_name((const struct sockaddr_in *)&sa, host, sizeof(host)) != 0) {
        snprintf(out, size, "unknown");
        return;
    }
    snprintf(out, size, "%s:%u", host,
             (unsigned)ntohs(((const struct sockaddr_in *)&sa)->sin_port));
}

/* Log a failed login of `c` (reason: a fixed text, never anything the client sent),
 * unless this second's lines are used up. */
static void auth_log(struct rpc__conn *c, const char *reason, const char *extra)
{
    struct rpc_server *s = c->srv;
    uint64_t second = uv_now(s->loop) / 1000;
    if (second != s->auth_log_second) {
        s->auth_log_second = second;
        s->auth_log_lines = 0;
    }
    if (s->auth_log_lines == RPC__AUTH_LOG_PER_SECOND) {
        s->auth_log_suppressed++;
        return;
    }
    s->auth_log_lines++;
    char peer[80], line[384], suppressed[48] = "";
    peer_address(c, peer, sizeof(peer));
    if (s->auth_log_suppressed > 0) {
        snprintf(suppressed, sizeof(suppressed), " suppressed=%llu",
                 (unsigned long long)s->auth_log_suppressed);
        s->auth_log_suppressed = 0;
    }
    snprintf(line, sizeof(line), "msg=\"login failed\" peer=%s reason=\"%s\"%s%s", peer, reason,
             extra, suppressed);
    if (s->log != NULL) {
        s->log("warn", line);
    } else {
        fprintf(stderr, "level=warn %s\n", line);
    }
}

void rpc__auth_tls_failed(struct rpc__conn *c)
{
    const char *why = rpc_tls_verify_error(c->tls);
    if (why != NULL) {
        char reason[160];
        snprintf(reason, sizeof(reason), "bad certificate: %s", why);
        c->srv->m.auth_failures++;
        auth_log(c, reason, "");
    }
}

/* ---- HELLO and permissions. ---- */

/* Refuse `c` with RPC_EAUTH (counted and logged, with `extra` " key=value" fields) and
 * close it once the answer is written. */
static void auth_refuse_logged(struct rpc__conn *c, uint64_t seq, const char *message,
                               const char *extra)
{
    c->srv->m.auth_failures++;
    auth_log(c, message, extra);
    rpc__answer_error(c, seq, RPC_EAUTH, message, true);
}

static void auth_refuse(struct rpc__conn *c, uint64_t seq, const char *message)
{
    auth_refuse_logged(c, seq, message, "");
}

/* Fix `c`'s identity to the entry `t` (borrowed; copied). */
static void auth_accept(struct rpc__conn *c, const struct rpc_token *t)
{
    c->role = t->role;
    memcpy(&c->cred, t, sizeof(c->cred)); /* padding too: reloads compare with memcmp */
    snprintf(c->principal, sizeof(c->principal), "%s", t->name);
    snprintf(c->scope, sizeof(c->scope), "%s", t->scope);
}

/* HELLO with no token on a TLS connection: the client certificate's fingerprint must be
 * a cert: entry of the token file. The matched entry, or NULL (refused and logged). */
static const struct rpc_token *auth_by_certificate(struct rpc__conn *c, uint64_t seq)
{
    uint8_t fp[32];
    if (rpc_tls_peer_fingerprint(c->tls, fp) != 0) {
        auth_refuse(c, seq, "no token and no client certificate");
        return NULL;
    }
    const struct rpc_token *t = token_find(c->srv, fp, true);
    if (t == NULL) {
        /* The fingerprint is public (the client showed the certificate) and is what an
         * operator needs to add it. */
        char hex[65], extra[96];
        rpc_hex(fp, sizeof(fp), hex);
        snprintf(extra, sizeof(extra), " cert_sha256=%s", hex);
        auth_refuse_logged(c, seq, "client certificate not in the token file", extra);
    }
    return t;
}

bool rpc__auth_check(struct rpc__conn *c, const struct rpc_request *req)
{
    if (c->role == RPC_ROLE_NONE && req->op != RPC_OP_HELLO) {
        auth_refuse(c, req->seq, "the first request must be hello");
        return false;
    }
    if (!rpc_role_allows(c->role, req->op, req->op == RPC_OP_WRITE ? req->u.write.type : 0)) {
        rpc__answer_error(c, req->seq, RPC_EFORBIDDEN, "the connection's role may not do this",
                          false);
        return false;
    }
    /* The state hash covers every tenant and membership the whole cluster: a scoped
     * credential may do neither. */
    if ((req->op == RPC_OP_HASH || req->op == RPC_OP_MEMBERSHIP) && c->scope[0] != '\0') {
        rpc__answer_error(c, req->seq, RPC_EFORBIDDEN, "a scoped credential may not do this",
                          false);
        return false;
    }
    return true;
}

void rpc__auth_hello(struct rpc__conn *c, const struct rpc_request *req)
{
    struct rpc_server *s = c->srv;
    if (c->role != RPC_ROLE_NONE) {
        rpc__answer_error(c, req->seq, RPC_EBADREQ, "already authenticated", false);
        return;
    }
    if (req->u.hello.version != RPC_PROTOCOL_VERSION) {
        auth_refuse(c, req->seq, "unsupported protocol version");
        return;
    }
    const struct rpc_token *t;
    if (req->u.hello.token[0] == '\0' && c->tls != NULL) {
        if ((t = auth_by_certificate(c, req->seq)) == NULL) {
            return;
        }
    } else {
        uint8_t h[32];
        rpc_token_hash(req->u.hello.token, h);
        if ((t = token_find(s, h, false)) == NULL) {
            auth_refuse(c, req->seq, "unknown token");
            return;
        }
    }
    auth_accept(c, t);
    /* Authenticated: from now on frames may be as large as the server allows. */
    c->framer.max_body = s->max_frame;
    struct rpc_response resp = rpc__answer_begin(req->seq);
    resp.u.hello.role = (uint8_t)c->role;
    resp.u.hello.node_id = node_id(s->node);
    resp.status = RPC_OK;
    rpc__answer(c, RPC_OP_HELLO, &resp);
}
