"""Render the model card (`README.md`) of a trained pipeline from the template in `model_cards/`."""

import importlib.metadata
import importlib.resources
import json
from typing import Optional

from huggingface_hub import ModelCard, ModelCardData

from diffkit.pipelines import model_kinds
from diffkit.pipelines.model_kinds import conditioning_kind, model_training_args

# `model_cards/` is installed as package data (see pyproject.toml), so the templates are found in any install.
PIPELINE_TEMPLATE = "diffkit_pipeline.md"
SAMPLE_LABELS_IN_USAGE = 2
# The embedded datasets' images are (a subset of) Hub datasets; the card's metadata links the one they come from.
EMBEDDED_DATASET_HUB_IDS = {"mnist-5k": "ylecun/mnist", "fashion-mnist": "zalando-datasets/fashion_mnist"}
# The [project.urls] labels, in order of preference, under which pyproject.toml may name the source repository.
REPOSITORY_URL_LABELS = ("repository", "source", "homepage")
# What each --conditioning mode is called in the card and its tags, and the Hub pipeline tag where it is not
# unconditional-image-generation.
CONDITIONING_KINDS = {
    model_kinds.CLASS_CONDITIONAL: "class-conditional",
    model_kinds.TEXT_CONDITIONAL: "text-to-image",
    model_kinds.UNCONDITIONAL: "unconditional",
    model_kinds.SUPER_RESOLUTION: "super-resolution",
}
# What the card calls each `training/distill.py --method`.
METHOD_NAMES = {"consistency": "latent consistency distillation", "guidance": "guidance distillation"}
PIPELINE_TAGS = {model_kinds.TEXT_CONDITIONAL: "text-to-image", model_kinds.SUPER_RESOLUTION: "image-to-image"}


def repository_url() -> Optional[str]:
    """The source repository that the installed diffkit's metadata names ([project.urls]), if any."""
    try:
        entries = importlib.metadata.metadata("diffkit").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    urls = {}
    for entry in entries:
        label, _, url = entry.partition(",")
        urls[label.strip().lower()] = url.strip()
    return next((urls[label] for label in REPOSITORY_URL_LABELS if urls.get(label)), None)


def install_instructions(url: Optional[str]) -> str:
    """How diffkit can really be installed: the name `diffkit` is not published on PyPI, so never `pip install
    diffkit`; from its repository when the metadata names one, else from a source tree or a wheel."""
    if url:
        return f'`pip install "diffkit @ git+{url}"`'
    return (
        "from its source tree: `pip install .` in a diffkit checkout, or the wheel that `python -m build` makes there"
    )


