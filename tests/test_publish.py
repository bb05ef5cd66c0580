"""`webslm publish` without the network: reading and checking a dist folder, the plan (paths, URL
rewriting, model card), `--dry-run`, bad input, and token redaction.

The dist folder is made here by the same pure functions the pipeline packages real builds with
(webslm.webllm.model_record, webslm.provenance.statement), around small stand-in output files, so
it follows the dist contract without needing the toolchain image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from webslm import layout, publish, redaction, webllm
from webslm.cli import main
from webslm.errors import BadInput
from webslm.files import canonical_json
from webslm.provenance import APP_CONFIG_FILE, PROVENANCE_FILE, hash_files, list_files

REPO = "alice/tiny-chat"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAKE_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"  # 34 letters, shaped like a real one
TOOLCHAIN_ID = hashlib.sha256(b"test toolchain").hexdigest()
LOCK_DIGEST = hashlib.sha256(b"test lock").hexdigest()
SOURCE_REVISION = "c" * 40


def make_dist(root: Path, *, name: str = "tiny", quantization: str = "q4f32_1",
              system_prompt: str | None = "You answer briefly.") -> Path:
    """A dist/<name>/ folder as `invoke build` writes it (contract in the developers' brief)."""
    from webslm import provenance
    from webslm.spec import is_f16, resolve_spec

    spec = resolve_spec(preset="qwen2.5-0.5b", quantization=quantization, name=name)
    folder = root / name
    (folder / "libs").mkdir(parents=True)
    rng = random.Random(0)
    shards = {f"params_shard_{i}.bin": rng.randbytes(3000 + 1000 * i) for i in range(2)}
    for shard, data in shards.items():
        (folder / shard).write_bytes(data)
    cache = {"metadata": {"ParamSize": 2, "ParamBytes": sum(map(len, shards.values()))},
             "records": [{"dataPath": shard, "format": "raw-shard", "nbytes": len(data),
                          "records": [{"name": f"w{i}", "shape": [len(data)], "dtype": "uint8",
                                       "format": "raw", "nbytes": len(data), "byteOffset": 0}]}
                         for i, (shard, data) in enumerate(shards.items())]}
    (folder / "ndarray-cache.json").write_text(canonical_json(cache))
    chat_config = {"model_type": "qwen2", "quantization": quantization, "vocab_size": 512,
                   "context_window_size": 4096, "prefill_chunk_size": 1024,
                   "temperature": 0.7, "top_p": 0.8,
                   "model_config": {"hidden_size": 64, "num_attention_heads": 4,
                                    "num_hidden_layers": 2, "num_key_value_heads": 2,
                                    "intermediate_size": 128},
                   "conv_template": {"name": "qwen2", "system_message": system_prompt,
                                     "stop_token_ids": [1, 2]},
                   "tokenizer_files": ["tokenizer.json", "tokenizer_config.json"]}
    (folder / "mlc-chat-config.json").write_text(canonical_json(chat_config))
    (folder / "tokenizer.json").write_text(canonical_json({"model": {"vocab": {"a": 0}}}))
    (folder / "tokenizer_config.json").write_text(canonical_json({"model_max_length": 4096}))
    library = layout.library_name(spec.model_id)
    (folder / "libs" / library).write_bytes(b"\0asm\x01\0\0\0" + rng.randbytes(5000))
    outputs = hash_files(folder, list_files(folder))
    statement = provenance.statement(
        outputs=outputs, spec=spec.to_json(),
        model={"id": spec.model, "revision": SOURCE_REVISION, "source": "hub"},
        inputs={"config.json": "d" * 64}, toolchain_id=TOOLCHAIN_ID,
        image="webslm-toolchain:test", image_digest="sha256:" + "e" * 64,
        lock_digest=LOCK_DIGEST, webllm_version="0.2.79",
        stages={"compile": {"cache_key": "f" * 64, "output": "a" * 64}})
    facts = webllm.PackageFacts(
        name=name, model_id=spec.model_id, quantization=quantization, f16=is_f16(quantization),
        chat_config=webllm.ChatConfig.from_json(chat_config),
        chat_config_digest=outputs["mlc-chat-config.json"],
        library_digest=outputs[f"libs/{library}"],
        tokenizer_digests={n: outputs[n] for n in chat_config["tokenizer_files"]},
        weight_digests={n: outputs[n] for n in layout.package_weight_files(outputs)},
        weight_bytes=sum(map(len, shards.values())), webllm_version="0.2.79",
        toolchain_id=TOOLCHAIN_ID, system_prompt=system_prompt, finetune=None)
    record = webllm.model_record(facts, webllm.DEFAULT_BASE_URL)
    (folder / APP_CONFIG_FILE).write_text(webllm.render_app_config(webllm.app_config([record])))
    (folder / PROVENANCE_FILE).write_text(provenance.render(statement))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A contract-conforming dist folder; read-only (tests that alter it copy it first)."""
    return make_dist(tmp_path_factory.mktemp("dist"))


@pytest.fixture
def dist(built: Path, tmp_path: Path) -> Path:
    """A private copy of the dist folder, free to alter."""
    return Path(shutil.copytree(built, tmp_path / built.name))


def load(path: Path) -> Any:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------- the plan


def test_plan_uploads_every_built_file_at_its_dist_path(built: Path) -> None:
    plan = publish.plan_publish(publish.read_package(built), REPO, COMMIT)
    subjects = {s["name"]: s["digest"]["sha256"] for s in load(built / PROVENANCE_FILE)["subject"]}
    assert [f.path for f in plan.package] == sorted([*subjects, PROVENANCE_FILE])
    for planned in plan.package:
        data = (built / planned.path).read_bytes()
        assert planned.size == len(data)
        assert planned.sha256 == hashlib.sha256(data).hexdigest()
    assert "libs/tiny-q4f32_1-webgpu.wasm" in subjects
    assert set(plan.second_commit()) == {APP_CONFIG_FILE, "README.md"}


def test_app_config_urls_point_at_the_package_commit_and_nothing_else_changes(
        built: Path) -> None:
    original = load(built / APP_CONFIG_FILE)
    plan = publish.plan_publish(publish.read_package(built), REPO, COMMIT)
    written = json.loads(plan.second_commit()[APP_CONFIG_FILE])
    record = written["model_list"][0]
    base = f"https://huggingface.co/{REPO}/resolve/{COMMIT}/"
    assert record["model"] == base
    assert record["model_lib"] == base + "libs/tiny-q4f32_1-webgpu.wasm"
    before = original["model_list"][0]
    assert before["model"].startswith("http://127.0.0.1:8000/models/")
    assert {k: v for k, v in record.items() if k not in ("model", "model_lib")} == {
        k: v for k, v in before.items() if k not in ("model", "model_lib")}
    assert original == load(built / APP_CONFIG_FILE)  # the pure function left its input alone


def test_rewrite_follows_the_endpoint_for_mirrors() -> None:
    app_config = {"model_list": [{"model": "http://x/m/resolve/main/",
                                  "model_lib": "http://x/m/resolve/main/libs/a.wasm"}]}
    rewritten = publish.rewrite_app_config(
        webllm.AppConfig.from_json(app_config),
        publish.resolve_url("https://hub.example/", "o/n", COMMIT))
    assert rewritten.records[0].model_lib == (
        f"https://hub.example/o/n/resolve/{COMMIT}/libs/a.wasm")


def test_a_library_outside_the_model_folder_is_refused() -> None:
    app_config = {"model_list": [{"model": "http://x/m/resolve/main/",
                                  "model_lib": "http://elsewhere/a.wasm"}]}
    with pytest.raises(BadInput, match="does not lie inside the model folder"):
        publish.rewrite_app_config(webllm.AppConfig.from_json(app_config),
                                   "https://huggingface.co/o/n/resolve/x/")


def test_model_card_summarizes_provenance_and_shows_how_to_load_and_audit(built: Path) -> None:
    plan = publish.plan_publish(publish.read_package(built), REPO, COMMIT)
    card = plan.model_card
    subjects = load(built / PROVENANCE_FILE)["subject"]
    assert card.startswith("---\nlibrary_name: mlc-llm\n")
    assert "base_model: Qwen/Qwen2.5-0.5B-Instruct\nbase_model_relation: quantized" in card
    assert f"| toolchain ID | `{TOOLCHAIN_ID}` |" in card
    assert f"| toolchain lock digest (sha256) | `{LOCK_DIGEST}` |" in card
    assert f"| files with recorded digests | {len(subjects)} " in card
    assert f"| source revision | `{SOURCE_REVISION}` |" in card
    assert "| web-llm pin | `@mlc-ai/web-llm@0.2.79` |" in card
    assert 'from "https://esm.run/@mlc-ai/web-llm@0.2.79"' in card
    assert 'CreateMLCEngine("tiny-q4f32_1", { appConfig })' in card
    assert f"https://huggingface.co/{REPO}/resolve/main/{APP_CONFIG_FILE}" in card
    assert (f"invoke audit --artifact https://huggingface.co/{REPO}/resolve/{COMMIT}/"
            "libs/tiny-q4f32_1-webgpu.wasm") in card
    assert f"--provenance https://huggingface.co/{REPO}/resolve/{COMMIT}/{PROVENANCE_FILE}" in card
    assert '"You answer briefly."' in card


def test_model_card_names_shader_f16_only_for_f16_builds(tmp_path: Path) -> None:
    f16 = publish.plan_publish(publish.read_package(make_dist(tmp_path / "a", quantization=(
        "q4f16_1"))), REPO, COMMIT)
    f32 = publish.plan_publish(publish.read_package(make_dist(tmp_path / "b")), REPO, COMMIT)
    assert "shader-f16" in f16.model_card and "shader-f16" not in f32.model_card


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("repo", ["tiny-chat", "a/b/c", "alice/", "/x", "alice/bad name",
                                  "alice/-x", "alice/x..y", "alice/x--y", "alice/x.git",
                                  "alice/" + "x" * 97])
def test_invalid_repo_ids_are_bad_input(built: Path, repo: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", str(built), "--repo", repo, "--dry-run"]) == 2
    assert "is not a Hugging Face repo id" in capsys.readouterr().err


@pytest.mark.parametrize("repo", ["alice/tiny-chat", "Org_1/Model.v2-q4f32_1", "a/b"])
def test_valid_repo_ids_pass(repo: str) -> None:
    assert publish.check_repo_id(repo) == repo


def _break_by_removing(dist: Path) -> str:
    (dist / "params_shard_1.bin").unlink()
    return "lacks params_shard_1.bin"


def _break_by_editing(dist: Path) -> str:
    (dist / "tokenizer.json").write_text("{}\n")
    return "tokenizer.json in .* changed since the build"


def _break_by_adding(dist: Path) -> str:
    (dist / "notes.txt").write_text("mine")
    return "holds notes.txt, which the build did not produce"


def _break_the_app_config(dist: Path) -> str:
    (dist / APP_CONFIG_FILE).write_text("{not json")
    return "is not valid JSON"


def _drop_provenance(dist: Path) -> str:
    (dist / PROVENANCE_FILE).unlink()
    return "provenance.json is missing"


def _mismatch_the_pin(dist: Path) -> str:
    config = load(dist / APP_CONFIG_FILE)
    config["model_list"][0]["webslm"]["webllm_version"] = "0.2.80"
    (dist / APP_CONFIG_FILE).write_text(canonical_json(config))
    return "says webllm_version '0.2.80' but provenance.json says '0.2.79'"


def _link_outside(dist: Path) -> str:
    """A shipped file that is a link to a file outside the dist (with the very same bytes, so
    every digest still matches): its target would be uploaded from wherever it is."""
    outside = dist.parent / "elsewhere.json"
    (dist / "tokenizer_config.json").rename(outside)
    (dist / "tokenizer_config.json").symlink_to(outside)
    return "tokenizer_config.json is a symbolic link to .*elsewhere.json, outside"


@pytest.mark.parametrize("damage", [_break_by_removing, _break_by_editing, _break_by_adding,
                                    _break_the_app_config, _drop_provenance, _mismatch_the_pin,
                                    _link_outside])
def test_a_dist_folder_that_is_not_what_was_built_is_bad_input(
        dist: Path, damage: Any, capsys: pytest.CaptureFixture[str]) -> None:
    expected = damage(dist)
    assert main(["publish", str(dist), "--repo", REPO, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("webslm: error: ") and err.count("\n") == 1
    assert __import__("re").search(expected, err), err


def test_a_missing_folder_is_bad_input(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", str(tmp_path / "nope"), "--repo", REPO]) == 2
    assert "is not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------- dry run


def test_dry_run_prints_files_sizes_and_urls_and_needs_no_token(
        built: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any request would fail loudly
    assert main(["publish", str(built), "--repo", REPO, "--private", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"https://huggingface.co/{REPO} (private model repo" in out
    for name in [*list_files(built)]:
        if name == APP_CONFIG_FILE:
            continue
        size = (built / name).stat().st_size
        line = next(li for li in out.splitlines() if li.strip().startswith(name + " "))
        assert f"https://huggingface.co/{REPO}/resolve/<commit>/{name}" in line
        assert f" {human_size(size)} " in line
    assert f"AppConfig model_lib: https://huggingface.co/{REPO}/resolve/<commit>/libs/" in out
    assert "nothing was uploaded" in out


def human_size(count: int) -> str:
    """The size as the plan prints it: bytes below 1 KiB, else KiB or MiB to one decimal."""
    if count < 1024:
        return f"{count:,} B"
    return f"{count / 1024:,.1f} KiB" if count < 1024 * 1024 else f"{count / 1024**2:,.1f} MiB"


def test_sizes_are_printed_exactly() -> None:
    assert [publish._size(n) for n in (0, 1023, 1024, 1536, 1024**2 - 1, 5 * 1024**2,
                                       3000 * 1024**2)] == \
        ["0 B", "1,023 B", "1.0 KiB", "1.5 KiB", "1,024.0 KiB", "5.0 MiB", "3,000.0 MiB"]


# ---------------------------------------------------------------------------- redaction


def test_redactor_removes_the_token_and_anything_shaped_like_one() -> None:
    redactor = redaction.Redactor(("s3cret-value",))
    text = (f"Authorization: Bearer {FAKE_TOKEN}; token={FAKE_TOKEN}; api_org_"
            + "x" * 30 + " and s3cret-value; bearer s3cret-value")
    clean = redactor.redact(text)
    assert FAKE_TOKEN not in clean and "s3cret-value" not in clean and "api_org_x" not in clean
    assert clean.count("***") == 5 and "Bearer ***" in clean
    assert redactor.redact("hf_short is fine") == "hf_short is fine"


def test_log_records_are_redacted_while_publishing(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("huggingface_hub.test")
    redactor = redaction.Redactor((FAKE_TOKEN,))
    with caplog.at_level(logging.DEBUG), redaction.redacted_logs(redactor):
        logger.warning("sending %s", {"authorization": f"Bearer {FAKE_TOKEN}"})
        try:
            raise RuntimeError(f"server said {FAKE_TOKEN}")
        except RuntimeError:
            logger.exception("upload failed")
    logger.warning("after: %s", "unchanged")
    assert FAKE_TOKEN not in caplog.text
    assert "Bearer ***" in caplog.text and "server said ***" in caplog.text
    assert caplog.records[-1].getMessage() == "after: unchanged"


@pytest.mark.parametrize("token", [FAKE_TOKEN, "s3cret-value-1234"])
@pytest.mark.parametrize("repo", ["{token}/x", "{token}/../x"])
def test_the_token_never_reaches_the_output_whatever_field_carries_it(
        built: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        token: str, repo: str) -> None:
    monkeypatch.setenv("HF_TOKEN", token)
    code = main(["publish", str(built), "--repo", repo.format(token=token), "--dry-run"])
    assert code == (2 if ".." in repo else 0)
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err
    assert "***" in captured.out + captured.err


@pytest.mark.parametrize("field, value", [
    ("predicate", []), ("subject", ["params_shard_0.bin"]), ("externalParameters", "spec"),
    ("resolvedDependencies", [1]), ("internalParameters", [])])
def test_a_provenance_of_the_wrong_shape_is_one_line(dist: Path, field: str, value: Any,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    statement = load(dist / PROVENANCE_FILE)
    if field in statement:
        statement[field] = value
    else:
        statement["predicate"]["buildDefinition"][field] = value
    (dist / PROVENANCE_FILE).write_text(canonical_json(statement))
    assert main(["publish", str(dist), "--repo", REPO, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a webslm provenance statement" in err


def test_publishing_offline_is_missing_environment(built: Path) -> None:
    """A real connection to a closed port: the network error, not a Hub answer."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    done = subprocess.run([sys.executable, "-m", "webslm", "publish", str(built), "--repo", REPO],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Hub while creating" in lines[0]
    assert FAKE_TOKEN not in done.stderr
