"""``convscope serve MODEL [DATA] [--port P] [--host H] [--work DIR] [--export DIR]``.

Starts the web application on uvicorn and prints its address. By default it listens on
127.0.0.1 only (and accepts only the loopback names in ``Host``); any other ``--host`` (such as
0.0.0.0) makes the server require a random access token, printed in the address to open. Ctrl-C
stops it cleanly: the server closes its socket, and the background jobs' thread (a daemon) ends
with the process. ``--export DIR`` writes the static site of what the work folder holds instead
of serving.

Example::

    convscope serve zoo:shapes-vgg shapes:256 --port 8765
    convscope serve zoo:shapes-vgg shapes:256 --export site
"""

from __future__ import annotations

import argparse
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from convscope.errors import ConvscopeError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def configure(p: argparse.ArgumentParser) -> None:
    """Add the ``serve`` arguments to ``p``."""
    p.add_argument("model", help="zoo:NAME, torchvision:NAME[?weights=DEFAULT], a TorchScript file, a Keras "
                                 ".keras/.h5 file, or package.module:factory")
    p.add_argument("data", nargs="?", default=None,
                   help="images to explore: an image folder, or shapes:N (the built-in Shapes dataset)")
    p.add_argument("--weights", help="a state-dict file to load into the model (weights_only=True)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other needs the printed token)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--work", default="convscope-serve",
                   help="folder for uploads, atlases, feature visualizations and maps (default: convscope-serve)")
    p.add_argument("--max-upload", type=int, default=8, help="largest upload in MiB (default 8)")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="write the static site of what --work holds into DIR and exit (no server)")


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (port 0: a free one), or a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConvscopeError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                             "Choose another --port (0 picks a free one), or stop what uses it.") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) from a daemon thread, for scripts, tests
    and benchmarks: ``url`` once started, :meth:`stop` to end it.

    Example: ``server = ServerThread(build_app(ws)); urlopen(server.url + "api/model"); server.stop()``.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:  # noqa: ANN401
        import uvicorn

        self.sock = listening_socket(host, 0)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < end:
            time.sleep(0.01)
        if not self.server.started:
            self.stop()
            raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def run(args: argparse.Namespace) -> int:
    """Serve (or export) what ``args`` describe."""
    from convscope.models import load_model
    from convscope.serve.workspace import Workspace

    if not 0 <= args.port < 65536:
        raise ConvscopeError(f"--port {args.port} is not a port", "Use a number from 1 to 65535, or 0 for a free one.")
    if args.max_upload < 1:
        raise ConvscopeError("--max-upload must be at least 1 (MiB)", "Use e.g. --max-upload 8.")
    loaded = load_model(args.model, weights=args.weights)
    ws = Workspace(loaded, args.data, Path(args.work), max_upload=args.max_upload << 20)
    if args.export:
        from convscope.serve.export import export_site

        print(export_site(ws, Path(args.export)))
        return 0
    import uvicorn

    from convscope.serve.app import build_app

    local = args.host in LOOPBACK
    token = None if local else secrets.token_urlsafe(18)
    app = build_app(ws, token=token, allowed_hosts=["127.0.0.1", "localhost"] if local else None)
    sock = listening_socket(args.host, args.port)
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"convscope: serving {loaded.name} at {address}  (Ctrl-C to stop)", flush=True)
    if token:
        print(f"convscope: listening on {args.host}: other machines must open the address with ?token={token}",
              file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again: the stop is clean
        pass
    finally:
        sock.close()
        if any(job.state == "running" for job in ws.jobs.all()):
            print("convscope: stopping the running job at its next step", flush=True)
        ws.jobs.stop()
    print("convscope: stopped", flush=True)
    return 0
