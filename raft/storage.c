/*
 * storage.c: the node's data directories and its ledger on disk.
 *
 * The one idea: the Raft log is the durable record and the ledger (LMDB with NOSYNC) a
 * cache of it, so a ledger that may have lost pages in a machine crash is not repaired
 * but deleted and rebuilt by libraft from its snapshot and log. A boot marker beside the
 * ledger tells which ledgers to trust (see the comment at BOOT_MARKER).
 *
 * The storage gate is here too: an entry once in the log must apply on every replica, so
 * the leader refuses a proposal (before it exists) while its map or disk is past the
 * reserve, and the reserve is the room left for what is already in the log.
 */
#include "raft/node_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* How long a reading of the disk's free space is used before statvfs() is called again. */
#define DISK_CHECK_PERIOD_MS 100

int node__make_dirs(const char *path, char *why, size_t size)
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
#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"
#define BOOT_ID_UNKNOWN "unknown" /* in the marker of a node that could not read it */

static void read_boot_id(const char *path, char out[64])
{
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        if (fgets(out, 64, f) == NULL) {
            out[0] = '\0';
        }
        out[strcspn(out, "\n")] = '\0';
        fclose(f);
    }
    if (strchr(out, ' ') != NULL || strcmp(out, BOOT_ID_UNKNOWN) == 0) {
        out[0] = '\0'; /* not a boot id the marker could hold and compare */
    }
}

/* This boot's id into n->boot_id; "" (and a warning) only if the node may start without. */
static int boot_id_load(struct node *n, char *why, size_t size)
{
    const char *path = n->cfg.boot_id_path != NULL ? n->cfg.boot_id_path : BOOT_ID_PATH;
    read_boot_id(path, n->boot_id);
    if (n->boot_id[0] != '\0') {
        return 0;
    }
    if (!n->cfg.allow_unknown_boot_id) {
        snprintf(why, size,
                 "cannot read the boot id from %.100s: a machine crash could not be told from a "
                 "process crash (--allow-unknown-boot-id rebuilds the ledger after every unclean "
                 "stop instead)",
                 path);
        return -NODE_EIO;
    }
    node__logf(n, "warn",
               "msg=\"boot id unknown: a ledger not closed cleanly is rebuilt from the Raft "
               "snapshot and log\" path=\"%s\"",
               path);
    return 0;
}

