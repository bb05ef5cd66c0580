"""`invoke build`: turn a model into a folder WebLLM loads as it is, hermetically, cached, stamped.

Stages, each taking input files to a fresh output folder:

  resolve         the model argument -> a checked local folder (webslm.hub); bad input stops here,
                  before any container starts or any file is written
  stage           copy the files a build uses into the build area; normalize config.json; write
                  the safetensors index convert_weight needs (webslm.safetensors_index)
  convert_weight  mlc_llm convert_weight (container) -> params_shard_N.bin, ndarray-cache.json
  gen_config      mlc_llm gen_config (container)     -> mlc-chat-config.json, tokenizer files
  compile         mlc_llm compile --device webgpu    -> <name>-<quant>-webgpu.wasm
  package         dist/<name>/: copies of the outputs, the rewritten chat config (webslm.webllm),
                  the AppConfig and provenance.json (webslm.provenance), swapped into place whole

The output folder is checked before any container starts: never the model folder, inside it or
around it, and never a file or a folder webslm did not write (one without provenance.json).
Stage containers are labelled with their build's process token and host; a build that was
killed leaves them behind, and the next build removes them. SIGTERM stops a build like Ctrl-C
(webslm.cli): the running containers are removed and nothing half-written stays.

They form a graph, not a line: compile reads only gen_config's chat config, never the weights,
and only package reads convert_weight's output. So the two branches run at once, each stage in
its own container, and a failure (or Ctrl-C) in one stops the other:

  stage ─┬─ convert_weight ──────────────┐
         └─ gen_config ── compile ───────┴─ package

A stage's output is cached under a key naming the stage, the toolchain ID, the digests of exactly
the files it reads and its arguments (webslm.cache); a hit skips it. Container stages see only
those files (mounted read-only at fixed paths), no network, the host's uid:gid, a fixed working
folder and the lock's determinism settings. A `Variation` changes the conditions a container
stage runs under without changing what it is asked to do: `webslm verify` rebuilds with one and
compares the per-stage output digests in BuildResult to find the first stage that differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webslm import safetensors_index
from webslm.cache import CacheEntry, StageCache, StageKey, default_cache_dir, tree_digest
from webslm.errors import BadInput, MissingEnvironment, StageFailed, WebslmError
from webslm.files import (
    atomic_directory,
    atomic_write_text,
    canonical_json,
    check_replaceable,
    check_writable,
    clone_or_copy,
    owner_alive,
    owner_token,
)
from webslm.hub import PICKLE_SUFFIXES
from webslm.provenance import APP_CONFIG_FILE, PROVENANCE_FILE, hash_files, list_files

if TYPE_CHECKING:
    from rich.progress import Progress

    from webslm.hub import ResolvedModel
    from webslm.spec import BuildSpec
    from webslm.toolchain import Toolchain

STAGES = ("resolve", "stage", "convert_weight", "gen_config", "compile", "package")
MODEL_MOUNT = "/in/model"
CONFIG_MOUNT = "/in/config"
OUT_MOUNT = "/out"
WORK_DIR = "/tmp"
DEFAULT_HOSTNAME = "webslm-build"
LOG_TAIL_LINES = 3
CHAT_CONFIG = "mlc-chat-config.json"
GENERATION_CONFIG = "generation_config.json"
FINETUNE_FILE = "webslm.json"
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
WEIGHT_INDEXES = (safetensors_index.INDEX_FILE, "pytorch_model.bin.index.json")
# The code the `stage` step runs on the model's files: a change to it is a change of stage key.
STAGE_SOURCES = tuple(Path(__file__).with_name(name)
                      for name in ("normalize.py", "safetensors_index.py"))
OWNER_LABEL = "webslm.owner"  # the building process's owner_token
HOST_LABEL = "webslm.host"  # ... on this host (tokens mean nothing elsewhere)


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


@dataclass(frozen=True)
class BuildOptions:
    """How to build (not what: that is the BuildSpec)."""

    out: Path
    base_url: str | None = None
    use_cache: bool = True
    allow_pickle: bool = False
    cpus: float | None = None
    memory: str | None = None
    toolchain: Toolchain | None = None  # None: webslm.toolchain.current_toolchain()
    cache_dir: Path | None = None  # None: $XDG_CACHE_HOME/webslm
    variation: Variation = field(default_factory=Variation)
    show_progress: bool = True
    model_folder: Path | None = None  # a local model's folder, when not at spec.model from here
    model_digests: Mapping[str, str] | None = None  # its files' digests, when already hashed
    overlap: bool = True  # run convert_weight beside gen_config -> compile (False: one by one)


@dataclass(frozen=True)
class StageResult:
    """One stage's output: its folder (valid during the build), file digests and cache status."""

    name: str
    path: Path
    files: Mapping[str, str]
    cache_key: str
    cached: bool

    @property
    def digest(self) -> str:
        return tree_digest(self.files)


