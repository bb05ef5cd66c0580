"""Build specs: presets, defaults and validation against MLC-LLM v0.19.0's names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from webslm.cli import main
from webslm.errors import BadInput
from webslm.spec import (
    CONV_TEMPLATES,
    DEFAULT_PRESET,
    MODEL_TYPES,
    PRESETS,
    QUANTIZATIONS,
    is_f16,
    resolve_spec,
)

PRESET_TABLE = {
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B-Instruct", "qwen2", "qwen2"),
    "qwen2.5-coder-1.5b": ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "qwen2", "qwen2"),
    "qwen2.5-math-1.5b": ("Qwen/Qwen2.5-Math-1.5B-Instruct", "qwen2", "qwen2"),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B-Instruct", "llama", "llama-3"),
    "gemma-2-2b": ("google/gemma-2-2b-it", "gemma2", "gemma_instruction"),
    "phi-3.5-mini": ("microsoft/Phi-3.5-mini-instruct", "phi3", "phi-3"),
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "llama", "chatml"),
    "smollm2-360m": ("HuggingFaceTB/SmolLM2-360M-Instruct", "llama", "chatml"),
}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("preset", sorted(PRESET_TABLE))
def test_every_preset_resolves_to_the_documented_model_and_valid_mlc_names(preset: str) -> None:
    spec = resolve_spec(preset=preset)
    assert (spec.model, spec.model_type, spec.conv_template) == PRESET_TABLE[preset]
    assert spec.model_type in MODEL_TYPES and spec.conv_template in CONV_TEMPLATES
    assert spec.quantization == "q4f16_1" and spec.name == preset
    assert spec.model_id == f"{preset}-q4f16_1"


def test_presets_table_is_exactly_the_documented_one() -> None:
    assert sorted(PRESETS) == sorted(PRESET_TABLE)
    assert DEFAULT_PRESET == "qwen2.5-0.5b"


def test_spec_command_prints_one_json_object_with_the_required_keys(capsys) -> None:
    code, out, err = run_cli(capsys, "spec", "--quantization", "q4f32_1", "--name", "mine")
    assert code == 0 and err == ""
    spec = json.loads(out)
    assert {"model", "model_type", "conv_template", "quantization", "name"} <= set(spec)
    assert spec["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (spec["quantization"], spec["name"]) == ("q4f32_1", "mine")


@pytest.mark.parametrize(
    ("flag", "value", "suggestion"),
    [
        ("--quantization", "q4f16", "q4f16_1"),
        ("--conv-template", "llama3", "llama-3"),
        ("--model-type", "qwen3", "qwen2"),
        ("--model-type", "gema2", "gemma2"),
        ("--preset", "qwen-0.5b", "qwen2.5-0.5b"),
    ],
)
def test_unknown_names_exit_2_with_one_line_naming_the_closest_valid_values(
    capsys, flag: str, value: str, suggestion: str
) -> None:
    code, out, err = run_cli(capsys, "spec", flag, value)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("webslm: error: ")
    assert repr(value) in err and suggestion in err


def test_local_model_type_auto_is_read_from_config(tiny_models) -> None:
    spec = resolve_spec(model=str(tiny_models["llama"]))
    assert (spec.model_type, spec.conv_template, spec.name) == ("llama", "llama-3", "llama")
    assert not Path(spec.model).is_absolute() and spec.model.startswith(("./", "../"))
    assert (Path.cwd() / spec.model).resolve() == tiny_models["llama"].resolve()


def test_hub_id_keeps_its_revision_and_auto_type_until_download() -> None:
    spec = resolve_spec(model="Org/Some-Model@v1.0", conv_template="chatml")
    assert (spec.model, spec.revision, spec.model_type) == ("Org/Some-Model", "v1.0", "auto")
    assert spec.conv_template == "chatml" and spec.name == "some-model"
    resolved = spec.with_model_type("qwen2")
    assert (resolved.model_type, resolved.conv_template) == ("qwen2", "chatml")


def test_spec_round_trips_through_json() -> None:
    spec = resolve_spec(preset="gemma-2-2b", system_prompt="Be careful.")
    assert type(spec).from_json(json.loads(json.dumps(spec.to_json()))) == spec


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"model": "/nonexistent/folder"}, "does not exist"),
        ({"preset": "qwen2.5-0.5b", "model": "Org/X"}, "exclude each other"),
        ({"name": "bad name!"}, "invalid name"),
        ({"context_window_size": 512, "prefill_chunk_size": 1024}, "exceeds the context window"),
    ],
)
def test_invalid_specs_are_bad_input(kwargs: dict, fragment: str) -> None:
    with pytest.raises(BadInput, match=fragment):
        resolve_spec(**kwargs)


def test_unsupported_local_architecture_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(BadInput, match="unsupported architecture"):
        resolve_spec(model=str(tmp_path))


def test_f16_quantizations_need_shader_f16() -> None:
    assert is_f16("q4f16_1") and not is_f16("q4f32_1") and not is_f16("q0f32")
    assert all(q in QUANTIZATIONS for q in ("q4f16_1", "q4f32_1"))


def test_invoke_task_gives_the_same_json_and_exit_codes() -> None:
    ok = subprocess.run([sys.executable, "-m", "invoke", "spec", "--preset", "llama-3.2-1b"],
                        cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["conv_template"] == "llama-3"
    bad = subprocess.run([sys.executable, "-m", "invoke", "spec", "--quantization", "q9"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown quantization 'q9'" in bad.stderr


def test_spec_errors_that_used_to_pass_or_crash(tiny_qwen2: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases = [
        (["--model", str(loop)], "cannot be resolved (a symbolic link loop?)"),
        (["--model", str(tiny_qwen2), "--context-window-size", "0"], "'0' is not a whole number"),
        (["--model", str(tiny_qwen2), "--prefill-chunk-size", "0"], "'0' is not a whole number"),
        (["--model", str(tiny_qwen2), "--model-type", "llama"],
         "--model-type llama does not match the model's config.json (qwen2)"),
    ]
    for flags, message in cases:
        for command in ("spec", "build"):
            assert main([command, *flags, "--out", str(tmp_path / "d")][
                :None if command == "build" else -2]) == 2, (command, flags)
            error = capsys.readouterr().err
            assert error.count("\n") == 1 and message in error, error
    assert not (tmp_path / "d").exists()


def test_an_empty_name_in_a_preset_list_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    for presets in ("qwen2.5-0.5b,", ",qwen2.5-0.5b", "qwen2.5-0.5b,,smollm2-135m"):
        assert main(["build", "--preset", presets]) == 2
        assert "has an empty name in its list" in capsys.readouterr().err
