/*
 * key.c: the virtual key commands (add, revoke, show, hash).
 *
 * The ledger stores only a key's SHA-256; a new secret is made here from getrandom(2),
 * shown once and kept nowhere, and the buffers tallyctl copies a secret into are wiped
 * before the command returns.
 */
#include "tallyctl/tallyctl.h"

#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#define SECRET_PREFIX "sk-tally-"
#define SECRET_RANDOM_BYTES 16 /* 128 bits, 32 hex digits */
#define SECRET_SIZE (sizeof(SECRET_PREFIX) + 2 * SECRET_RANDOM_BYTES)
#define KEY_HASH_HEX (2 * TALLY_KEY_HASH_SIZE)

int ctl__new_secret(const char *prefix, size_t n_random, char *out)
{
    uint8_t random[64];
    size_t got = 0;
    assert(n_random <= sizeof(random));
    for (int tries = 0; got < n_random && tries < 100; tries++) {
        ssize_t n = getrandom(random + got, n_random - got, 0);
        if (n < 0 && errno != EINTR) {
            return -1;
        }
        if (n > 0) {
            got += (size_t)n;
        }
    }
    if (got < n_random) {
        errno = EAGAIN;
        return -1;
    }
    memcpy(out, prefix, strlen(prefix));
    tally_hex(random, n_random, out + strlen(prefix));
    explicit_bzero(random, sizeof(random));
    return 0;
}

int ctl__cmd_key_add(struct ctl__ctx *x)
{
    const char *account = x->words[0];
    char secret[SECRET_SIZE] = "", hash_hex[KEY_HASH_HEX + 1], id_hex[CTL_REQUEST_ID_HEX + 1];
    uint8_t hash[TALLY_KEY_HASH_SIZE], idbuf[TALLY_REQUEST_ID_SIZE];
    const uint8_t *id;
    bool generated = !x->a->given[CTL_OPT_KEY_HASH];
    if (ctl__check_name(x, "ACCOUNT", account, TALLY_NAME_MAX) != 0 ||
        ctl__opt_request_id(x, idbuf, &id) != 0) {
        return CTL_USAGE;
    }
    if (!generated) {
        if (ctl__parse_hex(x, "--key-hash", x->a->value[CTL_OPT_KEY_HASH], hash, sizeof(hash)) !=
            0) {
            return CTL_USAGE;
        }
    } else {
        if (ctl__new_secret(SECRET_PREFIX, SECRET_RANDOM_BYTES, secret) != 0) {
            ctl__say_error(x->what, "getrandom: %s", strerror(errno));
            return CTL_UNAVAILABLE;
        }
        if (tally_key_hash(secret, hash) != 0) {
            ctl__say_error(x->what, "cannot hash the new secret");
            return CTL_UNAVAILABLE;
        }
    }
    ctl__hex(hash, sizeof(hash), hash_hex);
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        explicit_bzero(secret, sizeof(secret));
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_key_add(x->c, account, NULL, hash, id, x->timeout_ms, &res);
    if (rc < 0) {
        explicit_bzero(secret, sizeof(secret));
        if (generated && ctl__exit_code_of(rc) == CTL_UNAVAILABLE) {
            char hint[256];
            snprintf(hint, sizeof(hint),
                     "key %s may have been added without its secret being shown: revoke it "
                     "with 'tallyctl key revoke %s'",
                     hash_hex, hash_hex);
            return ctl__call_failed(x, account, rc, &res, hint);
        }
        return ctl__write_failed(x, account, rc, &res);
    }
    ctl__hex(res.request_id, TALLY_REQUEST_ID_SIZE, id_hex);
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_object_begin(&w);
        ctl__jw_bool(&w, "ok", true);
        ctl__jw_str(&w, "action", "added");
        ctl__jw_str(&w, "account", account);
        ctl__jw_str_or_null(&w, "secret", secret); /* "" unless generated */
        ctl__jw_str(&w, "key_hash", hash_hex);
        ctl__jw_str(&w, "request_id", id_hex);
        ctl__jw_u64(&w, "index", res.index);
        ctl__jw_bool(&w, "replayed", (res.flags & TALLY_RESULT_REPLAYED) != 0);
        ctl__jw_object_end(&w);
    } else {
        ctl__kv("account", "%s", account);
        if (generated) {
            ctl__kv("secret", "%s", secret);
        }
        ctl__kv("key hash", "%s", hash_hex);
        if (res.flags & TALLY_RESULT_REPLAYED) {
            ctl__kv("note", "replayed: this request id was answered before");
        }
    }
    if (generated) {
        fprintf(x->json ? stderr : stdout, "store it now: it is not kept\n");
    }
    explicit_bzero(secret, sizeof(secret));
    return CTL_OK;
}

