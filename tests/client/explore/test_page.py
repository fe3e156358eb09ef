"""The explorer page in a real headless browser (Debian's chromium, driven through its chromedriver by selenium),
served by a real `vaeserve explore` process in front of a real `vaeserve serve`: the page loads, a new seed and a
new temperature change the samples, an interpolation runs, an upload drives the traversal, and the browser's
console stays free of errors. Every wait is on a condition of the page, never a fixed sleep."""

from __future__ import annotations

import base64
import json
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from tests.harness import ServerProcess, explorer_ready, free_port

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WAIT_S = 60


def api(url: str, path: str, body: dict) -> str:
    """The image the explorer answers `body` with: what the page must end up showing."""
    request = urllib.request.Request(url + path.lstrip("/"), json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["image"]


@pytest.fixture(scope="module")
def page(default_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a `vaeserve explore` process (the real command) for `server`."""
    port = free_port()
    argv = [sys.executable, "-m", "vaeserve.cli", "explore", "--target", default_server.target, "--port", str(port)]
    log = tmp_path_factory.mktemp("explore") / "explore.log"
    explorer = ServerProcess(argv, log, port, explorer_ready, name="vaeserve explore")
    with explorer:
        yield f"http://127.0.0.1:{port}/"
    assert explorer.returncode == 0, explorer.output()
    assert explorer.output().startswith(f"explorer on http://127.0.0.1:{port}/ for model vae version 1 at ")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium or chromedriver not installed (Debian packages chromium and chromium-driver; "
                    "`make system-deps` installs them)")  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # both binaries given: selenium-manager never looks for (or downloads) one
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def shows(driver: WebDriver, name: str, image: str | None = None, not_image: str | None = None) -> bool:
    """<img id=name> holds its latest answer: `image`, or any image but `not_image`."""
    element = driver.find_element("id", name)
    src = element.get_attribute("src") or ""
    if element.get_attribute("data-state") != "ready" or not src.startswith("data:image/png"):
        return False
    return (image is None or src == image) and (not_image is None or src != not_image)


def test_the_page_samples_interpolates_and_traverses_without_console_errors(
    browser: WebDriver,
    page: str,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.05)
    browser.get(page)
    first = api(page, "/api/sample", {"seed": 0, "temperature": 1.0, "n": 64})
    wait.until(lambda d: shows(d, "samples", first) and shows(d, "interpolation") and shows(d, "traversal"))
    assert "vae version 1" in browser.find_element("id", "model").text
    assert browser.find_element("id", "expects").text.startswith("The model takes 8x8 grey images")

    # A new seed, typed: the samples become that seed's.
    seed = browser.find_element("id", "seed")
    seed.clear()
    seed.send_keys("12345")
    typed = api(page, "/api/sample", {"seed": 12345, "temperature": 1.0, "n": 64})
    wait.until(lambda d: shows(d, "samples", typed))
    # The temperature slider, one step to the right: 1.05.
    browser.find_element("id", "temperature").send_keys(Keys.ARROW_RIGHT)
    warmer = api(page, "/api/sample", {"seed": 12345, "temperature": 1.05, "n": 64})
    wait.until(lambda d: shows(d, "samples", warmer))
    browser.find_element("id", "new-seed").click()
    wait.until(lambda d: shows(d, "samples", not_image=warmer))

    # An interpolation between two picked test digits, 10 steps, spherical.
    browser.find_element("css selector", "#pick-a .thumb[data-index='4']").click()
    browser.find_element("css selector", "#pick-b .thumb[data-index='18']").click()
    steps = browser.find_element("id", "steps")
    steps.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    browser.find_element("id", "spherical").click()
    browser.find_element("id", "interpolate").click()
    path = api(page, "/api/interpolate", {"a": {"digit": 4}, "b": {"digit": 18}, "steps": 10, "spherical": True})
    wait.until(lambda d: shows(d, "interpolation", path))
    assert (
        browser.find_element("css selector", "#pick-a .thumb[data-index='4']").get_attribute("aria-pressed") == "true"
    )

    # An uploaded 28x28 dark-on-light PNG, inverted, becomes the traversal's image.
    upload = tmp_path / "two.png"
    sheet = Image.new("L", (28, 28), 255)
    sheet.paste(0, (8, 6, 20, 9))
    sheet.paste(0, (17, 6, 20, 22))
    sheet.save(upload)
    browser.find_element("css selector", "#pick-t input[type=file]").send_keys(str(upload))
    note = browser.find_element("css selector", "#pick-t .note")
    wait.until(lambda d: "hint: mostly light" in note.text)
    browser.find_element("css selector", "#pick-t input[type=checkbox]").click()
    wait.until(
        lambda d: note.text == "converted: inverted, resized 28x28 -> 8x8 (aspect ratio kept, padded with black)"
    )
    url = "data:image/png;base64," + base64.b64encode(upload.read_bytes()).decode()
    around = api(page, "/api/traverse", {"image": {"upload": url, "invert": True}, "span": 3.0, "steps": 7})
    wait.until(lambda d: shows(d, "traversal", around))

    # The anomaly score of a picked test digit, then of an uploaded square of noise.
    browser.find_element("css selector", "#pick-s .thumb[data-index='9']").click()
    result = browser.find_element("id", "score-result")
    wait.until(lambda d: result.get_attribute("data-state") == "ready" and "typical" in result.text)
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(noise)
    browser.find_element("css selector", "#pick-s input[type=file]").send_keys(str(noise))
    wait.until(lambda d: result.get_attribute("data-state") == "ready" and ": unusual" in result.text)

    assert [e.text for e in browser.find_elements("css selector", ".error")] == ["", "", "", ""]
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert browser.get_screenshot_as_png().startswith(b"\x89PNG")