def render_model_card(
    training_config: dict,
    pipeline_class: str,
    pipeline_module: str,
    load_path: str,
    samples_file: str,
    revision: Optional[str] = None,
    metrics: Optional[dict] = None,
    loads_as_stable_diffusion: bool = False,
) -> ModelCard:
    """The model card of a finished run, described by the `training_config.json` written beside the weights.

    Args:
        training_config: the run's `training_config.json` (`args`, `data` and `run` sections).
        pipeline_class: the pipeline's class name, e.g. `"ClassConditionalImagePipeline"`.
        pipeline_module: the file stem of its code, uploaded beside the weights for `trust_remote_code` loading.
        load_path: what `from_pretrained` is given in the card's snippets: the output folder or the Hub repo id.
        samples_file: the sample grid's file name, embedded as an image.
        revision: the Hub commit that holds the weights and code; the snippets pin it when given.
        metrics: the run's `metrics.json` (training with --eval_steps), shown as an evaluation table when given.
        loads_as_stable_diffusion: the folder names `StableDiffusionPipeline` as its class (a text-conditional latent
            model, see `TextConditionalImagePipeline.save_config`): the snippet for plain diffusers loads it so.
    """
    args, data, run = training_config["args"], training_config["data"], training_config["run"]
    # What the model is (its kind and data) is in train.py's flags: a distilled student's are its teacher's.
    model_args = model_training_args(training_config)
    conditioning = conditioning_kind(model_args["conditioning"])  # runs before the kinds' names say "class", ...
    super_resolution = conditioning == model_kinds.SUPER_RESOLUTION
    class_conditional = conditioning == model_kinds.CLASS_CONDITIONAL or (
        super_resolution and model_args.get("use_class_labels")
    )
    names = list((data["id2label"] or {}).values()) if class_conditional else []
    kind = CONDITIONING_KINDS[conditioning]
    tags = ["diffkit", "diffusers", "ddpm", kind]
    latent = data.get("latent")
    if latent:
        tags.append("latent-diffusion")
    if "teacher" in training_config:
        tags.append(f"{training_config['args'].get('method', 'consistency')}-distillation")
    dataset_id = model_args.get("dataset_name")
    if dataset_id is None and model_args.get("train_data_dir") is None:
        dataset_id = EMBEDDED_DATASET_HUB_IDS.get(model_args.get("dataset"))
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag=PIPELINE_TAGS.get(conditioning, "unconditional-image-generation"),
        license=training_config.get("license"),
        tags=tags,
        datasets=[dataset_id] if dataset_id else None,
    )
    if super_resolution:
        low_resolution = data["low_resolution"]
        label_argument = f"class_labels={names[0]!r}, " if class_conditional else ""
        usage_call = (
            f'from PIL import Image\n\nimage = Image.open("small.png")  # a {low_resolution}x{low_resolution} image\n'
            f"upscaled = pipe(image=image, {label_argument}generator=torch.Generator().manual_seed(0)).images[0]"
        )
        samples_caption = (
            f"Each row: a {low_resolution}x{low_resolution} input (enlarged without smoothing), "
            f"{args['num_samples_per_class']} upscalings to {data['resolution']}x{data['resolution']} at noise level "
            f"{data['noise_level']} with {args['num_inference_steps']} steps, and the original; seed {args['seed']}."
        )
    elif class_conditional:
        usage_call = (
            f"images = pipe(class_labels={names[:SAMPLE_LABELS_IN_USAGE]!r}, "
            "generator=torch.Generator().manual_seed(0)).images"
        )
        samples_caption = (
            f"One row per class ({', '.join(names)}), {args['num_inference_steps']} steps at guidance scale "
            f"{args['guidance_scale']}, seed {args['seed']}."
        )
    elif conditioning == model_kinds.TEXT_CONDITIONAL:
        prompts = data.get("sample_prompts") or ["a photo"]
        usage_call = (
            f"images = pipe({prompts[:SAMPLE_LABELS_IN_USAGE]!r}, generator=torch.Generator().manual_seed(0)).images"
        )
        samples_caption = (
            f"One row per prompt ({'; '.join(prompts)}), {args['num_inference_steps']} steps at guidance scale "
            f"{args['guidance_scale']}, seed {args['seed']}. Text encoder: {data.get('text_encoder')}."
        )
    else:
        usage_call = (
            "images = pipe(batch_size=4, num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images"
        )
        samples_caption = f"{args['num_inference_steps']} steps, seed {args['seed']}."
    return ModelCard.from_template(
        card_data,
        template_str=importlib.resources.files(__package__).joinpath(PIPELINE_TEMPLATE).read_text(encoding="utf-8"),
        title=f"{pipeline_class} trained on {data['source']}",
        conditioning_text=kind,
        pipeline_class=pipeline_class,
        pipeline_module=pipeline_module,
        data_source=data["source"],
        num_images=data["num_images"],
        resolution=data["resolution"],
        num_channels=data["num_channels"],
        labels=", ".join(f"{i} = {n}" for i, n in enumerate(names)),
        load_path=load_path,
        revision_argument=f', revision="{revision}"' if revision else "",
        revision=revision,
        usage_call=usage_call,
        samples_file=samples_file,
        samples_caption=samples_caption,
        global_step=run["global_step"],
        images_seen=run["images_seen"],
        total_batch_size=run["total_batch_size"],
        num_processes=run["num_processes"],
        train_seconds=run["train_seconds"],
        final_loss=f"{run['final_loss']:.4f}",
        training_config_json=json.dumps(training_config, indent=2),
        diffkit_name=f"[diffkit]({url})" if (url := repository_url()) else "diffkit",
        install_instructions=install_instructions(url),
        evaluation=evaluation_section(metrics) if metrics else "",
        latent_space=latent_space_text(latent) if latent else "",
        distillation=distillation_text(training_config) if "teacher" in training_config else "",
        loads_as_stable_diffusion=loads_as_stable_diffusion,
    )


