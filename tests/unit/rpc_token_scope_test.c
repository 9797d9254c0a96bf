/*
 * rpc_token_scope_test.c: the token file's optional scope field against
 * docs/operations.md ("Authentication and roles"): `scope=ROOT[,ROOT...]` with 1 to 16
 * valid account names is read onto the token, no field means unscoped, and anything
 * else stops the load with FILE:LINE and the reason.
 */
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */

#include "rpc/errors.h"
#include "rpc/server.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HASH "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

/* Load a token file holding `text`: the load's return, tokens in *out (caller frees). */
static int load(const char *text, struct rpc_token **out, size_t *n, char *errmsg, size_t size)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/tokens", test_tmpdir());
    FILE *f = fopen(path, "w");
    REQUIRE(f != NULL);
    fputs(text, f);
    REQUIRE(fclose(f) == 0);
    *out = NULL;
    *n = 0;
    return rpc_token_file_load(path, out, n, errmsg, size);
}

static void scope_field_is_read_onto_the_token(void)
{
    struct rpc_token *t;
    size_t n;
    char err[256];
    int rv = load("admin ops " HASH "\n"
                  "gateway gw-a " HASH " scope=org-a\n"
                  "reader dash\t" HASH "\tscope=org-b,org-c # two roots\n",
                  &t, &n, err, sizeof(err));
    CHECK_EQ_INT(rv, 0);
    REQUIRE(rv == 0 && n == 3);
    CHECK_EQ_STR(t[0].scope, "");
    CHECK_EQ_STR(t[1].scope, "org-a");
    CHECK_EQ_STR(t[1].name, "gw-a");
    CHECK_EQ_STR(t[2].scope, "org-b,org-c");
    free(t);
}

static void malformed_scope_stops_the_load_at_its_line(void)
{
    const char *bad[] = {
        "scope=",         "scope=org-a,", "scope=,org-a", "scope=org a",
        "scope=org-a,,b", "scopes=org-a", "org-a",        "scope=a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q",
        "scope=bad$name",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[512], err[256] = "";
        struct rpc_token *t;
        size_t n;
        snprintf(text, sizeof(text), "admin ops %s\ngateway gw %s %s\n", HASH, HASH, bad[i]);
        int rv = load(text, &t, &n, err, sizeof(err));
        if (rv != -RPC_START_ECONFIG || strstr(err, ":2: ") == NULL) {
            fprintf(stderr, "  '%s': %d, '%s'\n", bad[i], rv, err);
        }
        CHECK_EQ_INT(rv, -RPC_START_ECONFIG);
        CHECK(strstr(err, ":2: ") != NULL);
        free(t);
    }
    /* Sixteen roots are allowed; a fifth field is not. */
    char err[256];
    struct rpc_token *t;
    size_t n;
    CHECK_EQ_INT(load("gateway gw " HASH " scope=a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p\n", &t, &n, err,
                      sizeof(err)),
                 0);
    free(t);
    CHECK_EQ_INT(load("gateway gw " HASH " scope=a extra\n", &t, &n, err, sizeof(err)),
                 -RPC_START_ECONFIG);
    free(t);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(scope_field_is_read_onto_the_token);
    TEST(malformed_scope_stops_the_load_at_its_line);
    TEST_MAIN_END;
}
