"""``convscope serve`` as a person sees it: times measured in headless Chromium, beside the library
call alone, in one run on one machine.

- Grad-CAM on shapes-vgg (64 px): ``GradCAM.attribute`` alone (the reference), the HTTP request
  ``/api/map`` uncached, and the page (request to drawn map, ``performance.now()`` in the browser),
  each over distinct images so that nothing is cached;
- Grad-CAM on ResNet-18 (random weights, 224 px): the method alone and the HTTP request, over
  distinct target classes of one uploaded picture;
- switching channels in a layer of 64 (``features.6``): the page's click to the new activation drawn;
- the first view of an atlas of 64 channels x 9 crops (``features.6`` over ``shapes:256``): from
  navigation to every thumbnail painted, and a channel's 9 crops with their projections.

Rows report medians, with the 95th percentile in the note; ratios are to the library call alone.
Needs chromium and chromedriver (``tests/browser/ensure_chromium.py``).

    python -m benchmarks.bench_serve [--quick]
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import Row, Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "browser"))  # the browser helpers of the end-to-end tests


def _summary(ms: list[float]) -> tuple[float, str]:
    values = np.asarray(ms)
    return float(np.median(values)) / 1000, f"p95 {np.percentile(values, 95):.0f} ms, n = {len(values)}"


def _row(table: Table, name: str, ms: list[float]) -> None:
    seconds, note = _summary(ms)
    table.rows.append(Row(name, seconds, note=note))


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=120) as response:
        return json.loads(response.read())


def _timed_requests(urls: list[str]) -> list[float]:
    times = []
    for url in urls:
        start = time.perf_counter()
        _get(url)
        times.append(1000 * (time.perf_counter() - start))
    return times


def _method_alone(ws, xs: list[torch.Tensor], targets: list[int]) -> list[float]:  # noqa: ANN001
    """Grad-CAM called directly, under the server's model lock (the page may be using the model)."""
    from convscope.methods import GradCAM

    times = []
    for x, t in zip(xs, targets):
        with ws.lock:
            start = time.perf_counter()
            GradCAM(ws.loaded.model, max_batch=64).attribute(x, target=[t])
            times.append(1000 * (time.perf_counter() - start))
    return times


def _wait(browser, condition, timeout: float = 60):  # noqa: ANN001, ANN202
    from serving import wait

    return wait(browser, condition, timeout)


