"""`TextConditionalImagePipeline` on a tiny random CLIP text encoder with CLIP's real tokenizer, and on a tiny
BERT-style encoder."""

import logging

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import BertConfig, BertModel, BertTokenizer

from diffkit import DenoisingFilm, TextConditionalImagePipeline
from diffkit.pipelines.pipeline_text_conditional_image import encode_text

from .test_pipelines import count_unet_calls
from .tiny_stable_diffusion import TEXT_HIDDEN, save_clip_tokenizer, tiny_text_encoder
from .utils import assert_local_remote_code_needs_opt_in

STEPS = 3
MAX_TEXT_LENGTH = 16


def tiny_text_unet(encoder_dim=TEXT_HIDDEN, cross_attention_dim=16):
    torch.manual_seed(0)
    # The encoder's width differs from the cross-attention width: the UNet's encoder_hid_proj projects it.
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=cross_attention_dim,
        encoder_hid_dim=encoder_dim,
        encoder_hid_dim_type="text_proj",
    ).eval()


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    return save_clip_tokenizer(str(tmp_path_factory.mktemp("clip-tokenizer")))


@pytest.fixture
def pipe(clip_tokenizer):
    torch.manual_seed(0)
    pipe = TextConditionalImagePipeline(
        unet=tiny_text_unet(),
        scheduler=DDPMScheduler(num_train_timesteps=100),
        text_encoder=tiny_text_encoder(),
        tokenizer=clip_tokenizer,
        max_text_length=MAX_TEXT_LENGTH,
        guidance_scale=3.0,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kwargs):
    defaults = {"num_inference_steps": STEPS, "output_type": "np", "generator": torch.Generator().manual_seed(0)}
    return pipe(**{**defaults, **kwargs}).images


def test_guidance_scale_one_is_the_conditional_branch_alone(pipe):
    calls = count_unet_calls(pipe.unet)
    images = run(pipe, prompt=["a handwritten seven", "the digit 3"], guidance_scale=1.0)
    assert calls == [2] * STEPS  # the unconditional pass is skipped
    assert images.shape == (2, 8, 8, 1)


def test_guidance_scale_zero_is_the_empty_or_negative_prompt_alone(pipe):
    unconditional = run(pipe, prompt="a handwritten seven", guidance_scale=0.0)
    np.testing.assert_allclose(unconditional, run(pipe, prompt="", guidance_scale=1.0), atol=1e-6)
    negative = run(pipe, prompt="a handwritten seven", negative_prompt="a blurry digit", guidance_scale=0.0)
    np.testing.assert_allclose(negative, run(pipe, prompt="a blurry digit", guidance_scale=1.0), atol=1e-6)
    assert not np.allclose(negative, unconditional)


