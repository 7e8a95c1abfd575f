import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from diffkit import ClassConditionalImagePipeline, UnconditionalImagePipeline
from diffkit.training.arguments import CONDITIONING_CHOICES, NON_RUN_FLAGS
from diffkit.training.dataset_loading import MNIST_LABEL_NAMES, load_mnist_5k
from diffkit.training.train import TRAINING_CONFIG_NAME, build_parser, main, parse_args, run_config

from .utils import TINY_CONDITION_UNET_CONFIG, TINY_UNET2D_CONFIG, assert_launch_succeeded, run_accelerate_launch

RESOLUTION = 16
# A few optimisation steps on a handful of real digits: enough to exercise every stage of the script.
QUICK_RUN = [
    "--max_train_samples", "40", "--max_train_steps", "3", "--train_batch_size", "8", "--lr_warmup_steps", "1",
    "--resolution", str(RESOLUTION), "--num_inference_steps", "2", "--num_samples_per_class", "2",
]  # fmt: skip


def write_unet_config(tmp_path, config, name):
    data_keys = ("sample_size", "in_channels", "out_channels", "encoder_hid_dim", "encoder_hid_dim_type")
    path = tmp_path / name
    path.write_text(json.dumps({k: v for k, v in config.items() if k not in data_keys}))
    return str(path)


