"""LoRA SFT speed and peak GPU memory: webslm's recipe against the plain recipe, Qwen2.5-0.5B.

Two measurements. Steady state (the default): each variant (a `Recipe`, maybe with a `Trial`)
trains a fresh model for a few steps in this process, through the harness (finetune_harness.py:
the model, the data, the clocks, the FLOPs, the tables); "ours" is the product's recipe on a
compiled run. End to end (`--e2e`): what a user waits for, `webslm finetune` from process start
to merged checkpoint in fresh processes, on the starter file and on generated sets of 1,000 and
10,000 conversations, with whole-run tokens/s and MFU (compiling, recording, loading, merging
counted). Never quote the steady state without the whole run beside it.

Run: `python bench/bench_finetune.py` (one GPU); data-parallel scaling: `python -m
torch.distributed.run --standalone --nproc_per_node 2 bench/bench_finetune.py --variants eager,ours`
(strong: same global batch) and the same with `--global-batch 32` (weak: 16 per GPU); end to end:
`python bench/bench_finetune.py --e2e` (`--e2e-plan` says which sets, runs and epochs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from finetune_harness import (
    H100_BF16_PEAK,
    QWEN25_05B,
    TINY_MODEL,
    Trial,
    measured_matmul_peak,
    print_table,
    run_variant,
    synthetic_examples,
    training_flops_per_token,
    write_base_model,
)

from webslm.chatdata import Conversation, load_tokenizer, read_chat_data, tokenize_conversation
from webslm.checkout import checkout_path
from webslm.crash import exit_on_error
from webslm.finetune import finetune
from webslm.launch import end
from webslm.recipe import Recipe

PLAIN = Recipe(micro_batch=2, padding_free=False, assistant_only_loss=False,
               gradient_checkpointing=False, precision="fp16", compile_layers="off")
OURS = Recipe()
LONG_RUN = dataclasses.replace(OURS, compile_layers="on")  # Recipe() where "auto" compiles
# The third pass's default: compiled layers, each checkpointed whole, no CUDA graphs.
THIRD_PASS = dataclasses.replace(LONG_RUN, activation_budget=None, cuda_graphs=False)
VARIANTS = {  # Liger patches transformers' RoPE module-wide: the variants with it run last
    "plain": PLAIN,
    "eager": dataclasses.replace(OURS, compile_layers="off"),  # the recipe before issue 16
    "compiled": THIRD_PASS,  # the recipe of long runs before CUDA graphs
    "ours": LONG_RUN,
    "ours-budget0.5": dataclasses.replace(LONG_RUN, activation_budget=0.5),
    "ours-keep-all": dataclasses.replace(LONG_RUN, activation_budget=1.0),
    "ours-m8-budget0.5": dataclasses.replace(LONG_RUN, micro_batch=8, activation_budget=0.5),
    "ours-m8-keep-all": dataclasses.replace(LONG_RUN, micro_batch=8, activation_budget=1.0),
    "compiled-no-ckpt": dataclasses.replace(THIRD_PASS, gradient_checkpointing=False),
    "eager-no-ckpt": dataclasses.replace(OURS, compile_layers="off",
                                         gradient_checkpointing=False),
    "ours-no-dropout": dataclasses.replace(LONG_RUN, lora_dropout=0.0),
    "qlora": dataclasses.replace(OURS, bits=4, compile_layers="off"),  # --bits 4, short run
    "qlora-compiled": dataclasses.replace(LONG_RUN, bits=4),
    "ours-liger": dataclasses.replace(OURS, compile_layers="off", fused_kernels=True),
}


def _log_probs_and_logit_grads(logits: torch.Tensor, labels: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's log-probability of its label, and its gradient in the logits (one-hot minus
    softmax), in the logits' dtype."""
    wide = logits.float()
    log_z = torch.logsumexp(wide, dim=-1, keepdim=True)
    chosen = wide.gather(1, labels[:, None])
    grads = -torch.exp(wide - log_z)
    grads.scatter_add_(1, labels[:, None], torch.ones_like(chosen))
    return (chosen - log_z).squeeze(1), grads.to(logits.dtype)


