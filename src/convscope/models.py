"""Model addressing: turn a spec string into a model in eval mode plus its preprocessing.

Specs:

- ``zoo:shapes-vgg`` - a convscope zoo model (trained on first use);
- ``torchvision:resnet18`` or ``torchvision:resnet18?weights=DEFAULT`` - torchvision's builder,
  through its real weights API (``weights=None`` unless asked);
- ``path/to/model.pt`` - a TorchScript file;
- ``path/to/model.keras`` (or ``.h5``) - a Keras model, via :mod:`convscope.tf.models`
  (TensorFlow is imported only for such a file);
- ``package.module:factory`` - a callable returning an ``nn.Module``; with ``weights=`` a
  state-dict file loaded with ``torch.load(weights_only=True)`` and ``strict=True``.

Any spec takes ``?size=N&crop=M`` to override the preprocessing. Every failure is a
:class:`~convscope.errors.ConvscopeError` naming the problem and the fix. The result says what its
weights are (``loaded.weights``); a model with random weights is also logged (INFO, on the
``convscope.models`` logger: the command line prints it).

Example::

    loaded = load_model("torchvision:vgg16", weights=None)
    loaded.model(loaded.preprocess.to_tensor(pixels))
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qsl

import torch
from torch import nn

from convscope.errors import ConvscopeError, did_you_mean
from convscope.images import Preprocess
from convscope.loaded import RANDOM_WEIGHTS, LoadedModel  # re-exported: its home, shared with convscope.tf.models

_log = logging.getLogger(__name__)


SPEC_HELP = ("Give a model as zoo:shapes-vgg, torchvision:resnet18[?weights=DEFAULT], a TorchScript "
             "file, a Keras .keras/.h5 file, or package.module:factory with a --weights state-dict file.")
KERAS_SUFFIXES = {".keras", ".h5", ".hdf5"}


def load_model(spec: str, weights: str | Path | None = None) -> LoadedModel:
    """Resolve ``spec`` (see the module doc) into a :class:`LoadedModel`."""
    base, _, query = spec.partition("?")
    options = dict(parse_qsl(query))
    if base.startswith("zoo:"):
        loaded = _zoo(base[4:])
    elif base.startswith("torchvision:"):
        loaded = _torchvision(base[len("torchvision:"):], options.pop("weights", None))
    elif Path(base).suffix.lower() in KERAS_SUFFIXES:
        loaded = _keras(Path(base), weights)
        loaded.weights = f"saved in {Path(base).name}" if weights is None else f"Keras weights {Path(weights).name}"
        weights = None  # a Keras weights file is loaded by the Keras loader
    elif Path(base).suffix in {".pt", ".pth", ".ts", ".jit"} or Path(base).is_file():
        loaded = _torchscript(Path(base))
    elif ":" in base:
        loaded = _factory(base)
    else:
        raise ConvscopeError(f"cannot tell what kind of model {spec!r} is", SPEC_HELP)
    if weights is not None:
        load_state_dict_file(loaded.model, Path(weights))
        loaded.weights = f"state dict {Path(weights).name}"
    size = _pixels(options.pop("size", None), "size", spec)
    crop = _pixels(options.pop("crop", None), "crop", spec)
    if size or crop:
        loaded.preprocess = replace(loaded.preprocess, size=size or crop, crop=crop or size)
    if options:
        raise ConvscopeError(f"unknown model options {sorted(options)} in {spec!r}",
                             "Known options: weights (torchvision only), size, crop.")
    if isinstance(loaded.model, nn.Module):
        loaded.model.eval()
    if loaded.random_weights:
        _log.info("note: the weights of %s are %s; the predictions and maps of an untrained model show no learned "
                  "features. %s", loaded.name, loaded.weights,
                  "For trained weights add ?weights=DEFAULT (downloaded once) or pass --weights FILE (a state dict)."
                  if base.startswith("torchvision:") else "Pass --weights FILE (a state dict) for trained ones.")
    return loaded


def _pixels(value: str | None, option: str, spec: str) -> int | None:
    """The ``?size=``/``?crop=`` option as a positive number of pixels (None if not given)."""
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConvscopeError(f"{option}={value!r} in {spec!r} is not a positive number of pixels",
                             f"Write e.g. {spec.partition('?')[0]}?size=256&crop=224.")
    return int(value)


def _keras(path: Path, weights: str | Path | None) -> LoadedModel:
    """A Keras model file; TensorFlow is imported here, and only here."""
    try:
        from convscope.tf.models import load_keras_model
    except ImportError as exc:
        raise ConvscopeError(f"{path.name!r} is a Keras model file, but TensorFlow/Keras cannot be imported ({exc})",
                             "Install it with: pip install 'convscope[tf]'") from None
    return load_keras_model(path, weights)


def _zoo(name: str) -> LoadedModel:
    from convscope import zoo

    model = zoo.load(name)
    scores = zoo.headline(zoo.info(name) or {})
    data = zoo.entry(name).recipe.data.capitalize()
    return LoadedModel(model, zoo.preset(name), f"zoo:{name}", zoo.classes(name),
                       f"zoo: trained on {data}" + (f", held-out {scores}" if scores else ""))


def _torchvision(name: str, weights: str | None) -> LoadedModel:
    try:
        import torchvision.models as tvm
    except ImportError:
        raise ConvscopeError("torchvision is not installed", "pip install 'convscope[torchvision]'") from None
    available = tvm.list_models()
    if name not in available:
        raise ConvscopeError(f"torchvision has no model named {name!r}", did_you_mean(name, available, "model"))
    weights_enum = None
    if weights is not None and weights.lower() != "none":
        try:
            weights_enum = tvm.get_model_weights(name)[weights] if weights != "DEFAULT" else tvm.get_model_weights(name).DEFAULT
        except (KeyError, ValueError):
            known = [w.name for w in tvm.get_model_weights(name)] + ["DEFAULT"]
            raise ConvscopeError(f"{name} has no weights called {weights!r}", f"Known weights: {', '.join(known)}.") from None
    detector = name in tvm.list_models(module=tvm.detection)
    dense = detector or name in tvm.list_models(module=tvm.segmentation)
    try:  # a detector or segmenter without weights gets none for its backbone either (no download)
        model = tvm.get_model(name, weights=weights_enum, **({"weights_backbone": None} if dense and weights_enum is None
                                                              else {}))
    except (OSError, RuntimeError) as exc:  # urllib errors are OSErrors
        raise ConvscopeError(f"could not fetch the pretrained weights {weights_enum} ({exc})",
                             "Check the network connection, or download the file once and pass it with --weights.") from None
    # torchvision's detectors normalise their [0, 1] input themselves
    preprocess = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) if detector else Preprocess()
    classes = None
    if weights_enum is not None:
        t = weights_enum.transforms()
        size = getattr(t, "resize_size", None)  # a detector's transform resizes nothing, a segmenter's does not crop
        crop = getattr(t, "crop_size", size)
        preprocess = Preprocess(size=int(_first(size)), crop=int(_first(crop)), mean=tuple(t.mean),
                                std=tuple(t.std)) if size is not None else preprocess
        classes = list(weights_enum.meta.get("categories") or []) or None
    return LoadedModel(model, preprocess, f"torchvision:{name}", classes,
                       RANDOM_WEIGHTS if weights_enum is None else f"torchvision {weights_enum}")


def _first(v: int | list[int] | tuple[int, ...]) -> int:
    return v[0] if isinstance(v, (list, tuple)) else v


def _torchscript(path: Path) -> LoadedModel:
    if not path.is_file():
        raise ConvscopeError(f"no such model file: {str(path)!r}", SPEC_HELP)
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise ConvscopeError(f"{str(path)!r} is not a TorchScript model ({str(exc).splitlines()[0]})",
                             "A state-dict file goes with its architecture: package.module:factory --weights FILE.") from None
    return LoadedModel(model, Preprocess(), path.name, weights=f"saved in {path.name}")


def _factory(spec: str) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConvscopeError(f"cannot import {module_name!r} ({exc})",
                             "Make sure the package is installed or on PYTHONPATH. " + SPEC_HELP) from None
    factory = getattr(module, attr, None)
    if factory is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConvscopeError(f"{module_name!r} has no attribute {attr!r}", did_you_mean(attr, names, "name"))
    model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise ConvscopeError(f"{spec!r} gave a {type(model).__name__}, not a torch.nn.Module",
                             "The factory must return the model (an nn.Module).")
    return LoadedModel(model, Preprocess(), spec, weights=f"{RANDOM_WEIGHTS} unless the factory loads trained ones")


def load_state_dict_file(model: nn.Module, path: Path) -> None:
    """Load a state-dict file into ``model`` (``weights_only=True``, ``strict=True``)."""
    if not path.is_file():
        raise ConvscopeError(f"no such weights file: {str(path)!r}", "Check the path given to --weights.")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of many kinds
        raise ConvscopeError(f"cannot read the weights file {str(path)!r} ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                             "It must be a state dict saved with torch.save(model.state_dict(), path).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConvscopeError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict",
                             "Save it with torch.save(model.state_dict(), path).")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
        raise ConvscopeError(f"the weights in {str(path)!r} do not fit this architecture: " + "; ".join(parts),
                             "Use the weights saved from the same architecture, or the factory that built them.")
    model.load_state_dict(state, strict=True)
