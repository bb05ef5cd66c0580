"""`invoke publish`: put a built dist folder on a Hugging Face model repo, loadable as it lands.

Two commits, because the AppConfig must name the commit its files live at:

  1. the package: every file provenance.json lists as a subject, and provenance.json itself,
     byte for byte as built (checked against the subjects' digests first);
  2. webllm-app-config.json with `model`/`model_lib` rewritten to
     `<endpoint>/<repo>/resolve/<commit 1>/`, and README.md, the model card (provenance summary,
     toolchain ID, web-llm pin, a loading snippet). Its parent must be commit 1.

Pinning the URLs to commit 1 means the weights and library a published AppConfig loads can never
change under it, and anyone can audit them against provenance.json with `invoke audit`.

Reading and checking the dist folder touches only local files; the plan (paths, URLs, AppConfig,
card) is pure; the Hub calls (huggingface_hub's HfApi) sit at the edge in `publish`. The token is
huggingface_hub's own (HF_TOKEN or the stored `hf auth login` token): it goes to HfApi only, is
never printed or stored by us, and while publishing a `Redactor` scrubs it, and anything shaped
like a Hugging Face token, from every log record and error message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlencode

from huggingface_hub import CommitOperationAdd, HfApi, constants

from webslm.errors import BadInput
from webslm.files import check_links
from webslm.hubapi import hub_call, hub_token
from webslm.layout import (
    APP_CONFIG_FILE,
    CHAT_CONFIG_FILE,
    PROVENANCE_FILE,
    SHARD_PREFIX,
    WEIGHTS_MANIFEST,
)
from webslm.provenance import Provenance, hash_files, list_files, load_provenance
from webslm.redaction import Redactor, redacted_logs
from webslm.verify.diff import app_config_checks
from webslm.webllm import (
    REBUILD,
    SHADER_F16,
    AppConfig,
    ModelRecord,
    read_app_config,
    render_app_config,
)

DEFAULT_ENDPOINT = "https://huggingface.co"
MODEL_CARD_FILE = "README.md"
DRY_RUN_COMMIT = "<commit>"
WEB_CLIENT_URL = "http://127.0.0.1:8000/"  # where `webslm serve` serves the web client by default
REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


# ---------------------------------------------------------------------------- the dist folder


@dataclass(frozen=True)
class PackageFile:
    """One file of the package commit: its path (in dist and in the repo), size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class DistPackage:
    """A checked dist folder: the files to upload, its AppConfig record and its provenance."""

    folder: Path
    files: tuple[PackageFile, ...]
    app_config: AppConfig
    provenance: Provenance

    @property
    def record(self) -> ModelRecord:
        return self.app_config.records[0]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def record_library_path(record: ModelRecord) -> str:
    """The record's library path inside its model folder, or BadInput when it lies outside."""
    path = record.library_path_in_folder()
    if path is None:
        raise BadInput(f"model_lib {record.model_lib!r} does not lie inside the model folder "
                       f"{record.model!r}", f"{REBUILD} (it writes libs/<model_id>-webgpu.wasm)")
    return path


