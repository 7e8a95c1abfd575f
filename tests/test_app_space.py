"""`diffkit-push --space_id`: a Gradio Space whose app is `diffkit/app.py` unchanged, run here as the
Space would run it (without diffkit installed), against the test Hub on 127.0.0.1."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from gradio_client import Client, handle_file
from PIL import Image

from diffkit.demo import SAVED_SAMPLER, api_name_for
from diffkit.push import APP_SOURCE_FILE, DEMO_SOURCE_FILE

from .hub_server import HubServer
from .test_app_command import start_app, stop_app
from .test_hub import WITHOUT_DIFFKIT, WRITE_TOKEN, assert_ran, hub_environment
from .test_pipelines import make_class_pipeline
from .utils import REPO_ROOT, TINY_CONDITION_UNET_CONFIG

# Every test here starts the loopback Hub server and a process.
pytestmark = pytest.mark.slow

MODEL_ID = "diffkit-tests/space-digits"
SPACE_ID = "diffkit-tests/space-digits-demo"
# Runs the Space's app.py as the Space does, with diffkit's packages hidden; arguments after -c reach its sys.argv.
RUN_SPACE = WITHOUT_DIFFKIT + "\nimport runpy\nrunpy.run_path('app.py', run_name='__main__')\n"


@pytest.fixture(scope="module")
def pushed_space(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("space")
    torch.manual_seed(0)
    pipe = make_class_pipeline(UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG).eval())
    pipe.save_pretrained(tmp_path / "digits")
    with HubServer(required_token=WRITE_TOKEN) as hub:
        env = hub_environment(hub, tmp_path)
        result = subprocess.run(
            [sys.executable, "-m", "diffkit.push", str(tmp_path / "digits"), MODEL_ID, "--space_id", SPACE_ID],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert_ran(result)
        yield hub, env, pipe, result.stdout, tmp_path


def test_the_space_holds_the_app_unchanged_and_a_launcher(pushed_space):
    hub, _, _, stdout, _ = pushed_space
    assert hub.repos[f"spaces/{SPACE_ID}"].sdk == "gradio"
    files = hub.files(f"spaces/{SPACE_ID}")
    with open(APP_SOURCE_FILE, "rb") as f:
        assert files["diffkit_app.py"] == f.read()  # no second copy of the app's code to drift
    with open(DEMO_SOURCE_FILE, "rb") as f:
        assert files["diffkit_demo.py"] == f.read()
    with open(os.path.join(REPO_ROOT, "pipelines", "model_kinds.py"), "rb") as f:
        assert files["model_kinds.py"] == f.read()  # the kinds' table, which the app reads there
    launcher = files["app.py"].decode()
    assert "from diffkit_app import main" in launcher
    assert f'main(["--model", "{MODEL_ID}", "--trust_remote_code", "--host", "0.0.0.0", *sys.argv[1:]])' in launcher
    card = files["README.md"].decode()
    assert card.startswith("---\ntitle: space-digits\nsdk: gradio\nsdk_version: ") and f"- {MODEL_ID}\n" in card
    assert "diffusers==" in files["requirements.txt"].decode()
    for kind in ("class_conditional", "text_conditional", "unconditional"):
        for task in ("inpaint", "img2img"):
            with open(os.path.join(REPO_ROOT, "pipelines", f"pipeline_{kind}_{task}.py"), "rb") as f:
                assert files[f"pipeline_{kind}_{task}.py"] == f.read()  # for the app's edit mode
    assert f"The web demo runs on the Space {SPACE_ID}" in stdout


def test_the_space_app_runs_without_diffkit_and_makes_the_pipelines_images(pushed_space):
    hub, env, pipe, _, tmp_path = pushed_space
    space_folder = tmp_path / "space-checkout"
    for path, content in hub.files(f"spaces/{SPACE_ID}").items():
        (space_folder / path).parent.mkdir(parents=True, exist_ok=True)
        (space_folder / path).write_bytes(content)
    command = [sys.executable, "-c", RUN_SPACE]
    # on a Space it listens on 0.0.0.0; here the later --host keeps it on this machine
    process, url = start_app(
        ["--host", "127.0.0.1"], tmp_path / "space.log", env=env, cwd=space_folder, command=command
    )
    digit = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(digit).save(tmp_path / "digit.png")
    painted = np.zeros((8, 8, 4), dtype=np.uint8)
    painted[4:] = 255
    Image.fromarray(painted, "RGBA").save(tmp_path / "painted.png")
    editor = {
        "background": handle_file(str(tmp_path / "digit.png")),
        "layers": [handle_file(str(tmp_path / "painted.png"))],
        "composite": handle_file(str(tmp_path / "digit.png")),
    }
    try:
        client = Client(url, verbose=False)
        api_name = api_name_for(MODEL_ID, [])
        gallery, info = client.predict(["bird"], 2, 3.0, 3, SAVED_SAMPLER, 4, False, api_name="/" + api_name)
        # the edit mode, with the inpainting pipeline file the Space holds beside the app
        edited, _ = client.predict(
            ["bird"],
            1,
            3.0,
            3,
            SAVED_SAMPLER,
            4,
            False,
            editor,
            "inpaint",
            0.6,
            0.2,
            api_name="/" + api_name.replace("generate_", "edit_"),
        )
    finally:
        stop_app(process)
    np.testing.assert_array_equal(np.asarray(Image.open(edited[0]["image"]))[:4], digit[:4])
    expected = pipe(
        class_labels=["bird", "bird"],
        num_inference_steps=3,
        output_type="np",
        generator=[torch.Generator().manual_seed(s) for s in (4, 5)],
    ).images
    served = np.stack([np.asarray(Image.open(item["image"])) for item in gallery])
    np.testing.assert_array_equal(served, (expected[..., 0] * 255).round().astype(np.uint8))
    assert info.startswith("2 images of 8x8")
