"""The Debian-only stages of docker/Dockerfile built for real (base and fetch; the image's
bytecode step run in them), and the seccomp profile that lets stages turn address-space
randomization off.

The product installs the lock's exact versions from the snapshot archive, which this machine cannot
reach. The live mirror moves (a lock version disappears when Debian updates it), so this test asks
the live mirror, at test time and from inside the base image, which version of each locked package
it serves, builds the `base` stage with exactly those versions through the product's own path
(mmdebstrap base, apt_install.sh, the Dockerfile), and checks that exactly those got installed.
The stage's cache tag covers those versions and the base image's ID: a mirror that moved makes a
new tag, so a cached image never stands in for a build that would fail today."""

from __future__ import annotations

import socket

import pytest

from webslm import toolchain
from webslm.container import OUT_MOUNT, WORK_DIR, ContainerRun, Engine, StageImage
from webslm.errors import MissingEnvironment, StageFailed
from webslm.toolchain import Toolchain, build

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def live_versions(docker_engine, live_base) -> dict[str, str]:
    """name -> version the live mirror serves now, for every apt package the lock pins."""
    names = sorted(toolchain.load_lock().apt_packages)
    versions = build.apt_candidates(docker_engine, live_base, names)
    assert sorted(versions) == names and all(versions.values()), versions
    return versions


@pytest.fixture(scope="session")
def base_stage(docker_engine, live_base, live_versions: dict[str, str]) -> str:
    return build.ensure_stage(docker_engine, "base", base=live_base, apt_packages=live_versions)


@pytest.fixture(scope="session")
def fetch_stage(docker_engine, live_base, live_versions: dict[str, str]) -> str:
    """The base stage plus the build context's scripts, as every fetching stage starts."""
    return build.ensure_stage(docker_engine, "fetch", base=live_base, apt_packages=live_versions)


def _run(client, image: str, script: str, **options) -> str:
    output = client.containers.run(image, ["bash", "-o", "pipefail", "-c", script], remove=True,
                                   network_disabled=True, **options)
    return output.decode()


def test_base_stage_has_static_llvm_with_polly(docker_engine, base_stage: str) -> None:
    major = toolchain.load_lock().llvm_major
    out = _run(docker_engine, base_stage,
               f"llvm-config-{major} --link-static --libs > /tmp/libs && "
               f"llvm-config-{major} --link-static --system-libs && "
               f"ls /usr/lib/llvm-{major}/lib/libPolly.a && wc -w < /tmp/libs && "
               f"llvm-config-{major} --version")
    assert f"/usr/lib/llvm-{major}/lib/libPolly.a" in out
    assert out.strip().splitlines()[-1].startswith(f"{major}.")
    assert int(out.strip().splitlines()[-2]) > 50  # the static component libraries


def test_base_stage_has_exactly_the_versions_it_was_built_with(
        docker_engine, base_stage: str, live_versions: dict[str, str]) -> None:
    out = _run(docker_engine, base_stage,
               "dpkg-query -W -f='${Package}=${Version}\\n' " + " ".join(live_versions))
    installed = dict(line.split("=", 1) for line in out.split())
    assert installed == live_versions


def test_the_stage_tag_covers_the_installed_versions(live_base) -> None:
    lock = toolchain.load_lock()
    identifier = toolchain.toolchain_id()
    names = sorted(lock.apt_packages)
    today = toolchain.build_args(lock, identifier, base=live_base,
                                 apt_packages=dict.fromkeys(names, "1.0"))
    moved = toolchain.build_args(lock, identifier, base=live_base,
                                 apt_packages={**dict.fromkeys(names, "1.0"), names[0]: "1.0+u1"})
    assert build.stage_tag(identifier, "base", today) != \
        build.stage_tag(identifier, "base", moved)


def test_base_stage_carries_the_determinism_settings(docker_engine, base_stage: str) -> None:
    env = docker_engine.images.get(base_stage).attrs["Config"]["Env"]
    lock = toolchain.load_lock()
    for key, value in toolchain.determinism_env(lock).items():
        assert f"{key}={value}" in env
    assert any(e.startswith("CFLAGS=-ffile-prefix-map=") for e in env)
    assert any(e.startswith("EMCC_CFLAGS=-ffile-prefix-map=") for e in env)


