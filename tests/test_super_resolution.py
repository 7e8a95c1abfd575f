"""`SuperResolutionPipeline` and the `--conditioning low_resolution` stage it is trained as (issue 17, step 2)."""

import json
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from huggingface_hub import ModelCard
from PIL import Image

from diffkit import SuperResolutionPipeline
from diffkit.pipelines.pipeline_super_resolution import (
    NOISE_LEVEL_TIMESTEP_SCALE,
    augment,
    downsample,
    upsample,
)
from diffkit.training.conditioning import ClassLowResolutionConditioning, LowResolutionConditioning
from diffkit.training.train import TRAINING_CONFIG_NAME, build_unet, main, parse_args

from .test_checkpointing import assert_same_weights
from .test_train import write_unet_config
from .utils import (
    NUM_TEST_CLASSES,
    TINY_CLASS_SUPER_RESOLUTION_UNET_CONFIG,
    TINY_CONDITION_UNET_CONFIG,
    TINY_LOW_RESOLUTION,
    TINY_SUPER_RESOLUTION_UNET_CONFIG,
    assert_launch_succeeded,
    assert_local_remote_code_needs_opt_in,
    run_accelerate_launch,
)

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm-solver++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}
# 4 -> 8 px training runs on real digits, a few optimisation steps.
SR_RUN = [
    "--conditioning", "low_resolution", "--low_resolution", "8", "--resolution", "16",
    "--max_train_samples", "80", "--max_train_steps", "4", "--train_batch_size", "8", "--lr_warmup_steps", "1",
    "--num_inference_steps", "2", "--num_samples_per_class", "2",
]  # fmt: skip


def make_stage(class_conditional=False, **config):
    torch.manual_seed(0)
    if class_conditional:
        unet = UNet2DConditionModel(**TINY_CLASS_SUPER_RESOLUTION_UNET_CONFIG)
    else:
        unet = UNet2DModel(**TINY_SUPER_RESOLUTION_UNET_CONFIG)
    pipe = SuperResolutionPipeline(unet, DDPMScheduler(clip_sample=True), low_resolution=TINY_LOW_RESOLUTION, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def low_resolution_image(size=TINY_LOW_RESOLUTION, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))


