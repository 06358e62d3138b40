/*
 * What bounds a seqlock-protected random row gather: variants of the gather floor.
 *
 * Same work as gather_floor.c (256 random rows of 64 + 64 float32 from two columns, rows
 * prefetched 6 ahead), with optional extras that a concurrent store adds per row:
 *   mode bit 0: copy each row as 8-byte volatile words (what relaxed AtomicU64 loads compile
 *               to: no wide SIMD moves) instead of memcpy;
 *   mode bit 1: read a per-slot stamp before and after the copy and three int64 metadata
 *               columns (4 more random cache lines per row, not prefetched);
 *   mode bit 2: prefetch the stamp and metadata lines too.
 * Prints the median time of one 256-row gather.
 *
 *   cc -O2 benchmarks/gather_variants.c -o /tmp/gather_variants
 *   for m in 0 1 2 3 7; do /tmp/gather_variants 1000000 $m; done
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH 256
#define WORDS 32 /* 64 float32 = 32 u64 words per row and column */
#define AHEAD 6
#define ITERS 4000

static inline uint64_t xorshift64(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A macro, not a function: GCC -O2 dropped the prefetches of an inlined helper here. */
#define PREFETCH_ROW(col, meta, row, mode)                                                   \
    do {                                                                                     \
        for (int c_ = 0; c_ < 2; c_++)                                                       \
            for (int k_ = 0; k_ < WORDS * 8; k_ += 64)                                       \
                __builtin_prefetch((const char *)((col)[c_] + (row) * WORDS) + k_);          \
        if ((mode) & 4)                                                                      \
            for (int i_ = 0; i_ < 4; i_++) __builtin_prefetch((meta)[i_] + (row));           \
    } while (0)

static int64_t copy_row(const uint64_t *const *col, uint64_t *const *meta, uint64_t *const *out,
                        size_t b, size_t row, int mode) {
    int64_t acc = 0;
    uint64_t stamp = (mode & 2) ? ((volatile uint64_t *)meta[0])[row] : 0;
    for (int c = 0; c < 2; c++) {
        if (mode & 1) {
            const volatile uint64_t *src = col[c] + row * WORDS;
            for (int k = 0; k < WORDS; k++) out[c][b * WORDS + k] = src[k];
        } else {
            memcpy(out[c] + b * WORDS, col[c] + row * WORDS, WORDS * 8);
        }
    }
    if (mode & 2) {
        for (int i = 1; i < 4; i++) acc += ((volatile int64_t *)meta[i])[row];
        acc += ((volatile uint64_t *)meta[0])[row] != stamp;
    }
    return acc;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s ROWS MODE\n", argv[0]);
        return 2;
    }
    size_t n = strtoull(argv[1], NULL, 10);
    int mode = atoi(argv[2]);
    uint64_t *col[2], *meta[4], *out[2];
    for (int c = 0; c < 2; c++) {
        col[c] = malloc(n * WORDS * 8);
        memset(col[c], 1, n * WORDS * 8);
        out[c] = malloc(BATCH * WORDS * 8);
    }
    for (int i = 0; i < 4; i++) {
        meta[i] = malloc(n * 8);
        memset(meta[i], 2, n * 8);
    }
    uint64_t state = 12345;
    size_t idx[BATCH];
    double *times = malloc(ITERS * sizeof(double));
    int64_t acc = 0;
    for (int it = 0; it < ITERS; it++) {
        double t0 = now_ns();
        for (size_t b = 0; b < BATCH; b++)
            idx[b] = (size_t)(((__uint128_t)xorshift64(&state) * n) >> 64);
        for (size_t b = 0; b < BATCH; b++) {
            if (b + AHEAD < BATCH) PREFETCH_ROW(col, meta, idx[b + AHEAD], mode);
            acc += copy_row((const uint64_t *const *)col, meta, out, b, idx[b], mode);
        }
        times[it] = now_ns() - t0;
    }
    qsort(times, ITERS, sizeof(double), by_value);
    printf("rows=%zu mode=%d: median %.1f us per %d-row gather (checksum %lld)\n", n, mode,
           times[ITERS / 2] / 1e3, BATCH, (long long)(acc & 1));
    return 0;
}
