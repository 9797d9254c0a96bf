/*
 * harness.c: shared support of the integration tests (see harness.h).
 */
#define _GNU_SOURCE
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

char h_dir[H_DIR_MAX];
static int64_t start_ms;
static struct h_proc *procs[H_PROCS_MAX];
static size_t n_procs;
static int ports[256];
static size_t n_ports;

int64_t h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void h_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void h_say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[%6.2fs] ", (double)(h_now_ms() - start_ms) / 1000.0);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void kill_all(int sig)
{
    for (size_t i = 0; i < n_procs; i++) {
        if (procs[i]->pid > 0) {
            kill(procs[i]->pid, sig);
        }
    }
}

static void print_tail(const char *path, int lines)
{
    FILE *f = path[0] != '\0' ? fopen(path, "r") : NULL;
    if (f == NULL) {
        return;
    }
    static char data[1 << 20];
    size_t len = fread(data, 1, sizeof(data) - 1, f);
    fclose(f);
    data[len] = '\0';
    size_t pos = len;
    for (int seen = 0; pos > 0; pos--) {
        if (data[pos - 1] == '\n' && ++seen > lines) {
            break;
        }
    }
    fprintf(stderr, "---- %s (last %d lines)\n%s", path, lines, data + pos);
}

void h_fail_exit(void)
{
    kill_all(SIGKILL);
    for (size_t i = 0; i < n_procs; i++) {
        print_tail(procs[i]->log, 40);
    }
    fprintf(stderr, "data kept in %s\n", h_dir);
    exit(1);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL: test deadline exceeded, killing children\n";
    kill_all(SIGKILL);
    if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0) {
        _exit(1);
    }
    _exit(1);
}

void h_init(const char *name, int deadline_s)
{
    start_ms = h_now_ms();
    srand((unsigned)(time(NULL) ^ getpid()));
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)deadline_s);
    const char *tmp = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    snprintf(h_dir, sizeof(h_dir), "%s/%s-XXXXXX", tmp, name);
    if (mkdtemp(h_dir) == NULL) {
        fprintf(stderr, "mkdtemp %s: %s\n", h_dir, strerror(errno));
        exit(1);
    }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void h_pass(void)
{
    if (getenv("TALLY_TEST_KEEP") == NULL) {
        nftw(h_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    } else {
        h_say("data kept in %s", h_dir);
    }
    h_say("PASS");
}

void h_register(struct h_proc *p)
{
    if (n_procs == H_PROCS_MAX) {
        H_FAIL("more than %d processes", H_PROCS_MAX);
    }
    procs[n_procs++] = p;
}

static bool port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return false;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

int h_pick_port(void)
{
    int lo = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f != NULL) {
        if (fscanf(f, "%d", &lo) != 1) {
            lo = 32768;
        }
        fclose(f);
    }
    if (lo <= 12000) {
        lo = 65000; /* unusual range: fall back to the top */
    }
    for (int attempt = 0; attempt < 1000 && n_ports < 256; attempt++) {
        int port = lo - 10000 + rand() % 9000;
        bool taken = false;
        for (size_t i = 0; i < n_ports; i++) {
            taken |= ports[i] == port;
        }
        if (!taken && port_free(port)) {
            ports[n_ports++] = port;
            return port;
        }
    }
    H_FAIL("no free port");
}

void h_spawn(struct h_proc *p, char *const argv[])
{
    pid_t pid = fork();
    if (pid < 0) {
        H_FAIL("fork: %s", strerror(errno));
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    p->pid = pid;
}

int h_stop(struct h_proc *p, int sig)
{
    pid_t pid = p->pid;
    int status = 0;
    if (pid <= 0) {
        return 0;
    }
    if (sig != 0) {
        kill(pid, sig);
    }
    int64_t deadline = h_now_ms() + 15000;
    while (waitpid(pid, &status, WNOHANG) != pid) {
        if (h_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            p->pid = 0;
            H_FAIL("process %d did not stop on signal %d", (int)pid, sig);
        }
        h_sleep_ms(20);
    }
    p->pid = 0;
    return status;
}

int h_connect(int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    struct pollfd pfd = {fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof(err);
    if (poll(&pfd, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
        err != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int h_send_all(int fd, const void *data, size_t len, int timeout_ms)
{
    const char *p = data;
    int64_t deadline = h_now_ms() + timeout_ms;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            return -1;
        }
        struct pollfd pfd = {fd, POLLOUT, 0};
        int left = (int)(deadline - h_now_ms());
        if (left <= 0 || poll(&pfd, 1, left) < 0) {
            return -1;
        }
    }
    return 0;
}

ssize_t h_recv_some(int fd, void *buf, size_t size, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    for (;;) {
        ssize_t n = recv(fd, buf, size, 0);
        if (n >= 0) {
            return n;
        }
        if (errno != EAGAIN && errno != EINTR) {
            return -1;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        int left = (int)(deadline - h_now_ms());
        if (left <= 0 || poll(&pfd, 1, left) < 0) {
            return -1;
        }
    }
}
