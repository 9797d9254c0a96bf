/*
 * common.c: the chaos runner's small shared pieces: the workload's account table, the
 * clock, the random generator, the history and log files, shell commands, and helpers
 * around libtally.
 */
#define _GNU_SOURCE
#include "chaos.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/*
 * The accounts. Budgets are tight on purpose: k1's settles charge most of the estimate,
 * so its budget runs out early and every later reserve on it is denied (denied ids then
 * replay denied); team a's budget and the leaves' max_parallel bind on holds alone; team
 * b's rpm binds on bursts. No periods: a budget is spent once (docs/chaos.md says why).
 */
const struct ch_account ch_accounts[] = {
    {"org", NULL, 1000000000000LL, -1, 30000, 2000, 0, 0, 0, 0, 0, 0},
    {"org/a", "org", 400000, 6, -1, 0, 0, 0, 0, 0, 0, 0},
    {"org/a/k1", "org/a", 150000, 2, -1, 0, 0, 1, 5000, 40000, 1, 1},
    {"org/a/k2", "org/a", 5000000, 4, -1, 0, 1, 0, 20000, 150000, 0, 1},
    {"org/b", "org", 900000, 8, 600, 20, 0, 0, 0, 0, 0, 0},
    {"org/b/k3", "org/b", 4000000, 4, -1, 0, 0, 1, 50000, 300000, 0, 0},
    {"org/b/k4", "org/b", -1, 3, -1, 0, 1, 0, 10000, 100000, 0, 1},
};
const int ch_n_accounts = (int)(sizeof(ch_accounts) / sizeof(ch_accounts[0]));

struct ch_run ch;

static struct timespec t0;

void ch_clock_start(void)
{
    clock_gettime(CLOCK_MONOTONIC, &t0);
}

int64_t ch_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)(ts.tv_sec - t0.tv_sec) * 1000000 + (ts.tv_nsec - t0.tv_nsec) / 1000;
}

int64_t ch_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ch_sleep_ms(int64_t ms)
{
    if (ms <= 0) {
        return;
    }
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

uint64_t ch_rand(uint64_t *s)
{
    uint64_t x = *s != 0 ? *s : 0x9e3779b97f4a7c15ULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

int64_t ch_rand_range(uint64_t *s, int64_t lo, int64_t hi)
{
    if (hi <= lo) {
        return lo;
    }
    return lo + (int64_t)(ch_rand(s) % (uint64_t)(hi - lo + 1));
}

bool ch_chance(uint64_t *s, int num, int den)
{
    return (int)(ch_rand(s) % (uint64_t)den) < num;
}

/* ---- History and log. ---- */

static pthread_mutex_t hist_mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *hist;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *logf_;

int ch_hist_open(const char *path)
{
    hist = fopen(path, "we");
    if (hist == NULL) {
        return -1;
    }
    setvbuf(hist, NULL, _IOFBF, 1 << 20);
    return 0;
}

void ch_hist(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&hist_mu);
    if (hist != NULL) {
        vfprintf(hist, fmt, ap);
        fputc('\n', hist);
    }
    pthread_mutex_unlock(&hist_mu);
    va_end(ap);
}

void ch_hist_flush(void)
{
    pthread_mutex_lock(&hist_mu);
    if (hist != NULL) {
        fflush(hist);
    }
    pthread_mutex_unlock(&hist_mu);
}

void ch_hist_close(void)
{
    pthread_mutex_lock(&hist_mu);
    if (hist != NULL) {
        fclose(hist);
        hist = NULL;
    }
    pthread_mutex_unlock(&hist_mu);
}

int ch_log_open(const char *path)
{
    logf_ = fopen(path, "ae");
    return logf_ != NULL ? 0 : -1;
}

void ch_log(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    int64_t us = ch_now_us();
    pthread_mutex_lock(&log_mu);
    fprintf(stderr, "[chaos %7.2f] %s\n", (double)us / 1e6, line);
    if (logf_ != NULL) {
        fprintf(logf_, "[%7.2f] %s\n", (double)us / 1e6, line);
        fflush(logf_);
    }
    pthread_mutex_unlock(&log_mu);
}

/* ---- Shell commands on what run.sh created. ---- */

int ch_sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rv = system(cmd);
    if (rv != 0) {
        ch_log("command failed (%d): %s", rv, cmd);
    }
    return rv;
}

/* ---- libtally helpers. ---- */

int ch_node_of_endpoint(const char *endpoint)
{
    for (int i = 0; i < CH_NODES; i++) {
        if (strcmp(endpoint, ch.nodes[i].endpoint) == 0) {
            return ch.nodes[i].id;
        }
    }
    return 0;
}

void ch_id_hex(const uint8_t id[TALLY_REQUEST_ID_SIZE], char out[33])
{
    tally_hex(id, TALLY_REQUEST_ID_SIZE, out);
}

void ch_key_secret(int acct, char *out, size_t size)
{
    snprintf(out, size, "sk-chaos-%08x-%d", ch.nonce, acct);
}

struct tally *ch_client(const char *endpoints, const char *token, int64_t deadline_ms)
{
    struct tally_config cfg;
    struct tally *c = NULL;
    char errmsg[TALLY_ERRMSG_SIZE];
    tally_config_init(&cfg);
    cfg.endpoints = endpoints;
    cfg.token = token;
    cfg.deadline_ms = deadline_ms;
    cfg.connect_timeout_ms = 500;
    cfg.void_deadline_ms = 20000;
    if (tally_open(&c, &cfg, errmsg) != 0) {
        ch_log("tally_open(%s): %s", endpoints, errmsg);
        return NULL;
    }
    return c;
}

const char *ch_outcome_word(const struct tally_result *res)
{
    switch (res->outcome) {
    case TALLY_GRANTED:
        return "ok";
    case TALLY_DENIED:
        return "denied";
    case TALLY_UNAVAILABLE:
        /* Never sent: certainly not applied. Sent: it may have been. */
        return res->attempts == 0 ? "unavailable" : "timeout";
    default:
        return "error";
    }
}
