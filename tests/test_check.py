"""`webslm check`: the browser model against its model in transformers.

The dists are REAL MLC-LLM v0.19.0 output (tests/fixtures/real-tiny, copied); the browser is
real headless Chromium on the SwiftShader WebGPU adapter; transformers runs for real on CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REAL_TINY, require, writable_copy
from tinymodels import make_tiny_model

from webslm import check, chromium
from webslm.cli import main
from webslm.mlcweights import (
    QUANTIZATIONS,
    dequantized_params,
    read_params,
    to_transformers_names,
)

QWEN2_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
                "<|im_start|>user\nHi there<|im_end|>\n", "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def fixture_dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require(REAL_TINY.is_dir(), f"the real-tiny fixture is missing at {REAL_TINY}")
    root = tmp_path_factory.mktemp("real-tiny")
    return {name: writable_copy(REAL_TINY / f"dist-{name}", root / f"qwen2-tiny-{name}")
            for name in ("q4f32_1", "q4f16_1")}


def chat_config(dist: Path) -> dict[str, Any]:
    return json.loads((dist / "mlc-chat-config.json").read_text())


# ---------------------------------------------------------------------------- no browser


def test_prompts_are_formatted_as_the_dists_conv_template_does(fixture_dists) -> None:
    template = chat_config(fixture_dists["q4f32_1"])["conv_template"]
    assert tuple(check.prompt_pieces(template, "Hi there")) == QWEN2_PROMPT
    # A build's system prompt replaces MLC's default one.
    custom = {**template, "system_message": "Answer briefly."}
    assert check.prompt_pieces(custom, "Hi")[0] == "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
    # String.replace semantics, as in web-llm: `$&` stands for the placeholder.
    assert check.js_replace("<{x}>", "{x}", "a$&b$$") == "<a{x}b$>"


def test_the_dists_weights_dequantize_to_the_models_weights(fixture_dists) -> None:
    """Every dequantized weight is the bf16 model's within half a quantization step."""
    import torch
    from safetensors.torch import load_file

    original = {k: v.to(torch.float32).numpy()
                for k, v in load_file(REAL_TINY / "model" / "model.safetensors").items()}
    shapes = {name: value.shape for name, value in original.items()}
    for quantization, dist in fixture_dists.items():
        step = max(float(np.abs(a).max()) for n, a in read_params(dist).items()
                   if n.endswith(".q_scale"))
        plain = to_transformers_names(dequantized_params(dist, quantization), shapes)
        assert set(plain) == set(shapes)  # fused c_attn and gate_up_proj split back
        for name, weight in plain.items():
            error = weight.astype(np.float32) - original[name]
            assert np.abs(error).max() <= 0.55 * step, (quantization, name)
            if name.endswith("proj.weight") or "embed" in name:  # 4-bit: ~10% of the weight
                assert np.linalg.norm(error) < 0.2 * np.linalg.norm(original[name]), name
    assert QUANTIZATIONS["q4f32_1"].max_int == 7


def test_prompts_come_from_a_file_one_per_line(tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("First question?\n\n  Second | one  \n")
    assert check.read_prompts(prompts) == ("First question?", "Second | one")
    assert check.read_prompts(None) == check.DEFAULT_PROMPTS
    assert check.cell("a|b\n") == '"a\\|b\\n"'
    prompts.write_text("\n")
    assert main(["check", str(REAL_TINY / "dist-q4f32_1"), "--model", str(REAL_TINY / "model"),
                 "--prompts", str(prompts)]) == 2
    assert "holds no prompt" in capsys.readouterr().err


def test_comparison_figures() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50)).astype(np.float32)
    tokens = logits.argmax(axis=-1)
    same = check.compare("same", [(logits, logits.copy(), tokens)])
    assert (same.greedy_agreement, same.positions, same.top5_min) == (4, 4, 5)
    assert same.max_abs_logprob == 0.0 and same.max_kl == 0.0
    other = check.compare("other", [(logits, rng.normal(size=(4, 50)), tokens)])
    assert other.greedy_agreement < 4 and other.max_kl > 0.1 and other.max_abs_logprob > 1


