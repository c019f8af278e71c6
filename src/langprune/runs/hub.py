"""``langprune push``: a run folder to the Hugging Face hub, as a model repository with its card.

The run folder is already a standard checkpoint (config, safetensors,
tokenizer) with ``README.md`` as its model card, so pushing is creating the
repository and uploading the folder with ``huggingface_hub``. The endpoint
and token are the library's own (``HF_ENDPOINT``, ``HF_TOKEN`` or
``hf auth login``), so a private hub mirror works the same way.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .card import CARD_FILE, write_card
from .folder import EVAL_FILE, REPORT_FILE, load_eval, load_report

# Never uploaded: what a killed writer or a lock leaves in a run folder.
SKIPPED = ["*.partial-*", "*.partial-*/**", "*.lock", ".langprune-writer.lock"]


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"--repo-id {repo_id!r} is not a hub repository id ({exc}): use ORG/NAME") from None
    if "/" not in repo_id:
        raise UserError(f"--repo-id {repo_id!r} has no owner: use ORG/NAME (your user name or an organisation)")


def push_run(run: Path, repo_id: str, private: bool = False, api=None) -> str:
    """Create ``repo_id`` (if new) and upload the run folder; returns the commit URL.

    ``api`` is a ``huggingface_hub.HfApi`` (default: one on the configured endpoint and token).
    """
    run = Path(run)
    if not (run / REPORT_FILE).is_file():
        raise UserError(f"{run} is not a run folder (no {REPORT_FILE}): push a folder written by langprune prune")
    check_repo_id(repo_id)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:  # the hub client's transport errors (its HTTP library's base class)
        from huggingface_hub.errors import HTTPError as TransportError
    except ImportError:
        TransportError = OSError

    api = api or HfApi()
    if not (run / CARD_FILE).is_file():  # a run written before cards existed
        write_card(run, load_report(run), load_eval(run) if (run / EVAL_FILE).is_file() else None)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=run,
            repo_type="model",
            commit_message=f"langprune run {run.name}",
            ignore_patterns=SKIPPED,
        )
    except OfflineModeIsEnabled:
        raise UserError(
            "cannot push while offline (HF_HUB_OFFLINE is set): unset it on a machine with network"
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        hint = {401: "log in with `hf auth login` or set HF_TOKEN", 403: "your token cannot write to this owner"}
        raise UserError(
            f"the hub refused the push to {repo_id} (HTTP {status}): {hint.get(status, str(exc).splitlines()[0])}"
        ) from None
    except (TransportError, OSError) as exc:  # no network, DNS, refused connection
        raise UserError(f"cannot reach the hub to push {repo_id}: {exc}") from None
    return str(getattr(info, "commit_url", info))
