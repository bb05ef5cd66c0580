"""File primitives shared by every stage: hashing, canonical JSON, atomic writes, copies.

Outputs appear whole or not at all: everything is written to a temporary sibling and renamed
(a folder is swapped in with one atomic exchange where Linux offers it). Temporary names carry
their owner's process token (`owner_token`), so the next run can tell a dead build's leftovers
from a running one's and clean (or restore) them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from webslm.errors import NO_SPACE, BadInput, MissingEnvironment

HASH_CHUNK = 1 << 20
AT_FDCWD = -100
RENAME_EXCHANGE = 2  # linux/fs.h
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
# Deeper than any config, header or record webslm reads (those nest a few levels), and far
# below Python's recursion limit, so code that walks a parsed value never meets it.
MAX_JSON_DEPTH = 64


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, fixed separators, trailing newline."""
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


@contextlib.contextmanager
def readable(path: Path) -> Iterator[BinaryIO]:
    """A model file opened for reading; one line naming the file when it cannot be (exit 3:
    the file is there, the environment does not let webslm read it)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as error:
        raise MissingEnvironment(f"cannot read {path} ({error.strerror})",
                                 "check the file's permissions") from error
    with handle:
        yield handle


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value has containers more than `limit` levels deep; walked one
    level at a time, without recursion."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        level = [child for item in level
                 for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, dict | list)]
        if not level:
            return False
    return True


def parse_json(data: bytes | str, source: str, fix: str) -> Any:
    """The JSON value in text that came from outside (a file, a download); BadInput naming
    `source` when it is not UTF-8 JSON or nests deeper than MAX_JSON_DEPTH.

    The one parser of untrusted JSON: Python's raises RecursionError on deep nesting, and a value
    nested just below that limit would raise it later, wherever it is walked or written out."""
    try:
        value = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except UnicodeDecodeError as error:
        raise BadInput(f"cannot read {source}: it is not valid JSON (not UTF-8)", fix) from error
    except json.JSONDecodeError as error:
        raise BadInput(f"cannot read {source}: it is not valid JSON ({error})", fix) from error
    except RecursionError as error:
        raise BadInput(f"cannot read {source}: its JSON nests too deeply", fix) from error
    if nests_deeper_than(value, MAX_JSON_DEPTH):
        raise BadInput(f"cannot read {source}: its JSON nests deeper than {MAX_JSON_DEPTH} "
                       "levels", fix)
    return value


def read_json(path: Path, fix: str) -> Any:
    """The JSON value in a file; BadInput (with `fix` as the hint) when it is missing or not JSON.

    The one reader of the JSON files webslm and its users write: every format module reads
    through it (or read_json_object), so a bad file reads the same wherever it is met."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise BadInput(f"{path} is missing", fix) from error
    except IsADirectoryError as error:
        raise BadInput(f"{path} is a folder, not a JSON file", fix) from error
    except OSError as error:
        raise BadInput(f"cannot read {path} ({error.strerror})", fix) from error
    return parse_json(data, str(path), fix)


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object from a file (see read_json); BadInput when it holds anything else."""
    value = read_json(path, fix)
    if not isinstance(value, dict):
        raise BadInput(f"{path} is not a JSON object", fix)
    return value


@contextlib.contextmanager
def space_in(folder: Path) -> Iterator[None]:
    """While writing under `folder`: a full disk or quota is MissingEnvironment naming the
    folder (exit 3), not an OSError deep in a copy."""
    try:
        yield
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        raise MissingEnvironment(f"no space left in {folder} ({error.strerror})",
                                 "free some space there, or choose a folder on another disk") \
            from error


def atomic_write_text(path: Path, text: str, mode: int = 0o644,
                      owner: tuple[int, int] | None = None) -> None:
    """Write text to path through a temporary sibling and a rename; the file gets `mode` (and
    `owner`, a uid and gid, when given: a file replaced in place keeps its owner)."""
    with space_in(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            if owner is not None:
                os.chown(tmp, *owner)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def clone_or_copy(source: Path, target: Path) -> None:
    """A private copy of a file: a reflink (shared blocks, copy-on-write) where the file system
    can, else a plain copy. Never a hard link: editing the copy must not change the source."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as reader, open(target, "wb") as writer:
        try:
            fcntl.ioctl(writer.fileno(), FICLONE, reader.fileno())
            return
        except OSError:
            pass
    shutil.copyfile(source, target)


# ---------------------------------------------------------------------------- leftovers


