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

#define SCATTER_ITEMS(T, NAME)                                                             \
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
                    if (k < (uint64_t)plane) o[k] += v[j];                                 \
                    else if (job->bad < 0) job->bad = n;                                   \
                }                                                                          \
                continue;                                                                  \
            }                                                                              \
            for (int64_t j = 0; j < pooled; ++j) {                                         \
                const int64_t *ixj = ix + j * C;                                           \
                const T *vj = v + j * C;                                                   \
                for (int64_t c = 0; c < width; ++c) {                                      \
                    uint64_t k = (uint64_t)ixj[c];                                         \
                    if (k < (uint64_t)plane) o[k * C + c] += vj[c];                        \
                    else if (job->bad < 0) job->bad = n;                                   \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }

SCATTER_ITEMS(float, items_f32)
SCATTER_ITEMS(double, items_f64)

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

int64_t convscope_unpool_f32(float *out, const float *values, const int64_t *idx, int64_t n,
                             int64_t plane, int64_t pooled, int64_t channels, int64_t cblock,
                             int64_t threads) {
    return unpool_items(items_f32, out, values, idx, n, plane, pooled, channels, cblock, threads);
}

int64_t convscope_unpool_f64(double *out, const double *values, const int64_t *idx, int64_t n,
                             int64_t plane, int64_t pooled, int64_t channels, int64_t cblock,
                             int64_t threads) {
    return unpool_items(items_f64, out, values, idx, n, plane, pooled, channels, cblock, threads);
}
