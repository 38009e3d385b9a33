"""Exact incremental inference on a ``torch.fx`` trace: recompute only what a local change reaches.

:class:`IncrementalGraph` traces a model once. :meth:`IncrementalGraph.clean` runs it on clean
samples, keeping every node's output. :meth:`IncrementalGraph.run` then evaluates a batch of
copies of those samples, each changed inside one box of the input, node by node:

- a node with a local rule (:mod:`~convscope.backends.torch.incremental.rules`: convolutions,
  pooling, batch norm, activations, residual additions, concatenations) is recomputed on the
  box its inputs' boxes can change, reading its inputs' regions from the clean outputs with the
  changed boxes copied over them; once a box covers :data:`WHOLE_AREA` of the map, the node runs
  on the whole map (cheaper than a region with its halo);
- global average pooling updates the clean mean from the changed region;
- anything else (flatten, linear layers, unsupported ops) runs on whole maps, as the model would,
  and so does every node that reads it ("full computation from that node on");
- nodes that do not depend on the input keep their clean values.

A node's value is the same as in a full forward pass of the changed input up to float32 rounding.
Modules are called through ``forward``, so hooks do not run: a model with hooks other than
convscope's own probes is refused, as are untraceable models, several outputs, and in-place ops
on a tensor that other nodes read (their aliasing is not reproduced).

Example::

    graph = IncrementalGraph(model, layers={}, output=True)
    clean = graph.clean(x[:1])                                       # all node outputs, sample 0
    box = Box(np.array([0, 8]), np.array([0, 0]), 16, 16)            # two 16x16 patches
    out, acts = graph.run(Chunk(clean), np.array([0, 0]), patches, box, stats)
"""

from __future__ import annotations

import operator
import time
from collections.abc import Collection, Hashable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn

from convscope.backends.torch.incremental.geometry import Box, Cap, intersect
from convscope.backends.torch.incremental.regions import Local, Regions
from convscope.backends.torch.incremental.report import NodeRun
from convscope.backends.torch.incremental.rules import Rule, call, rule_for

#: the share of a map's area beyond which a node runs on the whole map
WHOLE_AREA = 0.6

_IN_PLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class NotApplicable(Exception):
    """The model cannot be evaluated incrementally; the message says why."""


def foreign_hooks(model: nn.Module, own: Collection[int]) -> list[str]:
    """Modules of ``model`` with forward hooks other than the ids ``own`` (and global hooks)."""
    from torch.nn.modules import module as torch_module

    found = ["(global)"] if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks else []
    for name, m in model.named_modules():
        ids = [*m._forward_hooks, *m._forward_pre_hooks]
        if any(i not in own for i in ids):
            found.append(name or "(the model)")
    return found


