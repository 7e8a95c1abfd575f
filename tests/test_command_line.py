"""What a person sees on the command line: bad input is one `PROG: error: MESSAGE` line and exit status 2, with no
traceback (training/command_line.py), and a run prints nothing that no user can act on: not the import-time notices
of torchao, torch and diffusers (training/library_notices.py)."""

import os
import subprocess
import sys

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

from diffkit import ClassConditionalImagePipeline, UnconditionalImagePipeline

from .utils import NUM_TEST_CLASSES, REPO_ROOT, TINY_CONDITION_UNET_CONFIG, TINY_UNET2D_CONFIG

# What the libraries print at import time with the test extras installed (torchao among them), before the filters
NOTICES = ("Failed to load", "torchao", "_pytree", "Enum subclass")


def command(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def run(argv, cwd=REPO_ROOT):
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    UnconditionalImagePipeline(unet=UNet2DModel(**TINY_UNET2D_CONFIG), scheduler=DDPMScheduler()).save_pretrained(
        folder / "unconditional"
    )
    ClassConditionalImagePipeline(
        unet=UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG),
        scheduler=DDPMScheduler(),
        num_classes=NUM_TEST_CLASSES,
    ).save_pretrained(folder / "class")
    (folder / "empty").mkdir()
    return folder


BAD_INPUT = {
    "steps 0": (["diffkit-generate", "--steps", "0"], "`--num_inference_steps` must be a positive integer, but is 0."),
    "missing model": (["diffkit-generate", "--model", "/nonexistent", "--class", "1"], "`--model` '/nonexistent'"),
    "unknown class": (["diffkit-generate", "--model", "{class}", "--class", "eleven"], "`--class` 'eleven'"),
    "lora of a diffkit model": (
        ["diffkit-generate", "--model", "{class}", "--class", "1", "--lora", "{empty}/missing.safetensors"],
        "`--lora`",
    ),
    "missing image": (
        ["diffkit-edit", "img2img", "--pipeline", "{unconditional}", "--image", "{empty}/missing.png"],
        "`--image`",
    ),
    "folder without a run": (["diffkit-evaluate", "{empty}"], "holds no training_config.json"),
    "push of a folder without a pipeline": (["diffkit-push", "{empty}", "someone/model"], "is not a saved pipeline"),
    "train resolution": (["diffkit-train", "--resolution", "30", "--output_dir", "{empty}/run"], "`--resolution` 30"),
    "train.py resolution": (
        [sys.executable, os.path.join(REPO_ROOT, "training", "train.py"), "--resolution", "30"],
        "`--resolution` 30",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_error_line_and_exit_status_2(case, models, tmp_path):
    argv, message = BAD_INPUT[case]
    argv = [part.format(**{name: models / name for name in ("class", "unconditional", "empty")}) for part in argv]
    if argv[0].startswith("diffkit-"):
        argv = [command(argv[0]), *argv[1:]]
    if "--out" not in argv and argv[-1] != "someone/model" and "diffkit-evaluate" not in argv[0]:
        argv += ["--output_dir", str(tmp_path / "out")] if "train" in " ".join(argv) else ["--out", str(tmp_path)]
    result = run(argv)
    prog = os.path.basename(argv[1] if argv[0] == sys.executable else argv[0])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{prog}: error: ") and message in lines[-1], result.stderr[-3000:]
    assert not [line for line in lines if any(notice in line for notice in NOTICES)], result.stderr


def test_a_generate_run_prints_no_library_notice(models, tmp_path):
    result = run([command("diffkit-generate"), "--model", str(models / "class"), "--class", "1", "--steps", "2",
                  "--out", str(tmp_path)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) and not [
        line for line in result.stderr.splitlines() if any(notice in line for notice in NOTICES)
    ], result.stderr
