/* Unpooling on the CPU: out[n, idx[n, j, c], c] += values[n, j, c], out = 0 elsewhere, for
 * values laid out [N, pooled, C] and an output [N, plane, C]. Contiguous NCHW tensors are the case
 * C = 1 with N = batch * channels; channels_last tensors are [N, H*W, C] as they lie in memory.
 *
 * The work items are (n, block of cblock channels). Each thread takes a contiguous range of items;
 * an item's output (plane x its channels) is zeroed and then added into while it is still in
 * cache, so the output goes through memory once. Each (n, c) is summed in index order j, the order
 * of PyTorch's max-pool backward on the CPU, so sums at shared switches are bitwise equal to it.
 * An index outside [0, plane) is skipped and reported: the caller raises.
 *
 * Built at first use by convscope/ops/native.py (plain C, pthreads only) and called through
 * ctypes, which releases the GIL for the call. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define MAX_THREADS 256

typedef struct {
    void *out;
    const void *values;
    const int64_t *idx;
    int64_t lo, hi; /* work items [lo, hi) */
    int64_t plane, pooled, channels, cblock;
    int64_t bad; /* first batch row n holding an out-of-range index, or -1 */
} job_t;

/* bfloat16 is added as PyTorch adds it: both operands widened to float, the sum rounded back to
 * nearest-even after every addition (c10::BFloat16 arithmetic). float16 has no kernel here:
 * PyTorch's own max-pool backward, with vectorised conversions, is faster than a portable C
 * conversion (convscope/ops/pooling.py routes it there). */
static inline float float_from_bits(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }
static inline uint32_t bits_from_float(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }

static inline float bf16_to_float(uint16_t h) { return float_from_bits((uint32_t)h << 16); }

static inline uint16_t float_to_bf16(float f) {
    uint32_t u = bits_from_float(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0; /* NaN */
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#define ADD_PLAIN(o, v) ((o) += (v))
#define ADD_BF16(o, v) ((o) = float_to_bf16(bf16_to_float(o) + bf16_to_float(v)))

#define SCATTER_ITEMS(T, NAME, ADD)                                                        \
    static void NAME(job_t *job) {                                                         \
        const int64_t C = job->channels, plane = job->plane, pooled = job->pooled;         \
        const int64_t blocks = (C + job->cblock - 1) / job->cblock;                        \
        for (int64_t r = job->lo; r < job->hi; ++r) {                                      \
            const int64_t n = r / blocks, c0 = (r % blocks) * job->cblock;                 \
            const int64_t width = C - c0 < job->cblock ? C - c0 : job->cblock;             \
            T *o = (T *)job->out + n * plane * C + c0;                                     \
            const T *v = (const T *)job->values + n * pooled * C + c0;                     \
            const int64_t *ix = job->idx + n * pooled * C + c0;                            \
            if (width == C) {                                                              \
                memset(o, 0, (size_t)(plane * C) * sizeof(T));                             \
            } else {                                                                       \
                for (int64_t k = 0; k < plane; ++k)                                        \
                    memset(o + k * C, 0, (size_t)width * sizeof(T));                       \
            }                                                                              \
            if (C == 1) {                                                                  \
                for (int64_t j = 0; j < pooled; ++j) {                                     \
                    uint64_t k = (uint64_t)ix[j];                                          \
                    if (k < (uint64_t)plane) ADD(o[k], v[j]);                              \
                    else if (job->bad < 0) job->bad = n;                                   \
                }                                                                          \
                continue;                                                                  \
            }                                                                              \
            for (int64_t j = 0; j < pooled; ++j) {                                         \
                const int64_t *ixj = ix + j * C;                                           \
                const T *vj = v + j * C;                                                   \
                for (int64_t c = 0; c < width; ++c) {                                      \
                    uint64_t k = (uint64_t)ixj[c];                                         \
                    if (k < (uint64_t)plane) ADD(o[k * C + c], vj[c]);                     \
                    else if (job->bad < 0) job->bad = n;                                   \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }

SCATTER_ITEMS(float, items_f32, ADD_PLAIN)
SCATTER_ITEMS(double, items_f64, ADD_PLAIN)
SCATTER_ITEMS(uint16_t, items_bf16, ADD_BF16)

typedef void (*items_fn)(job_t *);

typedef struct {
    items_fn fn;
    job_t *job;
} task_t;

static void *run_task(void *arg) {
    task_t *task = (task_t *)arg;
    task->fn(task->job);
    return NULL;
}

/* Returns -1 when every index was in range, else the first bad batch row (its output is partial). */
static int64_t unpool_items(items_fn fn, void *out, const void *values, const int64_t *idx, int64_t n,
                            int64_t plane, int64_t pooled, int64_t channels, int64_t cblock,
                            int64_t threads) {
    if (cblock < 1 || cblock > channels) cblock = channels;
    const int64_t items = n * ((channels + cblock - 1) / cblock);
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > items) threads = items;
    if (threads < 1) threads = 1;
    job_t jobs[MAX_THREADS];
    task_t tasks[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int64_t t = 0; t < threads; ++t) {
        jobs[t] = (job_t){out, values, idx, items * t / threads, items * (t + 1) / threads,
                          plane, pooled, channels, cblock, -1};
        tasks[t] = (task_t){fn, &jobs[t]};
        started[t] = t > 0 && pthread_create(&ids[t], NULL, run_task, &tasks[t]) == 0;
    }
    fn(&jobs[0]);
    for (int64_t t = 1; t < threads; ++t) {
        if (started[t]) pthread_join(ids[t], NULL);
        else fn(&jobs[t]); /* no thread could be made: do that range here */
    }
    for (int64_t t = 0; t < threads; ++t)
        if (jobs[t].bad >= 0) return jobs[t].bad;
    return -1;
}

/* The entry points, one per dtype: -1 when every index was in range, else the first bad n. */
#define ENTRY(NAME, T, ITEMS)                                                                   \
    int64_t NAME(T *out, const T *values, const int64_t *idx, int64_t n, int64_t plane,         \
                 int64_t pooled, int64_t channels, int64_t cblock, int64_t threads) {           \
        return unpool_items(ITEMS, out, values, idx, n, plane, pooled, channels, cblock, threads); \
    }

ENTRY(convscope_unpool_f32, float, items_f32)
ENTRY(convscope_unpool_f64, double, items_f64)
ENTRY(convscope_unpool_bf16, uint16_t, items_bf16)
