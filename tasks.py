"""Invoke tasks: thin front ends over the `webslm` CLI (same flags, same exit codes).

Each task turns its keyword arguments into the argv of `webslm <command>` and calls
`webslm.cli.main`, so all logic and validation live in the `webslm` package.
"""

from __future__ import annotations

from collections.abc import Iterable

from invoke import Context, Exit, task

from webslm.cli import main


def _flags(**options: object) -> list[str]:
    """`--flag value` pairs for set options; booleans become bare flags, lists repeat."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def _webslm(*argv: str) -> None:
    code = main(list(argv))
    if code:
        raise Exit(code=code)


@task(help={"check": "print the ID, whether the image exists and the placeholders left",
            "refresh_lock": "resolve the lock's placeholders (needs network)",
            "id": "print the toolchain ID alone"})
def toolchain(c: Context, check: bool = False, refresh_lock: bool = False, id: bool = False,
              pull: str | None = None, push: str | None = None,
              allow_unpinned: bool = False) -> None:
    """Build the pinned toolchain image when its tag is absent."""
    action = "check" if check else "refresh-lock" if refresh_lock else "id" if id else "build"
    _webslm("toolchain", action, *_flags(pull=pull, push=push, allow_unpinned=allow_unpinned))


@task(help={"preset": "preset name, or several comma-separated",
            "model": "local folder or Hugging Face id[@revision]",
            "base_url": "absolute URL the dist folder will be served from"})
def build(c: Context, preset: str | None = None, model: str | None = None,
          quantization: str | None = None, name: str | None = None, out: str = "dist",
          base_url: str | None = None, no_cache: bool = False, jobs: int = 1,
          model_type: str | None = None, conv_template: str | None = None,
          context_window_size: int | None = None, prefill_chunk_size: int | None = None,
          system_prompt: str | None = None, allow_pickle: bool = False,
          cpus: float | None = None, memory: str | None = None) -> None:
    """Build a model into dist/<name>/ for WebLLM (default preset qwen2.5-0.5b)."""
    _webslm("build", *_flags(
        preset=preset, model=model, quantization=quantization, name=name, out=out,
        base_url=base_url, no_cache=no_cache, jobs=jobs, model_type=model_type,
        conv_template=conv_template, context_window_size=context_window_size,
        prefill_chunk_size=prefill_chunk_size, system_prompt=system_prompt,
        allow_pickle=allow_pickle, cpus=cpus, memory=memory))


@task
def spec(c: Context, preset: str | None = None, model: str | None = None,
         model_type: str | None = None, conv_template: str | None = None,
         quantization: str | None = None, name: str | None = None) -> None:
    """Print the resolved build spec as JSON."""
    _webslm("spec", *_flags(preset=preset, model=model, model_type=model_type,
                            conv_template=conv_template, quantization=quantization, name=name))


@task
def normalize(c: Context, path: str, out: str | None = None) -> None:
    """Rewrite a config.json written by newer transformers for MLC-LLM v0.19.0."""
    _webslm("normalize", path, *_flags(out=out))


@task
def verify(c: Context, dist: str, report: str | None = None) -> None:
    """Rebuild a dist folder from its provenance and compare every output."""
    _webslm("verify", dist, *_flags(report=report))


@task
def audit(c: Context, artifact: str, provenance: str | None = None,
          report: str | None = None) -> None:
    """Check a shipped artifact against its provenance, then rebuild and compare."""
    _webslm("audit", *_flags(artifact=artifact, provenance=provenance, report=report))


@task(iterable=["data"])
def finetune(c: Context, data: Iterable[str], base: str | None = None, out: str | None = None,
             epochs: float | None = None, lr: float | None = None, lora_r: int | None = None,
             lora_alpha: int | None = None, max_seq_len: int | None = None,
             bits: int | None = None, seed: int | None = None, gpus: int | None = None,
             push: str | None = None) -> None:
    """LoRA SFT on chat JSONL, merged into a checkpoint that `invoke build` accepts."""
    _webslm("finetune", *_flags(
        data=list(data), base=base, out=out, epochs=epochs, lr=lr, lora_r=lora_r,
        lora_alpha=lora_alpha, max_seq_len=max_seq_len, bits=bits, seed=seed, gpus=gpus,
        push=push))


@task
def merge(c: Context, base: str, adapter: str, out: str) -> None:
    """Merge a LoRA adapter trained elsewhere into its base model."""
    _webslm("merge", *_flags(base=base, adapter=adapter, out=out))


@task(iterable=["files"])
def data_check(c: Context, files: Iterable[str], tokenizer: str | None = None) -> None:
    """Validate chat JSONL files."""
    _webslm("data", "check", *files, *_flags(tokenizer=tokenizer))


@task(iterable=["dist"])
def serve(c: Context, dist: Iterable[str], port: int | None = None,
          host: str | None = None) -> None:
    """Serve web/ and dist folders on 127.0.0.1."""
    _webslm("serve", *(list(dist) or ["dist"]), *_flags(port=port, host=host))


@task
def publish(c: Context, dist: str, repo: str, private: bool = False,
            dry_run: bool = False) -> None:
    """Upload a dist folder to a Hugging Face model repo."""
    _webslm("publish", dist, *_flags(repo=repo, private=private, dry_run=dry_run))


@task
def bench(c: Context, name: str | None = None) -> None:
    """Run a benchmark from bench/ (without a name: list them)."""
    _webslm("bench", *([name] if name else []))
