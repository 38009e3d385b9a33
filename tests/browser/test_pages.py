"""``convscope serve`` in a real headless Chromium on ``zoo:shapes-vgg``: every view clicked through,
and what is drawn checked against independent computations (a hand-written receptive-field
recursion, forward hooks written here, a naive Grad-CAM), read back from the browser's pixels."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select
from serving import activations, drawn_pixels, open_view, record_timing, wait
from torch import nn

from convscope import zoo
from convscope.data import Shapes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page(browser, server):  # noqa: ANN001, ANN201
    browser.get(server.url + "#/model")
    browser.execute_script("localStorage.clear()")
    browser.get(server.url + "#/model")
    wait(browser, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/model")
    return browser


def image_tensor(i: int) -> tuple[np.ndarray, torch.Tensor]:
    pixels = Shapes(64, seed=0, size=64).sample(i).image
    return pixels, zoo.preset("shapes-vgg").to_tensor(pixels)


# --- the model view -------------------------------------------------------------------------

def test_model_view_lists_every_layer_with_shape_and_params(page, server, shapes_vgg) -> None:  # noqa: ANN001
    open_view(page, server, "#/model")
    rows = page.find_elements(By.CSS_SELECTOR, "#layers tbody tr")
    named = dict(shapes_vgg.named_modules())
    assert [r.get_attribute("data-layer") for r in rows] == [n for n in named if n]
    for row in rows:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        module = named[row.get_attribute("data-layer")]
        assert cells[1] == type(module).__name__
        assert int(cells[3].replace(",", "")) == sum(p.numel() for p in module.parameters(recurse=False))
    x = image_tensor(0)[1]
    assert page.find_element(By.CSS_SELECTOR, '[data-layer="features.6"] td:nth-child(3)').text == \
        "×".join(map(str, [1, *activations(shapes_vgg, "features.6", x).shape]))


def test_model_view_receptive_fields_match_the_textbook_recursion(page, server, shapes_vgg) -> None:  # noqa: ANN001
    open_view(page, server, "#/model")
    size, jump = 1, 1
    for i, module in enumerate(shapes_vgg.features):
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            s = module.stride if isinstance(module.stride, int) else module.stride[0]
            size, jump = size + (k - 1) * jump, jump * s
        cell = page.find_element(By.CSS_SELECTOR, f'[data-layer="features.{i}"] td:nth-child(5)').text
        assert cell == f"{size} px, stride {jump}", (i, cell)


def test_model_view_links_to_a_layer(page, server) -> None:  # noqa: ANN001
    open_view(page, server, "#/model")
    page.find_element(By.LINK_TEXT, "features.3").click()
    wait(page, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/layer/features.3")
    assert len(page.find_elements(By.CSS_SELECTOR, ".channel-card")) == 32


# --- the layer view -------------------------------------------------------------------------

def test_layer_grid_draws_each_channels_activation(page, server, shapes_vgg) -> None:  # noqa: ANN001
    open_view(page, server, "#/layer/features.6")
    cards = page.find_elements(By.CSS_SELECTOR, ".channel-card")
    assert len(cards) == 64
    acts = activations(shapes_vgg, "features.6", image_tensor(0)[1])
    strong = int(acts.amax(dim=(1, 2)).argmax())
    silent = [c for c in range(64) if float(acts[c].max()) <= 0]
    thumb = drawn_pixels(page, page.find_element(By.CSS_SELECTOR, f'.channel-card[data-c="{strong}"] img'))
    assert thumb.shape == (96, 96, 3) and thumb.std() > 10  # an overlay with a hot place, not a flat tile
    if silent:  # a channel that never fires on the image shows no heat: only the dimmed picture
        flat = drawn_pixels(page, page.find_element(By.CSS_SELECTOR, f'.channel-card[data-c="{silent[0]}"] img'))
        assert flat.astype(int).sum(-1).max() < thumb.astype(int).sum(-1).max()


def test_layer_search_filters_by_number_and_range(page, server) -> None:  # noqa: ANN001
    open_view(page, server, "#/layer/features.6")
    search = page.find_element(By.ID, "channel-search")
    search.send_keys("1-8")
    shown = [int(c.get_attribute("data-c")) for c in page.find_elements(By.CSS_SELECTOR, ".channel-card")]
    assert shown == list(range(1, 9))
    search.clear()
    search.send_keys("c12")
    assert [c.get_attribute("data-c") for c in page.find_elements(By.CSS_SELECTOR, ".channel-card")] == ["12"]
    assert page.find_element(By.ID, "shown-count").text == "1 of 64 channels"
    search.clear()
    search.send_keys(" ")
    search.send_keys(Keys.BACKSPACE)
    assert len(page.find_elements(By.CSS_SELECTOR, ".channel-card")) == 64


def test_layer_sort_by_activation_matches_hooks(page, server, shapes_vgg) -> None:  # noqa: ANN001
    open_view(page, server, "#/layer/features.6")
    Select(page.find_element(By.ID, "channel-sort")).select_by_value("act_max")
    shown = [int(c.get_attribute("data-c")) for c in page.find_elements(By.CSS_SELECTOR, ".channel-card")]
    peaks = activations(shapes_vgg, "features.6", image_tensor(0)[1]).amax(dim=(1, 2))
    assert [float(peaks[c]) for c in shown] == pytest.approx(sorted(peaks.tolist(), reverse=True), rel=1e-5)
    Select(page.find_element(By.ID, "channel-sort")).select_by_value("index")


def test_layer_sort_survives_a_reload(page, server) -> None:  # noqa: ANN001
    open_view(page, server, "#/layer/features.3")
    Select(page.find_element(By.ID, "channel-sort")).select_by_value("act_mean")
    page.refresh()
    wait(page, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/layer/features.3")
    assert Select(page.find_element(By.ID, "channel-sort")).first_selected_option.get_attribute("value") == "act_mean"
    Select(page.find_element(By.ID, "channel-sort")).select_by_value("index")


def test_unknown_layer_says_so_with_close_names(page, server) -> None:  # noqa: ANN001
    open_view(page, server, "#/layer/feature.6")
    alert = page.find_element(By.CSS_SELECTOR, "[role=alert]").text
    assert "no layer with channels named 'feature.6'" in alert
    assert "features.6" in page.find_element(By.ID, "view").text


# --- the channel view -----------------------------------------------------------------------

def test_card_click_opens_the_channel(page, server) -> None:  # noqa: ANN001
    open_view(page, server, "#/layer/features.6")
    page.find_element(By.CSS_SELECTOR, '.channel-card[data-c="5"]').click()
    wait(page, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/channel/features.6/5")
    assert page.find_element(By.ID, "channel-title").text == "features.6 channel 5"


def test_channel_activation_is_hottest_where_the_hook_says(page, server, shapes_vgg) -> None:  # noqa: ANN001
    acts = activations(shapes_vgg, "features.6", image_tensor(0)[1])
    channel = int(acts.amax(dim=(1, 2)).argmax())
    open_view(page, server, f"#/channel/features.6/{channel}")
    drawn = drawn_pixels(page, page.find_element(By.ID, "channel-activation")).astype(float)
    a = acts[channel].numpy()
    y, x = np.unravel_index(a.argmax(), a.shape)
    cold = np.argwhere(a <= 0)
    scale = drawn.shape[0] // a.shape[0]  # 64 px drawn from a 16 x 16 map, nearest neighbour
    hot_block = drawn[y * scale:(y + 1) * scale, x * scale:(x + 1) * scale, :2].mean()  # inferno's top is yellow
    cy, cx = cold[0]
    cold_block = drawn[cy * scale:(cy + 1) * scale, cx * scale:(cx + 1) * scale, :2].mean()
    assert hot_block > cold_block + 80
    stats = page.find_element(By.ID, "activation-stats").text
    assert f"at ({y}, {x})" in stats and f"max {a.max():.3g}" in stats


def test_channel_switch_buttons_and_keys_draw_the_new_channel(page, server) -> None:  # noqa: ANN001
    open_view(page, server, "#/channel/features.6/10")
    first = drawn_pixels(page, page.find_element(By.ID, "channel-activation"))
    page.find_element(By.ID, "next-channel").click()
    wait(page, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/channel/features.6/11")
    second = drawn_pixels(page, page.find_element(By.ID, "channel-activation"))
    assert not np.array_equal(first, second)
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    wait(page, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/channel/features.6/10")
    assert np.array_equal(drawn_pixels(page, page.find_element(By.ID, "channel-activation")), first)
    open_view(page, server, "#/channel/features.6/0")
    assert page.find_element(By.ID, "prev-channel").get_attribute("disabled") is not None


def test_channel_switch_time(page, server) -> None:  # noqa: ANN001
    """Switching channels in a layer of 64 shows the new one; the browser's time is recorded
    (issue target: under 100 ms; asserted generously so that a busy machine does not fail it)."""
    open_view(page, server, "#/channel/features.6/20")
    page.execute_script("window.convscopeTimings.channel = []")
    for c in range(21, 41):
        page.find_element(By.ID, "next-channel").click()
        wait(page, lambda b, c=c: b.execute_script("return document.getElementById('view').dataset.ready") == f"#/channel/features.6/{c}")
        wait(page, lambda b: b.find_element(By.ID, "switch-time").text.startswith("shown in"))
    times = page.execute_script("return window.convscopeTimings.channel")
    assert len(times) == 20
    summary = record_timing("channel switch (features.6, 64 channels)", times)
    assert summary["median_ms"] < 1000


# --- the image view -------------------------------------------------------------------------

def test_images_view_lists_data_and_switches_the_current_image(page, server) -> None:  # noqa: ANN001
    open_view(page, server, "#/images")
    thumbs = page.find_elements(By.CSS_SELECTOR, "#image-list img")
    assert len(thumbs) >= 64
    drawn = drawn_pixels(page, page.find_element(By.CSS_SELECTOR, 'img[data-id="d3"]'))
    assert np.array_equal(drawn, image_tensor(3)[0])
    page.find_element(By.CSS_SELECTOR, 'img[data-id="d3"]').click()
    wait(page, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/image/d3")
    assert "image d3" in page.find_element(By.ID, "current-image").text
    open_view(page, server, "#/image/d0")


def test_predictions_match_the_model(page, server, shapes_vgg) -> None:  # noqa: ANN001
    open_view(page, server, "#/image/d2")
    with torch.no_grad():
        probs = torch.softmax(shapes_vgg(image_tensor(2)[1]), 1)[0]
    top = int(probs.argmax())
    first = page.find_elements(By.CSS_SELECTOR, "#predictions li")[0].text
    assert first == f"{Shapes.class_names[top]} {100 * float(probs[top]):.1f}%"


def panel_done(browser, index: int = 0):  # noqa: ANN001, ANN201
    return wait(browser, lambda b: (p := b.find_elements(By.CSS_SELECTOR, ".panel"))[index:index + 1]
                and p[index].get_attribute("data-state") in ("done", "failed") and p[index])


def naive_grad_cam(model: nn.Module, layer: str, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM written out: relu(sum_c mean(dy/dA_c) A_c), upsampled bilinearly to the input."""
    seen = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.update(a=o))
    try:
        score = model(x)[0, target]
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, seen["a"])
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * seen["a"]).sum(1, keepdim=True))
    return torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0].detach().numpy()


