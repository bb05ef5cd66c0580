"""The one adapter to the Hugging Face Hub: every call webslm makes into huggingface_hub.

resolve downloads a model snapshot (download_snapshot), audit one file at a pinned revision
(download_file), publish makes commits through HfApi with hub_call, and finetune --push uploads
its folder (push_folder). Here, and only here, Hub
failures become one-line webslm errors with the exit code their cause deserves (what the user
named: 2; the network, the Hub or the token: 3), and the token in use is remembered so that
webslm.redaction keeps it out of every message and log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, get_token, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from webslm.errors import BadInput, MissingEnvironment, StageFailed, WebslmError
from webslm.redaction import Redactor, redacted_logs, remember_secret

LOGIN_HINT = "run `hf auth login` with a write token, or set HF_TOKEN"
DETAIL_CHARS = 300


# ---------------------------------------------------------------------------- the token


def hub_token() -> str:
    """huggingface_hub's token (HF_TOKEN, then the stored login), or MissingEnvironment."""
    token = get_token()
    if not token:
        raise MissingEnvironment("no Hugging Face token found (HF_TOKEN is unset and no login "
                                 "is stored)", LOGIN_HINT)
    remember_secret(token)
    return token


# ---------------------------------------------------------------------------- downloads


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """Turn Hub failures into one-line webslm errors: what the user named is exit 2, reach is 3."""
    where = f"{repo_id}@{revision}" if revision else repo_id
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its "Retrying in 1s" lines: the error below says it
    try:
        yield
    except GatedRepoError as error:
        raise BadInput(f"{repo_id} is gated", "accept its license on the Hub, then log in with "
                       "`hf auth login` or set HF_TOKEN") from error
    except RepositoryNotFoundError as error:
        raise BadInput(f"no model {repo_id} on the Hugging Face Hub (or it is private)",
                       "check the id, or log in for a private repo") from error
    except RevisionNotFoundError as error:
        raise BadInput(f"{repo_id} has no revision {revision!r}",
                       "pass an existing branch, tag or commit after @") from error
    except LocalEntryNotFoundError as error:
        raise MissingEnvironment(f"cannot reach the Hugging Face Hub and {where} is not in the "
                                 "local cache", "connect to the network, or download it first "
                                 "with network access") from error
    except HfHubHTTPError as error:
        raise MissingEnvironment(f"the Hugging Face Hub answered an error for {where} "
                                 f"({error.__class__.__name__})", "try again later") from error
    finally:
        hub_logger.setLevel(level)


def download_snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    """snapshot_download of the files matching the allow-list; errors as one-line webslm errors."""
    try:
        with hub_errors(repo_id, revision):
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except OSError as error:
        raise MissingEnvironment(f"cannot download {repo_id}: {error.__class__.__name__}",
                                 "check the network and disk space") from error


class EntryMissing(Exception):
    """The repo has no such file at that revision."""


class CacheMiss(Exception):
    """Offline, and the file is not in the local cache."""


def download_file(repo_id: str, path: str, revision: str, *, searching: bool = False) -> Path:
    """hf_hub_download of one file; EntryMissing when the repo lacks it and, while searching,
    CacheMiss when offline without it (not searching, that is a one-line webslm error)."""
    with hub_errors(repo_id, revision):
        try:
            return Path(hf_hub_download(repo_id, path, revision=revision))
        except LocalEntryNotFoundError as error:
            if searching:
                raise CacheMiss(path) from error
            raise
        except EntryNotFoundError as error:  # after its subclass LocalEntryNotFoundError
            raise EntryMissing(path) from error


# ---------------------------------------------------------------------------- calls (publish)


def _root_cause(error: BaseException) -> BaseException:
    """The Hub or network error behind wrappers such as huggingface_hub's upload RuntimeError."""
    seen = error
    while seen.__cause__ is not None and not isinstance(seen, HfHubHTTPError):
        seen = seen.__cause__
    return seen


def _chain(error: BaseException) -> Iterator[BaseException]:
    """An error and everything behind it (explicit causes and implicit contexts): the network
    error under huggingface_hub's and httpx's wrappers may be either."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def hub_failure(error: BaseException, redactor: Redactor, doing: str) -> WebslmError:
    """A one-line, redacted error for a failed Hub call, with the exit code its cause deserves:
    a refused token or an unreachable/failing Hub is the environment (3), a rejected request is
    bad input (2)."""
    cause = _root_cause(error)
    detail = redactor.redact(" ".join(str(cause).split()))[:DETAIL_CHARS]
    response = getattr(cause, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(cause, HfHubHTTPError) and status is not None:
        if status in (401, 403):
            return MissingEnvironment(f"the Hub refused the token while {doing} (HTTP {status}): "
                                      f"{detail}", LOGIN_HINT + " (it needs write access)")
        if status >= 500 or status == 429:
            return MissingEnvironment(f"the Hub failed while {doing} (HTTP {status}): {detail}",
                                      "try again later")
        return BadInput(f"the Hub rejected the request while {doing} (HTTP {status}): {detail}",
                        "check --repo and the dist folder")
    if isinstance(cause, OfflineModeIsEnabled):
        return MissingEnvironment(f"HF_HUB_OFFLINE is set, so {doing} is impossible",
                                  "unset HF_HUB_OFFLINE")
    if any(isinstance(e, (httpx2.TransportError, OSError)) for e in _chain(error)):
        return MissingEnvironment(f"cannot reach the Hub while {doing}: "
                                  f"{type(cause).__name__}: {detail}",
                                  "check the network connection and HF_ENDPOINT")
    return StageFailed(f"the Hub client failed while {doing}: {type(cause).__name__}: {detail}",
                       "run again; if it persists, report it with this line")


def hub_call(redactor: Redactor, doing: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one HfApi call; any failure becomes a redacted WebslmError raised outside the
    `except` block, so no unredacted exception (or traceback) stays chained to it."""
    failure: WebslmError | None = None
    try:
        return call(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - every kind: none may escape unredacted
        failure = hub_failure(error, redactor, doing)
    raise failure


def push_folder(folder: Path, repo: str) -> str:
    """Upload FOLDER to the model repo REPO (created when missing); the repo's URL."""
    token = hub_token()
    redactor = Redactor((token,))
    api = HfApi(token=token)
    with redacted_logs(redactor):
        hub_call(redactor, f"creating {repo}", api.create_repo, repo, repo_type="model",
                 exist_ok=True)
        hub_call(redactor, f"uploading {folder.name} to {repo}", api.upload_folder,
                 repo_id=repo, folder_path=str(folder), repo_type="model")
    return f"https://huggingface.co/{repo}"
