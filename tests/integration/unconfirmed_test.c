/*
 * unconfirmed_test.c: an UNAVAILABLE reserve never turns into a charge (docs/ledger.md,
 * Unconfirmed reservations), on three real tallyd processes driven by tallyctl.
 *
 *   unconfirmed_test <tallyd> <tallyctl> wait|gone
 *
 * Both followers are SIGKILLed; at once tallyctl reserves on the leader with a short
 * --timeout and answers UNAVAILABLE (exit 2). The followers come back; the old leader may
 * be elected again and commit the reserve it had appended, or a follower may win and drop
 * it. Past the ttl, a write moves ledger time on: the account's spent and held are
 * unchanged (0) and the reservation is absent, voided or expired (released; a void that
 * came after the ttl leaves it late_settled), with nothing charged.
 *   wait: tallyctl waits for its void (--void-wait-ms) while the followers come back and
 *         says it went through;
 *   gone: tallyctl exits at once (--void-wait-ms 0) before the quorum returns, so only
 *         the ledger's rule keeps the hold from being charged.
 */
#define _GNU_SOURCE

#include "cluster.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define RESV_ID "00000000000000000000000000000c15"
#define TTL_MS 4000

static const char *tallyctl;

/* "--endpoints E ARGS" for tallyctl as `token`, output into "<h_dir>/NAME.out" (the
 * token travels in the environment). */
static void ctl_command(char *cmd, size_t size, const char *endpoints, const char *args,
                        const char *name)
{
    snprintf(cmd, size, "TALLY_TOKEN='%s' %s --endpoints %s %s > %s/%s.out 2>&1", CL_ADMIN_TOKEN,
             tallyctl, endpoints, args, h_dir, name);
}

static int exit_status(int rv)
{
    return rv != -1 && WIFEXITED(rv) ? WEXITSTATUS(rv) : -1;
}

/* Run tallyctl on every running node; its exit status, output in `out`. */
static int ctl(const char *args, char *out, size_t size)
{
    char endpoints[256], cmd[2 * PATH_MAX + 1024], path[PATH_MAX];
    cl_endpoints(endpoints, sizeof(endpoints));
    ctl_command(cmd, sizeof(cmd), endpoints, args, "ctl");
    int rv = exit_status(system(cmd));
    snprintf(path, sizeof(path), "%s/ctl.out", h_dir);
    FILE *f = fopen(path, "r");
    size_t n = f != NULL ? fread(out, 1, size - 1, f) : 0;
    out[n] = '\0';
    if (f != NULL) {
        fclose(f);
    }
    return rv;
}

static void ctl_ok(const char *args)
{
    char out[8192];
    int rv = ctl(args, out, sizeof(out));
    if (rv != 0) {
        H_FAIL("tallyctl %s: exit %d: %s", args, rv, out);
    }
}

/* The account's spent and held must both be 0. */
static void check_nothing_charged(const char *account)
{
    char args[256], out[8192];
    snprintf(args, sizeof(args), "--json account show %s", account);
    int rv = ctl(args, out, sizeof(out));
    if (rv != 0 || strstr(out, "\"spent_micros\":0") == NULL ||
        strstr(out, "\"held_micros\":0") == NULL) {
        H_FAIL("account %s after the ttl: exit %d: %s", account, rv, out);
    }
}

/* The reservation is absent, or resolved without a charge. */
static void check_released(void)
{
    char out[8192];
    int rv = ctl("--json reservations show " RESV_ID, out, sizeof(out));
    if (rv == 3 && strstr(out, "not found") != NULL) {
        h_say("the reserve was not committed (a follower was elected): no reservation");
        return;
    }
    /* Voided; or expired (released) and then, when the void came after the ttl, resolved
     * late by it: late_settled with nothing charged. */
    if (rv != 0 || (strstr(out, "\"state\":\"expired\"") == NULL &&
                    strstr(out, "\"state\":\"voided\"") == NULL &&
                    strstr(out, "\"state\":\"late_settled\"") == NULL)) {
        H_FAIL("reservation after the ttl: exit %d: %s", rv, out);
    }
    if (strstr(out, "\"charged_micros\":0") == NULL) {
        H_FAIL("reservation charged: %s", out);
    }
    h_say("the reserve committed and was released: %s", strstr(out, "\"state\""));
}

