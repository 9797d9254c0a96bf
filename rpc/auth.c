/*
 * auth.c: who a connection is and what it may do: token files, HELLO, client
 * certificates, and the role/op check before every request.
 *
 * The one idea: a secret never stays in memory. A token file holds SHA-256 hashes, and
 * HELLO hashes the bearer token and compares it with every entry in constant time. What
 * authentication decides is fixed on the connection once (a role, a principal, the actor
 * of every command it sends, and a scope, the roots every command and read is confined
 * to); rpc_role_allows (wire/proto.c, shared with the client) then gates each request by
 * role and op, and the scope travels with each command to the ledger, which judges it.
 */
#include "rpc/server_internal.h"
#include "rpc/tls.h"

#include <ctype.h>
#include <errno.h>
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

/* Parse one non-comment line "ROLE NAME HEX [scope=ROOTS]" into t. */
static const char *token_parse_line(char *line, struct rpc_token *t)
{
    char *save = NULL;
    char *role = strtok_r(line, " \t", &save);
    char *name = strtok_r(NULL, " \t", &save);
    char *hex = strtok_r(NULL, " \t", &save);
    char *scope = strtok_r(NULL, " \t", &save);
    if (role == NULL || name == NULL || hex == NULL || strtok_r(NULL, " \t", &save) != NULL) {
        return "expected \"ROLE NAME SHA256HEX [scope=ROOT[,ROOT...]]\"";
    }
    const char *why = token_parse_scope(scope, t);
    if (why != NULL) {
        return why;
    }
    t->role = rpc_role_parse(role);
    if (t->role < 0) {
        return "role must be admin, gateway or reader";
    }
    if (!principal_valid(name)) {
        return "name must be 1-48 bytes of [A-Za-z0-9._:@-]";
    }
    if (rpc_unhex(hex, t->sha256, sizeof(t->sha256)) != 0) {
        return "the hash must be 64 hex digits (SHA-256 of the token)";
    }
    snprintf(t->name, sizeof(t->name), "%s", name);
    return NULL;
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

/* The token matching `secret`, compared in constant time against every entry. */
static const struct rpc_token *token_find(const struct rpc_server *s, const char *secret)
{
    uint8_t h[32];
    const struct rpc_token *found = NULL;
    rpc_token_hash(secret, h);
    for (size_t i = 0; i < s->n_tokens; i++) {
        if (CRYPTO_memcmp(h, s->tokens[i].sha256, sizeof(h)) == 0 && found == NULL) {
            found = &s->tokens[i];
        }
    }
    return found;
}

/* ---- HELLO and permissions. ---- */

/* Refuse `c` with RPC_EAUTH (counted) and close it once the answer is written. */
static void auth_refuse(struct rpc__conn *c, uint64_t seq, const char *message)
{
    c->srv->m.auth_failures++;
    rpc__answer_error(c, seq, RPC_EAUTH, message, true);
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
    if (req->u.hello.token[0] == '\0' && c->tls != NULL) {
        char principal[RPC_TOKEN_MAX];
        int role = rpc_tls_peer_role(c->tls, principal, sizeof(principal));
        if (role == RPC_ROLE_NONE || !principal_valid(principal)) {
            auth_refuse(c, req->seq,
                        "no token, and no client certificate naming a role (OU) and a "
                        "principal (CN)");
            return;
        }
        c->role = role;
        memcpy(c->principal, principal, strlen(principal) + 1); /* <= 48 bytes: checked */
    } else {
        const struct rpc_token *t = token_find(s, req->u.hello.token);
        if (t == NULL) {
            auth_refuse(c, req->seq, "unknown token");
            return;
        }
        c->role = t->role;
        snprintf(c->principal, sizeof(c->principal), "%s", t->name);
        snprintf(c->scope, sizeof(c->scope), "%s", t->scope);
    }
    /* Authenticated: from now on frames may be as large as the server allows. */
    c->framer.max_body = s->max_frame;
    struct rpc_response resp = {.seq = req->seq};
    resp.u.hello.role = (uint8_t)c->role;
    resp.u.hello.node_id = node_id(s->node);
    rpc__answer(c, RPC_OP_HELLO, &resp);
}