def test_the_image_bytecode_step_gives_two_venvs_byte_identical_pyc(docker_engine,
                                                                   fetch_stage: str) -> None:
    """The Dockerfile's bytecode step (compile_bytecode.py, as the image's stages hold it) over
    a venv of the image's Python (pip and setuptools) at /opt/venv, as in the image, in two
    containers whose sources have other mtimes and other hash seeds: the same .pyc bytes."""
    script = ("python3 -m venv /opt/venv && find /opt/venv -name '*.py' -exec touch -d @{} {{}} + "
              "&& /opt/venv/bin/python3 /opt/webslm/scripts/compile_bytecode.py /opt/venv >&2 "
              "&& cd /opt/venv && find . -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum")
    first = _run(docker_engine, fetch_stage, script.format(1_000_000_000),
                 environment={"PYTHONHASHSEED": "1"})
    second = _run(docker_engine, fetch_stage, script.format(1_700_000_000),
                  environment={"PYTHONHASHSEED": "random"})
    assert first == second and first.count("\n") > 500


def test_seccomp_profile_lets_setarch_turn_aslr_off(docker_engine, debian_base_image: str) -> None:
    profile = toolchain.current_toolchain().seccomp_profile
    assert profile is not None
    script = "setarch -R cat /proc/self/personality"
    out = _run(docker_engine, debian_base_image, script, user="1000:1000",
               security_opt=[f"seccomp={profile.read_text()}"])
    assert int(out.strip(), 16) & 0x0040000  # ADDR_NO_RANDOMIZE
    import docker.errors

    with pytest.raises(docker.errors.ContainerError):  # Docker's default profile refuses it
        _run(docker_engine, debian_base_image, script, user="1000:1000")


def test_seccomp_profile_still_refuses_dangerous_calls(docker_engine,
                                                       debian_base_image: str) -> None:
    profile = toolchain.current_toolchain().seccomp_profile
    assert profile is not None
    out = _run(docker_engine, debian_base_image,
               "unshare --user true && echo allowed || echo refused",
               security_opt=[f"seccomp={profile.read_text()}"])
    assert out.strip().endswith("refused")


def test_stage_containers_cannot_write_the_image(docker_engine, debian_base_image: str,
                                                 tmp_path) -> None:
    """The pipeline's container set-up (webslm.container.Engine) runs a stage with the image
    read-only, emscripten's frozen cache included: only /out and the work area are writable."""
    engine = Engine(StageImage(ref=debian_base_image, env={"EM_CACHE": "/opt/emscripten-cache"}))

    def stage(name: str, script: str) -> None:
        out = tmp_path / name
        out.mkdir()
        engine.run(ContainerRun(stage=name, model_id="m", argv=("sh", "-c", script), inputs={},
                                output=out, log=tmp_path / f"{name}.log"))

    stage("writable", f"echo ok > {OUT_MOUNT}/x && echo ok > {WORK_DIR}/y && ls /usr/lib")
    assert (tmp_path / "writable" / "x").read_text() == "ok\n"
    for target in ('"$EM_CACHE"', "/usr/lib"):
        with pytest.raises(StageFailed):
            stage(f"write-{len(target)}", f"mkdir -p {target}/new")
        assert "Read-only file system" in (tmp_path / f"write-{len(target)}.log").read_text()


def test_a_push_to_an_unreachable_registry_is_missing_environment(docker_engine,
                                                                  debian_base_image: str) -> None:
    """The real engine pushing a real image to a registry that is not there: exit 3."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    image = Toolchain(id="0" * 64, image=debian_base_image, lock_digest="", webllm_version="",
                      env={}, seccomp_profile=None)
    target = f"127.0.0.1:{port}/webslm-push-test"
    try:
        with pytest.raises(MissingEnvironment, match=f"push to {target}:000000000000 failed"):
            build.push_image(docker_engine, target, image)
    finally:
        docker_engine.images.remove(f"{target}:000000000000")  # the tag this test made
