"""The ``convscope`` command.

Every subcommand is a small function registered with :func:`command`; user errors
(:class:`~convscope.errors.ConvscopeError`, and a bad command line) print one paragraph and exit 2,
other failures one line and exit 1; ``--debug`` (anywhere on the line) shows the traceback instead.
An ``--out`` that cannot be written is refused before any work. While a command runs, notes such as
"this model has random weights" go to stderr, and TensorFlow's own log lines are silenced (unless
``--debug``, or ``TF_CPP_MIN_LOG_LEVEL`` is set).

Example::

    convscope layers zoo:shapes-vgg
    convscope methods
    convscope demo --out convscope-demo
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convscope.cliargs import add_max_batch, parse_box, parse_region
from convscope.errors import ConvscopeError

if TYPE_CHECKING:
    from convscope.loaded import LoadedModel

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}
_OUT_IS_FOLDER: dict[str, bool] = {}  # command -> its --out names a folder (True) or a file (False)


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None], *,
            out_folder: bool = True) -> Callable[[Handler], Handler]:
    """Register a subcommand: ``configure`` adds its arguments, the decorated function runs it.
    A ``--out`` it takes names a folder, or with ``out_folder=False`` a file."""

    def wrap(fn: Handler) -> Handler:
        _COMMANDS[name] = (help, configure, fn)
        _OUT_IS_FOLDER[name] = out_folder
        return fn

    return wrap


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number (write e.g. 64)")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo:NAME, torchvision:NAME[?weights=DEFAULT], a TorchScript file, a Keras "
                                 ".keras/.h5 file, or package.module:factory")
    p.add_argument("--weights", help="a state-dict file to load into the model (weights_only=True); for a Keras "
                                     "model a .weights.h5 file")


def _load(args: argparse.Namespace):  # noqa: ANN202
    from convscope.models import load_model

    return load_model(args.model, weights=args.weights)


# --- demo -------------------------------------------------------------------------------------

def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="convscope-demo", help="output folder (default: convscope-demo)")
    p.add_argument("--images", type=positive_int, default=6, help="how many Shapes images to explain (default 6)")


@command("demo", "train or load zoo:shapes-vgg and write an HTML report of everything convscope can show", _demo_args)
def _demo(args: argparse.Namespace) -> int:
    from convscope.demo import run_demo

    path = run_demo(Path(args.out), n_images=args.images)
    print(path)
    return 0


# --- layers -----------------------------------------------------------------------------------

def _layers_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--input-size", type=positive_int, default=None,
                   help="probe input size (default: the model's crop size)")


def _check_probe(loaded: LoadedModel, probe: Any, given: bool) -> None:
    """Run the model once on ``probe``: a model that cannot take it is a user error naming the size
    to use (its preprocessing's crop), not an internal error."""
    import torch

    try:
        if isinstance(loaded.model, torch.nn.Module):
            with torch.no_grad():
                loaded.model(probe)
        else:
            loaded.model(probe, training=False)
    except Exception as exc:  # noqa: BLE001 - a model's own shape checks raise many kinds
        size, crop = int(probe.shape[2]), loaded.preprocess.crop
        if not given:
            fix = "Give the input size the model expects: --input-size N (or ?size=N&crop=N after the model)."
        elif size < crop:
            fix = f"The input is too small for the model: try --input-size {crop} (its preprocessing's crop size)."
        else:
            fix = f"Try --input-size {crop} (its preprocessing's crop size)."
        raise ConvscopeError(f"{loaded.name} cannot run on a {'x'.join(map(str, probe.shape))} probe input "
                             f"({type(exc).__name__}: {_reason(exc)})", fix) from exc


def _reason(exc: Exception) -> str:
    """The line of an exception's message that says what went wrong (Keras opens with "Exception
    encountered when calling ..." and colours the reason)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    said = [line for line in lines if line and not line.startswith("Exception encountered when calling")]
    return said[0] if said else ""


@command("layers", "print the model's layer tree with output shapes for a probe input", _layers_args)
def _layers(args: argparse.Namespace) -> int:
    import torch

    from convscope.layers import layer_table

    loaded = _load(args)
    size = args.input_size or loaded.preprocess.crop
    if isinstance(loaded.model, torch.nn.Module):
        probe = torch.zeros(1, 3, size, size)
        _check_probe(loaded, probe, given=args.input_size is not None)
        rows = layer_table(loaded.model, probe)
    else:  # a Keras model (its loader has imported TensorFlow): NHWC probe
        from convscope.tf.layers import layer_table as keras_layer_table
        from convscope.tf.layers import probe_for

        probe = probe_for(loaded.model, size)
        _check_probe(loaded, probe, given=args.input_size is not None)
        rows = keras_layer_table(loaded.model, probe)
    width = max((len("  " * (r.depth - 1) + r.name) for r in rows), default=4)
    kind = max([18, *(len(r.kind) for r in rows)])  # Keras type names run long (GlobalAveragePooling2D)
    from convscope.formats import is_torchscript

    probed = "no output shapes: a TorchScript model's layers take no hooks" if is_torchscript(loaded.model) else \
        f"probe input {'x'.join(map(str, probe.shape))}"
    print(f"{loaded.name}  ({probed})")
    print(f"{'layer':<{width}}  {'type':<{kind}} {'output shape':<20} {'params':>9}")
    for r in rows:
        shape = "x".join(map(str, r.output_shape)) if r.output_shape else "-"
        if r.calls > 1:
            shape += f"  (called {r.calls}x)"
        print(f"{'  ' * (r.depth - 1) + r.name:<{width}}  {r.kind:<{kind}} {shape:<20} {r.params:>9,}")
    return 0


# --- zoo --------------------------------------------------------------------------------------

def _zoo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "train"], help="list the zoo, or (re)train a model")
    p.add_argument("name", nargs="?", help="zoo model name for 'train'")


@command("zoo", "list the model zoo or train a zoo model", _zoo_args)
def _zoo(args: argparse.Namespace) -> int:
    from convscope import zoo

    if args.action == "train":
        if not args.name:
            raise ConvscopeError("'convscope zoo train' needs a model name", f"Choose one of: {', '.join(zoo.names())}.")
        zoo.load(args.name, retrain=True)
        return 0
    for name in zoo.names():
        meta = zoo.info(name)
        state = f"trained, held-out {zoo.headline(meta)}" if meta else "not trained yet"
        print(f"{name:<16} {zoo.entry(name).description}  [{state}]")
    return 0


# --- methods --------------------------------------------------------------------------------

_FRAMEWORKS = {"torch": "PyTorch", "torchscript": "TorchScript", "tf": "Keras"}


@command("methods", "list the attribution methods (the names `explain --method` takes), with their options",
         lambda p: None)
def _methods(args: argparse.Namespace) -> int:
    from convscope.methods import methods

    rows = [(info.name, info.cls.__name__,
             ", ".join(f"--{o.replace('_', '-')}" for o in sorted(info.cls.options)) or "-",
             ", ".join(_FRAMEWORKS.get(f, f) for f in info.cls.frameworks), info.description)
            for info in methods().values()]
    header = ("method", "class", "options", "runs on", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    print("\n`--method all` runs every method; --aug-smooth applies to every method. A name may use - for _ "
          "and any case (grad-cam, GradCAM).")
    return 0


# --- project --------------------------------------------------------------------------------

def _project_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--layer", required=True, help="qualified layer name (see `convscope layers MODEL`)")
    p.add_argument("--channel", type=int, required=True, help="feature map (channel) index")
    p.add_argument("--rule", choices=["deconvnet", "guided", "gradient"], default="deconvnet",
                   help="the backward rule at every ReLU (default deconvnet)")
    p.add_argument("--top", type=int, default=1, help="project the N strongest activations (default 1)")
    p.add_argument("--out", default="convscope-project", help="output folder (default: convscope-project)")
    add_max_batch(p, what="images")


@command("project", "project a unit's strongest activation(s) back to pixels (Zeiler-Fergus deconvnet)", _project_args)
def _project(args: argparse.Namespace) -> int:
    from convscope.project import project_images

    for path in project_images(_load(args), args.images, args.layer, args.channel, rule=args.rule, top=args.top,
                               out=Path(args.out), max_batch=args.max_batch):
        print(path)
    return 0


# --- explain --------------------------------------------------------------------------------

def _explain_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--method", default=None,
                   help="a method name (`convscope methods` lists them), or 'all' (default grad_cam; saliency on a "
                        "TorchScript model)")
    p.add_argument("--target", type=int, default=None, help="class index to explain (default: the predicted class)")
    p.add_argument("--box", type=parse_box, default=None, metavar="x0,y0,x1,y1",
                   help="detectors: explain the detection of class --target whose box best matches this box "
                        "(pixels of the image file); drawn in white, the matched detection in cyan")
    p.add_argument("--region", type=parse_region, default=None, metavar="x0,y0,x1,y1|MASK.png",
                   help="segmenters: explain class --target summed over this region of the image: a box, or a "
                        "mask image of the picture's size (nonzero: inside); outlined in white")
    p.add_argument("--layer", default=None, help="layer for CAM methods (default: chosen automatically)")
    p.add_argument("--eigen-smooth", action="store_true",
                   help="CAM methods: project the weighted maps on their first principal component")
    p.add_argument("--aug-smooth", action="store_true",
                   help="average each map over mirrored and rescaled (0.9, 1, 1.1) copies of the images")
    p.add_argument("--adaptive", action="store_true",
                   help="occlusion: approximate and faster, a coarse pass then every window only where the score "
                        "drops most (convscope.methods.Adaptive)")
    p.add_argument("--out", default="convscope-explain", help="output folder (default: convscope-explain)")
    p.add_argument("--crop", action="store_true",
                   help="draw the maps on the model's crop of each image instead of the whole picture")
    add_max_batch(p)


@command("explain", "attribution maps for images: one overlay PNG per image x method, a JSON of the maps' metadata",
         _explain_args)
def _explain(args: argparse.Namespace) -> int:
    from convscope.explain import explain
    from convscope.methods.registry import method_for

    loaded = _load(args)
    method, note = method_for(loaded.model, args.method, loaded.name)
    if note:
        print(f"convscope: {note}", file=sys.stderr)
    for path in explain(loaded, args.images, method=method, target=args.target, layer=args.layer,
                        eigen_smooth=args.eigen_smooth, aug_smooth=args.aug_smooth, out=Path(args.out),
                        max_batch=args.max_batch, crop=args.crop, adaptive=args.adaptive, box=args.box,
                        region=args.region):
        print(path)
    return 0


# --- atlas ----------------------------------------------------------------------------------

def _atlas_args(p: argparse.ArgumentParser) -> None:
    from convscope.atlas import cli as atlas_cli

    atlas_cli.configure(p)


@command("atlas", "mine a dataset for each channel's top-k activations and write a Zeiler-Fergus HTML atlas",
         _atlas_args)
def _atlas(args: argparse.Namespace) -> int:
    from convscope.atlas import cli as atlas_cli

    return atlas_cli.run(args)


# --- check ----------------------------------------------------------------------------------

def _check_args(p: argparse.ArgumentParser) -> None:
    from convscope.check import cli as check_cli

    check_cli.configure(p)


@command("check", "score attribution methods on a dataset (faithfulness, randomisation sanity checks, pointing "
         "game, complexity) and write a report of which map to trust", _check_args)
def _check(args: argparse.Namespace) -> int:
    from convscope.check import cli as check_cli

    return check_cli.run(args)


# --- feature visualization ------------------------------------------------------------------

def _visualize_args(p: argparse.ArgumentParser) -> None:
    from convscope.featurevis import cli as featurevis_cli

    featurevis_cli.configure_visualize(p)


@command("visualize", "render what the channels of a layer respond to (feature visualization): a labelled grid PNG "
         "and one PNG per channel", _visualize_args)
def _visualize(args: argparse.Namespace) -> int:
    from convscope.featurevis import cli as featurevis_cli

    return featurevis_cli.visualize_command(args)


def _dream_args(p: argparse.ArgumentParser) -> None:
    from convscope.featurevis import cli as featurevis_cli

    featurevis_cli.configure_dream(p)


@command("dream", "DeepDream an image: amplify what a layer sees in it, coarse to fine (octaves)", _dream_args,
         out_folder=False)
def _dream(args: argparse.Namespace) -> int:
    from convscope.featurevis import cli as featurevis_cli

    return featurevis_cli.dream_command(args)


# --- serve ----------------------------------------------------------------------------------

def _serve_args(p: argparse.ArgumentParser) -> None:
    from convscope.serve import cli as serve_cli

    serve_cli.configure(p)


@command("serve", "explore the model in the browser: layers, channels, atlases and maps on demand (a local web app)",
         _serve_args)
def _serve(args: argparse.Namespace) -> int:
    from convscope.serve import cli as serve_cli

    return serve_cli.run(args)


# --- entry point ------------------------------------------------------------------------------

def version() -> str:
    """The installed package's version, or the source's (``convscope.__version__``) in a checkout
    that is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("convscope")
    except PackageNotFoundError:
        import convscope

        return convscope.__version__


class _Version(argparse.Action):
    """``--version``: print ``convscope VERSION`` and exit (the version is looked up only then)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> None:
        print(f"convscope {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convscope", description="See inside convolutional networks.")
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, _fn) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # after the command too; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        configure(p)
    return parser


_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"


@contextmanager
def _quiet_tensorflow(model_spec: str) -> Iterator[None]:
    """TensorFlow's own log lines off for one command: its C++ logging (read when TensorFlow is
    imported; a level the user set wins) and, for a Keras model, its Python loggers and warnings.
    Everything is restored on exit: importing convscope changes nothing of this."""
    from convscope.models import KERAS_SUFFIXES

    saved = os.environ.get(_TF_LOG_LEVEL)
    os.environ.setdefault(_TF_LOG_LEVEL, "3")
    loggers = [logging.getLogger("tensorflow")]
    if Path(model_spec.partition("?")[0]).suffix.lower() in KERAS_SUFFIXES:
        try:  # absl's logger must be made by absl itself: import it rather than create it here
            from absl import logging as absl_logging

            loggers.append(absl_logging.get_absl_logger())
        except ImportError:
            pass
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(tensorflow|keras|absl|h5py)(\.|$)")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if saved is None:
            os.environ.pop(_TF_LOG_LEVEL, None)
        else:
            os.environ[_TF_LOG_LEVEL] = saved


@contextmanager
def _notes_on_stderr() -> Iterator[None]:
    """convscope's notes (INFO and up on the ``convscope`` loggers, e.g. "random weights") printed
    on stderr as ``convscope: note: ...`` while a command runs."""
    logger = logging.getLogger("convscope")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("convscope: %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, here, whatever handlers the root logger has
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names, after refusing an ``--out`` that cannot be written."""
    from convscope.fileio import check_writable

    if getattr(args, "out", None) is not None:
        check_writable(args.out, folder=_OUT_IS_FOLDER[args.command])
    quiet = nullcontext() if args.debug else _quiet_tensorflow(str(getattr(args, "model", "")))
    with quiet, _notes_on_stderr():
        return _COMMANDS[args.command][2](args)


def main(argv: Sequence[str] | None = None) -> int:
    version_only = argparse.ArgumentParser(prog="convscope", add_help=False)
    version_only.add_argument("--version", action=_Version)
    version_only.parse_known_args(argv)  # at once: the full parser imports the commands' modules (torch)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ConvscopeError as exc:
        if args.debug:
            raise
        # paths and names stay whole: no break at their hyphens
        print(textwrap.fill(f"convscope: error: {exc}", width=100, break_on_hyphens=False, break_long_words=False),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convscope: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if args.debug:
            raise
        print(f"convscope: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
