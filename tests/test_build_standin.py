"""The stand-in `mlc_llm` checks what it is handed against the v0.19.0 CLI, and the commands the
pipeline builds pass that check. Runs on the host's python; no Docker needed."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from webslm.container import OUT_MOUNT, container_command
from webslm.pipeline import (
    CONFIG_MOUNT,
    MODEL_MOUNT,
    compile_command,
    convert_command,
    gen_config_command,
)
from webslm.spec import resolve_spec

STANDIN = Path(__file__).parent / "standin" / "mlc_llm"


def load_standin():
    loader = importlib.machinery.SourceFileLoader("standin_mlc_llm", str(STANDIN))
    spec = importlib.util.spec_from_loader("standin_mlc_llm", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def run_standin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STANDIN), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)


@pytest.mark.parametrize("argv, complaint", [
    (["convert_weight", "{m}", "-o", "{o}"], "--quantization"),
    (["convert_weight", "{m}", "--quantization", "q4f16_9", "-o", "{o}"], "invalid choice"),
    (["convert_weight", "{m}", "--quantization", "q4f16_1", "--model-type", "qwen3", "-o", "{o}"],
     "invalid choice"),
    (["convert_weight", "{m}", "--quantization", "q4f16_1", "--device", "tpu", "-o", "{o}"],
     "invalid device"),
    (["convert_weight", "{m}", "--quantization", "q4f16_1", "--source-format", "gguf", "-o",
      "{o}"], "invalid choice"),
    (["gen_config", "{m}", "--quantization", "q4f16_1", "-o", "{o}"], "--conv-template"),
    (["gen_config", "{m}", "--quantization", "q4f16_1", "--conv-template", "qwen3", "-o", "{o}"],
     "invalid choice"),
    (["gen_config", "{m}", "--quantization", "q4f16_1", "--conv-template", "qwen2",
      "--window-size", "8", "-o", "{o}"], "unrecognized arguments"),
    (["compile", "{o}/mlc-chat-config.json", "--device", "webgpu2", "-o", "{o}/x.wasm"],
     "invalid choice"),
    (["compile", "{o}/mlc-chat-config.json", "--device", "webgpu"], "--output"),
    (["serve", "{m}"], "invalid choice"),
    (["convert_weight", "{o}/missing", "--quantization", "q4f16_1", "-o", "{o}"], "not found"),
])
def test_standin_rejects_what_v0_19_0_rejects(tiny_qwen2: Path, tmp_path: Path,
                                              argv: list[str], complaint: str) -> None:
    (tmp_path / "mlc-chat-config.json").write_text("{}")
    filled = [a.format(m=tiny_qwen2, o=tmp_path) for a in argv]
    result = run_standin(*filled)
    assert result.returncode == 2, result.stderr
    assert complaint in result.stderr


def test_standin_writes_the_real_layout_deterministically(tiny_qwen2: Path,
                                                          tmp_path: Path) -> None:
    from webslm.normalize import load_config, normalize_config

    model = tmp_path / "model"
    model.mkdir()
    for item in tiny_qwen2.iterdir():
        (model / item.name).write_bytes(item.read_bytes())
    config = normalize_config(load_config(model / "config.json"), "qwen2").config
    (model / "config.json").write_text(json.dumps(config))
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert run_standin("convert_weight", str(model / "config.json"), "--quantization",
                           "q4f32_1", "-o", str(out)).returncode == 0
        assert run_standin("gen_config", str(model), "--quantization", "q4f32_1",
                           "--conv-template", "qwen2", "-o", str(out)).returncode == 0
        built = run_standin("compile", str(out / "mlc-chat-config.json"), "--device", "webgpu",
                            "-o", str(out / "lib.wasm"), env={"MLC_LLM_SOURCE_DIR": "/x"})
        assert built.returncode == 0, built.stderr
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    files = outputs[0]
    assert {"params_shard_0.bin", "ndarray-cache.json", "ndarray-cache-b16.json",
            "mlc-chat-config.json", "tokenizer.json", "tokenizer_config.json",
            "lib.wasm"} <= set(files)
    cache = json.loads(files["ndarray-cache.json"])
    shard = cache["records"][0]
    assert shard["dataPath"] == "params_shard_0.bin" and shard["format"] == "raw-shard"
    assert shard["nbytes"] == len(files["params_shard_0.bin"])
    assert {"name", "shape", "dtype", "format", "nbytes", "byteOffset"} <= set(shard["records"][0])
    chat = json.loads(files["mlc-chat-config.json"])
    assert chat["conv_template"]["stop_token_ids"] == [151643, 151645]  # as v0.19.0 writes it
    assert chat["tokenizer_files"] == ["tokenizer.json", "tokenizer_config.json"]
    assert files["lib.wasm"][:8] == b"\0asm\x01\0\0\0"


def test_standin_fails_like_the_real_tool_on_an_old_style_config(tiny_qwen2: Path,
                                                                 tmp_path: Path) -> None:
    """transformers 5 moved rope_theta: v0.19.0's QWen2Config needs it at the top level."""
    result = run_standin("gen_config", str(tiny_qwen2), "--quantization", "q4f16_1",
                         "--conv-template", "qwen2", "-o", str(tmp_path))
    assert result.returncode == 1 and "rope_theta" in result.stderr


