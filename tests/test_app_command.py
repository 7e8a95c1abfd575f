"""`diffkit-app` as a user starts it: its arguments, what it listens on, and a real browser on its page."""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from diffkit import app, demo
from diffkit.app import build_parser, parse_args
from diffkit.demo import SAVED_SAMPLER, api_name_for, load_diffkit_pipeline, pipeline_title

from .test_pipelines import make_class_pipeline
from .tiny_stable_diffusion import save_tiny_sdxl, save_tiny_stable_diffusion, save_tiny_upscaler
from .utils import REPO_ROOT, TINY_CONDITION_UNET_CONFIG, free_port

CHROMIUM = "/usr/bin/chromium"
# The README's screenshot is this test's, taken with the default job's model:
#   DIFFKIT_APP_PIPELINE=out DIFFKIT_APP_SCREENSHOT=benchmarks/results/app.png \
#   python -m pytest tests/test_app_command.py -k browser
PIPELINE_UNDER_TEST = os.environ.get("DIFFKIT_APP_PIPELINE")
SCREENSHOT_COPY = os.environ.get("DIFFKIT_APP_SCREENSHOT")
STARTUP_TIMEOUT_S = 180


def start_app(argv, log_path, env=None, cwd=REPO_ROOT, command=None):
    """Start the app in its own process; return it with its URL once the page answers."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    command = command or [sys.executable, "-m", "diffkit.app"]
    with open(log_path, "w") as log:
        process = subprocess.Popen([*command, *argv, "--port", str(port)], cwd=cwd, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}:\n{open(log_path).read()[-5000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return process, url
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    process.kill()
    raise AssertionError(f"the app did not answer within {STARTUP_TIMEOUT_S} s:\n{open(log_path).read()[-5000:]}")


def stop_app(process):
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def listening_addresses(port: int):
    """The IPv4/IPv6 addresses (as the kernel's hex) on which something listens on `port`."""
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    addresses.append(address)
    return addresses


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    if PIPELINE_UNDER_TEST:
        return PIPELINE_UNDER_TEST
    folder = str(tmp_path_factory.mktemp("served") / "digits")
    torch.manual_seed(0)
    make_class_pipeline(UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG).eval()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served_app(pipeline_folder, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("app-log") / "app.log"
    process, url = start_app(["--pipeline", pipeline_folder, "--num_threads", "1"], log_path)
    yield process, url, log_path
    stop_app(process)


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    help_text = capsys.readouterr().out
    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"
    for option in ("--pipeline", "--sd", "--sdxl", "--controlnet", "--host", "--port", "--share", "--num_threads"):
        assert option in help_text


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "Nothing to demo: pass `--model OUTPUT_DIR`"),
        (["--pipeline", "no/such/folder"], "`--model` 'no/such/folder' is neither a folder nor a Hub repo id"),
        (["--sd", "bad repo id"], "`--sd` 'bad repo id' is neither a folder nor a Hub repo id"),
        (["--pipeline", ".", "--port", "70000"], "`--port` 70000 is not a TCP port"),
        (["--pipeline", ".", "--num_threads", "0"], "`--num_threads` must be a positive integer"),
        (["--pipeline", ".", "--controlnet_base", "."], "pass `--controlnet` too"),
        (["--pipeline", ".", "--device", "gpu"], "`--device` 'gpu' is not a torch device"),
    ],
)
def test_bad_arguments_are_rejected_before_loading(argv, message):
    with pytest.raises(ValueError) as error:
        parse_args(argv)
    assert message in str(error.value)


def test_the_default_address_is_this_machine_only():
    args = parse_args(["--pipeline", "."])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)


def test_the_models_load_on_the_thread_that_runs_them(pipeline_folder, monkeypatch):
    """Weights loaded on one thread and run on another made each request slower (benchmarks/bench_app.py): the
    command sets the thread count and loads on the compute thread, where every request runs."""
    seen = {}

    def recording_load_models(args):
        seen["load"] = threading.get_ident()
        seen["num_threads"] = torch.get_num_threads()
        return {"diffkit_pipelines": {}}

    monkeypatch.setattr(demo, "load_models", recording_load_models)
    monkeypatch.setattr(demo.gr.Blocks, "launch", lambda self, **kwargs: None)
    threads_before = demo.on_compute_thread(torch.get_num_threads)
    try:
        app.main(["--pipeline", pipeline_folder, "--num_threads", "1"])
    finally:  # torch keeps the count for threads started later in this test process
        demo.on_compute_thread(torch.set_num_threads, threads_before)
    assert seen == {"load": demo.on_compute_thread(threading.get_ident), "num_threads": 1}
    assert seen["load"] != threading.get_ident()


