"""The container stages' runtime: one Docker engine, the image a stage runs in, and how a stage
runs in it (read-only image, no network, bind mounts, labels that let a later build remove what a
dead one left, and a stop switch that kills every stage at once).

This is the lowest layer that touches Docker: it knows an image by its reference (`StageImage`),
never the toolchain that names it (webslm.toolchain builds on this module, not the reverse).

`Variation` is the set of conditions a verifying rebuild changes without changing what a stage is
asked to do; the container honours every one of them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webslm.errors import MissingEnvironment, StageFailed
from webslm.files import atomic_write_text, owner_alive, owner_token
from webslm.redaction import redact

OUT_MOUNT = "/out"
WORK_DIR = "/tmp"
DEFAULT_HOSTNAME = "webslm-build"
LOG_TAIL_LINES = 3
OWNER_LABEL = "webslm.owner"  # the building process's owner_token
HOST_LABEL = "webslm.host"  # ... on this host (tokens mean nothing elsewhere)


@dataclass(frozen=True)
class StageImage:
    """The image the container stages run in, with what every stage in it gets: the lock's
    environment and the seccomp profile (None: Docker's default)."""

    ref: str
    env: Mapping[str, str]
    seccomp_profile: Path | None = None


@dataclass(frozen=True)
class Variation:
    """Conditions a rebuild may change that must not change any output (used by verify).

    Every field left at None keeps the normal setting. The container stages honour all of them:
    another host folder for the build area, another container uid/gid, TZ, locale, umask and
    hostname, and the model's files staged and listed in reverse order.
    """

    work_root: Path | None = None
    uid: int | None = None
    gid: int | None = None
    tz: str | None = None
    locale: str | None = None
    umask: int | None = None
    hostname: str | None = None
    reverse_input_order: bool = False


def container_command(argv: Sequence[str], *, no_aslr: bool, umask: int | None) -> list[str]:
    """The tool's argv, under `setarch -R` (ASLR off) and with a umask when asked."""
    command = (["setarch", "-R"] if no_aslr else []) + list(argv)
    if umask is not None:
        return ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *command]
    return command


def container_environment(toolchain_env: Mapping[str, str],
                          variation: Variation) -> dict[str, str]:
    """The lock's determinism settings, a writable HOME, and what the variation overrides."""
    env = {**dict(toolchain_env), "HOME": WORK_DIR}
    if variation.tz is not None:
        env["TZ"] = variation.tz
    if variation.locale is not None:
        env["LC_ALL"] = env["LANG"] = variation.locale
    return env


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(no output)"


def docker_client() -> Any:
    """A Docker SDK client that answered a ping; MissingEnvironment when no engine answers."""
    try:
        import docker  # loaded with the engine only: `webslm spec` and friends run without it
    except ImportError as error:
        raise MissingEnvironment("the Python Docker SDK is not installed",
                                 "run: pip install docker (or bash .ci/setup)") from error
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as error:  # DockerException, requests errors, socket errors
        raise MissingEnvironment(f"no Docker engine answers ({type(error).__name__})",
                                 "start it (e.g. `dockerd &` or `bash .ci/setup`)") from error
    return client


def image_id(client: Any, ref: str) -> str | None:
    """The ID of an image in the engine, None when it has none; its other errors propagate."""
    import docker.errors  # the SDK loads with the engine, never for commands that need none

    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        return None


def image_exists(client: Any, ref: str) -> bool:
    """Whether the engine has an image; its other errors propagate."""
    return image_id(client, ref) is not None


class StageStopped(Exception):
    """A stage ended because another branch of the build failed or was interrupted."""


@dataclass(frozen=True)
class ContainerRun:
    """Everything one container stage run needs, apart from the engine."""

    stage: str
    model_id: str
    argv: tuple[str, ...]
    inputs: Mapping[str, Path]  # in-container path -> host folder (mounted read-only)
    output: Path
    log: Path


