/*
 * node.c: the replicated node on raft_uv (see node.h for the contract).
 *
 * Proposals: node_propose() copies commands into one bounded queue. A uv_check handle
 * runs after every poll phase, i.e. once per loop iteration after the I/O callbacks that
 * queued commands; it encodes the whole queue as ONE ledger batch, copies it into
 * raft_malloc'd memory and proposes it with ONE raft_apply (libraft fires the callback
 * after the first entry when given several buffers, so never more than one). A uv_idle
 * handle is started while commands wait, so a loop iteration never blocks in poll with
 * work queued from a timer.
 *
 * Results: libraft 0.22's legacy layer queues apply callbacks and fires them after the
 * whole commit step. The adapter keeps each entry's answers in a ring slot indexed by
 * Raft index (raft/fsm.h), so the callback copies its own entry's answers from
 * `result`; a slot that no longer holds its index fails the batch (NODE_EAPPLY).
 *
 * Leadership: the check handle also watches raft_state() and the term. A new term as
 * leader submits a raft_barrier; the node is ready (and flushes its queue) only once the
 * barrier of that term is applied. Losing leadership fails queued commands with
 * -NODE_ENOTLEADER; proposed batches are failed by libraft (outcome unknown).
 */
#include "raft/node.h"

#include "raft/fsm.h"
#include "raft/transport.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <raft.h>
#include <raft/uv.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* One node_propose() call waiting for its batch: commands [first, first + n). */
struct node_prop {
    node_propose_cb cb;
    void *data;
    size_t first;
    size_t n;
};

/* One proposed entry, from raft_apply until its callback. */
struct node_batch {
    struct raft_apply req; /* req.data = this; req.index set by raft_apply */
    struct node *node;
    struct node_batch *prev, *next; /* in node->inflight, oldest first */
    size_t n_cmds;
    size_t n_props;
    struct node_prop *props;       /* n_props, owned */
    struct ledger_result *results; /* n_cmds, owned, filled in apply_cb */
};

struct node_barrier {
    struct raft_barrier req;
    struct node *node;
    uint64_t term;
};

/* The one membership change or leadership transfer in progress. */
struct node_change {
    union {
        struct raft_change change;
        struct raft_transfer transfer;
    } req;
    struct node *node;
    node_change_cb cb;
    void *data;
    uint64_t id;
    bool promote;    /* node_add: raft_assign(voter) after raft_add succeeds */
    bool assign_due; /* raft_add done: the check handle submits raft_assign */
    bool promoting;  /* node_add's raft_assign(voter) is under way */
};

struct node {
    uv_loop_t *loop;
    uint64_t id;
    char address[NODE_ADDRESS_MAX];
    char raft_dir[NODE_DIR_MAX];
    char ledger_dir[NODE_DIR_MAX];
    char boot_id[64]; /* this boot's, for the ledger's marker ("" if unknown) */
    struct node_config cfg; /* copy; address points at n->address, dir is NULL */
    struct ledger *ledger;
    struct node_fsm fsm;  /* the ledger adapter */
    struct node_transport transport; /* TCP with TCP_NODELAY (raft/transport.h) */
    struct raft_io io;
    struct raft raft;
    uv_check_t check;
    uv_idle_t idle;
    bool handles; /* check and idle initialized */
    bool started;
    bool closing;
    unsigned open_handles;

    struct ledger_cmd *queue; /* NODE_QUEUE_MAX */
    size_t n_queued;
    struct node_prop *props; /* NODE_QUEUE_MAX */
    size_t n_props;
    struct node_prop *spare; /* NODE_QUEUE_MAX: callers being answered, see queue_take */
    struct node_batch *inflight_head, *inflight_tail;
    unsigned n_inflight;
    int64_t last_stamp_ms;
    int64_t clock_offset_ms; /* added to the wall clock (fault injection only) */

    uint64_t leader_term; /* term in which this node leads, 0 if it does not */
    bool barrier_pending;
    bool ready;
    struct node_change *change;

    uint64_t batches, commands, late_results;
    uint64_t batch_sizes[NODE_BATCH_SIZE_BUCKETS];
    node_close_cb close_cb;
    void *close_data;
    char errmsg[NODE_ERRMSG_SIZE];
};