@pytest.mark.filterwarnings("ignore:Running diffusion on the CPU")
def test_inpaint_and_upscaler_models_load_with_their_loaders(tmp_path):
    """--inpaint takes an SD or SDXL inpainting checkpoint (told apart by its model_index.json), --upscaler the x4
    upscaler; a checkpoint of another kind is refused with the loader's message."""
    sd_inpaint = save_tiny_stable_diffusion(str(tmp_path / "sd_inpaint"), inpainting=True)
    sdxl_inpaint = save_tiny_sdxl(str(tmp_path / "sdxl_inpaint"), inpainting=True)
    upscaler = save_tiny_upscaler(str(tmp_path / "upscaler"))
    models = demo.load_models(parse_args(["--inpaint", sd_inpaint, "--upscaler", upscaler, "--device", "cpu"]))
    assert type(models["inpaint"]).__name__ == "StableDiffusionInpaintPipeline"
    assert type(models["upscaler"]).__name__ == "StableDiffusionUpscalePipeline"
    models = demo.load_models(parse_args(["--inpaint", sdxl_inpaint, "--device", "cpu"]))
    assert type(models["inpaint"]).__name__ == "StableDiffusionXLInpaintPipeline"
    with pytest.raises(ValueError, match="7 input channels: it is the x4 upscaler"):
        demo.load_models(parse_args(["--inpaint", upscaler, "--device", "cpu"]))


def test_a_folder_that_is_not_a_pipeline_is_named_in_the_error(tmp_path):
    with pytest.raises(ValueError, match=f"`--model` '{tmp_path}' cannot be loaded as a pipeline: .*model_index"):
        load_diffkit_pipeline(str(tmp_path))


def test_a_folder_with_code_diffkit_lacks_needs_trust_remote_code(pipeline_folder, monkeypatch):
    monkeypatch.setattr(demo, "DIFFKIT_INSTALLED", False)  # as on a machine without diffkit
    with pytest.raises(ValueError, match="pass `--trust_remote_code`"):
        load_diffkit_pipeline(pipeline_folder)
    pipe = load_diffkit_pipeline(pipeline_folder, trust_remote_code=True)
    assert type(pipe).__module__ != "pipelines.pipeline_class_conditional_image"  # the folder's own copy ran


@pytest.mark.slow
def test_the_command_serves_on_loopback_with_its_thread_count(served_app, pipeline_folder):
    process, url, _ = served_app
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    assert listening_addresses(port) == ["0100007F"]  # 127.0.0.1 only, not 0.0.0.0
    with open(os.path.join(pipeline_folder, "model_index.json")) as f:
        labels = list(json.load(f)["id2label"].values())
    client = Client(url, verbose=False)
    api_name = "/" + api_name_for(pipeline_title(pipeline_folder), [])  # /generate_digits for the tiny model
    gallery, info = client.predict([labels[-1]], 2, 4.0, 4, SAVED_SAMPLER, 0, False, api_name=api_name)
    side = UNet2DConditionModel.load_config(pipeline_folder, subfolder="unet")["sample_size"]
    assert [np.asarray(Image.open(item["image"])).shape for item in gallery] == [(side, side)] * 2
    assert "1 CPU thread." in info  # --num_threads 1 holds in the request's worker thread


needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium), as .ci/run does, to run it",
)


