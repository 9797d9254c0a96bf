/*
 * wire.h: what crosses tally's boundaries, in one module: the ledger's data language
 * (types.h), the bounded msgpack reader (mp.h), the command codec (cmd.c) and the
 * client protocol's framing and messages (proto.c). This is the module's one public
 * header; ledger/, rpc/ and client/ include it and nothing else of wire/.
 *
 * The one idea behind the module: the bytes a command is made of are written and read
 * in one place, shared by the Raft log, the network and the client, and that place
 * depends on msgpack-c alone. libtally links wire/ without LMDB or libraft.
 */
#ifndef TALLY_WIRE_H
#define TALLY_WIRE_H

#include "wire/mp.h"
#include "wire/types.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ==== The command codec (cmd.c). ==== */

/* 1..max bytes of [A-Za-z0-9._:/@-], NUL-terminated within max + 1 bytes. */
bool ledger_name_valid(const char *name, size_t max);

/*
 * A scope (struct ledger_cmd.scope): "" (unscoped), or 1..LEDGER_SCOPE_ROOTS_MAX valid
 * account names joined by ',' within LEDGER_SCOPE_MAX bytes. ledger_scope_has() says
 * whether root account `root` is in `scope` (always true for ""); `scope` must be valid.
 */
bool ledger_scope_valid(const char *scope);
bool ledger_scope_has(const char *scope, const char *root);

/*
 * Encode `n` commands (1..LEDGER_BATCH_MAX_CMDS, borrowed) with the leader's time
 * stamp `stamp_ms` into a new buffer whose length is a multiple of 8. On success
 * *buf (malloc'd, owned by the caller, free() it) and *len are set. Commands are
 * validated for encodability (lengths, type) here; their meaning is checked when the
 * batch is applied. Returns 0, -LEDGER_EINVAL, -LEDGER_ETOOBIG or -LEDGER_ENOMEM.
 */
int ledger_batch_encode(int64_t stamp_ms, const struct ledger_cmd *cmds, size_t n, void **buf,
                        size_t *len);

/*
 * Decode a batch (borrowed) into `cmds` (caller's array of `max` entries). Sets
 * *stamp_ms and *n. Never allocates; every length and count is checked against the
 * bounds above and the buffer before it is used. Returns 0, -LEDGER_EDECODE or
 * -LEDGER_ETOOBIG.
 */
int ledger_batch_decode(const void *buf, size_t len, int64_t *stamp_ms, struct ledger_cmd *cmds,
                        size_t max, size_t *n);

/* Pack one command (validated by the caller) as the array the batch format uses. */
void ledger_pack_cmd(msgpack_packer *pk, const struct ledger_cmd *c);

/* Whether pack_cmd can encode `c`: a known type, strings within their bounds. The
 * ledger still validates every argument when it applies the command. */
bool ledger_cmd_encodable(const struct ledger_cmd *c);

/*
 * Check one command without any state: its shape (-LEDGER_EDECODE: unknown type, a
 * string or the metadata over its bound), then every argument the ledger can judge
 * alone (-LEDGER_ENAME, -LEDGER_EINVAL), in the order the ledger judges them. Returns
 * 0 or the first failure, with *why (may be NULL) set to a static text naming it.
 * libtally calls it to fail fast, node_propose() its shape part (ledger_cmd_encodable)
 * to refuse a malformed command at once, and the ledger as the final word: a command it passes may still fail on the
 * state (a missing account, a reused request id, a deny).
 */
int ledger_cmd_check(const struct ledger_cmd *c, const char **why);

/* Read one command in the pack_cmd form (bounded, non-allocating). false: malformed. */
bool ledger_read_cmd(struct mp_reader *r, struct ledger_cmd *c);

/* An account's limits as the fixed 13-field array both the log and the wire use, and
 * back (bounded; false: malformed). */
void ledger_pack_limits(msgpack_packer *pk, const struct ledger_limits *l);
bool ledger_read_limits(struct mp_reader *r, struct ledger_limits *l);

