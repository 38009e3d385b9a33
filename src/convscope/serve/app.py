"""The web application: Starlette routes over a :class:`~convscope.serve.workspace.Workspace`.

Pages are one small static front end (``static/``: HTML, CSS, JavaScript; no CDN) that asks the
JSON API for everything; PNGs come as files or data URLs. Every error is an answer, never a crash:
a :class:`~convscope.errors.ConvscopeError` is ``{"error": problem, "fix": hint}`` with a 4xx
status (a :class:`~convscope.serve.answers.Refused` says which: 404 for a missing image or job,
403 for a path outside a folder, 413 for a big upload, 415 for a non-image; else 400), an
unknown address a 404, anything else a 500 with one line.

``token``: when set, every request must carry it (``?token=``, the ``convscope_token`` cookie the
first such request sets, or an ``X-Convscope-Token`` header), else 401. ``allowed_hosts``: the
``Host`` headers accepted (the loopback names when serving on 127.0.0.1: a web page elsewhere
cannot reach the server through DNS rebinding).

Example::

    app = build_app(Workspace(load_model("zoo:shapes-vgg"), "shapes:64", Path("work")))
    uvicorn.run(app, host="127.0.0.1", port=8765)
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from convscope import render
from convscope.errors import ConvscopeError
from convscope.serve.paths import safe_path
from convscope.serve.uploads import too_large
from convscope.serve.workspace import Workspace

STATIC = Path(__file__).parent / "static"
COOKIE = "convscope_token"


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})


def _image_arg(request: Request) -> str | None:
    return request.query_params.get("image") or None


def _int(value: object, what: str) -> int:
    """``value`` (a path part or a JSON value) as an int, or a 400 saying what to send."""
    try:
        if isinstance(value, (bool, float)):
            raise TypeError
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConvscopeError(f"{what} {value!r} is not a whole number", f"Give the {what} as e.g. 3.") from None


def build_app(ws: Workspace, *, token: str | None = None, allowed_hosts: list[str] | None = None) -> Starlette:
    """The Starlette application serving ``ws`` (see the module doc)."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def static(request: Request) -> Response:
        path = safe_path(STATIC, request.path_params["path"])
        if not path.is_file():
            return JSONResponse({"error": "no such file", "fix": "Check the address."}, status_code=404)
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def data_file(request: Request) -> Response:
        if ws.data_root is None:
            raise ConvscopeError("this server has no DATA folder", "Start it with an image folder as DATA.")
        path = safe_path(ws.data_root, request.path_params["path"])
        if not path.is_file():
            return JSONResponse({"error": "no such file", "fix": "GET /api/images lists the images."}, status_code=404)
        return FileResponse(path)

    def model(request: Request) -> Response:
        return JSONResponse(ws.model_info())

    def methods(request: Request) -> Response:
        return JSONResponse(ws.methods())

    def images(request: Request) -> Response:
        return JSONResponse(ws.images())

    def image_png(request: Request) -> Response:
        return _png(render.to_png_bytes(ws.pixels(request.path_params["image"])))

    def predict(request: Request) -> Response:
        return JSONResponse(ws.predictions(request.path_params["image"]))

    def layer(request: Request) -> Response:
        return JSONResponse(ws.layer_view(request.path_params["layer"], _image_arg(request)))

    def thumb(request: Request) -> Response:
        p = request.path_params
        return _png(ws.thumbnail(p["layer"], _int(p["c"], "channel"), _image_arg(request)))

    def channel(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(ws.channel_view(p["layer"], _int(p["c"], "channel"), _image_arg(request)))

    def map_(request: Request) -> Response:
        q = request.query_params
        if not q.get("image") or not q.get("method"):
            raise ConvscopeError("a map needs ?image=ID&method=NAME", "Add them (and &target=N, &layer=L if wanted).")
        return JSONResponse(ws.map_png(q["image"], q["method"], q.get("target", "pred"), q.get("layer") or None))

    async def upload(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > ws.max_upload:
            raise too_large(int(declared), ws.max_upload)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > ws.max_upload:
                raise too_large(len(body), ws.max_upload)
        image = await run_in_threadpool(ws.add_upload, bytes(body))
        return JSONResponse({"id": image, "images": ws.images()}, status_code=201)

    def jobs(request: Request) -> Response:
        return JSONResponse([job.as_dict() for job in ws.jobs.all()])

    async def start_job(request: Request) -> Response:
        try:
            spec: dict[str, Any] = await request.json()
        except ValueError:
            raise ConvscopeError("the job request is not JSON", 'Send e.g. {"kind": "atlas", "layers": ["features.3"]}.') from None
        if not isinstance(spec, dict):
            raise ConvscopeError("the job request must be a JSON object", 'Send e.g. {"kind": "atlas", "layers": [...]}.')
        kind = spec.get("kind")
        if kind == "atlas":
            layers = spec.get("layers") or []
            if not isinstance(layers, list) or not layers or not all(isinstance(x, str) for x in layers):
                raise ConvscopeError("an atlas job needs a list of layers", 'Send {"kind": "atlas", "layers": ["features.3"]}.')
            job = await run_in_threadpool(ws.start_atlas, layers, _int(spec.get("k", 9), "k"),
                                          _int(spec["images"], "images") if spec.get("images") else None)
        elif kind == "featurevis":
            name = str(spec.get("layer", ""))
            count = ws.layer(name)["channels"]
            given = spec.get("channels", list(range(count)))
            if not isinstance(given, list) or not given:
                raise ConvscopeError("a feature-visualization job needs channels", "Send a non-empty list of channels.")
            channels = [_int(c, "channel") for c in given]
            job = await run_in_threadpool(ws.start_featurevis, name, channels, _int(spec.get("steps", 64), "steps"))
        else:
            raise ConvscopeError(f"unknown job kind {kind!r}", "Use 'atlas' or 'featurevis'.")
        return JSONResponse(job.as_dict(), status_code=202)

    def job(request: Request) -> Response:
        return JSONResponse(ws.jobs.get(_int(request.path_params["id"], "job id")).as_dict())

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConvscopeError)
        return JSONResponse({"error": exc.problem, "fix": exc.hint}, status_code=getattr(exc, "status", 400))

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"nothing at {request.url.path}", "fix": "Check the address."}, status_code=404)

    async def failed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}", "fix": None}, status_code=500)

    routes = [
        Route("/", index), Route("/static/{path:path}", static), Route("/data/{path:path}", data_file),
        Route("/api/model", model), Route("/api/methods", methods), Route("/api/images", images),
        Route("/api/image/{image}.png", image_png), Route("/api/predict/{image}", predict),
        Route("/api/layer/{layer}", layer), Route("/api/layer/{layer}/thumb/{c}.png", thumb),
        Route("/api/channel/{layer}/{c}", channel), Route("/api/map", map_),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/jobs", jobs), Route("/api/jobs", start_job, methods=["POST"]), Route("/api/jobs/{id}", job),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={ConvscopeError: refused, 404: not_found, Exception: failed})
    if token:
        app.add_middleware(_TokenGate, token=token)
    app.state.workspace = ws
    return app


class _TokenGate:
    """ASGI middleware: 401 unless the request carries the token (see the module doc)."""

    def __init__(self, app: Any, token: str) -> None:  # noqa: ANN401
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = (request.query_params.get("token") or request.headers.get("x-convscope-token")
                 or request.cookies.get(COOKIE) or "")
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            response = JSONResponse({"error": "this server needs its access token",
                                     "fix": "Open the address with ?token=... that `convscope serve` printed."},
                                    status_code=401)
            return await response(scope, receive, send)
        if request.query_params.get("token"):
            async def send_with_cookie(message: dict) -> None:
                if message["type"] == "http.response.start":
                    cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()
                    message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
                await send(message)

            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)
