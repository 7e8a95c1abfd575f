"""Push a saved diffkit pipeline folder to the Hugging Face Hub so that anyone can load it in one line.

    diffkit-push OUTPUT_DIR REPO_ID [--private] [--token TOKEN] [--commit_message TEXT] [--space_id SPACE]

The folder (the `--output_dir` of a finished `training/train.py` run, or one written by `pipe.save_pretrained`) is
uploaded with its pipeline `.py` file, so that `DiffusionPipeline.from_pretrained(REPO_ID, trust_remote_code=True)`
works without diffkit. For a training run, the model card is rendered again with loading snippets pinned to the
commit that holds the weights. Checkpoints, tracker logs, validation grids and `best/` stay local.

With `--space_id`, a Gradio Space is created (or updated) that runs diffkit's web demo on the pushed pipeline: its
`diffkit_app.py` and `diffkit_demo.py` are `diffkit/app.py` and `diffkit/demo.py` byte for byte, and its `app.py` only
calls the first one's `main` with the repo id.

`HF_ENDPOINT` and `HF_TOKEN` are honoured as everywhere in huggingface_hub.
"""

import argparse
import glob
import importlib
import importlib.metadata
import importlib.util
import os
from typing import Dict, Optional

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, constants

from diffkit.training.command_line import usage_errors_reported
from diffkit.training.hub import (
    MODEL_CARD_NAME,
    check_repo_id,
    explain_hub_errors,
    push_pipeline_folder,
    read_pipeline_folder,
)

# The web demo, uploaded unchanged to a Space under this module name; the Space's app.py imports it.
APP_SOURCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
SPACE_APP_MODULE = "diffkit_app"
# The Gradio app that the command serves, uploaded beside it under the name app.py imports on a Space.
DEMO_SOURCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")
SPACE_DEMO_MODULE = "diffkit_demo"
# The table of model kinds and the editing pipelines (self-contained files in diffkit.pipelines), uploaded beside the
# app so that it runs, edit mode included, on a Space.
EDITING_PIPELINE_PATTERNS = ("model_kinds.py", "pipeline_*_inpaint.py", "pipeline_*_img2img.py")


def installed_gradio_version() -> str:
    """The Gradio version a Space pins (`sdk_version`): the one the demo was tested with here."""
    try:
        return importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(
            "Creating a Space needs Gradio installed, whose version the Space then runs: `pip install -e '.[app]'`."
        ) from None


def demo_space_files(model_repo_id: str, gradio_version: str) -> Dict[str, bytes]:
    """The files of a Gradio Space that serves diffkit's web demo for the pipeline in `model_repo_id`."""
    with open(APP_SOURCE_FILE, "rb") as f:
        app_source = f.read()
    with open(DEMO_SOURCE_FILE, "rb") as f:
        demo_source = f.read()
    launcher = (
        f"# diffkit's web demo of {model_repo_id}. {SPACE_APP_MODULE}.py is diffkit's diffkit/app.py, unchanged.\n"
        "import sys\n\n"
        f"from {SPACE_APP_MODULE} import main\n\n"
        "# The pipeline class is the code diffkit saved beside the weights, hence --trust_remote_code; a Space\n"
        "# serves the public, hence --host 0.0.0.0. Arguments given to this script come after and win.\n"
        f'main(["--model", "{model_repo_id}", "--trust_remote_code", "--host", "0.0.0.0", *sys.argv[1:]])\n'
    )
    requirements = f"torch\ndiffusers=={importlib.metadata.version('diffusers')}\ntransformers\nsafetensors\n"
    card = (
        "---\n"
        f"title: {model_repo_id.split('/')[-1]}\n"
        "sdk: gradio\n"
        f"sdk_version: {gradio_version}\n"
        "app_file: app.py\n"
        f"models:\n- {model_repo_id}\n"
        "tags:\n- diffkit\n- diffusers\n"
        "---\n\n"
        f"# {model_repo_id}\n\n"
        f"A web demo of [{model_repo_id}]({constants.ENDPOINT}/{model_repo_id}), made with diffkit: pick what to "
        "draw, the guidance scale, the steps, the sampler and the seed, and watch the images form.\n"
    )
    editing_pipelines = {}
    # found without importing the pipelines (and torch with them)
    (pipelines_folder,) = importlib.util.find_spec("diffkit.pipelines").submodule_search_locations
    for pattern in EDITING_PIPELINE_PATTERNS:
        for path in sorted(glob.glob(os.path.join(pipelines_folder, pattern))):
            with open(path, "rb") as f:
                editing_pipelines[os.path.basename(path)] = f.read()
    return {
        "app.py": launcher.encode(),
        f"{SPACE_APP_MODULE}.py": app_source,
        f"{SPACE_DEMO_MODULE}.py": demo_source,
        **editing_pipelines,
        "requirements.txt": requirements.encode(),
        MODEL_CARD_NAME: card.encode(),
    }


