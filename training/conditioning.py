"""What `training/train.py` does differently for each `--conditioning` mode, in one class per mode.

Each class answers the same questions, so that the training loop, the validation grid, the evaluation and the final
save read the same for every mode:

- `unet_class` and `default_unet_config`: the UNet it trains; `fit_unet_config(config)` adds what the UNet needs to
  read the condition;
- `model_inputs(batch, dtype, generator)`: the UNet's keyword arguments besides the noisy images and timesteps for a
  training batch, with the condition dropout that teaches the unconditional branch of guidance;
- `build_pipeline(unet, scheduler)`: the pipeline that training saves;
- `sample_grid(pipeline, generator)`: the grid of `samples.png` and of validation;
- `eval_labels(num_samples)`: the labels that evaluation generates and scores (None without class labels);
- `describe()` and `data_config()`: the log line and the `training_config.json` / model card entries.

`make_conditioning(args, data, device)` builds the object of `--conditioning`. A new mode is one more class here, and
an entry in `CONDITIONINGS`.
"""

from typing import Dict, List, Optional

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.utils import make_image_grid

from diffkit.pipelines.pipeline_class_conditional_image import ClassConditionalImagePipeline, one_hot_label_states
from diffkit.pipelines.pipeline_text_conditional_image import TextConditionalImagePipeline, encode_text
from diffkit.pipelines.pipeline_unconditional_image import UnconditionalImagePipeline
from diffkit.training.text_conditioning import (
    DEFAULT_TEXT_ENCODER,
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


class Unconditional:
    """`--conditioning none`: a `UNet2DModel` saved as an `UnconditionalImagePipeline`."""

    name = "none"
    unet_class = UNet2DModel
    default_unet_config = DEFAULT_UNCONDITIONAL_UNET_CONFIG
    has_class_labels = False

    def __init__(self, args, num_classes: int = 0):
        self.args = args
        self.num_classes = num_classes

    def fit_unet_config(self, config: dict) -> dict:
        return config

    def model_inputs(self, batch: Dict, dtype: torch.dtype, generator: torch.Generator) -> Dict:
        return {}

    def build_pipeline(self, unet, scheduler):
        return UnconditionalImagePipeline(unet=unet, scheduler=scheduler)

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

    def describe(self) -> str:
        return f"{self.name} ({self.num_classes} classes)"

    def data_config(self) -> Dict:
        return {}


class ClassConditioning:
    """`--conditioning class`: a `UNet2DConditionModel` that reads the label as a one-hot vector, saved as a
    `ClassConditionalImagePipeline`; the null label (id `num_classes`) is the unconditional branch of guidance."""

    name = "class"
    unet_class = UNet2DConditionModel
    default_unet_config = DEFAULT_CONDITIONAL_UNET_CONFIG
    has_class_labels = True

    def __init__(self, args, num_classes: int, id2label: Dict[int, str]):
        self.args = args
        self.num_classes = num_classes
        self.id2label = id2label

    def fit_unet_config(self, config: dict) -> dict:
        # The label enters as a one-hot vector over the classes plus the null class; `encoder_hid_proj` (a Linear)
        # turns it into the label embedding that cross-attention reads.
        config.update(encoder_hid_dim=self.num_classes + 1, encoder_hid_dim_type="text_proj")
        return config

    def model_inputs(self, batch: Dict, dtype: torch.dtype, generator: torch.Generator) -> Dict:
        # Condition dropout: the null label teaches the unconditional branch of guidance.
        labels = batch["labels"]
        dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < self.args.condition_dropout
        labels = torch.where(dropped, torch.full_like(labels, self.num_classes), labels)
        return {"encoder_hidden_states": one_hot_label_states(labels, self.num_classes, dtype)}

    def build_pipeline(self, unet, scheduler):
        return ClassConditionalImagePipeline(
            unet=unet,
            scheduler=scheduler,
            num_classes=self.num_classes,
            id2label=self.id2label,
            guidance_scale=self.args.guidance_scale,
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

    def describe(self) -> str:
        return f"{self.name} ({self.num_classes} classes)"

    def data_config(self) -> Dict:
        return {}


class TextConditioning:
    """`--conditioning text`: a `UNet2DConditionModel` that cross-attends to a frozen text encoder's hidden states,
    saved as a `TextConditionalImagePipeline` with that encoder; the empty caption is the unconditional branch."""

    name = "text"
    unet_class = UNet2DConditionModel
    default_unet_config = DEFAULT_CONDITIONAL_UNET_CONFIG
    has_class_labels = False

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

    def model_inputs(self, batch: Dict, dtype: torch.dtype, generator: torch.Generator) -> Dict:
        # Caption dropout: the empty caption teaches the unconditional branch of guidance.
        captions = drop_captions(batch["captions"], self.args.condition_dropout, generator)
        if self.caption_embeddings is not None:
            encoder_hidden_states = self.caption_embeddings(captions)
        else:
            with torch.no_grad():
                encoder_hidden_states = encode_text(
                    self.text_encoder, self.tokenizer, captions, self.max_text_length, warn_on_truncation=False
                )
        return {"encoder_hidden_states": encoder_hidden_states.to(dtype)}

    def build_pipeline(self, unet, scheduler):
        return TextConditionalImagePipeline(
            unet=unet,
            scheduler=scheduler,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            max_text_length=self.max_text_length,
            guidance_scale=self.args.guidance_scale,
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

    def describe(self) -> str:
        hidden_size = self.text_encoder.config.hidden_size
        encoder_name = self.args.text_encoder or DEFAULT_TEXT_ENCODER
        return f"text: {type(self.text_encoder).__name__} ({hidden_size}-d), {encoder_name}"

    def data_config(self) -> Dict:
        return {"text_encoder": self.args.text_encoder or DEFAULT_TEXT_ENCODER, "sample_prompts": self.sample_prompts}


CONDITIONINGS = {mode.name: mode for mode in (Unconditional, ClassConditioning, TextConditioning)}


def text_length(args, tokenizer) -> int:
    """Tokens per caption: --max_text_length, within the tokenizer's own limit."""
    return min(args.max_text_length, tokenizer.model_max_length)


def make_conditioning(args, data, device):
    """The conditioning object of `--conditioning` for the training data `data` (a text encoder goes on `device`)."""
    if args.conditioning == TextConditioning.name:
        return TextConditioning.load(args, data, device)
    if args.conditioning == ClassConditioning.name:
        return ClassConditioning(args, data.num_classes, data.id2label)
    return Unconditional(args, data.num_classes)
