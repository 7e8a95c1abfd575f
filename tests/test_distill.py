"""`training/distill.py`: a trained diffkit pipeline distilled into a few-step student through the real `accelerate
launch`, exact resume, the student as an ordinary pipeline folder (diffkit's class, remote code, img2img, inpainting,
the tools), the guidance-scale input, and bad input."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, LCMScheduler, UNet2DConditionModel, UNet2DModel
from huggingface_hub import ModelCard
from PIL import Image

from diffkit import (
    ClassConditionalImagePipeline,
    ClassConditionalImg2ImgPipeline,
    ClassConditionalInpaintPipeline,
    UnconditionalImagePipeline,
)
from diffkit.pipelines.pipeline_class_conditional_image import guidance_scale_embedding, one_hot_label_states
from diffkit.training.distill import build_student, guided_teacher_output, parse_args, solver_grid
from diffkit.training.output_lock import OutputDirInUseError

from .test_checkpointing import assert_same_weights
from .test_output_lock import start_holder
from .test_train import write_unet_config
from .utils import (
    NUM_TEST_CLASSES,
    REPO_ROOT,
    TINY_CONDITION_UNET_CONFIG,
    TINY_UNET2D_CONFIG,
    assert_launch_succeeded,
    assert_local_remote_code_needs_opt_in,
    free_port,
    run_accelerate_launch,
)

RESOLUTION = 16
# A teacher trained for a few steps on a handful of real digits: what distillation reads is its folder and its data.
TEACHER_RUN = [
    "--max_train_samples", "40", "--max_train_steps", "2", "--train_batch_size", "8", "--lr_warmup_steps", "1",
    "--resolution", str(RESOLUTION), "--num_inference_steps", "2", "--num_samples_per_class", "1",
]  # fmt: skip
# A few distillation steps with every piece of state that resume restores: checkpoints, the target EMA, validation.
DISTILL_RUN = [
    "--max_train_steps", "4", "--train_batch_size", "8", "--lr_warmup_steps", "1", "--checkpointing_steps", "2",
    "--num_inference_steps", "2", "--num_samples_per_class", "2", "--unet_time_cond_proj_dim", "16",
    "--validation_steps", "2",
]  # fmt: skip
# The method with the most state to resume (the target network); a class teacher's default is `guidance`.
CONSISTENCY_RUN = [*DISTILL_RUN, "--method", "consistency"]


def train_teacher(output_dir, tmp_path, unet_config, extra=()):
    config_path = write_unet_config(tmp_path, unet_config, f"{output_dir.name}-unet.json")
    args = [*TEACHER_RUN, *extra, "--output_dir", str(output_dir), "--model_config_name_or_path", config_path]
    assert_launch_succeeded(run_accelerate_launch(args))
    return output_dir


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("teacher")
    return train_teacher(tmp_path / "teacher", tmp_path, TINY_CONDITION_UNET_CONFIG)


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("student") / "out"
    result = run_accelerate_launch(
        [*CONSISTENCY_RUN, "--teacher", str(teacher), "--output_dir", str(output_dir)], script="distill.py"
    )
    assert_launch_succeeded(result)
    return output_dir, result


@pytest.mark.slow
def test_accelerate_launch_distils_a_class_teacher_into_a_student_pipeline_folder(teacher, student):
    output_dir, result = student
    assert "Steps: 100%" in result.stderr and "Distilled 4 steps" in result.stderr
    assert "Running consistency distillation" in result.stderr and "Solver grid = 48 points, 19..959" in result.stderr
    model_index = json.loads((output_dir / "model_index.json").read_text())
    teacher_index = json.loads((teacher / "model_index.json").read_text())
    assert model_index["_class_name"] == teacher_index["_class_name"]
    assert model_index["scheduler"] == ["diffusers", "LCMScheduler"]
    assert model_index["num_inference_steps"] == 2 and model_index["guidance_scale_range"] == [1.0, 8.0]
    assert model_index["guidance_scale"] == teacher_index["guidance_scale"]
    assert model_index["id2label"] == teacher_index["id2label"]
    unet_config = json.loads((output_dir / "unet" / "config.json").read_text())
    teacher_unet_config = json.loads((teacher / "unet" / "config.json").read_text())
    assert unet_config["time_cond_proj_dim"] == 16
    assert {k: v for k, v in unet_config.items() if k not in ("time_cond_proj_dim", "_diffusers_version")} == {
        k: v for k, v in teacher_unet_config.items() if k not in ("time_cond_proj_dim", "_diffusers_version")
    }
    assert (output_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list((output_dir / "unet").glob("*.bin"))
    scheduler_config = json.loads((output_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["original_inference_steps"] == 48 and scheduler_config["clip_sample"] is True
    # the grid: one row per class, --num_samples_per_class columns; validation grids at steps 2 and 4
    assert Image.open(output_dir / "samples.png").size == (2 * RESOLUTION, 10 * RESOLUTION)
    assert sorted(p.name for p in (output_dir / "validation").iterdir()) == ["step-2.png", "step-4.png"]
    config = json.loads((output_dir / "training_config.json").read_text())
    assert config["teacher"]["teacher"] == str(teacher) and config["teacher"]["args"]["max_train_samples"] == 40
    assert config["run"]["global_step"] == 4 and config["data"]["num_images"] == 40
    card = ModelCard.load(output_dir / "README.md")
    assert "consistency-distillation" in card.data.tags and "## Distillation" in card.text
    assert f"few-step student of the diffkit model `{teacher}`" in card.text
    assert "| UNet evaluations per image | 4 (two guidance branches) | 2 |" in card.text


@pytest.mark.slow
def test_guidance_distillation_gives_a_one_pass_student_of_the_guided_teacher(teacher, tmp_path):
    output_dir = tmp_path / "out"
    args = [*DISTILL_RUN, "--max_train_steps", "2", "--teacher", str(teacher)]  # guidance: the default here
    result = run_accelerate_launch([*args, "--output_dir", str(output_dir)], script="distill.py")
    assert_launch_succeeded(result)
    assert "Running guidance distillation" in result.stderr and "Solver grid" not in result.stderr
    card = ModelCard.load(output_dir / "README.md")
    assert "guidance-distillation" in card.data.tags and "made by guidance distillation" in card.text
    pipe = ClassConditionalImagePipeline.from_pretrained(output_dir)
    assert pipe.unet.config.time_cond_proj_dim == 16 and isinstance(pipe.scheduler, LCMScheduler)
    images = pipe(class_labels=[0, 1], guidance_scale=3.0, generator=torch.Generator().manual_seed(0)).images
    assert len(images) == 2 and pipe.num_timesteps == 2


@pytest.mark.slow
def test_resume_from_a_checkpoint_gives_the_uninterrupted_student(teacher, student, tmp_path):
    uninterrupted, _ = student
    # a run killed right after its checkpoint of step 2: the folder holds that checkpoint alone
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", output_dir / "checkpoint-2")
    args = [
        *CONSISTENCY_RUN,
        "--teacher",
        str(teacher),
        "--output_dir",
        str(output_dir),
        "--resume_from_checkpoint",
        "latest",
    ]
    result = run_accelerate_launch(args, script="distill.py")
    assert_launch_succeeded(result)
    assert "at step 2 " in result.stderr
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert_same_weights(output_dir / weights, uninterrupted / weights)
    # the student's own weights and optimiser resumed too, not only the target network's
    assert_same_weights(
        output_dir / "checkpoint-4" / "model.safetensors", uninterrupted / "checkpoint-4" / "model.safetensors"
    )


@pytest.mark.slow
def test_the_student_loads_through_diffkit_and_through_remote_code_alike(student):
    output_dir, _ = student
    pipe = ClassConditionalImagePipeline.from_pretrained(output_dir)
    assert isinstance(pipe.scheduler, LCMScheduler)
    images = pipe(class_labels=[1, "seven"], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 1, RESOLUTION, RESOLUTION) and pipe.num_timesteps == 2  # the saved default
    remote = DiffusionPipeline.from_pretrained(output_dir, trust_remote_code=True)
    assert (
        type(remote).__name__ == "ClassConditionalImagePipeline" and type(remote) is not ClassConditionalImagePipeline
    )
    remote_images = remote(class_labels=[1, "seven"], generator=torch.Generator().manual_seed(0), output_type="pt")
    assert torch.equal(images, remote_images.images)
    assert_local_remote_code_needs_opt_in(output_dir, ClassConditionalImagePipeline)


@pytest.mark.slow
def test_the_student_edits_an_image_and_refuses_resampling_clearly(student):
    output_dir, _ = student
    image = Image.new("L", (RESOLUTION, RESOLUTION), 0)
    # made from the student's pipeline, as diffkit-edit makes them, without copying weights
    student_pipe = ClassConditionalImagePipeline.from_pretrained(output_dir)
    img2img = ClassConditionalImg2ImgPipeline.from_pipe(student_pipe)
    edited = img2img(image=image, class_labels=3, strength=0.5, generator=torch.Generator().manual_seed(0))
    assert img2img.num_timesteps == 1 and edited.images[0].size == (RESOLUTION, RESOLUTION)  # half of 2 steps
    inpaint = ClassConditionalInpaintPipeline.from_pipe(student_pipe)
    mask = Image.new("L", (RESOLUTION, RESOLUTION), 255)
    filled = inpaint(image=image, mask_image=mask, class_labels=3, generator=torch.Generator().manual_seed(0))
    assert filled.images[0].size == (RESOLUTION, RESOLUTION)
    with pytest.raises(ValueError, match="a few-step consistency student cannot"):
        inpaint(image=image, mask_image=mask, class_labels=3, jump_n_sample=2, jump_length=1)


@pytest.mark.slow
def test_diffkit_evaluate_scores_the_student_on_its_teacher_s_data_and_puts_the_figures_in_its_card(student, tmp_path):
    from diffkit.cli.evaluate import main as evaluate_main

    output_dir = tmp_path / "student"
    shutil.copytree(student[0], output_dir)
    # The copied card loads the fixture's folder, so it is not the card of this one and would be kept as the
    # user's (tests/test_evaluate.py checks both cases in place); a folder without a card gets one.
    (output_dir / "README.md").unlink()
    evaluate_main(
        [str(output_dir), "--num_samples", "12", "--batch_size", "12", "--feature_resolution", "32"]
        + ["--classifier_epochs", "1", "--metrics", "class-accuracy", "FID-MobileNetV2"]
    )
    results = json.loads((output_dir / "metrics.json").read_text())
    model_index = json.loads((output_dir / "model_index.json").read_text())
    assert results["sampler"] == "LCMScheduler" and 0 <= results["class-accuracy"] <= 1
    assert results["guidance_scale"] == model_index["guidance_scale"]
    # the student's saved default step count, the one it was sampled with
    assert results["num_inference_steps"] == model_index["num_inference_steps"] == 2
    card = (output_dir / "README.md").read_text()
    assert "A few-step student of the diffkit model" in card
    assert f"| FID-MobileNetV2 | {results['generated']['FID-MobileNetV2']:.4f} |" in card
    assert "LCMScheduler with 2 steps" in card


def tiny_student_pipeline(time_cond_proj_dim=8):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG, time_cond_proj_dim=time_cond_proj_dim)
    scheduler = LCMScheduler.from_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)
    return ClassConditionalImagePipeline(unet=unet, scheduler=scheduler, guidance_scale_range=(1, 8))


def test_the_same_seed_at_two_guidance_scales_gives_two_images():
    pipe = tiny_student_pipeline()
    pipe.set_progress_bar_config(disable=True)
    torch.nn.init.normal_(pipe.unet.time_embedding.cond_proj.weight)  # a student that has learnt to read the scale
    images = [
        pipe(class_labels=[2], guidance_scale=scale, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
             output_type="pt").images
        for scale in (2.0, 6.0)
    ]  # fmt: skip
    assert not torch.allclose(images[0], images[1], atol=1e-3)


def test_the_student_pipeline_runs_one_conditional_pass_per_step_with_the_scale_embedded():
    pipe = tiny_student_pipeline()
    pipe.set_progress_bar_config(disable=True)
    calls = []

    def record(module, args, kwargs):
        calls.append((args[0].shape[0], kwargs["encoder_hidden_states"], kwargs["timestep_cond"]))

    pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    pipe(class_labels=[2, 0], guidance_scale=1.0, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 3
    for batch, states, timestep_cond in calls:
        # one branch: the labels' own states, never the null label's; scale 1 embeds w = scale - 1 = 0
        assert batch == 2 and torch.equal(
            states, one_hot_label_states(torch.tensor([2, 0]), NUM_TEST_CLASSES, torch.float32)
        )
        assert torch.equal(timestep_cond, guidance_scale_embedding(torch.ones(2), 8, torch.float32))
    zero = guidance_scale_embedding(torch.ones(1), 8, torch.float32)
    assert torch.equal(zero, torch.tensor([[0.0] * 4 + [1.0] * 4]))  # sin(0), cos(0)


def test_a_scale_outside_the_trained_range_is_refused():
    pipe = tiny_student_pipeline()
    with pytest.raises(ValueError, match=r"`guidance_scale` 9.0 is outside \[1.0, 8.0\]"):
        pipe(class_labels=[0], guidance_scale=9.0, num_inference_steps=1)


def test_at_scale_1_the_teacher_target_is_the_conditional_prediction_and_the_untrained_student_the_teacher():
    torch.manual_seed(0)
    teacher_unet = UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG).eval()
    sample = torch.randn(3, 1, 8, 8)
    timesteps = torch.tensor([959, 499, 19])
    cond = {"encoder_hidden_states": one_hot_label_states(torch.tensor([0, 1, 2]), NUM_TEST_CLASSES, torch.float32)}
    uncond = {"encoder_hidden_states": one_hot_label_states(torch.full((3,), 3), NUM_TEST_CLASSES, torch.float32)}
    with torch.no_grad():
        conditional = teacher_unet(sample, timesteps, **cond).sample
        unconditional = teacher_unet(sample, timesteps, **uncond).sample
        at_one = guided_teacher_output(teacher_unet, sample, timesteps, cond, uncond, torch.ones(3))
        at_three = guided_teacher_output(teacher_unet, sample, timesteps, cond, uncond, torch.full((3,), 3.0))
    torch.testing.assert_close(at_one, conditional, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(at_three, unconditional + 3 * (conditional - unconditional), rtol=1e-5, atol=1e-5)
    # the student starts as the teacher: its scale embedding's projection is zero, whatever the scale
    student = build_student(teacher_unet, guided=True, time_cond_proj_dim=8).eval()
    with torch.no_grad():
        for scale in (1.0, 5.0):
            embedding = guidance_scale_embedding(torch.full((3,), scale), 8, torch.float32)
            output = student(sample, timesteps, **cond, timestep_cond=embedding).sample
            torch.testing.assert_close(output, conditional, rtol=1e-5, atol=1e-5)


def test_the_solver_grid_is_the_lcm_scheduler_s_and_ends_below_the_last_timestep():
    scheduler = LCMScheduler.from_config(DDPMScheduler().config, original_inference_steps=48)
    grid = solver_grid(1000, 48)
    assert grid[0] == 19 and grid[-1] == 959 and len(grid) == 48
    for steps in (1, 2, 4, 8):
        scheduler.set_timesteps(steps)
        assert set(scheduler.timesteps.tolist()) <= set(grid.tolist())


@pytest.fixture(scope="module")
def unconditional_teacher(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("unconditional")
    return train_teacher(tmp_path / "teacher", tmp_path, TINY_UNET2D_CONFIG, ["--conditioning", "unconditional"])


@pytest.mark.slow
def test_an_unconditional_teacher_distils_on_two_processes_over_gloo(unconditional_teacher, tmp_path):
    output_dir = tmp_path / "two"
    # a free port of our own: with `--main_process_port 0` the floor version of accelerate (1.1) never rendezvouses
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
        "training/distill.py", "--teacher", str(unconditional_teacher), "--output_dir", str(output_dir),
        "--max_train_steps", "2", "--train_batch_size", "4", "--checkpointing_steps", "2",
        "--num_inference_steps", "2", "--num_samples_per_class", "1",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "DistributedType.MULTI_CPU" in output and "terminate called" not in output
    # nothing to fold in: the method is consistency distillation, without being asked
    assert "Running consistency distillation" in output
    run = json.loads((output_dir / "training_config.json").read_text())["run"]
    assert run["num_processes"] == 2 and run["total_batch_size"] == 8 and run["global_step"] == 2
    pipe = UnconditionalImagePipeline.from_pretrained(output_dir)
    assert pipe.unet.config.get("time_cond_proj_dim") is None  # nothing to guide: no scale input
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.config.num_inference_steps == 2
    pipe(batch_size=1, generator=torch.Generator().manual_seed(0))
    assert len(pipe.scheduler.timesteps) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num_inference_steps", "49"], "`--num_inference_steps` 49 is more than the 48 points"),
        (["--num_ddim_timesteps", "1001"], "`--num_ddim_timesteps` 1001 exceeds the teacher's 1000"),
        (["--guidance_scale_range", "6", "2"], "`--guidance_scale_range` must be two finite scales MIN <= MAX"),
        (["--guidance_scale", "9"], "`--guidance_scale` 9.0 is outside --guidance_scale_range 1.0 8.0"),
        (["--ema_decay", "1"], "`--ema_decay` must be in (0, 1)"),
        (["--huber_c", "0"], "`--huber_c` must be a positive number"),
    ],
)
def test_bad_flags_are_refused_before_any_work(teacher, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_args(["--teacher", str(teacher), "--output_dir", str(tmp_path / "out"), *extra])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_student_folder_that_a_live_run_holds_is_refused_before_any_work(teacher, tmp_path):
    holder = start_holder(tmp_path / "out")
    try:
        with pytest.raises(OutputDirInUseError, match=f"is in use by another training run \\(pid {holder.pid} "):
            parse_args(["--teacher", str(teacher), "--output_dir", str(tmp_path / "out")])
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_guidance_flags_for_an_unconditional_teacher_are_refused(unconditional_teacher, tmp_path):
    flags = ["--teacher", str(unconditional_teacher), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="applies to a guided .* teacher, but --teacher .* is unconditional"):
        parse_args([*flags, "--guidance_scale", "2"])
    with pytest.raises(ValueError, match="`--method guidance` folds classifier-free guidance into the student"):
        parse_args([*flags, "--method", "guidance"])


def test_a_folder_that_is_not_a_diffkit_teacher_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no model_index.json, so it is not a diffusers pipeline"):
        parse_args(["--teacher", str(empty), "--output_dir", str(tmp_path / "out")])
    # a diffkit pipeline saved without training_config.json: nothing names its data
    pipe = tiny_student_pipeline()
    pipe.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="has no training_config.json, which names the data"):
        parse_args(["--teacher", str(tmp_path / "bare"), "--output_dir", str(tmp_path / "out")])
    # a Stable Diffusion-family or super-resolution folder is not a kind distill.py takes
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline .*distill.py distils diffkit's"):
        parse_args(["--teacher", str(tmp_path / "sd"), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="is neither a local folder nor a Hub repo"):
        parse_args(["--teacher", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")])


def test_every_flag_has_help():
    from diffkit.training.distill_arguments import build_parser

    for action in build_parser()._actions:
        assert action.help, action.dest


def test_the_web_demo_offers_a_student_s_saved_steps_and_trained_scales():
    # .ci/run's version-floor environment installs diffkit without the test extras; the main suite has Gradio
    pytest.importorskip("gradio", reason="the web demo needs Gradio (the test extras); runs in the main suite")
    from diffkit.demo import MAX_GUIDANCE_SCALE, guidance_range, saved_default_steps

    student = tiny_student_pipeline()
    student.register_to_config(num_inference_steps=4)
    assert saved_default_steps(student) == 4 and guidance_range(student) == (1.0, 8.0)
    teacher = ClassConditionalImagePipeline(
        unet=UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG), scheduler=DDPMScheduler()
    )
    assert saved_default_steps(teacher) == 20 and guidance_range(teacher) == (0, MAX_GUIDANCE_SCALE)
    unconditional = UnconditionalImagePipeline(unet=UNet2DModel(**TINY_UNET2D_CONFIG), scheduler=DDPMScheduler())
    assert saved_default_steps(unconditional) == 1000  # DDPMPipeline's default, as before


@pytest.mark.slow
def test_a_latent_teacher_distils_on_latents_its_vae_encodes_and_the_student_decodes(tmp_path):
    from .test_train_latent import IMAGE_SIDE, LATENT_RUN, tiny_vae

    tiny_vae().save_pretrained(tmp_path / "vae")
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    teacher = tmp_path / "teacher"
    args = [*LATENT_RUN, "--output_dir", str(teacher), "--vae", str(tmp_path / "vae"), "--model_config_name_or_path"]
    assert_launch_succeeded(run_accelerate_launch([*args, unet_config]))
    output_dir = tmp_path / "student"
    result = run_accelerate_launch(
        [*DISTILL_RUN, "--max_train_steps", "2", "--teacher", str(teacher), "--output_dir", str(output_dir)],
        script="distill.py",
    )
    assert_launch_succeeded(result)
    assert "Encoded 40 training images with the teacher's VAE" in result.stderr
    pipe = ClassConditionalImagePipeline.from_pretrained(output_dir)
    assert pipe.vae is not None and pipe.unet.config.time_cond_proj_dim == 16
    # the latent teacher's scheduler settings carry over: no clipping of latents, Stable Diffusion's offset
    assert pipe.scheduler.config.clip_sample is False and pipe.scheduler.config.steps_offset == 1
    images = pipe(class_labels=[4], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (1, 1, IMAGE_SIDE, IMAGE_SIDE)


@pytest.mark.slow
def test_a_text_teacher_distils_with_the_empty_prompt_as_its_unconditional_branch(tmp_path, tiny_clip_folder):
    from diffkit import TextConditionalImagePipeline

    from .test_train_text import text_run_args

    teacher = tmp_path / "teacher"
    assert_launch_succeeded(
        run_accelerate_launch([*text_run_args(tmp_path, tiny_clip_folder), "--output_dir", str(teacher)])
    )
    output_dir = tmp_path / "student"
    result = run_accelerate_launch(
        [*DISTILL_RUN, "--max_train_steps", "2", "--teacher", str(teacher), "--output_dir", str(output_dir)],
        script="distill.py",
    )
    assert_launch_succeeded(result)
    pipe = TextConditionalImagePipeline.from_pretrained(output_dir)
    assert pipe.unet.config.time_cond_proj_dim == 16 and pipe.config.guidance_scale_range == [1.0, 8.0]
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    pipe("a handwritten seven", guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    assert calls == [1, 1]  # one pass per step: no empty-prompt branch