def check_app_config(app_config: AppConfig) -> ModelRecord:
    """The AppConfig's one model record, checked for what publishing rewrites and reports."""
    records = app_config.records
    if len(records) != 1:
        raise BadInput(f"{APP_CONFIG_FILE} must hold exactly one model record",
                       "publish one dist/<name> folder at a time, as `invoke build` writes it")
    record = records[0]
    missing = [k for k in ("model", "model_id", "model_lib", "webslm") if k not in record.raw]
    if missing:
        raise BadInput(f"{APP_CONFIG_FILE} lacks {', '.join(missing)}", REBUILD)
    record_library_path(record)
    return record


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def read_package(dist: Path) -> DistPackage:
    """Check a dist folder against its provenance and return what the package commit uploads.

    Every subject must be present with its recorded digest, nothing else may be in the folder
    (what is published is exactly what was built), and the files WebLLM fetches must be there.
    """
    if not dist.is_dir():
        raise BadInput(f"{dist} is not a folder", "pass a folder written by `invoke build`, "
                       "e.g. dist/qwen2.5-0.5b")
    provenance = load_provenance(dist / PROVENANCE_FILE, REBUILD)
    app_config = read_app_config(dist / APP_CONFIG_FILE)
    record = check_app_config(app_config)
    expected = dict(provenance.subjects)
    check_links(dist, list_files(dist), (dist.resolve(),),
                f"replace the link with the file itself, or {REBUILD}")
    present = set(list_files(dist)) - {PROVENANCE_FILE, APP_CONFIG_FILE}
    missing = sorted(set(expected) - present)
    if missing:
        raise BadInput(f"{dist} lacks {_listing(missing)} (listed in {PROVENANCE_FILE})",
                       REBUILD)
    extra = sorted(present - set(expected))
    if extra:
        raise BadInput(f"{dist} holds {_listing(extra)}, which the build did not produce",
                       f"remove them, or {REBUILD}")
    needed = [CHAT_CONFIG_FILE, WEIGHTS_MANIFEST, record_library_path(record)]
    absent = [n for n in needed if n not in expected]
    if not any(n.startswith(SHARD_PREFIX) for n in expected):
        absent.append("params_shard_*.bin")
    if absent:
        raise BadInput(f"{dist} lacks {_listing(absent)}, which WebLLM loads", REBUILD)
    actual = hash_files(dist, list(expected))
    changed = sorted(n for n, digest in expected.items() if actual[n] != digest)
    if changed:
        raise BadInput(f"{_listing(changed)} in {dist} changed since the build "
                       f"(sha256 differs from {PROVENANCE_FILE})", REBUILD)
    failed = [c for c in app_config_checks(app_config, provenance) if not c.ok]
    if failed:  # what verify's step 1 refuses
        raise BadInput(f"{APP_CONFIG_FILE} does not match {PROVENANCE_FILE}: {failed[0].name} "
                       f"({failed[0].detail})", REBUILD)
    names = sorted([*expected, PROVENANCE_FILE])
    digests = {**actual, **hash_files(dist, [PROVENANCE_FILE])}
    files = tuple(PackageFile(n, (dist / n).stat().st_size, digests[n]) for n in names)
    return DistPackage(folder=dist, files=files, app_config=app_config, provenance=provenance)


# ---------------------------------------------------------------------------- the plan (pure)


def check_repo_id(repo: str) -> str:
    """OWNER/NAME as the Hub accepts it, or BadInput."""
    parts = repo.split("/")
    valid = (len(parts) == 2 and all(REPO_PART.fullmatch(p) for p in parts)
             and ".." not in repo and "--" not in repo and len(parts[1]) <= 96
             and not parts[1].endswith(".git"))
    if not valid:
        raise BadInput(f"--repo {repo!r} is not a Hugging Face repo id",
                       "pass OWNER/NAME: letters, digits, '-', '_', '.', e.g. alice/tiny-chat")
    return repo


def resolve_url(endpoint: str, repo: str, commit: str) -> str:
    """The folder URL of a repo at a commit; contains `/resolve/`, so web-llm appends nothing."""
    return f"{endpoint.rstrip('/')}/{repo}/resolve/{commit}/"


def share_link(config_url: str) -> str:
    """The web client's address with `?config=` naming a (commit-pinned) AppConfig URL: the page of
    `webslm serve` at its default address; the query works on any copy of the web client."""
    return f"{WEB_CLIENT_URL}?{urlencode({'config': config_url})}"


def rewrite_app_config(app_config: AppConfig, model_url: str) -> AppConfig:
    """The AppConfig with each record's model and model_lib moved under model_url; all else kept."""
    return replace(app_config, records=tuple(
        record.with_urls(model_url, model_url + record_library_path(record))
        for record in app_config.records))


@dataclass(frozen=True)
class CardFacts:
    """What the model card reports, read from provenance.json and the AppConfig record."""

    model_id: str
    source_model: str
    source_revision: str | None
    source_kind: str
    quantization: str
    shader_f16: bool  # the record's required_features names shader-f16
    toolchain_id: str
    lock_digest: str
    webllm_version: str
    subjects: int
    system_prompt: str | None
    finetune_base: str | None


def card_facts(package: DistPackage) -> CardFacts:
    """The card's facts; the AppConfig and provenance must agree on toolchain and web-llm pin."""
    record, provenance = package.record, package.provenance
    webslm = record.webslm
    toolchain_id, webllm_version = provenance.toolchain_id, provenance.webllm_version
    for key, ours, theirs in (("toolchain_id", toolchain_id, webslm.toolchain_id),
                              ("webllm_version", webllm_version, webslm.webllm_version)):
        if theirs != ours:
            raise BadInput(f"{APP_CONFIG_FILE} says {key} {theirs!r} but "
                           f"{PROVENANCE_FILE} says {ours!r}", REBUILD)
    model = provenance.model
    return CardFacts(
        model_id=str(record.model_id),
        source_model=str(model.get("id", "")),
        source_revision=model.get("revision"),
        source_kind=str(model.get("source", "")),
        quantization=provenance.spec.quantization,
        shader_f16=SHADER_F16 in record.required_features,
        toolchain_id=toolchain_id,
        lock_digest=provenance.lock_digest,
        webllm_version=webllm_version,
        subjects=len(provenance.subjects),
        system_prompt=webslm.system_prompt,
        finetune_base=(webslm.finetune or {}).get("base_model"),
    )


