"""The app in a real browser: headless Chromium uploads a picture and translates it with both checkpoints,
checks the first screen of a phone and clicks an example there, checks that the result is on the screen after
a click on an example or on Translate (on a laptop and on a phone), that the slider shows all of x and G(x)
(fitted, aligned, draggable), and translates a video that then plays;
screenshots go to test-artifacts/. Skipped without Chromium, except in CI (CI=...)."""
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from scripts.screenshot import (CHROMEDRIVER, CHROMIUM, LAPTOP, OUTPUTS, PHONE, ROOT, block, bottom, chromium, emulate,
                                examples, open_and_upload, open_page, save_page, summary, translate)
from tests.conftest import missing_tools, require

ARTIFACTS = ROOT / "test-artifacts"
require(missing_tools(CHROMIUM, CHROMEDRIVER), "apt-get install chromium chromium-driver")


@pytest.fixture
def browser(request):
    with chromium(1400, 1100) as driver:
        yield driver
        with suppress(WebDriverException):  # the final state, also after a failure
            save_page(driver, ARTIFACTS / f"{request.node.name}-last.png")


# Where an <img> paints its picture, in page pixels: object-fit places the image inside the element's box
# (centred, the default object-position), so the box alone does not tell whether the picture is cut off.
PAINTED = """
const img = arguments[0], box = img.getBoundingClientRect(), fit = getComputedStyle(img).objectFit;
const nw = img.naturalWidth, nh = img.naturalHeight;
let s = {contain: Math.min(box.width / nw, box.height / nh), cover: Math.max(box.width / nw, box.height / nh),
         none: 1, "scale-down": Math.min(1, box.width / nw, box.height / nh)}[fit];
const w = fit === "fill" ? box.width : nw * s, h = fit === "fill" ? box.height : nh * s;
const left = box.left + (box.width - w) / 2, top = box.top + (box.height - h) / 2;
return {left: left, top: top, right: left + w, bottom: top + h, natural: [nw, nh]};
"""
INSIDE = "const b = arguments[0].getBoundingClientRect(), e = arguments[0];" \
         "return {left: b.left + e.clientLeft, top: b.top + e.clientTop," \
         "        right: b.left + e.clientLeft + e.clientWidth, bottom: b.top + e.clientTop + e.clientHeight};"


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
    assert second["reconstruction F(G(x))"] != first["reconstruction F(G(x))"]  # the toggle switched checkpoints
    save_page(browser, ARTIFACTS / "browser-no-identity.png")


@pytest.mark.parametrize("viewport", [PHONE, LAPTOP], ids=["phone", "laptop"])
def test_the_first_screen_holds_the_controls_and_examples_and_an_example_translates(server, browser, viewport):
    """All six examples, the controls with their labels whole (a squeezed checkbox once cut its label to
    'train'), and no sideways scrolling, on a phone's and a laptop's first screen."""
    emulate(browser, *viewport)
    open_page(browser, server)
    thumbs = examples(browser)
    assert len(thumbs) == 6
    labels = [browser.find_element(By.XPATH, f"//label[normalize-space()='{text}']")
              for text in ("zebra → horse", "trained with identity loss")]
    controls = [block(browser, "Image"), *labels, thumbs[-1]]
    save_page(browser, ARTIFACTS / f"browser-first-screen-{viewport[0]}.png", height=viewport[1])
    assert max(bottom(browser, c) for c in controls) <= viewport[1], [bottom(browser, c) for c in controls]
    for label in labels:
        assert browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", label), label.text
    assert browser.execute_script("return document.documentElement.scrollWidth") <= viewport[0]  # no sideways scrolling
    if viewport == LAPTOP:
        return  # translating from an example: below, and on a phone here
    results = translate(browser, click=thumbs[3])  # a zebra, with identity loss
    assert set(results) == set(OUTPUTS)
    assert summary(browser).startswith("zebra → horse") and "horse2zebra-identity" in summary(browser)
    save_page(browser, ARTIFACTS / "browser-phone-example.png")


# Where an element is on the screen (CSS pixels of the viewport), and the viewport's size.
IN_VIEW = """
const b = arguments[0].getBoundingClientRect();
return {left: b.left, top: b.top, right: b.right, bottom: b.bottom,
        width: window.innerWidth, height: window.innerHeight};
"""


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_the_result_is_on_the_screen_after_an_example_and_after_translate(server, browser, picture, viewport):
    """Once the results sat below the first screen of a laptop (only their top ~110 px showed). On a laptop
    the result is beside the input; on a phone, where it is below the examples, a click scrolls to it."""
    emulate(browser, *viewport)
    open_page(browser, server)
    for how in ("example", "translate"):
        if how == "example":
            translate(browser, click=examples(browser)[0])
        else:
            open_and_upload(browser, server, picture, "horse → zebra")
            translate(browser)
        browser.save_screenshot(str(ARTIFACTS / f"browser-in-view-{how}-{viewport[0]}.png"))  # what the visitor sees
        slider = block(browser, OUTPUTS[0])
        for element in (slider, *slider.find_elements(By.CSS_SELECTOR, "img[data-testid=imageslider-image]")):
            box = browser.execute_script(IN_VIEW, element)
            assert (box["left"] >= -1 and box["top"] >= -1 and box["right"] <= box["width"] + 1
                    and box["bottom"] <= box["height"] + 1), (how, element.tag_name, box)  # to a pixel
        if viewport == LAPTOP:  # beside the input, F(G(x)) too, without any scrolling
            assert browser.execute_script("return window.scrollY") == 0
            box = browser.execute_script(IN_VIEW, block(browser, OUTPUTS[1]))
            assert box["bottom"] <= box["height"] and box["right"] <= box["width"], box


