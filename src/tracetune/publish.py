"""Push a folder (the dataset, a merged model) to the Hugging Face Hub.

The token comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`); it is never
passed around, written or logged here."""

from __future__ import annotations

import logging
from pathlib import Path

from tracetune.jsonio import InputError

log = logging.getLogger(__name__)


def push_folder(path: str | Path, repo_id: str, repo_type: str, private: bool = True,
                allow_patterns: list[str] | None = None, commit_message: str = "Upload from tracetune") -> str:
    """Create `repo_id` (private by default; an existing repo keeps its visibility) and upload
    `path` to it; returns the repository URL. `repo_type` is "dataset" or "model"."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    if not repo_id:
        raise InputError(f"config.yaml: hub: no repository set for the {repo_type} (hub.{repo_type}_repo)")
    if not Path(path).is_dir():
        raise InputError(f"{path}: nothing to push (not a directory)")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(path), repo_id=repo_id, repo_type=repo_type,
                          allow_patterns=allow_patterns, commit_message=commit_message)
    except LocalTokenNotFoundError:
        raise InputError("Hugging Face Hub: not logged in (run `hf auth login` or set HF_TOKEN)") from None
    except HfHubHTTPError as e:  # the message names the repo and the status, never the token
        raise InputError(f"Hugging Face Hub: {repo_id}: {str(e).splitlines()[0]}") from None
    log.info("pushed %s to %s", path, url)
    return str(url)
