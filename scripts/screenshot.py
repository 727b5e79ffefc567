"""Screenshots of the demo for the README: start `python app.py` in headless Chromium, save the first
screen on a phone (412×915) and on a laptop (1366×768), then click an example (or upload an image) and
save the page with its results. Then, with CYCLEGAN_TRAINING=1 and a throwaway runs folder, train a short
run on the examples in the Train tab and save the tab with it (progress, losses, samples) on a laptop and
on a phone. The tests start the app and drive the page with the same helpers (tests/conftest.py,
tests/test_browser.py, tests/test_train_tab.py).

    python scripts/screenshot.py [--image path/to/horse.jpg] [--out docs] [--only app|train]
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator

from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium, chromium-driver
OUTPUTS = ("x | G(x): drag to compare", "reconstruction F(G(x))")
PHONE, LAPTOP = (412, 915), (1366, 768)
ZIP_LABEL = "zip with trainA/ and trainB/"  # the Train tab's upload


class ServedApp(str):
    """The URL of an app that serve_app started, and its process (benchmarks/sections/app.py pauses idle ones)."""

    process: subprocess.Popen


@contextlib.contextmanager
def serve_app(startup_timeout: float = 180, script: str | Path = "app.py", log_file: Path | None = None,
              **env: str) -> Iterator[ServedApp]:
    """`python app.py` (or another Gradio `script`) on a free 127.0.0.1 port without network use (bundled
    weights, no Hub calls, no analytics), with extra environment variables `env`; yields its URL and stops
    it afterwards. Its output goes to `log_file` where given (benchmarks/serving.py waits for lines there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full_env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
                "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", **env}
    for name in ("CYCLEGAN_MODELS", "CYCLEGAN_ALLOW_ANY_MODEL", "CYCLEGAN_MAX_VIDEO_PIXELS", "CYCLEGAN_MAX_FILE_SIZE"):
        if name not in env:  # the operator's settings of this machine stay out of tests and screenshots
            full_env.pop(name, None)
    # The log goes to a file: an unread pipe would fill up and block the server.
    with open(log_file, "w+") if log_file else tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        url = ServedApp(f"http://127.0.0.1:{port}")
        url.process = proc
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        state = "exited" if proc.poll() is not None else f"did not start in {startup_timeout:.0f} s"
                        raise RuntimeError(f"{Path(script).name} {state}:\n{log.read()[-3000:]}") from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1100, net_log: Path | None = None) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a throwaway profile and no background traffic. The driver's path is
    given, so Selenium Manager never looks for (or downloads) a driver or browser. With `net_log`,
    Chromium writes every request it makes (the page's, its workers', its own) to that file, complete
    once the browser has quit."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                *([f"--log-net-log={net_log}"] if net_log else [])):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def emulate(driver: webdriver.Chrome, width: int, height: int) -> None:
    """A viewport of exactly width × height CSS pixels; below 600 px wide, a phone's (touch, mobile layout)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                                  "deviceScaleFactor": 1, "mobile": width < 600})


def open_page(driver: webdriver.Chrome, url: str, timeout: float = 60) -> None:
    """Load the page and wait until the image upload is there."""
    driver.get(url)
    WebDriverWait(driver, timeout).until(
        lambda d: block(d, "Image").find_element(By.CSS_SELECTOR, "input[type=file]"), "the Image upload did not appear")


def bottom(driver: webdriver.Chrome, element: WebElement) -> float:
    """Where `element` ends, in CSS pixels from the top of the page."""
    return driver.execute_script("return arguments[0].getBoundingClientRect().bottom + window.scrollY", element)


def examples(driver: webdriver.Chrome, timeout: float = 30) -> list[WebElement]:
    """The example thumbnails (rows of the examples table), in order, once the table has rendered: on a
    loaded machine it comes after the upload box that `open_page` waits for."""
    WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples tr.tr-body"),
                                         "the examples did not appear")
    return driver.find_elements(By.CSS_SELECTOR, "#examples tr.tr-body")


def block(driver: webdriver.Chrome, label: str) -> WebElement:
    """The Gradio component (its `div.block`) whose label reads `label`."""
    return driver.find_element(By.XPATH, f"//label[normalize-space()='{label}']"
                                         "/ancestor::div[contains(concat(' ', @class, ' '), ' block ')][1]")


def image_src(driver: webdriver.Chrome, label: str) -> str | None:
    """The src of the image shown by the component labelled `label`, once it has loaded."""
    for img in block(driver, label).find_elements(By.TAG_NAME, "img"):
        if img.get_attribute("src") and driver.execute_script("return arguments[0].naturalWidth", img):
            return img.get_attribute("src")
    return None


def summary_element(driver: webdriver.Chrome) -> WebElement | None:
    """The markdown under the outputs, once a translation has filled it."""
    for element in driver.find_elements(By.CSS_SELECTOR, "[data-testid=markdown]"):
        if "cycle error" in element.text:
            return element
    return None


def summary(driver: webdriver.Chrome) -> str:
    """The text of the markdown under the outputs ('' before the first translation)."""
    element = summary_element(driver)
    return element.text if element else ""


def busy(driver: webdriver.Chrome) -> bool:
    """Whether Gradio shows its progress overlay (div.wrap.default; the slider has a div.wrap of its own)
    on any of the outputs."""
    return any("hide" not in overlay.get_attribute("class").split() for label in OUTPUTS
               for overlay in block(driver, label).find_elements(By.CSS_SELECTOR, "div.wrap.default"))


def app_errors(driver: webdriver.Chrome) -> None:
    """Fail at once, with the app's message, when the page shows an error."""
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]")]
    if errors:
        raise RuntimeError(f"the app reported: {' / '.join(errors)}")