static const char *const node_error_names[NODE_ECODE_MAX] = {
    [0] = "ok",
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

__attribute__((format(printf, 3, 4))) static void node_logf(const struct node *n, const char *level,
                                                            const char *fmt, ...)
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
__attribute__((noreturn)) static void node_fatal(const struct node *n, const char *msg,
                                                 const char *reason)
{
    char quoted[LEDGER_ERRMSG_SIZE + RAFT_ERRMSG_BUF_SIZE];
    logfmt_quote(quoted, sizeof(quoted), reason);
    node_logf(n, "fatal", "msg=\"%s\" reason=\"%s\"", msg, quoted);
    n->cfg.on_fatal(n->cfg.fatal_data, reason);
    abort(); /* on_fatal must not return */
}

void node_exit_fatal(void *data, const char *reason)
{
    (void)data, (void)reason;
    fflush(stderr);
    _exit(NODE_EXIT_FATAL);
}

static void node_on_fatal(struct node_fsm *f, const char *reason)
{
    node_fatal(f->data, "state machine cannot continue", reason);
}

static int node_error(struct node *n, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Record a message in n->errmsg and return -code. */
static int node_error(struct node *n, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(n->errmsg, sizeof(n->errmsg), fmt, ap);
    va_end(ap);
    return -code;
}

/* Map a libraft error to a node error code (negative). */
static int node_from_raft(int rv)
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

/* ---- Configuration and directories. ---- */

void node_config_init(struct node_config *c)
{
    memset(c, 0, sizeof(*c));
    c->election_timeout_ms = 1000;
    c->heartbeat_ms = 100;
    c->snapshot_threshold = 8192; /* a snapshot copies the whole ledger: not too often */
    c->snapshot_trailing = 1024;
}

static int config_check(const struct node_config *c, char *why, size_t size)
{
    if (c->id == 0 || c->dir == NULL || c->address == NULL || c->on_fatal == NULL) {
        snprintf(why, size, "id, dir, address and on_fatal are required");
    } else if (strlen(c->dir) + sizeof("/ledger") > NODE_DIR_MAX) {
        snprintf(why, size, "data directory path too long");
    } else if (strlen(c->address) >= NODE_ADDRESS_MAX) {
        snprintf(why, size, "address too long");
    } else if (c->n_members > NODE_MEMBERS_MAX || (c->bootstrap && c->n_members == 0)) {
        snprintf(why, size, "bootstrap needs 1..%d members", NODE_MEMBERS_MAX);
    } else if (c->heartbeat_ms == 0 || c->election_timeout_ms <= c->heartbeat_ms) {
        snprintf(why, size, "election timeout must exceed the heartbeat");
    } else if (c->snapshot_threshold == 0) {
        snprintf(why, size, "snapshot threshold must be positive");
    } else {
        for (unsigned i = 0; i < c->n_members; i++) {
            const struct node_member *m = &c->members[i];
            if (m->id == 0 || memchr(m->address, '\0', NODE_ADDRESS_MAX) == NULL ||
                m->address[0] == '\0') {
                snprintf(why, size, "member %u has no id or address", i);
                return -NODE_EINVAL;
            }
        }
        return 0;
    }
    return -NODE_EINVAL;
}

/* mkdir -p `path` (copied); 0 or -NODE_EIO with a message in `why`. */
static int make_dirs(const char *path, char *why, size_t size)
{
    char buf[NODE_DIR_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1;; p++) {
        bool last = *p == '\0';
        if (*p == '/' || last) {
            *p = '\0';
            if (mkdir(buf, 0750) != 0 && errno != EEXIST) {
                snprintf(why, size, "mkdir %.160s: %.80s", buf, strerror(errno));
                return -NODE_EIO;
            }
            struct stat st;
            if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
                snprintf(why, size, "%.200s is not a directory", buf);
                return -NODE_EIO;
            }
            if (last) {
                return 0;
            }
            *p = '/';
        }
    }
}

/* ---- Open and start. ---- */

static int node_alloc(struct node **out, uv_loop_t *loop, const struct node_config *cfg)
{
    struct node *n = calloc(1, sizeof(*n));
    if (n == NULL) {
        return -NODE_ENOMEM;
    }
    n->queue = calloc(NODE_QUEUE_MAX, sizeof(*n->queue));
    n->props = calloc(NODE_QUEUE_MAX, sizeof(*n->props));
    n->spare = calloc(NODE_QUEUE_MAX, sizeof(*n->spare));
    if (n->queue == NULL || n->props == NULL || n->spare == NULL) {
        free(n->queue);
        free(n->props);
        free(n->spare);
        free(n);
        return -NODE_ENOMEM;
    }
    n->loop = loop;
    n->id = cfg->id;
    n->cfg = *cfg;
    snprintf(n->address, sizeof(n->address), "%s", cfg->address);
    snprintf(n->raft_dir, sizeof(n->raft_dir), "%s/raft", cfg->dir);
    n->cfg.address = n->address;
    n->cfg.dir = NULL; /* only raft_dir and the ledger's path are kept */
    *out = n;
    return 0;
}

static void node_free(struct node *n)
{
    free(n->queue);
    free(n->props);
    free(n->spare);
    free(n);
}

/*
 * The ledger runs with LMDB's NOSYNC: the Raft log (fsynced by raft_uv) is the durable
 * record and the ledger a cache of it. After a process crash the kernel still holds
 * every page the ledger wrote, so it is intact; after a machine crash (power loss,
 * kernel panic) pages may be lost or torn, and LMDB has no checksums to tell. So the
 * node keeps a marker, DIR/ledger.boot: the boot id of the machine and whether the
 * ledger was closed cleanly (synced). A ledger left open under an earlier boot is not
 * trusted: it is deleted, and libraft rebuilds it from its snapshot and log at start.
 */
#define BOOT_MARKER "ledger.boot"

static void read_boot_id(char out[64])
{
    out[0] = '\0';
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f != NULL) {
        if (fgets(out, 64, f) == NULL) {
            out[0] = '\0';
        }
        out[strcspn(out, "\n")] = '\0';
        fclose(f);
    }
}