def _in_place(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return getattr(modules[str(node.target)], "inplace", False) is True
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (node.kwargs.get("inplace") is True or node.target in _IN_PLACE_FUNCTIONS
                or (name.endswith("_") and not name.startswith("_")))
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    return False


class Chunk:
    """The clean outputs a chunk's elements read: each kept node's ``[S, ...]`` batch over the
    chunk's samples, and the padded copies :class:`Regions` builds from them (shared by the
    chunks of the same samples)."""

    def __init__(self, values: dict[fx.Node, Any]) -> None:
        self.values = values
        self.sources: dict[Hashable, Any] = {}

    def bytes(self) -> int:
        held = [*self.values.values(), *(s[0] for s in self.sources.values())]
        return sum(t.numel() * t.element_size() for t in held if isinstance(t, Tensor))


class IncrementalGraph:
    """A traced model that evaluates local changes of its input incrementally (module docstring).

    ``layers`` maps layer keys (as targets name them) to module names whose outputs are wanted;
    ``output``: whether the model output is wanted (targets that read only layers need not run
    the rest). ``own_hooks``: hook ids that may be ignored (convscope's probes)."""

    def __init__(self, model: nn.Module, layers: Mapping[Hashable, str], output: bool,
                 own_hooks: Collection[int] = ()) -> None:
        hooked = foreign_hooks(model, set(own_hooks))
        if hooked:
            raise NotApplicable(f"forward hooks on {', '.join(hooked[:3])} (the incremental path does not run hooks)")
        try:
            self.gm = fx.symbolic_trace(model)
        except Exception as error:  # noqa: BLE001 - any trace failure means: not traceable
            raise NotApplicable(f"torch.fx cannot trace the model ({type(error).__name__}: "
                                f"{str(error).splitlines()[0][:120] if str(error) else ''})") from None
        self.modules = dict(self.gm.named_modules())
        nodes = list(self.gm.graph.nodes)
        places = [n for n in nodes if n.op == "placeholder"]
        if not places or any(not n.args for n in places[1:]):
            raise NotApplicable("the model's forward takes more than one input without defaults")
        self.input = places[0]
        (out_node,) = [n for n in nodes if n.op == "output"]
        self.output = out_node.args[0] if output else None
        if output and not isinstance(self.output, fx.Node):
            raise NotApplicable("the model returns a structure, not one tensor")
        self.layers: dict[Hashable, fx.Node] = {}
        for key, name in layers.items():
            found = [n for n in nodes if n.op == "call_module" and n.target == name]
            if len(found) != 1:
                raise NotApplicable(f"layer {name!r} is not one module call of the traced graph")
            self.layers[key] = found[0]
        wanted = [*self.layers.values(), *([self.output] if self.output is not None else [])]
        self.order = _ancestors(nodes, wanted)
        self.depends = _dependents(self.order, self.input)
        for n in self.order:
            if _in_place(n, self.modules):
                source = n.args[0] if n.args else None
                if isinstance(source, fx.Node) and (len(source.users) > 1 or source not in self.depends):
                    raise NotApplicable(f"{n.name} changes {source.name} in place, which other nodes read")
        self.last_use = {}
        for i, n in enumerate(self.order):
            for m in n.all_input_nodes:
                self.last_use[m] = i
        self.kinds: dict[fx.Node, str] = {}
        self.rules: dict[fx.Node, Rule] = {}
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}
        self.stats: dict[fx.Node, NodeRun] = {}

    # -- the clean pass ---------------------------------------------------------------------------------

    def clean(self, x: Tensor) -> dict[fx.Node, Any]:
        """Every needed node's output for the clean batch ``x`` (in-place ops run on copies, so
        each output stays as its node produced it). The first call classifies the nodes."""
        env: dict[fx.Node, Any] = {}
        with torch.no_grad():
            for n in self.order:
                if n.op == "placeholder":
                    env[n] = x if n is self.input else n.args[0]
                elif n.op == "get_attr":
                    env[n] = _fetch(self.gm, str(n.target))
                else:
                    args, kwargs = fx.node.map_arg((n.args, n.kwargs), env.__getitem__)
                    if _in_place(n, self.modules) and args and isinstance(args[0], Tensor):
                        args = (args[0].clone(), *args[1:])
                    env[n] = call(n, self.modules, args, kwargs)
        if not self.kinds:
            self._classify(env)
        return env

    def kept(self) -> list[fx.Node]:
        """The nodes whose clean outputs the incremental passes read."""
        return [n for n in self.order if self.kinds.get(n) in ("input", "local", "static")
                or isinstance(self.rules.get(n), Rule)]

    def _classify(self, env: Mapping[fx.Node, Any]) -> None:
        self.shapes = {n: tuple(v.shape) if isinstance(v, Tensor) else None for n, v in env.items()}
        if self.shapes[self.input] is None or len(self.shapes[self.input] or ()) != 4:
            raise NotApplicable("the input is not a [N, C, H, W] tensor")
        for n in self.order:
            if n is self.input:
                kind, label, reason = "input", "input", ""
            elif n not in self.depends:
                kind, label, reason = "static", n.op, ""
            else:
                rule = rule_for(n, self.modules, self.shapes, lambda m: _local(self.kinds[m]))
                if isinstance(rule, Rule):
                    self.rules[n] = rule
                    kind, label, reason = ("local" if rule.local else "global"), rule.label, ""
                else:
                    kind, label, reason = "full", _label(n, self.modules), rule
            self.kinds[n] = kind
            self.stats[n] = NodeRun(n.name, label, kind, reason)

    # -- incremental passes -----------------------------------------------------------------------------

    def run(self, chunk: Chunk, sample: np.ndarray, patch: Tensor, box: Box, cap: Cap | None = None
            ) -> tuple[Tensor | None, dict[Hashable, Tensor]]:
        """The output and wanted layers for changed copies of the chunk's samples: element ``b``
        is sample ``sample[b]`` with its input replaced by ``patch[b]`` inside ``box``. With a
        ``cap`` (approximate), each local node keeps the change only inside its :class:`Cap` box."""
        regions = Regions(sample, chunk.sources)
        clean = chunk.values
        env: dict[fx.Node, Any] = {}
        n_el = len(sample)
        with torch.no_grad():
            for i, n in enumerate(self.order):
                start, before = time.process_time(), regions.gathered
                stats, kind = self.stats[n], self.kinds[n]
                if kind == "input":
                    env[n] = Local(clean[n], box, patch)
                    stats.area += n_el * box.h * box.w / np.prod(self.shapes[n][-2:])
                elif kind == "static":
                    env[n] = clean[n]
                elif kind == "local":
                    env[n] = self._local(n, env, clean, regions, n_el, cap)
                elif kind == "global":
                    rule = self.rules[n]
                    env[n] = rule.compute(regions, env.__getitem__, clean.__getitem__, Box.whole(n_el, (1, 1)))
                else:
                    args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda m: self._whole(env[m], m, regions))
                    env[n] = call(n, self.modules, args, kwargs)
                    done = _full_macs(n, self.modules, self.shapes, n_el)
                    stats.macs += done
                    stats.full_macs += done
                spent = time.process_time() - start
                stats.calls += 1
                stats.elements += n_el
                stats.gathered += regions.gathered - before
                stats.seconds += spent
                if kind == "local" and env[n].whole:
                    stats.whole_seconds += spent
                for m in n.all_input_nodes:
                    if self.last_use.get(m) == i and m not in self.layers.values() and m is not self.output:
                        env.pop(m, None)
        output = None if self.output is None else self._whole(env[self.output], self.output, regions)
        acts = {key: self._whole(env[n], n, regions) for key, n in self.layers.items()}
        return output, acts

    def _local(self, n: fx.Node, env: dict[fx.Node, Any], clean: Mapping[fx.Node, Any], regions: Regions,
               n_el: int, cap: Cap | None = None) -> Local:
        rule, stats = self.rules[n], self.stats[n]
        size = self.shapes[n][-2:]
        out = rule.out_box([env[m].box for m in rule.inputs], size)
        capped = cap is not None and rule.cappable
        if capped:
            out = intersect(out, cap.box(size), size)
        if out.h * out.w >= WHOLE_AREA * size[0] * size[1]:
            out = Box.whole(n_el, size)
        if out.covers(size):
            stats.whole_calls += 1
        patch = rule.compute(regions, env.__getitem__, clean.__getitem__, out)
        inside = cap.inside(out, size) if capped else None
        if inside is not None:  # outside the kept box: the clean values (the cap's approximation)
            before = regions.read(Local(clean[n], out, patch), out.top, out.left, out.h, out.w, key=n,
                                  overlay=False)
            patch = torch.where(torch.from_numpy(inside).to(patch.device), patch, before)
        done, full = rule.macs(out, n_el)
        stats.macs += done
        stats.full_macs += full
        stats.area += n_el * out.h * out.w / (size[0] * size[1])
        return Local(clean[n], out, patch)

    def _whole(self, v: Any, n: fx.Node, regions: Regions) -> Any:
        return regions.whole(v, key=n) if isinstance(v, Local) else v

    # -- the work a box implies -------------------------------------------------------------------------

    def estimate(self, box: Box, tau: float | None = None) -> float:
        """The share of a full pass's multiply-adds (convolutions and linear layers) that the
        nodes would do for an input changed inside ``box`` (one element), boxes grown as
        :meth:`run` grows them (and capped at ``tau`` of each side, see :class:`Cap`)."""
        size = self.shapes[self.input][-2:]
        cap = None if tau is None else Cap(tau, (box.top + box.h / 2) / size[0], (box.left + box.w / 2) / size[1])
        boxes: dict[fx.Node, Box] = {}
        done = full = 0
        for n in self.order:
            kind = self.kinds[n]
            if kind == "input":
                boxes[n] = box
            elif kind == "local":
                rule, size = self.rules[n], self.shapes[n][-2:]
                out = rule.out_box([boxes[m] for m in rule.inputs], size)
                if cap is not None and rule.cappable:
                    out = intersect(out, cap.box(size), size)
                if out.h * out.w >= WHOLE_AREA * size[0] * size[1]:
                    out = Box.whole(1, size)
                boxes[n] = out
                d, f = rule.macs(out, 1)
                done, full = done + d, full + f
            elif kind == "full":
                f = _full_macs(n, self.modules, self.shapes, 1)
                done, full = done + f, full + f
        return done / full if full else 1.0

    def runs(self) -> list[NodeRun]:
        """Per node, how it ran over the passes so far (see :class:`NodeRun`)."""
        return [self.stats[n] for n in self.order if n in self.stats]