def translate(driver: webdriver.Chrome, timeout: float = 120, click: WebElement | None = None) -> dict[str, str]:
    """Click Translate (or `click`, e.g. an example) and wait until the run is over and the outputs have
    loaded; returns {label: src}."""
    before = summary(driver)
    (click or driver.find_element(By.XPATH, "//button[normalize-space()='Translate']")).click()
    wait = WebDriverWait(driver, timeout, poll_frequency=0.2)
    # The summary arrives a moment before the images, so "done" also needs the progress overlays gone.
    wait.until(lambda d: app_errors(d) or busy(d) or summary(d) != before, "Translate did not start")

    def done(driver: webdriver.Chrome) -> dict[str, str] | bool:
        app_errors(driver)
        if busy(driver) or not summary(driver):
            return False
        sources = {label: image_src(driver, label) for label in OUTPUTS}
        return sources if all(sources.values()) else False

    return wait.until(done, f"the outputs did not appear within {timeout:.0f} s")


def open_and_upload(driver: webdriver.Chrome, url: str, image: Path, direction: str, timeout: float = 60) -> None:
    """Load the page, put `image` into the "Image" input and pick the direction by its label."""
    open_page(driver, url, timeout)
    block(driver, "Image").find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(Path(image).resolve()))
    WebDriverWait(driver, timeout).until(lambda d: image_src(d, "Image"), "the upload was not shown")
    driver.find_element(By.XPATH, f"//label[normalize-space()='{direction}']").click()


def save_page(driver: webdriver.Chrome, path: Path, height: float | None = None, max_colors: int | None = None) -> Path:
    """A PNG of the whole page (not just the window) or of its top `height` CSS pixels;
    `max_colors` shrinks the file with a palette."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(height or size["height"], size["height"]), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                            "clip": clip})
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"])))
    if max_colors:
        image = image.convert("RGB").quantize(max_colors, method=Image.Quantize.MEDIANCUT)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    image.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)
    return path


# ---- the Train tab (CYCLEGAN_TRAINING=1) ------------------------------------------------------

def zip_folders(path: Path, folders: dict[str, list[Path]]) -> Path:
    """A zip holding each folder's images (e.g. {"trainA": [...], "trainB": [...]}) under that folder's name."""
    with zipfile.ZipFile(path, "w") as zf:
        for folder, images in folders.items():
            for image in images:
                zf.write(image, f"{folder}/{Path(image).name}")
    return Path(path)


def open_tab(driver: webdriver.Chrome, name: str, timeout: float = 30) -> None:
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']")).click()


def set_number(driver: webdriver.Chrome, label: str, value: int) -> None:
    """Type `value` into the number field labelled `label`, replacing what it shows."""
    field = driver.find_element(By.CSS_SELECTOR, f'input[type=number][aria-label="{label}"]')
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)
    WebDriverWait(driver, 10).until(lambda d: field.get_attribute("value") == str(value), f"{label} stays unset")


def train_progress(driver: webdriver.Chrome) -> dict:
    """What #train-progress says: state, run, step and total (0 where it shows none), and its text."""
    text = driver.find_element(By.ID, "train-progress").text
    parts = text.split("\n")[0].split(" · ")
    steps = re.search(r"step ([\d,]+) / ([\d,]+)", text)
    step, total = (int(g.replace(",", "")) for g in steps.groups()) if steps else (0, 0)
    return {"state": parts[0], "run": parts[1] if len(parts) > 1 else None, "step": step, "total": total,
            "text": text}


def wait_for_training(driver: webdriver.Chrome, until, message: str, timeout: float = 120) -> dict:
    """Poll the Train tab's progress (the page's own polling refreshes it) until `until(progress)`; the
    progress then. Fails at once on an error the page shows, or on a run that failed."""
    def check(driver: webdriver.Chrome) -> dict | bool:
        app_errors(driver)
        progress = train_progress(driver)
        if progress["state"] == "failed":
            raise RuntimeError(f"the run failed: {progress['text']}")
        return progress if until(progress) else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(check)
    except TimeoutException:
        shown = train_progress(driver)["text"]
        raise TimeoutException(f"{message} within {timeout:.0f} s; it shows: {shown!r}") from None


