/*
 * The compiled floor of a random row gather, for benchmarks/bench_buffer.py.
 *
 * Per call: draw `batch` random start rows with xorshift64 (range-reduced by a 128-bit
 * multiply), and copy `span` consecutive rows of every column to the output columns with
 * memcpy. span = 1 is a uniform row sample; span = 32 is a window (sequence) sample. The
 * columns are separate arrays (the same columnar layout as the store), so the bytes moved are
 * exactly those a store sample moves. Each call is timed on its own (wall and process CPU).
 * With `ahead` > 0 the indices are drawn first and rows are prefetched `ahead` rows before
 * they are copied: a tuned floor, reported next to the plain one.
 *
 * Built at run time by the benchmark: cc -O2 -shared -fPIC gather_floor.c -o libgather_floor.so
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline uint64_t xorshift64(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x;
}

static inline double now_ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static inline void copy_window(const float *const *cols, const uint64_t *dims, int n_cols,
                               uint64_t span, float *const *outs, uint64_t b, uint64_t row) {
    for (int c = 0; c < n_cols; c++) {
        uint64_t width = span * dims[c];
        memcpy(outs[c] + b * width, cols[c] + row * dims[c], width * sizeof(float));
    }
}

/*
 * cols[c]: n_rows x dims[c] float32, row-major. outs[c]: batch x span x dims[c] float32.
 * ahead = 0: the plain loop (draw an index, copy, repeat). ahead > 0: draw the batch's
 * indices first, then copy while prefetching the first 256 bytes of each column's window
 * `ahead` windows ahead (what a tuned gather does; the hardware streams the rest).
 * wall_ns[i], cpu_ns[i]: wall and process-CPU time of call i (i < iters).
 * Returns a checksum so nothing is optimised out.
 */
double gather_floor(const float *const *cols, const uint64_t *dims, int n_cols, uint64_t n_rows,
                    uint64_t span, float *const *outs, uint64_t batch, uint64_t iters,
                    uint64_t seed, uint64_t ahead, double *wall_ns, double *cpu_ns) {
    uint64_t state = seed | 1;
    uint64_t starts = n_rows - span + 1; /* valid window starts */
    uint64_t *rows = malloc(batch * sizeof(uint64_t));
    double checksum = 0.0;
    for (uint64_t it = 0; it < iters; it++) {
        double c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
        double t0 = now_ns(CLOCK_MONOTONIC);
        if (ahead == 0) {
            for (uint64_t b = 0; b < batch; b++) {
                uint64_t row = (uint64_t)(((__uint128_t)xorshift64(&state) * starts) >> 64);
                copy_window(cols, dims, n_cols, span, outs, b, row);
            }
        } else {
            for (uint64_t b = 0; b < batch; b++)
                rows[b] = (uint64_t)(((__uint128_t)xorshift64(&state) * starts) >> 64);
            for (uint64_t b = 0; b < batch; b++) {
                if (b + ahead < batch)
                    for (int c = 0; c < n_cols; c++) {
                        const char *p = (const char *)(cols[c] + rows[b + ahead] * dims[c]);
                        for (uint64_t k = 0; k < dims[c] * sizeof(float) && k < 256; k += 64)
                            __builtin_prefetch(p + k);
                    }
                copy_window(cols, dims, n_cols, span, outs, b, rows[b]);
            }
        }
        wall_ns[it] = now_ns(CLOCK_MONOTONIC) - t0;
        cpu_ns[it] = now_ns(CLOCK_PROCESS_CPUTIME_ID) - c0;
        checksum += outs[0][(it * 7) % (batch * span * dims[0])];
    }
    free(rows);
    return checksum;
}