@dataclass(frozen=True)
class BuildResult:
    """A finished build: where it is, its provenance, and per-stage digests and cache hits."""

    spec: BuildSpec
    dist: Path
    provenance: Mapping[str, Any]
    stage_digests: Mapping[str, str]
    cache_hits: Mapping[str, bool]


# ---------------------------------------------------------------------------- pure parts


def weight_files(names: Sequence[str]) -> list[str]:
    return [n for n in names if n.endswith(WEIGHT_SUFFIXES) or n in WEIGHT_INDEXES]


def convert_inputs(names: Sequence[str]) -> list[str]:
    """What convert_weight reads: the config and the weights."""
    return ["config.json", *weight_files(names)]


def gen_config_inputs(names: Sequence[str]) -> list[str]:
    """What gen_config reads: the configs and tokenizer files, never the weights."""
    weights = set(weight_files(names))
    return [n for n in names if n not in weights and n != FINETUNE_FILE]


def source_format(names: Sequence[str]) -> str:
    return ("huggingface-safetensor" if any(n.endswith(".safetensors") for n in names)
            else "huggingface-torch")


def convert_command(spec: BuildSpec, names: Sequence[str]) -> list[str]:
    return ["mlc_llm", "convert_weight", f"{MODEL_MOUNT}/config.json",
            "--quantization", spec.quantization, "--model-type", spec.model_type,
            "--device", "cpu", "--source", MODEL_MOUNT, "--source-format", source_format(names),
            "-o", OUT_MOUNT]


def gen_config_command(spec: BuildSpec) -> list[str]:
    return ["mlc_llm", "gen_config", f"{MODEL_MOUNT}/config.json",
            "--quantization", spec.quantization, "--model-type", spec.model_type,
            "--conv-template", spec.conv_template,
            "--context-window-size", str(spec.context_window_size),
            "--prefill-chunk-size", str(spec.prefill_chunk_size), "-o", OUT_MOUNT]


def compile_command(spec: BuildSpec) -> list[str]:
    from webslm.webllm import library_name

    return ["mlc_llm", "compile", f"{CONFIG_MOUNT}/{CHAT_CONFIG}",
            "--quantization", spec.quantization, "--model-type", spec.model_type,
            "--device", "webgpu", "-o", f"{OUT_MOUNT}/{library_name(spec.model_id)}"]


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


# ---------------------------------------------------------------------------- file helpers


def link_files(source: Path, names: Sequence[str], target: Path) -> None:
    """Hard links (copies across file systems) for a container's read-only input view only:
    nothing can write through a read-only mount. Dist files are copies (copy_files)."""
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copyfile(source / name, target / name)


def copy_files(source: Path, names: Sequence[str], target: Path) -> None:
    for name in names:
        clone_or_copy(source / name, target / name)


def check_output_folder(final: Path, model: Path) -> None:
    """The dist folder may not be the model folder, inside it or around it (the swap would
    delete the model), nor a file or a folder webslm did not write; its parent must be
    writable. All before any container starts."""
    out, source = final.resolve(), model.resolve()
    relation = ("is" if out == source else "is inside" if source in out.parents
                else "contains" if out in source.parents else None)
    if relation is not None:
        raise BadInput(f"the output folder {final} {relation} the model folder {model}",
                       "pass an --out (or --name) outside the model folder")
    check_replaceable(final, PROVENANCE_FILE)
    check_writable(final.parent)


def readable_by_anyone(folder: Path) -> None:
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o444)


