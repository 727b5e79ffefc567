"""The Gradio app: image handling and tiling in the package, then `python app.py` as a user runs it,
called through gradio_client."""
import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan import CycleGAN
from cyclegan.inference import run_padded, run_tiled
from tests.conftest import ROOT, TINY, psnr, run_python


def test_tiled_translation_matches_untiled(tiny_model):
    g = tiny_model.G_AB
    with torch.no_grad():
        # A textured image: instance norm sees different statistics per tile, so the outputs differ a
        # little: 30.6 dB measured (downscaling by 2 instead of tiling: 16.8 dB).
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 40, 50, generator=torch.Generator().manual_seed(0)) * 2 - 1,
                                            size=(200, 260), mode="bilinear")
        tiled, whole = run_tiled(g, x, tile=96, overlap=16), run_padded(g, x)
        assert tiled.shape == whole.shape
        assert psnr(tiled, whole) >= 27
        assert torch.allclose(run_tiled(g, x, tile=512), run_padded(g, x), atol=1e-6)  # a single tile


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (33, 17), (10000, 8)])
def test_translate_keeps_odd_sizes(tiny_model, size):
    image = Image.new("RGB", size, (30, 120, 60))
    fake = tiny_model.translate(image, "A2B", max_side=512)
    assert fake.size == size


def test_large_images_are_tiled_or_downscaled(tiny_model):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    seen = []
    hook = tiny_model.G_AB.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    tiled = tiny_model.translate(image, max_side=128, large="tile", tile=128, overlap=16)
    assert sum(s[0] for s in seen) > 4 and max(max(s[-2:]) for s in seen) <= 128, seen  # tiles (in batches), none larger
    seen.clear()
    small = tiny_model.translate(image, max_side=128, large="downscale")
    hook.remove()
    assert seen == [(1, 3, 96, 128)], seen  # one pass at 94x128 (padded to a multiple of 4)
    assert tiled.size == small.size == image.size
    assert not np.array_equal(np.asarray(tiled), np.asarray(small))
    with pytest.raises(ValueError, match="large="):
        tiny_model.translate(image, max_side=128, large="crop")


@pytest.fixture
def photo(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    pixels = np.clip(rng.normal(120, 40, (70, 90, 3)), 0, 255).astype(np.uint8)
    pixels[20:50, 30:70] = (140, 100, 60)  # a brown "horse"
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    return path


def test_app_translates_both_ways_with_both_checkpoints(client, photo):
    from gradio_client import handle_file
    outputs = {}
    for direction in ("A2B", "B2A"):
        for identity in (True, False):
            result = client.predict(handle_file(str(photo)), direction, identity, api_name="/translate")
            x, fake, rec = (Image.open(p) for p in result[:3])  # the API's first three results stay x, G(x), F(G(x))
            assert x.size == fake.size == rec.size == (90, 70)
            assert [Image.open(p).size for p in result[4]] == [(90, 70)] * 2  # the slider: x and G(x)
            assert "cycle error" in result[-1]
            outputs[direction, identity] = np.asarray(fake.convert("RGB"), np.int16)
    for direction in ("A2B", "B2A"):  # the toggle really switches checkpoints
        assert np.abs(outputs[direction, True] - outputs[direction, False]).mean() > 1
    # and each G(x) is what the package makes of the photo with that checkpoint
    for identity, name in ((True, "horse2zebra-identity"), (False, "horse2zebra-no-identity")):
        model = CycleGAN.from_pretrained(ROOT / "weights" / name)
        for direction in ("A2B", "B2A"):
            expected = model.translate(Image.open(photo), direction)
            assert psnr(outputs[direction, identity], expected) >= 40, (name, direction)
    assert np.abs(outputs["A2B", True] - outputs["B2A", True]).mean() > 1


def test_app_reports_bad_files_and_keeps_serving(client, photo, tmp_path):
    from gradio_client import handle_file
    bad = tmp_path / "notes.png"
    bad.write_text("this is text, not a picture")
    with pytest.raises(Exception, match="notes.png: not an image file"):
        client.predict(handle_file(str(bad)), "A2B", True, api_name="/translate")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (30000, 30000)).save(bomb)  # tiny file, 900 megapixels once decoded
    with pytest.raises(Exception, match="bomb.png: image is larger than the limit"):
        client.predict(handle_file(str(bomb)), "A2B", True, api_name="/translate")
    result = client.predict(handle_file(str(photo)), "B2A", False, api_name="/translate")
    assert Image.open(result[1]).size == (90, 70)


