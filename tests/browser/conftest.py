"""Fixtures for the end-to-end tests of ``convscope serve``: a real uvicorn server in a thread over
``zoo:shapes-vgg`` and ``shapes:64``, and one headless Chromium (Debian's, through Selenium) per
module. Without chromium and chromedriver the browser tests skip and say how to get them
(``tests/run.py`` installs them with apt-get where it can)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ensure_chromium import found
from serving import Server, open_chromium, start_server


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
    chrome = open_chromium(driver, chromium)
    yield chrome
    chrome.quit()


