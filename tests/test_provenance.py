"""provenance.json: in-toto Statement v1 + SLSA provenance v1, deterministic, and file hashing."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

from webslm.provenance import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    hash_files,
    list_files,
    render,
    sri,
    statement,
)


def sample(outputs: dict[str, str] | None = None) -> dict:
    return statement(
        outputs=outputs or {"params_shard_0.bin": "1" * 64, "libs/m-webgpu.wasm": "2" * 64,
                            "provenance.json": "3" * 64, "webllm-app-config.json": "4" * 64},
        spec={"name": "m", "quantization": "q4f16_1"},
        model={"id": "Org/M", "revision": "c" * 40, "source": "hub"},
        inputs={"model.safetensors": "5" * 64, "config.json": "6" * 64},
        toolchain_id="7" * 64, image="webslm-toolchain:x", image_digest="sha256:" + "8" * 64,
        lock_digest="9" * 64, webllm_version="0.2.79",
        stages={"compile": {"cache_key": "a" * 64, "output": "b" * 64}},
    )


def test_statement_has_the_in_toto_and_slsa_shape() -> None:
    value = sample()
    assert value["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    assert value["predicateType"] == PREDICATE_TYPE == "https://slsa.dev/provenance/v1"
    definition = value["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["model"] == {
        "id": "Org/M", "revision": "c" * 40, "source": "hub"}
    assert definition["externalParameters"]["spec"]["name"] == "m"
    deps = {d["name"]: d["digest"]["sha256"] for d in definition["resolvedDependencies"]}
    assert deps["model/model.safetensors"] == "5" * 64
    assert deps["toolchain"] == "7" * 64
    assert deps["toolchain-image"] == "8" * 64  # the sha256: prefix goes, the hex stays
    assert deps["docker/toolchain.lock.json"] == "9" * 64
    assert value["predicate"]["runDetails"]["builder"]["id"]


def test_subjects_are_outputs_except_provenance_and_app_config() -> None:
    names = [s["name"] for s in sample()["subject"]]
    assert names == ["libs/m-webgpu.wasm", "params_shard_0.bin"]
    assert sample()["subject"][1]["digest"] == {"sha256": "1" * 64}


def test_render_is_deterministic_canonical_json() -> None:
    text = render(sample())
    reordered = dict(reversed(list(sample().items())))
    assert render(reordered) == text
    assert text.endswith("}\n") and json.loads(text) == sample()
    keys = list(json.loads(text).keys())
    assert keys == sorted(keys)


def test_sri_is_base64_of_the_raw_digest() -> None:
    digest = hashlib.sha256(b"hello").digest()
    assert sri(digest.hex()) == "sha256-" + base64.b64encode(digest).decode()
    assert sri(digest.hex()) == "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="


def test_hash_files_matches_sha256sum(tmp_path: Path) -> None:
    (tmp_path / "libs").mkdir()
    for i, name in enumerate(["a.bin", "b.json", "libs/c.wasm"]):
        (tmp_path / name).write_bytes(bytes([i]) * (3_000_000 + i))
    assert list_files(tmp_path) == ["a.bin", "b.json", "libs/c.wasm"]
    ours = hash_files(tmp_path, list_files(tmp_path))
    theirs = subprocess.run(["sha256sum", *list_files(tmp_path)], cwd=tmp_path, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    expected = {line.split()[1]: line.split()[0] for line in theirs if line}
    assert ours == expected