def push_demo_space(
    space_id: str, model_repo_id: str, private: Optional[bool] = None, token: Optional[str] = None
) -> CommitInfo:
    r"""
    Create (or update) a Gradio Space that runs diffkit's web demo on the pipeline pushed to `model_repo_id`.

    The Space holds `diffkit_app.py` and `diffkit_demo.py` (this package's `diffkit/app.py` and `diffkit/demo.py`,
    unchanged), an `app.py` that calls the first one's `main(["--model", model_repo_id, "--trust_remote_code",
    ...])`, the editing pipelines' files, a `requirements.txt` and a card whose
    `sdk_version` is the installed Gradio. A private model needs an `HF_TOKEN` secret in the Space's settings.

    Example:

    ```py
    >>> from diffkit.push import push_demo_space
    >>> push_demo_space("my-org/ddpm-mnist-demo", "my-org/ddpm-mnist")  # doctest: +SKIP
    ```
    """
    check_repo_id(space_id, "space_id")
    files = demo_space_files(model_repo_id, installed_gradio_version())
    with explain_hub_errors(space_id, "create the Space again with `python -m diffkit.push ... --space_id`"):
        api = HfApi(token=token)
        space_id = api.create_repo(
            space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True
        ).repo_id
        operations = [CommitOperationAdd(path, content) for path, content in files.items()]
        return api.create_commit(
            space_id, operations, repo_type="space", commit_message=f"diffkit web demo of {model_repo_id}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="diffkit-push",
        description="Push a saved diffkit pipeline folder (with its code and model card) to the Hugging Face Hub.",
    )
    parser.add_argument("folder", help="The --output_dir of a finished training run, or a `save_pretrained` folder.")
    parser.add_argument("repo_id", help="Hub repo id, 'name' (in your namespace) or 'namespace/name'.")
    parser.add_argument(
        "--private", action="store_true", help="Create the repo as private (an existing repo keeps its visibility)."
    )
    parser.add_argument(
        "--token", default=None, help="Hub token with write access; defaults to HF_TOKEN or the `hf auth login` one."
    )
    parser.add_argument("--commit_message", default=None, help="Message of the commit that uploads the pipeline.")
    parser.add_argument(
        "--space_id",
        default=None,
        help="Also create (or update) this Gradio Space, running diffkit's web demo (diffkit/app.py) on the pushed "
        "pipeline; it has the visibility of --private.",
    )
    args = parser.parse_args(argv)
    read_pipeline_folder(args.folder)
    check_repo_id(args.repo_id, "repo_id")
    if args.space_id is not None:
        check_repo_id(args.space_id, "--space_id")
        installed_gradio_version()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    commit = push_pipeline_folder(args.folder, args.repo_id, args.private or None, args.token, args.commit_message)
    print(f"Pushed {args.folder} to {commit.repo_url.repo_id} at revision {commit.oid}: {commit.commit_url}")
    if args.space_id is not None:
        space_commit = push_demo_space(args.space_id, commit.repo_url.repo_id, args.private or None, args.token)
        print(f"The web demo runs on the Space {space_commit.repo_url.repo_id}: {space_commit.repo_url}")


def command():
    """`diffkit-push` on the command line: bad input ends it with `diffkit-push: error: ...` and exit status
    2, without a traceback (training/command_line.py); `main` raises the `ValueError` for Python callers."""
    with usage_errors_reported("diffkit-push"):
        main()


if __name__ == "__main__":
    command()