/* Write "BOOT_ID clean|open" durably (temp file, fsync, rename, fsync the dir). */
static int boot_marker_write(struct node *n, const char *dir, bool clean, char *why, size_t size)
{
    char path[NODE_DIR_MAX + 32], tmp[NODE_DIR_MAX + 32];
    snprintf(path, sizeof(path), "%s/" BOOT_MARKER, dir);
    snprintf(tmp, sizeof(tmp), "%s/" BOOT_MARKER ".tmp", dir);
    char text[96];
    int len = snprintf(text, sizeof(text), "%s %s\n", n->boot_id, clean ? "clean" : "open");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    bool ok = fd >= 0 && write(fd, text, (size_t)len) == len && fsync(fd) == 0;
    if (fd >= 0) {
        close(fd);
    }
    ok = ok && rename(tmp, path) == 0;
    int dfd = ok ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    ok = ok && dfd >= 0 && fsync(dfd) == 0;
    if (dfd >= 0) {
        close(dfd);
    }
    if (!ok) {
        snprintf(why, size, "write %.150s: %.80s", path, strerror(errno));
        return -NODE_EIO;
    }
    return 0;
}

/* Whether the ledger in n->ledger_dir was left open by an earlier boot. */
static bool ledger_left_by_crash(struct node *n, const char *dir)
{
    char path[NODE_DIR_MAX + 32], boot[64] = "", state[16] = "";
    snprintf(path, sizeof(path), "%s/" BOOT_MARKER, dir);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return false; /* a new data dir, or one from before the marker existed */
    }
    int got = fscanf(f, "%63s %15s", boot, state);
    fclose(f);
    if (got != 2 || n->boot_id[0] == '\0') {
        return got != 2; /* an unreadable marker: do not trust the ledger */
    }
    return strcmp(state, "clean") != 0 && strcmp(boot, n->boot_id) != 0;
}

/* Delete the ledger's LMDB files so libraft rebuilds it. */
static int ledger_discard(struct node *n, char *why, size_t size)
{
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char path[NODE_DIR_MAX + 16];
        snprintf(path, sizeof(path), "%s/%s", n->ledger_dir, files[i]);
        if (unlink(path) != 0 && errno != ENOENT) {
            snprintf(why, size, "unlink %.150s: %.80s", path, strerror(errno));
            return -NODE_EIO;
        }
    }
    return 0;
}

void node_exit_on_storage_fault(int signum)
{
    static const char line[] = "level=fatal msg=\"state machine cannot continue\" "
                               "reason=\"SIGBUS writing the ledger's memory map: no space "
                               "left on device or an I/O error\"\n";
    (void)signum;
    ssize_t ignored = write(STDERR_FILENO, line, sizeof(line) - 1);
    (void)ignored;
    _exit(NODE_EXIT_FATAL);
}

/* Open the ledger in DIR/ledger and set up the adapter over it. */
static int node_open_ledger(struct node *n, const char *dir, char *why, size_t size)
{
    snprintf(n->ledger_dir, sizeof(n->ledger_dir), "%s/ledger", dir);
    const char *path = n->ledger_dir;
    int rv = make_dirs(path, why, size);
    if (rv != 0) {
        return rv;
    }
    read_boot_id(n->boot_id);
    if (ledger_left_by_crash(n, dir)) {
        node_logf(n, "warn", "msg=\"the ledger was open when the machine went down: rebuilding "
                             "it from the Raft snapshot and log\" dir=\"%s\"",
                  path);
        rv = ledger_discard(n, why, size);
        if (rv != 0) {
            return rv;
        }
    }
    rv = boot_marker_write(n, dir, false, why, size);
    if (rv != 0) {
        return rv;
    }
    struct ledger_options opts = {.flags = LEDGER_OPEN_NOSYNC};
    char lerr[LEDGER_ERRMSG_SIZE] = "";
    rv = ledger_open(&n->ledger, path, &opts, lerr);
    if (rv != 0) {
        snprintf(why, size, "open ledger %.100s: %.130s", path, lerr);
        return rv == -LEDGER_ENOMEM ? -NODE_ENOMEM : -NODE_EIO;
    }
    if (node_fsm_init(&n->fsm, n->ledger) != 0) {
        ledger_close(n->ledger);
        snprintf(why, size, "fsm: out of memory");
        return -NODE_ENOMEM;
    }
    n->fsm.on_fatal = node_on_fatal;
    n->fsm.data = n;
    return 0;
}

/* Close the ledger; after a successful sync, mark it clean. */
static void node_close_ledger(struct node *n)
{
    bool synced = ledger_sync(n->ledger) == 0;
    node_fsm_close(&n->fsm);
    ledger_close(n->ledger);
    n->ledger = NULL;
    char dir[NODE_DIR_MAX], why[NODE_ERRMSG_SIZE];
    snprintf(dir, sizeof(dir), "%.*s", (int)(strlen(n->ledger_dir) - strlen("/ledger")),
             n->ledger_dir);
    if (synced && boot_marker_write(n, dir, true, why, sizeof(why)) != 0) {
        node_logf(n, "warn", "msg=\"cannot mark the ledger clean\" reason=\"%s\"", why);
    }
}