def test_compile_for_webgpu_needs_the_mlc_source_dir(tmp_path: Path) -> None:
    (tmp_path / "mlc-chat-config.json").write_text(json.dumps({
        "model_type": "qwen2", "quantization": "q4f16_1", "model_config": {},
        "context_window_size": 8, "prefill_chunk_size": 8}))
    env = {k: v for k, v in os.environ.items() if k != "MLC_LLM_SOURCE_DIR"}
    result = subprocess.run([sys.executable, str(STANDIN), "compile", str(tmp_path),
                             "--device", "webgpu", "-o", str(tmp_path / "x.wasm")],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 1 and "mlc_wasm_runtime.bc" in result.stderr


@pytest.mark.parametrize("quantization", ["q4f16_1", "q4f32_1", "q0f16"])
def test_pipeline_commands_pass_the_v0_19_0_parser(tiny_qwen2: Path, quantization: str,
                                                   tmp_path: Path) -> None:
    parser = load_standin().build_parser()
    spec = resolve_spec(model=str(tiny_qwen2), quantization=quantization, name="tiny")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mlc-chat-config.json").write_text("{}")

    def localized(argv: list[str]) -> list[str]:
        return [a.replace(MODEL_MOUNT, str(tmp_path / "model"))
                .replace(CONFIG_MOUNT, str(tmp_path / "config"))
                .replace(OUT_MOUNT, str(tmp_path / "out")) for a in argv[1:]]

    converted = parser.parse_args(localized(convert_command(spec, ["model.safetensors"])))
    assert converted.quantization == quantization and converted.source_format == (
        "huggingface-safetensor")
    generated = parser.parse_args(localized(gen_config_command(spec)))
    assert generated.conv_template == "qwen2" and generated.context_window_size == 4096
    compiled = parser.parse_args(localized(compile_command(spec)))
    assert compiled.device == "webgpu"
    assert compiled.output.endswith(f"/tiny-{quantization}-webgpu.wasm")


def test_container_command_wraps_setarch_and_umask() -> None:
    argv = ["mlc_llm", "compile", "x"]
    assert container_command(argv, no_aslr=False, umask=None) == argv
    assert container_command(argv, no_aslr=True, umask=None) == ["setarch", "-R", *argv]
    wrapped = container_command(argv, no_aslr=True, umask=0o077)
    assert wrapped[:2] == ["sh", "-c"] and "umask 077" in wrapped[2]
    assert wrapped[4:] == ["setarch", "-R", *argv]
