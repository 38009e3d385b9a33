"""``check``: run attribution methods over a dataset and score their maps with every chosen metric.

For each batch of images: the model's predicted class is the class explained; each method's maps
are computed once and every metric (:data:`~convscope.check.metrics.METRICS`) scores them per
image. After every batch, ``DIR/results.json`` is rewritten atomically with all per-image values
so far, so a killed run loses at most one batch and ``resume=True`` continues it (the same model,
data, methods, metrics, seed and batch size, else a clear error). At the end the report is
written (:mod:`convscope.check.report`).

Past one machine: under ``torchrun`` (an initialised ``torch.distributed`` process group) batch
``b`` goes to rank ``b % world``, each rank checkpoints to ``DIR/results-r<rank>.json`` (resumable
per rank), and rank 0 merges the shards (:func:`merge_states`: every per-image value in image
order, so the means equal a one-process run's) into ``results.json`` and the report.

``results.json`` (version 1)::

    {"version": 1, "complete": bool, "model": {"name", "weights"}, "data": str, "seed": int,
     "images": {"done": int, "total": int, "index": [...], "names": [...], "classes": [...],
                "unreadable": [...]},
     "methods": {method: {metric: mean}},               # the ranking (NaNs left out)
     "per_image": {method: {metric: [value | null, ...]}},
     "metrics": {metric: {"title", "higher_is_better", "cost"}},
     "skipped": {metric: reason},                       # metrics that did not apply
     "curves": {metric: {"fractions": [...], method: [mean curve]}},
     "randomisation": {"layers": [...], method: {"ssim": [...], "spearman_abs": [...]}},
     "baselines": {"pointing_game": float, "pointing_game_strict": float},   # the centre baseline
     "seconds": {method: float}}

Example::

    check(load_model("zoo:shapes-vgg"), "shapes:64", ["saliency", "grad_cam"], None, "out")
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from convscope.atlas.source import Source, open_source
from convscope.backends.dispatch import framework_of
from convscope.check.metrics import DEFAULT, METRICS, Context, MetricSpec, Result
from convscope.check.report import Examples, write_report
from convscope.errors import ConvscopeError
from convscope.evaluate import centre_maps, pointing_game
from convscope.evaluate.maps import as_inputs, attribute
from convscope.evaluate.scoring import model_outputs
from convscope.fileio import check_writable, write_atomic
from convscope.loaded import LoadedModel
from convscope.methods.base import Method
from convscope.methods.registry import check_runs_on, get_method

VERSION = 1

EXAMPLES = 3  # images whose randomised maps the report shows


def _names(asked: Sequence[str] | None, known: Sequence[str], what: str, default: Sequence[str]) -> list[str]:
    chosen = list(default if not asked else asked)
    for name in chosen:
        if name not in known:
            raise ConvscopeError(f"unknown {what} {name!r}", f"Choose from: {', '.join(known)}.")
    if len(set(chosen)) != len(chosen):
        raise ConvscopeError(f"a {what} is named twice in {','.join(chosen)}", f"Name each {what} once.")
    return chosen


def validate(methods: Sequence[str], metrics: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The method and metric names, checked (unknown names: a clear error listing the known ones)."""
    from convscope.methods.registry import methods as registered

    method_names = _names(methods, list(registered()), "method", ())
    if not method_names:
        raise ConvscopeError("no method to check", "Name methods with --methods, e.g. --methods saliency,grad_cam.")
    return method_names, _names(metrics, list(METRICS), "metric", DEFAULT)


def _masks(source: Source, index: np.ndarray) -> Tensor | None:
    masks = source.masks(index) if len(index) else None
    return None if masks is None else torch.from_numpy(masks)


