"""`invoke verify` and `invoke audit`: prove a build is reproducible by rebuilding it.

verify DIST     reads DIST/provenance.json, checks the shipped files against its subjects and the
                AppConfig's integrity hashes against them, rebuilds everything it describes in
                fresh containers with no cache under changed conditions (another build folder,
                uid, TZ, locale, umask, hostname, input files in reverse order) and compares
                every subject's sha256.
audit ARTIFACT  fetches one shipped file (a path, an http(s) URL or a Hugging Face model repo file
                at a pinned revision) and its provenance, checks the file's digest against the
                provenance and the provenance's toolchain ID against the lock, then rebuilds and
                compares through the same code as verify.

Step 1 always runs first and is printed first: every shipped file is hashed against the
provenance and the AppConfig's integrity. Whatever stops the rebuild after it (toolchain image
absent: exit 3, another toolchain: exit 2), the report lists those files, and tampering found
in step 1 makes the exit code 1.

Both print a table (file, expected, shipped, rebuilt, same), explain a mismatch (the first stage
whose output differs; diffoscope when installed, otherwise sizes, the first differing offset and,
for JSON, the differing keys) and can write the result as report.json and report.md for CI.
Exit codes: 0 all match, 1 mismatch, 2 bad input, 3 missing environment (webslm.errors).

Where things are: `diff` (what differs and why), `report` (table, report.json, report.md),
`fetching` (getting an artifact and its provenance), `rebuild` (toolchain check, rebuild, compare);
the commands below tie them together.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from webslm.errors import BadInput, StageFailed, WebslmError
from webslm.files import (
    check_writable,
    relation,
    sha256_file,
)
from webslm.layout import APP_CONFIG_FILE, PROVENANCE_FILE
from webslm.provenance import (
    NOT_SUBJECTS,
    Provenance,
    list_files,
    load_provenance,
)
from webslm.verify.diff import (
    Check,
    app_config_checks,
)
from webslm.verify.fetching import (
    DOWNLOAD_TIMEOUT_S,
    MAX_DOWNLOAD_MIB,
    DownloadLimits,
    artifact_subject,
    fetch,
    find_provenance,
)
from webslm.verify.rebuild import RebuildSettings, compare_with_rebuild, shipped_report
from webslm.verify.report import (
    Report,
    render_step_one,
    render_text,
    step_one_problems,
    write_report,
)
from webslm.webllm import read_app_config

# ---------------------------------------------------------------------------- the commands


def check_then_rebuild(first: Report, provenance: Provenance,
                       shipped: Mapping[str, Path | None], settings: RebuildSettings,
                       report_dir: Path | None) -> int:
    """Print step 1, then rebuild and compare. When the rebuild cannot run, the report still
    lists step 1's files; tampering found there is exit 1 whatever stopped the rebuild."""
    print(render_step_one(first), end="", flush=True)
    try:
        report = compare_with_rebuild(first, provenance, shipped, settings)
    except WebslmError as error:
        stopped = replace(first, error=error.line())
        if report_dir is not None:
            write_report(stopped, report_dir)
        if first.intact:
            raise
        print(render_text(stopped), end="")
        bad = step_one_problems(first)
        raise StageFailed(f"shipped files do not match the provenance ({', '.join(bad[:3])}"
                          f"{', ...' if len(bad) > 3 else ''}); the rebuild did not run: "
                          f"{error.what}", error.fix) from error
    return finish(report, report_dir)


def verify_dist(dist: Path) -> tuple[Report, Provenance, dict[str, Path | None]]:
    """Step 1 for a dist folder: its files and AppConfig against its provenance."""
    provenance_path = dist / PROVENANCE_FILE
    if not dist.is_dir():
        raise BadInput(f"{dist} is not a folder", "pass a dist folder, e.g. dist/qwen2.5-0.5b")
    if not provenance_path.is_file():
        raise BadInput(f"{dist} has no {PROVENANCE_FILE}",
                       "pass the folder `invoke build` wrote (dist/<name>)")
    provenance = load_provenance(provenance_path)
    present = set(list_files(dist)) - NOT_SUBJECTS
    shipped = {name: (dist / name if name in present else None)
               for name in sorted(set(provenance.subjects) | present)}
    try:  # the browser loads what the AppConfig names: no AppConfig, nothing verified
        checks = app_config_checks(read_app_config(dist / APP_CONFIG_FILE), provenance)
    except BadInput as error:
        checks = [Check(APP_CONFIG_FILE, False, error.what)]
    first = shipped_report("verify", str(dist), provenance, str(provenance_path), shipped, checks)
    return first, provenance, shipped


