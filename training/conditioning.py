"""What `training/train.py` does differently for each `--conditioning` mode, in one class per mode.

Each class answers the same questions, so that the training loop, the validation grid, the evaluation and the final
save read the same for every mode:

- `unet_class` and `default_unet_config`: the UNet it trains; `fit_unet_config(config)` adds what the UNet needs to
  read the condition;
- `model_inputs(noisy_images, batch, generator)`: the UNet's sample (the noisy images, plus any image it reads beside
  them) and its keyword arguments besides the timesteps for a training batch, with the condition dropout that teaches
  the unconditional branch of guidance;
- `build_pipeline(unet, scheduler)`: the pipeline that training saves;
- `sample_grid(pipeline, generator)`: the grid of `samples.png` and of validation;
- `eval_labels(num_samples)`: the labels that evaluation generates and scores (None without class labels);
- `describe()` and `data_config()`: the log line and the `training_config.json` / model card entries.

`make_conditioning(args, data, device)` builds the object of `--conditioning`. A new mode is one more class here, and
an entry in `CONDITIONINGS`.
"""

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.utils import make_image_grid
from PIL import Image

from diffkit.pipelines import model_kinds
from diffkit.pipelines.model_kinds import conditioning_kind
from diffkit.pipelines.pipeline_class_conditional_image import ClassConditionalImagePipeline, one_hot_label_states
from diffkit.pipelines.pipeline_super_resolution import (
    SuperResolutionPipeline,
    augment,
    downsample,
    noise_level_labels,
    upsample,
)
from diffkit.pipelines.pipeline_text_conditional_image import TextConditionalImagePipeline, encode_text
from diffkit.pipelines.pipeline_unconditional_image import UnconditionalImagePipeline
from diffkit.training.arguments import DEFAULT_TEXT_ENCODER
from diffkit.training.dataset_loading import crop_square, resize_shorter_side
from diffkit.training.evaluate import generate, real_images_from_data
from diffkit.training.text_conditioning import (
    CaptionEmbeddings,
    drop_captions,
    load_text_encoder,
)

# The default UNets: small enough for the default job to train on 2 CPU cores in minutes. Attention (and, for the
# conditional UNets, cross-attention to the condition) runs only at the lowest resolution, where it is cheap.
# Data-dependent keys (sample_size, in/out channels, encoder_hid_dim) are filled in from the data.
DEFAULT_CONDITIONAL_UNET_CONFIG = {
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 128,
    "attention_head_dim": 32,
}
DEFAULT_UNCONDITIONAL_UNET_CONFIG = {
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 32,
}
# Rows of the unconditional sample grid (conditional grids have one row per class or sample prompt).
UNCONDITIONAL_GRID_ROWS = 8
# The smallest input a super-resolution stage takes: below it a digit or a garment is a few blurred pixels.
MIN_LOW_RESOLUTION = 4


def sample_for_evaluation(pipeline, args, count: int, start: int) -> torch.Tensor:
    """`count` samples for --eval_steps, image i of the whole set (from `start`) with its own seed and label."""
    images, _ = generate(
        pipeline, count, args.eval_batch_size, args.seed, args.num_inference_steps, args.guidance_scale, start=start
    )
    return images