# ---------------------------------------------------------------------------- containers


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
    """The Docker engine and the toolchain image the container stages run in."""

    def __init__(self, toolchain: Toolchain, options: BuildOptions) -> None:
        from webslm.toolchain import docker_client

        self.toolchain = toolchain
        self.options = options
        self.client = docker_client()
        try:
            self.image_digest = str(self.client.images.get(toolchain.image).id)
        except Exception as error:  # docker.errors.ImageNotFound; docker imported lazily
            if type(error).__name__ != "ImageNotFound":
                raise MissingEnvironment(f"the Docker engine failed to inspect {toolchain.image}: "
                                         f"{error}", "check `docker info`") from error
            raise MissingEnvironment(f"toolchain image {toolchain.image} is not in the local "
                                     "Docker engine", "run: invoke toolchain") from error
        self.seccomp = (toolchain.seccomp_profile.read_text(encoding="utf-8")
                        if toolchain.seccomp_profile is not None else None)
        self.lock = threading.Lock()
        self.running: list[Any] = []  # containers started and not yet removed
        self.stopping = False
        self.owner = owner_token()
        self.remove_orphans()

    def remove_orphans(self) -> None:
        """Remove stage containers left by builds on this host whose process is gone."""
        host = socket.gethostname()
        for container in self.client.containers.list(
                all=True, filters={"label": [OWNER_LABEL, f"{HOST_LABEL}={host}"]}):
            if not owner_alive(container.labels.get(OWNER_LABEL, "")):
                with contextlib.suppress(Exception):
                    container.remove(force=True)

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
        from docker.types import Mount

        variation = self.options.variation
        uid = variation.uid if variation.uid is not None else os.getuid()
        gid = variation.gid if variation.gid is not None else os.getgid()
        mounts = [Mount(target, str(source), type="bind", read_only=True)
                  for target, source in sorted(job.inputs.items())]
        mounts.append(Mount(OUT_MOUNT, str(job.output), type="bind", read_only=False))
        os.chmod(job.output, 0o777)  # writable by whichever uid the container runs as
        command = container_command(job.argv, no_aslr=self.seccomp is not None,
                                    umask=variation.umask)
        container = self.client.containers.create(
            self.toolchain.image, command,
            user=f"{uid}:{gid}", working_dir=WORK_DIR,
            environment=container_environment(self.toolchain.env, variation),
            network_disabled=True, network_mode="none",
            mounts=mounts, tmpfs={WORK_DIR: "rw,exec,mode=1777"},
            read_only=True,  # the image (emscripten's frozen cache included) is never written
            hostname=variation.hostname or DEFAULT_HOSTNAME,
            nano_cpus=int(self.options.cpus * 1e9) if self.options.cpus else None,
            mem_limit=self.options.memory,
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
        atomic_write_text(job.log, "$ " + " ".join(command) + "\n" + logs)
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


# ---------------------------------------------------------------------------- progress


class Display:
    """One rich progress line per stage, on stderr; shared by models built at once."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Progress | None = None
        self.started = False
        self.lock = threading.Lock()
        if enabled:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(finished_text="[green]✓"),
                                     TextColumn("{task.description}"), TimeElapsedColumn(),
                                     console=Console(stderr=True))

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Stop the display at the end; it starts with the first stage shown, so a build that
        fails before any stage leaves only its one-line error on stderr."""
        try:
            yield
        finally:
            if self.progress is not None and self.started:
                self.progress.stop()

    @contextlib.contextmanager
    def stage(self, model_id: str, stage: str) -> Iterator[dict[str, bool]]:
        """Show a stage while it runs; the body sets `state["cached"]` on a cache hit."""
        state = {"cached": False}
        if self.progress is None:
            yield state
            return
        with self.lock:
            if not self.started:
                self.progress.start()
                self.started = True
        label = f"{model_id} {stage}"
        task = self.progress.add_task(label, total=1)
        try:
            yield state
        except StageStopped:
            self.progress.update(task, description=f"[yellow]{label} stopped")
            self.progress.stop_task(task)
            raise
        except BaseException:
            self.progress.update(task, description=f"[red]{label} failed")
            self.progress.stop_task(task)
            raise
        suffix = " [dim](cached)" if state["cached"] else ""
        self.progress.update(task, completed=1, description=label + suffix)


# ---------------------------------------------------------------------------- the build


class Build:
    """One model's build: runs the stages in order and packages the result."""

    def __init__(self, spec: BuildSpec, options: BuildOptions, cache: StageCache,
                 display: Display, scratch: Path, switch: StopSwitch | None = None) -> None:
        self.spec = spec
        self.switch = switch
        self.options = options
        self.toolchain: Toolchain | None = None  # looked up after resolve: bad input first
        self.cache = cache
        self.display = display
        self.scratch = scratch
        self.engine: Engine | None = None
        self.results: dict[str, StageResult] = {}
        self.keys: dict[str, StageKey] = {}
        self.reruns: dict[str, Callable[[], StageResult]] = {}
        self.checked: set[str] = set()  # cached results re-verified since their lookup
        self.check_lock = threading.Lock()  # both branches may read the staged copy
        self.logs = cache.root / "logs" / spec.model_id

    # -- generic stage runner

    def cached_stage(self, name: str, inputs: Mapping[str, str], arguments: Sequence[str],
                     produce: Any, *, verify_hit: bool = True) -> StageResult:
        """Look the stage up in the cache; on a miss run `produce(output_folder)` and store it.

        A hit is verified (every file re-hashed) before it is used; with verify_hit=False that
        waits until a later stage reads the files (`intact`), so a build that hits every stage
        never re-hashes an output nothing reads."""
        assert self.toolchain is not None
        key = StageKey(stage=name, toolchain_id=self.toolchain.id, inputs=dict(inputs),
                       arguments=tuple(arguments))
        self.keys[name] = key
        self.reruns[name] = lambda: self.cached_stage(name, inputs, arguments, produce)
        with self.display.stage(self.spec.model_id, name) as state:
            entry = (self.cache.lookup(key, verify=verify_hit) if self.options.use_cache
                     else None)
            if entry is not None:
                state["cached"] = True
                result = StageResult(name, entry.path, entry.files, key.digest, cached=True)
            else:
                output = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.scratch))
                produce(output)
                files = hash_files(output, list_files(output))
                if self.options.use_cache:
                    entry = self.cache.store(key, output, files)
                    output = entry.path
                result = StageResult(name, output, files, key.digest, cached=False)
        self.results[name] = result
        return result

    def intact(self, result: StageResult) -> StageResult:
        """A cached result checked now that its files are read (once per build); a damaged
        entry was discarded (with a warning) and its stage runs again."""
        with self.check_lock:
            current = self.results[result.name]
            if not current.cached or result.name in self.checked:
                return current
            if not self.cache.intact(self.keys[result.name],
                                     CacheEntry(current.path, current.files)):
                current = self.reruns[result.name]()
                if dict(current.files) != dict(result.files):
                    raise StageFailed(f"{result.name} gave other outputs when run again after "
                                      "its cache entry was damaged", "run the build again")
            self.checked.add(result.name)
            return current

    def container_stage(self, name: str, source: StageResult, names: Sequence[str], mount: str,
                        argv: Sequence[str]) -> StageResult:
        """A tool stage: `names` from `source` mounted read-only at `mount`, argv run on them."""
        inputs = {f"{source.name}/{n}": source.files[n] for n in names}

        def produce(output: Path) -> None:
            view = Path(tempfile.mkdtemp(prefix=f"{name}-in-", dir=self.scratch))
            try:
                order = list(reversed(names)) if self.options.variation.reverse_input_order \
                    else list(names)
                link_files(self.intact(source).path, order, view)
                readable_by_anyone(view)  # whichever uid the container runs as
                assert self.engine is not None
                self.engine.run(ContainerRun(
                    stage=name, model_id=self.spec.model_id, argv=tuple(argv),
                    inputs={mount: view}, output=output, log=self.logs / f"{name}.log"))
            finally:
                shutil.rmtree(view, ignore_errors=True)

        return self.cached_stage(name, inputs, argv, produce)

    # -- the stages

    def resolve(self) -> tuple[ResolvedModel, dict[str, str]]:
        from webslm.hub import resolve_model

        model = resolve_model(self.spec, allow_pickle=self.options.allow_pickle,
                              local_folder=self.options.model_folder)
        self.spec = self.spec.with_model_type(model.model_type)
        digests = dict(self.options.model_digests or hash_files(model.path, model.files))
        self.results["resolve"] = StageResult("resolve", model.path, digests, "", cached=False)
        return model, digests

    def stage_files(self, model: ResolvedModel, digests: Mapping[str, str]) -> StageResult:
        names = list(model.files)
        if self.options.variation.reverse_input_order:
            names.reverse()
        model_type = self.spec.model_type
        stage_code = hashlib.sha256(b"".join(p.read_bytes() for p in STAGE_SOURCES)).hexdigest()

        def produce(output: Path) -> None:
            from webslm.hub import check_safetensors_header
            from webslm.normalize import load_config, normalize_config

            for name in names:
                shutil.copyfile(model.path / name, output / name)
            config = normalize_config(load_config(output / "config.json"), model_type).config
            (output / "config.json").write_text(canonical_json(config), encoding="utf-8")
            if safetensors_index.needs_index(names):
                headers = {n: check_safetensors_header(output / n)
                           for n in names if n.endswith(".safetensors")}
                (output / safetensors_index.INDEX_FILE).write_text(
                    safetensors_index.index_text(safetensors_index.weight_map(headers)),
                    encoding="utf-8")

        inputs = {f"model/{n}": digests[n] for n in names}
        # only container stages that miss read these files: they check them then (intact)
        return self.cached_stage("stage", inputs, ["normalize", model_type, stage_code], produce,
                                 verify_hit=False)

    def run(self) -> BuildResult:
        model, digests = self.resolve()
        check_output_folder(self.options.out / self.spec.name, model.path)
        from webslm.toolchain import chosen_or_current

        self.toolchain = chosen_or_current(self.options.toolchain)
        self.engine = Engine(self.toolchain, self.options)
        if self.switch is not None:
            self.switch.attach(self.engine)
        with self.display.stage(self.spec.model_id, "resolve"):
            pass  # shown once the environment is known good: errors before it stay one line
        staged = self.stage_files(model, digests)
        names = sorted(staged.files)

        def weights_branch() -> StageResult:
            return self.container_stage("convert_weight", staged, convert_inputs(names),
                                        MODEL_MOUNT, convert_command(self.spec, names))

        def library_branch() -> tuple[StageResult, StageResult]:
            chat = self.container_stage("gen_config", staged, gen_config_inputs(names),
                                        MODEL_MOUNT, gen_config_command(self.spec))
            return chat, self.container_stage("compile", chat, [CHAT_CONFIG], CONFIG_MOUNT,
                                              compile_command(self.spec))

        if self.options.overlap:
            weights, (chat, library) = run_branches(weights_branch, library_branch,
                                                    stop=self.engine.stop)
        else:
            weights, (chat, library) = weights_branch(), library_branch()
        if self.engine.stopping:
            raise StageStopped("package")  # interrupted: the previous dist stays
        with self.display.stage(self.spec.model_id, "package"):
            dist, statement = self.package(model, digests, staged, weights, chat, library)
        done = [self.results[name] for name in STAGES]
        return BuildResult(
            spec=self.spec, dist=dist, provenance=statement,
            stage_digests={r.name: r.digest for r in done},
            cache_hits={r.name: r.cached for r in done},
        )

    def package(self, model: ResolvedModel, digests: Mapping[str, str], staged: StageResult,
                weights: StageResult, chat: StageResult,
                library: StageResult) -> tuple[Path, dict[str, Any]]:
        """Write dist/<name>/ whole: outputs, rewritten chat config, AppConfig, provenance."""
        from webslm import provenance, webllm
        from webslm.spec import is_f16

        assert self.toolchain is not None and self.engine is not None

        finetune = read_json(staged.path / FINETUNE_FILE)
        system_prompt = webllm.choose_system_prompt(self.spec.system_prompt, finetune)
        raw_chat = read_json(chat.path / CHAT_CONFIG) or {}
        chat_config = webllm.rewrite_chat_config(
            raw_chat, sampling=webllm.sampling_defaults(read_json(staged.path / GENERATION_CONFIG)),
            system_prompt=system_prompt, tokenizer=read_json(chat.path / "tokenizer.json"))
        lib_name = webllm.library_name(self.spec.model_id)
        final = self.options.out / self.spec.name
        with atomic_directory(final, PROVENANCE_FILE) as folder:
            copy_files(weights.path, sorted(weights.files), folder)
            copy_files(chat.path, sorted(n for n in chat.files if n != CHAT_CONFIG), folder)
            (folder / CHAT_CONFIG).write_text(canonical_json(chat_config), encoding="utf-8")
            clone_or_copy(library.path / lib_name, folder / "libs" / lib_name)
            # copies of verified stage outputs: their digests are known; only the rewritten
            # chat config is new
            outputs = {**weights.files,
                       **{n: d for n, d in chat.files.items() if n != CHAT_CONFIG},
                       f"libs/{lib_name}": library.files[lib_name],
                       **hash_files(folder, [CHAT_CONFIG])}
            statement = provenance.statement(
                outputs=outputs, spec=self.spec.to_json(),
                model={"id": model.repo_id or self.spec.model, "revision": model.revision,
                       "source": "hub" if model.repo_id else "local",
                       "allow_pickle": self.options.allow_pickle},
                inputs=digests, toolchain_id=self.toolchain.id, image=self.toolchain.image,
                image_digest=self.engine.image_digest,
                lock_digest=self.toolchain.lock_digest,
                webllm_version=self.toolchain.webllm_version,
                stages={r.name: {"cache_key": r.cache_key, "output": r.digest}
                        for r in self.results.values() if r.cache_key},
            )
            facts = webllm.PackageFacts(
                name=self.spec.name, model_id=self.spec.model_id,
                quantization=self.spec.quantization, f16=is_f16(self.spec.quantization),
                chat_config=chat_config, chat_config_digest=outputs[CHAT_CONFIG],
                library_digest=outputs[f"libs/{lib_name}"],
                tokenizer_digests={n: outputs[n] for n in chat_config.get("tokenizer_files", [])
                                   if n in outputs},
                weight_digests={n: outputs[n] for n in webllm.weight_files(outputs)},
                weight_bytes=sum((folder / n).stat().st_size
                                 for n in outputs if n.startswith("params_shard_")),
                webllm_version=self.toolchain.webllm_version, toolchain_id=self.toolchain.id,
                system_prompt=system_prompt, finetune=finetune,
            )
            record = webllm.model_record(facts, self.options.base_url or webllm.DEFAULT_BASE_URL)
            (folder / APP_CONFIG_FILE).write_text(canonical_json(webllm.app_config([record])),
                                                  encoding="utf-8")
            (folder / PROVENANCE_FILE).write_text(provenance.render(statement), encoding="utf-8")
        shipped = {n: d for n, d in outputs.items() if n not in provenance.NOT_SUBJECTS}
        self.results["package"] = StageResult("package", final, shipped, "", cached=False)
        return final, statement