class Engine:
    """The Docker engine and the image the container stages run in."""

    def __init__(self, image: StageImage, variation: Variation | None = None, *,
                 cpus: float | None = None, memory: int | None = None) -> None:
        self.image = image
        self.variation = variation or Variation()
        self.cpus, self.memory = cpus, memory
        self.client = docker_client()
        try:
            found = image_id(self.client, image.ref)
        except Exception as error:  # the engine's errors, from a module loaded only with it
            raise MissingEnvironment(f"the Docker engine failed to inspect {image.ref}: "
                                     f"{error}", "check `docker info`") from error
        if found is None:
            raise MissingEnvironment(f"toolchain image {image.ref} is not in the local "
                                     "Docker engine", "run: invoke toolchain")
        self.image_digest = found
        self.seccomp = (image.seccomp_profile.read_text(encoding="utf-8")
                        if image.seccomp_profile is not None else None)
        self.lock = threading.Lock()
        self.running: list[Any] = []  # containers started and not yet removed
        self.stopping = False
        self.owner = owner_token()
        self.remove_orphans()

    def remove_orphans(self) -> None:
        """Remove stage containers left by builds on this host whose process is gone."""
        host = socket.gethostname()
        # the list endpoint's own records: inspecting each one races with builds that remove
        # theirs meanwhile (one daemon serves every build on the host)
        for record in self.client.api.containers(
                all=True, filters={"label": [OWNER_LABEL, f"{HOST_LABEL}={host}"]}):
            if not owner_alive((record.get("Labels") or {}).get(OWNER_LABEL, "")):
                with contextlib.suppress(Exception):
                    self.client.api.remove_container(record["Id"], force=True)

    def stop(self) -> None:
        """Kill every running stage container and start no more (another branch failed)."""
        with self.lock:
            self.stopping = True
            running = list(self.running)
        for container in running:
            with contextlib.suppress(Exception):
                container.kill()

    def run(self, job: ContainerRun) -> None:
        """Run one stage; StageFailed (with the log's last lines and its path) on failure,
        StageStopped when stop() ended it."""
        from docker.types import Mount  # the Docker SDK loads only when a stage runs

        variation = self.variation
        uid = variation.uid if variation.uid is not None else os.getuid()
        gid = variation.gid if variation.gid is not None else os.getgid()
        mounts = [Mount(target, str(source), type="bind", read_only=True)
                  for target, source in sorted(job.inputs.items())]
        mounts.append(Mount(OUT_MOUNT, str(job.output), type="bind", read_only=False))
        os.chmod(job.output, 0o777)  # writable by whichever uid the container runs as
        command = container_command(job.argv, no_aslr=self.seccomp is not None,
                                    umask=variation.umask)
        container = self.client.containers.create(
            self.image.ref, command,
            user=f"{uid}:{gid}", working_dir=WORK_DIR,
            environment=container_environment(self.image.env, variation),
            network_disabled=True, network_mode="none",
            mounts=mounts, tmpfs={WORK_DIR: "rw,exec,mode=1777"},
            read_only=True,  # the image (emscripten's frozen cache included) is never written
            hostname=variation.hostname or DEFAULT_HOSTNAME,
            nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
            mem_limit=self.memory,
            security_opt=[f"seccomp={self.seccomp}"] if self.seccomp else None,
            labels={"webslm.stage": job.stage, "webslm.model_id": job.model_id,
                    OWNER_LABEL: self.owner, HOST_LABEL: socket.gethostname()},
        )
        try:
            with self.lock:
                if self.stopping:
                    raise StageStopped(job.stage)
                self.running.append(container)
            container.start()
            status = container.wait()
            logs = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        except BaseException:
            with contextlib.suppress(Exception):
                container.kill()
            raise
        finally:
            with contextlib.suppress(Exception):
                container.remove(force=True)
            with self.lock:
                if container in self.running:
                    self.running.remove(container)
            os.chmod(job.output, 0o755)
        if self.stopping:
            raise StageStopped(job.stage)
        job.log.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(job.log, redact("$ " + " ".join(command) + "\n" + logs))
        code = int(status.get("StatusCode", 1))
        if code != 0:
            raise StageFailed(f"{job.stage} failed for {job.model_id} (exit {code}): "
                              f"{log_tail(logs)}", f"full log: {job.log}")


class StopSwitch:
    """Stops the container stages of every build that shares it: Ctrl-C while `--jobs` builds
    run in worker threads reaches only the main thread, which presses it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.engines: list[Engine] = []
        self.pressed = False

    def attach(self, engine: Engine) -> None:
        with self.lock:
            self.engines.append(engine)
            pressed = self.pressed
        if pressed:
            engine.stop()

    def press(self) -> None:
        with self.lock:
            self.pressed = True
            engines = list(self.engines)
        for engine in engines:
            engine.stop()