def _shapes_vgg(quick: bool, browser, work: Path) -> list[Table]:  # noqa: ANN001
    from serving import open_view

    from convscope.models import load_model
    from convscope.serve.app import build_app
    from convscope.serve.cli import ServerThread
    from convscope.serve.workspace import Workspace

    n = 10 if quick else 50
    loaded = load_model("zoo:shapes-vgg")
    ws = Workspace(loaded, "shapes:256", work / "vgg")
    server = ServerThread(build_app(ws))
    try:
        cam = Table("Grad-CAM on shapes-vgg (64 px), one image per request, uncached, interleaved",
                    reference="GradCAM.attribute alone")
        xs = [ws.picture(f"d{i}")[1] for i in range(n)]
        _method_alone(ws, xs[:2], [0, 0])  # warm-up
        browser.get(server.url + "#/model")
        browser.execute_script("localStorage.clear(); localStorage.setItem('convscope.panels', "
                               "JSON.stringify([{method: 'grad_cam', target: '2', layer: ''}]))")
        alone, http, page = [], [], []
        for i in range(n):  # the three in turn, each on its own (image, class): nothing is cached
            alone += _method_alone(ws, [xs[i]], [0])
            http += _timed_requests([f"{server.url}api/map?image=d{i}&method=grad_cam&target=1"])
            open_view(browser, server, f"#/image/d{i}")
            _wait(browser, lambda b: b.execute_script("const p = document.querySelector('.panel'); "
                                                      "return p && p.dataset.state === 'done'"))
            page.append(browser.execute_script("const m = window.convscopeTimings.map; return m[m.length - 1].ms"))
        _row(cam, "GradCAM.attribute alone", alone)
        _row(cam, "HTTP GET /api/map", http)
        _row(cam, "page: request to drawn map", page)

        switch = Table("switching channels in features.6 (64 channels), shapes-vgg", reference="HTTP GET /api/channel")
        _row(switch, "HTTP GET /api/channel", _timed_requests(
            [f"{server.url}api/channel/features.6/{c}?image=d0" for c in range(64)]))
        open_view(browser, server, "#/channel/features.6/0")
        browser.execute_script("window.convscopeTimings.channel = []")
        for c in range(1, 21 if quick else 61):
            browser.find_element("id", "next-channel").click()
            _wait(browser, lambda b, c=c: b.execute_script("return document.getElementById('view').dataset.ready")
                  == f"#/channel/features.6/{c}" and len(b.execute_script("return window.convscopeTimings.channel")) == c)
        _row(switch, "page: click to new channel drawn", browser.execute_script("return window.convscopeTimings.channel"))

        atlas = Table("first view of an atlas of 64 channels x 9 crops (features.6 over shapes:256)",
                      reference="HTTP GET /api/layer")
        job = ws.start_atlas(["features.6"], k=9)
        done = ws.jobs.wait(job.id, 600)
        assert done.state == "done", done.error
        atlas.notes.append(f"mining and projecting the atlas took {done.as_dict()['elapsed']:.1f} s (a background job)")
        _row(atlas, "HTTP GET /api/layer", _timed_requests([f"{server.url}api/layer/features.6?image=d0"] * 5))
        paints, channel = [], []
        for _ in range(3 if quick else 5):
            browser.get(server.url + "#/model")
            _wait(browser, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/model")
            start = browser.execute_script("return performance.now()")
            browser.execute_script("location.hash = '#/layer/features.6'")
            _wait(browser, lambda b: b.execute_script(
                "const i = [...document.querySelectorAll('.channel-card img')]; "
                "return i.length === 64 && i.every(x => x.complete && x.naturalWidth > 0)"))
            paints.append(browser.execute_script("return performance.now()") - start)
            start = browser.execute_script("return performance.now()")
            browser.execute_script("location.hash = '#/channel/features.6/7'")
            _wait(browser, lambda b: b.execute_script(
                "const i = document.getElementById('channel-atlas'); return !!i && i.complete && i.naturalWidth > 0"))
            channel.append(browser.execute_script("return performance.now()") - start)
        _row(atlas, "page: layer grid, every thumbnail painted", paints)
        _row(atlas, "page: channel view with 9 crops and projections", channel)
        return [cam, switch, atlas]
    finally:
        server.stop()


def _resnet(quick: bool, work: Path) -> Table:
    from PIL import Image

    from convscope.models import load_model
    from convscope.serve.app import build_app
    from convscope.serve.cli import ServerThread
    from convscope.serve.workspace import Workspace

    loaded = load_model("torchvision:resnet18")
    ws = Workspace(loaded, None, work / "resnet")
    picture = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    image = ws.add_upload(buffer.getvalue())
    n = 8 if quick else 30
    table = Table("Grad-CAM on ResNet-18 (random weights, 224 px), one class per request, uncached",
                  reference="GradCAM.attribute alone")
    x = ws.picture(image)[1]
    server = ServerThread(build_app(ws))
    try:
        _method_alone(ws, [x], [0])  # warm-up
        _get(f"{server.url}api/map?image={image}&method=grad_cam&target=0")
        alone, http = [], []
        for t in range(1, n + 1):
            alone += _method_alone(ws, [x], [100 + t])
            http += _timed_requests([f"{server.url}api/map?image={image}&method=grad_cam&target={t}"])
        _row(table, "GradCAM.attribute alone", alone)
        _row(table, "HTTP GET /api/map", http)
    finally:
        server.stop()
    return table


def run(quick: bool = False) -> list[Table]:
    from ensure_chromium import found
    from serving import open_chromium

    torch.set_num_threads(2)
    chromium, driver = found()
    if not (chromium and driver):
        raise SystemExit("bench_serve needs chromium and chromedriver: python tests/browser/ensure_chromium.py")
    browser = open_chromium(driver, chromium)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            tables = _shapes_vgg(quick, browser, Path(tmp))
        finally:
            browser.quit()
        tables.append(_resnet(quick, Path(tmp)))
    return tables


if __name__ == "__main__":
    for t in run(quick="--quick" in sys.argv):
        print(t.markdown())