class _Totals:
    """Running per-image values, curve sums and randomisation sums of one run (what results.json holds)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def add(self, method: str, metric: MetricSpec, result: Result) -> None:
        s = self.state
        values = [None if not math.isfinite(v) else float(v) for v in result.values.tolist()]
        s["per_image"].setdefault(method, {}).setdefault(metric.name, []).extend(values)
        if result.curve is not None and result.fractions is not None:
            curves = s["curve_sums"].setdefault(metric.name, {"fractions": result.fractions.tolist()})
            total = curves.get(method, [0.0] * len(result.fractions))
            curves[method] = [t + float(v) for t, v in zip(total, result.curve.nansum(0).tolist())]
        if result.steps is not None:
            s["randomisation_sums"]["layers"] = result.layers
            sums = s["randomisation_sums"].setdefault(method, {})
            for name, steps in result.steps.items():
                finite = torch.isfinite(steps)
                total, count = sums.get(name, ([0.0] * len(steps), [0] * len(steps)))
                sums[name] = ([t + float(v) for t, v in zip(total, torch.where(finite, steps, 0).sum(1).tolist())],
                              [c + int(k) for c, k in zip(count, finite.sum(1).tolist())])

    def summary(self) -> None:
        """The means (``methods``, ``curves``, ``randomisation``) from the running sums."""
        s, done = self.state, self.state["images"]["done"]
        s["methods"] = {m: {k: _mean(v) for k, v in per.items()} for m, per in s["per_image"].items()}
        s["baselines"] = {k: _mean(v) for k, v in s["centre_hits"].items()}
        s["curves"] = {name: {k: (v if k == "fractions" else [t / max(done, 1) for t in v]) for k, v in c.items()}
                       for name, c in s["curve_sums"].items()}
        r = s["randomisation_sums"]
        s["randomisation"] = {"layers": r.get("layers", [])} | {
            m: {name: [t / c if c else None for t, c in zip(*pair)] for name, pair in sums.items()}
            for m, sums in r.items() if m != "layers"}


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _fingerprint(loaded: LoadedModel, source: Source, methods: list[str], metrics: list[str], seed: int) -> dict[str, Any]:
    return {"model": loaded.name, "weights": loaded.weights, "data": source.fingerprint(), "methods": methods,
            "metrics": metrics, "seed": seed}


def _start(path: Path, fingerprint: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The state in ``path`` to resume from (None: a fresh run), refusing to overwrite another run's."""
    if not path.exists():
        return None
    if not resume:
        raise ConvscopeError(f"{path} already holds the results of a check",
                             "Pass --resume to continue it, or choose another --out (nothing was changed).")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConvscopeError(f"cannot read {path} to resume it: {error}", "Choose another --out.") from error
    if state.get("version") != VERSION or state.get("fingerprint") != fingerprint:
        raise ConvscopeError(f"{path} holds a check of another model, data, method list, metric list or seed",
                             "Resume with the same arguments, or choose another --out.")
    return state


def check(loaded: LoadedModel, data: Any, methods: Sequence[str], metrics: Sequence[str] | None, out: str | Path, *,
          batch_size: int = 32, max_batch: Any = None, seed: int = 0, resume: bool = False,
          progress: bool = True) -> Path:
    """Score ``methods`` on ``data`` with ``metrics`` (default: all that apply); returns the path of
    ``results.json`` in ``out`` (the report beside it). See the module for the file's schema."""
    method_names, metric_names = validate(methods, metrics)
    if batch_size < 1:
        raise ConvscopeError(f"batch_size={batch_size} must be positive", "Use e.g. --batch-size 32.")
    model = loaded.model
    for name in method_names:
        check_runs_on(model, name)
    out = check_writable(out, folder=True)
    source = open_source(data, loaded.preprocess)
    if len(source) == 0:
        raise ConvscopeError("the data holds no images", "Give an image folder with images in it, or shapes:N.")
    rank, world = _rank()
    fingerprint = _fingerprint(loaded, source, method_names, metric_names, seed) | {"batch_size": batch_size,
                                                                                     "shards": world}
    skipped = _skipped(metric_names, source, model)
    own = out / ("results.json" if world == 1 else f"results-r{rank}.json")
    state = _start(own, fingerprint, resume) or {
        "version": VERSION, "complete": False, "fingerprint": fingerprint,
        "model": {"name": loaded.name, "weights": loaded.weights}, "data": str(data), "seed": seed,
        "images": {"done": 0, "total": len(source), "index": [], "names": [], "classes": [], "unreadable": []},
        "metrics": {n: {"title": METRICS[n].title, "higher_is_better": METRICS[n].higher_is_better,
                        "cost": METRICS[n].cost} for n in metric_names},
        "skipped": skipped, "next_batch": 0, "per_image": {}, "curve_sums": {}, "randomisation_sums": {},
        "seconds": {}, "centre_hits": {}}
    totals = _Totals(state)
    instances = {name: get_method(name)(model, max_batch=max_batch) for name in method_names}
    active = [METRICS[n] for n in metric_names if n not in skipped]
    mine = [b for b in range(math.ceil(len(source) / batch_size)) if b % world == rank]
    bar = tqdm(total=sum(min(batch_size, len(source) - b * batch_size) for b in mine), initial=state["images"]["done"],
               desc="check" if world == 1 else f"check (shard {rank + 1} of {world})", unit="img", disable=not progress)
    for b in (b for b in mine if b >= state["next_batch"]):
        start = b * batch_size
        batch = source.batch(start, min(start + batch_size, len(source)))
        state["images"]["unreadable"].extend(name for _, name, _ in batch.skipped)
        if len(batch.index):
            _score_batch(state, totals, batch, instances, active, _masks(source, batch.index), seed, max_batch, source)
        state["images"]["done"] += min(batch_size, len(source) - start)
        state["next_batch"] = b + 1
        totals.summary()
        write_atomic(own, json.dumps(state, indent=1).encode("utf-8"))
        bar.update(state["images"]["done"] - bar.n)
    bar.close()
    if world > 1:
        state = _gathered(state)
        if rank != 0:
            return out / "results.json"
    state["complete"] = True
    _Totals(state).summary()
    path = write_atomic(out / "results.json", json.dumps(state, indent=1).encode("utf-8"))
    randomised = any(spec.name == "randomisation" for spec in active)
    write_report(out, state, _examples(source, instances, seed) if randomised else None)
    return path