@contextlib.contextmanager
def browser_page(url: str, height: int = 900):
    """A page of a headless chromium, 1280 pixels wide, opened at `url`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright's own browser download is not reachable here: drive Debian's chromium instead
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": height})
        page.goto(url)
        try:
            yield page
        finally:
            browser.close()


def model_labels(pipeline_folder):
    with open(os.path.join(pipeline_folder, "model_index.json")) as f:
        return list(json.load(f)["id2label"].values())


@needs_chromium
@pytest.mark.slow
def test_browser_picks_a_class_and_sees_the_images(served_app, pipeline_folder, tmp_path):
    _, url, _ = served_app
    labels = model_labels(pipeline_folder)
    wanted = labels[min(7, len(labels) - 1)]
    screenshot = tmp_path / "app.png"
    with browser_page(url) as page:
        classes = page.get_by_label("Classes")
        # replace the preselected class by the wanted one
        page.locator(".token-remove").first.click()
        classes.click()
        page.get_by_role("option", name=wanted).click()
        page.keyboard.press("Escape")
        page.get_by_role("button", name="Generate").click()
        images = page.locator(".diffkit-gallery img")
        images.first.wait_for(timeout=120_000)
        page.wait_for_selector("text=/images of \\d+x\\d+ in/", timeout=120_000)
        captions = page.locator(".diffkit-gallery").inner_text()
        page.screenshot(path=str(screenshot), full_page=True)
    assert images_shown(captions, wanted) == 4
    assert Image.open(screenshot).size[0] == 1280
    if SCREENSHOT_COPY:
        shutil.copyfile(screenshot, SCREENSHOT_COPY)


@needs_chromium
@pytest.mark.slow
def test_browser_error_keeps_the_images_and_its_message(served_app, pipeline_folder):
    _, url, _ = served_app
    first_label = model_labels(pipeline_folder)[0]
    with browser_page(url) as page:
        page.get_by_role("button", name="Generate").click()
        page.wait_for_selector("text=/images of \\d+x\\d+ in/", timeout=120_000)
        page.locator(".token-remove").first.click()  # no class left: a bad request
        page.get_by_role("button", name="Generate").click()
        message = page.locator(".diffkit-error")
        message.wait_for(timeout=60_000)
        page.wait_for_timeout(3_000)  # longer than a toast would have stayed
        captions = page.locator(".diffkit-gallery").inner_text()
        assert "Error: class_labels must name at least one class" in message.inner_text()
        assert message.is_visible()
        assert page.locator(".diffkit-gallery img").count() == 4
    assert images_shown(captions, first_label) == 4


def editor_zoom(page) -> float:
    """The image editor's zoom, as a factor, from the percentage its toolbar shows."""
    return float(page.get_by_text(re.compile(r"^\d+%$")).first.inner_text().rstrip("%")) / 100


@needs_chromium
@pytest.mark.slow
def test_browser_edits_a_few_painted_pixels_and_shows_them_by_the_edit_button(served_app, pipeline_folder, tmp_path):
    _, url, _ = served_app
    side = UNet2DConditionModel.load_config(pipeline_folder, subfolder="unet")["sample_size"]
    grey = np.full((side, side), 128, dtype=np.uint8)  # an inpainted pixel differs from it, black or white
    Image.fromarray(grey).save(tmp_path / "grey.png")
    painted_row, painted_column = (side * 3) // 4, side // 4
    with browser_page(url, height=1400) as page:
        page.get_by_text("Edit an image").click()
        # each task shows the controls it uses
        strength, noise_level = page.get_by_label("Strength"), page.get_by_label("Noise level")
        assert not strength.is_visible() and not noise_level.is_visible()
        page.get_by_label("img2img").check()
        page.get_by_text("Image to redraw").wait_for()
        assert strength.first.is_visible() and not noise_level.is_visible()
        page.get_by_label("denoise").check()
        page.get_by_text("Image to denoise").wait_for()
        assert noise_level.first.is_visible() and not strength.is_visible()
        page.get_by_label("inpaint").check()
        page.get_by_text("Image (paint over what to fill)").wait_for()
        with page.expect_file_chooser() as chooser:
            page.get_by_label("Upload", exact=True).click()
        chooser.value.set_files(str(tmp_path / "grey.png"))
        page.wait_for_timeout(2_000)  # the editor zooms the image to fit, then selects the brush
        # one short stroke on one pixel of the image, which the editor centres on its canvas
        canvas = page.locator("canvas").first.bounding_box()
        pixel = editor_zoom(page)
        left = canvas["x"] + canvas["width"] / 2 - side * pixel / 2
        top = canvas["y"] + canvas["height"] / 2 - side * pixel / 2
        x, y = left + (painted_column + 0.5) * pixel, top + (painted_row + 0.5) * pixel
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 1, y)
        page.mouse.up()
        edit_button = page.get_by_role("button", name="Edit", exact=True)
        edit_button.click()
        page.wait_for_selector("text=/inpaint: \\w+Scheduler/", timeout=120_000)
        edited = page.locator(".diffkit-edited img")
        sources = [edited.nth(i).get_attribute("src") for i in range(edited.count())]
        # the results lie just below the Edit button, in view; the gallery at the top got none of them
        assert 0 < edited.first.bounding_box()["y"] - edit_button.bounding_box()["y"] < 300
        assert page.locator(".diffkit-gallery img").count() == 0
    assert len(sources) == 4
    radius = max(1, round(side * demo.MASK_BRUSH_FRACTION))
    for source in sources:
        with urllib.request.urlopen(source) as response:
            image = np.asarray(Image.open(io.BytesIO(response.read())))
        rows, columns = np.nonzero(image != grey)
        # only pixels under the stroke changed: a few, not the whole digit as the old 25 px brush painted
        assert 0 < len(rows) <= (2 * radius + 2) ** 2
        assert np.abs(rows - painted_row).max() <= radius + 1 and np.abs(columns - painted_column).max() <= radius + 1


