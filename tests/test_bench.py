"""The benchmarks in bench/ measure what they are given and import only webslm: they run from
the checkout without tests/ (no stand-in reaches them), fail on bad input in one line, and the
stand-in runs under tests/ still print every figure."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from browser.harness import browser_missing
from conftest import REAL_TINY, REPO_ROOT, load_script, require

from webslm.cli import main

BENCH_DIR = REPO_ROOT / "bench"
BENCHES = sorted(BENCH_DIR.glob("bench_*.py"))
TEST_SIDE = {p.stem for p in (REPO_ROOT / "tests").iterdir()} | {"tests"}


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A python command from the repository root, as the README runs benches."""
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def printed(output: str, *labels: str) -> bool:
    """Whether OUTPUT has a figure line for every label: the label, then a number."""
    lines = [line.strip() for line in output.splitlines()]
    found = all(any(re.match(re.escape(label) + r"\s+[0-9.]+", line) for line in lines)
                for label in labels)
    if not found:
        print(output)
    return found


def imported_roots(tree: ast.Module) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("script", BENCHES, ids=lambda p: p.stem)
def test_a_bench_imports_nothing_from_tests_and_leaves_sys_path_alone(script: Path) -> None:
    source = script.read_text()
    tree = ast.parse(source)
    assert not imported_roots(tree) & TEST_SIDE
    assert "sys.path" not in source
    assert "tests/" not in source.replace("python -m tests.", "").replace("tests/fixtures/", "")


@pytest.mark.parametrize("script", ["bench_build", "bench_web_integrity"])
def test_a_bench_imports_and_parses_its_options_without_tests_on_the_path(script: str) -> None:
    code = (f"import runpy, sys; sys.argv = ['{script}', '--help']; "
            f"runpy.run_path('bench/{script}.py', run_name='__main__')")
    done = run("-c", f"{code}\n", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    tests = str(REPO_ROOT / "tests")
    check = run("-c", f"import sys; {code.split('; ', 1)[0]}; print({tests!r} in sys.path)")
    assert check.stdout.strip().endswith("False"), check.stdout


def test_webslm_bench_lists_every_benchmark_with_its_summary_in_columns(capsys) -> None:
    """`webslm bench` with no name: one line per bench/bench_*.py, its summaries lined up."""
    assert main(["bench"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [script.stem.removeprefix("bench_") for script in BENCHES]
    assert [line.split()[0] for line in lines] == names
    summaries = [line.split(maxsplit=1)[1] for line in lines]
    assert len({line.index(text) for line, text in zip(lines, summaries, strict=True)}) == 1, lines


def test_a_missing_model_or_dist_is_one_line_and_exit_2(tmp_path: Path) -> None:
    build = run("bench/bench_build.py", "--model", str(tmp_path / "nothing"))
    assert build.returncode == 2, build.stderr
    assert build.stderr.count("\n") == 1 and "pass --model PATH" in build.stderr
    starts = run("bench/bench_build.py", "--start-repeats", "0")
    assert starts.returncode == 2, starts.stderr
    assert starts.stderr.count("\n") == 1 and "pass --start-repeats 1 or more" in starts.stderr
    web = run("bench/bench_web_integrity.py", "--dist", str(tmp_path / "nothing"))
    assert web.returncode == 2, web.stderr
    assert web.stderr.count("\n") == 1 and "is not a folder" in web.stderr


@pytest.mark.docker
def test_bench_build_without_the_toolchain_image_says_so(docker_engine) -> None:
    done = run("bench/bench_build.py", "--toolchain", "webslm-absent:bench-test",
               "--model", str(REAL_TINY / "model"))
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1
    assert "webslm-absent:bench-test is not in the local Docker engine" in done.stderr


@pytest.mark.docker
def test_the_standin_build_bench_prints_every_figure(standin_image: str) -> None:
    done = run("-m", "tests.standin.bench_build", "--time-scale", "0", "--hash-gib", "0.01",
               "--weights-mib", "1", "--start-repeats", "1", timeout=600)
    assert done.returncode == 0, done.stderr
    assert printed(done.stdout, "container alone", "start convert_weight", "start gen_config",
                   "start compile", "sequential", "overlapped (graph)", "overlapped/sequential",
                   "cache-hit rebuild", "rebuild - hashing", "sha256sum", "webslm (parallel)")


@pytest.mark.browser
def test_the_standin_web_bench_prints_every_figure() -> None:
    require(browser_missing() is None, f"browser tests need: {browser_missing()}")
    done = run("-m", "tests.browser.bench_web_integrity", "--shards", "2", "--shard-mib", "1",
               "--runs", "1", timeout=600)
    assert done.returncode == 0, done.stderr
    assert printed(done.stdout, "first load, web-llm alone", "first load, app with shard check",
                   "cached load, app with shard check", "crypto.subtle SHA-256 alone",
                   "first load:  check / web-llm alone =", "cached load: check / plain read    =")


def test_the_head_trial_computes_what_the_products_head_computes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`--variants ours-head-grad-in-forward` swaps the product's LM head (TRL's tiled one) for
    bench_finetune's `HeadGradInForward`; its figures mean something only if it computes the same
    log-probabilities and gradients. Float64 on the CPU, rows over several of its row tiles,
    against TRL's head and the exact log-softmax."""
    torch = pytest.importorskip("torch")
    kernels = pytest.importorskip("trl.kernels")
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # its harness, as `python bench/...` finds it
    bench = load_script(BENCH_DIR / "bench_finetune.py")
    generator = torch.Generator().manual_seed(0)
    rows, width, vocab = 1100, 64, 3000
    weight = torch.randn(vocab, width, dtype=torch.float64, generator=generator)
    hidden = torch.randn(rows, width, dtype=torch.float64, generator=generator)
    labels = torch.randint(vocab, (rows,), generator=generator)
    upstream = torch.randn(rows, dtype=torch.float64, generator=generator)

    def head(apply, *tail):
        given = hidden.clone().requires_grad_()
        log_probs = apply(given, weight, None, labels, *tail)[0]
        (log_probs * upstream).sum().backward()
        return log_probs.detach(), given.grad

    def log_softmax(given, weight, _bias, labels):
        return (torch.log_softmax(given @ weight.t(), -1).gather(1, labels[:, None])[:, 0],)

    exact = head(log_softmax)
    trl = head(kernels.ChunkedLogProbFunction.apply, 1.0, 1024, None, 1.0, ())
    trial = head(bench.HeadGradInForward.apply, 1.0, 1024, None, 1.0, ())
    assert rows > 2 * bench.HeadGradInForward.ROWS
    for ours, theirs, truth in zip(trial, trl, exact, strict=True):  # log-probs, then gradients
        # both heads compute in float32 (measured: 7.5e-8 and 9e-7 of the largest value)
        scale = truth.abs().max()
        assert (ours.double() - truth).abs().max() <= 2e-6 * scale
        assert (theirs.double() - truth).abs().max() <= 2e-6 * scale

