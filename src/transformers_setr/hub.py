"""The one Hub upload of the package: a model folder to a model repo, for `setr convert --push-to-hub` and the
training commands' `--push_to_hub`."""

import os

from huggingface_hub import HfApi


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    *,
    commit_message: str,
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
) -> str:
    """Create the model repo if needed and upload `folder` (only `allow_patterns` when given, never
    `ignore_patterns`); returns the commit's URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
    )
    return getattr(commit, "commit_url", str(commit))