/* Whether `a` and `b` are the same command: type, request id, actor, scope and every
 * argument of the type (for a reserve, only the payer its by_account selects). For tests and
 * paired assertions. */
bool ledger_cmd_equal(const struct ledger_cmd *a, const struct ledger_cmd *b);

/* Encode one command alone (for the admin journal). *buf is malloc'd, caller frees. */
int ledger_cmd_encode(const struct ledger_cmd *c, void **buf, size_t *len);

/*
 * The bytes that say "the same request" to the idempotency store: a command's type, id
 * and arguments (the actor and scope excluded), each length-prefixed, in wire order,
 * passed to `feed` (with `ctx`, borrowed) in pieces. The ledger hashes them with SHA-256
 * and keeps LEDGER_FINGERPRINT_SIZE bytes (ledger/store.h); wire/ itself links no hash.
 */
#define LEDGER_FINGERPRINT_SIZE 16 /* 128 bits of SHA-256 */
void ledger_cmd_fingerprint_feed(const struct ledger_cmd *c,
                                 void (*feed)(void *ctx, const void *p, size_t n), void *ctx);

/* ==== The client protocol (proto.c). ==== */

/*
 * The client protocol, shared by the server (rpc/) and the client (client/).
 *
 * A connection carries frames: a 4-byte big-endian body length, then one msgpack array.
 * Bodies are at most RPC_FRAME_MAX bytes unless both sides are configured otherwise;
 * a reader rejects a larger length before it allocates anything.
 *
 * Request:  [seq, op, args...]           seq: the client's number, echoed back
 * Response: [seq, 0, payload...]          success
 *           [seq, status, message, leader_id, leader_address]   failure (status > 0)
 *
 * The first request on a connection must be HELLO; it authenticates (bearer token) and
 * fixes the connection's role. Requests may be pipelined; responses to writes come
 * back in commit order, which is not always request order: match them by seq.
 *
 * Ledger commands travel in the same flat-array form as in the Raft log (cmd.c),
 * so a write is decoded once, with the same bounded reader. The server overwrites the
 * command's actor with the connection's principal.
 *
 * Every decoder here reads through mp.h: counts and lengths are checked against
 * the bytes left and against the bounds below before they are used, nothing allocates
 * more than a bound, and a message nested deeper than its fixed shape is refused.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RPC_PROTOCOL_VERSION 1
#define RPC_FRAME_HEADER 4
#define RPC_FRAME_MAX (1u << 20)       /* default body bound, both directions */
#define RPC_FRAME_LIMIT (64u << 20)    /* the largest bound either side may configure */
#define RPC_HELLO_FRAME_MAX 1024       /* the bound until a connection's HELLO succeeds */
#define RPC_HELLO_TIMEOUT_MS 5000      /* default time for the TLS handshake and HELLO */
#define RPC_TOKEN_MAX 256              /* bearer token bytes */
#define RPC_ADDRESS_MAX 64             /* "host:port" */
#define RPC_MESSAGE_MAX 200            /* error message bytes */
#define RPC_LIST_MAX 512               /* items in one list page */
#define RPC_CURSOR_MAX LEDGER_CURSOR_MAX /* bytes of a list cursor */
#define RPC_MEMBERS_MAX 9

/*
 * Every request op, described once: X(OP, number, name, ARGS, role). ARGS names the list
 * of its arguments after [seq, op], each Y(kind, path, bound) over struct rpc_request's
 * `u`, in wire order (kinds as in the command table of types.h, plus `cmd`, a ledger
 * command); pack, read and the field counts are generated from it. `role` is the least
 * role that may send it (rpc_role_allows(); a gateway may write only reserve, settle, void
 * and extend; HASH reveals every tenant's state and MEMBERSHIP changes the whole cluster,
 * so only an unscoped admin may send them, which rpc/auth.c checks). The answers are
 * listed beside the arguments.
 */
