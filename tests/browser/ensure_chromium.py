"""Make sure the browser tests have a browser: install Debian's chromium and chromium-driver with
apt-get when they are missing and this process may (root, apt-get present). Never fails the run:
without a browser the browser tests skip and say why.

    python tests/browser/ensure_chromium.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def found() -> tuple[str | None, str | None]:
    """(browser, driver) paths, None where missing."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    return browser, shutil.which("chromedriver")


def main() -> int:
    browser, driver = found()
    if browser and driver:
        print(f"browser tests: {browser} with {driver}", flush=True)
        return 0
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        print("browser tests: no chromium/chromedriver, and apt-get as root is not available here: the browser "
              "tests will skip (install Debian's chromium and chromium-driver to run them)", flush=True)
        return 0
    print("browser tests: installing Debian's chromium and chromium-driver with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "--no-install-recommends", "chromium", "chromium-driver"]):
        if subprocess.call(cmd, env=env) != 0:
            print(f"browser tests: {' '.join(cmd)} failed: the browser tests will skip", flush=True)
            return 0
    browser, driver = found()
    print(f"browser tests: {browser} with {driver}" if browser and driver else
          "browser tests: chromium still not found after apt-get: the browser tests will skip", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
