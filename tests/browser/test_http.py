"""``convscope serve`` over plain HTTP: paths that try to leave the served folders (raw, through a
real uvicorn, so nothing normalises them on the way), bad uploads, the access token, concurrent
map requests, API mistakes, and the command itself (address, token, Ctrl-C)."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving import start_server

from convscope.serve.paths import PathRefused, safe_path

SECRET = b"the secret outside the served folder"


def get(url: str, path: str, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """One raw request: ``path`` goes on the wire exactly as written."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder_server(shapes_vgg, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """A server whose DATA is a folder with two pictures, a symlink inside and one pointing out."""
    root = tmp_path_factory.mktemp("http")
    (root / "secret.txt").write_bytes(SECRET)
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    (data / "a.png").write_bytes(png_bytes(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    (data / "sub" / "b.png").write_bytes(png_bytes(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)))
    (data / "inside.png").symlink_to(data / "a.png")
    (data / "out.txt").symlink_to(root / "secret.txt")
    (data / "sub" / "up").symlink_to(root)
    running = start_server(root, data=str(data))
    yield running, data
    running.stop()


# --- paths ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["../secret.txt", "a/../../secret.txt", "/etc/passwd", "C:/Windows/win.ini",
                                  "sub\\..\\..\\secret.txt", "%2e%2e/secret.txt", "", "a.png\0.txt"])
def test_safe_path_refuses_before_the_disk(tmp_path: Path, path: str) -> None:
    with pytest.raises(PathRefused) as err:
        safe_path(tmp_path, path)
    assert err.value.status == 400


def test_safe_path_follows_symlinks_and_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.png").write_bytes(b"x")
    (tmp_path / "in" / "same.png").symlink_to(tmp_path / "in" / "x.png")
    (tmp_path / "outside.txt").write_bytes(SECRET)
    (tmp_path / "in" / "away").symlink_to(tmp_path)
    assert safe_path(tmp_path / "in", "same.png") == (tmp_path / "in" / "x.png").resolve()
    assert safe_path(tmp_path / "in", "away/in/x.png") == (tmp_path / "in" / "x.png").resolve()  # out and back in
    with pytest.raises(PathRefused) as err:
        safe_path(tmp_path / "in", "away/outside.txt")
    assert err.value.status == 403


@pytest.mark.parametrize("path", [
    "/data/../secret.txt", "/data/%2e%2e/secret.txt", "/data/%2E%2E%2Fsecret.txt", "/data/..%2fsecret.txt",
    "/data/%252e%252e/secret.txt", "/data//%2e%2e/secret.txt", "/data/%2F..%2Fsecret.txt", "/data/sub/../../secret.txt",
    "/data/out.txt", "/data/sub/up/secret.txt", "/data/..%5csecret.txt", "/static/..%2f..%2fserve%2fapp.py",
    "/static/%2e%2e/app.py", "/data/" + "%2e%2e/" * 8 + "etc/passwd", "/api/image/..%2f..%2fsecret.png",
])
def test_requests_never_leave_the_served_folders(folder_server, path: str) -> None:  # noqa: ANN001
    server, _ = folder_server
    status, body, _ = get(server.url, path)
    assert status in (400, 403, 404), (path, status)
    assert SECRET not in body and b"import" not in body and b"root:" not in body
    assert "error" in json.loads(body)


def test_files_inside_the_folder_are_served(folder_server) -> None:  # noqa: ANN001
    server, data = folder_server
    for name in ("a.png", "sub/b.png", "inside.png", "sub%2Fb.png"):
        status, body, headers = get(server.url, "/data/" + name)
        assert status == 200, name
        assert body == (data / name.replace("%2F", "/")).read_bytes()
    status, body, _ = get(server.url, "/static/app.js")
    assert status == 200 and b"convscope" in body
    images = json.loads(get(server.url, "/api/images")[1])
    assert [im["name"] for im in images] == ["a.png", "inside.png", "sub/b.png"]


# --- uploads --------------------------------------------------------------------------------

def bomb() -> bytes:
    """A small PNG file that decodes to 50 million pixels."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 5_000)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"", 400, "empty"),
    (b"GIF89a but not really", 415, "not a picture"),
    (b"plain text", 415, "not a picture"),
    (png_bytes(np.zeros((64, 64, 3), np.uint8))[:60], 400, "damaged or cut short"),
    (b"\0" * ((1 << 20) + 1), 413, "over the limit"),
    (None, 413, "pixels"),
])
def test_bad_uploads_get_a_clear_4xx(folder_server, body: bytes | None, status: int, says: str) -> None:  # noqa: ANN001
    server, _ = folder_server
    got, answer, _ = get(server.url, "/api/upload", "POST", bomb() if body is None else body,
                         {"Content-Type": "application/octet-stream"})
    assert got == status
    assert says in json.loads(answer)["error"]
    assert get(server.url, "/api/model")[0] == 200  # and the server carries on


