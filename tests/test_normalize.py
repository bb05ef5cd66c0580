"""Config normalization: transformers 5 configs rewritten into what MLC-LLM v0.19.0 reads."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from webslm.cli import main
from webslm.normalize import normalize_config

# Fields MLC-LLM v0.19.0's QWen2Config requires at top level (reference file).
QWEN2_REQUIRED = ("hidden_act", "hidden_size", "intermediate_size", "num_attention_heads",
                  "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "rope_theta",
                  "vocab_size")

# Old-format configs as the real Hub repos ship them (transformers 4.x wrote them).
OLD_QWEN25 = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896,
    "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
    "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936,
}
OLD_LLAMA32 = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 128000, "eos_token_id": [128001],
    "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def saved_config(model: Path) -> dict:
    return json.loads((model / "config.json").read_text())


def normalized_copy(model: Path, tmp_path: Path) -> tuple[dict, dict]:
    """Normalize a copy of a tiny model's config through the CLI; return (before, after)."""
    target = tmp_path / "model"
    shutil.copytree(model, target)
    before = saved_config(target)
    assert main(["normalize", str(target)]) == 0
    return before, saved_config(target)


def test_transformers5_writes_the_new_format_this_module_exists_for(tiny_models) -> None:
    config = saved_config(tiny_models["qwen2"])
    assert "rope_parameters" in config and "rope_theta" not in config
    assert "dtype" in config and "torch_dtype" not in config


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma2", "phi3", "mistral"])
def test_every_preset_architecture_gets_top_level_rope_theta_and_torch_dtype(
    tiny_models, tmp_path: Path, arch: str
) -> None:
    before, after = normalized_copy(tiny_models[arch], tmp_path)
    assert after["rope_theta"] == before["rope_parameters"]["rope_theta"]
    assert after["torch_dtype"] == before["dtype"] == "bfloat16"
    assert "dtype" not in after


def test_qwen2_config_has_every_field_mlc_requires(tiny_models, tmp_path: Path) -> None:
    _, after = normalized_copy(tiny_models["qwen2"], tmp_path)
    assert [key for key in QWEN2_REQUIRED if key not in after] == []
    assert after["rope_theta"] == 1000000.0 and "rope_scaling" not in after


def test_llama3_scaling_is_restored_with_rope_type(tiny_models, tmp_path: Path) -> None:
    _, after = normalized_copy(tiny_models["llama"], tmp_path)
    assert after["rope_theta"] == 500000.0
    assert after["rope_scaling"] == {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 1024,
    }


def test_phi3_longrope_factors_are_restored(tiny_models, tmp_path: Path) -> None:
    before, after = normalized_copy(tiny_models["phi3"], tmp_path)
    rope = before["rope_parameters"]
    assert after["rope_scaling"] == {"type": "longrope", "long_factor": rope["long_factor"],
                                     "short_factor": rope["short_factor"]}
    assert after["original_max_position_embeddings"] == 1024