@pytest.mark.slow
def test_train_class_conditional_with_accelerate_launch(tmp_path):
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    result = run_accelerate_launch(
        [*QUICK_RUN, "--output_dir", str(output_dir), "--model_config_name_or_path", unet_config]
    )
    assert_launch_succeeded(result)
    assert "Steps: 100%" in result.stderr  # the progress bar

    assert (output_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(output_dir.glob("**/*.bin"))
    model_index = json.loads((output_dir / "model_index.json").read_text())
    # the file stem and class with which `trust_remote_code=True` loads the copy of the pipeline file beside it
    assert model_index["_class_name"] == ["pipeline_class_conditional_image", "ClassConditionalImagePipeline"]
    assert (output_dir / "pipeline_class_conditional_image.py").is_file()
    assert model_index["num_classes"] == 10 and model_index["null_class_id"] == 10
    assert model_index["id2label"] == {str(i): name for i, name in enumerate(MNIST_LABEL_NAMES)}

    config = json.loads((output_dir / TRAINING_CONFIG_NAME).read_text())
    assert config["args"]["conditioning"] == "class_conditional" and config["args"]["max_train_steps"] == 3
    assert config["data"]["num_images"] == 40 and config["data"]["num_channels"] == 1
    assert config["run"]["global_step"] == 3 and np.isfinite(config["run"]["final_loss"])

    card = ModelCard.load(output_dir / "README.md")
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert "class-conditional" in card.data.tags
    assert "![Samples](samples.png)" in card.text
    assert "ClassConditionalImagePipeline.from_pretrained(" in card.text and "0 = zero" in card.text

    grid = Image.open(output_dir / "samples.png")
    assert grid.size == (2 * RESOLUTION, 10 * RESOLUTION)  # one row per class, --num_samples_per_class columns

    pipe = ClassConditionalImagePipeline.from_pretrained(output_dir)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        class_labels=[3, "seven"],
        guidance_scale=4.0,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images
    assert [im.size for im in images] == [(RESOLUTION, RESOLUTION)] * 2


@pytest.mark.slow
def test_train_unconditional_with_accelerate_launch(tmp_path):
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_UNET2D_CONFIG, "unet.json")
    result = run_accelerate_launch(
        [
            *QUICK_RUN,
            "--conditioning",
            "none",
            "--output_dir",
            str(output_dir),
            "--model_config_name_or_path",
            unet_config,
            "--prediction_type",
            "v_prediction",
            "--beta_schedule",
            "linear",
        ]
    )
    assert_launch_succeeded(result)
    scheduler_config = json.loads((output_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["prediction_type"] == "v_prediction" and scheduler_config["beta_schedule"] == "linear"
    model_index = json.loads((output_dir / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_unconditional_image", "UnconditionalImagePipeline"]
    assert Image.open(output_dir / "samples.png").size == (2 * RESOLUTION, 8 * RESOLUTION)
    pipe = UnconditionalImagePipeline.from_pretrained(output_dir)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, RESOLUTION, RESOLUTION, 1)


def write_digit_folder(root, classes=("three", "seven"), per_class=6, mode="RGB", size=20):
    """Real MNIST digits written as image files, one subfolder per class."""
    digits = load_mnist_5k()
    for name in classes:
        label = MNIST_LABEL_NAMES.index(name)
        (root / name).mkdir(parents=True)
        rows = [i for i, lab in enumerate(digits["label"]) if lab == label][:per_class]
        for i in rows:
            digits[i]["image"].convert(mode).resize((size, size)).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_train_on_local_colour_image_folder(tmp_path):
    data_dir = write_digit_folder(tmp_path / "digits")
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    result = run_accelerate_launch(
        [
            *QUICK_RUN,
            "--train_data_dir",
            str(data_dir),
            "--output_dir",
            str(output_dir),
            "--random_flip",
            "--model_config_name_or_path",
            unet_config,
            "--beta_schedule",
            "scaled_linear",
        ]
    )
    assert_launch_succeeded(result)
    pipe = ClassConditionalImagePipeline.from_pretrained(output_dir)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.config.id2label == {"0": "seven", "1": "three"}  # subfolder names, sorted
    assert pipe.unet.config.in_channels == 3
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=["three"], num_inference_steps=2).images
    assert images[0].mode == "RGB" and images[0].size == (RESOLUTION, RESOLUTION)
    assert Image.open(output_dir / "samples.png").size == (2 * RESOLUTION, 2 * RESOLUTION)


def test_train_on_a_dataset_by_name_with_custom_columns(tmp_path):
    """`--dataset_name` goes through `datasets.load_dataset`; here a local parquet dataset, as the Hub serves them."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)) for _ in range(6)]
    dataset_dir = write_parquet_dataset(tmp_path / "hub", {"img": images, "digit": [0, 1, 2, 0, 1, 2]})
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    run_in_process(
        [
            "--dataset_name",
            dataset_dir,
            "--image_column",
            "img",
            "--label_column",
            "digit",
            "--resolution",
            "8",
            "--center_crop",
            "--max_train_steps",
            "2",
            "--train_batch_size",
            "4",
            "--num_inference_steps",
            "2",
            "--num_samples_per_class",
            "1",
            "--model_config_name_or_path",
            unet_config,
            "--output_dir",
            str(output_dir),
        ]
    )
    config = json.loads((output_dir / TRAINING_CONFIG_NAME).read_text())
    assert config["data"]["num_channels"] == 3 and config["data"]["resolution"] == 8
    assert config["data"]["id2label"] == {"0": "0", "1": "1", "2": "2"}  # integer labels are named by their id
    assert Image.open(output_dir / "samples.png").size == (8, 3 * 8)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: each is a ValueError naming the flag and value, raised before training (and before any output).


def run_in_process(args):
    main(parse_args(args))


def write_parquet_dataset(root, columns):
    import datasets

    root.mkdir()
    datasets.Dataset.from_dict(columns).to_parquet(str(root / "train.parquet"))
    return str(root)


def digit_images(n=4):
    return [Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_folder", "`--train_data_dir` '.*missing' is not a folder"),
        ("empty_folder", "`--train_data_dir` '.*empty' holds no images"),
        ("folder_without_classes", "`--conditioning class_conditional` needs labels, but `--train_data_dir`"),
        ("hub_without_image_column", "`--image_column` 'image' is not a column of `--dataset_name`"),
        ("hub_without_label_column", "`--label_column` 'label' is not a column of `--dataset_name`"),
        ("hub_float_labels", "`--label_column` 'label' has type .*float.*, which is not class-like"),
        ("hub_string_labels", "`--label_column` 'label' has type .*string.*, which is not class-like"),
        ("resolution", "`--resolution` 30 cannot be halved evenly .* multiple of 4"),
        ("both_sources", "`--dataset_name` .* and `--train_data_dir` .* were both given"),
        ("condition_dropout", "`--condition_dropout` must be in \\[0, 1\\), but is 1.0"),
        ("zero_steps", "`--max_train_steps` must be a positive integer, but is 0"),
    ],
)
def test_bad_training_input_is_rejected_before_training(tmp_path, case, message):
    output_dir = tmp_path / "out"
    args = ["--output_dir", str(output_dir), "--max_train_steps", "1"]
    if case == "missing_folder":
        args += ["--train_data_dir", str(tmp_path / "missing")]
    elif case == "empty_folder":
        (tmp_path / "empty" / "cats").mkdir(parents=True)
        (tmp_path / "empty" / "cats" / "notes.txt").write_text("no images here")
        args += ["--train_data_dir", str(tmp_path / "empty")]
    elif case == "folder_without_classes":
        (tmp_path / "flat").mkdir()
        for i, image in enumerate(digit_images()):
            image.save(tmp_path / "flat" / f"{i}.png")
        args += ["--train_data_dir", str(tmp_path / "flat")]
    elif case.startswith("hub_"):
        columns = {
            "hub_without_image_column": {"picture": digit_images(), "label": [0, 1, 0, 1]},
            "hub_without_label_column": {"image": digit_images(), "digit": [0, 1, 0, 1]},
            "hub_float_labels": {"image": digit_images(), "label": [0.5, 1.0, 0.0, 1.5]},
            "hub_string_labels": {"image": digit_images(), "label": ["a", "b", "a", "b"]},
        }[case]
        args += ["--dataset_name", write_parquet_dataset(tmp_path / "hub", columns)]
    elif case == "resolution":
        args += ["--max_train_samples", "8", "--resolution", "30"]
    elif case == "both_sources":
        args += ["--dataset_name", "mnist", "--train_data_dir", str(tmp_path)]
    elif case == "condition_dropout":
        args += ["--condition_dropout", "1.0"]
    elif case == "zero_steps":
        args[-1] = "0"
    with pytest.raises(ValueError, match=message):
        run_in_process(args)
    assert not output_dir.exists()


def test_output_dir_holding_a_different_run_is_refused(tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    earlier = parse_args(["--output_dir", str(output_dir), "--learning_rate", "1e-3"])
    (output_dir / TRAINING_CONFIG_NAME).write_text(json.dumps({"args": run_config(earlier)}))
    with pytest.raises(ValueError, match=r"holds a different run \(--learning_rate 0.001 -> 0.002\)"):
        parse_args(["--output_dir", str(output_dir), "--learning_rate", "2e-3"])
    # the same configuration may be run again into it, and --overwrite_output_dir allows a different one
    parse_args(["--output_dir", str(output_dir), "--learning_rate", "1e-3"])
    parse_args(["--output_dir", str(output_dir), "--learning_rate", "2e-3", "--overwrite_output_dir"])


def test_a_run_made_before_a_flag_existed_is_still_the_same_run(tmp_path):
    """Flags added since a run was made (the super-resolution ones here) count as their defaults for it, so an
    older output folder or checkpoint is not refused as a different run; a flag set away from its default is."""
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    older = run_config(parse_args(["--output_dir", str(output_dir)]))
    for flag in ("low_resolution", "max_noise_level", "noise_level", "use_class_labels"):
        del older[flag]
    (output_dir / TRAINING_CONFIG_NAME).write_text(json.dumps({"args": older}))
    parse_args(["--output_dir", str(output_dir)])
    with pytest.raises(ValueError, match=r"holds a different run \(--max_noise_level 0.5 -> 0.3\)"):
        parse_args(["--output_dir", str(output_dir), "--conditioning", "class", "--max_noise_level", "0.3"])


@pytest.mark.parametrize(
    "former, kind",
    [
        ("none", "unconditional"),
        ("class", "class_conditional"),
        ("text", "text_conditional"),
        ("low_resolution", "super_resolution"),
    ],
)
def test_conditioning_takes_the_kinds_names_and_its_former_ones(tmp_path, former, kind):
    """`--conditioning` names the kinds of model as the pipelines and tools do; the former names still parse, and a
    run saved with one is the same run as the kind's name today (so it resumes)."""
    extra = ["--low_resolution", "14"] if kind == "super_resolution" else []
    output_dir = tmp_path / "out"
    assert parse_args(["--output_dir", str(output_dir), "--conditioning", former, *extra]).conditioning == kind
    output_dir.mkdir()
    older = run_config(parse_args(["--output_dir", str(output_dir), "--conditioning", kind, *extra]))
    (output_dir / TRAINING_CONFIG_NAME).write_text(json.dumps({"args": {**older, "conditioning": former}}))
    assert parse_args(["--output_dir", str(output_dir), "--conditioning", kind, *extra]).conditioning == kind
    other = "unconditional" if kind != "unconditional" else "class_conditional"
    with pytest.raises(ValueError, match=rf"holds a different run \(--conditioning '{kind}' -> '{other}'[,)]"):
        parse_args(["--output_dir", str(output_dir), "--conditioning", other])


def test_output_dir_holding_foreign_files_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="is not empty .*thesis.tex.* not a diffkit run"):
        parse_args(["--output_dir", str(tmp_path)])


def test_every_flag_has_help():
    parser = build_parser()
    flags = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    assert len(flags) > 30
    undocumented = [action.option_strings[0] for action in flags if not (action.help and len(action.help) > 10)]
    assert undocumented == []


def test_the_flags_that_do_not_change_a_run_are_checked_against_the_parser():
    groups = {
        group.title.split(" (")[0]: {a.dest for a in group._group_actions} for group in build_parser()._action_groups
    }
    flags = set().union(*groups.values())
    assert set(NON_RUN_FLAGS) <= flags, f"NON_RUN_FLAGS names no flag: {set(NON_RUN_FLAGS) - flags}"
    # checkpoints, watching and sharing never change what is trained: a new flag there goes into NON_RUN_FLAGS
    for title in ("checkpoints", "faults", "watching a run", "sharing on the Hugging Face Hub"):
        assert groups[title] <= set(NON_RUN_FLAGS), (title, groups[title] - set(NON_RUN_FLAGS))
    # what is trained: data, model, optimisation, EMA; of those only where data is cached and how many workers
    # decode it leave the weights as they are
    trained = (
        groups["data"] | groups["model and noise schedule"] | groups["optimisation"] | groups["EMA of the weights"]
    )
    assert trained & set(NON_RUN_FLAGS) == {"cache_dir", "dataloader_num_workers"}


def test_the_parser_defaults_are_the_libraries_own():
    # training/arguments.py imports neither torch nor the pipelines, so it repeats these two values
    from diffkit.pipelines.pipeline_text_conditional_image import DEFAULT_MAX_TEXT_LENGTH
    from diffkit.training.conditioning import CONDITIONINGS

    defaults = build_parser().parse_args([])
    assert defaults.max_text_length == DEFAULT_MAX_TEXT_LENGTH
    assert list(CONDITIONING_CHOICES) == list(CONDITIONINGS)


def test_outputs_replace_an_earlier_run_whole(tmp_path):
    from diffkit.training.train import replace_outputs

    output_dir, staging_dir = tmp_path / "out", tmp_path / "staging"
    (output_dir / "unet").mkdir(parents=True)
    (output_dir / "unet" / "stale.safetensors").write_text("old weights")
    (output_dir / "samples.png").write_text("old grid")
    (staging_dir / "unet").mkdir(parents=True)
    (staging_dir / "unet" / "diffusion_pytorch_model.safetensors").write_text("new weights")
    (staging_dir / "samples.png").write_text("new grid")
    replace_outputs(str(staging_dir), str(output_dir))
    assert sorted(p.name for p in output_dir.iterdir()) == ["samples.png", "unet"]  # no leftovers moved aside
    assert [p.name for p in (output_dir / "unet").iterdir()] == ["diffusion_pytorch_model.safetensors"]
    assert (output_dir / "samples.png").read_text() == "new grid"
    assert list(staging_dir.iterdir()) == []


@pytest.mark.slow
def test_bf16_mixed_precision_keeps_fp32_weights(tmp_path):
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    result = run_accelerate_launch(
        [
            *QUICK_RUN,
            "--mixed_precision",
            "bf16",
            "--gradient_checkpointing",
            "--output_dir",
            str(output_dir),
            "--model_config_name_or_path",
            unet_config,
        ]
    )
    assert_launch_succeeded(result)
    assert "Mixed precision type: bf16" in result.stderr
    config = json.loads((output_dir / TRAINING_CONFIG_NAME).read_text())
    assert np.isfinite(config["run"]["final_loss"])
    # autocast computes in bf16, but the trainable (and saved) weights stay fp32
    from safetensors.torch import load_file

    weights = load_file(output_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}


@pytest.mark.slow
def test_tensorboard_logs_and_validation_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    result = run_accelerate_launch(
        [
            *QUICK_RUN,
            "--report_to",
            "tensorboard",
            "--validation_steps",
            "2",
            "--output_dir",
            str(output_dir),
            "--model_config_name_or_path",
            unet_config,
        ]
    )
    assert_launch_succeeded(result)
    assert Image.open(output_dir / "validation" / "step-2.png").size == (2 * RESOLUTION, 10 * RESOLUTION)
    event_files = list((output_dir / "logs").rglob("events.out.tfevents.*"))
    assert event_files
    scalars, images = set(), set()
    for event_file in event_files:
        events = EventAccumulator(str(event_file), size_guidance={"images": 0})
        events.Reload()
        scalars |= set(events.Tags()["scalars"])
        images |= set(events.Tags()["images"])
        if "loss" in events.Tags()["scalars"]:
            assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert {"loss", "lr", "grad_norm", "images_per_second"} <= scalars
    assert "validation" in images
    # a second run into the same folder still counts it as this run, logs and all
    parse_args(
        [
            *QUICK_RUN,
            "--report_to",
            "tensorboard",
            "--output_dir",
            str(output_dir),
            "--model_config_name_or_path",
            unet_config,
        ]
    )