def test_the_page_event_shows_the_translation_in_jpeg_and_reports_errors_in_one_line(client, photo, tmp_path):
    """/show, the page's own event (not listed on the API page): (x, G(x)) for the slider, F(G(x)), the heat map
    only when asked for, and the summary; JPEG of the same images as /translate's PNGs."""
    from gradio_client import handle_file
    bundled = "horse2zebra preview (bundled)"
    png = client.predict(handle_file(str(photo)), "B2A", True, bundled, "tile", True, api_name="/translate")
    for heat in (False, True):
        pair, rec, heat_map, summary = client.predict(handle_file(str(photo)), "B2A", True, bundled, "tile", heat,
                                                      api_name="/show")
        shown = [Image.open(p) for p in (*pair, rec, *([heat_map] if heat else []))]
        assert [(i.format, i.size) for i in shown] == [("JPEG", (90, 70))] * len(shown)
        assert (heat_map is None) != heat
        for jpeg, lossless in zip(shown, (png[0], png[1], png[2], png[3])):
            # 33.6-35.8 dB measured on this noisy photo (G(x) of examples/horse-1.jpg, zebra-2.jpg: 37.8, 34.6 dB)
            assert psnr(jpeg, Image.open(lossless).convert("RGB")) >= 32
        assert summary.startswith("**zebra → horse** with `horse2zebra-identity` · 90×70 px")
    bad = tmp_path / "notes.png"
    bad.write_text("this is text, not a picture")
    with pytest.raises(Exception) as e:
        client.predict(handle_file(str(bad)), "A2B", True, bundled, "tile", False, api_name="/show")
    assert str(e.value).startswith("Cannot use notes.png: not an image file") and "\n" not in str(e.value), str(e.value)
    api = json.load(urllib.request.urlopen(f"{client.src.rstrip('/')}/gradio_api/info"))["named_endpoints"]
    assert "/show" not in api  # the page's, not an API


def test_translate_outputs_stay_png_and_the_slider_shares_x_and_G_x(client, photo):
    from gradio_client import handle_file
    x, fake, rec, heat, pair, summary = client.predict(handle_file(str(photo)), "A2B", True, api_name="/translate")
    assert heat is None and "cycle error" in summary
    assert [Image.open(p).format for p in (x, fake, rec, *pair)] == ["PNG"] * 5
    assert [Image.open(p).tobytes() for p in pair] == [Image.open(p).tobytes() for p in (x, fake)]
    assert np.array_equal(np.asarray(Image.open(x)), np.asarray(Image.open(photo).convert("RGB")))


def test_api_page_describes_translate(client):
    import json
    import urllib.request
    api = json.load(urllib.request.urlopen(f"{client.src.rstrip('/')}/gradio_api/info"))["named_endpoints"]
    for endpoint, first in (("/translate", "image"), ("/translate_video", "video")):
        names = [p["parameter_name"] for p in api[endpoint]["parameters"]]
        assert names[:4] == [first, "direction", "identity", "model"]
        assert all(f"{name}: " in api[endpoint]["description"] for name in names), api[endpoint]["description"]


def test_only_configured_models_are_served(client, photo):
    """A name outside the list gets one answer, whatever exists on the server under that name."""
    from gradio_client import handle_file
    messages = []
    for name in ("/etc", "/nonexistent", "/work", "weights/horse2zebra-identity", "someone/model"):
        with pytest.raises(Exception) as e:
            client.predict(handle_file(str(photo)), "A2B", True, name, api_name="/translate")
        messages.append(str(e.value).replace(name, "NAME"))
    assert len(set(messages)) == 1 and "not in the list of choices" in messages[0], messages
    assert "horse2zebra preview (bundled)" in messages[0]