/* Write "BOOT_ID clean|open" durably (temp file, fsync, rename, fsync the dir). */
static int boot_marker_write(struct node *n, const char *dir, bool clean, char *why, size_t size)
{
    char path[NODE_DIR_MAX + 32], tmp[NODE_DIR_MAX + 32];
    snprintf(path, sizeof(path), "%s/" BOOT_MARKER, dir);
    snprintf(tmp, sizeof(tmp), "%s/" BOOT_MARKER ".tmp", dir);
    char text[96];
    const char *boot = n->boot_id[0] != '\0' ? n->boot_id : BOOT_ID_UNKNOWN;
    int len = snprintf(text, sizeof(text), "%s %s\n", boot, clean ? "clean" : "open");
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
    if (got != 2) {
        return true; /* an unreadable marker: do not trust the ledger */
    }
    if (strcmp(state, "clean") == 0) {
        return false;
    }
    /* Open under an unknown boot (then or now) may be after a machine crash too. */
    return n->boot_id[0] == '\0' || strcmp(boot, n->boot_id) != 0;
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

static void node_on_fatal(struct node_fsm *f, const char *reason)
{
    node__fatal(f->data, "state machine cannot continue", reason);
}

int node__open_ledger(struct node *n, const char *dir, char *why, size_t size)
{
    snprintf(n->ledger_dir, sizeof(n->ledger_dir), "%s/ledger", dir);
    const char *path = n->ledger_dir;
    int rv = node__make_dirs(path, why, size);
    if (rv != 0) {
        return rv;
    }
    rv = boot_id_load(n, why, size);
    if (rv != 0) {
        return rv;
    }
    if (ledger_left_by_crash(n, dir)) {
        node__logf(n, "warn",
                   "msg=\"the ledger was open when the machine went down: rebuilding "
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
    uint64_t max_bytes =
        n->cfg.max_ledger_bytes ? n->cfg.max_ledger_bytes : NODE_LEDGER_BYTES_DEFAULT;
    n->reserve_bytes = n->cfg.storage_reserve_bytes;
    if (n->reserve_bytes == 0) {
        n->reserve_bytes =
            max_bytes / 8 < NODE_RESERVE_BYTES_DEFAULT ? max_bytes / 8 : NODE_RESERVE_BYTES_DEFAULT;
    }
    struct ledger_options opts = {.flags = LEDGER_OPEN_NOSYNC, .max_map_bytes = max_bytes};
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

void node__close_ledger(struct node *n)
{
    bool synced = ledger_sync(n->ledger) == 0;
    node_fsm_close(&n->fsm);
    ledger_close(n->ledger);
    n->ledger = NULL;
    char dir[NODE_DIR_MAX], why[NODE_ERRMSG_SIZE];
    snprintf(dir, sizeof(dir), "%.*s", (int)(strlen(n->ledger_dir) - strlen("/ledger")),
             n->ledger_dir);
    if (synced && boot_marker_write(n, dir, true, why, sizeof(why)) != 0) {
        node__logf(n, "warn", "msg=\"cannot mark the ledger clean\" reason=\"%s\"", why);
    }
}

/* ---- The storage gate. ---- */

bool node__storage_config_ok(const struct node_config *c, char *why, size_t size)
{
    uint64_t max_bytes = c->max_ledger_bytes ? c->max_ledger_bytes : NODE_LEDGER_BYTES_DEFAULT;
    if (max_bytes < NODE_LEDGER_BYTES_MIN || max_bytes > NODE_LEDGER_BYTES_MAX) {
        snprintf(why, size, "max ledger bytes must be %" PRIu64 "..%" PRIu64, NODE_LEDGER_BYTES_MIN,
                 NODE_LEDGER_BYTES_MAX);
        return false;
    }
    uint64_t reserve = c->storage_reserve_bytes;
    if (reserve != 0 && (reserve < NODE_RESERVE_BYTES_MIN || reserve > max_bytes / 2)) {
        snprintf(why, size,
                 "storage reserve bytes must be %" PRIu64 "..%" PRIu64
                 " (half the max ledger bytes)",
                 NODE_RESERVE_BYTES_MIN, max_bytes / 2);
        return false;
    }
    return true;
}

/* Read the free space of the data dir's file system into n->disk_free_bytes. A failed
 * statvfs() keeps the last reading (it says nothing about space); before any, the figure
 * is 0, which refuses writes: fail-closed. */
static void disk_check(struct node *n)
{
    struct statvfs vfs;
    n->disk_checked_ms = uv_now(n->loop);
    if (statvfs(n->ledger_dir, &vfs) == 0) {
        n->disk_free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    }
}

/* Whether the map (`space`, filled here) or the disk is past the reserve. */
static bool past_reserve(struct node *n, struct ledger_space *space)
{
    ledger_space(n->ledger, space);
    return space->map_used_bytes + n->reserve_bytes >= space->map_max_bytes ||
           n->disk_free_bytes < n->reserve_bytes;
}

bool node__storage_allows(struct node *n)
{
    if (n->disk_checked_ms == 0 || uv_now(n->loop) - n->disk_checked_ms >= DISK_CHECK_PERIOD_MS) {
        disk_check(n);
    }
    struct ledger_space space;
    bool refusing = past_reserve(n, &space);
    if (refusing != n->storage_refusing) {
        node__logf(n, refusing ? "warn" : "info",
                   "msg=\"%s\" map_used_bytes=%" PRIu64 " map_max_bytes=%" PRIu64
                   " disk_free_bytes=%" PRIu64 " reserve_bytes=%" PRIu64,
                   refusing ? "storage past its reserve: refusing writes"
                            : "storage back within its reserve: accepting writes",
                   space.map_used_bytes, space.map_max_bytes, n->disk_free_bytes, n->reserve_bytes);
        n->storage_refusing = refusing;
    }
    n->storage_refused += refusing;
    return !refusing;
}

void node_space(struct node *n, struct node_space *out)
{
    struct ledger_space space;
    disk_check(n);
    bool refusing = past_reserve(n, &space);
    *out = (struct node_space){
        .map_used_bytes = space.map_used_bytes,
        .map_max_bytes = space.map_max_bytes,
        .disk_free_bytes = n->disk_free_bytes,
        .reserve_bytes = n->reserve_bytes,
        .refused = n->storage_refused,
        .refusing = refusing,
    };
}
