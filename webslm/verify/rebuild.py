"""Rebuild and compare: the provenance's toolchain against this checkout's lock, the model
files it names, a fresh no-cache build under changed conditions, and the comparison of every
subject and stage output with what was shipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from webslm import checkout
from webslm.cache import default_cache_dir
from webslm.container import Variation
from webslm.errors import BadInput
from webslm.files import parse_json, sha256_file
from webslm.hub import resolve_model
from webslm.pipeline import STAGES, BuildOptions, BuildResult, build_model
from webslm.provenance import (
    LOCK_DEPENDENCY,
    Provenance,
    hash_files,
    parse_provenance,
)
from webslm.spec import BuildSpec, validate_spec
from webslm.toolchain import Toolchain, chosen_or_current
from webslm.toolchain.lock import lock_digest
from webslm.verify.diff import (
    PACKAGE_STAGE,
    Check,
    StageDifference,
    compare_files,
    explain_difference,
    first_differing_stage,
)
from webslm.verify.report import Report

# The conditions a verifying rebuild changes (webslm.container.Variation honours them all).
VERIFY_UID = 4321
VERIFY_TZ = "Pacific/Kiritimati"  # UTC+14: as far from the lock's UTC as a zone gets
VERIFY_LOCALE = "tr_TR.UTF-8"  # dotless i: the classic locale that breaks case mapping
VERIFY_UMASK = 0o077
VERIFY_HOSTNAME = "webslm-verify"


# ---------------------------------------------------------------------------- toolchain


def lock_digest_of(text: bytes) -> str | None:
    """A lock file's digest (webslm.toolchain.lock.lock_digest); None if it is not JSON."""
    try:
        data = parse_json(text, LOCK_DEPENDENCY, "")
    except BadInput:
        return None
    return lock_digest(data)


