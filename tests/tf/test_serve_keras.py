"""``convscope serve`` on a Keras model, in headless Chromium: the model, layer, channel and image
views, checked against Keras itself (sub-models written here read the layers' outputs)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TF_MISSING

tf = pytest.importorskip("tensorflow", reason=TF_MISSING)
keras = pytest.importorskip("keras", reason=TF_MISSING)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "browser"))  # the browser test helpers
from ensure_chromium import found  # noqa: E402
from serving import Server, drawn_pixels, open_chromium, open_view, wait  # noqa: E402

pytestmark = [pytest.mark.tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    path = tmp_path_factory.mktemp("keras") / "tiny.keras"
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.fixture(scope="module")
def served(keras_file: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from convscope.models import load_model
    from convscope.serve.app import build_app
    from convscope.serve.workspace import Workspace

    ws = Workspace(load_model(str(keras_file)), "shapes:8", tmp_path_factory.mktemp("work"))
    server = Server(build_app(ws), ws)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(served):  # noqa: ANN001, ANN201
    chromium, driver = found()
    if not (chromium and driver):
        pytest.skip("no chromium/chromedriver on PATH: install Debian's chromium and chromium-driver")
    browser = open_chromium(driver, chromium)
    browser.get(served.url + "#/model")
    browser.execute_script("localStorage.clear()")
    yield browser
    browser.quit()


def layer_output(served, layer: str, image: str) -> np.ndarray:  # noqa: ANN001
    """``layer``'s output [h, w, C] on ``image``, by a Keras sub-model written here."""
    model = served.workspace.loaded.model
    sub = keras.Model(model.inputs[0], model.get_layer(layer).output)
    return np.asarray(sub(served.workspace.picture(image)[1], training=False))[0]


def test_keras_model_view(page, served) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    open_view(page, served, "#/model")
    model = served.workspace.loaded.model
    rows = {r.get_attribute("data-layer"): [c.text for c in r.find_elements(By.TAG_NAME, "td")]
            for r in page.find_elements(By.CSS_SELECTOR, "#layers tbody tr")}
    for name in ("conv1", "relu1", "pool1", "conv2", "relu2", "gap", "logits"):
        assert int(rows[name][3].replace(",", "")) == model.get_layer(name).count_params()
    assert rows["conv2"][2] == "1×16×16×16" and rows["logits"][2] == "1×4"


def test_keras_layer_grid_sorted_by_activation(page, served) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_view(page, served, "#/layer/relu2")
    assert len(page.find_elements(By.CSS_SELECTOR, ".channel-card")) == 16
    Select(page.find_element(By.ID, "channel-sort")).select_by_value("act_max")
    shown = [int(c.get_attribute("data-c")) for c in page.find_elements(By.CSS_SELECTOR, ".channel-card")]
    peaks = layer_output(served, "relu2", "d0").max(axis=(0, 1))
    assert list(peaks[shown]) == pytest.approx(sorted(peaks, reverse=True), rel=1e-5)
    assert drawn_pixels(page, page.find_element(By.CSS_SELECTOR, f'.channel-card[data-c="{shown[0]}"] img')).std() > 5


def test_keras_channel_view(page, served) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    acts = layer_output(served, "conv2", "d0")
    channel = int(acts.max(axis=(0, 1)).argmax())
    open_view(page, served, f"#/channel/conv2/{channel}")
    y, x = np.unravel_index(acts[..., channel].argmax(), acts.shape[:2])
    assert f"at ({y}, {x}) of 16×16" in page.find_element(By.ID, "activation-stats").text
    assert drawn_pixels(page, page.find_element(By.ID, "channel-activation")).shape == (32, 32, 3)


def test_keras_image_view_maps(page, served) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_view(page, served, "#/image/d1")
    logits = np.asarray(served.workspace.loaded.model(served.workspace.picture("d1")[1], training=False))[0]
    first = page.find_elements(By.CSS_SELECTOR, "#predictions li")[0].text
    assert first.startswith(f"class {int(logits.argmax())} ")
    panel = wait(page, lambda b: (p := b.find_elements(By.CSS_SELECTOR, ".panel")) and p[0].get_attribute("data-state") in ("done", "failed") and p[0], timeout=60)
    assert panel.get_attribute("data-state") == "done", panel.find_element(By.CSS_SELECTOR, ".map-info").text
    cam = drawn_pixels(page, panel.find_element(By.CSS_SELECTOR, "img.map"))
    Select(panel.find_element(By.CSS_SELECTOR, "select.method")).select_by_value("saliency")
    wait(page, lambda b: panel.get_attribute("data-method") == "saliency" and panel.get_attribute("data-state") == "done")
    assert not np.array_equal(cam, drawn_pixels(page, panel.find_element(By.CSS_SELECTOR, "img.map")))


def test_keras_atlas_is_refused_in_the_page(page, served) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    open_view(page, served, "#/layer/conv2")
    page.find_element(By.ID, "mine-layer").click()
    wait(page, lambda b: b.find_elements(By.CSS_SELECTOR, "#layer-message .error"))
    assert "Keras" in page.find_element(By.ID, "layer-message").text
