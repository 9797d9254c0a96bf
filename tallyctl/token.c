/*
 * token.c: minting bearer tokens (token new).
 *
 * A node keeps only a token's SHA-256, in its token file (docs/operations.md); so the
 * token is made here from getrandom(2), shown once, and what the operator adds to every
 * node's token file is the line with its hash, its role, its name and its scope. Nothing
 * is sent anywhere: the command needs no cluster, and checks the line against the rules
 * tallyd reads it by, so a line it prints is one tallyd accepts.
 */
#include "tallyctl/tallyctl.h"

#include <errno.h>
#include <string.h>

#define TOKEN_PREFIX "tally-"
#define TOKEN_RANDOM_BYTES 32 /* 256 bits, 64 hex digits */
#define TOKEN_SIZE (sizeof(TOKEN_PREFIX) + 2 * TOKEN_RANDOM_BYTES)
#define TOKEN_NAME_MAX 48  /* a principal: [A-Za-z0-9._:@-] (tallyd's token file) */
#define TOKEN_LINE_MAX 512 /* tallyd reads token-file lines of at most this many bytes */
#define SCOPE_ROOTS_MAX 16 /* root accounts in one scope */
#define HASH_HEX (2 * TALLY_KEY_HASH_SIZE)

static bool principal_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > TOKEN_NAME_MAX) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (c != '\0' && strchr("._:@-", c) != NULL);
        if (!ok) {
            return false;
        }
    }
    return true;
}

/* --scope: 1..SCOPE_ROOTS_MAX account names joined by ','. Returns 0 or CTL_USAGE. */
static int scope_check(struct ctl__ctx *x, const char *scope)
{
    char name[TALLY_NAME_MAX + 2];
    const char *p = scope;
    for (int roots = 1; roots <= SCOPE_ROOTS_MAX; roots++) {
        size_t len = strcspn(p, ",");
        if (len == 0 || len > TALLY_NAME_MAX) {
            return ctl__usage_error(x,
                                    "--scope: root account names of 1 to %d bytes, "
                                    "joined by ','",
                                    TALLY_NAME_MAX);
        }
        memcpy(name, p, len);
        name[len] = '\0';
        if (ctl__check_name(x, "--scope", name, TALLY_NAME_MAX) != 0) {
            return CTL_USAGE;
        }
        if (p[len] == '\0') {
            return 0;
        }
        p += len + 1;
    }
    return ctl__usage_error(x, "--scope: at most %d root accounts", SCOPE_ROOTS_MAX);
}

static void print_token(struct ctl__ctx *x, const char *role, const char *name, const char *scope,
                        const char *token, const char *hash_hex, const char *line)
{
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_object_begin(&w);
        ctl__jw_bool(&w, "ok", true);
        ctl__jw_str(&w, "role", role);
        ctl__jw_str(&w, "name", name);
        ctl__jw_str_or_null(&w, "scope", scope); /* null when unscoped */
        ctl__jw_str(&w, "token", token);
        ctl__jw_str(&w, "sha256", hash_hex);
        ctl__jw_str(&w, "line", line);
        ctl__jw_object_end(&w);
    } else {
        ctl__kv("token", "%s", token);
        ctl__kv("line", "%s", line);
    }
    fprintf(x->json ? stderr : stdout,
            "store the token now: it is not kept; add the line to every node's token file\n");
}

int ctl__cmd_token_new(struct ctl__ctx *x)
{
    const char *role = x->a->value[CTL_OPT_ROLE], *name = x->a->value[CTL_OPT_NAME];
    const char *scope = x->a->given[CTL_OPT_SCOPE] ? x->a->value[CTL_OPT_SCOPE] : "";
    if (!x->a->given[CTL_OPT_ROLE] || !x->a->given[CTL_OPT_NAME]) {
        return ctl__usage_error(x, "--role and --name are required");
    }
    if (strcmp(role, "admin") != 0 && strcmp(role, "gateway") != 0 && strcmp(role, "reader") != 0) {
        return ctl__usage_error(x, "--role: admin, gateway or reader");
    }
    if (!principal_ok(name)) {
        return ctl__usage_error(x, "--name: 1 to %d bytes of [A-Za-z0-9._:@-]", TOKEN_NAME_MAX);
    }
    if (x->a->given[CTL_OPT_SCOPE] && scope_check(x, scope) != 0) {
        return CTL_USAGE;
    }
    char token[TOKEN_SIZE], hash_hex[HASH_HEX + 1], line[TOKEN_LINE_MAX + 2];
    uint8_t hash[TALLY_KEY_HASH_SIZE];
    if (ctl__new_secret(TOKEN_PREFIX, TOKEN_RANDOM_BYTES, token) != 0) {
        ctl__say_error(x->what, "getrandom: %s", strerror(errno));
        return CTL_UNAVAILABLE;
    }
    /* A token's hash in the token file is the same SHA-256 a key's is. */
    if (tally_key_hash(token, hash) != 0) {
        explicit_bzero(token, sizeof(token));
        ctl__say_error(x->what, "cannot hash the new token");
        return CTL_UNAVAILABLE;
    }
    ctl__hex(hash, sizeof(hash), hash_hex);
    int n = snprintf(line, sizeof(line), "%s %s %s%s%s", role, name, hash_hex,
                     scope[0] != '\0' ? " scope=" : "", scope);
    if (n < 0 || (size_t)n > TOKEN_LINE_MAX) {
        explicit_bzero(token, sizeof(token));
        return ctl__usage_error(x, "--scope: the token-file line would be longer than %d bytes",
                                TOKEN_LINE_MAX);
    }
    print_token(x, role, name, scope, token, hash_hex, line);
    explicit_bzero(token, sizeof(token));
    return CTL_OK;
}