def test_declared_size_over_the_limit_is_refused_before_reading(folder_server) -> None:  # noqa: ANN001
    server, _ = folder_server
    got, answer, _ = get(server.url, "/api/upload", "POST", b"x", {"Content-Length": str(50 << 20)})
    assert got == 413 and "over the limit" in json.loads(answer)["error"]


def test_an_upload_is_kept_and_explained(folder_server) -> None:  # noqa: ANN001
    server, _ = folder_server
    pixels = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    got, answer, _ = get(server.url, "/api/upload", "POST", png_bytes(pixels), {"Content-Type": "image/png"})
    assert got == 201
    image = json.loads(answer)["id"]
    status, body, _ = get(server.url, f"/api/image/{image}.png")
    assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), pixels)
    status, body, _ = get(server.url, f"/api/map?image={image}&method=saliency")
    assert status == 200 and json.loads(body)["png"].startswith("data:image/png;base64,")
    assert json.loads(body)["scores"] is None  # no object mask for an upload


# --- API mistakes ---------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "status", "says"), [
    ("/api/map?image=d0&method=grad-cma", 400, "grad_cam"),
    ("/api/map?image=d99999&method=saliency", 404, "no image"),
    ("/api/map?method=saliency", 400, "?image=ID"),
    ("/api/map?image=d0&method=grad_cam&layer=features.66", 400, "features.6"),
    ("/api/channel/features.3/99", 400, "channels 0..31"),
    ("/api/channel/features.3/x", 400, "not a whole number"),
    ("/api/layer/classifier.1", 400, "no layer with channels"),
    ("/api/jobs/12345", 404, "no job"),
])
def test_api_mistakes_say_what_to_do(folder_server, path: str, status: int, says: str) -> None:  # noqa: ANN001
    server, _ = folder_server
    got, body, _ = get(server.url, path)
    answer = json.loads(body)
    assert got == status and says in answer["error"] + " " + str(answer["fix"])


@pytest.mark.parametrize(("body", "says"), [
    (b"{not json", "not JSON"), (b"[1, 2]", "JSON object"), (b'{"kind": "dance"}', "unknown job kind"),
    (b'{"kind": "atlas", "layers": []}', "list of layers"), (b'{"kind": "atlas", "layers": ["nope"]}', "nope"),
    (b'{"kind": "atlas", "layers": ["features.3"], "k": 0}', "from 1 to 64"),
    (b'{"kind": "atlas", "layers": ["features.3"], "k": "many"}', "not a whole number"),
    (b'{"kind": "featurevis", "layer": "features.0", "channels": ["a"]}', "not a whole number"),
    (b'{"kind": "featurevis", "layer": "features.0", "channels": [99]}', "channels 0..15"),
    (b'{"kind": "featurevis", "layer": "features.0", "channels": [0], "steps": 0}', "from 1 to 10000"),
])
def test_bad_job_requests(folder_server, body: bytes, says: str) -> None:  # noqa: ANN001
    server, _ = folder_server
    got, answer, _ = get(server.url, "/api/jobs", "POST", body, {"Content-Type": "application/json"})
    assert got == 400 and says in json.loads(answer)["error"]


# --- concurrency ----------------------------------------------------------------------------

def test_twenty_concurrent_map_requests_all_answer_correctly(server, tmp_path: Path) -> None:  # noqa: ANN001
    requests = [(f"d{i}", method, target) for i, (method, target) in
                enumerate([(m, t) for m in ("grad_cam", "saliency", "input_x_gradient", "guided_backprop") for t in range(5)])]
    answers: dict[int, tuple[int, dict]] = {}

    def ask(n: int) -> None:
        image, method, target = requests[n]
        status, body, _ = get(server.url, f"/api/map?image={image}&method={method}&target={target}")
        answers[n] = (status, json.loads(body))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 20 and all(status == 200 for status, _ in answers.values())
    # the same maps, one at a time, from a second workspace on the same model
    from convscope.models import load_model
    from convscope.serve.workspace import Workspace

    alone = Workspace(load_model("zoo:shapes-vgg"), "shapes:64", tmp_path / "alone")
    for n, (image, method, target) in enumerate(requests):
        expected = alone.map_png(image, method, target, None)
        got = answers[n][1]
        assert (got["image"], got["method"], got["target"]) == (image, method, target)
        assert got["png"] == expected["png"] and got["max"] == pytest.approx(expected["max"], rel=1e-5)


# --- the token and the host check -----------------------------------------------------------

def test_token_gate(tmp_path: Path, shapes_vgg) -> None:  # noqa: ANN001
    server = start_server(tmp_path, data=None, token="s3cret")
    try:
        status, body, _ = get(server.url, "/api/model")
        assert status == 401 and "token" in json.loads(body)["fix"]
        assert get(server.url, "/api/model?token=wrong")[0] == 401
        status, _, headers = get(server.url, "/?token=s3cret")
        assert status == 200 and headers["set-cookie"].startswith("convscope_token=s3cret;")
        assert get(server.url, "/api/model", headers={"Cookie": "convscope_token=s3cret"})[0] == 200
        assert get(server.url, "/api/model", headers={"X-Convscope-Token": "s3cret"})[0] == 200
    finally:
        server.stop()