def test_a_video_is_translated_and_plays(server, browser, tmp_path):
    from tests.test_translate_cli import write_video
    clip = write_video(tmp_path / "clip.mp4", frames=8, size=(64, 48))
    open_page(browser, server)
    browser.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Video']").click()
    upload = WebDriverWait(browser, 30).until(lambda d: block(d, "Video").find_element(By.CSS_SELECTOR, "input[type=file]"))
    upload.send_keys(str(clip))
    WebDriverWait(browser, 30).until(lambda d: block(d, "Video").find_elements(By.TAG_NAME, "video"))
    browser.find_element(By.XPATH, "//button[normalize-space()='Translate video']").click()
    result = WebDriverWait(browser, 120).until(
        lambda d: block(d, "translated video G(x)").find_elements(By.TAG_NAME, "video"), "no translated video")[0]
    # It plays: the browser decodes the H.264 file, knows its size and length, and time moves on.
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].readyState", result) >= 2,
                                     "the browser cannot decode the translated video")
    assert browser.execute_script("return [arguments[0].videoWidth, arguments[0].videoHeight]", result) == [64, 48]
    assert abs(browser.execute_script("return arguments[0].duration", result) - 8 / 12) < 0.1
    browser.execute_script("arguments[0].muted = true; arguments[0].play()", result)
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return arguments[0].currentTime", result) > 0,
                                     "the translated video does not play")
    save_page(browser, ARTIFACTS / "browser-video.png")


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_the_slider_shows_all_of_x_and_G_x_fitted_and_aligned(server, browser, picture, viewport):
    """The slider once showed its images enlarged and cropped by its box, x and G(x) shifted apart. A tall
    picture (90×240) is cut off at both widths, where the slider is about 600 and 165 px wide."""
    portrait = picture.with_name("portrait.png")
    Image.open(picture).transpose(Image.Transpose.ROTATE_90).resize((90, 240)).save(portrait)
    emulate(browser, *viewport)
    open_and_upload(browser, server, portrait, "horse → zebra")
    translate(browser)
    slider = block(browser, OUTPUTS[0])
    box = browser.execute_script(INSIDE, slider)  # inside the block's border, which clips its content
    x, fake = slider.find_elements(By.CSS_SELECTOR, "img[data-testid=imageslider-image]")
    painted = [browser.execute_script(PAINTED, img) for img in (x, fake)]
    save_page(browser, ARTIFACTS / f"browser-slider-{viewport[0]}.png")
    for p in painted:
        assert p["natural"] == [90, 240]
        width, height = p["right"] - p["left"], p["bottom"] - p["top"]
        # The whole picture inside the box, at its own aspect ratio, and not shrunk below its own size
        # where the box has room for it.
        assert (p["left"] >= box["left"] - 1 and p["top"] >= box["top"] - 1 and p["right"] <= box["right"] + 1
                and p["bottom"] <= box["bottom"] + 1), (p, box)
        assert abs(width * 240 / 90 - height) <= 2, p
        assert width >= min(90, (box["right"] - box["left"]), (box["bottom"] - box["top"]) * 90 / 240) - 2, (p, box)
    # x and G(x) overlay exactly.
    assert all(abs(painted[0][k] - painted[1][k]) <= 1 for k in ("left", "top", "right", "bottom")), painted
    # F(G(x)) beside them at the same scale.
    rec = browser.execute_script(PAINTED, block(browser, OUTPUTS[1]).find_element(By.CSS_SELECTOR, "img"))
    assert rec["natural"] == [90, 240] and abs((rec["bottom"] - rec["top"]) - (p["bottom"] - p["top"])) <= 2, (rec, p)

    # Dragged to a quarter of the way, the handle still moves and G(x) begins where the handle is.
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)  # the whole drag on screen
    handle = slider.find_element(By.CSS_SELECTOR, "[data-testid=slider]")
    centre = "const r = arguments[0].getBoundingClientRect(); return r.left + r.width / 2"
    start = browser.execute_script(centre, handle)
    target = start - (painted[0]["right"] - painted[0]["left"]) / 4
    ActionChains(browser).drag_and_drop_by_offset(handle, round(target - start), 0).perform()

    def handle_and_clip_line(driver) -> tuple[float, float]:
        line = driver.execute_script("const r = arguments[0].getBoundingClientRect(), s = getComputedStyle("
                                     "arguments[0]).clipPath; return r.left + r.width * parseFloat(s.split(' ')[3]) / 100",
                                     fake)
        return driver.execute_script(centre, handle), line

    with suppress(TimeoutException):  # the drag lands within a frame or two
        WebDriverWait(browser, 5, poll_frequency=0.1).until(
            lambda d: all(abs(v - target) <= 3 for v in handle_and_clip_line(d)))
    moved, line = handle_and_clip_line(browser)
    assert abs(moved - target) <= 3 and abs(line - target) <= 3, (start, target, moved, line)