/* raft_uv_tcp_init, raft_uv_init (auto-recovery off) and raft_init, unwound on failure. */
static int node_open_raft(struct node *n, char *why, size_t size)
{
    int rv = make_dirs(n->raft_dir, why, size);
    if (rv != 0) {
        return rv;
    }
    rv = node_transport_init(&n->transport, n->loop);
    if (rv != 0) {
        snprintf(why, size, "raft_uv_tcp_init: %s", raft_strerror(rv));
        return node_from_raft(rv);
    }
    rv = raft_uv_init(&n->io, n->loop, n->raft_dir, &n->transport.outer);
    if (rv != 0) {
        snprintf(why, size, "raft_uv_init %.100s: %.130s", n->raft_dir, n->io.errmsg);
        node_transport_close(&n->transport);
        return node_from_raft(rv);
    }
    /* A corrupt or truncated segment must stop the node, not be silently dropped. */
    raft_uv_set_auto_recovery(&n->io, false);
    rv = raft_init(&n->raft, &n->io, &n->fsm.fsm, n->id, n->address);
    if (rv != 0) {
        snprintf(why, size, "raft_init: %s", raft_errmsg(&n->raft));
        raft_uv_close(&n->io);
        node_transport_close(&n->transport);
        return node_from_raft(rv);
    }
    n->raft.data = n;
    node_fsm_attach(&n->fsm, &n->raft);
    raft_set_election_timeout(&n->raft, n->cfg.election_timeout_ms);
    raft_set_heartbeat_timeout(&n->raft, n->cfg.heartbeat_ms);
    raft_set_pre_vote(&n->raft, true);
    raft_set_snapshot_threshold(&n->raft, n->cfg.snapshot_threshold);
    raft_set_snapshot_trailing(&n->raft, n->cfg.snapshot_trailing);
    return 0;
}

int node_open(struct node **out, uv_loop_t *loop, const struct node_config *cfg, char *errmsg)
{
    char why[NODE_ERRMSG_SIZE] = "";
    struct node *n = NULL;
    int rv = config_check(cfg, why, sizeof(why));
    if (rv == 0) {
        rv = node_alloc(&n, loop, cfg);
        if (rv != 0) {
            snprintf(why, sizeof(why), "out of memory");
        }
    }
    if (rv == 0) {
        rv = node_open_ledger(n, cfg->dir, why, sizeof(why));
        if (rv == 0) {
            rv = node_open_raft(n, why, sizeof(why));
            if (rv != 0) {
                node_close_ledger(n);
            }
        }
        if (rv != 0) {
            node_free(n);
        }
    }
    if (errmsg != NULL) {
        snprintf(errmsg, NODE_ERRMSG_SIZE, "%s", why);
    }
    if (rv == 0) {
        *out = n;
    }
    return rv;
}

static int node_bootstrap(struct node *n)
{
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    int rv = 0;
    for (unsigned i = 0; i < n->cfg.n_members && rv == 0; i++) {
        const struct node_member *m = &n->cfg.members[i];
        rv = raft_configuration_add(&conf, m->id, m->address, RAFT_VOTER);
    }
    if (rv == 0) {
        rv = raft_bootstrap(&n->raft, &conf);
    }
    raft_configuration_close(&conf);
    if (rv == RAFT_CANTBOOTSTRAP) {
        node_logf(n, "info", "msg=\"restart: raft state exists, not bootstrapping\"");
        return 0;
    }
    if (rv != 0) {
        return node_error(n, -node_from_raft(rv), "bootstrap: %s (%s)", raft_strerror(rv),
                          raft_errmsg(&n->raft));
    }
    node_logf(n, "info", "msg=\"bootstrapped\" members=%u", n->cfg.n_members);
    return 0;
}

static void check_cb(uv_check_t *h);
static void idle_cb(uv_idle_t *h);

int node_start(struct node *n)
{
    assert(!n->started && !n->closing);
    int rv = uv_check_init(n->loop, &n->check);
    if (rv == 0) {
        rv = uv_idle_init(n->loop, &n->idle);
        if (rv != 0) {
            uv_close((uv_handle_t *)&n->check, NULL); /* closed before the loop runs on */
        }
    }
    if (rv != 0) {
        return node_error(n, NODE_EIO, "uv handle init: %s", uv_strerror(rv));
    }
    n->check.data = n;
    n->idle.data = n;
    n->handles = true;
    n->open_handles = 2;
    if (n->cfg.bootstrap) {
        rv = node_bootstrap(n);
        if (rv != 0) {
            return rv;
        }
    }
    rv = raft_start(&n->raft);
    if (rv != 0) {
        return node_error(n, -node_from_raft(rv), "raft_start: %s (%s)", raft_strerror(rv),
                          raft_errmsg(&n->raft));
    }
    n->started = true;
    rv = uv_check_start(&n->check, check_cb);
    if (rv != 0) {
        return node_error(n, NODE_EIO, "uv_check_start: %s", uv_strerror(rv));
    }
    node_logf(n, "info",
              "msg=\"started\" address=%s last_applied=%" PRIu64 " ledger_applied=%" PRIu64,
              n->address, (uint64_t)raft_last_applied(&n->raft), ledger_applied_index(n->ledger));
    return 0;
}

/* ---- Proposals. ---- */

static void node_kick(struct node *n)
{
    if (n->n_queued > 0 && n->handles && !n->closing) {
        int rv = uv_idle_start(&n->idle, idle_cb);
        assert(rv == 0); /* only fails on a closing handle or a NULL callback */
        (void)rv;
    }
}

static void idle_cb(uv_idle_t *h)
{
    (void)h; /* only keeps poll from blocking while commands wait: see check_cb */
}

/*
 * Empty the queue into n->spare and return how many callers it held. Callbacks of those
 * callers may queue new commands, so they are answered from the spare array.
 */
static size_t queue_take(struct node *n)
{
    struct node_prop *taken = n->props;
    size_t count = n->n_props;
    n->props = n->spare;
    n->spare = taken;
    n->n_props = 0;
    n->n_queued = 0;
    return count;
}

