"""`webslm build` end to end on the real Docker engine, with the TEST STAND-IN toolchain image.

The real toolchain image (MLC-LLM v0.19.0, an hour to build) is the boundary these tests cannot
cross here: `current_toolchain()` is pointed at the stand-in image (tests/standin/), whose
`mlc_llm` checks every call against the v0.19.0 CLI and writes the real output layout.
Everything else is real: containers, mounts, the cache, packaging, provenance.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import (
    containers_of,
    copy_model,
    digests,
    interrupt_when,
    running_stages,
    seconds_after_firing,
    unique_name,
)
from standin.image import standin_toolchain

from webslm.cli import main
from webslm.container import Variation
from webslm.files import sha256_file
from webslm.pipeline import BuildOptions, build_many, build_model
from webslm.provenance import sri
from webslm.spec import resolve_spec

TOOL_STAGES = ("stage", "convert_weight", "gen_config", "compile")


def options(tmp_path: Path, toolchain, **changes) -> BuildOptions:
    base = BuildOptions(out=tmp_path / "dist", toolchain=toolchain,
                        cache_dir=tmp_path / "cache", show_progress=False)
    return replace(base, **changes)


@pytest.mark.docker
def test_a_full_build_makes_a_folder_webllm_loads(standin, tiny_qwen2: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dist"
    code = main(["build", "--model", str(tiny_qwen2), "--name", "tiny", "--out", str(out),
                 "--base-url", "https://cdn.example/models/", "--system-prompt", "Be brief."])
    assert code == 0, capsys.readouterr().err
    dist = out / "tiny"
    files = digests(dist)
    assert set(files) == {
        "params_shard_0.bin", "ndarray-cache.json", "mlc-chat-config.json", "tokenizer.json",
        "tokenizer_config.json", "libs/tiny-q4f16_1-webgpu.wasm", "webllm-app-config.json",
        "provenance.json"}
    assert (dist / "libs/tiny-q4f16_1-webgpu.wasm").read_bytes()[:4] == b"\0asm"
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]  # no temporary leftovers

    shards = json.loads((dist / "ndarray-cache.json").read_text())["records"]
    assert [s["nbytes"] for s in shards] == [(dist / s["dataPath"]).stat().st_size
                                             for s in shards]

    chat = json.loads((dist / "mlc-chat-config.json").read_text())
    assert chat["temperature"] == 0.7 and chat["top_p"] == 0.8  # the model's generation_config
    assert chat["conv_template"]["system_message"] == "Be brief."
    tokenizer = json.loads((dist / "tokenizer.json").read_text())
    special = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert chat["conv_template"]["stop_token_ids"] == sorted(
        [special["<|endoftext|>"], special["<|im_end|>"]])

    record = json.loads((dist / "webllm-app-config.json").read_text())["model_list"][0]
    url = "https://cdn.example/models/tiny/resolve/main/"
    assert record["model"] == url and record["model_id"] == "tiny-q4f16_1"
    assert record["model_lib"] == url + "libs/tiny-q4f16_1-webgpu.wasm"
    assert record["required_features"] == ["shader-f16"]
    assert record["integrity"]["config"] == sri(files["mlc-chat-config.json"])
    assert record["integrity"]["model_lib"] == sri(files["libs/tiny-q4f16_1-webgpu.wasm"])
    assert record["integrity"]["tokenizer"] == {
        "tokenizer.json": sri(files["tokenizer.json"]),
        "tokenizer_config.json": sri(files["tokenizer_config.json"])}
    assert record["webslm"]["toolchain_id"] == standin.id
    assert record["webslm"]["system_prompt"] == "Be brief."

    statement = json.loads((dist / "provenance.json").read_text())
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects == {k: v for k, v in files.items()
                        if k not in ("provenance.json", "webllm-app-config.json")}
    deps = {d["name"]: d["digest"]["sha256"]
            for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["model/model.safetensors"] == sha256_file(tiny_qwen2 / "model.safetensors")
    assert deps["toolchain"] == standin.id
    assert (dist / "provenance.json").read_text().endswith("}\n")


@pytest.mark.docker
def test_a_rebuild_hits_the_cache_and_gives_the_same_bytes(standin, tiny_qwen2: Path,
                                                           tmp_path: Path) -> None:
    spec = resolve_spec(model=str(tiny_qwen2), name="tiny")
    first = build_model(spec, options(tmp_path, standin))
    before = digests(first.dist)
    second = build_model(spec, options(tmp_path, standin))
    assert [s for s in TOOL_STAGES if first.cache_hits[s]] == []
    assert [s for s in TOOL_STAGES if second.cache_hits[s]] == list(TOOL_STAGES)
    assert digests(second.dist) == before
    assert second.stage_digests == first.stage_digests


@pytest.mark.docker
def test_each_change_misses_exactly_the_stages_that_read_it(standin, tiny_qwen2: Path,
                                                            tmp_path: Path) -> None:
    model = copy_model(tiny_qwen2, tmp_path / "model")
    spec = resolve_spec(model=str(model), name="tiny")
    build_model(spec, options(tmp_path, standin))

    def missed(result) -> list[str]:
        return [s for s in TOOL_STAGES if not result.cache_hits[s]]

    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one byte of one tensor, header intact
    weights.write_bytes(bytes(data))
    assert missed(build_model(spec, options(tmp_path, standin))) == ["stage", "convert_weight"]

    smaller = resolve_spec(model=str(model), name="tiny", context_window_size=2048)
    assert missed(build_model(smaller, options(tmp_path, standin))) == ["gen_config", "compile"]

    other = standin_toolchain(standin.image, WEBSLM_STANDIN_MARK="another toolchain")
    assert other.id != standin.id
    assert missed(build_model(smaller, options(tmp_path, other))) == list(TOOL_STAGES)


@pytest.mark.docker
def test_no_cache_rebuilds_every_stage(standin, tiny_qwen2: Path, tmp_path: Path) -> None:
    spec = resolve_spec(model=str(tiny_qwen2), name="tiny")
    cached = build_model(spec, options(tmp_path, standin))
    fresh = build_model(spec, options(tmp_path, standin, use_cache=False))
    assert not any(fresh.cache_hits.values())
    assert fresh.stage_digests == cached.stage_digests


@pytest.mark.docker
def test_outputs_do_not_depend_on_the_build_conditions(standin, tiny_qwen2: Path,
                                                       tmp_path: Path) -> None:
    """What verify relies on: another folder, uid, TZ, locale, umask, hostname, file order."""
    spec = resolve_spec(model=str(tiny_qwen2), name="tiny")
    normal = build_model(spec, options(tmp_path, standin, use_cache=False))
    varied = Variation(work_root=tmp_path / "elsewhere", uid=4321, gid=4321,
                       tz="Asia/Kathmandu", locale="C", umask=0o077, hostname="other-host",
                       reverse_input_order=True)
    rebuilt = build_model(spec, options(tmp_path, standin, use_cache=False, variation=varied,
                                        out=tmp_path / "dist2"))
    assert rebuilt.stage_digests == normal.stage_digests
    assert rebuilt.provenance == normal.provenance
    elsewhere = build_model(spec, options(tmp_path, standin, use_cache=False,
                                          out=tmp_path / "dist3",
                                          base_url="https://cdn.example/models"))
    assert elsewhere.stage_digests == normal.stage_digests  # the AppConfig is not a build output


@pytest.mark.docker
@pytest.mark.parametrize("leak", ["time", "hostpath"])
def test_a_non_reproducible_toolchain_shows_in_the_compile_digest(
        standin_image: str, tiny_qwen2: Path, tmp_path: Path, leak: str) -> None:
    leaky = standin_toolchain(standin_image, WEBSLM_STANDIN_NONDETERMINISM=leak)
    spec = resolve_spec(model=str(tiny_qwen2), name="tiny")
    first = build_model(spec, options(tmp_path, leaky, use_cache=False))
    second = build_model(spec, options(tmp_path, leaky, use_cache=False,
                                       variation=Variation(work_root=tmp_path / "w2")))
    differing = [s for s in first.stage_digests
                 if first.stage_digests[s] != second.stage_digests[s]]
    assert differing == ["compile", "package"]


def built_then_switched(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        image: str, name: str = "tiny",
                        **env: str) -> tuple[list[str], Path, dict[str, str]]:
    """Build once through the CLI, then point it at a stand-in with test settings `env`."""
    out = tmp_path / "dist"
    argv = ["build", "--model", str(tiny), "--name", name, "--out", str(out)]
    assert main(argv) == 0
    before = digests(out / name)
    switched = standin_toolchain(image, **env)
    monkeypatch.setattr("webslm.toolchain.current_toolchain", lambda: switched)
    return argv, out, before


@pytest.mark.docker
def test_a_failing_stage_keeps_the_previous_dist_and_names_its_log(
        standin, standin_image: str, tiny_qwen2: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    argv, out, before = built_then_switched(tiny_qwen2, tmp_path, monkeypatch, standin_image,
                                            WEBSLM_STANDIN_FAIL="compile")
    capsys.readouterr()
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("webslm: error: compile failed for tiny-q4f16_1 (exit 1)")
    assert "compile failed (WEBSLM_STANDIN_FAIL)" in error
    log = Path(error.split("full log: ")[1])
    assert "mlc_llm compile" in log.read_text()
    assert digests(out / "tiny") == before
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]


@pytest.mark.docker
@pytest.mark.parametrize("sleep, interrupted", [
    ("compile:120", {"compile"}),
    ("convert_weight:120,compile:120", {"convert_weight", "compile"}),  # both branches at once
])
def test_an_interrupted_build_keeps_the_previous_dist(
        standin, standin_image: str, tiny_qwen2: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, docker_engine, sleep: str,
        interrupted: set[str]) -> None:
    name = unique_name("tiny")  # other builds on this shared engine are not ours
    argv, out, before = built_then_switched(tiny_qwen2, tmp_path, monkeypatch, standin_image,
                                            name, WEBSLM_STANDIN_SLEEP=sleep)
    model_id = f"{name}-q4f16_1"
    watcher = interrupt_when(lambda: interrupted <= running_stages(docker_engine, model_id))
    assert main(argv) == 130, watcher.report()
    assert seconds_after_firing(watcher) < 30  # not the stages' 120 s
    watcher.join()
    assert digests(out / name) == before
    assert sorted(p.name for p in out.iterdir()) == [name]
    assert containers_of(docker_engine, model_id) == []


@pytest.mark.docker
def test_the_no_aslr_seccomp_profile_lets_stages_run_under_setarch(
        standin, tiny_qwen2: Path, tmp_path: Path) -> None:
    profile = Path(__file__).resolve().parent.parent / "docker" / "seccomp-no-aslr.json"
    spec = resolve_spec(model=str(tiny_qwen2), name="tiny")
    plain = build_model(spec, options(tmp_path, standin, use_cache=False))
    no_aslr = replace(standin, seccomp_profile=profile)
    confined = build_model(spec, options(tmp_path, no_aslr, use_cache=False,
                                         out=tmp_path / "dist2"))
    assert confined.stage_digests == plain.stage_digests
    log = (tmp_path / "cache" / "logs" / "tiny-q4f16_1" / "compile.log").read_text()
    assert log.startswith("$ setarch -R mlc_llm compile")


@pytest.mark.docker
def test_several_models_build_at_once(standin, tiny_qwen2: Path, tmp_path: Path) -> None:
    specs = [resolve_spec(model=str(tiny_qwen2), name="tiny-a"),
             resolve_spec(model=str(tiny_qwen2), name="tiny-b", quantization="q4f32_1")]
    results = build_many(specs, options(tmp_path, standin), jobs=2)
    assert [r.dist.name for r in results] == ["tiny-a", "tiny-b"]
    f32 = json.loads((results[1].dist / "webllm-app-config.json").read_text())["model_list"][0]
    assert "required_features" not in f32
    assert (results[1].dist / "ndarray-cache-b16.json").is_file()
    assert (results[1].dist / "libs/tiny-b-q4f32_1-webgpu.wasm").is_file()


@pytest.mark.docker
def test_a_missing_toolchain_image_says_how_to_build_it(
        standin, tiny_qwen2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    absent = replace(standin, image="webslm-toolchain:absent-" + hashlib.sha256(b"x").hexdigest())
    monkeypatch.setattr("webslm.toolchain.current_toolchain", lambda: absent)
    out = tmp_path / "dist"
    assert main(["build", "--model", str(tiny_qwen2), "--out", str(out)]) == 3
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "run: invoke toolchain" in error
    assert not out.exists()


@pytest.mark.docker
def test_a_finetunes_system_prompt_reaches_the_chat_config(standin, tiny_qwen2: Path,
                                                            tmp_path: Path) -> None:
    model = copy_model(tiny_qwen2, tmp_path / "finetuned")
    finetune = {"base_model": "Qwen/Qwen2.5-0.5B-Instruct", "base_revision": None,
                "data_digest": "sha256:" + "0" * 64, "system_prompt": "You explain insurance.",
                "recipe": {"lora_r": 16}, "webslm_version": "0.1.0"}
    (model / "webslm.json").write_text(json.dumps(finetune))
    result = build_model(resolve_spec(model=str(model), name="helper"),
                         options(tmp_path, standin))
    chat = json.loads((result.dist / "mlc-chat-config.json").read_text())
    assert chat["conv_template"]["system_message"] == "You explain insurance."
    record = json.loads((result.dist / "webllm-app-config.json").read_text())["model_list"][0]
    assert record["webslm"]["finetune"] == finetune
    assert record["webslm"]["system_prompt"] == "You explain insurance."
    assert not (result.dist / "webslm.json").exists()
