"""diffkit installs as one import namespace with its commands, and folders saved before that change still load."""

import importlib.metadata
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DConditionModel

import diffkit
from diffkit import ClassConditionalImagePipeline
from diffkit.model_cards import card

from .utils import REPO_ROOT

# Saved by ClassConditionalImagePipeline.save_pretrained at the last commit before the `diffkit` namespace (54e97cd,
# when the class was imported `from pipelines import ...`): a tiny random UNet and its pipeline file beside it.
SAVED_BEFORE_NAMESPACE = os.path.join(
    REPO_ROOT, "tests", "fixtures", "class_pipeline_saved_before_the_diffkit_namespace"
)
COMMANDS = {
    "diffkit-train": "diffkit.training.train",
    "diffkit-evaluate": "diffkit.training.evaluate",
    "diffkit-generate": "diffkit.pipelines.generate",
    "diffkit-edit": "diffkit.pipelines.edit",
    "diffkit-push": "diffkit.pipelines.push",
    "diffkit-app": "diffkit.pipelines.app",
}


def test_one_import_namespace():
    distribution = importlib.metadata.distribution("diffkit")
    assert distribution.read_text("top_level.txt").split() == ["diffkit"]
    assert diffkit.__version__ == distribution.version
    # the public classes and functions come from `diffkit` itself; the heavier ones on first use
    assert ClassConditionalImagePipeline.__module__ == "diffkit.pipelines.pipeline_class_conditional_image"
    from diffkit import canny_edges, load_stable_diffusion, score

    assert load_stable_diffusion.__module__ == "diffkit.pipelines.loaders"
    assert canny_edges.__module__ == "diffkit.pipelines.canny" and score.__module__ == "diffkit.training.evaluate"
    assert set(diffkit.__all__) <= set(dir(diffkit))
    with pytest.raises(AttributeError, match="has no attribute 'Trainer'"):
        diffkit.Trainer


def test_console_scripts_are_the_modules_mains():
    entry_points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    for command, module in COMMANDS.items():
        assert entry_points[command].split(":")[0] == module


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_has_help_identical_to_its_python_m_form(command, tmp_path):
    # run outside the repository: the installed commands must not depend on its folders
    executable = os.path.join(os.path.dirname(sys.executable), command)
    by_script = subprocess.run([executable, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    by_module = subprocess.run(
        [sys.executable, "-m", COMMANDS[command], "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert by_script.returncode == 0, by_script.stderr[-2000:]
    assert by_script.stdout == by_module.stdout
    assert by_script.stdout.startswith(f"usage: {command} ")


def test_card_install_line_is_true(monkeypatch):
    # no repository URL in the metadata: how to install from a source tree, never `pip install diffkit`
    assert card.install_instructions(None).startswith("from its source tree: `pip install .`")
    url = "https://example.org/diffkit.git"
    assert card.install_instructions(url) == f'`pip install "diffkit @ git+{url}"`'
    monkeypatch.setattr(card, "repository_url", lambda: url)
    training_config = {
        "args": {"conditioning": "class", "num_inference_steps": 20, "guidance_scale": 4.0, "seed": 0},
        "data": {"source": "digits", "num_images": 10, "num_channels": 1, "resolution": 8, "id2label": {"0": "a"}},
        "run": {"global_step": 1, "images_seen": 8, "total_batch_size": 8, "num_processes": 1, "train_seconds": 1.0,
                "final_loss": 0.5},
    }  # fmt: skip
    text = card.render_model_card(training_config, "ClassConditionalImagePipeline", "m", "out", "s.png").text
    assert f'With diffkit installed (`pip install "diffkit @ git+{url}"`)' in text
    assert "from diffkit import ClassConditionalImagePipeline" in text
    assert "pip install diffkit`" not in text and "pypi.org" not in text


def test_a_folder_saved_before_the_namespace_loads_both_ways():
    # The images to expect come from this run, not from a file: the folder's own UNet and scheduler, put together by
    # hand with its registered settings, sample the same images on whatever CPU runs the test.
    config = DiffusionPipeline.load_config(SAVED_BEFORE_NAMESPACE)
    by_hand = ClassConditionalImagePipeline(
        unet=UNet2DConditionModel.from_pretrained(SAVED_BEFORE_NAMESPACE, subfolder="unet"),
        scheduler=DDPMScheduler.from_pretrained(SAVED_BEFORE_NAMESPACE, subfolder="scheduler"),
    )
    by_hand.register_to_config(**{key: config[key] for key in ("num_classes", "null_class_id", "id2label")})
    by_hand.set_progress_bar_config(disable=True)
    kwargs = dict(class_labels=["dog", 2], num_inference_steps=3, guidance_scale=config["guidance_scale"])
    kwargs["output_type"] = "np"
    expected = by_hand(generator=torch.Generator().manual_seed(0), **kwargs).images

    pipe = ClassConditionalImagePipeline.from_pretrained(SAVED_BEFORE_NAMESPACE)
    assert type(pipe) is ClassConditionalImagePipeline  # diffkit's installed class: no code from the folder runs
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(pipe(generator=torch.Generator().manual_seed(0), **kwargs).images, expected)

    remote = DiffusionPipeline.from_pretrained(SAVED_BEFORE_NAMESPACE, trust_remote_code=True)
    assert (
        type(remote).__name__ == "ClassConditionalImagePipeline" and type(remote) is not ClassConditionalImagePipeline
    )
    remote.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(remote(generator=torch.Generator().manual_seed(0), **kwargs).images, expected)