def start_training(driver: webdriver.Chrome, url: str, data: Path, steps: int, crop: int | None = None,
                   load: int | None = None, timeout: float = 60) -> dict:
    """Load the page, open the Train tab, upload the zip `data`, set the numbers, start: the progress
    once the run is there."""
    open_page(driver, url, timeout)
    open_tab(driver, "Train")
    upload = WebDriverWait(driver, timeout).until(lambda d: block(d, ZIP_LABEL).find_element(By.CSS_SELECTOR,
                                                                                            "input[type=file]"))
    upload.send_keys(str(Path(data).resolve()))
    WebDriverWait(driver, timeout).until(lambda d: Path(data).name in block(d, ZIP_LABEL).text, "the zip was not taken")
    for label, value in (("steps (0: the recipe's)", steps), ("crop size", crop), ("load size", load)):
        if value is not None:
            set_number(driver, label, value)
    driver.find_element(By.XPATH, "//button[normalize-space()='Start training']").click()
    return wait_for_training(driver, lambda p: p["run"] is not None, "the run did not start", timeout)


def choose(driver: webdriver.Chrome, label: str, option: str, timeout: float = 30) -> None:
    """Pick `option` in the dropdown labelled `label`."""
    driver.find_element(By.CSS_SELECTOR, f'input[role=combobox][aria-label="{label}"]').click()
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f'li[role=option][aria-label="{option}"]'),
        f"{option!r} is not in {label}").click()
    WebDriverWait(driver, timeout).until(lambda d: d.find_element(
        By.CSS_SELECTOR, f'input[role=combobox][aria-label="{label}"]').get_attribute("value") == option)


def app_screens(out: Path, colors: int | None, image: Path | None) -> list[Path]:
    """The first screen on a phone and on a laptop, and the page with a translation's results."""
    with serve_app() as url, chromium(*LAPTOP) as driver:
        paths = []
        for name, (width, height) in (("first-screen-phone", PHONE), ("first-screen-laptop", LAPTOP)):
            emulate(driver, width, height)
            open_page(driver, url)
            WebDriverWait(driver, 30).until(lambda d: all(d.execute_script("return arguments[0].complete && "
                                                                           "arguments[0].naturalWidth", img)
                                                          for img in d.find_elements(By.CSS_SELECTOR, "#examples img")))
            paths.append(save_page(driver, out / f"{name}.png", height=height, max_colors=colors))
        if image:
            open_and_upload(driver, url, image, "horse → zebra")
            translate(driver)
        else:
            translate(driver, click=examples(driver)[0])
        # Down to the summary under the results; what follows adds nothing to a README.
        paths.append(save_page(driver, out / "screenshot.png", height=bottom(driver, summary_element(driver)) + 12,
                               max_colors=colors))
    return paths


SAMPLES_LABEL = "latest samples: x, G(x), F(G(x))"


def train_screens(out: Path, colors: int | None, steps: int = 160) -> list[Path]:
    """The Train tab on a laptop and on a phone, showing a finished run of `steps` on the examples (the
    horses as trainA, the zebras as trainB): its progress, loss curves and latest samples."""
    examples_dir = ROOT / "examples"
    with tempfile.TemporaryDirectory(prefix="cyclegan-screens-") as work:
        data = zip_folders(Path(work) / "examples.zip", {"trainA": sorted(examples_dir.glob("horse-*.jpg")),
                                                         "trainB": sorted(examples_dir.glob("zebra-*.jpg"))})
        with serve_app(CYCLEGAN_TRAINING="1", CYCLEGAN_RUNS=str(Path(work) / "runs")) as url, \
                chromium(*LAPTOP) as driver:
            start_training(driver, url, data, steps)
            wait_for_training(driver, lambda p: p["state"] == "finished", "the run did not finish", timeout=600)
            paths = []
            for name, (width, height) in (("train-tab-laptop", LAPTOP), ("train-tab-phone", PHONE)):
                emulate(driver, width, height)
                open_page(driver, url)
                open_tab(driver, "Train")
                WebDriverWait(driver, 60).until(lambda d: image_src(d, SAMPLES_LABEL) and d.find_elements(
                    By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg"), "no samples or losses shown")
                wait_for_training(driver, lambda p: p["state"] == "finished", "the run is not shown")
                runs = driver.find_element(By.XPATH, "//button[contains(normalize-space(), 'Runs: delete, publish')]")
                # Down to the runs' accordion, the tab's last block.
                paths.append(save_page(driver, out / f"{name}.png", height=bottom(driver, runs) + 12,
                                       max_colors=colors))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, help="a horse photo to upload (default: click the first example)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (default: docs)")
    parser.add_argument("--colors", type=int, default=256, help="palette size; 0 keeps full colour")
    parser.add_argument("--only", choices=("app", "train"), help="only the Image tab's or only the Train tab's")
    args = parser.parse_args()
    colors = args.colors or None
    paths = []
    if args.only != "train":
        paths += app_screens(args.out, colors, args.image)
    if args.only != "app":
        paths += train_screens(args.out, colors)
    for path in paths:
        print(f"{path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
