#!/usr/bin/env bash
# The package as a user installs it: build the sdist and the wheel, check them with twine, install the wheel (not
# editable) beside torch in a fresh venv outside the repository, and from there run the default job (shortened to 40
# steps, with a checkpoint) through `accelerate launch -m diffkit.training.train`, load its pipeline, and call every
# command. Run by .ci/run; takes about two minutes.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/build-venv"
"$work/build-venv/bin/pip" install -q build twine
rm -rf "$repo/dist"
"$work/build-venv/bin/python" -m build --outdir "$repo/dist" "$repo" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
"$work/build-venv/bin/twine" check --strict "$repo"/dist/*
wheel="$(ls "$repo"/dist/diffkit-*.whl)"
echo "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB; sdist: $(du -k "$repo"/dist/diffkit-*.tar.gz | cut -f1) KiB"

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.13.0 "$wheel"
cd "$work"

# one namespace: every installed file of the distribution is under diffkit/ (or its metadata and commands)
"$work/venv/bin/pip" show -f diffkit >show.txt
if grep -E '^  (pipelines|training|model_cards)/' show.txt; then echo "top-level packages besides diffkit"; exit 1; fi
grep -q '^  diffkit/model_cards/diffkit_pipeline.md$' show.txt
grep -q '^  diffkit/training/accelerate_configs/multi_cpu.yaml$' show.txt

# the commands, as installed; each answers --help without loading torch, the web demo's without the `app` extra
for command in diffkit-train diffkit-train-vae diffkit-distill diffkit-evaluate diffkit-generate diffkit-edit diffkit-push diffkit-app; do
  "$work/venv/bin/$command" --help >/dev/null
done

# the default job, shortened, then its pipeline through the public import
PATH="$work/venv/bin:$PATH" accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
  --dynamo_backend no --num_cpu_threads_per_process "$(nproc)" -m diffkit.training.train --output_dir out \
  --max_train_steps 40 --checkpointing_steps 20 >train.log 2>&1 || { tail -50 train.log; exit 1; }
test -f out/checkpoint-40/training_state.json && test -f out/README.md && test -f out/samples.png
"$work/venv/bin/python" - <<'PY'
import torch
from diffkit import ClassConditionalImagePipeline

pipe = ClassConditionalImagePipeline.from_pretrained("out")
images = pipe(class_labels=[3, "seven"], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
assert [image.size for image in images] == [(28, 28), (28, 28)]
assert "from diffkit import ClassConditionalImagePipeline" in open("out/README.md").read()
print("the wheel's default job trained, saved and loaded:", type(pipe).__module__)
PY
# the web demo needs the `app` extra, and says so before it loads a model
if "$work/venv/bin/diffkit-app" --pipeline out >app.txt 2>&1; then echo "diffkit-app ran without gradio"; exit 1; fi
grep -q "The web demo needs Gradio" app.txt