def test_authors_weights_that_cannot_be_downloaded_leave_the_bundled_models(client, photo):
    from gradio_client import handle_file
    with pytest.raises(Exception, match="authors' weights could not be downloaded"):
        client.predict(handle_file(str(photo)), "A2B", True, "horse2zebra (the CycleGAN authors' weights)",
                       api_name="/translate")
    result = client.predict(handle_file(str(photo)), "A2B", True, "horse2zebra preview (bundled)", api_name="/translate")
    assert Image.open(result[1]).size == (90, 70)


def test_translate_video_keeps_frames_and_size(client, tmp_path):
    from gradio_client import handle_file

    from tests.conftest import TEST_VIDEO_PIXELS
    from tests.test_translate_cli import frames_psnr, read_video, write_video
    odd = write_video(tmp_path / "clip.mkv", frames=8, size=(63, 47), codec="ffv1", rate=10)
    result = client.predict(handle_file(str(odd)), "B2A", False, api_name="/translate_video")
    path = result["video"] if isinstance(result, dict) else result
    assert Path(path).suffix == ".mp4" and read_video(Path(path)) == ("h264", 8, 64, 48, 10.0)
    # G of each frame with the checkpoint asked for: 43.9-44.7 dB measured; the other checkpoint's frames 17-20 dB
    model = CycleGAN.from_pretrained(ROOT / "weights" / "horse2zebra-no-identity")
    assert min(frames_psnr(model, odd, Path(path), "B2A")) >= 38
    long = write_video(tmp_path / "long.mp4", frames=16)
    with pytest.raises(Exception, match=f"long.mp4: 16 frames of 64×48 are over the limit of {TEST_VIDEO_PIXELS / 1e6:g}"):
        client.predict(handle_file(str(long)), "A2B", True, api_name="/translate_video")


def test_an_exported_browser_page_is_linked_and_served(tmp_path):
    from scripts.screenshot import serve_app
    site = tmp_path / "site with space"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>CycleGAN in your browser</title>")
    with serve_app(CYCLEGAN_WEB_DIR=str(site), CYCLEGAN_BACKEND="eager") as url:
        config = urllib.request.urlopen(f"{url}/config", timeout=60).read().decode()
        link = re.search(r"\[Run it in your browser\]\((/gradio_api/file=[^)]+)\)", config)
        assert link is not None, "no link to the page"
        page = urllib.request.urlopen(url + link[1], timeout=60)
        assert page.status == 200 and b"CycleGAN in your browser" in page.read()


def test_heat_map_ramps_from_black_through_red_and_yellow_to_white():
    from app import heat_map
    # Per column, how far F(G(x)) is from x in each channel; the map shows the channels' mean, 4x, clipped.
    differences = [(0, 0, 0), (21, 21, 21), (32, 32, 32), (43, 43, 43), (64, 64, 64), (150, 150, 150), (96, 0, 0)]
    x = np.full((3, len(differences), 3), 100, np.int16)
    sign = np.array([-1, 1] * 4)[:len(differences), None]  # darker or brighter: the same error
    rec = x + sign * np.array(differences)
    assert rec.min() >= 0 and rec.max() <= 255
    heat = heat_map(Image.fromarray(x.astype(np.uint8)), Image.fromarray(rec.astype(np.uint8)))
    assert heat.mode == "RGB" and heat.size == (len(differences), 3)
    colours = np.asarray(heat, np.int16)[1]
    expected = [(0, 0, 0), (252, 0, 0), (255, 129, 0), (255, 255, 6), (255, 255, 255), (255, 255, 255),
                (255, 129, 0)]  # black, red, orange, yellow, white, saturated; one channel off by 96 = all by 32
    assert np.abs(colours - np.array(expected)).max() <= 1, colours.tolist()
    assert (np.asarray(heat)[0] == np.asarray(heat)[2]).all()


