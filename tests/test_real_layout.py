"""The stand-in toolchain against real MLC-LLM v0.19.0 output (tests/fixtures/real-tiny).

The fixture holds the dists `webslm build` wrote for `real-tiny/model` with the real toolchain.
Building the same model through the stand-in must give the same layout: file names, the
ndarray caches' schema and every value but the weight bytes, the chat config, the tokenizer
files, the wasm's name and place; the staged model and gen_config's output byte for byte (their
digests in the fixture's provenance). And the model, without an index as most Hub models are, must
build as it is: real convert_weight writes the index into a read-only model folder and fails.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import REAL_TINY, copy_model, digests, tasks_namespace
from invoke import Program

from webslm.cache import tree_digest
from webslm.container import ContainerRun, Engine
from webslm.errors import BadInput, StageFailed
from webslm.files import canonical_json, sha256_bytes, sha256_file
from webslm.hub import check_safetensors_header
from webslm.normalize import load_config, normalize_config
from webslm.pipeline import MODEL_MOUNT, BuildOptions, build_model, convert_command
from webslm.provenance import list_files
from webslm.safetensors_index import INDEX_FILE, index_text, needs_index, weight_map
from webslm.spec import resolve_spec

# (dist folder, --quantization, --name) as the fixture's README says they were built
REAL_DISTS = [("dist-q4f32_1", "q4f32_1", "qwen2-tiny"),
              ("dist-q4f16_1", "q4f16_1", "qwen2-tiny-f16")]
# Files whose bytes are the weights' or the compiler's: the stand-in derives them, so only their
# names (and, for shards, sizes) can match. The ndarray caches hold the shards' md5sums (compared
# without them below); the AppConfig and provenance hold digests.
DERIVED = {"params_shard_0.bin", "ndarray-cache.json", "ndarray-cache-b16.json",
           "webllm-app-config.json", "provenance.json"}


@pytest.fixture(scope="module")
def real_tiny() -> Path:
    if not (REAL_TINY / "model" / "model.safetensors").is_file():
        pytest.fail(f"the real MLC-LLM fixture is missing: {REAL_TINY} (it is part of the "
                    "repository: restore it with `git checkout -- tests/fixtures`)")
    return REAL_TINY


def read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def without_md5(cache: dict[str, Any]) -> dict[str, Any]:
    """An ndarray cache less each shard's md5sum (a digest of the weight bytes)."""
    return {**cache, "records": [{k: v for k, v in shard.items() if k != "md5sum"}
                                 for shard in cache["records"]]}


def fixture_input_digest(dist: Path, name: str) -> str:
    statement = read(dist / "provenance.json")
    for dependency in statement["predicate"]["buildDefinition"]["resolvedDependencies"]:
        if dependency["name"] == f"model/{name}":
            return str(dependency["digest"]["sha256"])
    raise AssertionError(f"{name} not in {dist}/provenance.json")


def test_the_stage_index_is_what_the_real_build_staged_and_converted(real_tiny: Path) -> None:
    """The fixture's model has no index; the real build's stage step wrote one into its staged
    copy and MLC-LLM's convert_weight read it. The staged folder's digest in the fixture's
    provenance is that of the model's files, the normalized config and exactly the index bytes
    the stage step writes from the safetensors header today."""
    model = real_tiny / "model"
    header = check_safetensors_header(model / "model.safetensors")
    text = index_text(weight_map({"model.safetensors": header}))
    staged = {**digests(model), INDEX_FILE: sha256_bytes(text.encode()),
              "config.json": sha256_bytes(canonical_json(normalize_config(
                  load_config(model / "config.json"), "qwen2").config).encode())}
    for folder, _, _ in REAL_DISTS:
        stages = read(real_tiny / folder / "provenance.json")["predicate"]["buildDefinition"][
            "internalParameters"]["stages"]
        assert stages["stage"]["output"] == tree_digest(staged), folder
    assert list(json.loads(text)["weight_map"]) == sorted(json.loads(text)["weight_map"])


def test_an_index_for_shards_without_one_maps_each_tensor_to_its_file() -> None:
    """MLC-LLM v0.19.0 refuses shards without an index; the stage writes one for them too."""
    headers = {"model-00002-of-00002.safetensors": {"b.weight": {}, "__metadata__": {}},
               "model-00001-of-00002.safetensors": {"c.weight": {}, "a.weight": {}}}
    assert needs_index(list(headers)) and not needs_index([*headers, INDEX_FILE])
    assert not needs_index(["pytorch_model.bin"])
    assert json.loads(index_text(weight_map(headers))) == {"weight_map": {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
        "c.weight": "model-00001-of-00002.safetensors"}}
    with pytest.raises(BadInput, match="a.weight is in both"):
        weight_map({"x.safetensors": {"a.weight": {}}, "y.safetensors": {"a.weight": {}}})