def test_compute_a_grad_cam_from_the_page(page, server, shapes_vgg) -> None:  # noqa: ANN001
    page.execute_script("localStorage.removeItem('convscope.panels')")
    open_view(page, server, "#/image/d0")
    panel = panel_done(page)
    Select(panel.find_element(By.CSS_SELECTOR, "select.layer")).select_by_value("features.7")
    wait(page, lambda b: "at features.7" in panel.find_element(By.CSS_SELECTOR, ".map-info").text)
    drawn = drawn_pixels(page, panel.find_element(By.CSS_SELECTOR, "img.map")).astype(float)
    picture, x = image_tensor(0)
    heat = np.clip((drawn - 0.4 * picture) / 0.6, 0, 255).sum(-1)  # the colour map's contribution
    with torch.no_grad():
        target = int(shapes_vgg(x).argmax())
    cam = naive_grad_cam(shapes_vgg, "features.7", x, target)
    y, xx = np.unravel_index(heat.argmax(), heat.shape)
    assert cam[y, xx] >= 0.8 * cam.max()  # the page's hottest pixel is where Grad-CAM is near its peak
    assert Shapes.class_names[target] in panel.find_element(By.CSS_SELECTOR, ".map-info").text
    mask = Shapes(64, seed=0, size=64).sample(0).mask  # the object's ground truth, beside the map
    peak = np.unravel_index(cam.argmax(), cam.shape)
    said = panel.find_element(By.CSS_SELECTOR, ".map-scores").text
    assert said.startswith(f"pointing game: {'hit' if mask[peak] else 'miss'}, mass on the object: ")


