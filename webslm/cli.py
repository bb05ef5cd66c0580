"""The `webslm` command line: parse arguments, call the module that owns the command, map errors.

Every command here is also an Invoke task (tasks.py makes them from this parser, through
webslm/invoke_tasks.py), so the two front ends cannot drift apart. Sibling modules are imported
at the top, except the two that load heavy packages, imported inside their handlers: `check`
(torch, transformers) and `toolchain.build` (the Docker SDK); `webslm spec` must not pay for them.
`finetune` is light: it imports its torch half (`webslm.training`) only when it trains or merges.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path
from types import FrameType

from webslm import bench, finetune, pipeline, publish, serve, verify
from webslm.crash import ending
from webslm.errors import INTERRUPTED, BadInput, MissingEnvironment, Terminated, WebslmError
from webslm.files import canonical_json
from webslm.normalize import normalize_path
from webslm.recipe import BITS_CHOICES, COMPILE_CHOICES, Recipe
from webslm.redaction import redacted_output
from webslm.spec import (
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_PREFILL_CHUNK,
    DEFAULT_PRESET,
    DEFAULT_QUANTIZATION,
    MAX_CONTEXT_WINDOW,
    PRESETS,
    resolve_spec,
)
from webslm.verify import DOWNLOAD_TIMEOUT_S, MAX_DOWNLOAD_MIB

DEFAULT_DIST = "dist"

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadInput(message, f"see `{self.prog} --help`")


# --------------------------------------------------------------------- numbers on the command line
# Checked as argparse parses them (type=), so a bad number stops the command before anything
# runs or is looked up (the Docker engine, the toolchain image, a model).

MIN_MEMORY = 6 << 20  # the smallest memory limit Docker accepts
MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)([bkmg]?)b?", re.IGNORECASE)
MAX_INT32 = (1 << 31) - 1  # torch's and WebGPU's sizes and counts
MAX_SEED = (1 << 32) - 1  # NumPy's seeds are 32-bit
MAX_EPOCHS = 10_000  # far more passes than a fine-tune needs; the step count stays exact


@dataclass(frozen=True)
class Number:
    """An argparse type: a finite number of `kind` from `low` (or above it) to `high`."""

    kind: type[int] | type[float]
    low: float
    high: float | None = None
    above_low: bool = False  # `low` itself is refused

    def describe(self) -> str:
        what = "whole number" if self.kind is int else "number"
        if self.low == 0 and self.above_low and self.high is None:
            return f"a positive {what}"
        lowest = f"above {_shown(self.low)}" if self.above_low else f"from {_shown(self.low)}"
        highest = "" if self.high is None else \
            f" and at most {_shown(self.high)}" if self.above_low else f" to {_shown(self.high)}"
        return f"a {what} {lowest}{highest}"

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > self.low if self.above_low else value >= self.low)
                and (self.high is None or value <= self.high)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.describe()}")
        return value


def _shown(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


POSITIVE = Number(float, 0, above_low=True)
COUNT = Number(int, 1, MAX_INT32)
TOKENS = Number(int, 1, MAX_CONTEXT_WINDOW)


def memory_size(text: str) -> int:
    """An argparse type: a Docker memory limit (`8g`, `512m`, bytes) as bytes, at least 6 MiB."""
    matched = _MEMORY.fullmatch(text.strip())
    size = (int(float(matched.group(1)) * MEMORY_UNITS[matched.group(2).lower()])
            if matched else 0)
    if not MIN_MEMORY <= size < 1 << 63:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size of at least 6m (a number of bytes, or with the unit "
            "k, m or g, e.g. 8g)")
    return size


def _spec_options(parser: argparse.ArgumentParser, *, several_presets: bool = False) -> None:
    source = parser.add_mutually_exclusive_group()
    preset_help = "preset name" + (" (comma-separated for several)" if several_presets else "")
    source.add_argument("--preset", help=f"{preset_help}; default {DEFAULT_PRESET} (--preset and "
                        "--model exclude each other)")
    source.add_argument("--model", help="local folder or Hugging Face id[@revision]")
    parser.add_argument("--model-type", help="MLC model type, or auto (from config.json)")
    parser.add_argument("--conv-template", help="MLC conversation template")
    parser.add_argument("--quantization", help=f"MLC quantization (default {DEFAULT_QUANTIZATION})")
    parser.add_argument("--name", help="name of the packaged model (default: from preset/model)")
    parser.add_argument("--context-window-size", type=TOKENS, metavar="TOKENS",
                        help="longest context, in tokens, the browser's KV cache holds "
                             f"(default {DEFAULT_CONTEXT_WINDOW})")
    parser.add_argument("--prefill-chunk-size", type=TOKENS, metavar="TOKENS",
                        help="tokens of a prompt read in one pass (default: the smaller of "
                             f"{DEFAULT_PREFILL_CHUNK} and the context window)")
    parser.add_argument("--system-prompt", help="system message of the chat template (default: "
                        "the template's, or the one a webslm fine-tune recorded)")


def _spec_from_args(args: argparse.Namespace, preset: str | None = None):  # noqa: ANN202
    return resolve_spec(
        preset=preset if preset is not None else args.preset,
        model=args.model,
        model_type=args.model_type,
        conv_template=args.conv_template,
        quantization=args.quantization,
        name=args.name,
        context_window_size=args.context_window_size,
        prefill_chunk_size=args.prefill_chunk_size,
        system_prompt=args.system_prompt,
    )


def _cmd_spec(args: argparse.Namespace) -> int:
    sys.stdout.write(canonical_json(_spec_from_args(args).to_json()))
    return 0


def _cmd_normalize(args: argparse.Namespace) -> int:
    result = normalize_path(Path(args.path), out=Path(args.out) if args.out else None)
    for change in result.changes:
        print(change)
    if not result.changes:
        print(f"{result.config_path}: already in the format MLC-LLM v0.19.0 reads; nothing changed")
    return 0


def _cmd_toolchain(args: argparse.Namespace) -> int:
    from webslm.toolchain.build import toolchain_command  # imports the Docker SDK

    return toolchain_command(
        action=args.action,
        pull=args.pull,
        push=args.push,
        allow_unpinned=args.allow_unpinned,
    )


def _cmd_build(args: argparse.Namespace) -> int:
    presets = [p.strip() for p in args.preset.split(",")] if args.preset else [None]
    if "" in presets:
        raise BadInput(f"--preset {args.preset!r} has an empty name in its list",
                       "separate preset names with single commas, e.g. --preset a,b")
    specs = [_spec_from_args(args, preset=p) for p in presets]
    options = pipeline.BuildOptions(
        out=Path(args.out),
        base_url=args.base_url,
        use_cache=not args.no_cache,
        allow_pickle=args.allow_pickle,
        cpus=args.cpus,
        memory=args.memory,
    )
    results = pipeline.build_many(specs, options, jobs=args.jobs)
    if not args.check:
        return 0
    from webslm import check  # imports torch and transformers

    codes = [check.check_command(r.dist, r.spec.model + (f"@{r.spec.revision}"
                                                        if r.spec.revision else ""))
             for r in results]
    return max(codes, default=0)


def _cmd_verify(args: argparse.Namespace) -> int:
    report_dir = Path(args.report) if args.report else None
    settings = verify.RebuildSettings(model=Path(args.model) if args.model else None)
    return verify.verify_command(Path(args.dist), report_dir=report_dir, settings=settings)


def _cmd_check(args: argparse.Namespace) -> int:
    from webslm import check  # imports torch and transformers (the `check` extra)

    return check.check_command(
        Path(args.dist), args.model,
        prompts_file=Path(args.prompts) if args.prompts else None,
        report_dir=Path(args.report) if args.report else None,
    )


def _cmd_audit(args: argparse.Namespace) -> int:
    return verify.audit_command(
        artifact=args.artifact,
        provenance=args.provenance,
        report_dir=Path(args.report) if args.report else None,
        max_download_mib=args.max_download_mib,
        download_timeout_s=args.download_timeout,
    )


def _cmd_data_check(args: argparse.Namespace) -> int:
    return finetune.data_check_command([Path(f) for f in args.files], tokenizer=args.tokenizer)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    return Recipe(epochs=args.epochs, learning_rate=args.lr, lora_r=args.lora_r,
                  lora_alpha=args.lora_alpha, max_seq_len=args.max_seq_len, bits=args.bits,
                  seed=args.seed, compile_layers=args.compile, global_batch=args.global_batch,
                  activation_budget=args.activation_budget)


def _cmd_finetune(args: argparse.Namespace) -> int:
    return finetune.finetune_command([Path(f) for f in args.data], args.base, Path(args.out),
                                     recipe_from_args(args), gpus=args.gpus, push=args.push)


def _cmd_merge(args: argparse.Namespace) -> int:
    return finetune.merge_command(base=args.base, adapter=Path(args.adapter), out=Path(args.out))


def _cmd_serve(args: argparse.Namespace) -> int:
    dists = [*args.dists, *args.dist] or [DEFAULT_DIST]
    return serve.serve_command([Path(d) for d in dists], host=args.host, port=args.port)


def _cmd_publish(args: argparse.Namespace) -> int:
    return publish.publish_command(
        Path(args.dist), repo=args.repo, private=args.private, dry_run=args.dry_run
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    return bench.bench_command(args.name)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="webslm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    spec = command("spec", _cmd_spec, "print the resolved build spec as JSON")
    _spec_options(spec)

    normalize = command("normalize", _cmd_normalize, "rewrite a config.json for MLC-LLM v0.19.0")
    normalize.add_argument("path", help="model folder or its config.json")
    normalize.add_argument("--out", help="write the normalized config into this folder instead")

    toolchain = command("toolchain", _cmd_toolchain, "build or inspect the pinned toolchain image")
    toolchain.add_argument(
        "action", nargs="?", default="build", choices=["build", "id", "check", "refresh-lock"],
        help="build the image, print its content ID, check it, or re-pin the lock "
             "(default %(default)s)",
    )
    toolchain.add_argument("--pull", metavar="REF", help="pull the image from this registry ref")
    toolchain.add_argument("--push", metavar="REF", help="push the built image to this ref")
    toolchain.add_argument(
        "--allow-unpinned", action="store_true", help="build although the lock has placeholders"
    )

    build = command("build", _cmd_build, "build a model into a WebLLM-ready folder")
    _spec_options(build, several_presets=True)
    build.add_argument("--out", default=DEFAULT_DIST,
                       help=f"output folder (default {DEFAULT_DIST})")
    build.add_argument("--base-url", help="absolute URL the dist folder is served from")
    build.add_argument("--no-cache", action="store_true", help="ignore the stage cache")
    build.add_argument("--jobs", type=COUNT, default=1,
                       help="models built at once (default %(default)s)")
    build.add_argument("--allow-pickle", action="store_true", help="accept pickle .bin weights")
    build.add_argument("--cpus", type=Number(float, 0.01, os.cpu_count() or 1),
                       help="CPU limit per stage container, up to this machine's CPU count (a "
                            "model's two branches run in two containers at once)")
    build.add_argument("--memory", type=memory_size,
                       help="memory limit per stage container, e.g. 8g (at least 6m)")
    build.add_argument("--check", action="store_true",
                       help="run `webslm check` on each built model against its model")

    verify = command("verify", _cmd_verify, "rebuild a dist folder and compare every output")
    verify.add_argument("dist", help="a dist folder `webslm build` wrote (model folder)")
    verify.add_argument("--report", help="write report.json and report.md into this folder")
    verify.add_argument("--model", help="the local model's folder (default: the path the "
                        "provenance records, from here or from the build's folder)")

    check = command("check", _cmd_check,
                    "compare a dist running in headless Chromium with its model in transformers")
    check.add_argument("dist", help="a dist folder `webslm build` wrote (model folder)")
    check.add_argument("--model", required=True, help="the model it was built from (folder or id)")
    check.add_argument("--prompts", help="text file, one prompt per line (default: built-in set)")
    check.add_argument("--report", help="write report.json and report.md into this folder")

    audit = command("audit", _cmd_audit, "check a shipped artifact against its provenance")
    audit.add_argument("--artifact", required=True, help="path or URL of the artifact")
    audit.add_argument("--provenance", help="path or URL of provenance.json")
    audit.add_argument("--report", help="write report.json and report.md into this folder")
    audit.add_argument("--max-download-mib", type=COUNT, default=MAX_DOWNLOAD_MIB,
                       help="largest file an http(s) download may be (default "
                            f"{MAX_DOWNLOAD_MIB})")
    audit.add_argument("--download-timeout", type=POSITIVE,
                       default=DOWNLOAD_TIMEOUT_S, metavar="SECONDS",
                       help="deadline for all downloads together (default "
                            f"{DOWNLOAD_TIMEOUT_S:.0f})")

    data = command("data", lambda a: 0, "chat data tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    data_check = data_commands.add_parser("check", help="validate chat JSONL files",
                                          description="validate chat JSONL files")
    data_check.set_defaults(handler=_cmd_data_check)
    data_check.add_argument("files", nargs="+", metavar="FILE", help="chat JSONL file(s)")
    data_check.add_argument("--tokenizer", help="tokenizer (folder or id) to count tokens")

    finetune = command("finetune", _cmd_finetune, "LoRA fine-tune and merge into a checkpoint")
    finetune.add_argument("--data", required=True, action="append",
                          help="chat JSONL file (repeat for several)")
    finetune.add_argument("--base", default=PRESETS[DEFAULT_PRESET].model,
                          help="base model: local folder or Hugging Face id[@revision] "
                               "(default %(default)s)")
    finetune.add_argument("--out", default="finetuned",
                          help="folder for the merged model, the adapter in its adapter/ "
                               "(default %(default)s; replaced only if webslm wrote it)")
    finetune.add_argument("--epochs", type=Number(float, 0, MAX_EPOCHS, above_low=True),
                          default=Recipe.epochs,
                          help="passes over the data (default %(default)s)")
    finetune.add_argument("--lr", type=POSITIVE, default=Recipe.learning_rate,
                          help="peak learning rate (default %(default)s)")
    finetune.add_argument("--lora-r", type=COUNT, default=Recipe.lora_r,
                          help="LoRA rank (default %(default)s)")
    finetune.add_argument("--lora-alpha", type=COUNT, default=Recipe.lora_alpha,
                          help="LoRA alpha: the adapter's output is scaled by alpha/r "
                               "(default %(default)s)")
    finetune.add_argument("--max-seq-len", type=COUNT, default=Recipe.max_seq_len,
                          metavar="TOKENS",
                          help="conversations are cut to this many tokens (default %(default)s)")
    finetune.add_argument("--bits", type=int, choices=BITS_CHOICES, default=Recipe.bits,
                          help="16: LoRA; 4: QLoRA, a 4-bit base on a CUDA GPU "
                               "(default %(default)s)")
    finetune.add_argument("--seed", type=Number(int, 0, MAX_SEED), default=Recipe.seed,
                          help="seed of the adapter's start and the data order (default "
                               "%(default)s)")
    finetune.add_argument("--gpus", type=COUNT, default=1,
                          help="GPUs to train on, through torchrun (default %(default)s)")
    finetune.add_argument("--global-batch", type=COUNT, default=Recipe.global_batch,
                          help="conversations per optimizer step, over all GPUs (default "
                               "%(default)s)")
    finetune.add_argument("--compile", choices=COMPILE_CHOICES, default=Recipe.compile_layers,
                          help="torch.compile the decoder layers (default %(default)s: on a GPU, "
                               "long runs)")
    finetune.add_argument("--activation-budget", type=Number(float, 0, 1, above_low=True),
                          metavar="SHARE",
                          default=Recipe.activation_budget,
                          help="share of each layer's activations a compiled one-GPU run keeps, "
                               "recomputing the rest (default %(default)s; 1 keeps all: faster, "
                               "more GPU memory; same loss)")
    finetune.add_argument("--push", metavar="REPO",
                          help="upload the merged model to this Hugging Face repo (OWNER/NAME)")

    merge = command("merge", _cmd_merge, "merge a LoRA adapter into its base model")
    merge.add_argument("--base", required=True,
                       help="the adapter's base model: local folder or Hugging Face id[@revision]")
    merge.add_argument("--adapter", required=True, help="a PEFT LoRA adapter folder")
    merge.add_argument("--out", required=True,
                       help="folder for the merged model (replaced only if webslm wrote it)")

    serve = command("serve", _cmd_serve, "serve web/ and dist folders on 127.0.0.1")
    serve.add_argument("dists", nargs="*", default=[], metavar="DIST",
                       help="dist folder(s) to serve, a model folder or a folder of them "
                            f"(default {DEFAULT_DIST}); the same as --dist")
    serve.add_argument("--dist", action="append", default=[], metavar="DIST",
                       help="a dist folder to serve (repeatable); the same as a positional DIST")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                       "%(default)s: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")

    publish = command("publish", _cmd_publish, "upload a dist folder to a Hugging Face repo")
    publish.add_argument("dist", help="a dist folder `webslm build` wrote (model folder)")
    publish.add_argument("--repo", required=True, help="OWNER/NAME")
    publish.add_argument("--private", action="store_true",
                         help="create the repo private (an existing repo keeps its visibility)")
    publish.add_argument("--dry-run", action="store_true",
                         help="print what would be uploaded, upload nothing")

    bench = command("bench", _cmd_bench, "run a benchmark from bench/")
    bench.add_argument("name", nargs="?", help="benchmark name (default: list them)")
    return parser


# The extra whose packages each command imports lazily; torch is in both finetune and check,
# so the command decides (`build --check` runs the check).
COMMAND_EXTRAS = {"build": "check", "check": "check",
                  "data": "finetune", "finetune": "finetune", "merge": "finetune"}


def optional_extra(module: str, command: str) -> str | None:
    """The extra (`pip install 'webslm[EXTRA]'`) that installs a module for a command, from the
    package's own metadata (pyproject.toml is the one list): the command's extra
    (COMMAND_EXTRAS) when it has the module, else any other non-test extra; None when no extra
    has it."""
    try:
        requirements = requires("webslm") or []
    except PackageNotFoundError:
        return None
    extras = set()
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        package = re.split(r"[<>=!~\[ ]", name.strip(), maxsplit=1)[0].lower().replace("-", "_")
        extra = re.search(r'extra == "([^"]+)"', marker)
        if extra and extra.group(1) != "test" and package == module.lower():
            extras.add(extra.group(1))
    preferred = COMMAND_EXTRAS.get(command)
    return preferred if preferred in extras else min(extras, default=None)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM raises Terminated (cleanups run, exit 143) instead of
    killing the process where it stands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. Errors become one line on stderr."""
    args = argparse.Namespace(command="")
    try:
        with sigterm_unwinds(), redacted_output():
            args = build_parser().parse_args(argv)
            return int(args.handler(args))
    except WebslmError as error:
        print(f"webslm: error: {error.line()}", file=sys.stderr)
        return error.exit_code
    except ImportError as error:
        missing = (error.name or "").split(".")[0]
        extra = optional_extra(missing, args.command)
        if extra is None:
            return ending("webslm", error)
        absent = MissingEnvironment(f"`webslm {args.command}` needs {missing}, which is not "
                                    f"installed", f"pip install 'webslm[{extra}]' "
                                    f"(or -e '.[{extra}]' in a checkout)")
        print(f"webslm: error: {absent.line()}", file=sys.stderr)
        return absent.exit_code
    except KeyboardInterrupt:
        print("webslm: interrupted; outputs already in place are unchanged", file=sys.stderr)
        return INTERRUPTED
    except Terminated:
        print("webslm: terminated (SIGTERM); outputs already in place are unchanged",
              file=sys.stderr)
        return Terminated.exit_code
    except Exception as error:  # noqa: BLE001 - a full disk, a bug: one line, never a traceback
        return ending("webslm", error)