@pytest.mark.docker
def test_standin_convert_weight_fails_on_a_read_only_model_without_index(
        standin, real_tiny: Path, tmp_path: Path) -> None:
    """As real v0.19.0 does: it tries to write the index next to the lone model.safetensors."""
    model = copy_model(real_tiny / "model", tmp_path / "model")
    spec = resolve_spec(model=str(model), quantization="q4f32_1", name="qwen2-tiny")
    engine = Engine(standin.stage_image())
    (tmp_path / "out").mkdir()
    job = ContainerRun(stage="convert_weight", model_id=spec.model_id,
                       argv=tuple(convert_command(spec.with_model_type("qwen2"),
                                                  ["model.safetensors"])),
                       inputs={MODEL_MOUNT: model}, output=tmp_path / "out",
                       log=tmp_path / "convert_weight.log")
    with pytest.raises(StageFailed) as failure:
        engine.run(job)
    expected = f"OSError: [Errno 30] Read-only file system: '{MODEL_MOUNT}/{INDEX_FILE}'"
    assert expected in failure.value.line()
    assert not (model / INDEX_FILE).exists()


@pytest.mark.docker
def test_readme_command_builds_the_real_fixture_model_as_it_is(
        standin, real_tiny: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's `invoke build --model ./DIR` on the fixture's model (a lone
    model.safetensors, no index), through Invoke: it builds, and the model is left untouched."""
    model = copy_model(real_tiny / "model", tmp_path / "real-tiny")
    before = digests(model)
    monkeypatch.chdir(tmp_path)
    Program(namespace=tasks_namespace()).run(
        ["invoke", "build", "--model", "./real-tiny", "--quantization", "q4f32_1"], exit=False)
    assert digests(model) == before
    dist = tmp_path / "dist" / "real-tiny"
    assert (dist / "libs" / "real-tiny-q4f32_1-webgpu.wasm").is_file()
    assert read(dist / "provenance.json")["predicate"]["buildDefinition"][
        "externalParameters"]["model"]["id"] == "./real-tiny"


@pytest.mark.docker
@pytest.mark.parametrize("folder, quantization, name", REAL_DISTS)
def test_standin_dist_has_the_real_layout(standin, real_tiny: Path, tmp_path: Path,
                                          folder: str, quantization: str, name: str) -> None:
    real = real_tiny / folder
    model = copy_model(real_tiny / "model", tmp_path / "model")
    spec = resolve_spec(model=str(model), quantization=quantization, name=name)
    result = build_model(spec, BuildOptions(out=tmp_path / "dist", toolchain=standin,
                                            cache_dir=tmp_path / "cache", show_progress=False))
    built = result.dist

    # The staged model (normalized config, the index the stage step writes) and gen_config's
    # raw output (chat config, tokenizer copies) are byte for byte the real build's.
    real_stages = read(real / "provenance.json")["predicate"]["buildDefinition"][
        "internalParameters"]["stages"]
    for stage in ("stage", "gen_config"):
        assert result.stage_digests[stage] == real_stages[stage]["output"], stage

    assert list_files(built) == list_files(real)
    ours, theirs = digests(built), digests(real)
    different = sorted(n for n in ours if ours[n] != theirs[n])
    assert set(different) <= DERIVED | {n for n in ours if n.endswith(".wasm")}
    assert {"mlc-chat-config.json", "tokenizer.json", "tokenizer_config.json"}.isdisjoint(
        different)

    for cache in [n for n in ours if n.startswith("ndarray-cache")]:
        assert without_md5(read(built / cache)) == without_md5(read(real / cache)), cache
        for dist in (built, real):
            for shard in read(dist / cache)["records"]:
                data = (dist / shard["dataPath"]).read_bytes()
                assert shard["md5sum"] == hashlib.md5(data).hexdigest()
    for shard in read(real / "ndarray-cache.json")["records"]:
        size = (real / shard["dataPath"]).stat().st_size
        assert (built / shard["dataPath"]).stat().st_size == size

    assert read(built / "mlc-chat-config.json") == read(real / "mlc-chat-config.json")

    record, real_record = (read(d / "webllm-app-config.json")["model_list"][0]
                           for d in (built, real))
    assert set(record) == set(real_record)
    for key in ("model_id", "model_lib", "model", "required_features", "low_resource_required",
                "overrides"):
        assert record.get(key) == real_record.get(key), key


def test_fixture_model_digest_is_what_the_real_build_read(real_tiny: Path) -> None:
    """Guards the comparison above: the fixture model is the one its dists were built from."""
    assert sha256_file(real_tiny / "model" / "model.safetensors") == fixture_input_digest(
        real_tiny / "dist-q4f32_1", "model.safetensors")
