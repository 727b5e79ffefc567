"""The Train tab in a real browser: headless Chromium against `python app.py` with CYCLEGAN_TRAINING=1
uploads a tiny zip, starts a run, sees its progress move, reloads the page mid-run and finds the run still
shown and moving, stops it, resumes it to the end, and then translates an example with the run's model in
the Image tab. Without CYCLEGAN_TRAINING the tab and its endpoints do not exist. Skipped without
Chromium, except in CI (CI=...)."""
import pytest
from selenium.webdriver.common.by import By

from cyclegan.jobs import Jobs
from scripts.screenshot import (ROOT, choose, open_and_upload, open_page, open_tab, save_page, serve_app, set_number,
                                start_training, summary, translate, wait_for_training, zip_folders)
from tests.conftest import make_images
from tests.test_browser import ARTIFACTS, browser  # noqa: F401 (a fixture; the module skips without Chromium)

ENDPOINTS = {"/train_start", "/train_status", "/train_stop", "/train_resume"}


def stop_jobs(runs) -> None:
    """A job outlives the app that started it: asked twice to stop (the second kills), then waited for."""
    jobs = Jobs(runs)
    if jobs.running() is not None:
        jobs.stop()
        jobs.stop()
        jobs.wait(lambda s: jobs.running() is None, timeout=60)


@pytest.fixture(scope="module")
def training_server(tmp_path_factory):
    """`python app.py` with the Train tab on and a runs folder of its own; its URL."""
    runs = tmp_path_factory.mktemp("runs")
    try:
        with serve_app(CYCLEGAN_TRAINING="1", CYCLEGAN_RUNS=str(runs)) as url:
            yield url
    finally:
        stop_jobs(runs)


@pytest.fixture
def tiny_zip(tmp_path):
    """trainA/trainB/testA/testB, 6 images each of about 40×36."""
    folders = {name: make_images(tmp_path / name, 6, seed=i, color=(200, 60, 40) if "A" in name else (40, 60, 200))
               for i, name in enumerate(("trainA", "trainB", "testA", "testB"))}
    return zip_folders(tmp_path / "tiny.zip", folders)


def api_names(url: str) -> set[str]:
    from gradio_client import Client
    return set(Client(url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"])


def pressable(browser) -> dict[str, bool]:
    """Whether each of the Train tab's job buttons can be pressed (the same refresh as the progress)."""
    names = ("Start training", "Stop (saves)", "Resume")
    return {n: browser.find_element(By.XPATH, f"//button[normalize-space()='{n}']").is_enabled() for n in names}


def test_a_run_survives_a_reload_stops_resumes_finishes_and_its_model_translates(training_server, browser, tiny_zip):
    # A target far off, so that the run cannot end before the Stop however fast this machine is; the
    # resume then sets a near one.
    started = start_training(browser, training_server, tiny_zip, steps=1000, crop=32, load=36)
    run = started["run"]
    first = wait_for_training(browser, lambda p: p["state"] == "running" and p["step"] > 0, "no step was shown")
    assert first["run"] == run and first["total"] == 1000, first
    assert pressable(browser) == {"Start training": False, "Stop (saves)": True, "Resume": False}
    moved = wait_for_training(browser, lambda p: p["step"] > first["step"], "the progress did not move", timeout=30)

    # Reloaded mid-run, the page shows the same run, further on, and goes on following it.
    open_page(browser, training_server)
    open_tab(browser, "Train")
    again = wait_for_training(browser, lambda p: p["run"] == run and p["step"] >= moved["step"],
                              "the run was not shown after a reload", timeout=30)
    assert again["state"] == "running", again
    wait_for_training(browser, lambda p: p["step"] > again["step"], "the progress did not move after a reload",
                      timeout=30)

    browser.find_element(By.XPATH, "//button[normalize-space()='Stop (saves)']").click()
    stopped = wait_for_training(browser, lambda p: p["state"] == "stopped", "the run did not stop", timeout=60)
    assert 0 < stopped["step"] < 1000 and stopped["run"] == run, stopped
    assert pressable(browser) == {"Start training": True, "Stop (saves)": False, "Resume": True}

    # Resume to a target a few steps on (the steps field is the target of a resume).
    target = stopped["step"] + 12
    set_number(browser, "steps (0: the recipe's)", target)
    browser.find_element(By.XPATH, "//button[normalize-space()='Resume']").click()
    wait_for_training(browser, lambda p: p["state"] != "stopped", "the run did not resume", timeout=30)
    done = wait_for_training(browser, lambda p: p["state"] == "finished", "the run did not finish", timeout=120)
    assert done["run"] == run and done["step"] == done["total"] == target, done
    save_page(browser, ARTIFACTS / "train-tab-finished.png")

    # The run's model in the Image tab (after a reload: the list comes with the page), on an example.
    open_and_upload(browser, training_server, ROOT / "examples" / "horse-1.jpg", "horse → zebra")
    choose(browser, "Model", f"run: {run}")
    translate(browser)
    assert f"run: {run}" in summary(browser), summary(browser)

    # ...and from gradio_client, by the name the status gives (not only from the page that trained it)
    from gradio_client import Client, handle_file
    client = Client(training_server, verbose=False)
    status = client.predict(api_name="/train_status")
    assert (status["state"], status["model"], status["step"]) == ("finished", f"run: {run}", target)
    *_, line = client.predict(handle_file(str(ROOT / "examples" / "horse-1.jpg")), "A2B", True, status["model"],
                              api_name="/translate")
    assert f"run: {run}" in line


def test_without_CYCLEGAN_TRAINING_there_is_no_train_tab_nor_its_endpoints(server, training_server, browser):
    assert ENDPOINTS <= api_names(training_server)
    assert not ENDPOINTS & api_names(server)
    open_page(browser, server)
    tabs = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]")]
    assert "Image" in tabs and "Train" not in tabs, tabs
    assert not browser.find_elements(By.ID, "train-progress")
