/*
 * benchlib_test.c: the log-bucketed histogram's percentiles are within its stated
 * resolution (1/BENCH_HIST_SUB) of the exact ones, never below them, and merging equals
 * recording everything in one histogram.
 */
#include "bench/benchlib.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond);                     \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* quantile_within_resolution_of_sorted_samples: seeded random latencies spanning 1 ns ..
 * 10 s; every reported quantile q is >= the exact one and at most 1/SUB above it. */
static void quantile_within_resolution_of_sorted_samples(unsigned seed)
{
    enum { N = 200000 };
    static uint64_t v[N];
    static struct bench_hist h;
    bench_hist_init(&h);
    uint64_t rng = seed * UINT64_C(0x9e3779b97f4a7c15) | 1;
    for (int i = 0; i < N; i++) {
        double e = (double)(bench_rand(&rng) >> 11) / 9007199254740992.0 * 10.0; /* 0..10 */
        v[i] = (uint64_t)pow(10.0, e);
        bench_hist_add(&h, v[i]);
    }
    qsort(v, N, sizeof(v[0]), cmp_u64);
    const double qs[] = {0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0};
    for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        uint64_t rank = (uint64_t)ceil(qs[i] * N);
        uint64_t exact = v[rank - 1];
        uint64_t got = bench_hist_quantile(&h, qs[i]);
        CHECK(got >= exact);
        CHECK((double)got <= (double)exact * (1.0 + 1.0 / BENCH_HIST_SUB) + 1.0);
    }
    CHECK(h.count == N && h.min_ns == v[0] && h.max_ns == v[N - 1]);
}

/* small_values_are_exact: below BENCH_HIST_SUB every value has its own bucket. */
static void small_values_are_exact(void)
{
    struct bench_hist h;
    bench_hist_init(&h);
    for (uint64_t x = 0; x < BENCH_HIST_SUB; x++) {
        bench_hist_add(&h, x);
    }
    CHECK(bench_hist_quantile(&h, 0.5) == BENCH_HIST_SUB / 2 - 1);
    CHECK(bench_hist_quantile(&h, 1.0) == BENCH_HIST_SUB - 1);
    bench_hist_add(&h, UINT64_MAX); /* the top bucket exists */
    CHECK(bench_hist_quantile(&h, 1.0) == UINT64_MAX);
}

/* merge_equals_one_histogram */
static void merge_equals_one_histogram(void)
{
    static struct bench_hist a, b, all;
    bench_hist_init(&a);
    bench_hist_init(&b);
    bench_hist_init(&all);
    uint64_t rng = 12345;
    for (int i = 0; i < 10000; i++) {
        uint64_t x = bench_rand(&rng) % 5000000;
        bench_hist_add(i % 2 ? &a : &b, x);
        bench_hist_add(&all, x);
    }
    bench_hist_merge(&a, &b);
    CHECK(memcmp(a.bucket, all.bucket, sizeof(a.bucket)) == 0);
    CHECK(a.count == all.count && a.sum_ns == all.sum_ns && a.min_ns == all.min_ns &&
          a.max_ns == all.max_ns);
    CHECK(bench_hist_quantile(&a, 0.99) == bench_hist_quantile(&all, 0.99));
}

int main(void)
{
    for (unsigned seed = 1; seed <= 3; seed++) {
        quantile_within_resolution_of_sorted_samples(seed);
    }
    small_values_are_exact();
    merge_equals_one_histogram();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