class Unconditional:
    """`--conditioning unconditional`: a `UNet2DModel` saved as an `UnconditionalImagePipeline`."""

    name = model_kinds.UNCONDITIONAL
    unet_class = UNet2DModel
    default_unet_config = DEFAULT_UNCONDITIONAL_UNET_CONFIG
    has_class_labels = False
    evaluates_on_held_out_images = False
    # The VAE of a latent run (see `make_conditioning`); its pipeline decodes the latents the UNet denoises.
    vae = None

    def __init__(self, args, num_classes: int = 0):
        self.args = args
        self.num_classes = num_classes

    def fit_unet_config(self, config: dict) -> dict:
        return config

    def model_inputs(self, noisy_images: torch.Tensor, batch: Dict, generator: torch.Generator) -> Tuple:
        return noisy_images, {}

    def build_pipeline(self, unet, scheduler):
        return UnconditionalImagePipeline(unet=unet, scheduler=scheduler, vae=self.vae)

    def sample_grid(self, pipeline, generator: torch.Generator):
        columns = self.args.num_samples_per_class
        images = pipeline(
            batch_size=UNCONDITIONAL_GRID_ROWS * columns,
            num_inference_steps=self.args.num_inference_steps,
            generator=generator,
        ).images
        return make_image_grid(images, rows=UNCONDITIONAL_GRID_ROWS, cols=columns)

    def eval_labels(self, num_samples: int) -> Optional[torch.Tensor]:
        return None

    def evaluation_images(self, pipeline, count: int, start: int) -> torch.Tensor:
        return sample_for_evaluation(pipeline, self.args, count, start)

    def evaluation_extras(self, images: torch.Tensor) -> Tuple[Dict, Dict]:
        return {}, {}

    def describe(self) -> str:
        return f"{self.name} ({self.num_classes} classes)"

    def data_config(self) -> Dict:
        return {}


class ClassConditioning:
    """`--conditioning class_conditional`: a `UNet2DConditionModel` that reads the label as a one-hot vector, saved as
    a `ClassConditionalImagePipeline`; the null label (id `num_classes`) is the unconditional branch of guidance."""

    name = model_kinds.CLASS_CONDITIONAL
    unet_class = UNet2DConditionModel
    default_unet_config = DEFAULT_CONDITIONAL_UNET_CONFIG
    has_class_labels = True
    evaluates_on_held_out_images = False
    vae = None

    def __init__(self, args, num_classes: int, id2label: Dict[int, str]):
        self.args = args
        self.num_classes = num_classes
        self.id2label = id2label

    def fit_unet_config(self, config: dict) -> dict:
        # The label enters as a one-hot vector over the classes plus the null class; `encoder_hid_proj` (a Linear)
        # turns it into the label embedding that cross-attention reads.
        config.update(encoder_hid_dim=self.num_classes + 1, encoder_hid_dim_type="text_proj")
        return config

    def model_inputs(self, noisy_images: torch.Tensor, batch: Dict, generator: torch.Generator) -> Tuple:
        states = dropped_label_states(
            batch["labels"], self.num_classes, self.args.condition_dropout, noisy_images.dtype, generator
        )
        return noisy_images, {"encoder_hidden_states": states}

    def build_pipeline(self, unet, scheduler):
        return ClassConditionalImagePipeline(
            unet=unet,
            scheduler=scheduler,
            num_classes=self.num_classes,
            id2label=self.id2label,
            guidance_scale=self.args.guidance_scale,
            vae=self.vae,
        )

    def sample_grid(self, pipeline, generator: torch.Generator):
        images = pipeline(
            class_labels=list(range(self.num_classes)),
            num_images_per_label=self.args.num_samples_per_class,
            num_inference_steps=self.args.num_inference_steps,
            generator=generator,
        ).images
        return make_image_grid(images, rows=self.num_classes, cols=self.args.num_samples_per_class)

    def eval_labels(self, num_samples: int) -> Optional[torch.Tensor]:
        # Image i has label i % num_classes, so the set does not depend on the number of processes.
        return torch.arange(num_samples) % self.num_classes

    def evaluation_images(self, pipeline, count: int, start: int) -> torch.Tensor:
        return sample_for_evaluation(pipeline, self.args, count, start)

    def evaluation_extras(self, images: torch.Tensor) -> Tuple[Dict, Dict]:
        return {}, {}

    def describe(self) -> str:
        return f"{self.name} ({self.num_classes} classes)"

    def data_config(self) -> Dict:
        return {}


