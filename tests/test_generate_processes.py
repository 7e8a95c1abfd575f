"""`accelerate launch --num_processes N -m diffkit.cli.generate / diffkit.cli.evaluate`: the images are shared out
between the processes, each written once under the name and seed it has in one process, byte for byte the same;
the evaluation's figures equal one process's; asking for more processes than images is refused before loading."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from accelerate import PartialState
from PIL import Image

from diffkit.cli import batches_of_this_process, launched_processes
from diffkit.training.evaluate import evaluate

from .test_evaluate import tiny_run  # noqa: F401 (a fixture: a tiny class model trained on real digits)
from .tiny_stable_diffusion import save_tiny_stable_diffusion
from .utils import REPO_ROOT, free_port

ONE_PROCESS = ["--num_processes", "1"]
# as a user with two GPUs would type it; on this machine the processes are joined over gloo
TWO_PROCESSES = ["--multi_gpu", "--num_processes", "2"]


def launch(processes, module, *args):
    """`accelerate launch ... -m module args`, one CPU thread per process in every run, so that each process does
    its arithmetic as the single process does (thread counts can change a float's last bits on the CPU). A free
    port of our own: with `--main_process_port 0` the floor version of accelerate (1.1) never rendezvouses."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *processes, "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
        "--main_process_port", str(free_port()), "-m", module, *args,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.slow
def test_two_processes_write_each_image_once_byte_identical_to_one_process(tiny_run, tmp_path):  # noqa: F811
    args = ["--model", str(tiny_run), "--class", "three", "seven", "--num_images", "3", "--batch_size", "2"]
    args += ["--steps", "2", "--seed", "5"]
    one = launch(ONE_PROCESS, "diffkit.cli.generate", *args, "--out", str(tmp_path / "one"))
    two = launch(TWO_PROCESSES, "diffkit.cli.generate", *args, "--out", str(tmp_path / "two"))
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == [f"class_conditional-{label}-seed5-{i}.png" for label in ("seven", "three") for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    # each image was written by one process only: 6 images in 3 batches of 2, two batches for the first process
    written = [line for line in two.stdout.splitlines() if line.endswith(".png")]
    assert len(written) == len(set(written)) == 6
    assert len([line for line in one.stdout.splitlines() if line.endswith(".png")]) == 6


@pytest.mark.slow
def test_two_processes_share_a_stable_diffusion_run_byte_identically(tmp_path):
    save_tiny_stable_diffusion(tmp_path / "sd")
    args = ["sd", "--model", str(tmp_path / "sd"), "--prompt", "a cat", "--num_images", "2", "--batch_size", "1"]
    args += ["--steps", "2", "--width", "64", "--height", "64", "--seed", "3"]
    launch(ONE_PROCESS, "diffkit.cli.generate", *args, "--out", str(tmp_path / "one"))
    two = launch(TWO_PROCESSES, "diffkit.cli.generate", *args, "--out", str(tmp_path / "two"))
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["sd-seed3-0.png", "sd-seed3-1.png"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert len([line for line in two.stdout.splitlines() if line.endswith(".png")]) == 2


@pytest.mark.slow
def test_two_process_edits_are_byte_identical_to_one_process(tiny_run, tmp_path):  # noqa: F811
    side = json.loads((tiny_run / "unet" / "config.json").read_text())["sample_size"]
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)).save(tmp_path / "in.png")
    args = ["img2img", "--pipeline", str(tiny_run), "--image", str(tmp_path / "in.png"), "--class", "one", "two"]
    args += ["--batch_size", "1", "--steps", "4", "--strength", "0.5"]
    launch(ONE_PROCESS, "diffkit.cli.edit", *args, "--out", str(tmp_path / "one"))
    two = launch(TWO_PROCESSES, "diffkit.cli.edit", *args, "--out", str(tmp_path / "two"))
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["img2img-one-seed0-0.png", "img2img-two-seed0-0.png"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert len([line for line in two.stdout.splitlines() if line.endswith(".png")]) == 2


@pytest.mark.slow
def test_two_process_evaluation_gives_the_one_process_figures(tiny_run, tmp_path):  # noqa: F811
    args = [str(tiny_run), "--num_samples", "20", "--batch_size", "6", "--num_inference_steps", "2"]
    args += ["--feature_resolution", "32", "--classifier_epochs", "1", "--metrics", "FID-MobileNetV2"]
    args += ["class-accuracy", "--cache_dir", str(tmp_path / "cache")]
    launch(ONE_PROCESS, "diffkit.cli.evaluate", *args)
    one = json.loads((tiny_run / "metrics.json").read_text())
    launch(TWO_PROCESSES, "diffkit.cli.evaluate", *args)
    two = json.loads((tiny_run / "metrics.json").read_text())
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    for key in ("generated", "real_reference", "class-accuracy", "class-accuracy-per-class"):
        assert two[key] == one[key], key
    # more processes than batches: refused before the pipeline loads
    with pytest.raises(
        ValueError, match=r"3 processes share 2 batch\(es\) of `batch_size` 10: pass a `batch_size` of at"
    ):
        evaluate(str(tiny_run), num_samples=20, batch_size=10, state=SimpleNamespace(num_processes=3))


def test_more_processes_than_images_or_batches_is_refused():
    three = SimpleNamespace(num_processes=3)
    with pytest.raises(ValueError, match=r"`accelerate launch --num_processes 3` is more processes than the 2 images"):
        batches_of_this_process(three, 2, 1)
    with pytest.raises(ValueError, match=r"`--batch_size` 4 cuts the 6 images into 2 batches.*`--batch_size 2`"):
        batches_of_this_process(three, 6, 4)
    # one process: every batch, cut the same way as for several
    assert batches_of_this_process(PartialState(), 5, 2) == [range(0, 2), range(2, 4), range(4, 5)]


def test_a_device_for_several_processes_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"`--device` 'cuda:1' would put all 2 processes on one device"):
        with launched_processes("cuda:1"):
            pass
