/*
 * harness.h: what the integration tests on real processes share: a test clock and log,
 * failure that kills every child and shows the tail of its log, a deadline alarm, free
 * loopback ports, child processes that die with the test, non-blocking sockets with
 * deadlines, and a scratch directory removed on success.
 *
 * Ports are picked below the kernel's ephemeral range, so no client socket can take one
 * between the pick and the child's bind.
 */
#ifndef TALLY_TESTS_HARNESS_H
#define TALLY_TESTS_HARNESS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define H_PROCS_MAX 16

/* A child process the harness kills on failure and whose log it prints. */
struct h_proc {
    pid_t pid; /* 0 when not running */
    char log[PATH_MAX];
};

/* The scratch directory ("$TMPDIR/<name>-XXXXXX"), set by h_init(). */
#define H_DIR_MAX 1024
extern char h_dir[H_DIR_MAX];

/* Start the test: clock, scratch dir, alarm after deadline_s, SIGPIPE ignored, and an
 * LSan suppression for libraft's known leak in sanitizer builds of the children. */
void h_init(const char *name, int deadline_s);

/* End a passing test: remove the scratch dir unless TALLY_TEST_KEEP is set; print PASS. */
void h_pass(void);

int64_t h_now_ms(void);
void h_sleep_ms(int ms);

/* A line on stderr prefixed with the seconds since h_init(). */
__attribute__((format(printf, 1, 2))) void h_say(const char *fmt, ...);

/* Kill every registered child, print the tails of their logs, keep the scratch dir, exit 1. */
__attribute__((noreturn)) void h_fail_exit(void);

#define H_FAIL(...)                                                                                \
    do {                                                                                           \
        h_say("FAIL %s:%d:", __FILE__, __LINE__);                                                  \
        h_say(__VA_ARGS__);                                                                        \
        h_fail_exit();                                                                             \
    } while (0)

/* Track `p` (caller's, must stay valid) for h_fail_exit(). */
void h_register(struct h_proc *p);

/* A free loopback port not handed out before by this process. */
int h_pick_port(void);

/* Fork and exec argv (NULL-terminated) with stdout and stderr appended to p->log; the
 * child dies with the test (PR_SET_PDEATHSIG). Sets p->pid. */
void h_spawn(struct h_proc *p, char *const argv[]);

/* Send `sig` to p (if running) and reap it within 15 s (SIGKILL after); returns the wait
 * status. sig 0 only waits. */
int h_stop(struct h_proc *p, int sig);

/* Non-blocking TCP connection to 127.0.0.1:port within timeout_ms: fd or -1. */
int h_connect(int port, int timeout_ms);

/* Send all of data within timeout_ms: 0 or -1. */
int h_send_all(int fd, const void *data, size_t len, int timeout_ms);

/* Receive up to size bytes (at least 1) within timeout_ms: count, 0 on EOF, -1 on error or
 * timeout. */
ssize_t h_recv_some(int fd, void *buf, size_t size, int timeout_ms);

#endif /* TALLY_TESTS_HARNESS_H */