APP_CHOICES = """
import json, sys
import app
answers = {}
for choice in app.MODELS:
    for identity in (True, False):
        try:
            answers[f"{choice} {identity}"] = app.get_model(choice, identity)[1]
        except app.gr.Error as e:
            answers[f"{choice} {identity}"] = e.message
summary = app.translate(sys.argv[1])[-1]  # the default model
print(json.dumps({"default": app.DEFAULT, "answers": answers, "about": app.about(app.MODELS), "summary": summary}))
"""


def test_models_that_cannot_be_loaded_are_reported_and_the_default_falls_back(tmp_path, monkeypatch):
    """A configured folder that is missing or broken is named on stderr, marked in the About table and
    refused with a message that says nothing of the server's files; the default is the first model that
    loads whole (a pair with a broken half is not), else the bundled pair."""
    good = CycleGAN(TINY).init_weights(0).save_pretrained(tmp_path / "tiny-good")
    broken = CycleGAN(TINY).init_weights(0).save_pretrained(tmp_path / "tiny-broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    missing = tmp_path / "gone"
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (120, 90, 60)).save(photo)
    refused = "cannot be loaded; the other models still work"

    monkeypatch.setenv("CYCLEGAN_MODELS", f"{missing},{good}|{broken}")
    done = run_python(["-c", APP_CHOICES, str(photo)])
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.splitlines()[-1])
    assert r["default"] == "horse2zebra preview (bundled)"
    assert "with `horse2zebra-identity`" in r["summary"] and "40×30 px" in r["summary"]
    assert r["answers"][f"{missing} True"] == f"Model {str(missing)!r} {refused}"
    assert r["answers"]["tiny-good / tiny-broken True"] == "tiny-good"  # the half that loads still serves
    assert r["answers"]["tiny-good / tiny-broken False"] == f"Model 'tiny-good / tiny-broken' {refused}"
    assert f"cannot load {missing}: " in done.stderr
    assert f"cannot load {broken}: {broken / 'model.safetensors'}: cannot be read as safetensors" in done.stderr
    assert "| tiny-good / tiny-broken | without | could not be loaded |" in r["about"]
    assert "| tiny-good / tiny-broken | with identity loss | ngf 8, 2 blocks |" in r["about"]
    # the arithmetic precision "auto" chose on this CPU, and the timings it chose by (where it timed)
    assert re.search(r"\| (fp32 \(this CPU has no bf16 in hardware\)|(fp32|bf16) \(measured at 128 px: fp32 \d+ ms, "
                     r"bf16 \d+ ms a call\)) \|\n", r["about"]), r["about"]

    monkeypatch.setenv("CYCLEGAN_MODELS", f"{broken},{good}")
    done = run_python(["-c", APP_CHOICES, str(photo)])
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.splitlines()[-1])
    assert r["default"] == "tiny-good"
    assert r["summary"].startswith("**horse → zebra** with `tiny-good` · 40×30 px")
    assert r["answers"]["tiny-broken True"] == f"Model 'tiny-broken' {refused}"
    assert "| tiny-broken |  | could not be loaded |" in r["about"]


def test_results_unused_for_the_cache_time_are_deleted(monkeypatch, tmp_path):
    """The page's results live in Gradio's cache, named by their content: one used again stays, one
    unused for CYCLEGAN_CACHE_SECONDS goes at the next pruning (so a Space's disk does not fill up)."""
    import app
    clock = [1000.0]
    monkeypatch.setattr(app.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(app, "CACHE", tmp_path)
    monkeypatch.setattr(app, "CACHE_SECONDS", 3600)
    monkeypatch.setattr(app, "WRITTEN", {})
    monkeypatch.setattr(app, "PRUNED", [clock[0]])
    red, green, blue = (Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue"))
    old, kept = Path(app.cached(red, "png")), Path(app.cached(green, "jpg"))
    clock[0] += 3000
    assert app.cached(green, "jpg") == str(kept)  # used again: its hour starts anew
    clock[0] += 700  # 3700 s after red's last use, 700 after green's
    new = Path(app.cached(blue, "png"))
    assert not old.exists() and not old.parent.exists()
    assert kept.is_file() and new.is_file() and set(app.WRITTEN) == {kept, new}
    assert app.cached(red, "png") == str(old) and old.is_file()  # asked for again: written again