def lock_commits(lock_digest: str, repo: Path) -> list[str]:
    """Commits (newest first) whose docker/toolchain.lock.json has this digest; [] without git."""
    git = shutil.which("git")
    if git is None:
        return []
    try:
        log = subprocess.run([git, "-C", str(repo), "log", "--format=%H", "--", LOCK_DEPENDENCY],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        found = []
        for commit in log.split():
            shown = subprocess.run([git, "-C", str(repo), "show", f"{commit}:{LOCK_DEPENDENCY}"],
                                   capture_output=True, timeout=60, check=False)
            if shown.returncode == 0 and lock_digest_of(shown.stdout) == lock_digest:
                found.append(commit)
    except (OSError, subprocess.SubprocessError):
        return []
    return found


def check_toolchain(provenance: Provenance, toolchain: Toolchain, repo: Path) -> Check:
    """The provenance must name the toolchain this checkout's lock gives, or the rebuild would
    use other tools and prove nothing; BadInput says which commit has the matching lock."""
    if provenance.toolchain_id == toolchain.id:
        return Check("toolchain ID matches the lock", True, toolchain.id)
    if provenance.lock_digest != toolchain.lock_digest:
        commits = lock_commits(provenance.lock_digest, repo)
        lock = LOCK_DEPENDENCY
        where = (f"`git checkout {commits[0][:12]}` (its {lock} has that digest)" if commits
                 else f"check out the webslm commit whose {lock} has digest "
                      f"{provenance.lock_digest[:16]} (the provenance's {lock} dependency; "
                      f"`git log -- {lock}` lists the candidates)")
    else:
        where = ("the lock is the same but the Dockerfile or its context differ: check out the "
                 "webslm commit the build used (`invoke toolchain id` prints this one's ID)")
    raise BadInput(f"the provenance names toolchain {provenance.toolchain_id[:16]} but this "
                   f"checkout's lock gives toolchain {toolchain.id[:16]}",
                   f"{where}, run `invoke toolchain`, then verify again")


# ---------------------------------------------------------------------------- rebuilding


@dataclass(frozen=True)
class RebuildSettings:
    """Where and with what a verifying rebuild runs (tests pass the stand-in toolchain)."""

    toolchain: Toolchain | None = None  # None: webslm.toolchain.current_toolchain()
    cache_dir: Path | None = None  # where logs go (None: <cache>/verify); no stage is reused
    show_progress: bool = True
    repo: Path = checkout.ROOT  # where `git log` finds the lock
    model: Path | None = None  # verify --model: a local model's folder, wherever it is now
    build_folder: Path | None = None  # where the build probably ran (a dist's grandparent)


def verify_variation(work_root: Path, host_uid: int) -> Variation:
    """Every condition a rebuild can change without changing what it is asked to do."""
    uid = VERIFY_UID if host_uid != VERIFY_UID else VERIFY_UID + 1
    return Variation(work_root=work_root, uid=uid, gid=uid, tz=VERIFY_TZ, locale=VERIFY_LOCALE,
                     umask=VERIFY_UMASK, hostname=VERIFY_HOSTNAME, reverse_input_order=True)


def variation_conditions(variation: Variation) -> dict[str, str]:
    return {"work_root": str(variation.work_root), "uid": str(variation.uid),
            "gid": str(variation.gid), "TZ": str(variation.tz), "locale": str(variation.locale),
            "umask": f"{variation.umask:04o}" if variation.umask is not None else "default",
            "hostname": str(variation.hostname),
            "input order": "reversed" if variation.reverse_input_order else "as built",
            "stage cache": "not used"}


def allow_pickle(provenance: Provenance) -> bool:
    """Whether the build accepted pickle weights (`--allow-pickle`), so the rebuild does too."""
    return provenance.model.get("allow_pickle") is True


def rebuild_spec(provenance: Provenance) -> BuildSpec:
    """The spec the provenance records, pinned to the model revision it resolved."""
    spec = provenance.spec
    if provenance.model.get("source") == "hub":
        revision = provenance.model.get("revision")
        if not revision:
            raise BadInput("the provenance names a Hub model without its resolved revision",
                           "rebuild it with webslm, which records the commit")
        spec = validate_spec(replace(spec, revision=str(revision)))
    return spec


def model_folders(spec: BuildSpec, settings: RebuildSettings) -> list[Path]:
    """Where a local model the provenance names by its relative path may be: `--model`, else
    that path from the current folder, then from the build's folder."""
    if settings.model is not None:
        return [settings.model]
    places = [Path.cwd(), *([settings.build_folder] if settings.build_folder else [])]
    return list(dict.fromkeys((place / spec.model).resolve() for place in places))


def check_inputs(spec: BuildSpec, provenance: Provenance,
                 settings: RebuildSettings) -> tuple[Path | None, dict[str, str]]:
    """The model files the rebuild would read must be the ones the provenance names; returns
    the local model's folder (None for a Hub model) and the files' digests (hashed once)."""
    folders: list[Path | None] = list(model_folders(spec, settings)) if spec.is_local else [None]
    if not any(f is None or f.is_dir() for f in folders):
        raise BadInput(f"cannot find the model folder {spec.model} the provenance names (looked "
                       f"in {', '.join(str(f) for f in folders)})",
                       "run verify where the build ran, or pass --model PATH")
    differ: list[str] = []
    for folder in [f for f in folders if f is None or f.is_dir()]:
        try:
            model = resolve_model(spec, local_folder=folder, allow_pickle=allow_pickle(provenance))
        except BadInput as error:
            raise BadInput(f"cannot get the model the provenance names ({error.what})",
                           "verify where the build's model folder exists, or from the same Hub "
                           "revision") from error
        digests = hash_files(model.path, model.files)
        differ = sorted(n for n in set(digests) | set(provenance.inputs)
                        if digests.get(n) != provenance.inputs.get(n))
        if not differ:
            return folder, digests
    raise BadInput(f"the model files at {model.path} are not the ones the provenance names "
                   f"(differing: {', '.join(differ[:4])})",
                   "verify needs the exact inputs: restore the model the build used, or pass "
                   "--model PATH")


def rebuild(provenance: Provenance, settings: RebuildSettings, toolchain: Toolchain,
            work: Path) -> tuple[BuildResult, Variation]:
    """Build again from scratch, under the verify variation, into `work`."""
    spec = rebuild_spec(provenance)
    folder, digests = check_inputs(spec, provenance, settings)
    variation = verify_variation(work / "build-area", os.getuid())
    options = BuildOptions(out=work / "dist", use_cache=False, toolchain=toolchain,
                           cache_dir=settings.cache_dir or default_cache_dir() / "verify",
                           variation=variation, model_folder=folder, model_digests=digests,
                           allow_pickle=allow_pickle(provenance),
                           show_progress=settings.show_progress)
    return build_model(spec, options), variation


def shipped_report(command: str, target: str, provenance: Provenance, where: str,
                   shipped: Mapping[str, Path | None], checks: Sequence[Check]) -> Report:
    """Step 1, which needs no toolchain: each shipped file's digest against the provenance."""
    digests = {n: sha256_file(p) if p is not None else None for n, p in shipped.items()}
    return Report(command=command, target=target, provenance=where,
                  model_id=provenance.spec.model_id,
                  toolchain_id=provenance.toolchain_id, conditions={},
                  rows=tuple(compare_files(provenance.subjects, digests, {})),
                  checks=tuple(checks))


def compare_with_rebuild(first: Report, provenance: Provenance,
                         shipped: Mapping[str, Path | None], settings: RebuildSettings) -> Report:
    """The part verify and audit share after step 1: toolchain check, rebuild, compare,
    explain."""
    toolchain = chosen_or_current(settings.toolchain)
    checks = [*first.checks, check_toolchain(provenance, toolchain, settings.repo)]
    shipped_digests = {r.name: r.shipped for r in first.rows if r.shipped_checked}
    with tempfile.TemporaryDirectory(prefix="webslm-verify-") as work:
        result, variation = rebuild(provenance, settings, toolchain, Path(work))
        rebuilt = parse_provenance(dict(result.provenance), "the rebuild's provenance")
        rows = compare_files(provenance.subjects, shipped_digests, rebuilt.subjects)
        differences = {}
        for row in rows:
            source, copy = shipped.get(row.name), result.dist / row.name
            if row.same or source is None or not copy.is_file() or row.rebuilt == row.shipped:
                continue
            differences[row.name] = explain_difference(source, copy)
        stage = first_differing_stage(STAGES, provenance.stages, rebuilt.stages)
        if stage is None and any(not r.reproducible for r in rows):
            stage = StageDifference(PACKAGE_STAGE, "-", "-", same_inputs=True)
        conditions = {**variation_conditions(variation),
                      "toolchain image": f"{toolchain.image} (sha256:{rebuilt.image_digest})",
                      "image the build used": f"sha256:{provenance.image_digest}"}
        return replace(first, model_id=result.spec.model_id, conditions=conditions,
                       rows=tuple(rows), checks=tuple(checks), first_stage=stage,
                       differences=differences)