def _rank() -> tuple[int, int]:
    """This process's rank and the number of processes (``torchrun``), or ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gathered(state: dict[str, Any]) -> dict[str, Any]:
    """Every rank's state, merged (:func:`merge_states`), on every rank."""
    import torch.distributed as dist

    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return merge_states(states)


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run's state from its shards': every per-image value in image order (so the means equal a
    one-process run's exactly), the curve and randomisation sums added."""
    merged = copy.deepcopy(states[0])
    order = sorted((i, k, pos) for k, s in enumerate(states) for pos, i in enumerate(s["images"]["index"]))

    def gather(pick: Any) -> list[Any]:
        return [pick(states[k])[pos] for _, k, pos in order]

    images = merged["images"]
    for key in ("index", "names", "classes"):
        images[key] = gather(lambda s, key=key: s["images"][key])
    images["unreadable"] = sorted(name for s in states for name in s["images"]["unreadable"])
    images["done"] = sum(s["images"]["done"] for s in states)
    merged["per_image"] = {m: {k: gather(lambda s, m=m, k=k: s["per_image"][m][k]) for k in per}
                           for m, per in states[0]["per_image"].items()}
    merged["centre_hits"] = {k: gather(lambda s, k=k: s["centre_hits"][k]) for k in states[0]["centre_hits"]}
    merged["seconds"] = {m: sum(s["seconds"].get(m, 0.0) for s in states) for m in states[0]["seconds"]}
    merged["curve_sums"] = {
        metric: {k: (v if k == "fractions" else [sum(t) for t in zip(*(s["curve_sums"][metric][k] for s in states))])
                 for k, v in curves.items()} for metric, curves in states[0]["curve_sums"].items()}
    sums = states[0]["randomisation_sums"]
    merged["randomisation_sums"] = {"layers": sums.get("layers", [])} | {
        m: {name: tuple([sum(t) for t in zip(*(s["randomisation_sums"][m][name][part] for s in states))]
                        for part in (0, 1)) for name in per}
        for m, per in sums.items() if m != "layers"}
    return merged


def _skipped(metric_names: list[str], source: Source, model: Any) -> dict[str, str]:
    reasons = {}
    for name in metric_names:
        spec = METRICS[name]
        if spec.needs_masks and source.masks(np.arange(1)) is None:
            reasons[name] = "needs object masks: only the built-in data (shapes:N, scenes:N, ...) has them"
        elif spec.torch_only and framework_of(model) != "torch":
            reasons[name] = "re-initialises PyTorch layers: runs on PyTorch models only"
    return reasons


def _score_batch(state: dict[str, Any], totals: _Totals, batch: Any, instances: dict[str, Method],
                 metrics: list[MetricSpec], masks: Tensor | None, seed: int, max_batch: Any, source: Source) -> None:
    model = next(iter(instances.values())).model
    x = as_inputs(batch.tensor, model)  # channels-first (a Keras batch too)
    classes = model_outputs(model, x).argmax(1).cpu()
    state["images"]["index"].extend(int(i) for i in batch.index)
    state["images"]["names"].extend(source.name(int(i)) for i in batch.index)
    state["images"]["classes"].extend(classes.tolist())
    context = Context(model, x, classes, masks, seed, max_batch,
                      native=batch.tensor if framework_of(model) == "tf" else None)
    if masks is not None:
        centre = centre_maps(len(x), *x.shape[-2:])
        for name in ("pointing_game", "pointing_game_strict"):
            hits = pointing_game(centre, masks, tolerance="standard" if name == "pointing_game" else 0.0)
            state["centre_hits"].setdefault(name, []).extend(hits.float().tolist())
    for name, method in instances.items():
        began = time.perf_counter()
        maps = attribute(method, x, classes)
        for spec in metrics:
            result = spec.compute(context, method, maps)
            totals.add(name, spec, result)
        state["seconds"][name] = state["seconds"].get(name, 0.0) + time.perf_counter() - began


def _examples(source: Source, instances: dict[str, Method], seed: int) -> Examples:
    """The first images and, per method, their maps after each cascading randomisation step (the
    report's figure, in the style of Adebayo et al.'s)."""
    from convscope.evaluate import model_randomisation

    batch = source.batch(0, min(EXAMPLES, len(source)))
    model = next(iter(instances.values())).model
    x = as_inputs(batch.tensor, model)
    classes = model_outputs(model, x).argmax(1).cpu()
    maps = {name: model_randomisation(method, batch.tensor, classes, seed=seed, similarities=("ssim",)).maps
            for name, method in instances.items()}
    return Examples(batch.pixels, maps)
