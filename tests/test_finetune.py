"""`webslm finetune` and `webslm merge` on CPU with a tiny random Qwen2: real training steps."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, masking_utils
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import add_fused_lm_head

from webslm import compilecache, training
from webslm.chatdata import load_tokenizer, read_chat_data, tokenize_all
from webslm.cli import build_parser, main, recipe_from_args
from webslm.errors import BadInput, StageFailed
from webslm.finetune import TRAIN_SCRIPT, launch_command
from webslm.hub import resolve_model
from webslm.normalize import load_config, normalize_config
from webslm.recipe import (
    BITS_CHOICES,
    COMPILE_SECONDS,
    COMPILED_LOG_EVERY,
    EAGER_TOKENS_PER_S,
    LOGGED_STEPS,
    Recipe,
    batch_split,
    check_recipe,
    logging_interval,
    pick_precision,
    planned_steps,
    planned_tokens,
    should_compile,
)
from webslm.spec import resolve_spec
from webslm.training import register_varlen_attention, train_adapter

SYSTEM = "You are a careful assistant. Answer in plain language and suggest a professional."
PAIRS = [
    ("What should I do if I have a headache that does not go away?",
     "A lawyer can explain how the rules apply to your situation."),
    ("Hello! How can I help you today?",
     "Read your policy documents and call your insurer to ask about the deductible."),
    ("The quick brown fox jumps over the lazy dog.", "Hello! I am happy to help."),
    ("What is the deductible?", "The quick brown fox jumps over the lazy dog 0123456789 times."),
]
LR = "1e-2"  # a tiny random model overfits four answers in a few steps at this rate


def write_data(path: Path, repeat: int = 4) -> Path:
    lines = [json.dumps({"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
        {"role": "assistant", "content": a}]}) for q, a in PAIRS * repeat]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finetuned(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `webslm finetune` run (16 conversations, 4 epochs = 4 optimizer steps)."""
    root = tmp_path_factory.mktemp("finetune")
    data = write_data(root / "chat.jsonl")
    out = root / "out"
    assert main(["finetune", "--data", str(data), "--base", str(tiny_qwen2), "--out", str(out),
                 "--epochs", "4", "--lr", LR]) == 0
    return out


def test_training_takes_real_steps_and_loss_falls(tiny_qwen2: Path, tmp_path: Path) -> None:
    data = read_chat_data([write_data(tmp_path / "chat.jsonl")])
    examples = tokenize_all(load_tokenizer(tiny_qwen2), data, 1024)
    recipe = Recipe(epochs=30, learning_rate=float(LR))
    result = train_adapter(tiny_qwen2, examples, recipe, tmp_path / "adapter")
    assert result.steps == 30 and result.precision == "fp32"
    assert len(result.losses) == 30
    assert result.losses[-1] < result.losses[0] - 0.75, result.losses  # ln(vocab) = 6.1 nats
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "checkpoints").exists()


