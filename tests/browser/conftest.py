"""Fixtures for the end-to-end tests of ``convscope serve``: a real uvicorn server in a thread over
``zoo:shapes-vgg`` and ``shapes:64``, and one headless Chromium (Debian's, through Selenium) per
module. Without chromium and chromedriver the browser tests skip and say how to get them
(``tests/run.py`` installs them with apt-get where it can)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ensure_chromium import found
from serving import Server, start_server


@pytest.fixture(scope="module")
def server(shapes_vgg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("serve"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium, driver = found()
    if not (chromium and driver):
        pytest.skip("no chromium/chromedriver on PATH: install Debian's chromium and chromium-driver "
                    "(tests/run.py does, with apt-get as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--disable-extensions", "--no-first-run", "--allow-file-access-from-files"):  # exported sites
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_script_timeout(30)
    yield chrome
    chrome.quit()


