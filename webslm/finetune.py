"""`webslm data check`, `webslm finetune` and `webslm merge`: LoRA SFT to a merged checkpoint.

The flow: check the chat data (every problem at once), resolve the base model the way a build
does, train a LoRA adapter with TRL and PEFT on assistant tokens only, merge it into the base in
fp16 and write a model folder that `webslm build` accepts as it is, with `webslm.json` saying
where it came from. The output folder appears whole or not at all.

This module is the light half: the data check, the commands and the record; it loads no torch,
so `webslm data check` and the CLI start fast. The recipe and the decisions made from it are in
`webslm.recipe`, which both halves import; the training and the merge themselves are in
`webslm.training`, imported only when a command trains or merges (it never imports this module).

Several GPUs: the same training script runs data-parallel under torchrun (or `accelerate
launch`); the global batch stays 16 conversations, split across the GPUs, so results do not
depend on the count, unless the user raises it (`--global-batch`), which is what scales
(bench/RESULTS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from webslm import __version__
from webslm.chatdata import (
    ChatData,
    TokenizedExample,
    load_tokenizer,
    read_chat_data,
    summary_lines,
    tokenize_all,
)
from webslm.checkout import checkout_path, require
from webslm.errors import BadInput, MissingEnvironment, StageFailed
from webslm.files import (
    atomic_directory,
    atomic_write_text,
    canonical_json,
    check_apart,
    read_json_object,
)
from webslm.hub import FINETUNE_FILE, ResolvedModel, resolve_model
from webslm.hubapi import push_folder
from webslm.recipe import Recipe, batch_split, check_recipe
from webslm.spec import resolve_spec

TRAIN_SCRIPT = checkout_path("finetune", "train.py")
ADAPTER_DIR = "adapter"


def launch_command(gpus: int, base: Path, data: Sequence[Path], adapter_out: Path,
                   recipe: Recipe, python: str = sys.executable) -> list[str]:
    """The torchrun command that trains on `gpus` processes (DDP) with finetune/train.py."""
    return [
        python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
        str(require(TRAIN_SCRIPT)), "--base", str(base), "--adapter-out", str(adapter_out),
        "--recipe", json.dumps(recipe.to_json(), sort_keys=True),
        *[arg for path in data for arg in ("--data", str(path))],
    ]


def checked_data(files: Sequence[Path]) -> ChatData:
    """Read the data; print its report and raise BadInput (exit 2) when any line is bad."""
    data = read_chat_data(files)
    for line in data.report():
        print(line, file=sys.stderr)
    data.require_valid()
    return data


def data_check_command(files: list[Path], tokenizer: str | None) -> int:
    data = checked_data(files)
    examples = None
    if tokenizer is not None:
        examples = tokenize_all(load_tokenizer(tokenizer), data, max_len=1 << 30)
    for line in summary_lines(data, examples):
        print(line)
    return 0


# --- merging (webslm.training does the work) --------------------------------------------------

def metadata(base: ResolvedModel, *, data_digest: str | None, system_prompt: str | None,
             recipe: dict[str, Any]) -> dict[str, Any]:
    """The webslm.json record: what the merged model was made from (the Hub id, else the
    folder) and how."""
    return {"base_model": base.repo_id or str(base.path), "base_revision": base.revision,
            "data_digest": data_digest, "system_prompt": system_prompt, "recipe": recipe,
            "webslm_version": __version__}


def check_adapter(adapter: Path) -> dict[str, Any]:
    """Refuse an adapter folder that is incomplete or pickled; return its adapter_config."""
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise BadInput(f"{adapter} has no adapter_config.json", "point at a saved PEFT adapter")
    if not (adapter / "adapter_model.safetensors").is_file():
        pickled = (adapter / "adapter_model.bin").is_file()
        raise BadInput(f"{adapter} has no adapter_model.safetensors"
                       + (" (only a pickle .bin, which can run code)" if pickled else ""),
                       "save the adapter with safe_serialization=True")
    config = read_json_object(config_path, "point at a saved PEFT adapter")
    if config.get("peft_type") != "LORA":
        raise BadInput(f"{adapter} is a {config.get('peft_type')} adapter, not LoRA",
                       "merge a LoRA adapter")
    return config


def _training() -> ModuleType:
    """webslm.training, imported when a command first trains or merges: it loads torch,
    transformers, PEFT and TRL (seconds), which the CLI's start-up and `webslm data check` must
    not pay for. The one import of it here."""
    from webslm import training

    return training


def _resolve_base(base: str) -> ResolvedModel:
    return resolve_model(resolve_spec(model=base))


def check_output_apart(out: Path, inputs: Sequence[tuple[str, Path]]) -> None:
    """The output folder is replaced whole: it may not be, hold or lie inside what the command
    reads (`merge --adapter ft/adapter --out ft` would delete the adapter it merges)."""
    check_apart(out, inputs, "pass an --out outside the base model, the adapter and the data")


def merge_command(base: str, adapter: Path, out: Path) -> int:
    """Merge an adapter trained anywhere; reuse its training record when webslm trained it."""
    adapter_config = check_adapter(adapter)
    resolved = _resolve_base(base)
    check_output_apart(out, [("adapter folder", adapter), ("base model folder", resolved.path)])
    record_path = adapter / FINETUNE_FILE
    record = (read_json_object(record_path, "restore the training record webslm wrote")
              if record_path.is_file() else {})
    recipe = record.get("recipe") or {k: adapter_config.get(k) for k in (
        "r", "lora_alpha", "lora_dropout", "target_modules")}
    with atomic_directory(out, FINETUNE_FILE) as staging:
        _training().merge_into(resolved.path, adapter, staging)
        atomic_write_text(staging / FINETUNE_FILE, canonical_json(metadata(
            resolved, data_digest=record.get("data_digest"),
            system_prompt=record.get("system_prompt"), recipe=recipe)))
    print(f"merged model written to {out}")
    return 0


# --- the finetune command ---------------------------------------------------------------------

def _train(gpus: int, base: Path, files: Sequence[Path], examples: Sequence[TokenizedExample],
           recipe: Recipe, adapter_out: Path) -> None:
    """Train in this process on one device, or under torchrun on several GPUs."""
    training = _training()
    if gpus <= 1:
        result = training.train_adapter(base, examples, recipe, adapter_out)
        print(f"trained {result.steps} steps ({result.precision}) in {result.train_seconds:.1f} s "
              f"(base model loaded in {result.load_seconds:.1f} s); loss "
              f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}")
        return
    if recipe.global_batch == Recipe.global_batch:
        print(f"note: {gpus} GPUs split the {recipe.global_batch} conversations of each step; at "
              "this batch a small model trains slower on several GPUs than on one (bench/"
              f"RESULTS.md). --global-batch {recipe.global_batch * gpus} keeps "
              f"{recipe.global_batch} per GPU, which scales, with {gpus}x fewer, larger steps.",
              file=sys.stderr)
    available = training.gpu_count()
    if available < gpus:
        raise MissingEnvironment(f"--gpus {gpus} asks for more GPUs than this machine has "
                                 f"({available})", "pass a smaller --gpus")
    command = launch_command(gpus, base, files, adapter_out, recipe)
    if subprocess.call(command) != 0:
        raise StageFailed(f"training on {gpus} GPUs failed", "see the output above")


def _push(out: Path, repo: str) -> None:
    print(f"pushed {out} to {push_folder(out, repo)}")


def finetune_command(data: Sequence[Path], base: str, out: Path, recipe: Recipe, *,
                     gpus: int = 1, push: str | None = None) -> int:
    finetune(data, base, out, recipe, gpus=gpus)
    if push:
        _push(out, push)
    return 0


def finetune(files: Sequence[Path], base: str, out: Path, recipe: Recipe, gpus: int = 1) -> None:
    """Check the data, train the adapter, merge: what `webslm finetune` does (the e2e bench too)."""
    check_recipe(recipe)
    if gpus < 1:
        raise BadInput("--gpus must be at least 1", "pass --gpus 1 or more")
    batch_split(recipe, gpus)
    data = checked_data(files)
    resolved = _resolve_base(base)
    check_output_apart(out, [("base model folder", resolved.path),
                             *[("data file", path) for path in files]])
    examples = tokenize_all(load_tokenizer(resolved.path), data, recipe.max_seq_len)
    for line in summary_lines(data, examples, recipe.max_seq_len):
        print(line)
    if not examples:
        raise BadInput(f"no conversation has an assistant token within {recipe.max_seq_len} "
                       "tokens", "raise --max-seq-len or shorten the conversations")
    with atomic_directory(out, FINETUNE_FILE) as staging:
        adapter_out = staging / ADAPTER_DIR
        _train(gpus, resolved.path, files, examples, recipe, adapter_out)
        record = metadata(resolved, data_digest=data.digest, system_prompt=data.system_prompt,
                          recipe={**recipe.to_json(), "gpus": gpus})
        atomic_write_text(adapter_out / FINETUNE_FILE, canonical_json(record))
        began = time.perf_counter()
        _training().merge_into(resolved.path, adapter_out, staging)
        print(f"merged the adapter into fp16 weights in {time.perf_counter() - began:.1f} s")
        atomic_write_text(staging / FINETUNE_FILE, canonical_json(record))
    print(f"merged model written to {out} (adapter in {out / ADAPTER_DIR})")
