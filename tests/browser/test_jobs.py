"""Background jobs in the browser: an atlas mined from the page survives a reload while it runs,
then the layer grid and the channel view show its patches (checked against a top-k search over
the data written here); feature visualizations rendered by a job appear in the views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from selenium.webdriver.common.by import By
from serving import activations, drawn_pixels, open_view, wait

from convscope import zoo
from convscope.data import Shapes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page(browser, server):  # noqa: ANN001, ANN201
    browser.get(server.url + "#/model")
    browser.execute_script("localStorage.clear()")
    return browser


def job_state(browser, job: int | None = None) -> str | None:  # noqa: ANN001
    """The state the page shows for job ``job`` (None: the last one listed)."""
    return browser.execute_script("const j = document.querySelectorAll(arguments[0] === null ? '#jobs .job' : "
                                  "'#jobs .job[data-job=\"' + arguments[0] + '\"]'); "
                                  "return j.length ? j[j.length - 1].dataset.state : null", job)


def test_reload_during_an_atlas_job_then_see_the_atlas(page, server, shapes_vgg) -> None:  # noqa: ANN001
    open_view(page, server, "#/layer/features.3")
    assert "activation on the current image" in page.find_element(By.ID, "thumb-source").text
    server.workspace.lock.acquire()  # holds the job at its first step, whatever the machine's speed
    try:
        page.find_element(By.ID, "mine-layer").click()
        wait(page, lambda b: job_state(b) == "running")
        page.refresh()
        wait(page, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/layer/features.3")
        wait(page, lambda b: job_state(b) == "running")  # the reloaded page finds the job and polls it
        assert "mining features.3" in page.execute_script("return document.querySelector('#jobs .job .stage').textContent")
    finally:
        server.workspace.lock.release()
    wait(page, lambda b: job_state(b) == "done", timeout=60)
    wait(page, lambda b: "atlas" in b.find_element(By.ID, "thumb-source").text)
    # the atlas's answer, from hooks over the same 64 images: each channel's strongest image
    preprocess = zoo.preset("shapes-vgg")
    x = preprocess.to_tensor(Shapes(64, seed=0, size=64).arrays()[0])
    acts = torch.stack([activations(shapes_vgg, "features.3", x[i:i + 1]) for i in range(64)])  # [64, C, h, w]
    peaks = acts.amax(dim=(2, 3))  # [image, channel]
    channel = int(peaks.max(0).values.argmax())
    open_view(page, server, f"#/channel/features.3/{channel}")
    text = page.find_element(By.ID, "view").text
    best = int(peaks[:, channel].argmax())
    assert f"{float(peaks[best, channel]):.3g} @ #{best}" in text
    strip = drawn_pixels(page, page.find_element(By.ID, "channel-atlas"))
    assert strip.std() > 10
    # the first patch (upscaled, nearest) is a piece of the strongest image, around its strongest unit
    y, xx = np.unravel_index(int(acts[best, channel].argmax()), acts.shape[2:])
    image = Shapes(64, seed=0, size=64).sample(best).image
    scale = strip.shape[0] // 2 // 8  # two rows (patches, projections) of 8 px receptive fields
    patch = strip[:8 * scale:scale, :8 * scale:scale]
    hits = [(oy, ox) for oy in range(57) for ox in range(57) if np.array_equal(image[oy:oy + 8, ox:ox + 8], patch)]
    if 2 <= y <= 28 and 2 <= xx <= 28:  # an interior unit: its whole field is in the image
        assert hits and all(abs(oy - 2 * y) <= 4 and abs(ox - 2 * xx) <= 4 for oy, ox in hits)
    thumb = drawn_pixels(page, page.find_elements(By.CSS_SELECTOR, "#current-image img")[0])
    assert thumb.shape == (64, 64, 3)


def test_atlas_grid_sorts_by_the_strongest_in_data(page, server) -> None:  # noqa: ANN001
    open_view(page, server, "#/layer/features.3")
    from selenium.webdriver.support.ui import Select

    Select(page.find_element(By.ID, "channel-sort")).select_by_value("atlas_max")
    values = server.workspace.atlas("features.3").topk("features.3").values.max(axis=1)
    shown = [int(c.get_attribute("data-c")) for c in page.find_elements(By.CSS_SELECTOR, ".channel-card")]
    assert [values[c] for c in shown] == sorted(values, reverse=True)
    thumb = drawn_pixels(page, page.find_element(By.CSS_SELECTOR, f'.channel-card[data-c="{shown[0]}"] img'))
    assert thumb.shape == (96, 96, 3) and thumb.std() > 5
    Select(page.find_element(By.ID, "channel-sort")).select_by_value("index")


def test_feature_visualization_job_raises_its_channel(page, server, shapes_vgg) -> None:  # noqa: ANN001
    result = page.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('api/jobs', {method: 'POST', headers: {'Content-Type': 'application/json'},
              body: JSON.stringify({kind: 'featurevis', layer: 'features.0', channels: [0, 1], steps: 24})})
          .then(r => r.json()).then(done);""")
    assert result["kind"] == "featurevis"
    open_view(page, server, "#/model")
    page.execute_script("pollJobs()")
    wait(page, lambda b: job_state(b, result["id"]) in ("done", "failed"), timeout=60)
    assert job_state(page, result["id"]) == "done"
    open_view(page, server, "#/channel/features.0/0")
    drawn = drawn_pixels(page, page.find_element(By.ID, "channel-featurevis"))
    preprocess = zoo.preset("shapes-vgg")
    small = np.array(Image.fromarray(drawn).resize((64, 64), Image.BILINEAR))
    grey = np.full_like(small, 128)
    rendered, flat = (activations(shapes_vgg, "features.0", preprocess.to_tensor(a))[0].mean() for a in (small, grey))
    assert float(rendered) > float(flat)  # what was rendered excites channel 0 more than a grey picture


def test_export_the_computed_views_as_a_static_site(page, server, tmp_path) -> None:  # noqa: ANN001
    from convscope.serve.export import export_site

    server.workspace.map_png("d5", "grad_cam", "pred", None)
    index = export_site(server.workspace, tmp_path / "site")
    text = index.read_text()
    assert 'href="layer-features.3.html"' in text and 'href="maps.html"' in text and "<script" not in text
    page.get(index.as_uri())  # no server: the files alone
    page.find_element(By.LINK_TEXT, "features.3").click()
    wait(page, lambda b: b.current_url.endswith("layer-features.3.html"))
    strips = page.find_elements(By.CSS_SELECTOR, 'img[alt$="atlas"]')
    assert len(strips) == 32
    atlas = server.workspace.atlas("features.3")
    first = drawn_pixels(page, strips[0])
    scale = first.shape[0] // 2 // atlas.patches("features.3").shape[2]
    assert np.array_equal(first[:atlas.patches("features.3").shape[2] * scale:scale, :first.shape[1] // scale * scale:scale],
                          np.concatenate(list(atlas.patches("features.3")[0]), axis=1))  # channel 0's patches, in order
    page.get((tmp_path / "site" / "maps.html").as_uri())
    maps = page.find_elements(By.CSS_SELECTOR, "img")
    assert maps and all(drawn_pixels(page, m).std() > 5 for m in maps)
    page.get(server.url + "#/model")
