"""`setr demo` (`scripts/demo.py`) in a real browser: headless Chromium (Playwright) uploads a photograph to the app
on 127.0.0.1 and checks the overlay, the legend, the class table and the timing.

Setup: Playwright's Python package is pip-installed into this environment when missing; Chromium is Debian's
`chromium` (apt-get installed when running as root with apt), else Playwright's own download. Without either the
test is skipped, saying why. `SETR_DEMO_SCREENSHOT=docs/demo-screenshot.png` also saves the screenshot there (for the
README).
"""

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the demo needs the [demo] extra (gradio)")
pytest.importorskip("skimage.data")
from transformers_setr.apps import demo, segment  # noqa: E402

from helpers.photo_folder import save_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo.py"
START_TIMEOUT_S = 120
RESULT_TIMEOUT_MS = 90_000


def _playwright():
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError:
        pass
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "playwright"], capture_output=True, text=True, timeout=600
    )
    if install.returncode:
        pytest.skip(f"Playwright is not installed and pip could not install it: {install.stderr.strip()[-300:]}")
    importlib.invalidate_caches()
    return importlib.import_module("playwright.sync_api")


def _chromium() -> str | None:
    """Debian's chromium (installed with apt-get when possible), or None to use Playwright's own browser."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=900)
        if shutil.which("chromium"):
            return shutil.which("chromium")
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = _playwright()
    executable = _chromium()
    manager = sync_api.sync_playwright().start()
    try:
        try:
            chromium = manager.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        except sync_api.Error as error:
            if executable is not None:
                raise
            install = subprocess.run(
                [sys.executable, "-m", "playwright", "install", "chromium"],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if install.returncode:
                pytest.skip(f"no Chromium: none on PATH, apt-get unavailable, Playwright's download failed ({error})")
            chromium = manager.chromium.launch(headless=True)
        yield chromium
        chromium.close()
    finally:
        manager.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The README's command line in a subprocess, on a free port; shut down afterwards whatever happens."""
    root = tmp_path_factory.mktemp("demo")
    save_tiny_model(root / "setr-pup-tiny-random")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(root / "server.log", "w")  # noqa: SIM115  (closed below)
    process = subprocess.Popen(
        [
            sys.executable,
            str(DEMO),
            "--model",
            str(root / "setr-pup-tiny-random"),
            "--port",
            str(port),
            "--examples_dir",
            str(root / "examples"),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the demo exited with {process.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not answer within {START_TIMEOUT_S} s: {(root / 'server.log').read_text()}")
            time.sleep(0.2)  # polling interval while waiting for the server to answer, not a fixed wait
        yield url, root
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def test_upload_a_photograph_and_see_the_overlay_and_legend(browser, app_url, tmp_path):
    url, root = app_url
    photo = root / "examples" / "astronaut.jpg"  # written by the demo at start-up, from scikit-image's data
    assert photo.is_file()
    model, processor = segment.load_model(str(root / "setr-pup-tiny-random"))
    image = segment.load_image(segment.ImageSource(str(photo), "astronaut"))
    (labels,) = segment.predict_label_maps(model, processor, [image], model.config.inference_mode)
    expected = [c["label"] for c in segment.class_shares(labels, model.config.id2label)]
    assert len(expected) > 1

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#input-image input[type=file]").set_input_files(str(photo))
    page.locator("#input-image img").first.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)  # upload shown
    page.locator("#segment-button").click()

    legend = page.locator("#legend .setr-legend li")
    legend.first.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    shown = [text.rsplit(" ", 1)[0].strip() for text in legend.all_inner_texts()]
    assert shown == expected  # the classes present, by area
    overlay = page.locator("#overlay img").first
    overlay.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function(
        "() => { const i = document.querySelector('#overlay img'); return i && i.complete && i.naturalWidth > 0; }",
        timeout=RESULT_TIMEOUT_MS,
    )
    natural_width = overlay.evaluate("img => img.naturalWidth")
    assert natural_width > image.width  # the overlay with its legend on the right
    table = page.locator("#class-table").inner_text()
    assert all(name in table for name in expected)
    assert "segmented in" in page.locator("#timing").inner_text()

    screenshot = tmp_path / "demo-screenshot.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("SETR_DEMO_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["SETR_DEMO_SCREENSHOT"])
    page.close()


def test_an_empty_upload_or_a_broken_file_is_a_clear_error(tmp_path):
    cache = demo.ModelCache([], "cpu")
    with pytest.raises(ValueError, match="upload an image"):
        demo.segment_photo(cache, None, "x", "whole")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(segment.InputError, match="cannot be read"):
        demo.segment_photo(cache, str(bad), "x", "whole")