class HeadGradInForward(torch.autograd.Function):
    """Trial (not the product's): the row loss's LM head with its gradient taken in the forward.

    TRL's head (`ChunkedLogProbFunction`, the product's) tiles the vocabulary, so the softmax is
    known only after every tile and the backward computes the logits again: three products the
    size of the vocabulary. Tiling rows instead, each tile sees its whole vocabulary: one product
    for the logits, one for the gradient in the hidden states, kept for the backward (which only
    scales it). Same call as TRL's for what `training.add_row_loss` passes; no bias, no logit
    transforms (`training.plain_lm_head`), the weight frozen.
    """

    ROWS = 512  # a tile's logits: 512 x 151,936 bf16 = 156 MB, as TRL's 32k-column tiles
    helper = None

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, *_):
        if bias is not None or weight.requires_grad:
            raise ValueError("the trial head takes a frozen weight without bias")
        if HeadGradInForward.helper is None:
            HeadGradInForward.helper = (torch.compile(_log_probs_and_logit_grads, dynamic=True)
                                        if hidden.is_cuda else _log_probs_and_logit_grads)
        device = hidden.device.type
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else hidden.dtype)
        head = weight.to(dtype)
        log_probs = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.float32)
        grads = torch.empty(hidden.shape, device=hidden.device, dtype=torch.float32)
        for start in range(0, hidden.shape[0], HeadGradInForward.ROWS):
            rows = slice(start, start + HeadGradInForward.ROWS)
            logits = hidden[rows].to(dtype) @ head.t()
            log_probs[rows], logit_grads = HeadGradInForward.helper(logits, labels[rows])
            grads[rows] = logit_grads @ head
        ctx.save_for_backward(grads)
        ctx.hidden_dtype = hidden.dtype
        return log_probs, None, None, None, None

    @staticmethod
    def backward(ctx, grad_log_probs, *_):
        (grads,) = ctx.saved_tensors
        hidden_grad = (grad_log_probs.float()[:, None] * grads).to(ctx.hidden_dtype)
        return (hidden_grad, *[None] * 8)