def test_a_runtime_error_fails_even_when_the_quantization_error_hides_it() -> None:
    """Against the model a small miscompute looks like quantization; against the dist's own
    weights it stands out."""
    limit = check.TOLERANCES["q4f32_1"]
    model = check.Comparison("model", 64, 64, 3, 3.8, 0.1, 0.02, 4e-4)
    exact = check.Comparison("dist", 64, 64, 5, 5.0, 9e-7, 2e-7, 3e-14)
    assert check.out_of_tolerance(model, exact, limit) == ()
    off = check.Comparison("dist", 64, 64, 5, 5.0, 0.01, 2e-3, 2e-5)
    assert check.out_of_tolerance(model, off, limit) == (
        "|Δ log-prob| to the dist's own weights 0.01 > 0.001",
        "KL to the dist's own weights 2e-05 > 1e-05")
    assert check.out_of_tolerance(model, off, check.TOLERANCES["q4f16_1"]) == ()  # float16 room


def test_a_dist_without_its_files_is_bad_input(fixture_dists, tmp_path: Path, capsys) -> None:
    dist = writable_copy(fixture_dists["q4f32_1"], tmp_path / "dist")
    (dist / "tokenizer.json").unlink()
    assert main(["check", str(dist), "--model", str(REAL_TINY / "model")]) == 2
    assert "lacks tokenizer.json" in capsys.readouterr().err
    (dist / "libs" / "qwen2-tiny-q4f32_1-webgpu.wasm").unlink()
    assert main(["check", str(dist), "--model", str(REAL_TINY / "model")]) == 2
    assert "lacks tokenizer.json, libs/qwen2-tiny-q4f32_1-webgpu.wasm" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "nothing"), "--model", "x"]) == 2


def test_without_chromium_the_install_command_is_named(fixture_dists, monkeypatch, capsys) -> None:
    monkeypatch.setattr(chromium, "CHROMIUM", Path("/nonexistent/chromium"))
    assert main(["check", str(fixture_dists["q4f32_1"]), "--model", str(REAL_TINY / "model")]) == 3
    assert "apt-get install chromium" in capsys.readouterr().err


# ---------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def fixture_check(fixture_dists, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[int, Path, list[check.BrowserRun]]:
    """`webslm check` of the real q4f32_1 dist against its model, for real; the browser run is
    kept so the other-weights test compares the same browser output with another model."""
    require(chromium.browser_missing() is None, f"browser tests need: {chromium.browser_missing()}")
    runs: list[check.BrowserRun] = []
    real_run = check.run_in_browser

    def recorded(*args: Any) -> check.BrowserRun:
        runs.append(real_run(*args))
        return runs[-1]

    report = tmp_path_factory.mktemp("check") / "report"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(check, "run_in_browser", recorded)
        code = main(["check", str(fixture_dists["q4f32_1"]), "--model", str(REAL_TINY / "model"),
                     "--report", str(report)])
    return code, report, runs


@pytest.mark.browser
def test_the_fixture_dist_computes_what_its_model_computes(fixture_check) -> None:
    code, report_dir, runs = fixture_check
    assert code == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["ok"] and report["problems"] == []
    assert report["quantization"] == "q4f32_1" and report["adapter"] == "google swiftshader"
    positions = len(check.DEFAULT_PROMPTS) * check.NEW_TOKENS
    model, runtime = report["against_model"], report["against_dist_weights"]
    # Quantization moves log-probs a little but keeps the greedy choice...
    assert model["positions"] == positions and model["greedy_agreement"] >= 0.9 * positions
    assert 0 < model["max_kl"] < 0.05
    # ...and with the dist's own weights transformers computes what the browser computes.
    assert runtime["greedy_agreement"] == positions and runtime["top5_min"] == 5
    assert runtime["max_abs_logprob"] < 1e-4 and runtime["max_kl"] < 1e-8
    assert runtime["max_abs_logprob"] < model["max_abs_logprob"] / 100
    assert report["prefill_tokens_per_s"] > 0 and report["decode_tokens_per_s"] > 0
    markdown = (report_dir / "report.md").read_text()
    assert "| dist's dequantized weights | 64/64 |" in markdown
    [run] = runs
    assert [g.prompt for g in run.generations] == list(check.DEFAULT_PROMPTS)
    assert all(len(g.tokens) == check.NEW_TOKENS for g in run.generations)


