"""diffkit installs as one import namespace with its commands, and folders saved before that change still load."""

import ast
import glob
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import tomllib
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
    "diffkit-train": "diffkit.cli.train",
    "diffkit-train-vae": "diffkit.cli.train_vae",
    "diffkit-distill": "diffkit.cli.distill",
    "diffkit-evaluate": "diffkit.cli.evaluate",
    "diffkit-generate": "diffkit.cli.generate",
    "diffkit-edit": "diffkit.cli.edit",
    "diffkit-push": "diffkit.push",
    "diffkit-app": "diffkit.app",
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
    # quiet: no warning about a package the command does not use (transformers' torchvision notice, for one)
    assert by_script.stderr == "" and by_module.stderr == ""
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


def imported_modules(path):
    """The absolute module names that a Python file imports, at any depth (function-level imports included)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_no_module_in_pipelines_imports_a_tool():
    # pipelines/ is what a model is; the commands, the Hub pusher, the web demo and training build on it, never the
    # other way round (a pipeline file is uploaded alone as remote code)
    tools = ("diffkit.cli", "diffkit.push", "diffkit.app", "diffkit.training", "diffkit.model_cards")
    for name in sorted(os.listdir(os.path.join(REPO_ROOT, "pipelines"))):
        if name.endswith(".py"):
            imports = imported_modules(os.path.join(REPO_ROOT, "pipelines", name))
            wrong = sorted(m for m in imports if m.startswith(tools) or m in ("diffkit",))
            assert not wrong, f"pipelines/{name} imports {wrong}"


def test_training_and_model_cards_import_no_tool_and_cards_no_training():
    # training/ and model_cards/ sit below the tools (commands, Hub pusher, web demo, the `diffkit` facade), and a
    # model card is rendered from what a run wrote, without the training code
    tools = ("diffkit.cli", "diffkit.push", "diffkit.app", "diffkit.demo")
    for folder, also_wrong in (("training", ()), ("model_cards", ("diffkit.training",))):
        for name in sorted(os.listdir(os.path.join(REPO_ROOT, folder))):
            if name.endswith(".py"):
                imports = imported_modules(os.path.join(REPO_ROOT, folder, name))
                wrong = sorted(m for m in imports if m.startswith(tools + also_wrong) or m == "diffkit")
                assert not wrong, f"{folder}/{name} imports {wrong}"


def package_source_files():
    """{module name: file in this checkout} for every module that pyproject.toml installs."""
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        setuptools_config = tomllib.load(f)["tool"]["setuptools"]
    folders = {package: package.replace(".", os.sep) for package in setuptools_config["packages"]}
    folders.update(setuptools_config["package-dir"])
    modules = {}
    for package, folder in folders.items():
        for name in os.listdir(os.path.join(REPO_ROOT, folder)):
            if name.endswith(".py"):
                module = package if name == "__init__.py" else f"{package}.{name[:-3]}"
                modules[module] = os.path.join(REPO_ROOT, folder, name)
    return modules


def test_every_module_maps_to_one_file_that_an_editor_can_follow():
    # An editor (Pyright/Pylance, Jedi) resolves imports from the path entries in site-packages' .pth files; it runs
    # no import hook, which is how setuptools' default editable mode maps pipelines/ to diffkit.pipelines.
    site_packages = sysconfig.get_paths()["purelib"]
    (direct_url,) = glob.glob(os.path.join(site_packages, "diffkit-*.dist-info", "direct_url.json"))
    with open(direct_url) as f:
        assert json.load(f)["dir_info"].get("editable"), (
            "the tests run against this checkout: install it with the README's second command"
        )
    path_entries = []
    for pth in glob.glob(os.path.join(site_packages, "__editable__*diffkit*.pth")):
        with open(pth) as f:
            path_entries += [line.strip() for line in f if line.strip() and not line.startswith("import")]
    assert path_entries, (
        "diffkit is installed in setuptools' default editable mode, an import hook that editors cannot follow: "
        "reinstall with `pip install -e . --config-settings editable_mode=strict` (the README's commands)"
    )
    modules = package_source_files()
    assert {"diffkit.app", "diffkit.cli.edit", "diffkit.pipelines.loaders", "diffkit.training.train"} <= set(modules)
    for module, source in modules.items():
        relative = module.replace(".", os.sep) + (os.sep + "__init__.py" if source.endswith("__init__.py") else ".py")
        found = [os.path.join(e, relative) for e in path_entries if os.path.isfile(os.path.join(e, relative))]
        assert len(found) == 1, (
            f"{module}: an editor finds {found or 'no file'} for {source}; a module added since the install needs "
            "the install command again"
        )
        assert os.path.realpath(found[0]) == os.path.realpath(source), module
        # and Python imports the same file
        assert os.path.realpath(importlib.util.find_spec(module).origin) == os.path.realpath(source), module


def test_committed_results_and_docs_hold_no_progress_bars_or_library_warnings():
    # benchmark output pasted with its terminal noise: tqdm bars and diffusers' loader warnings are not results
    noise = re.compile(r"it/s\]|Loading pipeline components|should be kept in float32")
    for folder in ("benchmarks/results", "docs"):
        for path in sorted(glob.glob(os.path.join(REPO_ROOT, folder, "*.md"))):
            noisy = [line for line in open(path, encoding="utf-8") if noise.search(line)]
            assert not noisy, f"{os.path.relpath(path, REPO_ROOT)}: {noisy[:2]}"