def test_loopback_server_refuses_other_host_names(tmp_path: Path, shapes_vgg) -> None:  # noqa: ANN001
    server = start_server(tmp_path, data=None, allowed_hosts=["127.0.0.1", "localhost"])
    try:
        assert get(server.url, "/api/model", headers={"Host": "evil.example"})[0] == 400  # DNS rebinding
        assert get(server.url, "/api/model", headers={"Host": "localhost:8765"})[0] == 200
        assert get(server.url, "/api/model")[0] == 200
    finally:
        server.stop()


def test_the_command_prints_a_token_and_stops_on_ctrl_c(tmp_path: Path, zoo_cache: Path, shapes_vgg) -> None:  # noqa: ANN001
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "convscope.cli", "serve", "zoo:shapes-vgg", "shapes:8", "--host",
                             "0.0.0.0", "--port", "0", "--work", str(tmp_path / "work")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("convscope: serving zoo:shapes-vgg at http://127.0.0.1:") and "?token=" in line
        url = line.split(" at ")[1].split()[0]
        base, token = url.split("?token=")
        assert get(base, "/api/images")[0] == 401
        assert get(base, f"/api/images?token={token}")[0] == 200
        spec = json.dumps({"kind": "atlas", "layers": ["features.3"], "images": 50_000})  # minutes of mining
        job = json.loads(get(base, f"/api/jobs?token={token}", "POST", spec.encode())[1])
        end = time.monotonic() + 60
        while json.loads(get(base, f"/api/jobs/{job['id']}?token={token}")[1])["done"] < 1:  # a batch mined
            assert time.monotonic() < end
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # while the job runs: it stops after its current batch
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopping the running job" in out and "stopped" in out
    assert "Traceback" not in err and "terminate" not in err
    with pytest.raises(OSError):
        get(base, "/api/images")  # nothing listens any more


def test_stopping_cancels_the_running_job_and_skips_the_queued() -> None:
    from convscope.serve.jobs import Jobs

    jobs, steps = Jobs(), []

    def slow(job) -> None:  # noqa: ANN001
        for i in range(1000):
            steps.append(i)
            job.advance(i, 1000, "working")
            time.sleep(0.01)

    running, queued = jobs.submit("test", "slow", slow), jobs.submit("test", "never", lambda job: steps.append(-1))
    while running.state != "running" or not steps:
        time.sleep(0.01)
    jobs.stop(timeout=10)
    assert running.as_dict()["state"] == "cancelled" and len(steps) < 1000
    assert queued.as_dict()["state"] == "cancelled" and -1 not in steps


def test_the_command_refuses_a_bad_port(zoo_cache: Path) -> None:
    from convscope.cli import main

    assert main(["serve", "zoo:shapes-vgg", "--port", "70000"]) == 2


def test_the_command_exports_without_serving(tmp_path: Path, zoo_cache: Path, shapes_vgg, capsys) -> None:  # noqa: ANN001
    from convscope.cli import main
    from convscope.models import load_model
    from convscope.serve.workspace import Workspace

    work = tmp_path / "work"
    Workspace(load_model("zoo:shapes-vgg"), "shapes:8", work).map_png("d1", "saliency", "pred", None)
    assert main(["serve", "zoo:shapes-vgg", "shapes:8", "--work", str(work), "--export", str(tmp_path / "site")]) == 0
    index = Path(capsys.readouterr().out.strip())
    assert index == tmp_path / "site" / "index.html" and 'href="maps.html"' in index.read_text()
    (kept,) = (work / "maps").glob("d1-saliency-*.png")
    assert (tmp_path / "site" / "img" / f"map-{kept.name}").read_bytes() == kept.read_bytes()
    page = (tmp_path / "site" / "maps.html").read_text()
    assert f'src="img/map-{kept.name}"' in page and "pointing game: " in page  # shapes:8 knows its masks


def test_serving_leaves_the_model_as_it_was(folder_server) -> None:  # noqa: ANN001
    """After maps, activations, predictions and refused requests, the model holds no hook, is still in
    eval mode, and its weights hash as before them."""
    from convscope.atlas.store import model_hash

    server, _ = folder_server
    model = server.workspace.loaded.model
    before = model_hash(model)
    for path in ("/api/map?image=d0&method=grad_cam&layer=features.7", "/api/map?image=d0&method=guided_backprop",
                 "/api/channel/features.3/4?image=d0", "/api/layer/features.6?image=d2", "/api/predict/d1",
                 "/api/map?image=d0&method=grad_cam&layer=classifier.9", "/api/channel/features.3/400?image=d0"):
        get(server.url, path)
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    assert not any(m.training for m in model.modules())
    assert model_hash(model) == before
