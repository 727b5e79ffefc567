"""The browser page of `python -m cyclegan.export_web`: a tiny model exported, served from 127.0.0.1 by a plain
static server and driven in headless Chromium must draw what `CycleGAN.translate` computes in Python, and make
no request outside its folder. Skipped without npm and node (which install ONNX Runtime Web) or Chromium."""
from __future__ import annotations

import json
import shutil

import pytest
from selenium.webdriver.common.by import By

from benchmarks.bench_web import canvas_image, make_picture, open_page, page_requests, serve_folder, wait_for
from cyclegan import CycleGAN
from cyclegan.export_web import main as export_main
from scripts.screenshot import CHROMEDRIVER, CHROMIUM, chromium
from tests.conftest import TINY, missing_modules, missing_tools, psnr, require

require(missing_modules("onnx", "onnxscript"), "pip install -r requirements-dev.txt")  # torch's ONNX exporter
require(missing_tools("npm", "node", CHROMIUM, CHROMEDRIVER), "apt-get install nodejs npm chromium chromium-driver")

MAX_SIDE = 128


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A tiny model (random weights, float32) and its exported page, limited to MAX_SIDE px."""
    root = tmp_path_factory.mktemp("web")
    CycleGAN(TINY).init_weights(seed=5).save_pretrained(root / "tiny")
    assert export_main([str(root / "tiny"), "--out", str(root / "site"), "--max-side", str(MAX_SIDE)]) == 0
    return root / "site", CycleGAN.from_pretrained(root / "tiny")


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def test_page_draws_what_python_translates_and_stays_in_its_folder(site, tmp_path):
    folder, model = site
    photo = make_picture(tmp_path / "horse.png", 90, 70)  # sides not multiples of 4: padded and cropped
    net_log = tmp_path / "net-log.json"
    with serve_folder(folder) as (url, served), chromium(net_log=net_log) as browser:  # its own browser: the log is
        open_page(browser, f"{url}index.html?direction=B2A", photo)              # complete when it quits
        fake, rec = canvas_image(browser, "gx"), canvas_image(browser, "fgx")
        summary, backend = (browser.find_element(By.ID, i).text for i in ("summary", "backend"))
    expected_fake, expected_rec = model.cycle(photo, "B2A", precision="fp32")
    assert fake.size == rec.size == (90, 70)
    assert psnr(fake, expected_fake) >= 40 and psnr(rec, expected_rec) >= 40
    assert psnr(fake, model.translate(photo, "A2B", precision="fp32")) < 30  # the direction was B2A
    assert summary.startswith("zebra → horse with tiny")
    assert "WASM" in backend  # headless Chromium has no WebGPU adapter

    assert {"/index.html", "/page.js", "/models.json", "/models/tiny/B2A.onnx", "/models/tiny/A2B.onnx"} <= set(served)
    urls = page_requests(net_log, url.rstrip("/"))
    assert any(u.endswith(".wasm") for u in urls)  # requested by the runtime's worker: the log sees workers
    outside = [u for u in urls if not u.startswith(url)]
    assert not outside, f"requests outside the folder: {outside}"


def test_large_images_are_scaled_down_and_unreadable_files_reported(site, browser, tmp_path):
    folder, _ = site
    with serve_folder(folder) as (url, _):
        open_page(browser, f"{url}index.html", make_picture(tmp_path / "wide.png", 300, 60))
        assert (browser.execute_script("return [gx.width, gx.height]")) == [MAX_SIDE, 26]
        assert "Scaled down from 300×60" in browser.find_element(By.ID, "message").text

        (tmp_path / "notes.png").write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "notes.png"))
        with pytest.raises(RuntimeError, match="cannot read notes.png as an image"):
            wait_for(browser, ("done",), timeout=60)


def test_identity_toggle_picks_the_model_from_the_url(site, browser, tmp_path):
    """Two models, one trained with identity loss: the page shows the app's checkbox. The second model here
    is the first with its generators swapped, so which one ran shows in G(x)."""
    folder, model = site
    two = tmp_path / "site"
    shutil.copytree(folder, two)
    manifest = json.loads((two / "models.json").read_text())
    first = manifest["models"][0]
    swapped = {**first, "name": "swapped", "identity": not first["identity"],
               "generators": {"A2B": first["generators"]["B2A"], "B2A": first["generators"]["A2B"]}}
    manifest["models"].append(swapped)
    (two / "models.json").write_text(json.dumps(manifest))
    photo = make_picture(tmp_path / "horse.png", 64, 48)
    with serve_folder(two) as (url, _):
        open_page(browser, f"{url}index.html?direction=A2B&identity={int(swapped['identity'])}", photo)
        assert browser.find_element(By.ID, "identity").is_selected() == swapped["identity"]
        assert psnr(canvas_image(browser, "gx"), model.translate(photo, "B2A", precision="fp32")) >= 40
        browser.execute_script("document.body.dataset.status = 'clicked'")
        browser.find_element(By.ID, "identity").click()
        wait_for(browser, ("done",))
        assert psnr(canvas_image(browser, "gx"), model.translate(photo, "A2B", precision="fp32")) >= 40