class TextConditioning:
    """`--conditioning text_conditional`: a `UNet2DConditionModel` that cross-attends to a frozen text encoder's
    hidden states, saved as a `TextConditionalImagePipeline` with that encoder; the empty caption is the unconditional
    branch."""

    name = model_kinds.TEXT_CONDITIONAL
    unet_class = UNet2DConditionModel
    default_unet_config = DEFAULT_CONDITIONAL_UNET_CONFIG
    has_class_labels = False
    evaluates_on_held_out_images = False
    vae = None

    def __init__(
        self,
        args,
        text_encoder,
        tokenizer,
        sample_prompts: List[str],
        caption_embeddings: Optional[CaptionEmbeddings] = None,
    ):
        self.args = args
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.sample_prompts = sample_prompts
        self.caption_embeddings = caption_embeddings

    @classmethod
    def load(cls, args, data, device) -> "TextConditioning":
        """Load `--text_encoder` onto `device` and, with `--precompute_text_embeddings`, encode every caption once."""
        text_encoder, tokenizer = load_text_encoder(args.text_encoder or DEFAULT_TEXT_ENCODER, args.cache_dir)
        text_encoder.to(device)
        # What diffusers' StableDiffusionPipeline reads to encode prompts as `encode_text` does, so that a latent run
        # also loads there: the tokenizer pads to `model_max_length` tokens, and the encoder gets the attention mask
        # only when its config says `use_attention_mask`.
        tokenizer.model_max_length = text_length(args, tokenizer)
        text_encoder.config.use_attention_mask = True
        caption_embeddings = None
        if args.precompute_text_embeddings:
            caption_embeddings = CaptionEmbeddings(
                text_encoder, tokenizer, data.dataset["caption"], text_length(args, tokenizer)
            )
        return cls(args, text_encoder, tokenizer, data.sample_prompts, caption_embeddings)

    @property
    def max_text_length(self) -> int:
        return text_length(self.args, self.tokenizer)

    def fit_unet_config(self, config: dict) -> dict:
        # Cross-attention reads the text encoder's hidden states: the default UNet takes their width; a given
        # configuration of another width gets the UNet's `encoder_hid_proj` (a Linear) to project them.
        hidden_size = self.text_encoder.config.hidden_size
        if self.args.model_config_name_or_path is None or "cross_attention_dim" not in config:
            config["cross_attention_dim"] = hidden_size
        if config["cross_attention_dim"] != hidden_size:
            config.update(encoder_hid_dim=hidden_size, encoder_hid_dim_type="text_proj")
        else:
            config.update(encoder_hid_dim=None, encoder_hid_dim_type=None)
        return config

    def model_inputs(self, noisy_images: torch.Tensor, batch: Dict, generator: torch.Generator) -> Tuple:
        # Caption dropout: the empty caption teaches the unconditional branch of guidance.
        captions = drop_captions(batch["captions"], self.args.condition_dropout, generator)
        if self.caption_embeddings is not None:
            encoder_hidden_states = self.caption_embeddings(captions)
        else:
            with torch.no_grad():
                encoder_hidden_states = encode_text(
                    self.text_encoder, self.tokenizer, captions, self.max_text_length, warn_on_truncation=False
                )
        return noisy_images, {"encoder_hidden_states": encoder_hidden_states.to(noisy_images.dtype)}

    def build_pipeline(self, unet, scheduler):
        return TextConditionalImagePipeline(
            unet=unet,
            scheduler=scheduler,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            max_text_length=self.max_text_length,
            guidance_scale=self.args.guidance_scale,
            vae=self.vae,
        )

    def sample_grid(self, pipeline, generator: torch.Generator):
        images = pipeline(
            prompt=self.sample_prompts,
            num_images_per_prompt=self.args.num_samples_per_class,
            num_inference_steps=self.args.num_inference_steps,
            generator=generator,
        ).images
        return make_image_grid(images, rows=len(self.sample_prompts), cols=self.args.num_samples_per_class)

    def eval_labels(self, num_samples: int) -> Optional[torch.Tensor]:
        return None

    def evaluation_images(self, pipeline, count: int, start: int) -> torch.Tensor:
        return sample_for_evaluation(pipeline, self.args, count, start)

    def evaluation_extras(self, images: torch.Tensor) -> Tuple[Dict, Dict]:
        return {}, {}

    def describe(self) -> str:
        hidden_size = self.text_encoder.config.hidden_size
        encoder_name = self.args.text_encoder or DEFAULT_TEXT_ENCODER
        return f"{self.name}: {type(self.text_encoder).__name__} ({hidden_size}-d), {encoder_name}"

    def data_config(self) -> Dict:
        return {"text_encoder": self.args.text_encoder or DEFAULT_TEXT_ENCODER, "sample_prompts": self.sample_prompts}


