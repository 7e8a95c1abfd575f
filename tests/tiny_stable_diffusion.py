"""Tiny random Stable Diffusion, SDXL and ControlNet model folders in the layout of the Hub repos, for the tests.

The tokenizer is real: CLIP's BPE vocabulary from the open_clip_torch wheel (installed without its dependencies by
the test command), written as the `vocab.json` / `merges.txt` that `CLIPTokenizer` reads. Every network weight is
random under a fixed seed, as in diffusers' own fast tests.
"""

import gzip
import importlib.util
import json
import os

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

CLIP_MERGES = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 49408
TEXT_HIDDEN = 32
SDXL_TIME_EMBED_DIM = 8
# Four VAE blocks: the latents are 1/8 of the image size, as in the real models.
TINY_VAE_CONFIG = {
    "block_out_channels": [8, 8, 16, 16],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "layers_per_block": 1,
    "sample_size": 64,
}


def bytes_to_unicode() -> dict:
    """GPT-2/CLIP's reversible map from bytes to printable characters: the first 256 tokens of the vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def clip_bpe_file() -> str:
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise RuntimeError(
            "The CLIP vocabulary comes from the open_clip_torch wheel: `pip install --no-deps open_clip_torch==3.3.0` "
            "(the README's test command does)."
        )
    return os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")


def save_clip_tokenizer(folder: str) -> CLIPTokenizer:
    """Write CLIP's real vocabulary as `vocab.json` + `merges.txt` in `folder` and load it."""
    os.makedirs(folder, exist_ok=True)
    with gzip.open(clip_bpe_file(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : CLIP_MERGES + 1]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [token + "</w>" for token in byte_tokens]
    vocab += ["".join(merge.split()) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: index for index, token in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


# CLIP's text tower, shrunk (CLIP's real vocabulary and special tokens)
TINY_TEXT_CONFIG = dict(
    vocab_size=CLIP_VOCAB_SIZE,
    hidden_size=TEXT_HIDDEN,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    projection_dim=TEXT_HIDDEN,
)
# The Stable Diffusion UNet's layout, shrunk; `tiny_unet` adds the input channels and the SDXL conditioning.
TINY_UNET_CONFIG = dict(
    block_out_channels=(8, 16),
    layers_per_block=1,
    sample_size=8,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=TEXT_HIDDEN,
    attention_head_dim=4,
    norm_num_groups=4,
)


def tiny_text_encoder(with_projection=False):
    config = CLIPTextConfig(**TINY_TEXT_CONFIG)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def tiny_unet(sdxl=False, refiner=False, in_channels=4):
    extra, cross_attention_dim = {}, TEXT_HIDDEN
    if sdxl or refiner:
        # SDXL's micro-conditioning: 6 time ids (5 with the refiner's aesthetic score) plus the pooled text embedding
        time_ids = 5 if refiner else 6
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=time_ids * SDXL_TIME_EMBED_DIM + TEXT_HIDDEN,
            use_linear_projection=True,
        )
        cross_attention_dim = TEXT_HIDDEN if refiner else 2 * TEXT_HIDDEN
    config = {**TINY_UNET_CONFIG, "in_channels": in_channels, "cross_attention_dim": cross_attention_dim}
    return UNet2DConditionModel(**config, **extra).eval()


def blacken_decoder(vae):
    """Make `vae` decode every latent to an all-black image (its last convolution outputs -4 everywhere)."""
    with torch.no_grad():
        vae.decoder.conv_out.weight.zero_()
        vae.decoder.conv_out.bias.fill_(-4.0)


def save_tiny_stable_diffusion(folder: str, fp16_variant: bool = False, inpainting: bool = False) -> str:
    """With `inpainting`, the UNet reads 9 channels (latents, mask, masked image), as the inpainting checkpoints'."""
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**TINY_VAE_CONFIG).eval(),
        text_encoder=tiny_text_encoder(),
        tokenizer=save_clip_tokenizer(os.path.join(folder, "tokenizer")),
        unet=tiny_unet(in_channels=9 if inpainting else 4),
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    if fp16_variant:
        pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    return folder


def save_tiny_sdxl(folder: str, inpainting: bool = False) -> str:
    torch.manual_seed(0)
    tokenizer = save_clip_tokenizer(os.path.join(folder, "tokenizer"))
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**TINY_VAE_CONFIG, force_upcast=True).eval(),
        text_encoder=tiny_text_encoder(),
        text_encoder_2=tiny_text_encoder(with_projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=tiny_unet(sdxl=True, in_channels=9 if inpainting else 4),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    )
    pipe.save_pretrained(folder)
    return folder


def save_tiny_upscaler(folder: str) -> str:
    """The x4 upscaler's layout: a VAE with three blocks (4x, not 8x), a UNet reading the latents and the RGB
    low-resolution image (7 channels), and the DDPM scheduler that noises that image (`low_res_scheduler`)."""
    torch.manual_seed(3)
    vae_config = {**TINY_VAE_CONFIG, "block_out_channels": [8, 8, 16]}
    vae_config.update(down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3)
    pipe = StableDiffusionUpscalePipeline(
        vae=AutoencoderKL(**vae_config).eval(),
        text_encoder=tiny_text_encoder(),
        tokenizer=save_clip_tokenizer(os.path.join(folder, "tokenizer")),
        unet=tiny_unet(in_channels=7),
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False),
        max_noise_level=350,
    )
    pipe.save_pretrained(folder)
    return folder


def save_tiny_sdxl_refiner(folder: str) -> str:
    """The refiner's own parts: a UNet conditioned on the second text encoder only, and its scheduler."""
    torch.manual_seed(2)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=AutoencoderKL(**TINY_VAE_CONFIG, force_upcast=True).eval(),
        text_encoder=None,
        text_encoder_2=tiny_text_encoder(with_projection=True),
        tokenizer=None,
        tokenizer_2=save_clip_tokenizer(os.path.join(folder, "tokenizer_2")),
        unet=tiny_unet(refiner=True),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    pipe.save_pretrained(folder)
    return folder


def save_tiny_controlnet(folder: str, base_folder: str) -> str:
    """A ControlNet made from the base model's UNet, as `ControlNetModel.from_unet` does for training."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(base_folder, subfolder="unet")
    controlnet = ControlNetModel.from_unet(unet)
    # from_unet zero-initialises the convolutions that feed the UNet, so an untrained ControlNet has no effect;
    # give them random weights, as training would, so that tests can see the control image steer the result.
    with torch.no_grad():
        zero_initialised = [controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_mid_block]
        for block in [*controlnet.controlnet_down_blocks, *zero_initialised]:
            torch.nn.init.normal_(block.weight, std=0.5)
    controlnet.save_pretrained(folder)
    return folder


def save_tiny_vae(folder: str) -> str:
    torch.manual_seed(1)
    AutoencoderKL(**TINY_VAE_CONFIG, force_upcast=False).eval().save_pretrained(folder)
    return folder
