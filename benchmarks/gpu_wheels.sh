#!/usr/bin/env bash
# Download, on this machine, the wheels that the GPU machine's image lacks for `python -m benchmarks.gpu_check`
# (its image has torch, transformers, accelerate, peft, safetensors, huggingface_hub, opencv and scikit-image, but
# not diffusers, torchao or the CLIP vocabulary's wheel, and it reaches no package index). They go to .whl/, which
# git ignores; docs/efficiency.md ("The GPU check") gives the command that installs them there and runs the check.
# bitsandbytes is left out (its wheel alone nears the 64 MiB a device call may carry): the nf4 rows then show the
# loader's refusal, which names the extra to install.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
diffusers_version=$(python -c 'import importlib.metadata as m; print(m.version("diffusers"))')
torchao_version=$(python -c 'import importlib.metadata as m; print(m.version("torchao"))')
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  "diffusers==${diffusers_version}" "torchao==${torchao_version}" open_clip_torch==3.3.0
du -sh .whl
