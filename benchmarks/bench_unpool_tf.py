"""TensorFlow unpooling, side by side: convscope.tf.unpool, the seed's three recipes,
``tf.raw_ops.MaxPoolGradWithArgmax`` and a bandwidth reference, all under ``tf.function``.

Shapes are the NHWC forms of [8,64,112,112] and [32,512,28,28], pooled 2x2 with stride 2, and
of [8,96,55,55] pooled 3x3 with stride 2 (odd size, overlapping windows: where the seed breaks).
Ratios are to the bandwidth reference (zero-fill an output-sized tensor and copy one output's
bytes). "GB/s" is effective: the least traffic any unpool needs (write the float32 output, read
the pooled values and their int64 switches) divided by the time, the same bytes for every row.

    python -m benchmarks.bench_unpool_tf [--quick]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from benchmarks.harness import Row, Table, measure

CASES = [  # (NHWC input shape, window = stride): the two targets, then ZF/AlexNet-style odd, overlapping 3x3/2
    ((8, 112, 112, 64), 2, 2),
    ((32, 28, 28, 512), 2, 2),
    ((8, 55, 55, 96), 3, 2),
]
BANDWIDTH = "bandwidth (zero-fill + copy)"
OURS = "convscope.tf.unpool"
OURS_UNKNOWN_HW = OURS + " (unknown H/W)"
GRAD_KERNEL = "tf.raw_ops.MaxPoolGradWithArgmax"
SEED_FASTEST = "seed unpool_2d"
SLOW = 0.25  # seconds: rows slower than this are timed in two rounds only
Routes = list[tuple[str, Callable[[], object], str]]


def _table(shape: tuple[int, int, int, int], window: int, stride: int, quick: bool) -> Table:
    # TensorFlow is imported here, not at module level: a runner that imports every benchmark module
    # must be able to import torchvision afterwards (torchvision after TensorFlow can segfault).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from convscope.tf.ops import unpool
    from tests.reference import seed_unpool_tf as seed  # the seed's recipes, ported for the tests

    n, h, w, c = shape
    x = tf.random.stateless_normal(shape, seed=[1, 2])
    pooled, argmax = tf.nn.max_pool_with_argmax(x, window, stride, "VALID")
    out_bytes = x.shape.num_elements() * 4
    moved = out_bytes + pooled.shape.num_elements() * (4 + 8)
    dims = tf.constant(shape, tf.int64)  # a runtime input, so the fill cannot be constant-folded
    spec = tf.TensorSpec([None, None, None, c], tf.float32), tf.TensorSpec([None, None, None, c], tf.int64)
    unknown_hw = tf.function(lambda p, a, s: unpool(p, a, s), input_signature=[*spec, tf.TensorSpec([4], tf.int64)])

    def bandwidth(src: tf.Tensor, dims: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.fill(dims, tf.constant(0.0)), tf.raw_ops.DeepCopy(x=src)

    def grad_kernel(src: tf.Tensor, p: tf.Tensor, a: tf.Tensor) -> tf.Tensor:
        return tf.raw_ops.MaxPoolGradWithArgmax(input=src, grad=p, argmax=a, ksize=[1, window, window, 1],
                                                strides=[1, stride, stride, 1], padding="VALID")

    rows: Routes = [
        (BANDWIDTH, _bind(tf.function(bandwidth), x, dims), "tf.fill + tf.raw_ops.DeepCopy of the output's bytes"),
        (OURS, _bind(tf.function(lambda p, a: unpool(p, a, shape)), pooled, argmax),
         "static H/W, index check included"),
        (OURS_UNKNOWN_HW, _bind(unknown_hw, pooled, argmax, dims), "scatter_nd path, index check included"),
        (GRAD_KERNEL, _bind(tf.function(grad_kernel), x, pooled, argmax), "TF's own kernel, no index check"),
        (SEED_FASTEST, _bind(tf.function(seed.unpool_2d), pooled, argmax), ""),
        ("seed unpool_layer2x2_batch", _bind(tf.function(seed.unpool_layer2x2_batch), pooled, argmax), ""),
        ("seed unpool_layer2x2_batch_sparse",
         _bind(tf.function(seed.unpool_layer2x2_batch_sparse), pooled, argmax), ""),
    ]
    # the max-pool gradient with the pooled values as upstream is what every route must return
    with tf.GradientTape() as tape:
        tape.watch(x)
        expected = tf.nn.max_pool2d(x, window, stride, "VALID")
    expected = tape.gradient(expected, x, output_gradients=pooled)
    rows = [(name, fn, _verdict(fn, expected, note) if name != BANDWIDTH else note) for name, fn, note in rows]

    table = Table(f"TF unpool [{n},{h},{w},{c}] (NHWC of [{n},{c},{h},{w}]), {window}x{window} stride {stride}, "
                  "float32", reference=BANDWIDTH)
    _time_interleaved(table, rows, moved, rounds=2 if quick else 6)
    table.notes += _notes(table) + [
        f"Effective bytes per call: {moved / 1e6:.1f} MB (output {out_bytes / 1e6:.1f} MB written; pooled values "
        "and int64 switches read: 4 + 8 bytes per pooled element).",
        f"Devices: {', '.join(d.name for d in tf.config.list_logical_devices())}; each time is the best of "
        "interleaved rounds (each round a `measure` median), so a burst of load on a shared machine hits all "
        "rows alike. Every route is checked against the max-pool gradient before it is timed.",
    ]
    return table


def _verdict(fn: Callable[[], object], expected: object, note: str) -> str:
    """The row's note, prefixed with WRONG when its result is not the max-pool gradient."""
    import numpy as np

    try:
        out = np.asarray(fn())
    except Exception:  # noqa: BLE001 - the timing loop records the failure itself
        return note
    if out.shape != tuple(expected.shape):  # type: ignore[attr-defined]
        return f"WRONG: shape {list(out.shape)}" + (f"; {note}" if note else "")
    if not np.array_equal(out, np.asarray(expected)):
        return "WRONG: values differ from the gradient" + (f"; {note}" if note else "")
    return note


