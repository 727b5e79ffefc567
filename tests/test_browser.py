"""The app in a real browser: headless Chromium uploads a picture, translates it with both checkpoints
and leaves screenshots in test-artifacts/. Skipped without Chromium, except in CI (CI=...)."""
import os
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from scripts.screenshot import (CHROMEDRIVER, CHROMIUM, OUTPUTS, ROOT, chromium, open_and_upload, save_page, summary,
                                translate)

ARTIFACTS = ROOT / "test-artifacts"
MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
if MISSING and not os.environ.get("CI"):
    pytest.skip(f"{' and '.join(MISSING)} missing: apt-get install chromium chromium-driver", allow_module_level=True)


@pytest.fixture
def browser(request):
    if MISSING:  # only in CI, where the browser test must run
        pytest.fail(f"{' and '.join(MISSING)} missing: apt-get install chromium chromium-driver")
    with chromium(1400, 1100) as driver:
        yield driver
        with suppress(WebDriverException):  # the final state, also after a failure
            save_page(driver, ARTIFACTS / f"{request.node.name}-last.png")


@pytest.fixture
def picture(tmp_path) -> Path:
    """200×150: a brown "horse" with legs on green grass under a blue sky, plus some noise."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((150, 200, 3), np.float32)
    pixels[:60] = (110, 160, 220)
    pixels[60:] = (70, 140, 50)
    pixels[50:95, 50:140] = (120, 75, 40)
    for x in (60, 80, 115, 130):
        pixels[95:135, x:x + 7] = (100, 60, 30)
    pixels += rng.normal(0, 12, pixels.shape)
    path = tmp_path / "horse.png"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def test_page_translates_an_upload_with_both_checkpoints(server, browser, picture):
    open_and_upload(browser, server, picture, "zebra → horse")
    first = translate(browser)
    assert set(first) == set(OUTPUTS)
    assert "cycle error" in summary(browser)
    assert summary(browser).startswith("zebra → horse") and "horse2zebra-identity" in summary(browser)
    save_page(browser, ARTIFACTS / "browser-identity.png")

    browser.find_element(By.XPATH, "//label[normalize-space()='trained with identity loss']").click()
    second = translate(browser)
    assert "horse2zebra-no-identity" in summary(browser)
    assert second["translation G(x)"] != first["translation G(x)"]  # the toggle switched checkpoints
    save_page(browser, ARTIFACTS / "browser-no-identity.png")
