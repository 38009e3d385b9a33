"""A scoped attribution session: eval mode, probes and backward rules, all undone on exit.

Inside ``with Session(...)`` the model is in eval mode and the probed layers have forward hooks;
backward rules are applied only while :meth:`Session.forward` runs. On exit (also after an
error) every hook and mode is gone and each module's ``training`` flag is what it was. The
user's input is never touched: the forward pass sees ``x.detach().clone().requires_grad_()``,
and gradients are taken with ``torch.autograd.grad`` so no parameter's ``.grad`` changes.

Example::

    with Session(model, layers=["layer3"], rules=RuleMap(DeconvReLU())) as session:
        run = session.forward(x, slice(0, len(x)))
        (g,) = torch.autograd.grad(run.record.output[:, 3].sum(), run.input)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext

import torch
from torch import Tensor, nn

from convscope.backends.torch.forward import Forward, call_model, model_device
from convscope.backends.torch.inputs import Inputs
from convscope.backends.torch.inference import TWIN_MIN_WORK, InferenceSession, twin_enabled
from convscope.backends.torch.probes import LayerKey, Probes, SeenAll
from convscope.backends.torch.rule_mode import apply_rules
from convscope.rules import RuleMap
from convscope.targets import Record


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block; afterwards every module's own ``training`` flag as it was."""
    training = [m for m in model.modules() if m.training]
    try:
        if training:  # an eval-mode model (the usual case) costs nothing here
            model.eval()
        yield
    finally:
        for module in training:
            module.training = True  # per module: model.train() would overwrite mixed flags


class Session:
    """Eval mode + probes on ``layers`` for the block; ``rules`` applied within each forward pass.

    ``stop_early=True`` (for targets that read only ``layers``, not the model output): after one
    complete pass has shown that each probed layer runs exactly once, later passes end as soon
    as every probed layer has run, and ``record.output`` is an empty ``[n, 0]`` placeholder.
    """

    def __init__(self, model: nn.Module, *, layers: Sequence[LayerKey] = (), rules: RuleMap | None = None,
                 stop_early: bool = False, inputs: Inputs | None = None) -> None:
        self.model = model
        self.inputs = inputs  # how x reaches the model (None: model(x))
        self.stop_early = stop_early and bool(layers)
        self._whole_pass_seen = False  # a complete pass showed every probed layer runs exactly once
        self.rules = None if rules is None or rules.is_gradient else rules
        if self.rules is not None:
            self.rules.resolve(model)  # unknown layer names fail here, before any work
        self.probes = Probes(model, layers)
        self._stack = ExitStack()
        self._inference: InferenceSession | Session | None = None

    def __enter__(self) -> Session:
        with ExitStack() as stack:
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(self.probes)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._inference = None
        self._stack.close()

    def inference(self, work: int | None = None) -> InferenceSession | Session:
        """Where no-grad evaluations of many perturbed inputs run: the model's inference twin
        (on the CPU: folded batch norms, channels-last; built on first use, dropped on exit), or
        this session itself inside :func:`~convscope.backends.torch.inference.exact_forward`, off
        the CPU, for a model that cannot be copied, and when the first call's ``work`` (input elements to be
        evaluated) is under :data:`~convscope.backends.torch.inference.TWIN_MIN_WORK`: building
        the twin would cost more than it saves. The first call decides for the session."""
        if not twin_enabled():
            return self
        if self._inference is None and work is not None and work < TWIN_MIN_WORK:
            self._inference = self
        if self._inference is None:
            twin = InferenceSession.build(self.model, self.probes.keys, model_device(self.model),
                                          drop_hooks=self.probes.hook_ids(), inputs=self.inputs)
            if twin is not None:
                self._stack.enter_context(twin.probes)
            self._inference = twin or self
        return self._inference

    def module(self, key: LayerKey) -> nn.Module:
        """The model's module for a probed layer key."""
        return self.probes.modules[key]

    def forward(self, x: Tensor, rows: slice | Tensor, *, grad: bool = True, rules: RuleMap | None = None) -> Forward:
        """Run the model on a copy of ``x`` (a leaf that requires grad when ``grad``), with ``rules``
        (default: the session's) applied at every ReLU."""
        leaf = x.detach().clone()
        if grad:
            leaf.requires_grad_()
        self.probes.reset()
        self.probes.stop_when_seen = self.stop_early and self._whole_pass_seen
        active = self.rules if rules is None else None if rules.is_gradient else rules
        scope = apply_rules(self.model, active) if active is not None else nullcontext()
        try:
            with torch.set_grad_enabled(grad), scope:
                output = call_model(self.model, leaf, self.inputs, rows)
        except SeenAll:  # every probed layer has run: the rest of the model cannot change the record
            output = leaf.new_empty((leaf.shape[0], 0))  # a placeholder with the batch size, dtype, device
        acts = {key: self.probes.output(key) for key in self.probes.keys}
        self._whole_pass_seen = self._whole_pass_seen or self.stop_early
        return Forward(Record(output=output, acts=acts, rows=rows, input=leaf), input=leaf)
