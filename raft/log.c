/*
 * log.c: the node's error names, log lines and fatal exits.
 *
 * The one idea: one logfmt line per event on stderr, and a node that cannot trust its
 * state logs one fatal line and leaves through the program's on_fatal. libraft's error
 * codes are mapped to node codes in one place.
 */
#include "raft/node_internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static const char *const node_error_names[NODE_ECODE_MAX] = {[0] = "ok",
#define NODE_ERROR_NAME(code, number, message) [number] = message,
                                                             NODE_ERRORS(NODE_ERROR_NAME)
#undef NODE_ERROR_NAME
};

const char *node_strerror(int code)
{
    if (code < 0) {
        code = -code;
    }
    if (code >= NODE_ECODE_MAX) {
        return "unknown error";
    }
    return node_error_names[code];
}

/* ---- Logging: one logfmt line per event on stderr. ---- */

/* Copy `s` into `out` (size > 0) so that it can sit inside a logfmt "..." value. */
static void logfmt_quote(char *out, size_t size, const char *s)
{
    size_t j = 0;
    for (size_t i = 0; s[i] != '\0' && j + 1 < size; i++) {
        char c = s[i];
        out[j++] = (c == '"' || c == '\\' || c == '\n') ? '\'' : c;
    }
    out[j] = '\0';
}

void node__logf(const struct node *n, const char *level, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    struct timespec ts;
    struct tm tm;
    char when[32];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "ts=%s.%03ldZ level=%s node=%" PRIu64 " %s\n", when, ts.tv_nsec / 1000000,
            level, n->id, line);
}

/* Log and leave: the node must not serve from a state it cannot trust. */
void node__fatal(const struct node *n, const char *msg, const char *reason)
{
    char quoted[LEDGER_ERRMSG_SIZE + RAFT_ERRMSG_BUF_SIZE];
    logfmt_quote(quoted, sizeof(quoted), reason);
    node__logf(n, "fatal", "msg=\"%s\" reason=\"%s\"", msg, quoted);
    n->cfg.on_fatal(n->cfg.fatal_data, reason);
    abort(); /* on_fatal must not return */
}

void node_exit_fatal(void *data, const char *reason)
{
    (void)data, (void)reason;
    fflush(stderr);
    _exit(NODE_EXIT_FATAL);
}

int node__error(struct node *n, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(n->errmsg, sizeof(n->errmsg), fmt, ap);
    va_end(ap);
    return -code;
}

int node__from_raft(int rv)
{
    switch (rv) {
    case 0:
        return 0;
    case RAFT_NOMEM:
        return -NODE_ENOMEM;
    case RAFT_NOTLEADER:
        return -NODE_ENOTLEADER;
    case RAFT_LEADERSHIPLOST:
        return -NODE_ELEADERSHIPLOST;
    case RAFT_CANTCHANGE:
        return -NODE_EBUSY;
    case RAFT_BADID:
    case RAFT_DUPLICATEID:
    case RAFT_DUPLICATEADDRESS:
    case RAFT_BADROLE:
    case RAFT_NOTFOUND:
        return -NODE_EINVAL;
    case RAFT_SHUTDOWN:
    case RAFT_CANCELED:
        return -NODE_ESHUTDOWN;
    case RAFT_TOOBIG:
        return -NODE_ETOOBIG;
    default:
        return -NODE_ERAFT;
    }
}
