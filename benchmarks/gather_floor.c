/*
 * The compiled floor of a random row gather, for benchmarks/bench_buffer.py.
 *
 * Per call: draw `batch` random start rows with xorshift64 (range-reduced by a 128-bit
 * multiply), and copy `span` consecutive rows of every column to the output columns with
 * memcpy. span = 1 is a uniform row sample; span = 32 is a window (sequence) sample. The
 * columns are separate arrays (the same columnar layout as the store), so the bytes moved are
 * exactly those a store sample moves. Each call is timed on its own (wall and process CPU).
 *
 * Built at run time by the benchmark: cc -O2 -shared -fPIC gather_floor.c -o libgather_floor.so
 */
#include <stdint.h>
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

/*
 * cols[c]: n_rows x dims[c] float32, row-major. outs[c]: batch x span x dims[c] float32.
 * wall_ns[i], cpu_ns[i]: wall and process-CPU time of call i (i < iters).
 * Returns a checksum so nothing is optimised out.
 */
double gather_floor(const float *const *cols, const uint64_t *dims, int n_cols, uint64_t n_rows,
                    uint64_t span, float *const *outs, uint64_t batch, uint64_t iters,
                    uint64_t seed, double *wall_ns, double *cpu_ns) {
    uint64_t state = seed | 1;
    uint64_t starts = n_rows - span + 1; /* valid window starts */
    double checksum = 0.0;
    for (uint64_t it = 0; it < iters; it++) {
        double c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
        double t0 = now_ns(CLOCK_MONOTONIC);
        for (uint64_t b = 0; b < batch; b++) {
            uint64_t row = (uint64_t)(((__uint128_t)xorshift64(&state) * starts) >> 64);
            for (int c = 0; c < n_cols; c++) {
                uint64_t width = span * dims[c];
                memcpy(outs[c] + b * width, cols[c] + row * dims[c], width * sizeof(float));
            }
        }
        wall_ns[it] = now_ns(CLOCK_MONOTONIC) - t0;
        cpu_ns[it] = now_ns(CLOCK_PROCESS_CPUTIME_ID) - c0;
        checksum += outs[0][(it * 7) % (batch * span * dims[0])];
    }
    return checksum;
}