class LowResolutionConditioning:
    """`--conditioning super_resolution`: one super-resolution stage, a `UNet2DModel` that reads the low-resolution
    image, saved as a `SuperResolutionPipeline`.

    Training pairs come from the training images themselves: each is area-downsampled to `--low_resolution`,
    upsampled back (bicubic) and noised to a level drawn uniformly from [0, `--max_noise_level`] (noise conditioning
    augmentation); the UNet reads that image as extra input channels and the level through its "timestep" class
    embedding. With `--use_class_labels` the stage is a `ClassLowResolutionConditioning` instead.
    """

    name = model_kinds.SUPER_RESOLUTION
    unet_class = UNet2DModel
    default_unet_config = DEFAULT_UNCONDITIONAL_UNET_CONFIG
    has_class_labels = False
    # --eval_steps scores its upscalings of held-out training images, not samples from noise
    evaluates_on_held_out_images = True
    # A super-resolution stage works in pixels (train.py refuses --vae for it).
    vae = None

    def __init__(
        self,
        args,
        grid_originals: List[Image.Image],
        grid_class_ids: Optional[List[int]] = None,
        num_classes: int = 0,
        id2label: Optional[Dict[int, str]] = None,
        held_out: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
    ):
        self.args = args
        # Real images of the output size (and, for labelled data, their labels): the sample grid upscales their
        # low-resolution versions.
        self.grid_originals = grid_originals
        self.grid_class_ids = grid_class_ids
        self.num_classes = num_classes
        self.id2label = id2label
        # The images that --eval_steps upscales, held out of training: (N, C, H, W) in [0, 1] and their labels.
        self.held_out = held_out

    @classmethod
    def from_data(cls, args, data, resolution: int, held_out_data=None):
        """The stage for `data`; the grid shows the first image of each class, or images spread over unlabelled
        data. `held_out_data` (see `evaluates_on_held_out_images`) are the images that evaluation upscales."""
        class_ids = None
        if data.id2label is not None and "label" in data.dataset.column_names:
            labels = np.asarray(data.dataset["label"])
            class_ids = [label for label in range(data.num_classes) if (labels == label).any()]
            indices = [int(np.argmax(labels == label)) for label in class_ids]
        else:
            indices = np.linspace(0, len(data.dataset) - 1, min(UNCONDITIONAL_GRID_ROWS, len(data.dataset)))
            indices = [int(i) for i in indices]
        originals = []
        for index in indices:
            image = resize_shorter_side(data.dataset[index]["image"].convert(data.image_mode), resolution)
            array = crop_square(np.asarray(image), resolution, None)
            originals.append(Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array))
        held_out = None if held_out_data is None else real_images_from_data(held_out_data, resolution)
        return cls(args, originals, class_ids, data.num_classes, data.id2label, held_out)

    @property
    def grid_inputs(self) -> List[Image.Image]:
        """The grid's low-resolution inputs, made from the originals as training makes its inputs."""
        inputs = []
        for original in self.grid_originals:
            array = np.asarray(original, dtype=np.float32)
            array = array[:, :, None] if array.ndim == 2 else array
            tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
            low = downsample(tensor, self.args.low_resolution)[0].permute(1, 2, 0).round().clamp(0, 255)
            low = low.to(torch.uint8).numpy()
            inputs.append(Image.fromarray(low[:, :, 0] if low.shape[2] == 1 else low))
        return inputs

    def fit_unet_config(self, config: dict) -> dict:
        # The UNet reads the augmented, upsampled low-resolution image as extra input channels beside the noisy
        # image, and its augmentation level through the "timestep" class embedding (summed with the time embedding).
        config.update(in_channels=2 * config["out_channels"], class_embed_type="timestep", num_class_embeds=None)
        return config

    def model_inputs(self, noisy_images: torch.Tensor, batch: Dict, generator: torch.Generator) -> Tuple:
        clean_images = batch["pixel_values"]
        upsampled = upsample(downsample(clean_images, self.args.low_resolution), clean_images.shape[-2:])
        levels = torch.rand(len(clean_images), generator=generator, device=clean_images.device)
        levels = levels * self.args.max_noise_level
        noise = torch.randn(upsampled.shape, generator=generator, device=upsampled.device, dtype=upsampled.dtype)
        condition_image = augment(upsampled, levels, noise).to(noisy_images.dtype)
        sample = torch.cat([noisy_images, condition_image], dim=1)
        return sample, {"class_labels": noise_level_labels(levels)}

    def build_pipeline(self, unet, scheduler):
        return SuperResolutionPipeline(
            unet=unet,
            scheduler=scheduler,
            low_resolution=self.args.low_resolution,
            noise_level=self.args.noise_level,
            max_noise_level=self.args.max_noise_level,
            num_classes=self.num_classes if self.has_class_labels else 0,
            id2label=self.id2label if self.has_class_labels else None,
            # Without labels there is nothing to guide: 1 is the plain conditional prediction.
            guidance_scale=self.args.guidance_scale if self.has_class_labels else 1.0,
        )

    def grid_labels(self) -> Optional[List[int]]:
        return None

    def sample_grid(self, pipeline, generator: torch.Generator):
        """Rows of: the low-resolution input (enlarged, nearest), `--num_samples_per_class` upscalings, the
        original."""
        columns = self.args.num_samples_per_class
        inputs = self.grid_inputs
        outputs = pipeline(
            image=inputs,
            class_labels=self.grid_labels(),
            num_images_per_image=columns,
            num_inference_steps=self.args.num_inference_steps,
            generator=generator,
        ).images
        cells = []
        for i, (low, original) in enumerate(zip(inputs, self.grid_originals)):
            cells += [low.resize(original.size, Image.NEAREST), *outputs[i * columns : (i + 1) * columns], original]
        return make_image_grid(cells, rows=len(inputs), cols=columns + 2)

    def eval_labels(self, num_samples: int) -> Optional[torch.Tensor]:
        # a class stage is scored against the labels of the held-out images it upscales
        return self.held_out[1] if self.has_class_labels else None

    def evaluation_images(self, pipeline, count: int, start: int) -> torch.Tensor:
        """`count` upscalings of the held-out images from the `start`-th on (wrapping round past the last one)."""
        originals, labels = self.held_out
        indices = (torch.arange(count) + start) % len(originals)
        class_ids = labels[indices] if labels is not None else None
        return self.upscale_for_evaluation(pipeline, originals[indices], class_ids, indices)

    def evaluation_extras(self, images: torch.Tensor) -> Tuple[Dict, Dict]:
        """The PSNR of the upscalings against their real images (diffusion SR trades some of it for realism), and the
        evaluation's settings."""
        mse = ((images - self.held_out[0]) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        figures = {"PSNR": (10 * torch.log10(1 / mse)).mean().item()}
        return figures, {"held_out_images": len(self.held_out[0]), "low_resolution": self.args.low_resolution}

    def upscale_for_evaluation(
        self, pipeline, originals: torch.Tensor, class_ids: Optional[torch.Tensor], indices: torch.Tensor
    ) -> torch.Tensor:
        """Upscale the area-downsampled `originals` ((N, C, H, W) in [0, 1]) in batches of `--eval_batch_size`;
        image i with the generator `--seed` + `indices[i]`, so that the set does not depend on the processes."""
        low = downsample(originals, self.args.low_resolution)
        device = pipeline._execution_device
        outputs = []
        for batch in torch.arange(len(low)).split(self.args.eval_batch_size):
            generators = [torch.Generator(device=device).manual_seed(self.args.seed + int(indices[i])) for i in batch]
            labels = {"class_labels": class_ids[batch].tolist()} if self.has_class_labels else {}
            out = pipeline(
                image=list(low[batch]),
                generator=generators,
                num_inference_steps=self.args.num_inference_steps,
                output_type="pt",
                **labels,
            )
            outputs.append(out.images.cpu())
        return torch.cat(outputs).float()

    def describe(self) -> str:
        resolution = self.grid_originals[0].size[0]
        return (
            f"{self.name}: {self.args.low_resolution} -> {resolution} px, augmentation levels uniform in "
            f"[0, {self.args.max_noise_level}] (sampling at {self.args.noise_level})"
            + (f", class labels ({self.num_classes} classes)" if self.has_class_labels else "")
        )

    def data_config(self) -> Dict:
        return {
            "low_resolution": self.args.low_resolution,
            "max_noise_level": self.args.max_noise_level,
            "noise_level": self.args.noise_level,
        }


class ClassLowResolutionConditioning(LowResolutionConditioning):
    """`--conditioning super_resolution --use_class_labels`: a super-resolution stage that also reads the class label,
    as `--conditioning class_conditional` does (one-hot through `encoder_hid_proj`, dropped to the null label for
    guidance)."""

    unet_class = UNet2DConditionModel
    default_unet_config = DEFAULT_CONDITIONAL_UNET_CONFIG
    has_class_labels = True

    def fit_unet_config(self, config: dict) -> dict:
        config = super().fit_unet_config(config)
        config.update(encoder_hid_dim=self.num_classes + 1, encoder_hid_dim_type="text_proj")
        return config

    def model_inputs(self, noisy_images: torch.Tensor, batch: Dict, generator: torch.Generator) -> Tuple:
        sample, unet_kwargs = super().model_inputs(noisy_images, batch, generator)
        unet_kwargs["encoder_hidden_states"] = dropped_label_states(
            batch["labels"], self.num_classes, self.args.condition_dropout, noisy_images.dtype, generator
        )
        return sample, unet_kwargs

    def grid_labels(self) -> Optional[List[int]]:
        return self.grid_class_ids


CONDITIONINGS = {
    mode.name: mode for mode in (Unconditional, ClassConditioning, TextConditioning, LowResolutionConditioning)
}


def conditioning_class(args):
    """The class of `--conditioning` (with `--use_class_labels`, the class-conditional super-resolution stage)."""
    kind = conditioning_kind(args.conditioning)  # also takes the former names, for arguments made in code
    if kind == LowResolutionConditioning.name and args.use_class_labels:
        return ClassLowResolutionConditioning
    return CONDITIONINGS[kind]


def dropped_label_states(
    labels: torch.Tensor, num_classes: int, dropout: float, dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    """The one-hot label states of a batch, each label replaced by the null label with probability `dropout`: the
    null label teaches the unconditional branch of guidance."""
    dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < dropout
    labels = torch.where(dropped, torch.full_like(labels, num_classes), labels)
    return one_hot_label_states(labels, num_classes, dtype)


def check_low_resolution(low_resolution: int, resolution: int, flag: str = "--resolution"):
    """Refuse a stage input size that is not a proper divisor of the output size."""
    if low_resolution >= resolution or resolution % low_resolution != 0:
        divisors = [d for d in range(MIN_LOW_RESOLUTION, resolution) if resolution % d == 0]
        raise ValueError(
            f"`--low_resolution` {low_resolution} must be smaller than {flag} {resolution} and divide it (factors "
            f"2, 4, ... of the output size): for {resolution} px use one of {divisors or 'none'}, or change {flag}."
        )


def text_length(args, tokenizer) -> int:
    """Tokens per caption: --max_text_length, within the tokenizer's own limit."""
    return min(args.max_text_length, tokenizer.model_max_length)


def make_conditioning(args, data, device, resolution: int, held_out_data=None, vae=None):
    """The conditioning object of `--conditioning` for the training data `data` at `resolution` (a text encoder goes
    on `device`; a super-resolution stage is evaluated on `held_out_data`), whose pipeline decodes with `vae` (a latent
    run)."""
    mode = conditioning_class(args)
    if mode is TextConditioning:
        conditioning = TextConditioning.load(args, data, device)
    elif mode is ClassConditioning:
        conditioning = ClassConditioning(args, data.num_classes, data.id2label)
    elif issubclass(mode, LowResolutionConditioning):
        conditioning = mode.from_data(args, data, resolution, held_out_data)
    else:
        conditioning = Unconditional(args, data.num_classes)
    conditioning.vae = vae
    return conditioning