def record_unet_inputs(pipe):
    """Record the sample and `class_labels` of every UNet call."""
    calls = []

    def hook(module, args, kwargs):
        calls.append({"sample": args[0].clone(), "class_labels": kwargs["class_labels"].clone(), **kwargs})

    pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def upscale(pipe, image=None, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    image = low_resolution_image() if image is None else image
    return pipe(image=image, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_upscales_to_the_unet_size_reproducibly(scheduler):
    pipe = make_stage()
    pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    images = upscale(pipe, [low_resolution_image(seed=0), low_resolution_image(seed=1)], num_inference_steps=3)
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
    np.testing.assert_array_equal(
        images, upscale(pipe, [low_resolution_image(seed=0), low_resolution_image(seed=1)], 0, num_inference_steps=3)
    )
    assert not np.array_equal(
        images, upscale(pipe, [low_resolution_image(seed=0), low_resolution_image(seed=1)], 1, num_inference_steps=3)
    )


def test_the_unet_reads_the_upsampled_input_and_the_noise_level():
    pipe = make_stage()
    calls = record_unet_inputs(pipe)
    image = low_resolution_image()
    upscale(pipe, image, noise_level=0.0)
    assert len(calls) == 2
    expected = upsample(torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1)[None, None], (8, 8))
    for call in calls:
        assert call["sample"].shape == (1, 2, 8, 8)
        # at level 0 the second half of the input is the bicubic upsampling of the input itself
        torch.testing.assert_close(call["sample"][:, 1:], expected)
        assert call["class_labels"].tolist() == [0.0]
    calls.clear()
    upscale(pipe, image, noise_level=0.3)
    assert [c["class_labels"].tolist() for c in calls] == [[0.3 * NOISE_LEVEL_TIMESTEP_SCALE]] * 2
    # the augmentation is the same image at every step, and it is not the clean upsampling any more
    torch.testing.assert_close(calls[0]["sample"][:, 1:], calls[1]["sample"][:, 1:])
    assert not torch.allclose(calls[0]["sample"][:, 1:], expected)
    # the level changes the result, and the default is the registered one
    assert not np.array_equal(upscale(pipe, image, noise_level=0.0), upscale(pipe, image, noise_level=0.3))
    pipe.register_to_config(noise_level=0.3)
    np.testing.assert_array_equal(upscale(pipe, image), upscale(pipe, image, noise_level=0.3))


def test_augmentation_is_variance_preserving_noise_of_the_given_level():
    upsampled = torch.full((4, 1, 64, 64), 0.5)
    levels = torch.tensor([0.0, 0.1, 0.5, 1.0])
    noise = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    augmented = augment(upsampled, levels, noise)
    torch.testing.assert_close(augmented[0], upsampled[0])
    torch.testing.assert_close(augmented[3], noise[3])
    torch.testing.assert_close(augmented[2], 0.75**0.5 * upsampled[2] + 0.5 * noise[2])
    # area downsampling averages blocks, as training makes its inputs
    block = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert downsample(block, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_class_conditional_stage_guides_on_the_label():
    pipe = make_stage(class_conditional=True, guidance_scale=3.0)
    calls = record_unet_inputs(pipe)
    upscale(pipe, [low_resolution_image(seed=0), low_resolution_image(seed=1)], class_labels=[0, 2])
    # both guidance branches in one batch: the same augmented input beside each, the null label first
    assert calls[0]["sample"].shape == (4, 2, 8, 8)
    torch.testing.assert_close(calls[0]["sample"][:2, 1:], calls[0]["sample"][2:, 1:])
    ids = calls[0]["encoder_hidden_states"][:, 0].argmax(-1).tolist()
    assert ids == [NUM_TEST_CLASSES, NUM_TEST_CLASSES, 0, 2]
    calls.clear()
    upscale(pipe, low_resolution_image(), class_labels=1, guidance_scale=1.0)
    assert calls[0]["sample"].shape == (1, 2, 8, 8)
    a = upscale(pipe, low_resolution_image(), class_labels=0)
    assert not np.array_equal(a, upscale(pipe, low_resolution_image(), class_labels=2))


@pytest.mark.parametrize("class_conditional", [False, True], ids=["unconditional", "class"])
def test_save_and_load_both_ways(tmp_path, class_conditional):
    from diffusers import DiffusionPipeline

    pipe = make_stage(
        class_conditional, noise_level=0.2, id2label={0: "a", 1: "b", 2: "c"} if class_conditional else None
    )
    labels = {"class_labels": "b"} if class_conditional else {}
    expected = upscale(pipe, **labels)
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "pipeline_super_resolution.py").is_file()
    loaded = SuperResolutionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is SuperResolutionPipeline and loaded.config.noise_level == 0.2
    loaded.set_progress_bar_config(disable=True)
    # the same weights; a freshly built UNet and a loaded one differ in float rounding only (their memory layout)
    loaded_images = upscale(loaded, **labels)
    np.testing.assert_allclose(loaded_images, expected, atol=1e-5)
    assert_local_remote_code_needs_opt_in(tmp_path, SuperResolutionPipeline)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == "SuperResolutionPipeline" and type(remote) is not SuperResolutionPipeline
    remote.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(upscale(remote, **labels), loaded_images)


def test_a_square_input_of_another_size_is_resized_with_a_warning(caplog):
    pipe = make_stage()
    big = low_resolution_image(size=16)
    with caplog.at_level(logging.WARNING):
        images = upscale(pipe, big)
    assert "is 16x16; this stage upscales 4x4 images, so it is resized" in caplog.text
    np.testing.assert_array_equal(images, upscale(pipe, big.resize((4, 4), Image.BOX)))
    # grey, RGB, float arrays and tensors are all one image
    rgb = low_resolution_image().convert("RGB")
    np.testing.assert_array_equal(upscale(pipe, rgb), upscale(pipe, low_resolution_image()))
    as_tensor = torch.from_numpy(np.asarray(low_resolution_image(), np.float32) / 255)[None]
    np.testing.assert_array_equal(upscale(pipe, as_tensor), upscale(pipe, low_resolution_image()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image": low_resolution_image(size=6).crop((0, 0, 6, 4))}, r"is 6x4, but this stage upscales square 4x4"),
        ({"image": np.zeros((4, 4, 4), np.uint8)}, r"4-channel array cannot be read"),
        ({"image": np.full((4, 4), 2.0)}, r"float images must be in \[0, 1\]"),
        ({"image": []}, "empty list"),
        ({"noise_level": -0.1}, r"`noise_level` must be a number in \[0, 0.5\]"),
        ({"noise_level": 0.9}, r"`noise_level` must be a number in \[0, 0.5\] \(the levels this stage was trained"),
        ({"class_labels": 1}, "trained without class labels"),
        ({"num_inference_steps": 0}, "`num_inference_steps` must be a positive integer"),
        ({"num_images_per_image": 0}, "`num_images_per_image` must be a positive integer"),
        ({"output_type": "jpg"}, "`output_type` must be one of"),
    ],
)
def test_bad_input_is_refused_before_the_unet_runs(kwargs, message):
    pipe = make_stage()
    calls = record_unet_inputs(pipe)
    kwargs = {"image": low_resolution_image(), **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)
    assert calls == []


def test_class_conditional_stage_needs_fitting_labels():
    pipe = make_stage(class_conditional=True)
    with pytest.raises(ValueError, match="This stage is class-conditional"):
        pipe(image=low_resolution_image())
    with pytest.raises(ValueError, match="`class_labels` has 2 labels for 3 images"):
        pipe(image=[low_resolution_image()] * 3, class_labels=[0, 1])
    with pytest.raises(ValueError, match="out of range"):
        pipe(image=low_resolution_image(), class_labels=7)


# Training


def sr_args(**overrides):
    defaults = dict(
        conditioning="low_resolution",
        use_class_labels=False,
        model_config_name_or_path=None,
        low_resolution=7,
        max_noise_level=0.5,
        noise_level=0.1,
        condition_dropout=0.25,
        guidance_scale=3.0,
        num_samples_per_class=1,
        num_inference_steps=2,
    )
    return SimpleNamespace(**{**defaults, **overrides})


def test_training_inputs_are_the_augmented_upsampled_downsampling_and_its_level():
    args = sr_args()
    conditioning = LowResolutionConditioning(args, [Image.new("L", (28, 28))])
    clean = torch.rand(512, 1, 28, 28) * 2 - 1
    noisy = torch.randn(512, 1, 28, 28)
    generator = torch.Generator().manual_seed(0)
    sample, unet_kwargs = conditioning.model_inputs(noisy, {"pixel_values": clean}, generator)
    assert sample.shape == (512, 2, 28, 28) and torch.equal(sample[:, :1], noisy)
    levels = unet_kwargs["class_labels"] / NOISE_LEVEL_TIMESTEP_SCALE
    assert set(unet_kwargs) == {"class_labels"}
    # levels spread uniformly over [0, --max_noise_level]
    assert 0 <= levels.min() and levels.max() <= 0.5 and abs(levels.mean().item() - 0.25) < 0.02
    # the second input is the augmentation of the upsampled 7 px version, with the recorded level
    generator = torch.Generator().manual_seed(0)
    draws = torch.rand(512, generator=generator) * 0.5
    noise = torch.randn(512, 1, 28, 28, generator=generator)
    expected = augment(upsample(downsample(clean, 7), (28, 28)), draws, noise)
    torch.testing.assert_close(levels, draws)
    torch.testing.assert_close(sample[:, 1:], expected)


def test_class_stage_also_reads_the_dropped_labels_and_both_unets_fit():
    args = sr_args(use_class_labels=True)
    conditioning = ClassLowResolutionConditioning(
        args, [Image.new("L", (28, 28))], [0], 10, {i: str(i) for i in range(10)}
    )
    labels = torch.arange(10).repeat(100)
    _, unet_kwargs = conditioning.model_inputs(
        torch.zeros(1000, 1, 28, 28),
        {"pixel_values": torch.zeros(1000, 1, 28, 28), "labels": labels},
        torch.Generator().manual_seed(0),
    )
    ids = unet_kwargs["encoder_hidden_states"][:, 0].argmax(-1)
    assert abs((ids == 10).float().mean().item() - 0.25) < 0.05
    unet = build_unet(args, conditioning, num_channels=1, resolution=28)
    assert type(unet) is UNet2DConditionModel and unet.config.encoder_hid_dim == 11
    assert (
        unet.config.in_channels == 2 and unet.config.out_channels == 1 and unet.config.class_embed_type == "timestep"
    )
    unet = build_unet(sr_args(), LowResolutionConditioning(sr_args(), []), num_channels=3, resolution=28)
    assert type(unet) is UNet2DModel and (unet.config.in_channels, unet.config.out_channels) == (6, 3)


@pytest.mark.slow
def test_class_stage_trains_with_accelerate_launch_and_upscales(tmp_path):
    output_dir = tmp_path / "sr"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG_NO_DATA, "unet.json")
    result = run_accelerate_launch(
        [*SR_RUN, "--use_class_labels", "--output_dir", str(output_dir), "--model_config_name_or_path", unet_config]
    )
    assert_launch_succeeded(result)
    assert "super_resolution: 8 -> 16 px" in result.stderr
    model_index = json.loads((output_dir / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_super_resolution", "SuperResolutionPipeline"]
    assert model_index["low_resolution"] == 8 and model_index["num_classes"] == 10
    config = json.loads((output_dir / TRAINING_CONFIG_NAME).read_text())
    assert config["data"]["low_resolution"] == 8 and config["data"]["noise_level"] == 0.1
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.pipeline_tag == "image-to-image" and "super-resolution" in card.data.tags
    assert "class_labels='zero'" in card.text
    # samples.png: per class a row of the input, 2 upscalings and the original
    assert Image.open(output_dir / "samples.png").size == (4 * 16, 10 * 16)
    pipe = SuperResolutionPipeline.from_pretrained(output_dir)
    assert type(pipe.unet) is UNet2DConditionModel
    images = upscale(pipe, low_resolution_image(size=8), class_labels="seven")
    assert images.shape == (1, 16, 16, 1)


TINY_CONDITION_UNET_CONFIG_NO_DATA = {
    k: v
    for k, v in TINY_CLASS_SUPER_RESOLUTION_UNET_CONFIG.items()
    if k not in ("in_channels", "out_channels", "sample_size", "encoder_hid_dim", "encoder_hid_dim_type")
}


@pytest.mark.slow
def test_resumed_stage_ends_with_the_uninterrupted_weights(tmp_path):
    """Resuming from a checkpoint restores the augmentation draws too: the weights end bit for bit the same."""
    run = [*SR_RUN, "--checkpointing_steps", "2", "--use_ema", "--ema_decay", "0.9", "--random_flip"]
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    main(parse_args([*run, "--output_dir", str(uninterrupted)]))
    resumed.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", resumed / "checkpoint-2")
    main(parse_args([*run, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"]))
    assert json.loads((resumed / TRAINING_CONFIG_NAME).read_text())["run"]["global_step"] == 4
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    assert_same_weights(resumed / unet_file, uninterrupted / unet_file)
    assert_same_weights(
        resumed / "checkpoint-4" / "model.safetensors", uninterrupted / "checkpoint-4" / "model.safetensors"
    )


SR = ["--conditioning", "low_resolution"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--low_resolution", "14"], "`--low_resolution` only applies to --conditioning super_resolution"),
        (["--conditioning", "none", "--use_class_labels"], "`--use_class_labels` only applies to --conditioning"),
        (SR, "needs `--low_resolution N`"),
        ([*SR, "--low_resolution", "2", "--resolution", "8"], "`--low_resolution` must be at least 4"),
        (
            [*SR, "--low_resolution", "16", "--resolution", "16"],
            r"must be smaller than --resolution 16 and divide it .* one of \[4, 8\]",
        ),
        ([*SR, "--low_resolution", "6", "--resolution", "16"], "must be smaller than --resolution 16 and divide it"),
        ([*SR, "--low_resolution", "7", "--max_noise_level", "0"], r"`--max_noise_level` must be in \(0, 1\]"),
        (
            [*SR, "--low_resolution", "7", "--noise_level", "0.6"],
            r"`--noise_level` must be in \[0, --max_noise_level 0.5\]",
        ),
    ],
)
def test_bad_super_resolution_flags_are_refused_before_any_work(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args([*flags, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        # the embedded digits are 28 px: 8 does not divide it, and 32 px would be enlarged digits
        (["--low_resolution", "8"], "`--low_resolution` 8 must be smaller than the training images' size 28"),
        (["--low_resolution", "8", "--resolution", "32"], "the first training image is only 28x28"),
        (
            ["--low_resolution", "7", "--use_class_labels", "--train_data_dir", "FLAT"],
            "`--use_class_labels` needs labels",
        ),
    ],
)
def test_super_resolution_data_problems_are_refused_before_training(tmp_path, flags, message):
    if "FLAT" in flags:
        (tmp_path / "flat").mkdir()
        for i in range(4):
            Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8)).save(tmp_path / "flat" / f"{i}.png")
        flags = [str(tmp_path / "flat") if f == "FLAT" else f for f in flags]
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        main(
            parse_args(
                ["--conditioning", "low_resolution", *flags, "--max_train_steps", "1", "--output_dir", str(output_dir)]
            )
        )
    assert not output_dir.exists()


def test_a_cascade_base_then_stage_and_sizes_that_do_not_chain():
    from .test_pipelines import make_class_pipeline

    torch.manual_seed(0)
    base_config = {**TINY_CONDITION_UNET_CONFIG, "sample_size": 4}
    base = make_class_pipeline(UNet2DConditionModel(**base_config))
    base.set_progress_bar_config(disable=True)
    stage = make_stage()
    stage.check_base(base)
    small = base(
        class_labels=["dog", "bird"], num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images
    assert [image.size for image in small] == [(4, 4)] * 2
    big = stage(image=small, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert [image.size for image in big] == [(8, 8)] * 2
    with pytest.raises(ValueError, match="do not chain: the base makes 8 px images, but this stage upscales 4 px"):
        stage.check_base(make_stage())
    torch.manual_seed(0)
    rgb_base = make_class_pipeline(UNet2DConditionModel(**{**base_config, "in_channels": 3, "out_channels": 3}))
    with pytest.raises(ValueError, match="the base makes 3-channel images, but this stage upscales 1-channel"):
        stage.check_base(rgb_base)


@pytest.mark.parametrize("use_class_labels", [False, True], ids=["stage", "class-stage"])
def test_evaluation_during_training_upscales_held_out_images(tmp_path, use_class_labels):
    output_dir = tmp_path / "out"
    flags = [
        *SR_RUN,
        "--eval_steps",
        "2",
        "--eval_num_samples",
        "12",
        "--eval_batch_size",
        "5",
        "--eval_feature_resolution",
        "32",
        "--save_best_by",
        "FID-MobileNetV2",
    ]
    flags += ["--output_dir", str(output_dir)]
    main(parse_args(flags + (["--use_class_labels"] if use_class_labels else [])))
    # the 12 held-out images were not trained on
    config = json.loads((output_dir / TRAINING_CONFIG_NAME).read_text())
    assert config["data"]["num_images"] == 80 - 12
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["held_out_images"] == 12 and metrics["low_resolution"] == 8
    assert [h["global_step"] for h in metrics["history"]] == [2, 4]
    assert 0 < metrics["generated"]["PSNR"] < 60 and metrics["history"][-1]["PSNR"] == metrics["generated"]["PSNR"]
    assert ("class-accuracy" in metrics) == use_class_labels
    assert SuperResolutionPipeline.from_pretrained(output_dir / "best").config.low_resolution == 8
    card = (output_dir / "README.md").read_text()
    assert "upscalings of 12 training images held out of training" in card and "| PSNR |" in card