def test_guidance_combines_both_branches_in_one_batched_pass(pipe):
    prompt = ["a handwritten seven", "the digit 3"]
    calls = count_unet_calls(pipe.unet)
    guided = run(pipe, prompt=prompt, num_images_per_prompt=2, guidance_scale=3.0)
    assert calls == [8] * STEPS  # 2 prompts x 2 images x 2 branches
    # by hand: eps_uncond + 3 (eps_cond - eps_uncond), each branch in its own pass
    embeds = encode_text(pipe.text_encoder, pipe.tokenizer, prompt, MAX_TEXT_LENGTH).repeat_interleave(2, 0)
    empty = encode_text(pipe.text_encoder, pipe.tokenizer, [""] * 4, MAX_TEXT_LENGTH)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((4, 1, 8, 8), generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            cond = pipe.unet(latents, t, encoder_hidden_states=embeds).sample
            uncond = pipe.unet(latents, t, encoder_hidden_states=empty).sample
            latents = scheduler.step(uncond + 3.0 * (cond - uncond), t, latents, generator=generator).prev_sample
    manual = (latents / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(guided, manual, atol=1e-5)


def test_prompt_embeds_give_the_images_of_their_prompts(pipe):
    prompt, negative = ["the digit 3"], ["a blurry digit"]
    embeds = encode_text(pipe.text_encoder, pipe.tokenizer, prompt, MAX_TEXT_LENGTH)
    negative_embeds = encode_text(pipe.text_encoder, pipe.tokenizer, negative, MAX_TEXT_LENGTH)
    expected = run(pipe, prompt=prompt, negative_prompt=negative)
    np.testing.assert_allclose(run(pipe, prompt_embeds=embeds, negative_prompt_embeds=negative_embeds), expected)
    np.testing.assert_allclose(run(pipe, prompt_embeds=embeds, negative_prompt=negative), expected)


def test_save_load_round_trip_with_and_without_diffkit(pipe, tmp_path):
    expected = run(pipe, prompt="a handwritten seven")
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "pipeline_text_conditional_image.py").is_file()
    assert (tmp_path / "text_encoder" / "model.safetensors").is_file() and not list(tmp_path.glob("**/*.bin"))
    loaded = TextConditionalImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.max_text_length == MAX_TEXT_LENGTH and loaded.config.guidance_scale == 3.0
    np.testing.assert_allclose(run(loaded, prompt="a handwritten seven"), expected, atol=1e-6)
    assert_local_remote_code_needs_opt_in(tmp_path, TextConditionalImagePipeline)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    remote.set_progress_bar_config(disable=True)
    assert type(remote).__name__ == "TextConditionalImagePipeline"
    np.testing.assert_allclose(run(remote, prompt="a handwritten seven"), expected, atol=1e-6)


def test_long_prompts_are_cut_with_a_warning_that_quotes_the_cut(pipe, caplog):
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    with caplog.at_level(logging.WARNING):
        run(pipe, prompt=words, guidance_scale=1.0)
    # 16 tokens: start, 14 words, end; the last two words are cut
    assert "reads at most 16 tokens; this part was cut: ['fifteen sixteen']" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run(pipe, prompt="a short prompt", guidance_scale=1.0)
    assert "was cut" not in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "a", "prompt_embeds": torch.zeros(1, 16, 32)}, "Both `prompt` and `prompt_embeds` were given"),
        ({"prompt": None}, "Pass `prompt` .* or `prompt_embeds`"),
        ({"prompt": []}, "`prompt` must be a string or a non-empty list of strings"),
        ({"prompt": ["a", 3]}, "`prompt` must be a string or a non-empty list of strings"),
        ({"negative_prompt": "b", "negative_prompt_embeds": torch.zeros(2, 16, 32)}, "Both `negative_prompt` and"),
        ({"negative_prompt": 5}, "`negative_prompt` must be a string or a list of strings"),
        ({"negative_prompt": ["b"]}, "`negative_prompt` has 1 entries but `prompt` has 2"),
        ({"prompt": None, "prompt_embeds": torch.zeros(2, 32)}, "`prompt_embeds` must have shape \\(batch, tokens"),
        ({"negative_prompt_embeds": torch.zeros(2, 16, 32)}, "`negative_prompt_embeds` need `prompt_embeds`"),
        (
            {"prompt": None, "prompt_embeds": torch.zeros(2, 16, 32), "negative_prompt_embeds": torch.zeros(2, 8, 32)},
            "`negative_prompt_embeds` has shape \\(2, 8, 32\\), but `prompt_embeds` has \\(2, 16, 32\\)",
        ),
        ({"num_images_per_prompt": 0}, "`num_images_per_prompt` must be a positive integer"),
        ({"num_inference_steps": 0}, "`num_inference_steps` must be a positive integer, but is 0"),
        ({"guidance_scale": -1.0}, "`guidance_scale` must be a finite number >= 0, but is -1.0"),
        ({"guidance_scale": float("nan")}, "`guidance_scale` must be a finite number >= 0, but is nan"),
        ({"generator": [torch.Generator()] * 3}, "`generator` is a list of 3 generators, but 2 images"),
        ({"output_type": "jpg"}, "`output_type` must be one of"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, "`callback_on_step_end_tensor_inputs` contains"),
    ],
)
def test_check_inputs(pipe, kwargs, message):
    calls = count_unet_calls(pipe.unet)
    with pytest.raises(ValueError, match=message):
        pipe(**{"prompt": ["a seven", "a three"], "num_inference_steps": STEPS, **kwargs})
    assert calls == []  # rejected before any work


def test_callback_and_film(pipe):
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    film = DenoisingFilm()
    images = run(
        pipe,
        prompt=["a seven", "a three"],
        callback_on_step_end=film,
        callback_on_step_end_tensor_inputs=film.tensor_inputs,
    )
    assert len(film.frames) == STEPS and film.frames[0].shape == (2, 1, 8, 8)
    np.testing.assert_allclose(images, run(pipe, prompt=["a seven", "a three"]))


def test_a_bert_style_encoder_sees_its_attention_mask(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "handwritten", "seven", "the", "digit", "3"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    encoder = BertModel(
        BertConfig(
            vocab_size=len(words),
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    ).eval()
    with torch.no_grad():
        short = encode_text(encoder, tokenizer, ["a handwritten seven"], 8)
        long = encode_text(encoder, tokenizer, ["a handwritten seven"], 20)
    # [CLS] a handwritten seven [SEP]: with the mask, padding changes nothing about the real tokens
    torch.testing.assert_close(short[:, :5], long[:, :5])
    pipe = TextConditionalImagePipeline(
        tiny_text_unet(encoder_dim=24), DDPMScheduler(num_train_timesteps=100), encoder, tokenizer, max_text_length=8
    )
    pipe.set_progress_bar_config(disable=True)
    assert run(pipe, prompt="the digit 3").shape == (1, 8, 8, 1)
