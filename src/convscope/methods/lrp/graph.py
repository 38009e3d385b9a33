"""What canonizing a model means for LRP, read from its ``torch.fx`` graph before any work.

:func:`canonical_report` traces the model (never changing it) and sorts every node the way the
LRP mode (:mod:`~convscope.methods.lrp.mode`) will treat it: batch norms folded into the
convolution or linear layer that feeds them, residual sums split by contribution, concatenations
(relevance follows each slice), average and adaptive pooling as linear layers, and the nodes no
rule covers, which :class:`~convscope.methods.lrp.LRP` refuses up front, all named. A model fx
cannot trace (data-dependent control flow) gets ``traced=False``; the mode still refuses any
operation it has no rule for while it runs.

Example::

    report = canonical_report(torchvision.models.resnet18())
    report.folds[:2]        # [('conv1', 'bn1'), ('layer1.0.conv1', 'layer1.0.bn1')]
    report.unhandled        # []
"""

from __future__ import annotations

import copy
import operator
import weakref
from dataclasses import dataclass, field

from torch import nn

from convscope.methods.lrp.mode import OP_KINDS

__all__ = ["CanonicalReport", "canonical_report"]

_MODULE_KINDS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "conv"),
    ((nn.Linear,), "linear"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
     "pool"),
    ((nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm), "norm"),
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
      nn.Softplus, nn.Mish, nn.SELU, nn.CELU, nn.PReLU, nn.Hardtanh, nn.Threshold), "pass"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
      nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
      nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle), "route"),
)
#: nodes that compute no tensor (shapes, sizes) or are the identity in evaluation
_FREE = {"getattr", "size", "dim", "numel", "len", "_assert", "stochastic_depth", "eq", "floordiv", "mul_int"}
_FUNCTION_NAMES = {operator.add: "add", operator.iadd: "__iadd__", operator.mul: "mul", operator.imul: "__imul__",
                   operator.truediv: "div", operator.getitem: "__getitem__"}


@dataclass
class CanonicalReport:
    """How LRP treats the traced graph of a model: node names (qualified module names for layers)."""

    traced: bool
    reason: str = ""
    folds: list[tuple[str, str]] = field(default_factory=list)
    sums: list[str] = field(default_factory=list)
    concatenations: list[str] = field(default_factory=list)
    pools: list[str] = field(default_factory=list)
    unhandled: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people."""
        if not self.traced:
            return f"not traced ({self.reason}); every operation is checked while it runs"
        bad = f"; no rule for {', '.join(self.unhandled)}" if self.unhandled else ""
        return (f"{len(self.folds)} batch norms folded, {len(self.sums)} sums split, {len(self.concatenations)} "
                f"concatenations, {len(self.pools)} average poolings as linear layers{bad}")


def _kind(node: object, modules: dict[str, nn.Module]) -> str | None:
    op, target = node.op, node.target  # type: ignore[attr-defined]
    if op == "call_module":
        module = modules[target]
        return next((kind for types, kind in _MODULE_KINDS if isinstance(module, types)), None)
    name = target if op == "call_method" else _FUNCTION_NAMES.get(target, getattr(target, "__name__", str(target)))
    if name in _FREE:
        return "free"
    return OP_KINDS.get(name)


_REPORTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], CanonicalReport]] = weakref.WeakKeyDictionary()


def canonical_report(model: nn.Module) -> CanonicalReport:
    """Trace ``model`` with ``torch.fx`` and report how LRP canonizes it (see the module docstring);
    kept per model and module tree, so repeated calls trace once."""
    key = tuple(map(id, model.modules()))
    known = _REPORTS.get(model)
    if known is None or known[0] != key:
        known = _REPORTS[model] = (key, _trace(model))
    return copy.deepcopy(known[1])


def _trace(model: nn.Module) -> CanonicalReport:
    import torch.fx

    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception as error:  # data-dependent control flow and the like: fx cannot trace it
        return CanonicalReport(False, f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
    modules = dict(model.named_modules())
    report = CanonicalReport(True)
    kinds = {node: _kind(node, modules) for node in graph.nodes if node.op not in ("placeholder", "output", "get_attr")}
    for node, kind in kinds.items():
        label = str(node.target) if node.op == "call_module" else node.name
        if kind is None:
            report.unhandled.append(label)
        elif kind == "norm" and node.op == "call_module" and isinstance(modules[node.target],
                                                                          nn.modules.batchnorm._BatchNorm):
            source = node.args[0] if node.args else None
            if getattr(source, "op", None) == "call_module" and kinds.get(source) in ("conv", "linear"):
                report.folds.append((str(source.target), label))
        elif kind == "sum" and sum(isinstance(a, torch.fx.Node) for a in node.args) > 1:
            report.sums.append(label)
        elif kind == "route" and label.startswith("cat"):
            report.concatenations.append(label)
        elif kind == "pool":
            report.pools.append(label)
    return report