def _local(kind: str) -> str:
    return {"input": "local", "local": "local", "static": "static"}.get(kind, "dense")


def _label(n: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if n.op == "call_module":
        return type(modules[str(n.target)]).__name__
    return getattr(n.target, "__name__", str(n.target))


def _full_macs(n: fx.Node, modules: Mapping[str, nn.Module], shapes: Mapping[fx.Node, Any], elements: int) -> int:
    """Multiply-adds of a convolution or linear layer on whole maps (0 for other nodes)."""
    m = modules.get(str(n.target)) if n.op == "call_module" else None
    out = shapes.get(n)
    if isinstance(m, nn.Conv2d) and out is not None:
        return elements * int(np.prod(out[1:])) * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))
    if isinstance(m, nn.Linear) and out is not None:
        return elements * int(np.prod(out[1:])) * m.in_features
    return 0


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _ancestors(nodes: list[fx.Node], wanted: list[fx.Node]) -> list[fx.Node]:
    """The nodes ``wanted`` depend on (themselves included), in graph order."""
    seen: set[fx.Node] = set()
    stack = list(wanted)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return [n for n in nodes if n in seen]


def _dependents(order: list[fx.Node], source: fx.Node) -> set[fx.Node]:
    """The nodes of ``order`` whose value depends on ``source`` (itself included)."""
    found = {source}
    for n in order:
        if any(m in found for m in n.all_input_nodes):
            found.add(n)
    return found