def images_shown(captions: str, label: str) -> int:
    """How many gallery captions name `label` (each reads 'label · seed N')."""
    return sum(line.strip().startswith(f"{label} · seed") for line in captions.splitlines())


@pytest.mark.slow
def test_the_server_log_stays_quiet_on_edits_and_out_of_range_values(served_app, pipeline_folder, tmp_path):
    _, url, log_path = served_app
    side = UNet2DConditionModel.load_config(pipeline_folder, subfolder="unet")["sample_size"]
    Image.fromarray(np.zeros((side, side), dtype=np.uint8)).save(tmp_path / "digit.png")
    layer = np.zeros((side, side, 4), dtype=np.uint8)
    layer[side // 2 :] = 255
    Image.fromarray(layer, "RGBA").save(tmp_path / "painted.png")
    image = handle_file(str(tmp_path / "digit.png"))
    editor = {"background": image, "layers": [handle_file(str(tmp_path / "painted.png"))], "composite": image}
    client = Client(url, verbose=False)
    api_name = "/" + api_name_for(pipeline_title(pipeline_folder), [], prefix="edit_")
    with open(os.path.join(pipeline_folder, "model_index.json")) as f:
        label = list(json.load(f)["id2label"].values())[0]
    settings = [[label], 1, 3.0, 2, SAVED_SAMPLER, 0, False]
    for _ in range(2):
        gallery, _ = client.predict(*settings, editor, "inpaint", 0.6, 0.2, api_name=api_name)
        assert len(gallery) == 1
    too_many_images = [[label], 10_000, *settings[2:]]
    with pytest.raises(AppError, match="Images: Value 10000 is greater than maximum value") as error:
        client.predict(*too_many_images, editor, "inpaint", 0.6, 0.2, api_name=api_name)
    assert "Images: Images:" not in str(error.value)  # the control both buttons read names itself once
    with pytest.raises(AppError, match="Strength: Value 2.0 is greater than maximum value 1"):
        client.predict(*settings, editor, "img2img", 2.0, 0.2, api_name=api_name)
    log = open(log_path).read()
    assert "should be kept in float32" not in log and not server_errors(log), log[-3000:]


def server_errors(log: str) -> list:
    """The exception lines of the tracebacks in a server log, less the clients' disconnects: on a slow machine the
    Gradio client may drop a streaming connection that the server then reports (starlette's ClientDisconnect),
    which is no error of the app."""
    lines = log.splitlines()
    errors = []
    for index, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            ending = next((x for x in lines[index + 1 :] if x.strip() and not x.startswith(" ")), "(cut off)")
            if not ending.split(":")[0].endswith("ClientDisconnect"):
                errors.append(ending)
    return errors


def test_server_errors_tell_app_errors_from_client_disconnects():
    header = "Traceback (most recent call last):\n"
    disconnect = header + '  File "x.py", line 1, in f\n    g()\nstarlette.requests.ClientDisconnect\n'
    failure = header + '  File "app.py", line 2, in h\n    1 / 0\nZeroDivisionError: division by zero\n'
    assert server_errors("INFO: started\n" + disconnect) == []
    assert server_errors(disconnect + failure) == ["ZeroDivisionError: division by zero"]
    assert server_errors('Traceback (most recent call last):\n  File "a.py", line 3') == ["(cut off)"]
