"""The Hub functions that training and `diffkit-push` share: create (or check) a repo, push a checkpoint, push a
finished output folder with its pipeline code and a model card pinned to the commit that holds the weights.

Training pushes with them (`--push_to_hub`, `--push_checkpoints`); `diffkit-push` (diffkit/push.py, a tool) is the
command around them. `HF_ENDPOINT` and `HF_TOKEN` are honoured as everywhere in huggingface_hub.
"""

import contextlib
import importlib
import json
import os
from typing import List, Optional

from huggingface_hub import CommitInfo, HfApi, ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from diffkit.model_cards.card import render_model_card
from diffkit.pipelines import model_kinds


def hub_transport_errors() -> tuple:
    """What an unreachable endpoint raises, by huggingface_hub's HTTP client: `requests` (before 1.0) raises OSError
    subclasses, `httpx` (1.x) and `httpx2` (2.x) raise their own `TransportError`."""
    errors = [OSError]
    for client in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(client).TransportError)
    return tuple(errors)


HUB_TRANSPORT_ERRORS = hub_transport_errors()

MODEL_INDEX_NAME = "model_index.json"
TRAINING_CONFIG_NAME = "training_config.json"
MODEL_CARD_NAME = "README.md"
SAMPLES_NAME = "samples.png"
METRICS_NAME = "metrics.json"
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
    except HUB_TRANSPORT_ERRORS as error:  # the endpoint cannot be reached at all
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
    if model_kinds.loads_as_stable_diffusion(model_index):
        return model_index  # diffusers' own StableDiffusionPipeline loads it: no code needs to go with it
    if not (isinstance(class_name, list) and os.path.isfile(os.path.join(folder, f"{class_name[0]}.py"))):
        raise ValueError(
            f"{folder!r} holds a pipeline ({class_name!r}) without its code beside it, so people without diffkit "
            "could not load it: load it with its diffkit class and save it again with `pipe.save_pretrained`, "
            "which adds the code, or push it with `pipe.push_to_hub`."
        )
    return model_index


def pipeline_code(model_index: dict) -> tuple:
    """The (module, class) names of a saved pipeline's code: diffkit's text pipeline for a folder saved in
    `StableDiffusionPipeline`'s layout, else the ones its `model_index.json` names."""
    if model_kinds.loads_as_stable_diffusion(model_index):
        return tuple(model_kinds.PIPELINES[model_kinds.TEXT_CONDITIONAL][model_kinds.GENERATE])
    return tuple(model_index["_class_name"])


def render_folder_card(folder: str, load_path: str, revision: Optional[str] = None) -> ModelCard:
    """The model card of a training run's output folder, from the `training_config.json` beside its weights and,
    once `diffkit-evaluate` (or training with `--eval_steps`) has written one, its `metrics.json`.

    `load_path` and `revision` are what the card's snippets load: the folder itself, or the Hub repo and the
    commit that holds the weights.
    """
    model_index = read_pipeline_folder(folder)
    module_name, class_name = pipeline_code(model_index)
    with open(os.path.join(folder, TRAINING_CONFIG_NAME), encoding="utf-8") as f:
        training_config = json.load(f)
    metrics = None
    if os.path.isfile(os.path.join(folder, METRICS_NAME)):
        with open(os.path.join(folder, METRICS_NAME), encoding="utf-8") as f:
            metrics = json.load(f)
    return render_model_card(
        training_config,
        class_name,
        module_name,
        load_path,
        SAMPLES_NAME,
        revision=revision,
        metrics=metrics,
        loads_as_stable_diffusion=model_kinds.loads_as_stable_diffusion(model_index),
    )


def push_folder(folder: str, repo_id: str, token: Optional[str] = None, what: str = "the folder") -> CommitInfo:
    """Upload `folder` (say a trained VAE with its model card) to the model repo `repo_id`, without what stays local
    (checkpoints, logs, validation images); return the commit."""
    retry = f"{what} is still in {folder}; push it again with `hf upload {repo_id} {folder}`"
    with explain_hub_errors(repo_id, retry):
        return HfApi(token=token).upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            ignore_patterns=LOCAL_ONLY_PATTERNS,
            commit_message=f"Upload {what} trained with diffkit",
        )


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
    >>> from diffkit.training.hub import push_pipeline_folder
    >>> commit = push_pipeline_folder("out", "my-org/ddpm-mnist")  # doctest: +SKIP
    >>> print(commit.oid)  # doctest: +SKIP
    ```
    """
    model_index = read_pipeline_folder(folder)
    check_repo_id(repo_id)
    class_name = pipeline_code(model_index)[1]
    is_training_run = os.path.isfile(os.path.join(folder, TRAINING_CONFIG_NAME))

    with explain_hub_errors(repo_id, f"push again with `python -m diffkit.push {folder} {repo_id}`"):
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        ignore_patterns = LOCAL_ONLY_PATTERNS + ([MODEL_CARD_NAME] if is_training_run else [])
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            ignore_patterns=ignore_patterns,
            commit_message=commit_message or f"Upload {class_name} trained with diffkit",
        )
        if is_training_run:
            card = render_folder_card(folder, repo_id, revision=commit.oid)
            api.upload_file(
                path_or_fileobj=str(card).encode("utf-8"),
                path_in_repo=MODEL_CARD_NAME,
                repo_id=repo_id,
                commit_message=f"Model card: load revision {commit.oid[:7]}",
            )
    return commit
