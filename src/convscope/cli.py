"""The ``convscope`` command.

Every subcommand is a small function registered with :func:`command`; user errors
(:class:`~convscope.errors.ConvscopeError`) print one paragraph and exit 2, other failures one
line and exit 1; ``--debug`` shows the traceback instead.

Example::

    convscope layers zoo:shapes-vgg
    convscope demo --out convscope-demo
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from convscope.cliargs import add_max_batch
from convscope.errors import ConvscopeError

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register a subcommand: ``configure`` adds its arguments, the decorated function runs it."""

    def wrap(fn: Handler) -> Handler:
        _COMMANDS[name] = (help, configure, fn)
        return fn

    return wrap


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
    p.add_argument("--images", type=int, default=6, help="how many Shapes images to explain (default 6)")


@command("demo", "train or load zoo:shapes-vgg and write an HTML report of everything convscope can show", _demo_args)
def _demo(args: argparse.Namespace) -> int:
    from convscope.demo import run_demo

    path = run_demo(Path(args.out), n_images=args.images)
    print(path)
    return 0


# --- layers -----------------------------------------------------------------------------------

def _layers_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--input-size", type=int, default=None, help="probe input size (default: the model's crop size)")


@command("layers", "print the model's layer tree with output shapes for a probe input", _layers_args)
def _layers(args: argparse.Namespace) -> int:
    import torch

    from convscope.layers import layer_table

    loaded = _load(args)
    size = args.input_size or loaded.preprocess.crop
    if isinstance(loaded.model, torch.nn.Module):
        probe = torch.zeros(1, 3, size, size)
        rows = layer_table(loaded.model, probe)
    else:  # a Keras model (its loader has imported TensorFlow): NHWC probe
        from convscope.tf.layers import layer_table as keras_layer_table
        from convscope.tf.layers import probe_for

        probe = probe_for(loaded.model, size)
        rows = keras_layer_table(loaded.model, probe)
    width = max((len("  " * (r.depth - 1) + r.name) for r in rows), default=4)
    kind = max([18, *(len(r.kind) for r in rows)])  # Keras type names run long (GlobalAveragePooling2D)
    print(f"{loaded.name}  (probe input {'x'.join(map(str, probe.shape))})")
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
        state = f"trained, held-out accuracy {meta['val_accuracy']:.1%}" if meta else "not trained yet"
        print(f"{name:<16} {zoo.entry(name).description}  [{state}]")
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
    p.add_argument("--method", default="grad_cam", help="a registered method name, or 'all' (default grad_cam)")
    p.add_argument("--target", type=int, default=None, help="class index to explain (default: the predicted class)")
    p.add_argument("--layer", default=None, help="layer for CAM methods (default: chosen automatically)")
    p.add_argument("--eigen-smooth", action="store_true",
                   help="CAM methods: project the weighted maps on their first principal component")
    p.add_argument("--aug-smooth", action="store_true",
                   help="average each map over mirrored and rescaled (0.9, 1, 1.1) copies of the images")
    p.add_argument("--out", default="convscope-explain", help="output folder (default: convscope-explain)")
    p.add_argument("--crop", action="store_true",
                   help="draw the maps on the model's crop of each image instead of the whole picture")
    add_max_batch(p)


@command("explain", "attribution maps for images: one overlay PNG per image x method, a JSON of the maps' metadata",
         _explain_args)
def _explain(args: argparse.Namespace) -> int:
    from convscope.explain import explain

    for path in explain(_load(args), args.images, method=args.method, target=args.target, layer=args.layer,
                        eigen_smooth=args.eigen_smooth, aug_smooth=args.aug_smooth, out=Path(args.out),
                        max_batch=args.max_batch, crop=args.crop):
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


@command("dream", "DeepDream an image: amplify what a layer sees in it, coarse to fine (octaves)", _dream_args)
def _dream(args: argparse.Namespace) -> int:
    from convscope.featurevis import cli as featurevis_cli

    return featurevis_cli.dream_command(args)


# --- entry point ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convscope", description="See inside convolutional networks.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, _fn) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command][2](args)
    except ConvscopeError as exc:
        if args.debug:
            raise
        print(textwrap.fill(f"convscope: error: {exc}", width=100), file=sys.stderr)
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