int ctl__cmd_key_revoke(struct ctl__ctx *x)
{
    uint8_t hash[TALLY_KEY_HASH_SIZE], idbuf[TALLY_REQUEST_ID_SIZE];
    char hash_hex[KEY_HASH_HEX + 1];
    const uint8_t *id;
    if (ctl__parse_hex(x, "HASH", x->words[0], hash, sizeof(hash)) != 0 ||
        ctl__opt_request_id(x, idbuf, &id) != 0) {
        return CTL_USAGE;
    }
    ctl__hex(hash, sizeof(hash), hash_hex);
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_key_revoke(x->c, hash, id, x->timeout_ms, &res);
    return ctl__write_answer(x, "key", "key_hash", hash_hex, "revoked", rc, &res);
}

int ctl__cmd_key_show(struct ctl__ctx *x)
{
    uint8_t hash[TALLY_KEY_HASH_SIZE];
    char hash_hex[KEY_HASH_HEX + 1], account[TALLY_NAME_MAX + 1] = "";
    int revoked = 0;
    if (ctl__parse_hex(x, "HASH", x->words[0], hash, sizeof(hash)) != 0) {
        return CTL_USAGE;
    }
    ctl__hex(hash, sizeof(hash), hash_hex);
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_key_get(x->c, hash, ctl__read_flags(x), x->timeout_ms, account, &revoked, &res);
    if (rc < 0) {
        return ctl__call_failed(x, hash_hex, rc, &res, NULL);
    }
    account[TALLY_NAME_MAX] = '\0';
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_object_begin(&w);
        ctl__jw_str(&w, "key_hash", hash_hex);
        ctl__jw_str(&w, "account", account);
        ctl__jw_bool(&w, "revoked", revoked != 0);
        ctl__jw_object_end(&w);
    } else {
        ctl__kv("key hash", "%s", hash_hex);
        ctl__kv("account", "%s", account);
        ctl__kv("status", "%s", revoked ? "REVOKED" : "active");
    }
    return CTL_OK;
}

int ctl__cmd_key_hash(struct ctl__ctx *x)
{
    char line[CTL_SECRET_MAX + 2], hash_hex[KEY_HASH_HEX + 1];
    uint8_t hash[TALLY_KEY_HASH_SIZE];
    const char *secret;
    if (x->n_words == 1) {
        ctl__say_error(NULL, "warning: a SECRET argument shows the key to anyone who can list "
                             "processes (ps); give it on stdin");
        secret = x->words[0];
    } else {
        if (fgets(line, sizeof(line), stdin) == NULL) {
            return ctl__usage_error(x, "no secret on stdin");
        }
        line[strcspn(line, "\r\n")] = '\0';
        secret = line;
    }
    if (secret[0] == '\0' || strlen(secret) > CTL_SECRET_MAX) {
        explicit_bzero(line, sizeof(line));
        return ctl__usage_error(x, "SECRET: 1 to %d bytes", CTL_SECRET_MAX);
    }
    int rc = tally_key_hash(secret, hash);
    explicit_bzero(line, sizeof(line));
    if (rc != 0) {
        return ctl__usage_error(x, "SECRET: %s", tally_strerror(rc));
    }
    ctl__hex(hash, sizeof(hash), hash_hex);
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_object_begin(&w);
        ctl__jw_str(&w, "key_hash", hash_hex);
        ctl__jw_object_end(&w);
    } else {
        printf("%s\n", hash_hex);
    }
    return CTL_OK;
}