static void read_file(const char *name, char *out, size_t size)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", h_dir, name);
    FILE *f = fopen(path, "r");
    size_t n = f != NULL ? fread(out, 1, size - 1, f) : 0;
    out[n] = '\0';
    if (f != NULL) {
        fclose(f);
    }
}

static void scenario(const char *tallyd, bool wait)
{
    cl_start(tallyd);
    ctl_ok("account create acme --budget 1000000");
    ctl_ok("account create clock");
    int leader = cl_leader(10000);
    if (leader < 0) {
        H_FAIL("no leader");
    }
    /* Every node, the stopped ones too, so the void follows the next leader. */
    char endpoints[256] = "";
    for (int i = 0; i < CL_NODES; i++) {
        char one[64];
        cl_endpoint(i, one, sizeof(one));
        snprintf(endpoints + strlen(endpoints), sizeof(endpoints) - strlen(endpoints), "%s%s",
                 i > 0 ? "," : "", one);
    }
    for (int i = 0; i < CL_NODES; i++) {
        if (i != leader) {
            cl_stop(i, SIGKILL);
        }
    }
    char args[512], cmd[2 * PATH_MAX + 1024];
    snprintf(args, sizeof(args),
             "--timeout 1500 reserve --account acme --estimate 5000 --ttl %d --id %s "
             "--void-wait-ms %d",
             TTL_MS, RESV_ID, wait ? 30000 : 0);
    ctl_command(cmd, sizeof(cmd), endpoints, args, "reserve");
    pid_t pid = fork();
    if (pid < 0) {
        H_FAIL("fork");
    }
    if (pid == 0) {
        _exit(exit_status(system(cmd)) & 0xff);
    }
    int status = 0;
    if (!wait) {
        if (waitpid(pid, &status, 0) != pid) {
            H_FAIL("waitpid");
        }
        h_say("tallyctl exited before the quorum returned");
    } else {
        /* Bring the followers back only once the reserve has answered UNAVAILABLE (its
         * void retrying): on a loaded machine tallyctl may take seconds to start. */
        char said[8192] = "";
        for (int waited = 0; strstr(said, "unavailable") == NULL; waited += 100) {
            if (waited > 30000) {
                H_FAIL("tallyctl reserve did not answer within 30 s: %s", said);
            }
            h_sleep_ms(100);
            read_file("reserve.out", said, sizeof(said));
        }
        h_sleep_ms(1000);
    }
    for (int i = 0; i < CL_NODES; i++) {
        if (i != leader) {
            cl_spawn(i);
        }
    }
    if (wait && waitpid(pid, &status, 0) != pid) {
        H_FAIL("waitpid");
    }
    char out[8192];
    read_file("reserve.out", out, sizeof(out));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 2) {
        H_FAIL("reserve without a quorum: status %d, want exit 2: %s", status, out);
    }
    const char *said = wait ? "went through" : "did not go through within 0 ms";
    if (strstr(out, said) == NULL) {
        H_FAIL("tallyctl did not say the void %s: %s", said, out);
    }
    h_say("tallyctl: %s", out);
    if (cl_leader(20000) < 0) {
        H_FAIL("no leader after the followers returned");
    }
    h_sleep_ms(TTL_MS + 1000);
    ctl_ok("account update clock --rpm 100"); /* a write: ledger time passes the ttl */
    check_nothing_charged("acme");
    check_released();
    char hash[65];
    cl_converged(20000, 0, hash);
}

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[3], "wait") != 0 && strcmp(argv[3], "gone") != 0)) {
        fprintf(stderr, "usage: %s <tallyd> <tallyctl> wait|gone\n", argv[0]);
        return 2;
    }
    h_init(strcmp(argv[3], "wait") == 0 ? "unconfirmed_wait" : "unconfirmed_gone", 150);
    tallyctl = argv[2];
    scenario(argv[1], strcmp(argv[3], "wait") == 0);
    h_pass();
    return 0;
}
