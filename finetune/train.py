"""Training entry point for one process of a (possibly data-parallel) LoRA SFT run.

`webslm finetune --gpus N` starts it under torchrun; it also runs as is under
`accelerate launch --num_processes N finetune/train.py ...` or plain `python`. Each process reads
and tokenizes the same data (cheap next to training); the Trainer splits batches across ranks and
rank 0 saves the adapter. Merging is left to the caller, on one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webslm.chatdata import ChatData, load_tokenizer, read_chat_data, tokenize_all
from webslm.crash import exit_on_error
from webslm.finetune import checked_data
from webslm.recipe import Recipe
from webslm.training import train_adapter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="local base model folder")
    parser.add_argument("--data", required=True, action="append", help="chat JSONL file")
    parser.add_argument("--adapter-out", required=True, help="folder the adapter is saved to")
    parser.add_argument("--recipe", default="{}", help="Recipe fields as JSON")
    parser.add_argument("--max-steps", type=int, default=-1)
    args = parser.parse_args(argv)
    recipe = Recipe.from_json(json.loads(args.recipe))
    data = valid_data([Path(f) for f in args.data])
    examples = tokenize_all(load_tokenizer(args.base), data, recipe.max_seq_len)
    result = train_adapter(Path(args.base), examples, recipe, Path(args.adapter_out),
                           max_steps=args.max_steps)
    print(json.dumps({"losses": result.losses, "steps": result.steps,
                      "world_size": result.world_size, "precision": result.precision}))
    end_process_group()
    return 0


def valid_data(files: list[Path]) -> ChatData:
    """The data, or BadInput when a line is bad. Every process reads it; the first (rank 0, or
    the only one) prints its report, so a run on N GPUs lists each problem once, not N times."""
    if int(os.environ.get("RANK", "0")) == 0:
        return checked_data(files)
    data = read_chat_data(files)
    data.require_valid()
    return data


def end_process_group() -> None:
    """End this process's part of the run's process group, after a successful run.

    Left to interpreter exit, gloo's worker threads can abort a process whose training has
    succeeded (SIGABRT, "terminate called without an active exception": pytorch/pytorch#190489;
    seen once in CI). The barrier lets rank 0 finish saving first. Not on failure: torchrun ends
    the other ranks, and a barrier would wait on a dead one.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    exit_on_error("train.py", lambda: sys.exit(main()))