#define RPC_OPS(X)                                                                           \
    X(HELLO, 1, "hello", RPC_ARGS_HELLO, RPC_ROLE_NONE)                                      \
    X(WRITE, 2, "write", RPC_ARGS_WRITE, RPC_ROLE_GATEWAY)                                   \
    X(ACCOUNT_GET, 3, "account_get", RPC_ARGS_ACCOUNT_GET, RPC_ROLE_READER)                  \
    X(ACCOUNT_LIST, 4, "account_list", RPC_ARGS_LIST, RPC_ROLE_READER)                       \
    X(RESV_GET, 5, "reservation_get", RPC_ARGS_RESV_GET, RPC_ROLE_READER)                    \
    X(RESV_LIST, 6, "reservation_list", RPC_ARGS_LIST, RPC_ROLE_READER)                      \
    X(JOURNAL, 7, "journal", RPC_ARGS_JOURNAL, RPC_ROLE_READER)                              \
    X(STATUS, 8, "status", RPC_ARGS_NONE, RPC_ROLE_READER)                                   \
    X(MEMBERSHIP, 9, "membership", RPC_ARGS_MEMBERSHIP, RPC_ROLE_ADMIN)                      \
    X(KEY_GET, 10, "key_get", RPC_ARGS_KEY_GET, RPC_ROLE_READER)                             \
    X(HASH, 11, "hash", RPC_ARGS_NONE, RPC_ROLE_ADMIN)

/* HELLO: [version, token] -> [role, node_id]. */
#define RPC_ARGS_HELLO(Y) Y(u32, hello.version, 0) Y(str, hello.token, RPC_TOKEN_MAX)
/* WRITE (leader only): [cmd] -> [index, result]. */
#define RPC_ARGS_WRITE(Y) Y(cmd, write, 0)
/* ACCOUNT_GET: [name, flags] -> [account]. */
#define RPC_ARGS_ACCOUNT_GET(Y) Y(str, get.name, LEDGER_NAME_MAX) Y(u32, get.flags, 0)
/* RESV_GET: [request_id, flags] -> [reservation]. */
#define RPC_ARGS_RESV_GET(Y) Y(key, get.request_id, LEDGER_REQUEST_ID_SIZE) Y(u32, get.flags, 0)
/* KEY_GET: [key_hash, flags] -> [account, revoked]. */
#define RPC_ARGS_KEY_GET(Y) Y(key, get.key_hash, LEDGER_KEY_HASH_SIZE) Y(u32, get.flags, 0)
/* ACCOUNT_LIST (filter: the parent), RESV_LIST (filter: an account):
 * [filter, cursor, limit, flags] -> [[item..], next]. A cursor (bin, at most
 * RPC_CURSOR_MAX bytes, empty for the first page) is the key of the last item of the
 * previous page, opaque to the client; `next` is this page's, empty after the last. */
#define RPC_ARGS_LIST(Y)                                                                     \
    Y(str, list.filter, LEDGER_NAME_MAX)                                                     \
    Y(blob, list.cursor, RPC_CURSOR_MAX) Y(u32, list.limit, 0) Y(u32, list.flags, 0)
/* JOURNAL: [account, since_ms, until_ms, cursor, limit, flags] -> [[entry..], next]. */
#define RPC_ARGS_JOURNAL(Y)                                                                  \
    Y(str, list.filter, LEDGER_NAME_MAX) Y(i64, list.since_ms, 0) Y(i64, list.until_ms, 0)  \
    Y(blob, list.cursor, RPC_CURSOR_MAX) Y(u32, list.limit, 0) Y(u32, list.flags, 0)
/* STATUS (any node, never redirected): [] -> [status]. HASH: [] -> [applied_index,
 * state_hash (bin 32)], this node's own state; it walks the whole ledger: for tests,
 * audits and chaos checks, not for hot paths. */
#define RPC_ARGS_NONE(Y)
/* MEMBERSHIP (leader only): [kind, id, peer_address] -> []. */
#define RPC_ARGS_MEMBERSHIP(Y)                                                               \
    Y(u8, membership.kind, 0) Y(u64, membership.id, 0)                                       \
    Y(str, membership.address, RPC_ADDRESS_MAX)