def run_branches(first: Callable[[], Any], second: Callable[[], Any], *,
                 stop: Callable[[], None]) -> tuple[Any, Any]:
    """Run two branches of a build at once; return both results.

    When one fails, or the caller is interrupted (Ctrl-C), `stop` kills the other's container and
    both threads are waited for before the first real error is raised: nothing keeps running."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="webslm-branch") as pool:
        futures: list[Future[Any]] = [pool.submit(first), pool.submit(second)]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:
            stop()
            wait(futures)
            raise
        if any(f.exception() is not None for f in done):
            stop()
            wait(futures)
            errors = [e for f in futures if (e := f.exception()) is not None]
            raise next((e for e in errors if not isinstance(e, StageStopped)), errors[0])
        return futures[0].result(), futures[1].result()


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when the file is absent."""
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else None


@contextlib.contextmanager
def scratch_area(options: BuildOptions, cache: StageCache) -> Iterator[Path]:
    """The build area: under the variation's folder, else beside the cache (same file system,
    so finished outputs are renamed into the cache rather than copied)."""
    folder = cache.scratch_folder("build", options.variation.work_root)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_options(options: BuildOptions) -> None:
    from webslm.webllm import check_base_url

    if options.base_url is not None:
        check_base_url(options.base_url)
    if options.cpus is not None and options.cpus <= 0:
        raise BadInput(f"--cpus {options.cpus} is not positive", "pass e.g. --cpus 2")