def audit_artifact(artifact: str, provenance: str | None, scratch: Path,
                   limits: DownloadLimits) -> tuple[Report, Provenance, dict[str, Path | None]]:
    """Step 1 for one shipped file: fetch it and its provenance, check its digest."""
    fetched = fetch(artifact, scratch, limits)
    found = find_provenance(fetched, provenance, scratch, limits)
    statement = load_provenance(found.path)
    digest = sha256_file(fetched.path)
    subject = artifact_subject(statement.subjects, fetched, digest, found)
    shipped: dict[str, Path | None] = {subject: fetched.path}
    check = Check(f"digest of {subject} matches the provenance",
                  digest == statement.subjects[subject], f"{fetched.location}: {digest}")
    first = shipped_report("audit", fetched.location, statement, found.location, shipped, [check])
    return first, statement, shipped


def finish(report: Report, report_dir: Path | None) -> int:
    """Print the outcome, write the report, and turn a mismatch into StageFailed (exit 1)."""
    print(render_text(report), end="")
    if report_dir is not None:
        write_report(report, report_dir)
    if not report.ok:
        where = f"report: {report_dir}" if report_dir is not None else "see the table above"
        raise StageFailed(report.summary(), where)
    return 0


def failed_report(command: str, target: str, error: WebslmError) -> Report:
    return Report(command=command, target=target, provenance="", model_id="", toolchain_id="",
                  conditions={}, rows=(), error=error.line())


@contextlib.contextmanager
def failure_reported(command: str, target: str, report_dir: Path | None) -> Iterator[None]:
    """Around step 1: the report folder must be writable before it starts, and an error that
    stops it is written there as a failed report (for CI), then raised."""
    if report_dir is not None:
        check_writable(report_dir)
    try:
        yield
    except WebslmError as error:
        if report_dir is not None:
            write_report(failed_report(command, target, error), report_dir)
        raise


def verify_command(dist: Path, report_dir: Path | None,
                   settings: RebuildSettings | None = None) -> int:
    """`webslm verify DIST [--report DIR]`."""
    if report_dir is not None and relation(report_dir, dist) in ("is", "is inside"):
        raise BadInput(f"the report folder {report_dir} {relation(report_dir, dist)} the dist "
                       f"folder {dist}: the report would become part of what it verifies",
                       "pass a --report folder outside the dist")
    with failure_reported("verify", str(dist), report_dir):
        first, provenance, shipped = verify_dist(dist)
    build_folder = dist.resolve().parent.parent  # `--out DIR` wrote DIR/<name>
    return check_then_rebuild(first, provenance, shipped,
                              replace(settings or RebuildSettings(), build_folder=build_folder),
                              report_dir)


def audit_command(artifact: str, provenance: str | None, report_dir: Path | None,
                  settings: RebuildSettings | None = None,
                  max_download_mib: int = MAX_DOWNLOAD_MIB,
                  download_timeout_s: float = DOWNLOAD_TIMEOUT_S) -> int:
    """`webslm audit --artifact X [--provenance Y] [--report DIR] [download limits]`."""
    limits = DownloadLimits.starting_now(max_download_mib, download_timeout_s)
    with tempfile.TemporaryDirectory(prefix="webslm-audit-") as scratch:
        with failure_reported("audit", artifact, report_dir):
            first, statement, shipped = audit_artifact(artifact, provenance, Path(scratch),
                                                       limits)
        return check_then_rebuild(first, statement, shipped, settings or RebuildSettings(),
                                  report_dir)
