"""Helpers of the end-to-end tests of ``convscope serve``: a real uvicorn server in a thread, pixel
read-back of what the browser drew, and the timings file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convscope.serve.cli import ServerThread

TIMINGS = Path(os.environ.get("CONVSCOPE_SERVE_TIMINGS", Path(__file__).parent / "timings.json"))


def open_chromium(driver_path: str, chromium: str):  # noqa: ANN201
    """Debian's chromium, headless, driven by Selenium through ``driver_path``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--disable-extensions", "--no-first-run", "--allow-file-access-from-files"):  # exported sites
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver_path), options=options)
    chrome.set_script_timeout(30)
    return chrome


class Server(ServerThread):
    """A running server (:class:`convscope.serve.cli.ServerThread`) with the ``workspace`` behind it."""

    def __init__(self, app, workspace) -> None:  # noqa: ANN001
        super().__init__(app)
        self.workspace = workspace

    def stop(self) -> None:
        super().stop()
        self.workspace.jobs.stop()


def start_server(tmp: Path, data: str | None = "shapes:64", **app_options) -> Server:  # noqa: ANN003
    from convscope.models import load_model
    from convscope.serve.app import build_app
    from convscope.serve.workspace import Workspace

    ws = Workspace(load_model("zoo:shapes-vgg"), data, tmp / "work", max_upload=1 << 20)
    return Server(build_app(ws, **app_options), ws)


def record_timing(name: str, values: list[float]) -> dict[str, float]:
    """Add ``values`` (ms) under ``name`` to the timings file, and return their summary."""
    values = sorted(values)
    summary = {"n": len(values), "median_ms": round(float(np.median(values)), 1),
               "p95_ms": round(float(np.percentile(values, 95)), 1), "max_ms": round(values[-1], 1)}
    found_before = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    found_before[name] = summary
    TIMINGS.write_text(json.dumps(found_before, indent=2))
    print(f"\n{name}: {summary}")
    return summary


_CANVAS = """
const img = arguments[0];
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d');
g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
const rgb = [];
for (let i = 0; i < d.length; i += 4) rgb.push(d[i], d[i + 1], d[i + 2]);
return [c.width, c.height, rgb];
"""


def drawn_pixels(driver, element) -> np.ndarray:  # noqa: ANN001
    """What the browser decoded for an <img>: its pixels read back through a canvas, uint8 [H, W, 3]."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20, poll_frequency=0.02).until(lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", element))
    width, height, flat = driver.execute_script(_CANVAS, element)
    return np.asarray(flat, dtype=np.uint8).reshape(height, width, 3)


def wait(browser, condition, timeout: float = 20):  # noqa: ANN001, ANN201
    """Poll ``condition(browser)`` every 20 ms until it is truthy (its value), or time out."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.02,  # a redrawn view leaves stale elements: retry
                         ignored_exceptions=[StaleElementReferenceException]).until(condition)


def open_view(browser, server, where: str) -> None:  # noqa: ANN001
    """Navigate to ``where`` (``#/...``) and wait until the page says the view is drawn."""
    if browser.current_url.startswith(server.url):
        browser.execute_script("location.hash = arguments[0]", where)
    else:
        browser.get(server.url + where)
    wait(browser, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == where)


def activations(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The output of ``layer`` on ``x``, by a forward hook written here."""
    seen = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.update(out=o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen["out"][0]