def test_switch_methods_and_targets(page, server) -> None:  # noqa: ANN001
    open_view(page, server, "#/image/d0")
    panel = panel_done(page)
    before = drawn_pixels(page, panel.find_element(By.CSS_SELECTOR, "img.map"))
    Select(panel.find_element(By.CSS_SELECTOR, "select.method")).select_by_value("saliency")
    wait(page, lambda b: panel.get_attribute("data-method") == "saliency" and panel.get_attribute("data-state") == "done")
    saliency = drawn_pixels(page, panel.find_element(By.CSS_SELECTOR, "img.map"))
    assert not np.array_equal(before, saliency)
    assert panel.find_element(By.CSS_SELECTOR, "select.layer").get_attribute("disabled") is not None  # no layer
    Select(panel.find_element(By.CSS_SELECTOR, "select.target")).select_by_value("0")
    wait(page, lambda b: "for circle" in panel.find_element(By.CSS_SELECTOR, ".map-info").text)
    assert not np.array_equal(saliency, drawn_pixels(page, panel.find_element(By.CSS_SELECTOR, "img.map")))


def test_several_methods_side_by_side_and_kept_over_a_reload(page, server) -> None:  # noqa: ANN001
    page.execute_script("localStorage.setItem('convscope.panels', JSON.stringify(["
                        "{method: 'grad_cam', target: 'pred', layer: ''}, {method: 'input_x_gradient', target: 'pred', layer: ''}]))")
    page.refresh()
    wait(page, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/image/d0")
    page.find_element(By.ID, "add-panel").click()
    for i in range(3):
        panel_done(page, i)
    panels = page.find_elements(By.CSS_SELECTOR, ".panel")
    assert [p.get_attribute("data-method") for p in panels] == ["grad_cam", "input_x_gradient", "saliency"]
    tops = {p.location["y"] for p in panels}
    assert len(tops) == 1  # side by side
    maps = [drawn_pixels(page, p.find_element(By.CSS_SELECTOR, "img.map")) for p in panels]
    assert all(m.std() > 5 for m in maps) and not np.array_equal(maps[0], maps[1])
    page.refresh()
    wait(page, lambda b: b.execute_script("return document.getElementById('view').dataset.ready") == "#/image/d0")
    assert len(page.find_elements(By.CSS_SELECTOR, ".panel")) == 3
    for p in page.find_elements(By.CSS_SELECTOR, ".panel")[1:]:
        p.find_element(By.CSS_SELECTOR, "button.close").click()
    assert len(page.find_elements(By.CSS_SELECTOR, ".panel")) == 1


def test_grad_cam_request_time(page, server) -> None:  # noqa: ANN001
    """Grad-CAM from the page on distinct (image, target) pairs, so none is cached; the browser's
    time from the request to the drawn map is recorded (issue target: p95 under 150 ms)."""
    page.execute_script("localStorage.setItem('convscope.panels', JSON.stringify([{method: 'grad_cam', target: 'pred', layer: ''}]))")
    times = []
    for i in range(20, 40):
        open_view(page, server, f"#/image/d{i}")
        panel = panel_done(page)
        assert panel.get_attribute("data-method") == "grad_cam"
        entry = page.execute_script("return window.convscopeTimings.map[window.convscopeTimings.map.length - 1]")
        assert entry["method"] == "grad_cam" and not entry["cached"]
        times.append(entry["ms"])
    summary = record_timing("Grad-CAM request (shapes-vgg, page to drawn map)", times)
    assert summary["p95_ms"] < 2000
    open_view(page, server, "#/image/d20")
    panel_done(page)
    entry = page.execute_script("return window.convscopeTimings.map[window.convscopeTimings.map.length - 1]")
    assert entry["cached"]


# --- uploads from the page ------------------------------------------------------------------

def test_upload_a_picture(page, server, tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[16:48, 16:48] = (230, 30, 30)
    picture += rng.integers(0, 20, picture.shape, dtype=np.uint8)
    path = tmp_path / "red-square.png"
    Image.fromarray(picture).save(path)
    open_view(page, server, "#/images")
    page.find_element(By.ID, "upload").send_keys(str(path))
    wait(page, lambda b: (b.execute_script("return document.getElementById('view').dataset.ready") or "").startswith("#/image/u"))
    assert np.array_equal(drawn_pixels(page, page.find_element(By.ID, "picture")), picture)  # 64 px: no resize
    panel_done(page)
    assert page.find_element(By.CSS_SELECTOR, ".panel").get_attribute("data-state") == "done"
    assert "upload" in page.find_element(By.ID, "current-image").text or "image u" in page.find_element(By.ID, "current-image").text


@pytest.mark.parametrize(("content", "says"), [
    (b"", "empty"),
    (b"this is text, not a picture", "not a picture"),
    (None, "damaged or cut short"),  # a PNG cut in half
])
def test_bad_upload_shows_a_message(page, server, tmp_path, content, says) -> None:  # noqa: ANN001
    if content is None:
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    open_view(page, server, "#/images")
    page.find_element(By.ID, "upload").send_keys(str(path))
    wait(page, lambda b: b.find_elements(By.CSS_SELECTOR, "#upload-message .error"))
    assert says in page.find_element(By.CSS_SELECTOR, "#upload-message .error").text
    assert page.execute_script("return document.getElementById('view').dataset.ready") == "#/images"
    time.sleep(0.05)
    open_view(page, server, "#/model")  # the server still answers
