"""Pushing to and loading from the Hub, end to end against the test Hub server on 127.0.0.1.

huggingface_hub reads HF_ENDPOINT when it is first imported, so every client (training, `diffkit-push`,
loading) runs in a subprocess whose environment points at the server; HF_HOME is a fresh folder each time, so no
cached file or stored token of this machine takes part.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from diffusers import DDPMScheduler
from huggingface_hub import HfApi, ModelCard

from diffkit import ClassConditionalImagePipeline
from diffkit.push import main as push_main
from diffkit.training.train import parse_args

from .hub_server import HubServer
from .test_train import QUICK_RUN, write_unet_config
from .test_train_text import text_run_args
from .utils import REPO_ROOT, TINY_CONDITION_UNET_CONFIG, assert_launch_succeeded, run_accelerate_launch

WRITE_TOKEN = "hf_diffkit_test_write_token"
REPO_ID = "diffkit-tests/tiny-mnist"
# Makes diffkit's packages unimportable in a subprocess, as on a machine where only diffusers is installed.
WITHOUT_DIFFKIT = """
import importlib.abc, sys
class HideDiffkit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        # diffkit, and the names of its source folders (importable from the repository root, the tests' directory)
        if name.split(".")[0] in ("diffkit", "pipelines", "training", "model_cards"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
sys.meta_path.insert(0, HideDiffkit())
try:
    import diffkit
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("diffkit is still importable")
"""
# Four steps of sampling for two labels with a fixed seed; the images go to the .npy file given as argv[1].
GENERATE = """
import numpy as np, torch
pipe.set_progress_bar_config(disable=True)
images = pipe(class_labels=[3, 7], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
np.save(sys.argv[1], images.images)
print("loaded as", type(pipe).__module__, type(pipe).__name__)
"""


def hub_environment(hub, tmp_path, token=WRITE_TOKEN):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return env


def run_python(code_parts, env, *args):
    """Run the concatenated code parts (each dedented) as a script, with `args` as its sys.argv[1:]."""
    parts = [code_parts] if isinstance(code_parts, str) else code_parts
    return subprocess.run(
        [sys.executable, "-c", "\n".join(textwrap.dedent(part) for part in parts), *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_ran(result):
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"


def weights_commit(hub):
    """The commit of the first push from training: the one that uploaded the weights and code."""
    return next(c for c in hub.repos[REPO_ID].commits if c.summary.startswith("Upload ClassConditional"))


@pytest.fixture(scope="module")
def hub():
    with HubServer(required_token=WRITE_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def pushed_run(hub, tmp_path_factory):
    """A tiny class-conditional run trained with --push_to_hub; the token comes from HF_TOKEN."""
    tmp_path = tmp_path_factory.mktemp("pushed_run")
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    result = run_accelerate_launch(
        [
            *QUICK_RUN,
            "--output_dir",
            str(output_dir),
            "--model_config_name_or_path",
            unet_config,
            "--checkpointing_steps",
            "1",
            "--checkpoints_total_limit",
            "2",
            "--push_to_hub",
            "--hub_model_id",
            REPO_ID,
            "--push_checkpoints",
            "--model_license",
            "mit",
        ],
        env=hub_environment(hub, tmp_path),
    )
    assert_launch_succeeded(result)
    return output_dir, result


@pytest.mark.slow
def test_push_from_training_uploads_a_self_contained_repo(hub, pushed_run):
    output_dir, result = pushed_run
    files = hub.files(REPO_ID)
    expected = {
        "model_index.json",
        "pipeline_class_conditional_image.py",
        "README.md",
        "samples.png",
        "training_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    }
    assert expected <= set(files)
    # checkpoints 1-3 were pushed as they were written; rotation deleted checkpoint-1 locally and in the repo
    pushed_checkpoints = {path.split("/")[1] for path in files if path.startswith("checkpoints/")}
    assert pushed_checkpoints == {"checkpoint-2", "checkpoint-3"}
    assert "checkpoints/checkpoint-3/training_state.json" in files
    assert not [path for path in files if path.startswith(("checkpoint-", "logs/", ".")) and path != ".gitattributes"]
    pipeline_file = "pipeline_class_conditional_image.py"
    assert files[pipeline_file] == (output_dir / pipeline_file).read_bytes()
    assert json.loads(files["model_index.json"])["_class_name"] == [
        "pipeline_class_conditional_image",
        "ClassConditionalImagePipeline",
    ]
    assert files["samples.png"] == (output_dir / "samples.png").read_bytes()
    # the token reached the server but none of the files, local or pushed
    local_files = [p for p in output_dir.rglob("*") if p.is_file()]
    assert not [p for p in local_files if WRITE_TOKEN.encode() in p.read_bytes()]
    assert not [path for path, content in files.items() if WRITE_TOKEN.encode() in content]
    commits = hub.repos[REPO_ID].commits
    assert [c.summary for c in commits[1:]] == [
        "Upload checkpoint-1",
        "Upload checkpoint-2",
        "Upload checkpoint-3",
        "Upload ClassConditionalImagePipeline trained with diffkit",
        f"Model card: load revision {weights_commit(hub).oid[:7]}",
    ]
    assert f"at revision {weights_commit(hub).oid}" in result.stderr


@pytest.mark.slow
def test_model_card_on_the_hub(hub, pushed_run, tmp_path):
    card_file = tmp_path / "README.md"
    card_file.write_bytes(hub.files(REPO_ID)["README.md"])
    card = ModelCard.load(card_file)
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.license == "mit"
    assert card.data.datasets == ["ylecun/mnist"]
    assert {"diffkit", "class-conditional"} <= set(card.data.tags)
    weights_revision = weights_commit(hub).oid
    pinned = f'"{REPO_ID}", revision="{weights_revision}"'
    assert f"DiffusionPipeline.from_pretrained({pinned}, trust_remote_code=True)" in card.text
    assert f"ClassConditionalImagePipeline.from_pretrained({pinned})" in card.text
    assert "pin the revision" in card.text
    assert "![Samples](samples.png)" in card.text
    assert "| optimisation steps | 3 |" in card.text
    # the card read through the Hub API, as `ModelCard.load(repo_id)` does
    result = run_python(
        f"from huggingface_hub import ModelCard; print(ModelCard.load({REPO_ID!r}).data.license)",
        hub_environment(hub, tmp_path, token=None),
    )
    assert_ran(result)
    assert result.stdout.strip() == "mit"


@pytest.mark.slow
def test_both_ways_of_loading_give_the_same_images(hub, pushed_run, tmp_path):
    env = hub_environment(hub, tmp_path, token=None)  # a public repo: reading needs no token
    load_with_diffkit = f"""
        import sys
        from diffkit import ClassConditionalImagePipeline
        pipe = ClassConditionalImagePipeline.from_pretrained({REPO_ID!r})
        """
    with_diffkit = run_python(
        [load_with_diffkit, GENERATE],
        env,
        tmp_path / "diffkit.npy",
    )
    assert_ran(with_diffkit)
    installed_class = "diffkit.pipelines.pipeline_class_conditional_image ClassConditionalImagePipeline"
    assert f"loaded as {installed_class}" in with_diffkit.stdout

    load_with_remote_code = f"""
        import sys
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({REPO_ID!r}, trust_remote_code=True)
        """
    without_diffkit = run_python(
        [WITHOUT_DIFFKIT, load_with_remote_code, GENERATE],
        env,
        tmp_path / "remote_code.npy",
    )
    assert_ran(without_diffkit)
    assert "ClassConditionalImagePipeline" in without_diffkit.stdout
    assert "pipelines.pipeline_class" not in without_diffkit.stdout  # the class came from the repo's file

    diffkit_images = np.load(tmp_path / "diffkit.npy")
    assert diffkit_images.shape == (2, 16, 16, 1)
    np.testing.assert_array_equal(diffkit_images, np.load(tmp_path / "remote_code.npy"))

    # trust_remote_code stays off unless asked for
    refused = run_python(
        [WITHOUT_DIFFKIT, f"from diffusers import DiffusionPipeline; DiffusionPipeline.from_pretrained({REPO_ID!r})"],
        env,
    )
    assert refused.returncode != 0 and "trust_remote_code=True" in refused.stderr


@pytest.mark.slow
def test_loading_honours_revision_cache_dir_and_local_files_only(hub, pushed_run, tmp_path):
    env = hub_environment(hub, tmp_path, token=None)
    code = f"""
        import sys
        from diffkit import ClassConditionalImagePipeline
        kwargs = dict(cache_dir=sys.argv[1], local_files_only=sys.argv[2] == "offline")
        pipe = ClassConditionalImagePipeline.from_pretrained({REPO_ID!r}, revision=sys.argv[3], **kwargs)
        print("num_classes", pipe.config.num_classes)
        if sys.argv[2] == "online":
            try:
                ClassConditionalImagePipeline.from_pretrained({REPO_ID!r}, revision="0" * 40, **kwargs)
            except Exception as error:
                print("missing revision:", type(error).__name__, error)
        """
    cache_dir = tmp_path / "cache"
    assert_ran(online := run_python(code, env, cache_dir, "online", weights_commit(hub).oid))
    assert "num_classes 10" in online.stdout
    # diffusers reports a failed lookup as "not fully cached" and logs the Hub's reason, which names the revision
    assert "missing revision: OSError Cannot load model diffkit-tests/tiny-mnist" in online.stdout
    assert f"Invalid rev id: {'0' * 40}" in online.stderr
    assert list(cache_dir.glob("models--diffkit-tests--tiny-mnist/snapshots/*/unet"))
    # from the cache alone, with the server unreachable
    env_offline = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    assert_ran(run_python(code, env_offline, cache_dir, "offline", weights_commit(hub).oid))


@pytest.mark.slow
def test_push_command_adds_a_commit_to_an_existing_repo_with_the_evaluated_figures_in_its_card(
    hub, pushed_run, tmp_path
):
    output_dir = tmp_path / "out"
    shutil.copytree(pushed_run[0], output_dir)
    # what `diffkit-evaluate` writes beside the weights
    metrics = {
        "num_samples": 12, "seed": 0, "global_step": 3, "sampler": "DDPMScheduler", "num_inference_steps": 2,
        "guidance_scale": 2.0, "mobilenet_resolution": 32, "generated": {"FID-MobileNetV2": 123.4567},
        "real_reference": {"FID-MobileNetV2": 12.3456},
    }  # fmt: skip
    (output_dir / "metrics.json").write_text(json.dumps(metrics))
    commits_before = len(hub.repos[REPO_ID].commits)
    result = subprocess.run(
        [sys.executable, "-m", "diffkit.push", str(output_dir), REPO_ID, "--commit_message", "Push again"],
        cwd=REPO_ROOT,
        env=hub_environment(hub, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ran(result)
    commits = hub.repos[REPO_ID].commits
    assert len(commits) == commits_before + 2
    assert commits[-2].summary == "Push again"
    assert f"at revision {commits[-2].oid}" in result.stdout
    assert f'revision="{commits[-2].oid}"' in commits[-1].files["README.md"].decode()
    assert "| FID-MobileNetV2 | 123.4567 | 12.3456 |" in commits[-1].files["README.md"].decode()


@pytest.mark.slow
def test_pipeline_push_to_hub_from_python_is_self_contained_and_private(hub, tmp_path):
    repo_id = "diffkit-tests/private-tiny"
    code = f"""
        import torch
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from diffkit import ClassConditionalImagePipeline
        from tests.utils import TINY_CONDITION_UNET_CONFIG
        torch.manual_seed(0)
        pipe = ClassConditionalImagePipeline(UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG), DDPMScheduler())
        pipe.push_to_hub({repo_id!r}, private=True)
        """
    assert_ran(run_python(code, hub_environment(hub, tmp_path)))
    assert hub.repos[repo_id].private
    assert "pipeline_class_conditional_image.py" in hub.files(repo_id)

    load = [
        WITHOUT_DIFFKIT,
        f"""
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({repo_id!r}, trust_remote_code=True)
        print(type(pipe).__name__)
        """,
    ]
    assert_ran(with_token := run_python(load, hub_environment(hub, tmp_path / "a")))
    assert "ClassConditionalImagePipeline" in with_token.stdout
    without_token = run_python(load, hub_environment(hub, tmp_path / "b", token=None))
    assert without_token.returncode != 0 and "RepositoryNotFoundError" in without_token.stderr


# Inpaints the bottom half of a fixed 8x8 image for two labels; the images go to the .npy file given as argv[1].
INPAINT = """
import numpy as np, torch
image = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
mask = np.zeros((8, 8), dtype=np.uint8)
mask[4:] = 255
inpaint.set_progress_bar_config(disable=True)
images = inpaint(image=image, mask_image=mask, class_labels=[1, 2], num_inference_steps=3,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
np.save(sys.argv[1], images)
print("loaded as", type(inpaint).__module__, type(inpaint).__name__)
"""


@pytest.mark.slow
def test_pushed_inpainting_pipeline_loads_without_diffkit_and_gives_identical_images(hub, tmp_path):
    repo_id = "diffkit-tests/inpaint-tiny"
    push = """
        import sys, torch
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from diffkit import ClassConditionalImagePipeline, ClassConditionalInpaintPipeline
        from tests.utils import TINY_CONDITION_UNET_CONFIG
        torch.manual_seed(0)
        pipe = ClassConditionalImagePipeline(UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG), DDPMScheduler())
        inpaint = ClassConditionalInpaintPipeline.from_pipe(pipe)
        """
    push_and_inpaint = [push, INPAINT, f"inpaint.push_to_hub({repo_id!r})"]
    assert_ran(run_python(push_and_inpaint, hub_environment(hub, tmp_path), tmp_path / "pushed.npy"))
    assert "pipeline_class_conditional_inpaint.py" in hub.files(repo_id)
    load = [
        WITHOUT_DIFFKIT,
        f"""
        from diffusers import DiffusionPipeline
        inpaint = DiffusionPipeline.from_pretrained({repo_id!r}, trust_remote_code=True)
        """,
        INPAINT,
    ]
    result = run_python(load, hub_environment(hub, tmp_path / "loader"), tmp_path / "loaded.npy")
    assert_ran(result)
    assert "ClassConditionalInpaintPipeline" in result.stdout and "diffkit" not in result.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "loaded.npy"), np.load(tmp_path / "pushed.npy"))


# Upscales a fixed 4x4 image for two labels; the images go to the .npy file given as argv[1].
UPSCALE = """
import numpy as np, torch
image = (np.arange(16, dtype=np.uint8) * 16).reshape(4, 4)
stage.set_progress_bar_config(disable=True)
images = stage(image=[image, image], class_labels=[1, 2], num_inference_steps=3,
               generator=torch.Generator().manual_seed(0), output_type="np").images
np.save(sys.argv[1], images)
print("loaded as", type(stage).__module__, type(stage).__name__)
"""


@pytest.mark.slow
def test_pushed_super_resolution_stage_loads_without_diffkit_and_gives_identical_images(hub, tmp_path):
    repo_id = "diffkit-tests/upscale-tiny"
    push = """
        import sys
        from tests.test_super_resolution import make_stage
        stage = make_stage(class_conditional=True, noise_level=0.2)
        """
    assert_ran(
        run_python(
            [push, UPSCALE, f"stage.push_to_hub({repo_id!r})"], hub_environment(hub, tmp_path), tmp_path / "pushed.npy"
        )
    )
    assert "pipeline_super_resolution.py" in hub.files(repo_id)
    load = [
        WITHOUT_DIFFKIT,
        f"""
        from diffusers import DiffusionPipeline
        stage = DiffusionPipeline.from_pretrained({repo_id!r}, trust_remote_code=True)
        assert stage.config.noise_level == 0.2
        """,
        UPSCALE,
    ]
    result = run_python(load, hub_environment(hub, tmp_path / "loader"), tmp_path / "loaded.npy")
    assert_ran(result)
    assert "SuperResolutionPipeline" in result.stdout and "diffkit" not in result.stdout
    pushed, loaded = np.load(tmp_path / "pushed.npy"), np.load(tmp_path / "loaded.npy")
    # the pusher's stage was built in code, the loader's read from files: the same weights, float rounding apart
    np.testing.assert_allclose(loaded, pushed, atol=1e-5)
    assert loaded.shape == (2, 8, 8, 1)


@pytest.mark.slow
def test_failed_push_after_training_keeps_the_outputs_and_says_how_to_push_again(hub, tmp_path):
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    hub.fail_commits = True
    try:
        result = run_accelerate_launch(
            [
                *QUICK_RUN,
                "--output_dir",
                str(output_dir),
                "--model_config_name_or_path",
                unet_config,
                "--push_to_hub",
                "--hub_model_id",
                "diffkit-tests/fails",
            ],
            env=hub_environment(hub, tmp_path),
        )
    finally:
        hub.fail_commits = False
    assert result.returncode == 1
    assert "500" in result.stderr
    assert f"python -m diffkit.push {output_dir} diffkit-tests/fails" in result.stderr
    assert f"Training finished and its outputs are saved in {output_dir}" in result.stderr
    assert (output_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (output_dir / "samples.png").is_file()


@pytest.mark.slow
def test_push_command_to_an_unreachable_hub_keeps_the_folder(pushed_run, tmp_path):
    output_dir, _ = pushed_run
    before = sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*"))
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path), "HF_TOKEN": WRITE_TOKEN}
    result = subprocess.run(
        [sys.executable, "-m", "diffkit.push", str(output_dir), "someone/model"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "could not be reached" in result.stderr and "Local files are untouched" in result.stderr
    assert sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*")) == before


@pytest.mark.slow
def test_push_to_hub_without_a_token_stops_before_training(hub, tmp_path):
    requests_before = len(hub.requests)
    result = run_accelerate_launch(
        [*QUICK_RUN, "--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_model_id", "diffkit-tests/x"],
        env=hub_environment(hub, tmp_path, token=None),
    )
    assert result.returncode == 1
    assert "401" in result.stderr and "pass a token with write access" in result.stderr
    assert "Steps:" not in result.stderr  # no training happened
    assert not (tmp_path / "out").exists()
    new_requests = hub.requests[requests_before:]
    assert "POST /api/repos/create" in new_requests
    assert not [r for r in new_requests if "/preupload/" in r or "/commit/" in r]  # no upload was attempted
    assert "diffkit-tests/x" not in hub.repos


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--push_to_hub", "--hub_model_id", "bad name/with space"], "`--hub_model_id` 'bad name/with space'"),
        (["--push_to_hub", "--hub_model_id", "a/b/c"], "is not a valid Hub repo id"),
        (["--hub_model_id", "me/model"], "`--hub_model_id` only takes effect with --push_to_hub"),
        (["--push_checkpoints"], "`--push_checkpoints` only takes effect with --push_to_hub"),
    ],
)
def test_bad_hub_flags_are_rejected_before_training(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_args(["--output_dir", str(tmp_path / "out"), *flags])


def test_push_command_rejects_bad_input_before_calling_the_hub(tmp_path, monkeypatch, tiny_condition_unet):
    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was called before the input was checked")

    monkeypatch.setattr(HfApi, "create_repo", no_network)
    (tmp_path / "not_a_pipeline" / "unet").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"is not a saved pipeline \(it has no model_index.json\)"):
        push_main([str(tmp_path / "not_a_pipeline"), "someone/model"])

    pipeline_dir = tmp_path / "pipeline"
    ClassConditionalImagePipeline(tiny_condition_unet, DDPMScheduler()).save_pretrained(pipeline_dir)
    with pytest.raises(ValueError, match="`repo_id` 'not a repo id' is not a valid Hub repo id"):
        push_main([str(pipeline_dir), "not a repo id"])
    with pytest.raises(ValueError, match="`--space_id` 'a demo' is not a valid Hub repo id"):
        push_main([str(pipeline_dir), "someone/model", "--space_id", "a demo"])

    # a pipeline saved without its code beside it (as diffusers' own save_pretrained would leave it)
    (pipeline_dir / "pipeline_class_conditional_image.py").unlink()
    with pytest.raises(ValueError, match="without its code beside it"):
        push_main([str(pipeline_dir), "someone/model"])


TEXT_REPO_ID = "diffkit-tests/tiny-text"
GENERATE_FROM_PROMPTS = """
import numpy as np, torch
pipe.set_progress_bar_config(disable=True)
images = pipe(["a handwritten seven", "the digit 3"], negative_prompt="the digit 1", num_inference_steps=4,
              generator=torch.Generator().manual_seed(0), output_type="np")
np.save(sys.argv[1], images.images)
print("loaded as", type(pipe).__module__, type(pipe).__name__)
"""


@pytest.mark.slow
def test_text_pipeline_pushed_from_training_loads_both_ways(hub, tiny_clip_folder, tmp_path):
    output_dir = tmp_path / "out"
    args = [
        *text_run_args(tmp_path, tiny_clip_folder),
        "--output_dir",
        str(output_dir),
        "--push_to_hub",
        "--hub_model_id",
        TEXT_REPO_ID,
    ]
    assert_launch_succeeded(run_accelerate_launch(args, env=hub_environment(hub, tmp_path)))
    files = hub.files(TEXT_REPO_ID)
    assert {
        "pipeline_text_conditional_image.py",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "README.md",
        "samples.png",
    } <= set(files)
    card_file = tmp_path / "README.md"
    card_file.write_bytes(files["README.md"])
    card = ModelCard.load(card_file)
    assert card.data.pipeline_tag == "text-to-image" and "TextConditionalImagePipeline.from_pretrained(" in card.text

    env = hub_environment(hub, tmp_path, token=None)
    with_diffkit = run_python(
        [
            f"import sys\nfrom diffkit import TextConditionalImagePipeline\n"
            f"pipe = TextConditionalImagePipeline.from_pretrained({TEXT_REPO_ID!r})",
            GENERATE_FROM_PROMPTS,
        ],
        env,
        tmp_path / "diffkit.npy",
    )
    assert_ran(with_diffkit)
    assert "pipelines.pipeline_text_conditional_image TextConditionalImagePipeline" in with_diffkit.stdout
    without_diffkit = run_python(
        [
            WITHOUT_DIFFKIT,
            f"import sys\nfrom diffusers import DiffusionPipeline\n"
            f"pipe = DiffusionPipeline.from_pretrained({TEXT_REPO_ID!r}, trust_remote_code=True)",
            GENERATE_FROM_PROMPTS,
        ],
        env,
        tmp_path / "remote_code.npy",
    )
    assert_ran(without_diffkit)
    assert "pipelines.pipeline_text" not in without_diffkit.stdout  # the class came from the repo's file
    images = np.load(tmp_path / "diffkit.npy")
    assert images.shape == (2, 16, 16, 1)
    np.testing.assert_array_equal(images, np.load(tmp_path / "remote_code.npy"))


@pytest.mark.slow
def test_a_vae_trained_with_push_to_hub_loads_from_the_hub(hub, tmp_path):
    from .test_train_vae import TINY_VAE_RUN

    repo_id = "diffkit-tests/tiny-vae"
    env = hub_environment(hub, tmp_path)
    result = run_accelerate_launch(
        [*TINY_VAE_RUN, "--output_dir", str(tmp_path / "vae"), "--push_to_hub", "--hub_model_id", repo_id],
        env=env,
        script="train_vae.py",
    )
    assert_launch_succeeded(result)
    files = hub.files(repo_id)
    assert {"config.json", "diffusion_pytorch_model.safetensors", "reconstructions.png", "README.md"} <= set(files)
    assert not [name for name in files if name.startswith("checkpoint-")]  # checkpoints stay local
    # a fresh process, with only diffusers, loads it from the Hub by its id
    loaded = run_python(
        f"""
        from diffusers import AutoencoderKL
        vae = AutoencoderKL.from_pretrained({repo_id!r})
        print("scaling_factor", vae.config.scaling_factor)
        """,
        env,
    )
    assert_ran(loaded)
    saved = json.loads((tmp_path / "vae" / "config.json").read_text())["scaling_factor"]
    assert f"scaling_factor {saved}" in loaded.stdout


@pytest.mark.slow
def test_a_latent_pipeline_pushed_with_the_push_command_loads_without_diffkit(hub, tmp_path):
    """A folder with a `vae` needs no special flag: diffkit-push uploads the VAE beside the UNet, and plain diffusers
    loads the pipeline (and its VAE) as remote code, giving the same images."""
    repo_id = "diffkit-tests/latent-tiny"
    save = """
        import sys, torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffkit import ClassConditionalImagePipeline
        from tests.utils import TINY_CONDITION_UNET_CONFIG
        torch.manual_seed(0)
        config = {**TINY_CONDITION_UNET_CONFIG, "in_channels": 2, "out_channels": 2, "encoder_hid_dim": 11}
        unet = UNet2DConditionModel(**config)  # 10 classes and the null label, as GENERATE asks for 3 and 7
        vae = AutoencoderKL(
            in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=2,
            norm_num_groups=4, layers_per_block=1, scaling_factor=0.7,
        )
        pipe = ClassConditionalImagePipeline(unet, DDPMScheduler(), vae=vae)
        pipe.save_pretrained(sys.argv[2])
        """
    folder = tmp_path / "latent"
    assert_ran(run_python([save, GENERATE], hub_environment(hub, tmp_path), tmp_path / "saved.npy", folder))
    push = subprocess.run(
        [sys.executable, "-m", "diffkit.push", str(folder), repo_id],
        cwd=REPO_ROOT,
        env=hub_environment(hub, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ran(push)
    assert {"vae/config.json", "vae/diffusion_pytorch_model.safetensors"} <= set(hub.files(repo_id))
    load = [
        WITHOUT_DIFFKIT,
        f"""
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({repo_id!r}, trust_remote_code=True)
        assert type(pipe.vae).__name__ == "AutoencoderKL", type(pipe.vae)
        """,
        GENERATE,
    ]
    result = run_python(load, hub_environment(hub, tmp_path / "loader"), tmp_path / "loaded.npy")
    assert_ran(result)
    loaded = np.load(tmp_path / "loaded.npy")
    assert loaded.shape == (2, 16, 16, 1)  # 8x8 latents, decoded to 16 px
    np.testing.assert_array_equal(loaded, np.load(tmp_path / "saved.npy"))