def _start_ticks(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_token(pid: int | None = None) -> str:
    """`PID-STARTTIME` of this process: names its temporary files so that the next run can
    tell whether their owner is still alive (a reused PID has another start time)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_start_ticks(pid) or 0}"


def owner_alive(token: str) -> bool:
    """Whether the process a token names still runs; an unreadable token counts as alive."""
    pid, _, ticks = token.partition("-")
    if not pid.isdigit() or not ticks.isdigit():
        return True
    started = _start_ticks(int(pid))
    return started is not None and (ticks == "0" or started == ticks)


def new_scratch_folder(where: Path, kind: str) -> Path:
    """A new folder `<kind>-<owner token>-XXXX` in `where` (made if needed); once its owner is
    gone, remove_dead_scratch reads the token back from the name and removes it."""
    where.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{owner_token()}-", dir=where))


def remove_dead_scratch(folder: Path) -> None:
    """Remove the new_scratch_folder entries of `folder` whose owning process is gone."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        parts = entry.name.split("-")
        if len(parts) > 3 and not owner_alive(f"{parts[1]}-{parts[2]}"):
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------------- folders


def exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE).

    False where the OS or file system cannot; the caller then falls back to two renames."""
    if sys.platform != "linux":
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second),
                 RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first))


def check_replaceable(final: Path, marker: str) -> None:
    """BadInput unless `final` is absent, an empty folder, or a folder webslm wrote (it holds
    `marker`): an output never replaces a user's file or folder."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise BadInput(f"{final} exists and is not a folder webslm wrote",
                       "move it away or choose another output folder")
    if final.is_dir() and not (final / marker).is_file() and any(final.iterdir()):
        raise BadInput(f"{final} is a folder webslm did not write (it has no {marker}); "
                       "webslm never replaces it", "move it away or choose another output folder")


def relation(path: Path, other: Path) -> str | None:
    """How `path` lies against `other` once both are resolved: "is", "is inside", "contains",
    or None when they are apart."""
    mine, theirs = path.resolve(), other.resolve()
    if mine == theirs:
        return "is"
    if theirs in mine.parents:
        return "is inside"
    return "contains" if mine in theirs.parents else None


def check_apart(output: Path, inputs: Sequence[tuple[str, Path]], fix: str) -> None:
    """BadInput when an output folder is, lies inside or contains one of the named inputs:
    replacing it would delete (or write into) what the command reads."""
    for what, source in inputs:
        found = relation(output, source)
        if found is not None:
            raise BadInput(f"the output folder {output} {found} the {what} {source}", fix)


def check_links(folder: Path, names: Sequence[str], roots: Sequence[Path], fix: str) -> None:
    """BadInput naming the first file under `folder` that resolves (through symbolic links)
    outside every one of `roots`: copying it would ship a file from elsewhere (~/.ssh/id_rsa)."""
    for name in names:
        target = (folder / name).resolve()
        if not any(target == root or root in target.parents for root in roots):
            raise BadInput(f"{folder / name} is a symbolic link to {target}, outside "
                           f"{folder}", fix)


def check_writable(folder: Path) -> None:
    """BadInput when `folder` is or lies inside a file; MissingEnvironment (exit 3) when files
    cannot be created where it is (or would be made). Creates nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == folder else "would be inside"
        raise BadInput(f"{folder} {where} a file, not a folder", "choose another output folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise MissingEnvironment(f"cannot write in {existing} ({error.strerror})",
                                 "choose a folder you can write to, or fix its permissions") \
            from error


def recover_directory(final: Path) -> None:
    """Undo what a killed swap left beside `final`: its old copy comes back when `final` is
    missing, dead builds' temporary folders go."""
    parent, prefix = final.parent, f".{final.name}."
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        rest = entry.name.removeprefix(prefix)
        if rest == entry.name:
            continue
        retired = rest.startswith("old-")
        token = rest.removeprefix("old-") if retired else rest.split(".")[0]
        if owner_alive(token) or not (retired or rest.endswith(".tmp")):
            continue
        if retired and not final.exists() and not final.is_symlink():
            os.rename(entry, final)
        else:
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: Path, marker: str) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it replaces `final` whole.

    `final` may only be absent, empty, or a folder webslm wrote (holding `marker`). The swap is
    one atomic exchange where the OS has it; elsewhere SIGTERM or Ctrl-C between the two renames
    puts the old copy back at once, and a SIGKILL there is undone by the next run
    (recover_directory). On any exception the temporary folder is removed and `final` is left
    as it was.
    """
    check_replaceable(final, marker)
    check_writable(final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(final)
    token = owner_token()
    with space_in(final.parent):
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{token}.", suffix=".tmp",
                                        dir=final.parent))
        try:
            yield staging
            os.chmod(staging, 0o755)
            check_replaceable(final, marker)
            if not final.exists():
                os.rename(staging, final)
            elif exchange(staging, final):
                shutil.rmtree(staging, ignore_errors=True)  # now the old copy; the swap is done
            else:
                retired = final.with_name(f".{final.name}.old-{token}")
                try:
                    os.rename(final, retired)
                    os.rename(staging, final)
                except BaseException:  # SIGTERM or Ctrl-C between the renames: the old copy
                    if retired.exists() and not final.exists():  # goes back, as the CLI says
                        os.rename(retired, final)
                    raise
                shutil.rmtree(retired, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
