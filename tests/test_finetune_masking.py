"""Assistant-only loss masks from real chat templates: Qwen2.5, Llama-3 and plain ChatML.

The Qwen2.5 and Llama-3 templates are the stock ones TRL ships (trl/chat_templates/*.jinja, the
exact text of the models' tokenizer_config.json, which TRL matches to swap in training copies).
They are put on the tiny test tokenizer, with the templates' special tokens added, so rendering
and offsets run for real.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest
from tinymodels import CHATML_TEMPLATE

from webslm.chatdata import load_tokenizer, tokenize_conversation

CONVERSATION = (
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is a deductible?"},
    {"role": "assistant", "content": "The amount you pay before cover starts."},
    {"role": "user", "content": "Thanks, and a premium?"},
    {"role": "assistant", "content": "What you pay to keep the policy."},
)
TEMPLATES = {
    # name: (template source, special tokens it uses, end-of-turn token)
    "qwen2.5": ("qwen2_5.jinja", ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    "llama-3": ("llama3.jinja", ["<|begin_of_text|>", "<|start_header_id|>",
                                 "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"),
    "chatml": (None, ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
}


def template_text(source: str | None) -> str:
    if source is None:
        return CHATML_TEMPLATE
    return (resources.files("trl") / "chat_templates" / source).read_text(encoding="utf-8")


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def templated(request: pytest.FixtureRequest, tiny_qwen2: Path, tmp_path_factory) -> tuple:
    source, specials, end = TEMPLATES[request.param]
    folder = tmp_path_factory.mktemp(request.param) / "tok"
    shutil.copytree(tiny_qwen2, folder)
    tokenizer = load_tokenizer(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = template_text(source)
    if request.param == "llama-3":
        tokenizer.bos_token = "<|begin_of_text|>"
    return request.param, tokenizer, end


def masked_runs(tokenizer, ids: tuple[int, ...], mask: tuple[int, ...]) -> list[str]:
    """Decoded text of each maximal run of masked-in tokens."""
    runs: list[list[int]] = []
    for index, (token, bit) in enumerate(zip(ids, mask, strict=True)):
        if bit and (index == 0 or not mask[index - 1]):
            runs.append([])
        if bit:
            runs[-1].append(token)
    return [tokenizer.decode(run) for run in runs]


def test_loss_covers_exactly_the_assistant_turns(templated: tuple) -> None:
    name, tokenizer, end = templated
    example = tokenize_conversation(tokenizer, CONVERSATION, max_len=4096)
    runs = masked_runs(tokenizer, example.input_ids, example.assistant_mask)
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert len(runs) == len(answers), (name, runs)
    for run, answer in zip(runs, answers, strict=True):
        # the answer and its end-of-turn token (so the model learns to stop), nothing of the prompt
        assert run.strip().startswith(answer), (name, run)
        assert end in run, (name, run)
        assert "user" not in run and "What is a deductible" not in run
    prompt_text = tokenizer.decode([t for t, b in zip(example.input_ids, example.assistant_mask,
                                                      strict=True) if not b])
    assert "What is a deductible?" in prompt_text and "careful assistant" in prompt_text
    assert not any(answer in prompt_text for answer in answers)


def test_rendering_matches_the_template(templated: tuple) -> None:
    """The ids trained on are the template's own rendering, tokenized once, without extra BOS."""
    _, tokenizer, _ = templated
    example = tokenize_conversation(tokenizer, CONVERSATION, max_len=4096)
    text = tokenizer.apply_chat_template(list(CONVERSATION), tokenize=False)
    assert tokenizer.decode(example.input_ids) == text


def test_truncation_keeps_mask_aligned(templated: tuple) -> None:
    _, tokenizer, _ = templated
    full = tokenize_conversation(tokenizer, CONVERSATION, max_len=4096)
    cut = tokenize_conversation(tokenizer, CONVERSATION, max_len=len(full.input_ids) - 5)
    assert cut.input_ids == full.input_ids[:-5]
    assert cut.assistant_mask == full.assistant_mask[:-5]
