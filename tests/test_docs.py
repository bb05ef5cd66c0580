"""The documentation a user reads: README.md short and opening with the set-up commands, every
relative link in README.md and docs/ alive, and docs/cli.md equal to what the parser renders."""

from __future__ import annotations

import re
from pathlib import Path

from webslm import clidoc
from webslm.cli import build_parser
from webslm.invoke_tasks import cli_commands

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#+ (.+)$", re.M)


def _prose(path: Path) -> str:
    """The file without its fenced code blocks (a link there is code, not a link)."""
    return _FENCE.sub("", path.read_text())


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _relative_links(path: Path) -> list[str]:
    return [t for t in _LINK.findall(_prose(path)) if not re.match(r"[a-z]+:", t)]


def _broken_links(path: Path) -> list[str]:
    broken = []
    for target in _relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{path.name}: {target} (no such file)")
        elif anchor and anchor not in {_slug(h) for h in _HEADING.findall(_prose(linked))}:
            broken.append(f"{path.name}: {target} (no such heading in {linked.name})")
    return broken


def test_every_relative_link_leads_to_a_file_and_heading_that_exist():
    assert [p.name for p in PAGES if p.parent == DOCS], "docs/ has no pages"
    broken = [b for page in PAGES for b in _broken_links(page)]
    assert broken == []


def test_the_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## The `build` stage\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#the-build-stage) [web](https://x.org/y) [gone](c.md) "
                    "[nohead](a.md#nothing)\n```\n[in code](missing.md)\n```\n")
    assert _broken_links(page) == ["b.md: c.md (no such file)",
                                   "b.md: a.md#nothing (no such heading in a.md)"]


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _relative_links(README)}
    assert {p.resolve() for p in DOCS.glob("*.md")} <= linked


def test_the_readme_is_short_and_opens_with_the_two_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    first, second = [block.splitlines() for block in _FENCE.findall(text)[:2]]
    assert ("bash .ci/setup && . .venv/bin/activate && invoke toolchain && invoke build"
            in first)
    assert "bash .ci/setup --test && . .venv/bin/activate && python -m pytest" in second


def test_no_page_refers_outside_the_repository():
    assert [p.name for p in PAGES if "../shared" in p.read_text()] == []


def test_the_cli_reference_is_what_the_parser_renders():
    assert (DOCS / "cli.md").read_text() == clidoc.render(), (
        f"docs/cli.md is out of date with webslm/cli.py: run `{clidoc.REGENERATE}`")


def test_the_cli_reference_names_every_command_and_flag_with_its_help():
    page = clidoc.render()
    for command in cli_commands():
        assert f"## `webslm {' '.join(command.words)}`" in page
        for action in command.actions:
            assert all(f"`{name}" in page for name in action.option_strings)
    assert "| `--jobs JOBS` | models built at once (default 1) |" in page


def test_a_flag_added_to_the_parser_changes_the_cli_reference():
    parser = build_parser()
    build = next(c.parser for c in cli_commands(parser) if c.words == ("build",))
    build.add_argument("--shiny", default=3, help="a new flag (default %(default)s)")
    page = clidoc.render(parser)
    assert "| `--shiny SHINY` | a new flag (default 3) |" in page
    assert page != clidoc.render()
