"""Screenshots of every view of ``convscope serve``, taken by headless Chromium, for the docs.

Serves ``zoo:shapes-vgg`` over ``shapes:256``, mines the atlas of ``features.6`` and renders the
feature visualizations of its first 16 channels (as a person would from the page), then saves one
small PNG per view (palette-quantised) into the folder given.

    python tests/browser/screenshots.py docs/serve
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ensure_chromium import found  # noqa: E402
from serving import open_chromium, open_view, start_server, wait  # noqa: E402

VIEWS = [
    ("model", "#/model"),
    ("layer", "#/layer/features.6"),
    ("channel", "#/channel/features.6/7"),
    ("images", "#/images"),
    ("image", "#/image/d4"),
]


def save(browser, path: Path) -> None:  # noqa: ANN001
    picture = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(path, f"{path.stat().st_size // 1024} KiB")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    chromium, driver = found()
    if not (chromium and driver):
        raise SystemExit("needs chromium and chromedriver: python tests/browser/ensure_chromium.py")
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), data="shapes:256")
        browser = open_chromium(driver, chromium)
        browser.set_window_size(1200, 960)
        try:
            ws = server.workspace
            ws.jobs.wait(ws.start_atlas(["features.6"], k=9).id, 600)
            ws.jobs.wait(ws.start_featurevis("features.6", list(range(16)), steps=96).id, 600)
            browser.get(server.url + "#/model")
            browser.execute_script("localStorage.clear(); localStorage.setItem('convscope.panels', JSON.stringify(["
                                   "{method: 'grad_cam', target: 'pred', layer: ''}, {method: 'guided_backprop', target: 'pred', "
                                   "layer: ''}, {method: 'integrated_gradients', target: 'pred', layer: ''}]))")
            for name, where in VIEWS:
                open_view(browser, server, where)
                wait(browser, lambda b: b.execute_script(
                    "return [...document.images].every(i => i.complete || i.getBoundingClientRect().top > innerHeight) && "
                    "[...document.querySelectorAll('.panel')].every(p => p.dataset.state === 'done')"), 60)
                save(browser, out / f"{name}.png")
            ws.start_featurevis("features.3", list(range(32)), steps=256)  # a job, shown while it runs
            open_view(browser, server, "#/layer/features.3")
            browser.execute_script("pollJobs()")
            wait(browser, lambda b: b.execute_script("const j = document.querySelector('#jobs .job.running'); "
                                                     "return !!j && j.querySelector('progress').value > 0"), 120)
            save(browser, out / "job.png")
        finally:
            browser.quit()
            server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/serve"))