/* Fail every queued (never proposed) command with `status`. */
static void queue_fail(struct node *n, int status)
{
    size_t count = queue_take(n);
    for (size_t i = 0; i < count; i++) {
        n->spare[i].cb(n, n->spare[i].data, status, 0, NULL, 0);
    }
}

int node_propose(struct node *n, const struct ledger_cmd *cmds, size_t count, node_propose_cb cb,
                 void *data)
{
    if (n->closing) {
        return -NODE_ESHUTDOWN;
    }
    if (cmds == NULL || cb == NULL || count == 0 || count > NODE_QUEUE_MAX) {
        return -NODE_EINVAL;
    }
    /* A command that cannot be encoded is refused here, so every queued batch encodes.
     * Its arguments are left to the ledger, which judges them through the log: every
     * replica then records the same answer, and the request id stays bound to it. */
    for (size_t i = 0; i < count; i++) {
        if (ledger_cmd_check(&cmds[i], NULL) == -LEDGER_EDECODE) {
            return -NODE_EINVAL;
        }
    }
    if (!n->started || raft_state(&n->raft) != RAFT_LEADER) {
        return -NODE_ENOTLEADER;
    }
    if (n->n_queued + count > NODE_QUEUE_MAX) {
        return -NODE_EBUSY;
    }
    memcpy(&n->queue[n->n_queued], cmds, count * sizeof(*cmds));
    n->props[n->n_props++] = (struct node_prop){cb, data, n->n_queued, count};
    n->n_queued += count;
    node_kick(n);
    return 0;
}

/* The batch stamp: the wall clock, never below any stamp proposed or applied before. */
static int64_t next_stamp_ms(struct node *n)
{
    struct timespec ts;
    int64_t now_ms = 0;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0) {
        now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + n->clock_offset_ms;
    }
    now_ms = now_ms < 0 ? 0 : now_ms > LEDGER_TIME_MAX_MS ? LEDGER_TIME_MAX_MS : now_ms;
    int64_t floor_ms = ledger_now_ms(n->ledger);
    if (n->last_stamp_ms > floor_ms) {
        floor_ms = n->last_stamp_ms;
    }
    return now_ms > floor_ms ? now_ms : floor_ms;
}

/*
 * Encode the queue into a raft_malloc'd buffer. Returns 0 or the error to answer every
 * caller with.
 */
static int queue_encode(struct node *n, int64_t stamp_ms, struct raft_buffer *out)
{
    void *enc = NULL;
    size_t len = 0;
    int rv = ledger_batch_encode(stamp_ms, n->queue, n->n_queued, &enc, &len);
    /* node_propose() let in only commands that encode. */
    assert(rv != -LEDGER_EINVAL);
    if (rv != 0) {
        return rv == -LEDGER_ETOOBIG ? -NODE_ETOOBIG : -NODE_ENOMEM;
    }
    assert(len % 8 == 0);
    out->base = raft_malloc(len);
    if (out->base == NULL) {
        free(enc);
        return -NODE_ENOMEM;
    }
    memcpy(out->base, enc, len);
    out->len = len;
    free(enc);
    return 0;
}

static void batch_free(struct node_batch *b)
{
    if (b != NULL) {
        free(b->props);
        free(b->results);
        free(b);
    }
}

static struct node_batch *batch_alloc(struct node *n)
{
    struct node_batch *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        return NULL;
    }
    b->props = malloc(n->n_props * sizeof(*b->props));
    b->results = calloc(n->n_queued, sizeof(*b->results));
    if (b->props == NULL || b->results == NULL) {
        batch_free(b);
        return NULL;
    }
    b->node = n;
    b->req.data = b;
    return b;
}

static void inflight_link(struct node *n, struct node_batch *b)
{
    b->prev = n->inflight_tail;
    b->next = NULL;
    if (n->inflight_tail != NULL) {
        n->inflight_tail->next = b;
    } else {
        n->inflight_head = b;
    }
    n->inflight_tail = b;
    n->n_inflight++;
}

static void inflight_unlink(struct node *n, struct node_batch *b)
{
    if (b->prev != NULL) {
        b->prev->next = b->next;
    } else {
        n->inflight_head = b->next;
    }
    if (b->next != NULL) {
        b->next->prev = b->prev;
    } else {
        n->inflight_tail = b->prev;
    }
    b->prev = b->next = NULL;
    assert(n->n_inflight > 0);
    n->n_inflight--;
}

/* Answer every caller of a finished batch, then free it. */
static void batch_finish(struct node *n, struct node_batch *b, int status)
{
    for (size_t i = 0; i < b->n_props; i++) {
        const struct node_prop *p = &b->props[i];
        if (status == 0) {
            p->cb(n, p->data, 0, b->req.index, &b->results[p->first], p->n);
        } else {
            p->cb(n, p->data, status, 0, NULL, 0);
        }
    }
    batch_free(b);
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    struct node_batch *b = req->data;
    struct node *n = b->node;
    const struct node_apply_result *r = result;
    inflight_unlink(n, b);
    int err = 0;
    if (status != 0) {
        err = n->closing ? -NODE_ESHUTDOWN : -NODE_ELEADERSHIPLOST;
    } else if (r == NULL || r->index != req->index || r->status != 0 || r->n != b->n_cmds) {
        /* The ring slot was reused (more than NODE_RESULT_RING entries in one commit
         * step) or the entry is not the batch we proposed. */
        n->late_results++;
        node_logf(n, "error",
                  "msg=\"entry applied without its results\" index=%" PRIu64 " status=%d",
                  (uint64_t)req->index, r ? r->status : 0);
        err = -NODE_EAPPLY;
    } else {
        memcpy(b->results, r->results, r->n * sizeof(*r->results));
    }
    batch_finish(n, b, err);
    node_kick(n);
}

