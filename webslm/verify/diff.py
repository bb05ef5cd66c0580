"""What differs: shipped or rebuilt files against the provenance, the first stage whose
output differs, and an explanation of a differing file (diffoscope, else offsets and JSON keys).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webslm.errors import BadInput
from webslm.files import parse_json
from webslm.layout import APP_CONFIG_FILE, CHAT_CONFIG_FILE, package_weight_files
from webslm.provenance import Provenance, sri
from webslm.webllm import AppConfig

PACKAGE_STAGE = "package"
DIFF_LINES = 40  # lines of a diffoscope report kept per file
JSON_KEYS_SHOWN = 20
DIFFOSCOPE_TIMEOUT_S = 300


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


def app_config_checks(app_config: AppConfig, provenance: Provenance) -> list[Check]:
    """What the browser trusts must be what the provenance says: the AppConfig is not a subject
    (it depends on the base URL), but it must name this model, its integrity hashes must be
    the subjects' and its `webslm.weights` (which our client checks each shard against) the
    digests of every weight file, or a browser would load something else."""
    subjects = provenance.subjects
    if not app_config.records:
        return [Check(f"{APP_CONFIG_FILE} model_list", False, "it names no model")]
    weights = {name: sri(subjects[name]) for name in package_weight_files(subjects)}
    checks = []
    for record in app_config.records:
        model_id = record.model_id or "?"
        checks.append(Check(f"{APP_CONFIG_FILE} {model_id} model_id",
                            record.model_id == provenance.spec.model_id,
                            f"the provenance built {provenance.spec.model_id}"))
        integrity = record.integrity
        # A library outside the model folder is named by its URL, which is no subject: it fails.
        library = record.library_path_in_folder() or record.model_lib
        wanted = {"config": (CHAT_CONFIG_FILE, integrity.config),
                  "model_lib": (library, integrity.model_lib)}
        wanted.update({f"tokenizer {name}": (name, value)
                       for name, value in integrity.tokenizer.items()})
        for what, (name, value) in wanted.items():
            digest = subjects.get(name)
            ok = digest is not None and value == sri(digest)
            checks.append(Check(f"{APP_CONFIG_FILE} {model_id} integrity.{what}", ok,
                                f"{name}: {value}" if ok else
                                f"{value} is not the provenance's digest of {name}"))
        differ = sorted(n for n in set(weights) | set(record.webslm.weights)
                        if weights.get(n) != record.webslm.weights.get(n))
        checks.append(Check(f"{APP_CONFIG_FILE} {model_id} webslm.weights", not differ,
                            f"not the provenance's digests of {', '.join(differ[:3])}" if differ
                            else f"{len(weights)} weight files"))
        recorded = record.webslm.toolchain_id
        checks.append(Check(f"{APP_CONFIG_FILE} {model_id} toolchain_id",
                            recorded == provenance.toolchain_id, f"{recorded}"))
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
            keys = json_differences(parse_json(expected.read_bytes(), str(expected), ""),
                                    parse_json(got.read_bytes(), str(got), ""))
        except BadInput:
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