def model_card(facts: CardFacts, repo: str, endpoint: str, commit: str,
               library: str) -> str:
    """README.md for the repo: metadata, provenance summary, loading snippet, how to audit."""
    files_url = resolve_url(endpoint, repo, commit)
    config_url = resolve_url(endpoint, repo, "main") + APP_CONFIG_FILE
    hub_base = facts.finetune_base or (facts.source_model if facts.source_kind == "hub" else None)
    metadata = ["library_name: mlc-llm", "tags:", "- webllm", "- mlc-llm", "- webgpu", "- webslm",
                f"- {facts.quantization}"]
    if hub_base:
        metadata += [f"base_model: {hub_base}"]
        if not facts.finetune_base:
            metadata += ["base_model_relation: quantized"]
    revision = facts.source_revision or "(local folder, no revision)"
    prompt = json.dumps(facts.system_prompt) if facts.system_prompt is not None else "(none)"
    return "\n".join([
        "---", *metadata, "---", "",
        f"# {facts.model_id}", "",
        f"`{facts.source_model}` compiled for the browser: {facts.quantization} weight shards "
        f"and a WebGPU model library for @mlc-ai/web-llm {facts.webllm_version}, built by "
        "webslm in a pinned, content-addressed toolchain so anyone can rebuild it byte for byte.",
        "",
        "## Provenance", "",
        "| what | value |", "| --- | --- |",
        f"| source model | `{facts.source_model}` |",
        f"| source revision | `{revision}` |",
        f"| quantization | `{facts.quantization}` |",
        f"| toolchain ID | `{facts.toolchain_id}` |",
        f"| toolchain lock digest (sha256) | `{facts.lock_digest}` |",
        f"| web-llm pin | `@mlc-ai/web-llm@{facts.webllm_version}` |",
        f"| files with recorded digests | {facts.subjects} (see `{PROVENANCE_FILE}`) |",
        f"| files at commit | `{commit}` |",
        f"| system prompt | {prompt} |", "",
        f"`{PROVENANCE_FILE}` is an in-toto statement (SLSA provenance v1): the sha256 of every "
        "file, the model and its revision, the toolchain and each build stage.", "",
        "## Use it in a web page", "",
        f"`{APP_CONFIG_FILE}` points at the files of commit `{commit}`, so what it loads cannot "
        "change under it. Pass it to the engine constructor (not to `reload()`):", "",
        "```js",
        f'import {{ CreateMLCEngine }} from "https://esm.run/@mlc-ai/web-llm@{facts.webllm_version}";',
        "",
        f'const appConfig = await (await fetch("{config_url}")).json();',
        f'const engine = await CreateMLCEngine("{facts.model_id}", {{ appConfig }});',
        "const reply = await engine.chat.completions.create({",
        '  messages: [{ role: "user", content: "Hello!" }],',
        "});",
        "console.log(reply.choices[0].message.content);",
        "```", "",
        "It needs a browser with WebGPU"
        + (f" and the `{SHADER_F16}` feature." if facts.shader_f16 else "."), "",
        "## Audit it", "",
        "Rebuild the library from its provenance with webslm and compare it byte for byte:", "",
        "```sh",
        f"invoke audit --artifact {files_url}{library} \\",
        f"    --provenance {files_url}{PROVENANCE_FILE}",
        "```", "",
    ])


@dataclass(frozen=True)
class PublishPlan:
    """Everything publishing does, decided before any request: two commits and their contents."""

    repo: str
    endpoint: str
    commit: str  # the package commit the AppConfig names (DRY_RUN_COMMIT before it exists)
    package: tuple[PackageFile, ...]
    app_config: AppConfig
    model_card: str

    @property
    def files_url(self) -> str:
        return resolve_url(self.endpoint, self.repo, self.commit)

    @property
    def repo_url(self) -> str:
        return f"{self.endpoint.rstrip('/')}/{self.repo}"

    def second_commit(self) -> dict[str, bytes]:
        """The second commit's files: the rewritten AppConfig and the model card."""
        return {APP_CONFIG_FILE: render_app_config(self.app_config).encode("utf-8"),
                MODEL_CARD_FILE: self.model_card.encode("utf-8")}


