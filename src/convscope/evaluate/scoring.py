"""The model's score for each sample's class, on many changed copies of the inputs, in chunks.

Every perturbation metric (deletion, insertion, pixel flipping, region perturbation, ROAD,
infidelity) asks one question many times: what does the model give class ``y_n`` on this copy of
sample ``n``? :class:`ClassScores` answers it for a batch of copies, at most ``max_batch`` per
model call (``"auto"`` sizes the chunks from memory, as the methods do), with no gradients, the
model in eval mode for the call and every module's mode restored afterwards.

``output="probability"`` gives ``softmax(out)[n, y_n]`` (Petsiuk et al.'s deletion and insertion
curves, and Quantus's default), ``"logit"`` gives ``out[n, y_n]``.

Inputs are channels-first torch tensors ``[m, C, ...]`` for either framework: a Keras model gets
them channels-last (:func:`convscope.evaluate.maps.channels_last`) inside the call.

Example::

    scores = ClassScores(model, max_batch=64)
    p = scores(x, torch.tensor([3, 0]))        # [2]: softmax(model(x))[n, y_n]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from convscope.backends.dispatch import framework_of
from convscope.backends.torch.batching import Batches, MaxBatch, check_max_batch
from convscope.errors import ConvscopeError

Output = Literal["probability", "logit"]


class ClassScores:
    """``scores(x, classes) -> [m]``: the model's score for ``classes[i]`` on ``x[i]`` (see the module)."""

    def __init__(self, model: Any, *, max_batch: MaxBatch = None, output: Output = "probability") -> None:
        if output not in ("probability", "logit"):
            raise ConvscopeError(f"output={output!r} is not a score kind", "Use output='probability' or 'logit'.")
        self.model = model
        self.max_batch = check_max_batch(max_batch)
        self.output = output
        self.framework = framework_of(model)
        self.calls = 0  # model calls made so far (the cost of a metric, for its report)
        self.rows = 0  # samples evaluated so far

    def __call__(self, x: Tensor, classes: Tensor) -> Tensor:
        return self.map(len(x), lambda r: (x[r], classes[r]))

    def map(self, total: int, make: Callable[[slice], tuple[Tensor, Tensor]]) -> Tensor:
        """Scores of ``total`` rows whose inputs and classes ``make(rows)`` builds one chunk at a time
        (so the changed copies of a whole curve never sit in memory at once). A PyTorch model's
        evaluations run on its inference twin where that pays (on the CPU: batch norms folded,
        channels-last; :mod:`convscope.backends.torch.inference`), the model in eval mode."""
        if self.framework == "tf" or total == 0:
            return self._chunks(total, make, lambda x: model_outputs(self.model, x), torch.device("cpu"))
        from convscope.backends.torch.session import Session

        device = _device(self.model)
        with Session(self.model) as session:
            first = make(slice(0, 1))[0]
            evaluator = session.inference(work=total * first[0].numel())
            return self._chunks(total, make, lambda x: evaluator.forward(x.to(device), slice(0, len(x)),
                                                                          grad=False).record.output.detach(), device)

    def _chunks(self, total: int, make: Callable[[slice], tuple[Tensor, Tensor]], run: Callable[[Tensor], Tensor],
                device: torch.device) -> Tensor:
        parts = [part for _, part in Batches(self.max_batch, device).map(total, lambda r: self._score(run, *make(r)))]
        return torch.cat(parts) if parts else torch.zeros(0)

    def _score(self, run: Callable[[Tensor], Tensor], x: Tensor, classes: Tensor) -> Tensor:
        self.calls += 1
        self.rows += len(x)
        out = run(x)
        if out.dim() != 2:
            raise ConvscopeError(f"the model returned outputs of shape {list(out.shape)}; an evaluation metric "
                                 "scores one class per sample of [N, classes] outputs",
                                 "Evaluate a classifier, or wrap the model so it returns [N, classes] scores.")
        if self.output == "probability":
            out = out.float().softmax(1)
        return out.gather(1, classes.to(out.device).long().view(-1, 1))[:, 0].float().cpu()


def model_outputs(model: Any, x: Tensor) -> Tensor:
    """The model's outputs for the channels-first batch ``x`` (no gradients; a Keras model gets it
    channels-last), as a torch tensor."""
    return _keras_outputs(model, x) if framework_of(model) == "tf" else _torch_outputs(model, x)


def _device(model: Any) -> torch.device:
    from convscope.backends.torch.forward import model_device

    return model_device(model)


def _torch_outputs(model: Any, x: Tensor) -> Tensor:
    from convscope.backends.torch.forward import call_model
    from convscope.backends.torch.session import eval_mode

    with eval_mode(model), torch.no_grad():
        return call_model(model, x.to(_device(model)))


def _keras_outputs(model: Any, x: Tensor) -> Tensor:
    arr = x.detach().cpu().numpy()
    if arr.ndim >= 3:
        arr = np.moveaxis(arr, 1, -1)
    out = model(np.ascontiguousarray(arr), training=False)
    return torch.from_numpy(np.array(out))  # a copy: TensorFlow's arrays are read-only