def build_model(spec: BuildSpec, options: BuildOptions, *, display: Display | None = None,
                switch: StopSwitch | None = None) -> BuildResult:
    """Build one model into options.out/<name>/ and return where, how and from what."""
    _check_options(options)
    cache = StageCache(options.cache_dir or default_cache_dir())
    shown = display or Display(options.show_progress)
    with scratch_area(options, cache) as scratch:
        build = Build(spec, options, cache, shown, scratch, switch)
        if display is not None:
            return build.run()
        with shown.running():
            return build.run()


def build_many(specs: Sequence[BuildSpec], options: BuildOptions,
               jobs: int = 1) -> list[BuildResult]:
    """Build several models, `jobs` at once; the first error is raised once all have stopped."""
    if jobs < 1:
        raise BadInput(f"--jobs {jobs} is not positive", "pass --jobs 1 or more")
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BadInput(f"several models would be packaged as {', '.join(duplicates)}",
                       "give each a different --name")
    _check_options(options)
    for spec in specs:  # every local model's output folder, before the first model starts
        if spec.is_local:
            check_output_folder(options.out / spec.name, options.model_folder or Path(spec.model))
    display = Display(options.show_progress)
    switch = StopSwitch()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def one(spec: BuildSpec) -> BuildResult | None:
        try:
            return build_model(spec, options, display=display, switch=switch)
        except WebslmError as error:
            with lock:
                errors.append(error)
            return None

    with display.running():
        if jobs == 1 or len(specs) == 1:
            results = [one(spec) for spec in specs]
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(one, spec) for spec in specs]
                try:
                    results = [future.result() for future in futures]
                except BaseException:  # Ctrl-C: stop every build; queued ones never start
                    switch.press()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]