@pytest.mark.browser
def test_a_model_with_other_weights_fails_the_check(fixture_check, fixture_dists, tmp_path: Path,
                                                    monkeypatch, capsys) -> None:
    _, _, [run] = fixture_check
    other = make_tiny_model(tmp_path / "other", "qwen2", seed=1)
    monkeypatch.setattr(check, "run_in_browser", lambda *args: run)  # the same browser output
    assert main(["check", str(fixture_dists["q4f32_1"]), "--model", str(other)]) == 1
    out = capsys.readouterr().out
    assert "OUTSIDE the q4f32_1 tolerance" in out
    assert "problem: top-5 tokens overlap 1.00 of 5 on average (< 3) with the model" in out
    assert "| dist's dequantized weights | 64/64 |" not in out  # the plain-text table


@pytest.mark.browser
def test_an_f16_dist_on_an_adapter_without_shader_f16_is_missing_environment(
        fixture_dists, capsys) -> None:
    require(chromium.browser_missing() is None, f"browser tests need: {chromium.browser_missing()}")
    assert main(["check", str(fixture_dists["q4f16_1"]), "--model", str(REAL_TINY / "model")]) == 3
    assert "needs the WebGPU feature shader-f16" in capsys.readouterr().err


def test_build_check_runs_the_check_on_each_built_model(fixture_dists, monkeypatch) -> None:
    from webslm import pipeline
    from webslm.spec import resolve_spec

    spec = resolve_spec(model=str(REAL_TINY / "model"), quantization="q4f32_1")
    built = pipeline.BuildResult(spec=spec, dist=fixture_dists["q4f32_1"], provenance={},
                                 stage_digests={}, cache_hits={})
    checked: list[tuple[Path, str]] = []
    monkeypatch.setattr(pipeline, "build_many", lambda specs, options, jobs: [built])
    monkeypatch.setattr(check, "check_command",
                        lambda dist, model: checked.append((dist, model)) or 1)
    assert main(["build", "--model", str(REAL_TINY / "model"), "--quantization", "q4f32_1",
                 "--check"]) == 1
    assert checked == [(fixture_dists["q4f32_1"], spec.model)]  # the model as the build took it
    assert main(["build", "--model", str(REAL_TINY / "model"), "--quantization", "q4f32_1"]) == 0
    assert len(checked) == 1


@pytest.mark.parametrize("module", ["torch", "transformers"])  # torch: in finetune's extra too
@pytest.mark.parametrize("argv", [
    ["check", "dist", "--model", "model"],
    ["build", "--model", str(REAL_TINY / "model"), "--quantization", "q4f32_1", "--check"],
])
def test_without_the_check_extra_it_names_the_install(fixture_dists, monkeypatch, capsys,
                                                      argv: list[str], module: str) -> None:
    import webslm
    from webslm import pipeline
    from webslm.spec import resolve_spec

    spec = resolve_spec(model=str(REAL_TINY / "model"), quantization="q4f32_1")
    built = pipeline.BuildResult(spec=spec, dist=fixture_dists["q4f32_1"], provenance={},
                                 stage_digests={}, cache_hits={})
    monkeypatch.setattr(pipeline, "build_many", lambda specs, options, jobs: [built])
    monkeypatch.delitem(sys.modules, "webslm.check")
    monkeypatch.delattr(webslm, "check")
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"`webslm {argv[0]}` needs {module}, which is not installed" in err[0]
    assert "pip install 'webslm[check]'" in err[0]