enum rpc_op {
#define RPC_OP_ENUM(code, number, name, args, least) RPC_OP_##code = number,
    RPC_OPS(RPC_OP_ENUM)
#undef RPC_OP_ENUM
    RPC_OP_MAX
};

/* Human name of an op ("write", ...), never NULL. */
const char *rpc_op_name(int op);

/* Flags of read requests. */
enum {
    /* Serve from this node's applied state, wherever it is (may be behind the leader).
     * Without it a read goes to the leader, which answers after a barrier. */
    RPC_READ_STALE = 1u << 0,
};

/*
 * Response statuses. 0 is success; the rest are failures that carry a message and, for
 * NOT_LEADER, the leader's id and client address ("" when unknown).
 */
/* Errors of the protocol's encoders, decoders and framer (returned negated):
 * X(CODE, number, message). */
#define WIRE_ERRORS(X)                                                                       \
    X(ERANGE, 1, "out of range") /* a field out of range, a malformed message, a frame over \
                                    its bound, a role or hex text that is not one */        \
    X(ENOMEM, 2, "out of memory")

enum {
#define WIRE_ERROR_ENUM(code, number, message) WIRE_##code = number,
    WIRE_ERRORS(WIRE_ERROR_ENUM)
#undef WIRE_ERROR_ENUM
    WIRE_ECODE_MAX
};

/* The message of a WIRE_E* code (positive or negative), never NULL. */
const char *wire_strerror(int code);

/* The status of an answer: X(CODE, number, name); the name is what logs and metrics use. */
#define RPC_STATUSES(X)                                                                      \
    X(OK, 0, "ok")                                                                           \
    X(ENOTLEADER, 1, "not_leader")       /* this node cannot serve it: ask the leader named */ \
    X(EUNAVAILABLE, 2, "unavailable")    /* no leader or no quorum now: nothing done; retry */ \
    X(EUNKNOWN, 3, "outcome_unknown")    /* proposed, outcome unknown: retry with the same id */ \
    X(EAUTH, 4, "unauthenticated")       /* HELLO refused (token or version); closes */      \
    X(EFORBIDDEN, 5, "forbidden")        /* the connection's role may not do this */         \
    X(EBADREQ, 6, "bad_request")         /* malformed or out-of-range request; nothing done */ \
    X(ETOOBIG, 7, "too_big")             /* frame over the bound; the connection closes */    \
    X(EBUSY, 8, "busy")                  /* the node is overloaded: back off and retry */     \
    X(ENOTFOUND, 9, "not_found")         /* the account, reservation or key does not exist */ \
    X(EINTERNAL, 10, "internal")         /* a bug or a storage error on the node */           \
    X(ESHUTDOWN, 11, "shutting_down")    /* the node is stopping: retry elsewhere, same id */ \
    X(EPROTO, 12, "protocol_error")      /* the stream cannot be trusted; the connection closes */

/* The reason an UNAVAILABLE answer may carry as its message's first word, followed by ':'.
 * "storage": the leader's ledger map or disk is past its reserve (nothing was proposed;
 * writes are refused until space returns, which takes an operator, not a retry). */
#define RPC_REASON_STORAGE "storage"

enum rpc_status {
#define RPC_STATUS_ENUM(code, number, name) RPC_##code = number,
    RPC_STATUSES(RPC_STATUS_ENUM)
#undef RPC_STATUS_ENUM
    RPC_STATUS_MAX
};

/* Human name of a status ("not_leader", ...), never NULL. */
const char *rpc_status_name(int status);

enum rpc_role {
    RPC_ROLE_NONE = 0,   /* not authenticated yet */
    RPC_ROLE_READER = 1, /* queries */
    RPC_ROLE_GATEWAY = 2, /* reserve, settle, void, extend, queries */
    RPC_ROLE_ADMIN = 3,   /* everything */
};