def test_normalizing_twice_changes_nothing_more(tiny_models, tmp_path: Path, capsys) -> None:
    normalized_copy(tiny_models["llama"], tmp_path)
    first_out = capsys.readouterr().out
    assert "rope_scaling: restored llama3" in first_out and "rope_theta" in first_out
    config = tmp_path / "model" / "config.json"
    bytes_once = config.read_bytes()
    assert main(["normalize", str(config)]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert config.read_bytes() == bytes_once


@pytest.mark.parametrize("old", [OLD_QWEN25, OLD_LLAMA32], ids=["qwen2.5", "llama3.2"])
def test_old_format_configs_are_left_unchanged(tmp_path: Path, old: dict) -> None:
    assert normalize_config(old).changes == ()
    path = tmp_path / "config.json"
    text = json.dumps(old, indent=2)
    path.write_text(text)
    assert main(["normalize", str(tmp_path)]) == 0
    assert path.read_text() == text


def test_out_writes_elsewhere_and_leaves_the_source_alone(tiny_models, tmp_path: Path) -> None:
    source = tiny_models["qwen2"] / "config.json"
    original = source.read_bytes()
    assert main(["normalize", str(source), "--out", str(tmp_path / "out")]) == 0
    assert source.read_bytes() == original
    assert json.loads((tmp_path / "out" / "config.json").read_text())["rope_theta"] == 1000000.0


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[1, 2]", "not a JSON object"),
        ("{not json", "not valid JSON"),
        (json.dumps({"model_type": "qwen2", "hidden_size": 8}), "no RoPE base"),
        (json.dumps({"model_type": "llama", "rope_parameters": {
            "rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0}}), "only llama3"),
        (json.dumps({"model_type": "llama", "rope_parameters": {
            "rope_theta": 1e4, "rope_type": "llama3", "factor": 8.0}}), "lacks"),
        (json.dumps({"model_type": "qwen2", "rope_theta": 1.0,
                     "rope_parameters": {"rope_theta": 2.0}}), "keep one value"),
    ],
)
def test_bad_configs_exit_2_with_one_line_and_stay_untouched(
    tmp_path: Path, capsys, content: str, fragment: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    assert main(["normalize", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err
    assert path.read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_missing_config_is_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["normalize", str(tmp_path)]) == 2
    assert "config.json does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_normalizing_in_place_keeps_the_files_mode(tiny_models, tmp_path: Path, mode: int) -> None:
    target = shutil.copytree(tiny_models["qwen2"], tmp_path / "model")
    os.chmod(target / "config.json", mode)
    assert main(["normalize", str(target)]) == 0
    assert "rope_theta" in saved_config(target)
    assert stat.S_IMODE(os.stat(target / "config.json").st_mode) == mode


def test_a_read_only_config_is_refused_unless_out_is_given(
        tiny_models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = shutil.copytree(tiny_models["qwen2"], tmp_path / "model")
    config = target / "config.json"
    os.chmod(config, 0o444)
    original = config.read_bytes()
    assert main(["normalize", str(target)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is read-only" in error and "--out" in error
    assert config.read_bytes() == original and stat.S_IMODE(os.stat(config).st_mode) == 0o444
    assert main(["normalize", str(target), "--out", str(tmp_path / "out")]) == 0
    assert "rope_theta" in saved_config(tmp_path / "out")
    assert config.read_bytes() == original


def test_a_symlinked_config_is_refused_and_stays_a_link(
        tiny_models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared-config.json"
    shared.write_bytes((tiny_models["qwen2"] / "config.json").read_bytes())
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").symlink_to(shared)
    original = shared.read_bytes()
    assert main(["normalize", str(model)]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert (model / "config.json").is_symlink() and shared.read_bytes() == original


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_normalizing_in_place_as_root_keeps_the_files_owner_and_group(tiny_models,
                                                                       tmp_path: Path) -> None:
    target = shutil.copytree(tiny_models["qwen2"], tmp_path / "model")
    os.chown(target / "config.json", 4321, 8765)
    assert main(["normalize", str(target)]) == 0
    assert "rope_theta" in saved_config(target)
    found = os.stat(target / "config.json")
    assert (found.st_uid, found.st_gid) == (4321, 8765)


def test_a_hard_linked_config_is_refused_like_a_symlinked_one(
        tiny_models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = shutil.copytree(tiny_models["qwen2"], tmp_path / "model")
    os.link(target / "config.json", tmp_path / "other-name.json")
    original = (target / "config.json").read_bytes()
    assert main(["normalize", str(target)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "hard links" in error and "--out" in error
    assert os.stat(target / "config.json").st_nlink == 2
    assert (tmp_path / "other-name.json").read_bytes() == original


def test_out_inside_a_file_is_bad_input(tiny_models, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    source = tiny_models["qwen2"] / "config.json"
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert main(["normalize", str(source), "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "a file, not a folder" in error
    assert (tmp_path / "file").read_text() == "x"
