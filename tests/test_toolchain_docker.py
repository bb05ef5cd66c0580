"""The Debian-only stage of docker/Dockerfile built for real from the locally made base image
(standing in for the pinned digest, which cannot be pulled here) with the lock's exact apt
versions, and the seccomp profile that lets stages turn address-space randomization off.
The stage image is cached by a tag derived from the toolchain ID, so reruns are instant."""

from __future__ import annotations

import pytest

from webslm import toolchain

pytestmark = pytest.mark.docker
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"


@pytest.fixture(scope="session")
def base_stage(docker_engine, debian_base_image: str) -> str:  # noqa: ANN001
    return toolchain.ensure_stage(docker_engine, "base", base_image=debian_base_image,
                                  debian_archive=DEBIAN_MIRROR,
                                  debian_security_archive=DEBIAN_SECURITY_MIRROR)


def _run(client, image: str, script: str, **options) -> str:  # noqa: ANN001, ANN003
    output = client.containers.run(image, ["bash", "-o", "pipefail", "-c", script], remove=True,
                                   network_disabled=True, **options)
    return output.decode()


def test_base_stage_has_static_llvm_with_polly(docker_engine, base_stage: str) -> None:  # noqa: ANN001
    major = toolchain.load_lock().llvm_major
    out = _run(docker_engine, base_stage,
               f"llvm-config-{major} --link-static --libs > /tmp/libs && "
               f"llvm-config-{major} --link-static --system-libs && "
               f"ls /usr/lib/llvm-{major}/lib/libPolly.a && wc -w < /tmp/libs && "
               f"llvm-config-{major} --version")
    assert f"/usr/lib/llvm-{major}/lib/libPolly.a" in out
    assert out.strip().splitlines()[-1].startswith(f"{major}.")
    assert int(out.strip().splitlines()[-2]) > 50  # the static component libraries


def test_base_stage_has_exactly_the_pinned_apt_versions(docker_engine, base_stage: str) -> None:  # noqa: ANN001
    lock = toolchain.load_lock()
    out = _run(docker_engine, base_stage,
               "dpkg-query -W -f='${Package}=${Version}\\n' " + " ".join(lock.apt_packages))
    installed = dict(line.split("=", 1) for line in out.split())
    assert installed == dict(lock.apt_packages)


def test_base_stage_carries_the_determinism_settings(docker_engine, base_stage: str) -> None:  # noqa: ANN001
    env = docker_engine.images.get(base_stage).attrs["Config"]["Env"]
    lock = toolchain.load_lock()
    for key, value in toolchain.determinism_env(lock).items():
        assert f"{key}={value}" in env
    assert any(e.startswith("CFLAGS=-ffile-prefix-map=") for e in env)
    assert any(e.startswith("EMCC_CFLAGS=-ffile-prefix-map=") for e in env)


def test_seccomp_profile_lets_setarch_turn_aslr_off(docker_engine, debian_base_image: str) -> None:  # noqa: ANN001
    profile = toolchain.current_toolchain().seccomp_profile
    assert profile is not None
    script = "setarch -R cat /proc/self/personality"
    out = _run(docker_engine, debian_base_image, script, user="1000:1000",
               security_opt=[f"seccomp={profile.read_text()}"])
    assert int(out.strip(), 16) & 0x0040000  # ADDR_NO_RANDOMIZE
    import docker.errors

    with pytest.raises(docker.errors.ContainerError):  # Docker's default profile refuses it
        _run(docker_engine, debian_base_image, script, user="1000:1000")


def test_seccomp_profile_still_refuses_dangerous_calls(docker_engine,  # noqa: ANN001
                                                       debian_base_image: str) -> None:
    profile = toolchain.current_toolchain().seccomp_profile
    assert profile is not None
    out = _run(docker_engine, debian_base_image,
               "unshare --user true && echo allowed || echo refused",
               security_opt=[f"seccomp={profile.read_text()}"])
    assert out.strip().endswith("refused")