/* "reader", "gateway", "admin", or "none". Parse returns -WIRE_ERANGE for an unknown
 * name. */
const char *rpc_role_name(int role);
int rpc_role_parse(const char *name);

/* Whether `role` may run `op` (and, for writes, a command of `cmd_type`). */
bool rpc_role_allows(int role, int op, int cmd_type);

enum rpc_membership_kind {
    RPC_MEMBER_ADD = 1,      /* add `id` at peer `address`, promote to voter */
    RPC_MEMBER_REMOVE = 2,   /* remove `id` */
    RPC_MEMBER_TRANSFER = 3, /* hand leadership to `id` (0: any) */
};

/* One request, decoded. Strings are NUL-terminated in fixed arrays. */
struct rpc_request {
    uint64_t seq;
    uint8_t op; /* enum rpc_op */
    union {
        struct {
            uint32_t version;
            char token[RPC_TOKEN_MAX + 1];
        } hello;
        struct ledger_cmd write;
        struct { /* ACCOUNT_GET, RESV_GET, KEY_GET */
            char name[LEDGER_NAME_MAX + 1];
            uint8_t request_id[LEDGER_REQUEST_ID_SIZE];
            uint8_t key_hash[LEDGER_KEY_HASH_SIZE];
            uint32_t flags;
        } get;
        struct { /* ACCOUNT_LIST (filter: parent), RESV_LIST, JOURNAL (filter: account) */
            char filter[LEDGER_NAME_MAX + 1]; /* "" for all / roots */
            int64_t since_ms, until_ms;       /* JOURNAL only */
            uint16_t cursor_len;              /* 0 first page, then the answer's next */
            uint8_t cursor[RPC_CURSOR_MAX];
            uint32_t limit;                   /* 1..RPC_LIST_MAX */
            uint32_t flags;
        } list;
        struct {
            uint8_t kind; /* enum rpc_membership_kind */
            uint64_t id;
            char address[RPC_ADDRESS_MAX + 1];
        } membership;
    } u;
};

/* One member as STATUS reports it. */
struct rpc_member {
    uint64_t id;
    char peer_address[RPC_ADDRESS_MAX + 1];
    char client_address[RPC_ADDRESS_MAX + 1]; /* "" when this node does not know it */
    uint8_t role; /* RAFT_VOTER, RAFT_STANDBY, RAFT_SPARE */
};

struct rpc_node_status {
    uint64_t node_id;
    uint64_t term;
    uint8_t raft_state; /* RAFT_FOLLOWER, RAFT_CANDIDATE, RAFT_LEADER; 0 unknown */
    uint8_t serving;    /* 1: leader with its barrier committed */
    uint64_t leader_id;
    char leader_address[RPC_ADDRESS_MAX + 1]; /* client address */
    uint64_t commit_index;
    uint64_t applied_index;
    int64_t ledger_now_ms; /* the ledger's clock: the last batch stamp applied */
    uint32_t n_members;
    struct rpc_member members[RPC_MEMBERS_MAX];
};

/*
 * One response, decoded. The client knows which op it answers from seq; the decoder
 * must be told (`op` argument of rpc_response_decode). On failure only status, message,
 * leader_id and leader_address are meaningful. List items are malloc'd (at most
 * RPC_LIST_MAX) and freed by rpc_response_free().
 */
struct rpc_response {
    uint64_t seq;
    int32_t status; /* enum rpc_status */
    char message[RPC_MESSAGE_MAX + 1];
    uint64_t leader_id;
    char leader_address[RPC_ADDRESS_MAX + 1];
    void *owned; /* list items (decoder-allocated), freed by rpc_response_free() */
    union {
        struct {
            uint8_t role;
            uint64_t node_id;
        } hello;
        struct {
            uint64_t index; /* Raft index of the entry that carried the command */
            struct ledger_result result;
        } write;
        struct ledger_account_info account;
        struct ledger_reservation_info reservation;
        struct {
            char account[LEDGER_NAME_MAX + 1];
            uint8_t revoked;
        } key;
        struct {
            uint32_t n;
            uint16_t next_len; /* the cursor of the next page; 0: this was the last */
            uint8_t next[RPC_CURSOR_MAX];
            union {
                struct ledger_account_info *accounts;
                struct ledger_reservation_info *reservations;
                struct ledger_journal_entry *entries;
            } items;
        } list;
        struct rpc_node_status status;
        struct {
            uint64_t applied_index;
            uint8_t state_hash[32];
        } hash;
    } u;
};