/* Propose everything queued as one entry. */
static void queue_flush(struct node *n)
{
    int64_t stamp_ms = next_stamp_ms(n);
    struct raft_buffer buf = {NULL, 0};
    int rv = queue_encode(n, stamp_ms, &buf);
    struct node_batch *b = rv == 0 ? batch_alloc(n) : NULL;
    if (rv == 0 && b == NULL) {
        rv = -NODE_ENOMEM;
    }
    if (rv == 0) {
        rv = raft_apply(&n->raft, &b->req, &buf, 1, apply_cb);
        if (rv != 0) {
            node_logf(n, "warn", "msg=\"raft_apply failed\" error=\"%s\"", raft_strerror(rv));
            rv = node_from_raft(rv);
        }
    }
    if (rv != 0) {
        raft_free(buf.base);
        batch_free(b);
        queue_fail(n, rv);
        return;
    }
    memcpy(b->props, n->props, n->n_props * sizeof(*b->props));
    b->n_props = n->n_props;
    b->n_cmds = n->n_queued;
    inflight_link(n, b);
    n->last_stamp_ms = stamp_ms;
    n->batches++;
    n->commands += n->n_queued;
    unsigned bucket = 0;
    while (bucket + 1 < NODE_BATCH_SIZE_BUCKETS && ((size_t)1 << bucket) < n->n_queued) {
        bucket++;
    }
    n->batch_sizes[bucket]++;
    n->n_queued = 0;
    n->n_props = 0;
}

/* ---- Leadership: barrier, readiness, and watching the state each iteration. ---- */

static void barrier_cb(struct raft_barrier *req, int status)
{
    struct node_barrier *nb = req->data;
    struct node *n = nb->node;
    uint64_t term = nb->term;
    free(nb);
    if (n->closing) {
        return;
    }
    n->barrier_pending = false;
    if (status == 0 && n->leader_term == term && raft_state(&n->raft) == RAFT_LEADER &&
        raft_current_term(&n->raft) == term) {
        n->ready = true;
        node_logf(n, "info", "msg=\"leader ready\" term=%" PRIu64 " applied=%" PRIu64, term,
                  (uint64_t)raft_last_applied(&n->raft));
        node_kick(n);
    }
}

static void barrier_submit(struct node *n)
{
    struct node_barrier *nb = calloc(1, sizeof(*nb));
    if (nb == NULL) {
        return; /* retried on the next iteration */
    }
    nb->node = n;
    nb->term = n->leader_term;
    nb->req.data = nb;
    int rv = raft_barrier(&n->raft, &nb->req, barrier_cb);
    if (rv != 0) {
        node_logf(n, "warn", "msg=\"barrier failed\" error=\"%s\"", raft_strerror(rv));
        free(nb);
        return;
    }
    n->barrier_pending = true;
}

/* A read barrier: its caller's callback, and the term the read was asked in. */
struct node_read {
    struct raft_barrier req;
    struct node *node;
    uint64_t term;
    node_change_cb cb;
    void *data;
};

static void read_barrier_cb(struct raft_barrier *req, int status)
{
    struct node_read *rd = req->data;
    struct node *n = rd->node;
    int rv = 0;
    if (n->closing) {
        rv = -NODE_ESHUTDOWN;
    } else if (status != 0 || raft_state(&n->raft) != RAFT_LEADER ||
               raft_current_term(&n->raft) != rd->term) {
        rv = -NODE_ELEADERSHIPLOST;
    }
    rd->cb(n, rd->data, rv);
    free(rd);
}

int node_read_barrier(struct node *n, node_change_cb cb, void *data)
{
    assert(cb != NULL);
    if (n->closing) {
        return -NODE_ESHUTDOWN;
    }
    if (!n->ready) {
        return -NODE_ENOTLEADER;
    }
    struct node_read *rd = calloc(1, sizeof(*rd));
    if (rd == NULL) {
        return -NODE_ENOMEM;
    }
    rd->node = n;
    rd->term = n->leader_term;
    rd->cb = cb;
    rd->data = data;
    rd->req.data = rd;
    int rv = raft_barrier(&n->raft, &rd->req, read_barrier_cb);
    if (rv != 0) {
        free(rd);
        return rv == RAFT_NOTLEADER || rv == RAFT_LEADERSHIPLOST ? -NODE_ENOTLEADER
                                                                 : node_error(n, -NODE_ERAFT,
                                                                              "raft_barrier: %s",
                                                                              raft_strerror(rv));
    }
    return 0;
}

unsigned node_members(struct node *n, struct node_member *out, int *roles, unsigned max)
{
    const struct raft_configuration *c = &n->raft.configuration;
    unsigned k = 0;
    for (unsigned i = 0; i < c->n && k < max; i++, k++) {
        out[k].id = c->servers[i].id;
        snprintf(out[k].address, sizeof(out[k].address), "%s", c->servers[i].address);
        roles[k] = c->servers[i].role;
    }
    return k;
}

