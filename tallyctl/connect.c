/*
 * connect.c: tallyctl's libtally client, built from the flags and the environment.
 *
 * The client is opened on demand, by the first handler that needs it and only after that
 * handler has checked its input, so that bad input never costs a connection. Each setting
 * comes from its flag, else from its environment variable (TALLY_ENDPOINTS, TALLY_TOKEN,
 * TALLY_TOKEN_FILE, TALLYCTL_TLS_*), else from libtally's default. Secrets are better
 * read from files or the environment than given as flags, which every user sees in ps:
 * such flags get a warning.
 */
#include "tallyctl/tallyctl.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int ctl__read_secret_file(const char *what, const char *path, char *out, size_t max)
{
    char buf[TALLY_TOKEN_MAX > CTL_SECRET_MAX ? TALLY_TOKEN_MAX + 4 : CTL_SECRET_MAX + 4];
    size_t n = 0;
    assert(max + 3 <= sizeof(buf));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ctl__say_error(what, "%s: %s", path, strerror(errno));
        return -1;
    }
    while (n < max + 3) { /* bounded: each pass reads >= 1 byte or ends */
        ssize_t got = read(fd, buf + n, max + 3 - n);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got < 0) {
            ctl__say_error(what, "%s: %s", path, strerror(errno));
            close(fd);
            explicit_bzero(buf, sizeof(buf));
            return -1;
        }
        if (got == 0) {
            break;
        }
        n += (size_t)got;
    }
    close(fd);
    if (n > 0 && buf[n - 1] == '\n') {
        n--;
        if (n > 0 && buf[n - 1] == '\r') {
            n--;
        }
    }
    bool too_long = n > max;
    if (too_long || memchr(buf, '\n', n) != NULL || memchr(buf, '\0', n) != NULL) {
        if (too_long) {
            ctl__say_error(what, "%s: the secret is longer than %zu bytes", path, max);
        } else {
            ctl__say_error(what, "%s: holds more than a bare secret on one line", path);
        }
        explicit_bzero(buf, sizeof(buf));
        return -1;
    }
    memcpy(out, buf, n);
    out[n] = '\0';
    explicit_bzero(buf, sizeof(buf));
    return 0;
}

void ctl__warn_secrets_in_argv(const struct ctl__ctx *x)
{
    if (x->a->given[CTL_OPT_TOKEN]) {
        ctl__say_error(NULL, "warning: --token shows the token to anyone who can list processes "
                             "(ps); use --token-file F or TALLY_TOKEN");
    }
    if (x->a->given[CTL_OPT_KEY]) {
        ctl__say_error(NULL, "warning: --key shows the key to anyone who can list processes "
                             "(ps); use --key-file F or TALLY_KEY");
    }
}

/* Work out the token: --token, --token-file, TALLY_TOKEN, TALLY_TOKEN_FILE, in that order
 * (none: ""). Returns 0 or an exit code. */
static int resolve_token(struct ctl__ctx *x)
{
    const struct ctl__args *a = x->a;
    const char *token = NULL, *file = NULL;
    if (a->given[CTL_OPT_TOKEN] && a->given[CTL_OPT_TOKEN_FILE]) {
        return ctl__usage_error(x, "give --token or --token-file, not both");
    }
    if (a->given[CTL_OPT_TOKEN]) {
        token = a->value[CTL_OPT_TOKEN];
    } else if (a->given[CTL_OPT_TOKEN_FILE]) {
        file = a->value[CTL_OPT_TOKEN_FILE];
    } else if (getenv("TALLY_TOKEN") != NULL) {
        token = getenv("TALLY_TOKEN");
    } else if (getenv("TALLY_TOKEN_FILE") != NULL && getenv("TALLY_TOKEN_FILE")[0] != '\0') {
        file = getenv("TALLY_TOKEN_FILE");
    }
    x->token[0] = '\0';
    if (file != NULL) {
        if (ctl__read_secret_file("token file", file, x->token, TALLY_TOKEN_MAX) != 0) {
            return CTL_USAGE;
        }
        x->token_given = true;
    } else if (token != NULL) {
        if (strlen(token) > TALLY_TOKEN_MAX) {
            return ctl__usage_error(x, "the token is longer than %d bytes", TALLY_TOKEN_MAX);
        }
        snprintf(x->token, sizeof(x->token), "%s", token);
        x->token_given = true;
    }
    return 0;
}

const char *ctl__option_or_env(const struct ctl__ctx *x, int o, const char *env)
{
    const char *v = x->a->given[o] ? x->a->value[o] : getenv(env);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

int ctl__ctx_client(struct ctl__ctx *x)
{
    struct tally_config cfg;
    char errmsg[TALLY_ERRMSG_SIZE] = "";
    const char *endpoints = ctl__option_or_env(x, CTL_OPT_ENDPOINTS, "TALLY_ENDPOINTS");
    if (x->c != NULL) {
        return 0;
    }
    if (endpoints == NULL) {
        return ctl__usage_error(x, "no endpoints: give --endpoints HOST:PORT,... or set "
                                   "TALLY_ENDPOINTS");
    }
    int rc = resolve_token(x);
    if (rc != 0) {
        return rc;
    }
    tally_config_init(&cfg);
    cfg.endpoints = endpoints;
    cfg.token = x->token;
    /* TLS: flags, else TALLYCTL_TLS_* (not TALLY_TLS_*, which tallyd reads for its own
     * certificate and may be set in the same shell). */
    cfg.tls_ca_file = ctl__option_or_env(x, CTL_OPT_TLS_CA, "TALLYCTL_TLS_CA");
    cfg.tls_cert_file = ctl__option_or_env(x, CTL_OPT_TLS_CERT, "TALLYCTL_TLS_CERT");
    cfg.tls_key_file = ctl__option_or_env(x, CTL_OPT_TLS_KEY, "TALLYCTL_TLS_KEY");
    cfg.tls_server_name =
        ctl__option_or_env(x, CTL_OPT_TLS_SERVER_NAME, "TALLYCTL_TLS_SERVER_NAME");
    if (x->timeout_ms > 0) {
        cfg.deadline_ms = x->timeout_ms;
        if (x->timeout_ms < 1000) {
            cfg.connect_timeout_ms = x->timeout_ms;
        }
    }
    rc = tally_open(&x->c, &cfg, errmsg);
    if (rc < 0) {
        x->c = NULL;
        ctl__say_error(x->what, "%s: %s", tally_strerror(rc), errmsg[0] ? errmsg : "cannot open");
        return ctl__exit_code_of(rc);
    }
    return 0;
}

unsigned ctl__read_flags(const struct ctl__ctx *x)
{
    return x->a->given[CTL_OPT_STALE] ? TALLY_READ_STALE : 0;
}
