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
"""

from __future__ import annotations

import http.client
import json
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webslm import checkout
from webslm.errors import BadInput, MissingEnvironment, StageFailed, WebslmError
from webslm.files import (
    atomic_write_text,
    canonical_json,
    check_writable,
    sha256_bytes,
    sha256_file,
)
from webslm.provenance import (
    APP_CONFIG_FILE,
    NOT_SUBJECTS,
    PREDICATE_TYPE,
    PROVENANCE_FILE,
    STATEMENT_TYPE,
    list_files,
    sri,
)

if TYPE_CHECKING:
    from webslm.pipeline import BuildResult, Variation
    from webslm.spec import BuildSpec
    from webslm.toolchain import Toolchain

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
REPORT_VERSION = 1
LOCK_PATH = "docker/toolchain.lock.json"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
PACKAGE_STAGE = "package"
SHORT = 12  # hex digits of a digest shown in the table
DIFF_LINES = 40  # lines of a diffoscope report kept per file
JSON_KEYS_SHOWN = 20
HTTP_TIMEOUT_S = 60  # per read
COPY_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 3600.0  # per audit, all downloads together (audit --download-timeout)
MAX_DOWNLOAD_MIB = 16 * 1024  # per file: larger than any model file (audit --max-download-mib)
DIFFOSCOPE_TIMEOUT_S = 300
# The conditions a verifying rebuild changes (webslm.pipeline.Variation honours them all).
VERIFY_UID = 4321
VERIFY_TZ = "Pacific/Kiritimati"  # UTC+14: as far from the lock's UTC as a zone gets
VERIFY_LOCALE = "tr_TR.UTF-8"  # dotless i: the classic locale that breaks case mapping
VERIFY_UMASK = 0o077
VERIFY_HOSTNAME = "webslm-verify"


# ---------------------------------------------------------------------------- provenance


@dataclass(frozen=True)
class Provenance:
    """What verify needs from a provenance statement, checked on the way in."""

    subjects: Mapping[str, str]  # file name -> sha256 hex
    spec: Mapping[str, Any]
    model: Mapping[str, Any]  # {"id", "revision", "source": "hub" | "local"}
    inputs: Mapping[str, str]  # model file name -> sha256 hex
    toolchain_id: str
    lock_digest: str
    image_digest: str | None
    stages: Mapping[str, Mapping[str, str]]  # stage -> {"cache_key", "output"}


def parse_provenance(statement: Any, where: str) -> Provenance:
    """A Provenance from a decoded provenance.json; BadInput saying what is missing."""

    def bad(why: str) -> BadInput:
        return BadInput(f"{where} is not a webslm provenance statement ({why})",
                        "point at the provenance.json a webslm build wrote")

    if not isinstance(statement, dict):
        raise bad("not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
        raise bad(f"want _type {STATEMENT_TYPE} and predicateType {PREDICATE_TYPE}")
    try:
        subjects = {str(s["name"]): str(s["digest"]["sha256"]) for s in statement["subject"]}
        definition = statement["predicate"]["buildDefinition"]
        external = definition["externalParameters"]
        spec, model = dict(external["spec"]), dict(external["model"])
        dependencies = {str(d["name"]): d for d in definition["resolvedDependencies"]}
        stages = definition.get("internalParameters", {}).get("stages", {})
        toolchain_id = str(dependencies["toolchain"]["digest"]["sha256"])
        lock_digest = str(dependencies[LOCK_PATH]["digest"]["sha256"])
        image = dependencies.get("toolchain-image", {}).get("digest", {}).get("sha256")
        inputs = {name.removeprefix("model/"): str(d["digest"]["sha256"])
                  for name, d in dependencies.items() if name.startswith("model/")}
        stage_records = {str(k): dict(v) for k, v in dict(stages).items()}
    except KeyError as error:
        raise bad(f"no {error}") from error
    except (TypeError, ValueError, AttributeError) as error:  # a list where an object belongs
        raise bad("a field has the wrong type") from error
    bad_digests = [n for n, d in {**subjects, **inputs}.items() if not HEX64.match(d)]
    if not subjects or bad_digests:
        raise bad("no subjects" if not subjects else f"bad sha256 for {bad_digests[0]}")
    return Provenance(subjects=subjects, spec=spec, model=model, inputs=inputs,
                      toolchain_id=toolchain_id, lock_digest=lock_digest,
                      image_digest=str(image) if image else None, stages=stage_records)


def load_provenance(path: Path) -> Provenance:
    try:
        statement = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"cannot read {path} as JSON ({error.__class__.__name__})",
                       "point at the provenance.json a webslm build wrote") from error
    return parse_provenance(statement, str(path))


# ---------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Row:
    """One file: its digest in the provenance, as shipped (None: not shipped here) and rebuilt."""

    name: str
    expected: str | None
    shipped: str | None
    rebuilt: str | None
    shipped_checked: bool = True  # False: only the rebuild is compared (audit of one file)

    @property
    def reproducible(self) -> bool:
        return self.rebuilt == self.expected

    @property
    def intact(self) -> bool:
        return not self.shipped_checked or (self.shipped is not None
                                            and self.shipped == self.expected)

    @property
    def same(self) -> bool:
        return self.reproducible and self.intact


def compare_files(expected: Mapping[str, str], shipped: Mapping[str, str | None],
                  rebuilt: Mapping[str, str]) -> list[Row]:
    """A row for every file named anywhere, sorted; `shipped` names the files checked on disk
    (a None value: expected but absent)."""
    names = sorted(set(expected) | set(shipped) | set(rebuilt))
    return [Row(name, expected.get(name), shipped.get(name), rebuilt.get(name),
                shipped_checked=name in shipped) for name in names]


@dataclass(frozen=True)
class StageDifference:
    """The first stage whose output digest differs between the provenance and the rebuild."""

    stage: str
    expected: str
    rebuilt: str
    same_inputs: bool  # equal cache keys: same tool, inputs and arguments

    def explain(self) -> str:
        if self.stage == PACKAGE_STAGE:
            return ("every tool stage's output matches the provenance's record, yet packaged "
                    "files differ: the package step, or the provenance's subject list (edited "
                    "after the build?), disagrees with the stages")
        if self.same_inputs:
            return (f"stage {self.stage} is not reproducible: same toolchain, inputs and "
                    "arguments, different output")
        return (f"stage {self.stage} got different inputs or arguments (its cache key differs), "
                "so its output differs too")


def first_differing_stage(order: Sequence[str], expected: Mapping[str, Mapping[str, str]],
                          rebuilt: Mapping[str, Mapping[str, str]]) -> StageDifference | None:
    """Walk the stages in build order; return the first whose output digest differs."""
    for stage in order:
        mine, theirs = expected.get(stage), rebuilt.get(stage)
        if mine is None or theirs is None or mine.get("output") == theirs.get("output"):
            continue
        return StageDifference(stage, str(mine.get("output")), str(theirs.get("output")),
                               same_inputs=mine.get("cache_key") == theirs.get("cache_key"))
    return None


@dataclass(frozen=True)
class Check:
    """A yes/no fact verify established besides the digests (shown in the report)."""

    name: str
    ok: bool
    detail: str


def app_config_checks(app_config: Mapping[str, Any], subjects: Mapping[str, str],
                      toolchain_id: str) -> list[Check]:
    """The AppConfig is not a subject (it depends on the base URL), but its integrity hashes
    must be those of the subjects, or a browser would load something else."""
    checks = []
    for record in app_config.get("model_list", []):
        model_id = record.get("model_id", "?")
        integrity = record.get("integrity", {})
        library = "libs/" + str(record.get("model_lib", "")).rsplit("/libs/", 1)[-1]
        wanted = {"config": ("mlc-chat-config.json", integrity.get("config")),
                  "model_lib": (library, integrity.get("model_lib"))}
        wanted.update({f"tokenizer {name}": (name, value)
                       for name, value in integrity.get("tokenizer", {}).items()})
        for what, (name, value) in wanted.items():
            digest = subjects.get(name)
            ok = digest is not None and value == sri(digest)
            checks.append(Check(f"{APP_CONFIG_FILE} {model_id} integrity.{what}", ok,
                                f"{name}: {value}" if ok else
                                f"{value} is not the provenance's digest of {name}"))
        recorded = record.get("webslm", {}).get("toolchain_id")
        checks.append(Check(f"{APP_CONFIG_FILE} {model_id} toolchain_id",
                            recorded == toolchain_id, f"{recorded}"))
    return checks


# ---------------------------------------------------------------------------- explaining


def json_differences(expected: Any, got: Any, path: str = "") -> list[str]:
    """Dotted paths (`a.b[2].c`) of the values that differ between two JSON documents."""
    if isinstance(expected, dict) and isinstance(got, dict):
        found = []
        for key in sorted(set(expected) | set(got), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in expected or key not in got:
                found.append(where + (" (only expected)" if key in expected else " (only got)"))
            else:
                found += json_differences(expected[key], got[key], where)
        return found
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        found = []
        for index, (a, b) in enumerate(zip(expected, got, strict=True)):
            found += json_differences(a, b, f"{path}[{index}]")
        return found
    return [] if expected == got else [path or "(the whole document)"]


def first_difference(expected: Path, got: Path, chunk: int = 1 << 20) -> int | None:
    """Offset of the first byte that differs (or where the shorter file ends); None if equal."""
    offset = 0
    with open(expected, "rb") as a, open(got, "rb") as b:
        while True:
            x, y = a.read(chunk), b.read(chunk)
            if x != y:
                common = next((i for i, (p, q) in enumerate(zip(x, y, strict=False))
                               if p != q),
                              min(len(x), len(y)))
                return offset + common
            if not x:
                return None
            offset += len(x)


def bytes_around(path: Path, offset: int, width: int = 16) -> str:
    """`hex bytes |printable|` of the bytes at an offset."""
    with open(path, "rb") as handle:
        handle.seek(max(0, offset))
        data = handle.read(width)
    if not data:
        return "(end of file)"
    printable = "".join(chr(b) if 32 <= b < 127 else "." for b in data)
    return f"{data.hex(' ')}  |{printable}|"


def plain_difference(expected: Path, got: Path) -> str:
    """Sizes, the first differing offset and, for JSON, the differing keys."""
    offset = first_difference(expected, got)
    if offset is None:
        return "the files are identical"
    lines = [f"sizes: expected {expected.stat().st_size} bytes, got {got.stat().st_size} bytes",
             f"first difference at offset {offset} (0x{offset:x}):",
             f"  expected: {bytes_around(expected, offset)}",
             f"  got:      {bytes_around(got, offset)}"]
    if expected.suffix == ".json":
        try:
            keys = json_differences(json.loads(expected.read_bytes()),
                                    json.loads(got.read_bytes()))
        except (ValueError, UnicodeDecodeError):
            keys = ["(one side is not valid JSON)"]
        shown = ", ".join(keys[:JSON_KEYS_SHOWN])
        more = f" and {len(keys) - JSON_KEYS_SHOWN} more" if len(keys) > JSON_KEYS_SHOWN else ""
        lines.append(f"differing JSON keys: {shown}{more}")
    return "\n".join(lines)


def diffoscope_difference(expected: Path, got: Path) -> str | None:
    """diffoscope's text report, cut to DIFF_LINES lines; None when it is absent or fails."""
    program = shutil.which("diffoscope")
    if program is None:
        return None
    try:
        result = subprocess.run([program, "--no-progress", "--text", "-", str(expected), str(got)],
                                capture_output=True, text=True, timeout=DIFFOSCOPE_TIMEOUT_S,
                                check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 1 or not result.stdout.strip():
        return None
    lines = result.stdout.splitlines()
    cut = [f"... ({len(lines) - DIFF_LINES} more lines)"] if len(lines) > DIFF_LINES else []
    return "\n".join(lines[:DIFF_LINES] + cut)


def explain_difference(expected: Path, got: Path) -> str:
    """A readable difference: sizes and the first differing offset (or JSON keys) always,
    then diffoscope's detail when it is installed."""
    summary = plain_difference(expected, got)
    detail = diffoscope_difference(expected, got)
    return f"{summary}\n{detail}" if detail else summary


# ---------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Report:
    """The outcome of a verify or an audit, as printed and as written for CI."""

    command: str  # "verify" | "audit"
    target: str  # the dist folder or the artifact
    provenance: str
    model_id: str
    toolchain_id: str
    conditions: Mapping[str, str]
    rows: tuple[Row, ...]
    checks: tuple[Check, ...] = ()
    first_stage: StageDifference | None = None
    differences: Mapping[str, str] = field(default_factory=dict)  # file -> explanation
    error: str | None = None  # set when the command stopped before comparing

    @property
    def reproducible(self) -> bool:
        return self.error is None and bool(self.rows) and all(r.reproducible for r in self.rows)

    @property
    def intact(self) -> bool:
        return all(r.intact for r in self.rows) and all(c.ok for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.reproducible and self.intact

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "error" + ("" if self.intact else "; shipped files do not match the provenance")
        problems = ([] if self.reproducible else ["not reproducible"]) + \
                   ([] if self.intact else ["shipped files do not match the provenance"])
        return "; ".join(problems) or "reproducible"

    def summary(self) -> str:
        """One line for a StageFailed: how many files differ and where it starts."""
        bad = [r.name for r in self.rows if not r.same]
        failed = [c.name for c in self.checks if not c.ok]
        parts = [f"{self.verdict}: {len(bad)} of {len(self.rows)} files differ"]
        if bad:
            parts.append(f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
        if self.first_stage is not None:
            parts.append(f"- first differing stage: {self.first_stage.stage}")
        if failed:
            parts.append(f"- failed checks: {', '.join(failed[:3])}")
        return " ".join(parts)


def _short(digest: str | None, checked: bool = True) -> str:
    if not checked:
        return "-"
    return digest[:SHORT] if digest else "absent"


def table_rows(report: Report) -> list[list[str]]:
    """Cells per file; without a rebuild (it stopped early) only the shipped check counts."""
    rebuilt = report.error is None
    return [[row.name, _short(row.expected), _short(row.shipped, row.shipped_checked),
             _short(row.rebuilt, rebuilt),
             ("yes" if row.same else "NO") if rebuilt else ("intact" if row.intact else "NO")]
            for row in report.rows]


def step_one_problems(report: Report) -> list[str]:
    """The shipped files and AppConfig checks that do not match the provenance."""
    return [r.name for r in report.rows if not r.intact] + \
        [c.name for c in report.checks if not c.ok]


def render_step_one(report: Report) -> str:
    """Step 1's outcome in one line: shipped files against the provenance and AppConfig."""
    checked = [r for r in report.rows if r.shipped_checked]
    bad = [r.name for r in checked if not r.intact]
    failed = [c.name for c in report.checks if not c.ok]
    line = f"step 1: {plural(len(checked), 'shipped file')} hashed against {report.provenance}: "
    if not bad and not failed:
        return line + "all match\n"
    parts = [f"{plural(len(bad), 'file')} differ{'s' if len(bad) == 1 else ''}"
             f"{' (' + ', '.join(bad) + ')' if bad else ''}"]
    if failed:
        parts.append(f"failed checks: {', '.join(failed)}")
    return line + "; ".join(parts) + "\n"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


TABLE_HEADER = ["file", "expected", "shipped", "rebuilt", "same"]


def render_table(report: Report) -> str:
    """The comparison as aligned plain text (the console output)."""
    rows = [TABLE_HEADER, *table_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows) + "\n"


def render_text(report: Report) -> str:
    """Everything printed on the console: table, failed checks, first stage, differences."""
    out = [f"{report.command} {report.target}: {report.verdict}", "", render_table(report)]
    out += [f"check failed: {c.name}: {c.detail}" for c in report.checks if not c.ok]
    if report.first_stage is not None:
        out.append(f"first differing stage: {report.first_stage.explain()}")
    for name, text in report.differences.items():
        out += ["", f"--- {name}", text]
    return "\n".join(out).rstrip() + "\n"


def report_json(report: Report) -> dict[str, Any]:
    stage = report.first_stage
    return {
        "webslm_report": REPORT_VERSION,
        "command": report.command,
        "target": report.target,
        "provenance": report.provenance,
        "model_id": report.model_id,
        "toolchain_id": report.toolchain_id,
        "verdict": report.verdict,
        "ok": report.ok,
        "reproducible": report.reproducible,
        "error": report.error,
        "conditions": dict(report.conditions),
        "files": [{"name": r.name, "expected": r.expected,
                   "shipped": r.shipped if r.shipped_checked else "not checked",
                   "rebuilt": r.rebuilt, "same": r.same, "intact": r.intact}
                  for r in report.rows],
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
        "first_differing_stage": None if stage is None else {
            "stage": stage.stage, "expected": stage.expected, "rebuilt": stage.rebuilt,
            "same_inputs": stage.same_inputs, "explanation": stage.explain()},
        "differences": dict(report.differences),
    }


def report_markdown(report: Report) -> str:
    mark = "✅" if report.ok else "❌"
    lines = [f"# webslm {report.command}: {mark} {report.verdict}", "",
             f"- target: `{report.target}`", f"- provenance: `{report.provenance}`",
             f"- model: `{report.model_id}`", f"- toolchain ID: `{report.toolchain_id}`"]
    if report.error:
        lines.append(f"- error: {report.error}")
    if report.conditions:
        lines += ["", "## Rebuild conditions", ""]
        lines += [f"- {key}: `{value}`" for key, value in sorted(report.conditions.items())]
    if report.rows:
        lines += ["", "## Files", "", "| " + " | ".join(TABLE_HEADER) + " |",
                  "|" + " --- |" * len(TABLE_HEADER)]
        lines += ["| " + " | ".join(f"`{c}`" if i < 4 else c for i, c in enumerate(row)) + " |"
                  for row in table_rows(report)]
    if report.checks:
        lines += ["", "## Checks", ""]
        lines += [f"- {'✅' if c.ok else '❌'} {c.name}: {c.detail}" for c in report.checks]
    if report.first_stage is not None:
        lines += ["", "## First differing stage", "", report.first_stage.explain()]
    for name, text in report.differences.items():
        lines += ["", f"## Difference in `{name}`", "", "```", text, "```"]
    return "\n".join(lines) + "\n"


def write_report(report: Report, folder: Path) -> None:
    """report.json and report.md, each written whole."""
    atomic_write_text(folder / REPORT_JSON, canonical_json(report_json(report)))
    atomic_write_text(folder / REPORT_MARKDOWN, report_markdown(report))


# ---------------------------------------------------------------------------- fetching


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face model repo: `hf://OWNER/NAME@REV/path` or a resolve URL."""

    repo_id: str
    revision: str
    path: str

    @property
    def location(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}/{self.path}"


_HF_URL = re.compile(r"^https?://(?:www\.)?huggingface\.co/(?P<repo>[^/]+/[^/]+)/"
                     r"(?:resolve|blob|raw)/(?P<rev>[^/]+)/(?P<path>.+)$")
_HF_SCHEME = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<path>.+)$")


def parse_hub_location(location: str) -> HubFile | None:
    """A HubFile for a Hub location (revision `main` when none is named), else None."""
    match = _HF_URL.match(location) or _HF_SCHEME.match(location)
    if match is None:
        return None
    revision = urllib.parse.unquote(match.group("rev") or "main")
    return HubFile(match.group("repo"), revision, urllib.parse.unquote(match.group("path")))


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://", "hf://"))


@dataclass(frozen=True)
class Fetched:
    """A fetched file on local disk, where it came from and its name inside its folder/repo."""

    path: Path
    location: str  # pinned where possible (a Hub file names the commit it was fetched at)
    relative: str  # path inside the repo, or the URL's path; basename for plain local files


class NotThere(Exception):
    """Internal: a looked-for file is absent at a location (only used while searching)."""


class NotCached(NotThere):
    """Internal: offline, and the looked-for Hub file is not in the local cache."""


def _hub_commit(downloaded: Path) -> str | None:
    """The commit a huggingface_hub cache path sits under (`.../snapshots/<commit>/...`)."""
    parts = downloaded.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def fetch_hub(file: HubFile, *, searching: bool = False) -> Fetched:
    """hf_hub_download at the file's revision; the result names the commit it resolved to.

    While searching, a file missing from an offline cache is NotCached rather than an error."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from webslm.hub import hub_errors

    with hub_errors(file.repo_id, file.revision):
        try:
            path = Path(hf_hub_download(file.repo_id, file.path, revision=file.revision))
        except LocalEntryNotFoundError as error:
            if searching:
                raise NotCached(file.location) from error
            raise
        except EntryNotFoundError as error:  # after its subclass LocalEntryNotFoundError
            raise NotThere(file.location) from error
    commit = _hub_commit(path) or file.revision
    return Fetched(path, replace(file, revision=commit).location, file.path)


@dataclass(frozen=True)
class DownloadLimits:
    """How much an audit may download: bytes per file, and a deadline for all of it."""

    max_bytes: int = MAX_DOWNLOAD_MIB << 20
    deadline: float | None = None  # time.monotonic() value; None: no overall deadline

    @classmethod
    def starting_now(cls, max_mib: int, timeout_s: float) -> DownloadLimits:
        if max_mib <= 0 or timeout_s <= 0:
            raise BadInput("--max-download-mib and --download-timeout must be positive",
                           f"e.g. --max-download-mib {MAX_DOWNLOAD_MIB} --download-timeout "
                           f"{DOWNLOAD_TIMEOUT_S:.0f}")
        return cls(max_bytes=max_mib << 20, deadline=time.monotonic() + timeout_s)

    def seconds_left(self, url: str) -> float:
        """The time the next read may take; MissingEnvironment once the deadline has passed."""
        if self.deadline is None:
            return HTTP_TIMEOUT_S
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise MissingEnvironment(f"downloading {url} ran past the audit's deadline",
                                     "pass a larger --download-timeout, or download the file "
                                     "and pass its path")
        return min(left, HTTP_TIMEOUT_S)


def _copy_limited(response: Any, handle: Any, url: str, limits: DownloadLimits) -> None:
    """Copy a response body whole: at most limits.max_bytes, within the deadline, and exactly
    the Content-Length the server announced (a shorter body is a failed download)."""
    announced = response.headers.get("Content-Length")
    expected = int(announced) if announced and announced.isdigit() else None
    too_big = BadInput(f"{url} is larger than the download limit ({limits.max_bytes >> 20} MiB)",
                       "pass a larger --max-download-mib if the file really is that big")
    if expected is not None and expected > limits.max_bytes:
        raise too_big
    received = 0
    while True:
        chunk = response.read(COPY_CHUNK)  # each read waits at most HTTP_TIMEOUT_S
        limits.seconds_left(url)
        if not chunk:
            break
        received += len(chunk)
        if received > limits.max_bytes:
            raise too_big
        handle.write(chunk)
    if expected is not None and received != expected:
        raise MissingEnvironment(f"the download of {url} ended after {received} of {expected} "
                                 "bytes", "try again; check the network or the server")


def fetch_http(url: str, into: Path, limits: DownloadLimits | None = None) -> Fetched:
    """Download a URL into a fresh file under `into` (written whole, within the limits)."""
    limits = limits or DownloadLimits()
    target_dir = Path(tempfile.mkdtemp(prefix="fetch-", dir=into))
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = target_dir / name
    try:
        with urllib.request.urlopen(url, timeout=limits.seconds_left(url)) as response:
            with open(target.with_suffix(target.suffix + ".part"), "wb") as handle:
                _copy_limited(response, handle, url, limits)
    except urllib.error.HTTPError as error:
        if error.code in (403, 404, 410):
            raise NotThere(url) from error
        raise MissingEnvironment(f"{url} answered HTTP {error.code}", "try again later") from error
    except (urllib.error.URLError, TimeoutError, ConnectionError,
            http.client.HTTPException) as error:
        raise MissingEnvironment(f"cannot download {url} ({getattr(error, 'reason', error)})",
                                 "check the network, or download it and pass the path") from error
    os.replace(target.with_suffix(target.suffix + ".part"), target)
    return Fetched(target, url, urllib.parse.urlparse(url).path.lstrip("/"))


def fetch(location: str, into: Path, limits: DownloadLimits | None = None) -> Fetched:
    """A local path, an http(s) URL or a Hugging Face file, as a local file."""
    hub = parse_hub_location(location)
    try:
        if hub is not None:
            return fetch_hub(hub)
        if is_url(location):
            return fetch_http(location, into, limits)
    except NotThere as error:
        raise BadInput(f"{location} does not exist", "check the URL and the revision") from error
    path = Path(location)
    if not path.is_file():
        raise BadInput(f"{location} is not a file", "pass the path or URL of a shipped file")
    return Fetched(path, str(path.resolve()), path.name)


def provenance_candidates(artifact: str) -> Iterator[str]:
    """Where a shipped file's provenance.json may be: its folder, then each folder above."""
    hub = parse_hub_location(artifact)
    if hub is not None:
        parents = Path(hub.path).parents
        yield from (replace(hub, path=(p / PROVENANCE_FILE).as_posix()).location for p in parents)
    elif is_url(artifact):
        parsed = urllib.parse.urlparse(artifact)
        for parent in Path(parsed.path).parents:
            path = (parent / PROVENANCE_FILE).as_posix()
            yield urllib.parse.urlunparse(parsed._replace(path=path, query="", fragment=""))
    else:
        yield from (str(p / PROVENANCE_FILE) for p in Path(artifact).resolve().parents)


def find_provenance(artifact: Fetched, given: str | None, into: Path,
                    limits: DownloadLimits | None = None) -> Fetched:
    """The provenance named on the command line, else the nearest one above the artifact."""
    if given is not None:
        return fetch(given, into, limits)
    pinned = artifact.location if is_url(artifact.location) else str(artifact.path)
    offline = False
    for candidate in provenance_candidates(pinned):
        hub = parse_hub_location(candidate)
        try:
            if hub is not None:
                return fetch_hub(hub, searching=True)
            if is_url(candidate):
                return fetch_http(candidate, into, limits)
        except NotCached:
            offline = True
            continue
        except NotThere:
            continue
        if Path(candidate).is_file():
            return fetch(candidate, into)
    if offline:
        raise MissingEnvironment(f"offline, and no {PROVENANCE_FILE} for {artifact.location} is "
                                 "in the local Hugging Face cache", "connect to the network")
    raise BadInput(f"no {PROVENANCE_FILE} found beside or above {artifact.location}",
                   "pass --provenance PATH_OR_URL")


def relative_name(artifact: Fetched, provenance: Fetched) -> str:
    """The artifact's path relative to the provenance's folder, as far as it can be told."""
    if not is_url(artifact.location) and not is_url(provenance.location):
        try:
            return artifact.path.resolve().relative_to(provenance.path.resolve().parent) \
                .as_posix()
        except ValueError:
            return artifact.path.name
    base = posixpath.dirname(provenance.relative)
    if base and artifact.relative.startswith(base + "/"):
        return artifact.relative[len(base) + 1:]
    return artifact.relative


def artifact_subject(subjects: Mapping[str, str], artifact: Fetched, digest: str,
                     provenance: Fetched) -> str:
    """The subject an artifact is: its path relative to the provenance's folder, else the one
    subject with its file name, else the one with its digest; BadInput when it is none."""
    relative = relative_name(artifact, provenance)
    if relative in subjects:
        return relative
    by_name = [n for n in subjects if posixpath.basename(n) == posixpath.basename(relative)]
    by_digest = [n for n, d in subjects.items() if d == digest]
    for found in (by_name, by_digest):
        if len(found) == 1:
            return found[0]
    raise BadInput(f"{artifact.location} is not among the subjects of {provenance.location}",
                   f"audit one of: {', '.join(sorted(subjects)[:6])}")


# ---------------------------------------------------------------------------- toolchain


def lock_digest_of(text: bytes) -> str | None:
    """A lock's digest as webslm.toolchain computes it (canonical JSON); None if not JSON."""
    try:
        return sha256_bytes(canonical_json(json.loads(text)).encode())
    except (ValueError, UnicodeDecodeError):
        return None


def lock_commits(lock_digest: str, repo: Path) -> list[str]:
    """Commits (newest first) whose docker/toolchain.lock.json has this digest; [] without git."""
    git = shutil.which("git")
    if git is None:
        return []
    try:
        log = subprocess.run([git, "-C", str(repo), "log", "--format=%H", "--", LOCK_PATH],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        found = []
        for commit in log.split():
            shown = subprocess.run([git, "-C", str(repo), "show", f"{commit}:{LOCK_PATH}"],
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
        where = (f"`git checkout {commits[0][:12]}` (its {LOCK_PATH} has that digest)" if commits
                 else f"check out the webslm commit whose {LOCK_PATH} has digest "
                      f"{provenance.lock_digest[:16]} (the provenance's {LOCK_PATH} dependency; "
                      f"`git log -- {LOCK_PATH}` lists the candidates)")
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
    from webslm.pipeline import Variation

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
    from webslm.spec import BuildSpec

    spec = BuildSpec.from_json(dict(provenance.spec))
    if provenance.model.get("source") == "hub":
        revision = provenance.model.get("revision")
        if not revision:
            raise BadInput("the provenance names a Hub model without its resolved revision",
                           "rebuild it with webslm, which records the commit")
        spec = replace(spec, revision=str(revision))
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
    from webslm.hub import resolve_model
    from webslm.provenance import hash_files

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
    from webslm.cache import default_cache_dir
    from webslm.pipeline import BuildOptions, build_model

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
                  model_id=str(provenance.spec.get("model_id", "")),
                  toolchain_id=provenance.toolchain_id, conditions={},
                  rows=tuple(compare_files(provenance.subjects, digests, {})),
                  checks=tuple(checks))


def compare_with_rebuild(first: Report, provenance: Provenance,
                         shipped: Mapping[str, Path | None], settings: RebuildSettings) -> Report:
    """The part verify and audit share after step 1: toolchain check, rebuild, compare,
    explain."""
    from webslm.pipeline import STAGES
    from webslm.toolchain import chosen_or_current

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


# ---------------------------------------------------------------------------- the commands


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
    checks: list[Check] = []
    app_config = dist / APP_CONFIG_FILE
    if app_config.is_file():
        try:
            checks = app_config_checks(json.loads(app_config.read_text(encoding="utf-8")),
                                       provenance.subjects, provenance.toolchain_id)
        except ValueError:
            checks = [Check(APP_CONFIG_FILE, False, "not valid JSON")]
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


def verify_command(dist: Path, report_dir: Path | None,
                   settings: RebuildSettings | None = None) -> int:
    """`webslm verify DIST [--report DIR]`."""
    if report_dir is not None:
        check_writable(report_dir)
    try:
        first, provenance, shipped = verify_dist(dist)
    except WebslmError as error:
        if report_dir is not None:
            write_report(failed_report("verify", str(dist), error), report_dir)
        raise
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
    if report_dir is not None:
        check_writable(report_dir)
    with tempfile.TemporaryDirectory(prefix="webslm-audit-") as scratch:
        try:
            first, statement, shipped = audit_artifact(artifact, provenance, Path(scratch),
                                                       limits)
        except WebslmError as error:
            if report_dir is not None:
                write_report(failed_report("audit", artifact, error), report_dir)
            raise
        return check_then_rebuild(first, statement, shipped, settings or RebuildSettings(),
                                  report_dir)