static void track_leadership(struct node *n)
{
    int state = raft_state(&n->raft);
    if (state == RAFT_UNAVAILABLE) {
        /* libraft gives up by going unavailable when a tick or a peer's message fails to
         * step (libraft patch 0005): a log conflict at a committed index, a term or vote
         * it could not persist, no memory. Running on would leave a member whose memory
         * and disk disagree. */
        node_fatal(n, "raft became unavailable", raft_errmsg(&n->raft));
    }
    uint64_t term = raft_current_term(&n->raft);
    if (state != RAFT_LEADER || term != n->leader_term) {
        if (n->leader_term != 0) {
            node_logf(n, "info", "msg=\"leadership lost\" term=%" PRIu64, n->leader_term);
            n->leader_term = 0;
            n->ready = false;
            queue_fail(n, -NODE_ENOTLEADER);
        }
        if (state == RAFT_LEADER) {
            node_logf(n, "info", "msg=\"elected\" term=%" PRIu64, term);
            n->leader_term = term;
        }
    }
    if (n->leader_term != 0 && !n->ready && !n->barrier_pending) {
        barrier_submit(n);
    }
}

static void change_cb(struct raft_change *req, int status);

static void change_finish(struct node_change *c, int status)
{
    struct node *n = c->node;
    n->change = NULL;
    node_change_cb cb = c->cb;
    void *data = c->data;
    free(c);
    if (cb != NULL) {
        cb(n, data, status);
    }
}

/* Second half of node_add, outside libraft's callback: promote the new server. */
static void change_assign(struct node *n)
{
    struct node_change *c = n->change;
    if (c == NULL || !c->assign_due) {
        return;
    }
    c->assign_due = false;
    c->promote = false;
    c->promoting = true;
    int rv = raft_assign(&n->raft, &c->req.change, c->id, RAFT_VOTER, change_cb);
    if (rv != 0) {
        node_error(n, -node_from_raft(rv), "raft_assign: %s", raft_errmsg(&n->raft));
        change_finish(c, node_from_raft(rv));
    }
}

static void check_cb(uv_check_t *h)
{
    struct node *n = h->data;
    if (n->closing || !n->started) {
        return;
    }
    track_leadership(n);
    change_assign(n);
    if (n->ready && n->n_queued > 0 && n->n_inflight < NODE_INFLIGHT_MAX) {
        queue_flush(n);
    }
    if (n->n_queued == 0 || !n->ready || n->n_inflight >= NODE_INFLIGHT_MAX) {
        int rv = uv_idle_stop(&n->idle);
        assert(rv == 0);
        (void)rv;
    }
}

/* ---- Membership and leadership transfer. ---- */

static void change_cb(struct raft_change *req, int status)
{
    struct node_change *c = req->data;
    if (c->node->closing) {
        change_finish(c, -NODE_ESHUTDOWN);
        return;
    }
    if (status == 0 && c->promote) {
        c->assign_due = true; /* raft_assign from the check handle, not from here */
        return;
    }
    if (status == RAFT_NOCONNECTION && c->promoting) {
        /* libraft gave up catching the new server up: it stays a non-voter. */
        node_error(c->node, NODE_ERAFT,
                   "server %" PRIu64 " did not catch up (is it running and reachable?); it "
                   "stays a non-voter: start it and add it again to promote it",
                   c->id);
    } else if (status != 0) {
        node_error(c->node, -node_from_raft(status), "membership change: %s",
                   raft_strerror(status));
    }
    change_finish(c, node_from_raft(status));
}

static int change_begin(struct node *n, uint64_t id, node_change_cb cb, void *data,
                        struct node_change **out)
{
    if (n->closing) {
        return -NODE_ESHUTDOWN;
    }
    if (n->change != NULL) {
        return -NODE_EBUSY;
    }
    struct node_change *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return -NODE_ENOMEM;
    }
    c->node = n;
    c->cb = cb;
    c->data = data;
    c->id = id;
    *out = c;
    return 0;
}

/* After submitting: 0 and remember the change, or the mapped error. */
static int change_submitted(struct node *n, struct node_change *c, int rv, const char *what)
{
    if (rv != 0) {
        int err = node_from_raft(rv);
        node_error(n, -err, "%s: %s", what, raft_errmsg(&n->raft));
        free(c);
        return err;
    }
    n->change = c;
    return 0;
}

/* Server `id` in the current configuration, or NULL. */
static const struct raft_server *configured_server(const struct node *n, uint64_t id)
{
    const struct raft_configuration *c = &n->raft.configuration;
    for (unsigned i = 0; i < c->n; i++) {
        if (c->servers[i].id == id) {
            return &c->servers[i];
        }
    }
    return NULL;
}

int node_add(struct node *n, uint64_t id, const char *address, node_change_cb cb, void *data)
{
    struct node_change *c = NULL;
    if (id == 0 || address == NULL || strlen(address) >= NODE_ADDRESS_MAX) {
        return -NODE_EINVAL;
    }
    int rv = change_begin(n, id, cb, data, &c);
    if (rv != 0) {
        return rv;
    }
    c->req.change.data = c;
    /* An earlier add whose promotion failed (the server was down or too slow to catch
     * up) leaves it a non-voter at the same address: adding it again promotes it. */
    const struct raft_server *s = configured_server(n, id);
    if (s != NULL && s->role != RAFT_VOTER && strcmp(s->address, address) == 0) {
        c->promoting = true;
        rv = raft_assign(&n->raft, &c->req.change, id, RAFT_VOTER, change_cb);
        return change_submitted(n, c, rv, "raft_assign");
    }
    c->promote = true;
    rv = raft_add(&n->raft, &c->req.change, id, address, change_cb);
    return change_submitted(n, c, rv, "raft_add");
}

