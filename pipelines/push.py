"""Push a saved diffkit pipeline folder to the Hugging Face Hub so that anyone can load it in one line.

    python -m pipelines.push OUTPUT_DIR REPO_ID [--private] [--token TOKEN] [--commit_message TEXT]

The folder (the `--output_dir` of a finished `training/train.py` run, or one written by `pipe.save_pretrained`) is
uploaded with its pipeline `.py` file, so that `DiffusionPipeline.from_pretrained(REPO_ID, trust_remote_code=True)`
works without diffkit. For a training run, the model card is rendered again with loading snippets pinned to the
commit that holds the weights. Checkpoints, tracker logs, validation grids and `best/` stay local.

`HF_ENDPOINT` and `HF_TOKEN` are honoured as everywhere in huggingface_hub.
"""

import argparse
import contextlib
import json
import os
from typing import List, Optional

import httpx2  # huggingface_hub's HTTP client: its TransportError is what an unreachable endpoint raises
from huggingface_hub import CommitInfo, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from model_cards.card import render_model_card

MODEL_INDEX_NAME = "model_index.json"
TRAINING_CONFIG_NAME = "training_config.json"
MODEL_CARD_NAME = "README.md"
SAMPLES_NAME = "samples.png"
# Local-only parts of an output folder: resumable state, tracker logs, validation grids, the best pipeline kept by
# --save_best_by (a second pipeline the repo's loading snippets would not reach), staging folders.
LOCAL_ONLY_PATTERNS = ["checkpoint-*", "logs/*", "validation/*", "best/*", ".*"]
CHECKPOINTS_PATH_IN_REPO = "checkpoints"


class HubPushError(RuntimeError):
    """A Hub request that failed after the inputs were checked; local files are left as they were."""


def check_repo_id(repo_id: str, argument: str = "repo_id") -> None:
    """Raise a `ValueError` naming `argument` if `repo_id` is not a valid Hub model id."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"`{argument}` {repo_id!r} is not a valid Hub repo id ({error}): use 'name' or 'namespace/name' with "
            "letters, digits, '-', '_' and '.' only, e.g. 'my-org/ddpm-mnist'."
        ) from None


@contextlib.contextmanager
def explain_hub_errors(repo_id: str, retry: str):
    """Turn a failed Hub call into a `HubPushError` that says what to do: fix the token, or `retry`."""
    try:
        yield
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        fix = (
            "pass a token with write access (--hub_token / --token, the HF_TOKEN variable, or `hf auth login`)"
            if status in (401, 403)
            else retry
        )
        message = f"The Hub at {constants.ENDPOINT} refused a request for {repo_id!r}: {error}"
        raise HubPushError(f"{message}. Local files are untouched; {fix}.") from error
    except (httpx2.TransportError, OSError) as error:  # the endpoint cannot be reached at all
        message = f"The Hub at {constants.ENDPOINT} could not be reached ({error!r})"
        raise HubPushError(f"{message}. Local files are untouched; {retry}.") from error


def create_hub_repo(repo_id: str, private: Optional[bool] = None, token: Optional[str] = None) -> str:
    """Create the model repo, or find it if it exists; return its full id (`namespace/name`)."""
    check_repo_id(repo_id)
    with explain_hub_errors(repo_id, "check HF_ENDPOINT and the network, then start again"):
        return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True).repo_id


def push_checkpoint(output_dir: str, checkpoint_name: str, removed_names: List[str], repo_id: str, token=None):
    """Upload `output_dir/checkpoint_name` to `checkpoints/checkpoint_name` in the repo and delete the checkpoints
    that rotation removed locally, in one commit."""
    with explain_hub_errors(repo_id, "the checkpoint is still on disk"):
        return HfApi(token=token).upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            path_in_repo=CHECKPOINTS_PATH_IN_REPO,
            allow_patterns=[f"{checkpoint_name}/*"],
            delete_patterns=[f"{name}/*" for name in removed_names],
            commit_message=f"Upload {checkpoint_name}",
        )


def read_pipeline_folder(folder: str) -> dict:
    """The folder's `model_index.json`, after checking that the folder is a self-contained saved pipeline."""
    model_index_file = os.path.join(folder, MODEL_INDEX_NAME)
    if not os.path.isfile(model_index_file):
        raise ValueError(
            f"{folder!r} is not a saved pipeline (it has no {MODEL_INDEX_NAME}): pass the --output_dir of a finished "
            "training run, or a folder written by `pipe.save_pretrained(folder)`."
        )
    with open(model_index_file, encoding="utf-8") as f:
        model_index = json.load(f)
    class_name = model_index.get("_class_name")
    if not (isinstance(class_name, list) and os.path.isfile(os.path.join(folder, f"{class_name[0]}.py"))):
        raise ValueError(
            f"{folder!r} holds a pipeline ({class_name!r}) without its code beside it, so people without diffkit "
            "could not load it: load it with its diffkit class and save it again with `pipe.save_pretrained`, "
            "which adds the code, or push it with `pipe.push_to_hub`."
        )
    return model_index


def push_pipeline_folder(
    folder: str,
    repo_id: str,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    commit_message: Optional[str] = None,
) -> CommitInfo:
    """Upload a saved pipeline folder and its model card; return the commit that holds the weights and code.

    The repository is created if needed (pushing again to it adds a commit). When the folder holds a training
    run's `training_config.json`, the model card is rendered again with snippets that load `repo_id` at the
    returned commit, and uploaded in a second commit.

    Example:

    ```py
    >>> from pipelines.push import push_pipeline_folder
    >>> commit = push_pipeline_folder("out", "my-org/ddpm-mnist")  # doctest: +SKIP
    >>> print(commit.oid)  # doctest: +SKIP
    ```
    """
    model_index = read_pipeline_folder(folder)
    check_repo_id(repo_id)
    module_name, class_name = model_index["_class_name"]
    training_config_file = os.path.join(folder, TRAINING_CONFIG_NAME)
    training_config = None
    if os.path.isfile(training_config_file):
        with open(training_config_file, encoding="utf-8") as f:
            training_config = json.load(f)

    with explain_hub_errors(repo_id, f"push again with `python -m pipelines.push {folder} {repo_id}`"):
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        ignore_patterns = LOCAL_ONLY_PATTERNS + ([MODEL_CARD_NAME] if training_config else [])
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            ignore_patterns=ignore_patterns,
            commit_message=commit_message or f"Upload {class_name} trained with diffkit",
        )
        if training_config:
            card = render_model_card(
                training_config, class_name, module_name, repo_id, SAMPLES_NAME, revision=commit.oid
            )
            api.upload_file(
                path_or_fileobj=str(card).encode("utf-8"),
                path_in_repo=MODEL_CARD_NAME,
                repo_id=repo_id,
                commit_message=f"Model card: load revision {commit.oid[:7]}",
            )
    return commit


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.push",
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
    args = parser.parse_args(argv)
    read_pipeline_folder(args.folder)
    check_repo_id(args.repo_id, "repo_id")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    commit = push_pipeline_folder(args.folder, args.repo_id, args.private or None, args.token, args.commit_message)
    print(f"Pushed {args.folder} to {commit.repo_url.repo_id} at revision {commit.oid}: {commit.commit_url}")


if __name__ == "__main__":
    main()
