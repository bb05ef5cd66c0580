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

This module is the build graph and its orchestration; how a container stage runs (Docker, the
toolchain image, Variation) is webslm.container, and writing dist/<name> is webslm.packaging.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webslm import safetensors_index
from webslm.cache import CacheEntry, StageCache, StageKey, default_cache_dir, tree_digest
from webslm.container import (
    OUT_MOUNT,
    ContainerRun,
    Engine,
    StageStopped,
    StopSwitch,
    Variation,
)
from webslm.errors import BadInput, StageFailed, WebslmError
from webslm.files import (
    canonical_json,
    check_apart,
    check_replaceable,
    check_writable,
    space_in,
)
from webslm.hub import (
    FINETUNE_FILE,
    PICKLE_INDEX_FILE,
    PICKLE_SUFFIXES,
    ResolvedModel,
    check_safetensors_header,
    resolve_model,
)
from webslm.layout import (
    CHAT_CONFIG_FILE,
    PROVENANCE_FILE,
    library_name,
)
from webslm.normalize import load_config, normalize_config
from webslm.packaging import StageFiles, write_package
from webslm.provenance import hash_files, list_files
from webslm.spec import BuildSpec
from webslm.toolchain import Toolchain, chosen_or_current
from webslm.webllm import check_base_url

if TYPE_CHECKING:
    from rich.progress import Progress


STAGES = ("resolve", "stage", "convert_weight", "gen_config", "compile", "package")
MODEL_MOUNT = "/in/model"
CONFIG_MOUNT = "/in/config"
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
WEIGHT_INDEXES = (safetensors_index.INDEX_FILE, PICKLE_INDEX_FILE)
# The code the `stage` step runs on the model's files: a change to it is a change of stage key.
STAGE_SOURCES = tuple(Path(__file__).with_name(name)
                      for name in ("normalize.py", "safetensors_index.py"))


@dataclass(frozen=True)
class BuildOptions:
    """How to build (not what: that is the BuildSpec)."""

    out: Path
    base_url: str | None = None
    use_cache: bool = True
    allow_pickle: bool = False
    cpus: float | None = None
    memory: int | None = None  # bytes
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


def model_weight_files(names: Sequence[str]) -> list[str]:
    """The model's input weight files (safetensors or pickle, and their index); the dist's
    shards are layout.package_weight_files."""
    return [n for n in names if n.endswith(WEIGHT_SUFFIXES) or n in WEIGHT_INDEXES]


def convert_inputs(names: Sequence[str]) -> list[str]:
    """What convert_weight reads: the config and the weights."""
    return ["config.json", *model_weight_files(names)]


def gen_config_inputs(names: Sequence[str]) -> list[str]:
    """What gen_config reads: the configs and tokenizer files, never the weights."""
    weights = set(model_weight_files(names))
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
    return ["mlc_llm", "compile", f"{CONFIG_MOUNT}/{CHAT_CONFIG_FILE}",
            "--quantization", spec.quantization, "--model-type", spec.model_type,
            "--device", "webgpu", "-o", f"{OUT_MOUNT}/{library_name(spec.model_id)}"]


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


def check_output_folder(final: Path, model: Path) -> None:
    """The dist folder may not be the model folder, inside it or around it (the swap would
    delete the model), nor a file or a folder webslm did not write; its parent must be
    writable. All before any container starts."""
    check_apart(final, [("model folder", model)],
                "pass an --out (or --name) outside the model folder")
    check_replaceable(final, PROVENANCE_FILE)
    check_writable(final.parent)


def readable_by_anyone(folder: Path) -> None:
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o444)


# ---------------------------------------------------------------------------- progress


class Display:
    """One rich progress line per stage, on stderr; shared by models built at once."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Progress | None = None
        self.started = False
        self.lock = threading.Lock()
        if enabled:
            # rich loads only when progress is shown
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
        self.toolchain = chosen_or_current(self.options.toolchain)
        self.engine = Engine(self.toolchain.stage_image(), self.options.variation,
                             cpus=self.options.cpus, memory=self.options.memory)
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
            return chat, self.container_stage("compile", chat, [CHAT_CONFIG_FILE], CONFIG_MOUNT,
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
        """Write dist/<name>/ whole (webslm.packaging) and record it as the package stage."""
        assert self.toolchain is not None and self.engine is not None
        final = self.options.out / self.spec.name
        statement, shipped = write_package(
            final, spec=self.spec, model=model, inputs=digests,
            staged=StageFiles(staged.path, staged.files),
            weights=StageFiles(weights.path, weights.files),
            chat=StageFiles(chat.path, chat.files), library=StageFiles(library.path, library.files),
            toolchain=self.toolchain, image_digest=self.engine.image_digest,
            base_url=self.options.base_url, allow_pickle=self.options.allow_pickle,
            stages={r.name: {"cache_key": r.cache_key, "output": r.digest}
                    for r in self.results.values() if r.cache_key})
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


@contextlib.contextmanager
def scratch_area(options: BuildOptions, cache: StageCache) -> Iterator[Path]:
    """The build area: under the variation's folder, else beside the cache (same file system,
    so finished outputs are renamed into the cache rather than copied)."""
    folder = cache.scratch_folder("build", options.variation.work_root)
    try:
        with space_in(folder.parent):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_options(options: BuildOptions) -> None:
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