/* ---- Buffers and frames. ---- */

/* A growable output buffer; `failed` sticks after an allocation failure. */
struct rpc_buf {
    uint8_t *data;
    size_t len, cap;
    bool failed;
};

void rpc_buf_free(struct rpc_buf *b);

/* Append `n` bytes (at most RPC_FRAME_LIMIT at once). 0, or -1 on allocation failure
 * (then `failed` is set and every later append fails too). */
int rpc_buf_append(struct rpc_buf *b, const void *data, size_t n);

/*
 * Append one frame holding `req` (or `resp`, answering an `op`) to `out`. Returns 0,
 * -WIRE_ERANGE if the request is out of range (a bad command, a too-long string), or
 * -WIRE_ENOMEM. The frame is never larger than RPC_FRAME_LIMIT.
 */
int rpc_request_encode(struct rpc_buf *out, const struct rpc_request *req);
int rpc_response_encode(struct rpc_buf *out, int op, const struct rpc_response *resp);

/* Append an error response frame: [seq, status, message, leader_id, leader_address]. */
int rpc_error_encode(struct rpc_buf *out, uint64_t seq, int status, const char *message,
                     uint64_t leader_id, const char *leader_address);

/*
 * Decode a frame body (without its length header). Returns 0, or -WIRE_ERANGE with a
 * short reason in `why` (RPC_MESSAGE_MAX + 1 bytes) if it is malformed, out of range, or not exactly
 * one message. A request that decodes but whose seq was readable sets *seq_out (may be
 * NULL) so the server can answer that seq with RPC_EBADREQ.
 */
int rpc_request_decode(const void *body, size_t len, struct rpc_request *req, uint64_t *seq_out,
                       char *why);
/* Only the seq of a response (to find which op it answers). */
int rpc_response_seq(const void *body, size_t len, uint64_t *seq);
int rpc_response_decode(const void *body, size_t len, int op, struct rpc_response *resp,
                        char *why);
void rpc_response_free(struct rpc_response *resp);

/*
 * Incremental frame reader over a byte stream. Feed bytes with rpc_framer_feed(); take
 * each complete body with rpc_framer_next(). A length over `max_body` is refused before
 * any allocation; the framer's memory stays within about twice (max_body + one read), as
 * its buffer grows by doubling.
 */
struct rpc_framer {
    uint8_t *buf;
    size_t len, cap;
    size_t max_body;
    size_t consumed; /* bytes of buf already handed out */
};

void rpc_framer_init(struct rpc_framer *f, size_t max_body);
void rpc_framer_free(struct rpc_framer *f);

/* Copy `n` bytes in. Returns 0 or -WIRE_ENOMEM. */
int rpc_framer_feed(struct rpc_framer *f, const void *data, size_t n);

/*
 * Next complete body: returns 1 with *body and *len (valid until the next feed or next
 * call), 0 if more bytes are needed, -WIRE_ERANGE if the next length exceeds max_body
 * (the stream cannot be trusted after that).
 */
int rpc_framer_next(struct rpc_framer *f, const uint8_t **body, size_t *len);

/* Hex of bytes and back, for CLIs and logs. */
void rpc_hex(const uint8_t *bytes, size_t n, char *out); /* out: 2n + 1 bytes */
int rpc_unhex(const char *hex, uint8_t *out, size_t n); /* 0, or -WIRE_ERANGE unless 2n hex */

#endif /* TALLY_WIRE_H */