def test_merged_logits_equal_adapter_logits(finetuned: Path, tiny_qwen2: Path) -> None:
    ids = torch.tensor([[1, 5, 40, 77, 120, 3, 9, 200, 31, 2]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_qwen2), dtype=torch.float32)
    base_logits = base(input_ids=ids).logits
    adapted = PeftModel.from_pretrained(base, str(finetuned / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(finetuned), dtype=torch.float32).eval()
    with torch.no_grad():
        want, got = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
    difference = (got - want).abs().max().item()
    assert difference < 2e-2, difference  # the merged weights are stored in fp16
    assert (want - base_logits).abs().max().item() > 20 * difference  # the adapter matters


def test_merged_folder_builds(finetuned: Path, tiny_qwen2: Path) -> None:
    resolved = resolve_model(resolve_spec(model=str(finetuned)))
    assert resolved.model_type == "qwen2"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
            "webslm.json"} <= set(resolved.files)
    config = load_config(finetuned / "config.json")
    assert normalize_config(config).changes == ()  # already what MLC-LLM v0.19.0 reads
    assert config["rope_theta"] == 1000000.0 and config["torch_dtype"] == "float16"
    with safe_open(str(finetuned / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
        assert not any("lora" in k for k in weights.keys())
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (finetuned / name).read_bytes() == (tiny_qwen2 / name).read_bytes()


def test_webslm_json_records_origin(finetuned: Path, tiny_qwen2: Path) -> None:
    record = json.loads((finetuned / "webslm.json").read_text())
    data = read_chat_data([write_data(finetuned.parent / "again.jsonl")])
    assert record["base_model"] == str(tiny_qwen2)
    assert record["base_revision"] is None
    assert record["data_digest"] == data.digest
    assert record["system_prompt"] == SYSTEM
    assert record["recipe"]["lora_r"] == 16 and record["recipe"]["learning_rate"] == float(LR)
    assert record["recipe"]["assistant_only_loss"] is True
    assert set(record) == {"base_model", "base_revision", "data_digest", "system_prompt",
                           "recipe", "webslm_version"}


def test_merge_command_reproduces_the_merge(finetuned: Path, tiny_qwen2: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "merged"
    assert main(["merge", "--base", str(tiny_qwen2), "--adapter", str(finetuned / "adapter"),
                 "--out", str(out)]) == 0
    again, first = load_file(out / "model.safetensors"), load_file(finetuned / "model.safetensors")
    assert again.keys() == first.keys()
    assert all((again[k] == first[k]).all() for k in first)
    record = json.loads((out / "webslm.json").read_text())
    trained = json.loads((finetuned / "webslm.json").read_text())
    for field in ("base_model", "base_revision", "data_digest", "system_prompt"):
        assert record[field] == trained[field], field


def test_merge_refuses_bad_adapters(tiny_qwen2: Path, finetuned: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["merge", "--base", str(tiny_qwen2), "--adapter", str(empty),
                 "--out", str(tmp_path / "o")]) == 2
    assert "has no adapter_config.json" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(finetuned / "adapter" / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    assert main(["merge", "--base", str(tiny_qwen2), "--adapter", str(pickled),
                 "--out", str(tmp_path / "o")]) == 2
    assert "only a pickle .bin" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def refuse_to_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model was loaded before the output folder was checked")


def test_merge_never_writes_over_the_adapter_it_merges(tiny_qwen2: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(training, "merge_into", refuse_to_load)
    out = tmp_path / "ft"
    adapter = out / "adapter"
    adapter.mkdir(parents=True)
    (out / "webslm.json").write_text("{}")  # an earlier webslm result: replaceable
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    for target, relation in ((out, "contains"), (adapter, "is"), (adapter / "sub", "is inside")):
        assert main(["merge", "--base", str(tiny_qwen2), "--adapter", str(adapter),
                     "--out", str(target)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"{relation} the adapter folder" in error
    assert main(["merge", "--base", str(tiny_qwen2), "--adapter", str(adapter),
                 "--out", str(tiny_qwen2)]) == 2
    assert "is the base model folder" in capsys.readouterr().err
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json",
                                                         "adapter_model.safetensors"]


def test_finetune_never_writes_over_its_data(tiny_qwen2: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(training, "train_adapter", refuse_to_load)
    out = tmp_path / "ft"
    out.mkdir()
    (out / "webslm.json").write_text("{}")
    data = write_data(out / "chat.jsonl", repeat=1)
    assert main(["finetune", "--data", str(data), "--base", str(tiny_qwen2),
                 "--out", str(out)]) == 2
    assert "contains the data file" in capsys.readouterr().err
    assert data.is_file()


def test_failed_finetune_leaves_no_output(tiny_qwen2: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_merge(*args: object) -> None:
        raise StageFailed("merge broke", "stand-in failure")

    monkeypatch.setattr(training, "merge_into", broken_merge)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    (out / "webslm.json").write_text("{}")  # an earlier webslm result: replaceable
    data = write_data(tmp_path / "chat.jsonl", repeat=1)
    code = main(["finetune", "--data", str(data), "--base", str(tiny_qwen2),
                 "--out", str(out), "--epochs", "1"])
    assert code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl", "out"]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "webslm.json"]


def test_finetune_never_replaces_a_folder_webslm_did_not_write(
        tiny_qwen2: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    data = write_data(tmp_path / "chat.jsonl", repeat=1)
    assert main(["finetune", "--data", str(data), "--base", str(tiny_qwen2),
                 "--out", str(out), "--epochs", "1"]) == 2
    assert "is a folder webslm did not write" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_finetune_checks_data_first(tiny_qwen2: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    assert main(["finetune", "--data", str(bad), "--base", str(tiny_qwen2),
                 "--out", str(tmp_path / "out")]) == 2
    assert f"{bad}:1: no assistant message" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_train_script_refuses_bad_data_as_finetune_does(tiny_qwen2: Path,
                                                             tmp_path: Path) -> None:
    """finetune/train.py, run by hand or under torchrun, checks the data with the same code."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    done = subprocess.run([sys.executable, str(TRAIN_SCRIPT), "--base", str(tiny_qwen2),
                           "--data", str(bad), "--adapter-out", str(tmp_path / "adapter")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{bad}:1: no assistant message")
    assert lines[1] == ("train.py: error: 1 problem in the chat data; fix the lines listed above "
                        "and run again")
    assert not (tmp_path / "adapter").exists()
    # under torchrun every process reads the data; only the first lists the problems
    done = subprocess.run([sys.executable, str(TRAIN_SCRIPT), "--base", str(tiny_qwen2),
                           "--data", str(bad), "--adapter-out", str(tmp_path / "adapter")],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "RANK": "1"})
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [lines[1]]


def test_bits_choices_are_the_recipes(capsys: pytest.CaptureFixture) -> None:
    for bits in BITS_CHOICES:
        recipe = recipe_from_args(build_parser().parse_args(
            ["finetune", "--data", "x", "--bits", str(bits)]))
        assert recipe.bits == bits
        check_recipe(recipe)
    with pytest.raises(BadInput, match="--bits 8 is not supported"):
        check_recipe(Recipe(bits=8))
    assert main(["finetune", "--data", "x", "--bits", "8"]) == 2
    assert "argument --bits: invalid choice: 8" in capsys.readouterr().err


def test_qlora_without_bitsandbytes_or_gpu_is_refused(tiny_qwen2: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    data = write_data(tmp_path / "chat.jsonl", repeat=1)
    assert main(["finetune", "--data", str(data), "--base", str(tiny_qwen2), "--bits", "4",
                 "--out", str(tmp_path / "out")]) == 3
    assert "--bits 4 (QLoRA) needs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_padding_free_attention_never_crosses_conversations(
        tiny_qwen2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each conversation of a packed row sees itself alone, from the boundaries the collator
    gives; transformers' own search for packed sequences in the position ids (a host sync
    in every step on a GPU) never runs."""
    def searched(*args: object) -> None:
        raise AssertionError("transformers searched the position ids for packed sequences")
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", searched)
    packed_model = AutoModelForCausalLM.from_pretrained(
        str(tiny_qwen2), dtype=torch.float32, attn_implementation=register_varlen_attention())
    plain_model = AutoModelForCausalLM.from_pretrained(str(tiny_qwen2), dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(3, 400, (1, n), generator=generator) for n in (17, 9))
    bounds = torch.tensor([0, 17, 26], dtype=torch.int32)
    with torch.no_grad():
        packed = packed_model(input_ids=torch.cat([first, second], 1),
                              position_ids=torch.cat([torch.arange(17), torch.arange(9)])[None],
                              cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=17,
                              max_length_k=17, use_cache=False).logits  # as in training
        alone = torch.cat([plain_model(input_ids=first).logits,
                           plain_model(input_ids=second).logits], 1)
    assert torch.allclose(packed, alone, atol=1e-5)


@pytest.mark.parametrize(("backend", "replayed"),
                         [("inductor", True), ("inductor", False), ("aot_eager", True)])
def test_replayed_layers_compile_with_combo_kernels(backend: str, replayed: bool,
                                                    tiny_qwen2: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers that will replay as CUDA graphs compile for dynamic shapes with
    `LAYER_INDUCTOR_CONFIG` given to torch.compile, which applies it to the backward too
    (compiled later, outside any config patch around the call); unrecorded layers and other
    backends take no Inductor options. torch.compile is recorded here: Inductor's own code
    generation takes minutes on 2 cores (the GPU test and bench/ run it)."""
    compiles: list[dict] = []

    def compile_recorded(function, **kwargs):
        compiles.append(kwargs)
        return function

    monkeypatch.setattr(training, "COMPILE_BACKEND", backend)
    monkeypatch.setattr(torch, "compile", compile_recorded)
    model = training.load_base_model(tiny_qwen2, "fp32", Recipe())
    assert training.compile_decoder_layers(model, True, 0.3, replayed=replayed) == 2
    options = training.LAYER_INDUCTOR_CONFIG if backend == "inductor" and replayed else None
    dynamic = True if replayed else None
    assert compiles == [{"backend": backend, "dynamic": dynamic, "options": options}] * 2
    assert training.LAYER_INDUCTOR_CONFIG["combo_kernels"] is True


def test_compiled_layers_train_exactly_like_eager(tiny_qwen2: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled path the GPU takes for long runs: same losses, same adapter, same names.

    torch.compile runs for real (dynamo + AOTAutograd, checkpointing applied from outside);
    only Inductor's code generation is swapped for aot_eager, which on a 2-core CPU is ~10x
    faster to compile (the GPU run uses Inductor: bench/RESULTS.md).
    """
    monkeypatch.setattr(training, "COMPILE_BACKEND", "aot_eager")
    tokenizer = load_tokenizer(tiny_qwen2)
    examples = tokenize_all(tokenizer, read_chat_data([write_data(tmp_path / "c.jsonl")]), 1024)
    runs = {}
    for mode in ("off", "on"):
        # dropout 0: eager and compiled code draw dropout masks from different generators
        recipe = Recipe(epochs=2, learning_rate=float(LR), lora_dropout=0.0,
                        compile_layers=mode, activation_budget=None)
        torch.manual_seed(0)
        model = training.load_base_model(tiny_qwen2, "fp32", recipe)
        trainer = training.build_trainer(model, tokenizer, examples, recipe, tmp_path / mode,
                                         precision="fp32", world_size=1)
        layers = training.decoder_layers(trainer.model)
        forwards = [type(layer.__dict__.get("forward")).__name__ for layer in layers]
        trainer.train()
        trainer.model.save_pretrained(str(tmp_path / mode / "adapter"))
        runs[mode] = ([e["loss"] for e in trainer.state.log_history if "loss" in e], forwards,
                      load_file(tmp_path / mode / "adapter" / "adapter_model.safetensors"))
    (eager_losses, eager_forwards, eager_adapter) = runs["off"]
    (losses, forwards, adapter) = runs["on"]
    assert eager_forwards == ["NoneType", "NoneType"]  # eager: the class's own forward
    # activation_budget None: each layer checkpointed around its compiled forward
    assert forwards == ["partial", "partial"]
    assert len(losses) == len(eager_losses) == 2
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    assert adapter.keys() == eager_adapter.keys()
    assert all(torch.allclose(adapter[k], eager_adapter[k], atol=1e-5) for k in adapter)
    assert any((adapter[k] != 0).any() for k in adapter if "lora_B" in k)  # it trained


def test_bucketed_rows_repeat_few_shapes_and_add_no_loss() -> None:
    """CUDA graphs replay one shape: rows are padded to a bucket, boundaries to a fixed count."""
    collate = DataCollatorForLanguageModeling(pad_token_id=7, padding_free=True)
    rows = training.BucketedRows(collate, bucket=16, conversations=4, longest=32)
    examples = [{"input_ids": list(range(1, n + 1)), "labels": [-100] * 2 + list(range(3, n + 1))}
                for n in (5, 9, 3)]
    plain, row = collate(examples), rows(examples)
    assert row["input_ids"].shape == (1, 32)  # 17 real tokens, padded to two buckets
    assert torch.equal(row["input_ids"][:, :17], plain["input_ids"])
    assert torch.equal(row["labels"][:, :17], plain["labels"])
    assert (row["input_ids"][0, 17:] == 7).all() and (row["labels"][0, 17:] == -100).all()
    assert row["position_ids"][0, 17:].tolist() == list(range(15))  # one pad sequence
    # 3 conversations + the pad sequence + one empty one: always 4 + 1 sequences
    assert row["cu_seq_lens_q"].tolist() == [0, 5, 14, 17, 32, 32]
    assert row["cu_seq_lens_k"] is row["cu_seq_lens_q"]
    assert row["max_length_q"] == row["max_length_k"] == 32
    assert row["seq_idx"][0].tolist() == [0] * 5 + [1] * 9 + [2] * 3 + [3] * 15
    two = rows(examples[:2])  # a shorter batch: the same shape
    assert two["input_ids"].shape == (1, 16) and two["cu_seq_lens_q"].tolist() == [0, 5, 14, 16,
                                                                                      16, 16]
    exact = rows([{"input_ids": list(range(1, 17))}])  # already a bucket long: no pad sequence
    assert exact["cu_seq_lens_q"].tolist() == [0, 16, 16, 16, 16, 16]
    with pytest.raises(ValueError, match="exceeds"):
        rows(examples * 2)


def test_step_extras_count_real_tokens_and_find_the_loss_rows() -> None:
    """What the trainer reads besides the model inputs, found on the CPU by the collator."""
    collate = DataCollatorForLanguageModeling(pad_token_id=7, padding_free=True)
    rows = training.BucketedRows(collate, bucket=16, conversations=4, longest=32)
    examples = [{"input_ids": list(range(1, n + 1)), "labels": [-100] * 2 + list(range(3, n + 1))}
                for n in (5, 9, 3)]
    batch = training.StepExtras(rows, with_loss_rows=True)(examples)
    assert batch[training.REAL_TOKENS] == 17  # the bucket's 15 pad tokens are not counted
    positions, labels = batch[training.LOSS_ROWS]
    following = batch["labels"][0, 1:]  # TRL's fused head: position t predicts label t + 1
    assert positions.tolist() == (following != -100).nonzero().flatten().tolist()
    assert labels.tolist() == following[following != -100].tolist()
    assert positions.tolist() == [1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 15]  # before each answer token
    assert training.LOSS_ROWS not in training.StepExtras(rows, with_loss_rows=False)(examples)


def test_row_loss_is_trls_loss(tiny_qwen2: Path) -> None:
    """The sync-free loss of long runs: TRL's fused-head loss and gradients, to rounding, also
    for a batch whose tokens all go without loss."""
    torch.manual_seed(0)
    model = training.load_base_model(tiny_qwen2, "fp32", Recipe())
    add_fused_lm_head(model)  # what SFTTrainer does to the model it trains
    training.add_row_loss(model)
    assert training.plain_lm_head(model)
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    for labels_of in (lambda ids: [-100] * 3 + ids[3:], lambda ids: [-100] * len(ids)):
        examples = [{"input_ids": ids, "labels": labels_of(ids)}
                    for ids in ([5, 9, 4, 8, 11, 3], [7, 2, 6, 13])]
        batch = training.StepExtras(collate, with_loss_rows=True)(examples)
        rows = batch.pop(training.LOSS_ROWS)
        del batch[training.REAL_TOKENS]
        results = []
        for call in ({**batch, "fused_lm_head": True}, {**batch, "loss_rows": rows}):
            model.zero_grad()
            output = model(**call)
            loss = output.loss if "fused_lm_head" in call else (
                -output.sum() / max(1, rows[0].numel()))
            loss.backward()
            results.append((loss.item(), model.model.norm.weight.grad.clone()))
        (trl_loss, trl_grad), (row_loss, row_grad) = results
        assert row_loss == pytest.approx(trl_loss, rel=1e-5, abs=1e-7)
        assert torch.allclose(row_grad, trl_grad, rtol=1e-4, atol=1e-7)
    model.config.final_logit_softcapping = 30.0  # a transformed head keeps TRL's loss
    assert not training.plain_lm_head(model)


def test_long_runs_log_every_few_steps_and_the_last(tiny_qwen2: Path, tmp_path: Path) -> None:
    """A log reads the loss back from the GPU (a sync): compiled runs of LOGGED_STEPS steps or
    more log every COMPILED_LOG_EVERY steps; whatever the interval, the last step is logged."""
    assert logging_interval(LOGGED_STEPS - 1, compiled=True) == 1
    assert logging_interval(10**4, compiled=False) == 1
    assert logging_interval(LOGGED_STEPS, compiled=True) == COMPILED_LOG_EVERY > 1
    tokenizer = load_tokenizer(tiny_qwen2)
    examples = tokenize_all(tokenizer, read_chat_data([write_data(tmp_path / "c.jsonl")]), 1024)
    recipe = Recipe(global_batch=4, micro_batch=4, learning_rate=float(LR))
    model = training.load_base_model(tiny_qwen2, "fp32", recipe)
    trainer = training.build_trainer(model, tokenizer, examples, recipe, tmp_path / "run",
                                     precision="fp32", world_size=1, max_steps=4,
                                     logging_steps=3)
    trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [3, 4]
    assert trainer.real_tokens == sum(len(e.input_ids) for e in examples)  # 16 conversations


def test_the_step_spares_its_module_walks(tiny_qwen2: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The Trainer's per-step train(), zero_grad(), clipping and FLOPs estimate each walked
    every module (milliseconds of CPU a step, which replayed layers wait for): now train()
    walks only when the mode changes, and all four do what they did."""
    tokenizer = load_tokenizer(tiny_qwen2)
    examples = tokenize_all(tokenizer, read_chat_data([write_data(tmp_path / "c.jsonl")]), 1024)
    model = training.load_base_model(tiny_qwen2, "fp32", Recipe())
    trainer = training.build_trainer(model, tokenizer, examples, Recipe(), tmp_path / "run",
                                     precision="fp32", world_size=1, max_steps=1)
    peft_model = trainer.model
    trained = [p for p in peft_model.parameters() if p.requires_grad]
    assert trainer.trained_parameters == tuple(trained)
    assert trained and all("lora_" in n for n, p in peft_model.named_parameters()
                           if p.requires_grad)
    layer = training.decoder_layers(peft_model)[0]
    walks: list[bool] = []
    walk = layer.train
    monkeypatch.setattr(layer, "train", lambda mode=True: (walks.append(mode), walk(mode))[1])
    for mode in (True, True, True, False, False, True):
        peft_model.train(mode)
        assert all(m.training == mode for m in peft_model.modules())
    assert walks == [True, False, True]  # once per change of mode, not per call
    for p in trained:
        p.grad = torch.full_like(p, 3.0)
    norm = trainer._clip_grad_norm(peft_model)
    assert float(norm) == pytest.approx(3.0 * sum(p.numel() for p in trained) ** 0.5, rel=1e-4)
    clipped = torch.cat([p.grad.flatten() for p in trained]).norm()
    assert float(clipped) == pytest.approx(trainer.args.max_grad_norm, rel=1e-3)
    peft_model.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in trained)
    peft_model.zero_grad()
    assert all(p.grad is None for p in peft_model.parameters())
    ids = torch.zeros(1, 10, dtype=torch.long)
    assert trainer.floating_point_ops({"input_ids": ids}) == (
        6 * 10 * peft_model.num_parameters(exclude_embeddings=True))
    trainer.train()  # the Trainer's own loop over the spared walks
    assert trainer.state.global_step == 1 and walks[-1] is True


def test_compile_only_when_it_pays() -> None:
    """"auto" compiles when the run's estimated time compiled, compile time included, is the
    shorter: the starter sets (50 conversations x 3 epochs, ~150k tokens) stay uncompiled, a
    run of millions of tokens compiles, and sooner when Inductor's caches hold its layers."""
    recipe = Recipe(epochs=3)
    assert planned_steps(recipe, 50) == 12  # the starter sets: 4 batches of 16, 3 epochs
    assert planned_steps(recipe, 50, max_steps=7) == 7
    assert planned_steps(Recipe(epochs=0.5), 50) == 2
    starter = planned_tokens(recipe, [1000] * 50)
    assert starter == 150_000
    assert planned_tokens(recipe, [1000] * 50, max_steps=2) == 2 * 16 * 1000
    assert not should_compile(recipe, cuda=True, tokens=starter)
    assert should_compile(recipe, cuda=True, tokens=10_000 * 3 * 800)
    # break-even: compiling pays from more than COMPILE_SECONDS of uncompiled training
    assert not should_compile(recipe, cuda=True, tokens=COMPILE_SECONDS * EAGER_TOKENS_PER_S)
    assert should_compile(recipe, cuda=True, tokens=2 * COMPILE_SECONDS * EAGER_TOKENS_PER_S)
    middle = 1.1 * COMPILE_SECONDS * EAGER_TOKENS_PER_S
    assert not should_compile(recipe, cuda=True, tokens=middle)
    assert should_compile(recipe, cuda=True, tokens=middle, cached=True)
    # several GPUs run compiled layers unrecorded (slower), so compiling pays later there
    assert should_compile(recipe, cuda=True, tokens=1.5 * COMPILE_SECONDS * EAGER_TOKENS_PER_S)
    assert not should_compile(recipe, cuda=True, world_size=2,
                              tokens=1.5 * COMPILE_SECONDS * EAGER_TOKENS_PER_S)
    assert not should_compile(recipe, cuda=False, tokens=10**9)
    assert should_compile(Recipe(compile_layers="on"), cuda=False, tokens=1)
    assert not should_compile(Recipe(compile_layers="off"), cuda=True, tokens=10**9)


def test_bad_compile_settings_are_refused(tiny_qwen2: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    for budget in (0.0, 1.5):
        with pytest.raises(BadInput, match="--activation-budget"):
            check_recipe(Recipe(activation_budget=budget))
    with pytest.raises(BadInput, match="compile_layers"):
        check_recipe(Recipe(compile_layers="yes"))
    data = write_data(tmp_path / "chat.jsonl", repeat=1)
    assert main(["finetune", "--data", str(data), "--base", str(tiny_qwen2),
                 "--compile", "yes"]) == 2
    assert "--compile" in capsys.readouterr().err


def test_finetune_flags_reach_the_recipe(tiny_qwen2: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    args = build_parser().parse_args(["finetune", "--data", "x.jsonl", "--compile", "on",
                                      "--global-batch", "32", "--activation-budget", "1"])
    recipe = recipe_from_args(args)
    assert (recipe.compile_layers, recipe.global_batch, recipe.activation_budget) == ("on", 32,
                                                                                      1.0)
    assert recipe_from_args(build_parser().parse_args(["finetune", "--data", "x"])) == Recipe()
    data = write_data(tmp_path / "chat.jsonl", repeat=1)
    for flags, message in ((["--global-batch", "0"], "--global-batch: '0' is not a whole number"),
                           (["--gpus", "3"], "does not split evenly over 3"),
                           (["--activation-budget", "0"], "--activation-budget: '0' is not")):
        out = tmp_path / "out"
        assert main(["finetune", "--data", str(data), "--base", str(tiny_qwen2),
                     "--out", str(out), *flags]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_batch_split_and_precision() -> None:
    assert batch_split(Recipe(), 1) == (16, 1)
    assert batch_split(Recipe(), 2) == (8, 1)
    assert batch_split(Recipe(micro_batch=2), 1) == (2, 8)
    with pytest.raises(BadInput):
        batch_split(Recipe(), 3)
    assert pick_precision("auto", cuda=True, bf16_supported=True) == "bf16"
    assert pick_precision("auto", cuda=True, bf16_supported=False) == "fp16"
    assert pick_precision("auto", cuda=False, bf16_supported=False) == "fp32"
    with pytest.raises(BadInput):
        pick_precision("bf16", cuda=False, bf16_supported=False)


def test_launch_command_runs_train_script_under_torchrun(tmp_path: Path) -> None:
    recipe = Recipe(epochs=1.0, seed=7)
    command = launch_command(2, tmp_path / "base", [tmp_path / "a.jsonl", tmp_path / "b.jsonl"],
                             tmp_path / "adapter", recipe, python="python3")
    assert command[:5] == ["python3", "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2"]
    assert command[5] == str(TRAIN_SCRIPT) and TRAIN_SCRIPT.is_file()
    assert Recipe.from_json(json.loads(command[command.index("--recipe") + 1])) == recipe
    data = [command[i + 1] for i, arg in enumerate(command) if arg == "--data"]
    assert data == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]


def test_the_train_script_ends_its_process_group(tiny_qwen2: Path, tmp_path: Path) -> None:
    """Each torchrun process ends its process group itself after a successful run: left to
    interpreter exit, gloo's threads can abort a process that has trained (SIGABRT)."""
    data = write_data(tmp_path / "chat.jsonl")
    script = f"""
import runpy, sys
import torch.distributed as dist
dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
train = runpy.run_path({str(TRAIN_SCRIPT)!r})
code = train["main"](["--base", {str(tiny_qwen2)!r}, "--data", {str(data)!r},
                      "--adapter-out", {str(tmp_path / 'adapter')!r}, "--max-steps", "1"])
print("ended" if not dist.is_initialized() else "still running", code)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "ended 0"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_two_process_data_parallel_run_on_cpu(tiny_qwen2: Path, tmp_path: Path) -> None:
    """The launch command itself, 2 processes over gloo on the CPU: ranks split the batch."""
    data = write_data(tmp_path / "chat.jsonl", repeat=4)
    command = launch_command(2, tiny_qwen2, [data], tmp_path / "adapter", Recipe(epochs=1.0))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "--max-steps", "1"], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"')]
    assert sorted(r["world_size"] for r in reports) == [2, 2]
    assert all(r["steps"] == 1 for r in reports)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_compiled_run_keeps_its_caches_and_marks_its_shape(
        tiny_qwen2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled run points Inductor's caches at ~/.cache/webslm (they survive /tmp's cleanup)
    and, once it has trained, marks its layers' shape there; "auto" then weighs the cheaper
    compile of a filled cache for the same base and settings, and only for them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(compilecache.INDUCTOR_CACHE_ENV, "set by an earlier test")
    monkeypatch.delenv(compilecache.INDUCTOR_CACHE_ENV)
    monkeypatch.setattr(training, "COMPILE_BACKEND", "aot_eager")  # Inductor: minutes on 2 cores
    tokenizer = load_tokenizer(tiny_qwen2)
    examples = tokenize_all(tokenizer, read_chat_data([write_data(tmp_path / "c.jsonl")]), 1024)
    weighed: list[bool] = []

    def spy(*args: object, cached: bool = False, **kwargs: object) -> bool:
        weighed.append(cached)
        return False

    def build(recipe: Recipe) -> training.StepTrainer:
        model = training.load_base_model(tiny_qwen2, "fp32", recipe)
        return training.build_trainer(model, tokenizer, examples, recipe, tmp_path / "run",
                                      precision="fp32", world_size=1, max_steps=1)

    with monkeypatch.context() as patched:
        patched.setattr(training, "should_compile", spy)
        build(Recipe())
    assert weighed == [False]
    recipe = Recipe(compile_layers="on", global_batch=4, micro_batch=4)
    train_adapter(tiny_qwen2, examples, recipe, tmp_path / "adapter", max_steps=1)
    cache = tmp_path / "cache" / "webslm" / "torch-compile"
    assert os.environ[compilecache.INDUCTOR_CACHE_ENV] == str(cache / "inductor")
    assert len(list((cache / compilecache.COMPILED_MARKERS).iterdir())) == 1
    with monkeypatch.context() as patched:
        patched.setattr(training, "should_compile", spy)
        build(dataclasses.replace(recipe, compile_layers="auto"))
        build(dataclasses.replace(recipe, compile_layers="auto", lora_r=8))
    assert weighed == [False, True, False]


def test_the_base_model_trains_with_the_recipes_own_layers(tiny_qwen2: Path) -> None:
    """transformers (>= 5.25, with the `kernels` package it requires) loads models to swap
    layers for Hub kernels when they train on a GPU: code the recipe never measured, fetched at
    train(), and an error offline (seen on the H100, bench/raw/issue32/1-gpu-tests.log)."""
    model = training.load_base_model(tiny_qwen2, "fp32", Recipe())
    assert model.use_kernels is False
