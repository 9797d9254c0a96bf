/*
 * errors.h: the errors of starting rpc/'s parts (the client server, the HTTP endpoint, TLS,
 * token files), returned negated, each with a message in the caller's errmsg. Answers on
 * the wire have their own statuses (RPC_STATUSES in wire/wire.h).
 */
#ifndef TALLY_RPC_ERRORS_H
#define TALLY_RPC_ERRORS_H

/* X(CODE, number, message). */
#define RPC_START_ERRORS(X)                                                                  \
    X(ECONFIG, 1, "bad configuration") /* an address, a member list, a token or TLS file */  \
    X(ENOMEM, 2, "out of memory")                                                            \
    X(ELISTEN, 3, "cannot listen")     /* bind, listen or the HTTP daemon's start failed */

enum {
#define RPC_START_ERROR_ENUM(code, number, message) RPC_START_##code = number,
    RPC_START_ERRORS(RPC_START_ERROR_ENUM)
#undef RPC_START_ERROR_ENUM
    RPC_START_ECODE_MAX
};

#endif /* TALLY_RPC_ERRORS_H */