def distillation_text(training_config: dict) -> str:
    """The card's section on a distilled student: its teacher, and the cost and steps of each."""
    teacher, args, run = training_config["teacher"], training_config["args"], training_config["run"]
    teacher_steps = teacher["args"].get("num_inference_steps")
    guided = bool(args.get("guidance_scale_range"))
    method = METHOD_NAMES[args.get("method", "consistency")]
    lines = [
        f"A few-step student of the diffkit model `{teacher['teacher']}`, made by {method} (`training/distill.py`): "
        f"it samples with `LCMScheduler` in {args['num_inference_steps']} steps by default, one UNet evaluation per "
        "step.",
        "",
        "| | teacher | student |",
        "| --- | --- | --- |",
        f"| optimisation steps | {teacher['global_step']} | {run['global_step']} |",
        f"| wall time of the training loop | {teacher['train_seconds']} s | {run['train_seconds']} s |",
        f"| default sampling | {teacher_steps} DDPM steps | {args['num_inference_steps']} LCM steps |",
        f"| UNet evaluations per image | {2 * teacher_steps if guided else teacher_steps}"
        f"{' (two guidance branches)' if guided else ''} | {args['num_inference_steps']} |",
    ]
    if guided:
        low, high = args["guidance_scale_range"]
        lines += [
            "",
            f"The student takes the guidance scale as an input (`guidance_scale` in [{low:g}, {high:g}], default "
            f"{args['guidance_scale']:g}) instead of running a conditional and an unconditional branch.",
        ]
    return "\n".join(lines)


def latent_space_text(latent: dict) -> str:
    """The card's description of a latent run's space: the VAE, its down factor, the latents and their scaling."""
    vae = latent["vae"] + (f" (subfolder {latent['vae_subfolder']})" if latent.get("vae_subfolder") else "")
    shift = f", shift_factor {latent['shift_factor']}" if latent.get("shift_factor") is not None else ""
    return (
        f"latents of {vae}, frozen (its copy is the pipeline's `vae`): {latent['latent_channels']}x"
        f"{latent['latent_size']}x{latent['latent_size']}, {latent['down_factor']}x smaller per side, scaling_factor "
        f"{latent['scaling_factor']}{shift}"
    )


def evaluation_section(metrics: dict) -> str:
    """Markdown for the card's evaluation section: the final figures beside the real-vs-real floor."""
    guidance = f" at guidance scale {metrics['guidance_scale']}" if metrics.get("guidance_scale") is not None else ""
    lines = [
        f"{metrics['num_samples']} samples of the final weights (step {metrics['global_step']}), "
        f"{metrics['sampler']} with {metrics['num_inference_steps']} steps{guidance}, seed {metrics['seed']}, "
        f"against {metrics['num_samples']} real training images; the last column compares another "
        f"{metrics['num_samples']} real images, the floor at this sample count. MobileNetV2 features are ImageNet "
        f"features at {metrics['mobilenet_resolution']}px: these values are not comparable with InceptionV3 FID.",
        "",
        "| metric | samples | real vs real |",
        "| --- | ---: | ---: |",
    ]
    if metrics.get("held_out_images"):
        lines[0] += (
            f" The samples are upscalings of {metrics['held_out_images']} training images held out of training, "
            f"area-downsampled to {metrics['low_resolution']} px; PSNR compares each with its original."
        )
    for name, value in metrics["generated"].items():
        if name.endswith("-std"):
            continue
        reference = metrics["real_reference"].get(name)
        lines.append(f"| {name} | {value:.4f} | {'' if reference is None else f'{reference:.4f}'} |")
    if "class-accuracy" in metrics:
        lines.append(
            f"| class accuracy | {metrics['class-accuracy']:.1%} | {metrics['classifier_held_out_accuracy']:.1%} "
            "(the classifier on held-out real images) |"
        )
    if metrics.get("InceptionV3"):
        lines += ["", f"InceptionV3 FID/KID/IS: {metrics['InceptionV3']}."]
    best = metrics.get("best")
    if best:
        lines += [
            "",
            f"Best {best['metric']} during training: {best['value']:.4f} at step {best['global_step']} (that "
            "pipeline is in `best/`).",
        ]
    return "\n".join(lines)
