"""`diffkit-app` as a user starts it: its arguments, what it listens on, and a real browser on its page."""

import json
import os
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
from gradio_client import Client
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
    yield process, url
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
        ([], "Nothing to demo: pass `--pipeline OUTPUT_DIR`"),
        (["--pipeline", "no/such/folder"], "`--pipeline` 'no/such/folder' is neither a folder nor a Hub repo id"),
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
    with pytest.raises(ValueError, match=f"`--pipeline` '{tmp_path}' cannot be loaded as a pipeline: .*model_index"):
        load_diffkit_pipeline(str(tmp_path))


def test_a_folder_with_code_diffkit_lacks_needs_trust_remote_code(pipeline_folder, monkeypatch):
    monkeypatch.setattr(demo, "DIFFKIT_INSTALLED", False)  # as on a machine without diffkit
    with pytest.raises(ValueError, match="pass `--trust_remote_code`"):
        load_diffkit_pipeline(pipeline_folder)
    pipe = load_diffkit_pipeline(pipeline_folder, trust_remote_code=True)
    assert type(pipe).__module__ != "pipelines.pipeline_class_conditional_image"  # the folder's own copy ran


@pytest.mark.slow
def test_the_command_serves_on_loopback_with_its_thread_count(served_app, pipeline_folder):
    process, url = served_app
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


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium), as .ci/run does, to run it",
)
@pytest.mark.slow
def test_browser_picks_a_class_and_sees_the_images(served_app, pipeline_folder, tmp_path):
    from playwright.sync_api import sync_playwright

    _, url = served_app
    with open(os.path.join(pipeline_folder, "model_index.json")) as f:
        labels = list(json.load(f)["id2label"].values())
    wanted = labels[min(7, len(labels) - 1)]
    screenshot = tmp_path / "app.png"
    with sync_playwright() as playwright:
        # Playwright's own browser download is not reachable here: drive Debian's chromium instead
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
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
        browser.close()
    assert images_shown(captions, wanted) == 4
    assert Image.open(screenshot).size[0] == 1280
    if SCREENSHOT_COPY:
        shutil.copyfile(screenshot, SCREENSHOT_COPY)


def images_shown(captions: str, label: str) -> int:
    """How many gallery captions name `label` (each reads 'label · seed N')."""
    return sum(line.strip().startswith(f"{label} · seed") for line in captions.splitlines())