int node_remove(struct node *n, uint64_t id, node_change_cb cb, void *data)
{
    struct node_change *c = NULL;
    if (id == 0) {
        return -NODE_EINVAL;
    }
    int rv = change_begin(n, id, cb, data, &c);
    if (rv != 0) {
        return rv;
    }
    c->req.change.data = c;
    rv = raft_remove(&n->raft, &c->req.change, id, change_cb);
    return change_submitted(n, c, rv, "raft_remove");
}

static void transfer_cb(struct raft_transfer *req)
{
    struct node_change *c = req->data;
    struct node *n = c->node;
    raft_id leader = 0;
    const char *address = NULL;
    raft_leader(&n->raft, &leader, &address);
    bool moved = raft_state(&n->raft) != RAFT_LEADER && (c->id == 0 || leader == c->id);
    change_finish(c, n->closing ? -NODE_ESHUTDOWN : moved ? 0 : -NODE_ETIMEDOUT);
}

int node_transfer(struct node *n, uint64_t id, node_change_cb cb, void *data)
{
    struct node_change *c = NULL;
    int rv = change_begin(n, id, cb, data, &c);
    if (rv != 0) {
        return rv;
    }
    c->req.transfer.data = c;
    rv = raft_transfer(&n->raft, &c->req.transfer, id, transfer_cb);
    return change_submitted(n, c, rv, "raft_transfer");
}

/* ---- Queries. ---- */

void node_leader(struct node *n, uint64_t *id, const char **address)
{
    raft_id leader = 0;
    const char *addr = NULL;
    if (n->started && !n->closing) {
        raft_leader(&n->raft, &leader, &addr);
    }
    *id = leader;
    if (address != NULL) {
        *address = addr;
    }
}

bool node_ready(struct node *n)
{
    return n->started && !n->closing && n->ready && raft_state(&n->raft) == RAFT_LEADER &&
           raft_current_term(&n->raft) == n->leader_term;
}

struct ledger *node_ledger(struct node *n)
{
    return n->ledger;
}

uint64_t node_id(const struct node *n)
{
    return n->id;
}

void node_set_clock_offset(struct node *n, int64_t offset_ms)
{
    if (offset_ms != n->clock_offset_ms) {
        node_logf(n, "warn", "msg=\"clock offset set\" offset_ms=%" PRId64, offset_ms);
    }
    n->clock_offset_ms = offset_ms;
}

void node_stats(struct node *n, struct node_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->term = raft_current_term(&n->raft);
    out->commit_index = raft_commit_index(&n->raft);
    out->last_applied = raft_last_applied(&n->raft);
    out->applied = n->fsm.applied;
    out->skipped = n->fsm.skipped;
    out->restores = n->fsm.restores;
    out->restores_skipped = n->fsm.restores_skipped;
    out->batches = n->batches;
    out->commands = n->commands;
    out->late_results = n->late_results;
    memcpy(out->batch_sizes, n->batch_sizes, sizeof(out->batch_sizes));
    out->state = raft_state(&n->raft);
    out->last_index = raft_last_index(&n->raft);
}

int node_peer_match(struct node *n, uint64_t id, uint64_t *match_index)
{
    /* libraft checks both: RAFT_NOTLEADER, or RAFT_BADID for an id not configured. */
    raft_index match = 0;
    int rv = raft_match_index(&n->raft, id, &match);
    if (rv == 0) {
        *match_index = match;
    }
    return node_from_raft(rv);
}

const char *node_errmsg(const struct node *n)
{
    return n->errmsg;
}

/* ---- Close. ---- */

static void node_finish_close(struct node *n)
{
    node_close_cb cb = n->close_cb;
    void *data = n->close_data;
    node_logf(n, "info", "msg=\"closed\"");
    node_close_ledger(n);
    node_free(n);
    if (cb != NULL) {
        cb(data);
    }
}

static void handle_close_cb(uv_handle_t *h)
{
    struct node *n = h->data;
    assert(n->open_handles > 0);
    if (--n->open_handles == 0) {
        node_finish_close(n);
    }
}

static void raft_closed_cb(struct raft *r)
{
    struct node *n = r->data;
    raft_uv_close(&n->io);
    node_transport_close(&n->transport);
    /* libraft failed its pending requests while closing; anything left is answered. */
    while (n->inflight_head != NULL) {
        struct node_batch *b = n->inflight_head;
        inflight_unlink(n, b);
        batch_finish(n, b, -NODE_ESHUTDOWN);
    }
    if (n->change != NULL) {
        change_finish(n->change, -NODE_ESHUTDOWN);
    }
    if (!n->handles) {
        node_finish_close(n);
        return;
    }
    uv_close((uv_handle_t *)&n->check, handle_close_cb);
    uv_close((uv_handle_t *)&n->idle, handle_close_cb);
}

void node_close(struct node *n, node_close_cb cb, void *data)
{
    assert(!n->closing);
    n->closing = true;
    n->close_cb = cb;
    n->close_data = data;
    n->ready = false;
    queue_fail(n, -NODE_ESHUTDOWN);
    raft_close(&n->raft, raft_closed_cb);
}