def plan_publish(package: DistPackage, repo: str, commit: str,
                 endpoint: str = DEFAULT_ENDPOINT) -> PublishPlan:
    """The plan for publishing a checked package whose files are (or will be) at `commit`."""
    check_repo_id(repo)
    url = resolve_url(endpoint, repo, commit)
    card = model_card(card_facts(package), repo, endpoint, commit,
                      record_library_path(package.record))
    return PublishPlan(repo=repo, endpoint=endpoint, commit=commit, package=package.files,
                       app_config=rewrite_app_config(package.app_config, url), model_card=card)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024 or unit == "MiB":
            return f"{count:,} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count:,.1f} GiB"


def render_plan(plan: PublishPlan, dist: Path, private: bool) -> str:
    """The plan as `--dry-run` prints it: files, sizes and the URLs they will have."""
    record = plan.app_config.records[0]
    width = max(len(f.path) for f in plan.package)
    lines = [f"publish {dist} -> {plan.repo_url} ({'private' if private else 'public'} model "
             "repo, created if absent)",
             f"commit 1, the package: {len(plan.package)} files, "
             f"{_size(sum(f.size for f in plan.package))}"]
    lines += [f"  {f.path:<{width}}  {_size(f.size):>12}  {plan.files_url}{f.path}"
              for f in plan.package]
    lines.append("commit 2 (parent: commit 1), the AppConfig and the model card:")
    for name, data in plan.second_commit().items():
        lines.append(f"  {name:<{width}}  {_size(len(data)):>12}  "
                     f"{resolve_url(plan.endpoint, plan.repo, 'main')}{name}")
    lines += [f"AppConfig model:     {record.model}",
              f"AppConfig model_lib: {record.model_lib}",
              f"({plan.commit} is the id of commit 1, known once it exists)"
              if plan.commit == DRY_RUN_COMMIT else ""]
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------------------- the Hub (edge)


@dataclass(frozen=True)
class Published:
    package_commit: str
    final_commit: str


def publish(package: DistPackage, repo: str, *, private: bool, api: HfApi,
            redactor: Redactor) -> Published:
    """Create the repo if absent, commit the package, then the AppConfig naming that commit and
    the model card. Prints progress; every line and error is redacted."""
    endpoint = api.endpoint
    hub_call(redactor, f"creating {repo}", api.create_repo, repo, repo_type="model",
              private=private, exist_ok=True)
    operations = [CommitOperationAdd(f.path, package.folder / f.path) for f in package.files]
    print(f"uploading {len(package.files)} files ({_size(package.total_bytes)}) to "
          f"{endpoint}/{repo}", flush=True)
    first = hub_call(redactor, "uploading the package", api.create_commit, repo, operations,
                      repo_type="model",
                      commit_message=f"webslm: {package.record.model_id} package",
                      commit_description=f"Files and provenance from {PROVENANCE_FILE}.")
    plan = plan_publish(package, repo, first.oid, endpoint)
    second_files = [CommitOperationAdd(name, data) for name, data in plan.second_commit().items()]
    doing = (f"committing the AppConfig and model card (the package is at commit {first.oid}; "
             "run the same command again to finish)")
    second = hub_call(redactor, doing, api.create_commit, repo, second_files, repo_type="model",
                       commit_message=f"webslm: AppConfig for {package.record.model_id} at "
                                      f"{first.oid[:12]}, model card",
                       parent_commit=first.oid)
    return Published(package_commit=first.oid, final_commit=second.oid)


def publish_command(dist: Path, repo: str, private: bool, dry_run: bool) -> int:
    """`webslm publish DIST --repo OWNER/NAME [--private] [--dry-run]`."""
    check_repo_id(repo)
    package = read_package(dist)
    if dry_run:
        plan = plan_publish(package, repo, DRY_RUN_COMMIT, constants.ENDPOINT)
        print(render_plan(plan, dist, private))
        print("dry run: nothing was uploaded")
        return 0
    token = hub_token()
    redactor = Redactor((token,))
    with redacted_logs(redactor):
        api = HfApi(token=token)
        done = publish(package, repo, private=private, api=api, redactor=redactor)
    files = resolve_url(api.endpoint, repo, done.package_commit)
    pinned_config = f"{resolve_url(api.endpoint, repo, done.final_commit)}{APP_CONFIG_FILE}"
    print(redactor.redact("\n".join([
        f"published {dist} to {api.endpoint}/{repo}",
        f"  package commit:      {done.package_commit}",
        f"  AppConfig + card:    {done.final_commit}",
        f"  AppConfig:           {pinned_config}",
        f"  model_lib:           {files}{record_library_path(package.record)}",
        f"  share link:          {share_link(pinned_config)}",
        "                       (its config URL names a commit: what it loads never changes)",
    ])))
    return 0
