"""Resolving models: local folders and Hub snapshots (offline, from a Hub-style cache)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_model, write_hub_cache

from webslm.errors import BadInput
from webslm.hub import allow_patterns, check_model_folder, resolve_model
from webslm.spec import resolve_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def resolve_offline(cache: Path, model_arg: str) -> subprocess.CompletedProcess[str]:
    """Resolve in a fresh process with HF_HUB_OFFLINE=1, as a user's offline build would."""
    code = (
        "import json, sys\n"
        "from webslm.cli import main\n"
        "from webslm.errors import WebslmError\n"
        "from webslm.hub import resolve_model\n"
        "from webslm.spec import resolve_spec\n"
        "try:\n"
        f"    r = resolve_model(resolve_spec(model={model_arg!r}))\n"
        "except WebslmError as e:\n"
        "    print(e.line(), file=sys.stderr); sys.exit(e.exit_code)\n"
        "print(json.dumps({'path': str(r.path), 'revision': r.revision, 'repo': r.repo_id,\n"
        "                  'type': r.model_type, 'files': list(r.files)}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=False)


def test_local_folder_resolves_to_its_files_and_type(tiny_qwen2: Path) -> None:
    resolved = resolve_model(resolve_spec(model=str(tiny_qwen2)))
    assert resolved.path == tiny_qwen2.resolve() and resolved.repo_id is None
    assert resolved.model_type == "qwen2"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= set(resolved.files)


def test_hub_snapshot_resolves_offline_and_records_the_commit(tiny_qwen2, tmp_path) -> None:
    snapshot = write_hub_cache(tmp_path / "hub", "Org/Tiny-Qwen", tiny_qwen2, COMMIT)
    result = resolve_offline(tmp_path / "hub", "Org/Tiny-Qwen")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["revision"] == COMMIT and resolved["repo"] == "Org/Tiny-Qwen"
    assert Path(resolved["path"]) == snapshot and resolved["type"] == "qwen2"
    pinned = resolve_offline(tmp_path / "hub", f"Org/Tiny-Qwen@{COMMIT}")
    assert json.loads(pinned.stdout)["revision"] == COMMIT


def test_hub_model_missing_from_the_offline_cache_is_missing_environment(tmp_path) -> None:
    result = resolve_offline(tmp_path / "empty", "Org/Not-Cached")
    assert result.returncode == 3
    assert "not in the local cache" in result.stderr and result.stderr.count("\n") == 1


def test_hub_model_with_its_own_code_is_refused(tiny_qwen2, tmp_path) -> None:
    model = copy_model(tiny_qwen2, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    write_hub_cache(tmp_path / "hub", "Org/Custom", model, COMMIT)
    result = resolve_offline(tmp_path / "hub", "Org/Custom")
    assert result.returncode == 2 and "auto_map" in result.stderr


def test_allow_list_takes_safetensors_and_tokenizer_and_pickle_only_when_asked() -> None:
    default = allow_patterns(allow_pickle=False)
    assert "*.safetensors" in default and "tokenizer.json" in default
    assert not any(".bin" in p for p in default)
    assert any(".bin" in p for p in allow_patterns(allow_pickle=True))


def make_pickle_only(tiny_qwen2: Path, target: Path) -> Path:
    model = copy_model(tiny_qwen2, target)
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    return model


def test_pickle_weights_are_refused_unless_allowed(tiny_qwen2, tmp_path) -> None:
    model = make_pickle_only(tiny_qwen2, tmp_path / "model")
    with pytest.raises(BadInput, match="pickle.*--allow-pickle"):
        check_model_folder(model)
    _, files = check_model_folder(model, allow_pickle=True)
    assert "pytorch_model.bin" in files


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda m: (m / "config.json").unlink(), "no config.json"),
        (lambda m: (m / "tokenizer.json").unlink(), "no tokenizer"),
        (lambda m: (m / "model.safetensors").unlink(), "no weights"),
        (lambda m: (m / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}"), "header length"),
        (lambda m: (m / "model.safetensors").write_bytes(
            (20).to_bytes(8, "little") + b'{"w": {"dtype": "F3' + b"\0" * 16), "not valid JSON"),
        (lambda m: (m / "config.json").write_text('{"model_type": "t5"}'),
         "unsupported architecture"),
    ],
)
def test_broken_models_are_refused_with_what_is_wrong(
    tiny_qwen2, tmp_path, damage, fragment: str
) -> None:
    model = copy_model(tiny_qwen2, tmp_path / "model")
    damage(model)
    with pytest.raises(BadInput, match=fragment):
        resolve_model(resolve_spec(model=str(model), model_type="qwen2"))


def test_truncated_safetensors_tensor_is_caught(tiny_qwen2, tmp_path) -> None:
    model = copy_model(tiny_qwen2, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(BadInput, match="outside the file"):
        check_model_folder(model)


MISMATCH = "--model-type llama does not match the model's config.json (qwen2)"


def test_declared_model_type_must_match_the_config(tiny_qwen2: Path) -> None:
    """A local model is checked when the spec is resolved."""
    with pytest.raises(BadInput, match=re.escape(MISMATCH)):
        resolve_model(resolve_spec(model=str(tiny_qwen2), model_type="llama"))


def test_a_hub_models_declared_type_is_checked_once_downloaded(tiny_qwen2: Path,
                                                                offline_hub: Path) -> None:
    """A Hub model's config.json is read only after the download: the same check, same line."""
    write_hub_cache(offline_hub, "Org/Tiny-Qwen", tiny_qwen2, COMMIT)
    spec = resolve_spec(model="Org/Tiny-Qwen", model_type="llama")
    with pytest.raises(BadInput, match=re.escape(MISMATCH)):
        resolve_model(spec)
    assert resolve_model(resolve_spec(model="Org/Tiny-Qwen")).model_type == "qwen2"
