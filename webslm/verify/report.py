"""The verify/audit report: a table on the terminal, report.json and report.md for CI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webslm.files import (
    atomic_write_text,
    canonical_json,
)
from webslm.redaction import redact
from webslm.verify.diff import Check, Row, StageDifference

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
REPORT_VERSION = 1
SHORT = 12  # hex digits of a digest shown in the table


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
    def failed_checks(self) -> list[str]:
        """The names of the checks that failed."""
        return [c.name for c in self.checks if not c.ok]

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
        failed = self.failed_checks
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
    return [r.name for r in report.rows if not r.intact] + report.failed_checks


def render_step_one(report: Report) -> str:
    """Step 1's outcome in one line: shipped files against the provenance and AppConfig."""
    checked = [r for r in report.rows if r.shipped_checked]
    bad = [r.name for r in checked if not r.intact]
    failed = report.failed_checks
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
    """report.json and report.md, each written whole (and redacted: CI publishes them)."""
    atomic_write_text(folder / REPORT_JSON, redact(canonical_json(report_json(report))))
    atomic_write_text(folder / REPORT_MARKDOWN, redact(report_markdown(report)))