TRIALS = {  # run on the long-run recipe
    "ours-head-grad-in-forward": Trial(constants={"webslm.training": {
        "ChunkedLogProbFunction": HeadGradInForward}}),
    "ours-cdt": Trial(inductor={"coordinate_descent_tuning": True}),
    "ours-peft-dropout": Trial(constants={"webslm.training": {"FUSED_LORA_DROPOUT": False}}),
    "ours-head76k": Trial(constants={"webslm.training": {"HEAD_TILE": 151936 // 2}}),
    "ours-bucket1024": Trial(constants={"webslm.training": {"TOKEN_BUCKET": 1024}}),
    "ours-no-combo": Trial(constants={"webslm.training": {"LAYER_INDUCTOR_CONFIG": {}}}),
    "ours-seventh": Trial(constants={"webslm.training": {  # the seventh pass's default
        "TOKEN_BUCKET": 1024, "LAYER_INDUCTOR_CONFIG": {}}}),
    # the ninth pass's default: one 31-bit draw per Philox word, 10 rounds
    "ours-ninth": Trial(constants={"webslm.fusedlora": {"DRAWS_PER_WORD": 1,
                                                        "PHILOX_ROUNDS": 10}}),
    "ours-philox10": Trial(constants={"webslm.fusedlora": {"PHILOX_ROUNDS": 10}}),
    "ours-31bit": Trial(constants={"webslm.fusedlora": {"DRAWS_PER_WORD": 1}}),
}
VARIANTS.update({name: LONG_RUN for name in TRIALS})
VARIANTS.update({f"ours-budget{share}": dataclasses.replace(LONG_RUN, activation_budget=share)
                 for share in (0.35, 0.4)})
DEFAULT_VARIANTS = "plain,eager,compiled,ours,ours-budget0.5,ours-keep-all"

# --- end to end --------------------------------------------------------------------------------

E2E_RUNS = {  # name: (recipe, webslm finetune flags for the same thing, or None)
    "plain": (PLAIN, None),
    "ours": (OURS, []),
    "ours --compile on": (LONG_RUN, ["--compile", "on"]),
    "ours --compile off": (dataclasses.replace(OURS, compile_layers="off"), ["--compile", "off"]),
    "ours --bits 4": (dataclasses.replace(OURS, bits=4), ["--bits", "4"]),
}
STARTER = checkout_path("finetune", "data", "medical.jsonl")
STARTER_FILES = tuple(checkout_path("finetune", "data", name)
                      for name in ("medical.jsonl", "insurance.jsonl", "legal.jsonl"))
# SET:RUN:EPOCHS, run in this order, each in a fresh process; the compile caches start empty, so
# a compiled run repeated measures a second run on the same base model. Two plain runs of the
# starter file give plain's fixed seconds and seconds per token, for sets too long to run plain.
E2E_PLAN = ("starter:plain:3,starter:plain:1,starter:ours:3,1000:ours:3,1000:ours:3,"
            "1000:ours --compile off:3")


@dataclasses.dataclass(frozen=True)
class ChatSet:
    """A chat JSONL file and the token lengths of its conversations as training sees them."""

    path: Path
    lengths: tuple[int, ...]
    trained: tuple[int, ...]  # tokens in assistant turns, per conversation

    def flops_per_token(self, model_config: dict) -> float:
        mean = sum(self.lengths) / len(self.lengths)
        mean_sq = sum(n * n for n in self.lengths) / len(self.lengths)
        return training_flops_per_token(model_config, mean_sq, mean,
                                        sum(self.trained) / sum(self.lengths))


def chat_sets(names: set[str], folder: Path, max_len: int) -> dict[str, ChatSet]:
    """The starter file, and sets of N conversations drawn (seeded, with replacement) from the
    three starter files: real text of realistic length. Each drawn conversation's first user
    turn is numbered, so no two lines are the same; lengths are measured on the drawn originals
    (the number adds a few tokens)."""
    tokenizer = load_tokenizer(TINY_MODEL)

    def measured(path: Path, conversations: Sequence[Conversation]) -> ChatSet:
        examples = [tokenize_conversation(tokenizer, c, max_len) for c in conversations]
        return ChatSet(path, tuple(len(e.input_ids) for e in examples),
                       tuple(sum(e.assistant_mask) for e in examples))

    sets = {}
    if "starter" in names:
        sets["starter"] = measured(STARTER, read_chat_data([STARTER]).conversations)
    pool = read_chat_data(list(STARTER_FILES)).conversations
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(names - {"starter"}, key=int):
        drawn = random.Random(0).choices(pool, k=int(name))
        lines = []
        for number, conversation in enumerate(drawn):
            messages = [dict(m) for m in conversation]
            user = next(m for m in messages if m["role"] == "user")
            user["content"] = f"({number}) {user['content']}"
            lines.append(json.dumps({"messages": messages}))
        path = folder / f"generated-{name}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        sets[name] = measured(path, drawn)
    return sets


def e2e_child(name: str, data: Path, base: Path, out: Path, gpus: int, epochs: float) -> int:
    """One end-to-end run in this (fresh) process: the product's finetune() with a recipe."""
    recipe, _ = E2E_RUNS[name]
    finetune([data], str(base), out, dataclasses.replace(recipe, epochs=epochs), gpus=gpus)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    print(json.dumps({"peak_allocated_gib_main_process": peak}))
    return 0


def timed_run(command: list[str], env: dict[str, str]) -> tuple[int, float, dict[str, float],
                                                               list[str]]:
    """Run a command; (exit code, wall seconds, seconds from start at which each phase's line
    appeared on stdout, stdout lines). Phases: "tokens" (data checked and tokenized), "trained"
    (model loaded and trained, adapter saved), "merged" (the end)."""
    marks = {"tokens": re.compile(r"\d+ tokens \("), "trained": re.compile("trained "),
             "merged": re.compile("merged model written")}  # each at a line's start
    seen: dict[str, float] = {}
    lines = []
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=checkout_path(), env=env) as process:
        assert process.stdout is not None and process.stderr is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            for phase, start_of_line in marks.items():
                if start_of_line.match(line) and phase not in seen:
                    seen[phase] = time.perf_counter() - start
        errors = process.stderr.read()
    wall = time.perf_counter() - start
    if process.returncode:
        print("\n".join(lines[-20:]), errors[-4000:])
    return process.returncode, wall, seen, lines


def end_to_end(plan: list[tuple[str, str, float]], gpus: int, work: Path, model_config: dict,
               peak: float, keep_cache: bool = False) -> list[dict]:
    """Each planned run's wall time from process start to merged checkpoint, and its whole-run
    tokens/s and MFU (the tokens trained over that wall time).

    Runs that the CLI can express go through `python -m webslm finetune` itself; the plain
    recipe has no flag, so it runs the same finetune() in a fresh process. The runs share one
    cache folder (XDG_CACHE_HOME), emptied first unless `keep_cache`, so the first compiled run
    compiles from scratch.
    """
    base = write_base_model(work / "base", model_config)
    sets = chat_sets({name for name, _, _ in plan}, work / "data", OURS.max_seq_len)
    cache = work / "cache"
    if not keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    results = []
    for set_name, name, epochs in plan:
        chat = sets[set_name]
        _, flags = E2E_RUNS[name]
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        if flags is None:
            command = [sys.executable, __file__, "--e2e-child", name, "--e2e-data", str(chat.path),
                       "--e2e-base", str(base), "--e2e-out", str(out), "--gpus", str(gpus),
                       "--e2e-epochs", str(epochs)]
        else:
            command = [sys.executable, "-m", "webslm", "finetune", "--data", str(chat.path),
                       "--base", str(base), "--out", str(out), "--epochs", str(epochs),
                       "--gpus", str(gpus), *flags]
        code, wall, phases, lines = timed_run(command, env)
        trained = [line for line in lines if line.startswith(("trained ", "merged the adapter"))]
        tokens = epochs * sum(chat.lengths)
        rate = tokens / wall
        results.append({
            "set": set_name, "run": name, "epochs": epochs, "conversations": len(chat.lengths),
            "gpus": gpus, "exit": code, "wall_s": wall, "phases_s": phases,
            "tokens": tokens, "tokens_per_s": rate,
            "mfu": rate * chat.flops_per_token(model_config) / (peak * gpus),
            "mfu_vs_datasheet": rate * chat.flops_per_token(model_config) / (
                H100_BF16_PEAK * gpus),
            "trained": trained, "command": command[1:]})
        print(f"e2e {set_name} {name} x{epochs:g}: exit {code}, {wall:.1f} s "
              f"{json.dumps({k: round(v, 1) for k, v in phases.items()})}; {' '.join(trained)}",
              flush=True)
    return results


def plain_fit(results: list[dict]) -> tuple[float, float] | None:
    """(fixed seconds, seconds per token) of plain, fitted through its runs (least squares);
    None with fewer than two."""
    points = [(r["tokens"], r["wall_s"]) for r in results if r["run"] == "plain" and not r["exit"]]
    if len({tokens for tokens, _ in points}) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_w = sum(w for _, w in points) / len(points)
    slope = (sum((t - mean_t) * (w - mean_w) for t, w in points)
             / sum((t - mean_t) ** 2 for t, _ in points))
    return mean_w - slope * mean_t, slope


def print_e2e_table(results: list[dict]) -> None:
    """Whole runs side by side; "x plain" against plain's measured run of the same set and
    epochs, else against plain's fit (marked "est")."""
    fit = plain_fit(results)
    print(f"\n{'set':>7} {'run':20} {'epochs':>6} {'tokens':>10} {'wall s':>8} {'tok/s':>8} "
          f"{'MFU':>6} {'x plain':>9} {'exit':>4}  phases s (tokenized / trained / merged)")
    for r in results:
        plain = next((p["wall_s"] for p in results if p["run"] == "plain" and not p["exit"]
                      and p["set"] == r["set"] and p["epochs"] == r["epochs"]), None)
        versus = f"{plain / r['wall_s']:9.2f}" if plain else (
            f"{(fit[0] + fit[1] * r['tokens']) / r['wall_s']:5.2f} est" if fit else "")
        phases = " / ".join(f"{r['phases_s'].get(p, math.nan):.1f}"
                            for p in ("tokens", "trained", "merged"))
        print(f"{r['set']:>7} {r['run']:20} {r['epochs']:6g} {r['tokens']:10.0f} "
              f"{r['wall_s']:8.1f} {r['tokens_per_s']:8.0f} {r['mfu']:6.1%} {versus:>9} "
              f"{r['exit']:4}  {phases}", flush=True)
    if fit:
        print(f"plain fit: {fit[0]:.1f} s fixed + {fit[1] * 1e3:.3f} s per 1,000 tokens "
              f"({1 / fit[1]:.0f} tokens/s)")


def parse_plan(text: str) -> list[tuple[str, str, float]]:
    plan = []
    for item in text.split(","):
        set_name, name, epochs = item.split(":")
        if name not in E2E_RUNS or not (set_name == "starter" or set_name.isdigit()):
            raise SystemExit(f"bad --e2e-plan item {item!r}: SET (starter or a count):RUN "
                             f"({', '.join(E2E_RUNS)}):EPOCHS")
        plan.append((set_name, name, float(epochs)))
    return plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=6,
                        help="untimed optimizer steps first (compiles happen here)")
    parser.add_argument("--global-batch", type=int, default=OURS.global_batch,
                        help="conversations per optimizer step (weak scaling: 16 x GPUs)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--profile", action="store_true",
                        help="print the top GPU kernels of the first timed step of each variant")
    parser.add_argument("--timeline", action="store_true",
                        help="print where the timed steps' time goes, CPU against GPU")
    parser.add_argument("--smoke", action="store_true",
                        help="a 2-layer, narrow model: checks the plumbing on a CPU, no figures")
    parser.add_argument("--e2e", action="store_true",
                        help="instead: whole `webslm finetune` runs, process start to merge")
    parser.add_argument("--e2e-plan", default=E2E_PLAN,
                        help="SET:RUN:EPOCHS,... (SET: starter or a count of conversations)")
    parser.add_argument("--e2e-keep-cache", action="store_true",
                        help="keep the compile caches that earlier --e2e runs left in TMPDIR")
    parser.add_argument("--gpus", type=int, default=1, help="--gpus of the end-to-end runs")
    parser.add_argument("--e2e-child", help=argparse.SUPPRESS)
    parser.add_argument("--e2e-data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--e2e-base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--e2e-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--e2e-epochs", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_config = dict(QWEN25_05B)
    if args.smoke:
        model_config.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128)
    elif not torch.cuda.is_available():
        print("bench_finetune needs a CUDA GPU (or --smoke)")
        return 1
    if args.e2e_child:
        return e2e_child(args.e2e_child, args.e2e_data, args.e2e_base, args.e2e_out, args.gpus,
                         args.e2e_epochs)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_finetune"
    if args.e2e:
        plan = parse_plan(args.e2e_plan)
        peak = measured_matmul_peak() if torch.cuda.is_available() else math.nan
        print(f"bf16 matmul 8192^3 measured {peak / 1e12:.0f} TFLOP/s", flush=True)
        results = end_to_end(plan, args.gpus, work, model_config, peak, args.e2e_keep_cache)
        print_e2e_table(results)
        if args.json:
            Path(args.json).write_text(json.dumps({"matmul_peak": peak, "e2e": results},
                                                  indent=2))
        return 0
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:  # before any variant runs: a typo must not cost the GPU time of the others
        print(f"unknown variant {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
        return 2
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    examples = synthetic_examples(args.global_batch * (args.steps + args.warmup) * 2)
    lengths = [len(e.input_ids) for e in examples]
    mean_len = sum(lengths) / len(lengths)
    mean_sq = sum(n * n for n in lengths) / len(lengths)
    assistant_share = sum(sum(e.assistant_mask) for e in examples) / sum(lengths)
    peak = measured_matmul_peak() if rank == 0 and torch.cuda.is_available() else math.nan
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke)"
    if rank == 0:
        print(f"GPU: {device} x{world_size}; global batch {args.global_batch}; bf16 matmul "
              f"8192^3 measured {peak / 1e12:.0f} TFLOP/s; mean example {mean_len:.0f} tokens, "
              f"{assistant_share:.0%} of them assistant tokens")
    results = []
    for name in names:
        recipe = dataclasses.replace(VARIANTS[name], global_batch=args.global_batch,
                                     micro_batch=min(VARIANTS[name].micro_batch,
                                                     args.global_batch // world_size))
        try:
            result = run_variant(name, recipe, examples, args.steps, args.warmup, world_size,
                                 work, model_config, args.profile, args.timeline,
                                 TRIALS.get(name, Trial()))
        except Exception as error:  # noqa: BLE001 - one broken variant must not hide the others
            print(f"variant {name} failed: {type(error).__name__}: {error}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        share = assistant_share if recipe.assistant_only_loss else 1.0
        result["flops_per_token"] = training_flops_per_token(model_config, mean_sq, mean_len,
                                                             share)
        achieved = result["tokens_per_s"] * result["flops_per_token"]
        result["mfu_vs_datasheet"] = achieved / (H100_BF16_PEAK * world_size)
        result["mfu_vs_measured_matmul"] = achieved / (peak * world_size)
        results.append(result)
        if rank != 0:
            continue
        print_table(results)  # after every variant: a run cut short keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"gpu": device, "global_batch": args.global_batch, "matmul_peak": peak,
                 "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    # ends as `webslm` does (without the interpreter's teardown), so that plain's end-to-end
    # child, this script, and the CLI's runs end alike
    exit_on_error("bench_finetune", lambda: end(main()))
