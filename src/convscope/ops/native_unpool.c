/* Unpooling on the CPU: out[r, idx[r, j]] += values[r, j], out = 0 elsewhere, one row per (n, c)
 * plane. Each thread takes a contiguous range of rows; a row is zeroed and scattered into while it
 * is still in cache, so the output goes through memory once. Rows are summed in index order j,
 * the same order as PyTorch's max-pool backward on the CPU, so sums at shared switches are
 * bitwise equal to it. An index outside [0, plane) is skipped and reported: the caller raises.
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
    int64_t lo, hi, plane, pooled;
    int64_t bad; /* first row holding an out-of-range index, or -1 */
} job_t;

#define SCATTER_ROWS(T, NAME)                                                     \
    static void NAME(job_t *job) {                                                \
        T *out = (T *)job->out;                                                   \
        const T *values = (const T *)job->values;                                 \
        const uint64_t plane = (uint64_t)job->plane;                              \
        for (int64_t r = job->lo; r < job->hi; ++r) {                             \
            T *o = out + r * job->plane;                                          \
            const T *v = values + r * job->pooled;                                \
            const int64_t *ix = job->idx + r * job->pooled;                       \
            memset(o, 0, (size_t)job->plane * sizeof(T));                         \
            for (int64_t j = 0; j < job->pooled; ++j) {                           \
                uint64_t k = (uint64_t)ix[j];                                     \
                if (k < plane) o[k] += v[j];                                      \
                else if (job->bad < 0) job->bad = r;                              \
            }                                                                     \
        }                                                                         \
    }

SCATTER_ROWS(float, rows_f32)
SCATTER_ROWS(double, rows_f64)

typedef void (*rows_fn)(job_t *);

typedef struct {
    rows_fn fn;
    job_t *job;
} task_t;

static void *run_task(void *arg) {
    task_t *task = (task_t *)arg;
    task->fn(task->job);
    return NULL;
}

/* Returns -1 when every index was in range, else the first bad row (its output row is partial). */
static int64_t unpool_rows(rows_fn fn, void *out, const void *values, const int64_t *idx,
                           int64_t rows, int64_t plane, int64_t pooled, int64_t threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > rows) threads = rows > 0 ? rows : 1;
    job_t jobs[MAX_THREADS];
    task_t tasks[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int64_t t = 0; t < threads; ++t) {
        jobs[t] = (job_t){out, values, idx, rows * t / threads, rows * (t + 1) / threads, plane, pooled, -1};
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

int64_t convscope_unpool_f32(float *out, const float *values, const int64_t *idx, int64_t rows,
                             int64_t plane, int64_t pooled, int64_t threads) {
    return unpool_rows(rows_f32, out, values, idx, rows, plane, pooled, threads);
}

int64_t convscope_unpool_f64(double *out, const double *values, const int64_t *idx, int64_t rows,
                             int64_t plane, int64_t pooled, int64_t threads) {
    return unpool_rows(rows_f64, out, values, idx, rows, plane, pooled, threads);
}