def _notes(table: Table) -> list[str]:
    ok = {r.name for r in table.rows if r.seconds == r.seconds and not r.note.startswith("WRONG")}
    notes = []
    if {OURS, SEED_FASTEST} <= ok:
        notes.append(f"{OURS} is {table.seconds(SEED_FASTEST) / table.seconds(OURS):.1f}x faster than "
                     f"{SEED_FASTEST} (target >= 5x) and {table.ratio(OURS):.2f}x the bandwidth reference "
                     "(target <= 2x).")
    elif OURS in ok:
        notes.append(f"The seed's recipes fail or are wrong here; {OURS} is {table.ratio(OURS):.2f}x the bandwidth "
                     f"reference and {table.ratio(OURS, GRAD_KERNEL):.2f}x TF's own kernel.")
    if {OURS_UNKNOWN_HW, SEED_FASTEST} <= ok:
        notes.append(f"With unknown H/W, {OURS} falls back to tf.scatter_nd: "
                     f"{table.seconds(SEED_FASTEST) / table.seconds(OURS_UNKNOWN_HW):.1f}x faster than "
                     f"{SEED_FASTEST}, {table.ratio(OURS_UNKNOWN_HW):.2f}x the bandwidth reference.")
    return notes


def _time_interleaved(table: Table, rows: Routes, moved: int, rounds: int) -> None:
    """Time every row once per round, rows interleaved, and keep each row's best round.

    Rows slower than SLOW seconds get two rounds only: their ratios do not hinge on noise.
    """
    best: dict[str, float] = {}
    failed: dict[str, str] = {}
    for round_ in range(rounds):
        for name, fn, _note in rows:
            if name in failed or (round_ >= 2 and best[name] > SLOW):
                continue
            try:
                seconds = measure(fn, repeat=3, warmup=1, min_time=0.05)
            except Exception as err:  # a failing recipe is a result, not a crash
                failed[name] = _one_line(err)
                continue
            best[name] = min(best.get(name, float("inf")), seconds)
    for name, _fn, note in rows:
        if name in failed:
            table.rows.append(Row(name, float("nan"), note=f"fails: {failed[name]}"))
        else:
            table.rows.append(Row(name, best[name], moved, note))


def _one_line(err: Exception) -> str:
    """``Type: the op's own complaint`` for a table cell (TF puts it last, before ``[[{{node ...}}]]``)."""
    lines = [line.strip() for line in str(getattr(err, "message", err)).splitlines()]
    lines = [line for line in lines if line and not line.startswith("[[")]
    text = lines[-1] if lines else ""
    text = text.replace("|", "/")
    return f"{type(err).__name__}: {text[:110]}"


def _bind(fn: Callable[..., object], *args: object) -> Callable[[], object]:
    return lambda: fn(*args)


def run(quick: bool) -> list[Table]:
    """One table per case; every row of a table timed in the same run."""
    return [_table(shape, window, stride, quick) for shape, window, stride in CASES]


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        print(result.markdown())
