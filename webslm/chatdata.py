"""Chat JSONL: validate it, and turn each conversation into tokens with an assistant-only loss mask.

A training set is JSONL, one conversation a line: `{"messages": [{"role": ..., "content": ...}]}`.
The check reports every problem at once (`FILE:LINE: what is wrong`) so a user fixes a file in
one pass instead of one error per run.

Loss masking works from the model's own chat template, whatever it is (ChatML, Qwen2.5,
Llama-3): each assistant turn's text span is found by rendering the conversation up to that turn
with and without the turn, and tokens whose characters fall in a span are trained on. TRL's
`assistant_only_loss` needs `{% generation %}` markers that stock templates lack; this does not.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webslm.errors import BadInput
from webslm.files import canonical_json, sha256_bytes

ROLES = ("system", "user", "assistant")
PROBLEMS_SHOWN = 50  # data problems listed in a report; the rest are counted
Message = dict[str, str]
Conversation = tuple[Message, ...]


@dataclass(frozen=True)
class Problem:
    """One invalid line: where it is and what is wrong with it."""

    file: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


@dataclass(frozen=True)
class ChatData:
    """The conversations of a set of files, with every problem and warning found in them."""

    conversations: tuple[Conversation, ...]
    problems: tuple[Problem, ...]
    warnings: tuple[str, ...]
    system_prompts: tuple[str, ...]

    @property
    def system_prompt(self) -> str | None:
        """The set's system prompt: the most common one (the build ships one prompt)."""
        return self.system_prompts[0] if self.system_prompts else None

    def report(self) -> list[str]:
        """What a user must read before training on the set: its warnings, then its problems
        (the first `PROBLEMS_SHOWN`, and how many more). Printed once, by the command that
        read the data."""
        lines = [f"warning: {warning}" for warning in self.warnings]
        lines += [str(problem) for problem in self.problems[:PROBLEMS_SHOWN]]
        if len(self.problems) > PROBLEMS_SHOWN:
            lines.append(f"... and {len(self.problems) - PROBLEMS_SHOWN} more")
        return lines

    def require_valid(self) -> None:
        """Raise BadInput (exit 2) when any line is bad; the lines are in `report`."""
        count = len(self.problems)
        if count:
            listed = "first " if count > PROBLEMS_SHOWN else ""
            raise BadInput(f"{count} problem{'' if count == 1 else 's'} in the chat data",
                           f"fix the {listed}lines listed above and run again")

    @property
    def digest(self) -> str:
        """Content digest of the conversations, independent of file names and JSON spacing."""
        text = "".join(canonical_json(list(c)) for c in self.conversations)
        return "sha256:" + sha256_bytes(text.encode("utf-8"))


@dataclass(frozen=True)
class TokenizedExample:
    """A rendered conversation's token ids and which of them the loss is computed on."""

    input_ids: tuple[int, ...]
    assistant_mask: tuple[int, ...]


def check_conversation(value: Any) -> tuple[Conversation | None, list[str]]:
    """Validate one parsed JSONL value; return the conversation (when valid) and its problems."""
    if not isinstance(value, dict) or "messages" not in value:
        return None, ['expected a JSON object with a "messages" list']
    messages = value["messages"]
    if not isinstance(messages, list) or not messages:
        return None, ['"messages" must be a non-empty list']
    problems: list[str] = []
    for number, message in enumerate(messages, start=1):
        where = f"message {number}"
        if not isinstance(message, dict):
            problems.append(f"{where}: expected an object with role and content")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            problems.append(f"{where}: content must be a string")
        elif not is_unicode_text(content):
            problems.append(f"{where}: content holds a lone UTF-16 surrogate (a broken \\uD8xx "
                            "escape), which is not text")
        elif not content.strip():
            problems.append(f"{where}: content is empty")
        if role == "system" and number != 1:
            problems.append(f"{where}: a system message must be the first message")
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        problems.append("no assistant message: there is nothing to learn from this line")
    if problems:
        return None, problems
    return tuple({"role": m["role"], "content": m["content"]} for m in messages), []


def is_unicode_text(text: str) -> bool:
    """False for a str holding lone surrogates (JSON allows the escapes; UTF-8 cannot hold them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_file(path: Path) -> tuple[list[Conversation], list[Problem]]:
    if not path.is_file():
        what = ("is a folder, not a file" if path.is_dir()
                else "is not a regular file (a FIFO, socket or device)" if path.exists()
                else "does not exist")
        raise BadInput(f"data file {path} {what}", "pass an existing chat JSONL file")
    conversations: list[Conversation] = []
    problems: list[Problem] = []
    raw = path.read_bytes()
    try:
        # JSONL lines end at "\n" only: U+2028 and friends are valid inside JSON strings
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as error:
        line_start = raw.rfind(b"\n", 0, error.start) + 1
        return [], [Problem(path, raw.count(b"\n", 0, error.start) + 1,
                            f"not UTF-8 text ({error.reason} at byte "
                            f"{error.start - line_start + 1} of the line)")]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(Problem(path, number, f"not valid JSON ({error.msg}, column "
                                                  f"{error.colno})"))
            continue
        except RecursionError:
            problems.append(Problem(path, number, "JSON nested too deeply to be a conversation"))
            continue
        conversation, found = check_conversation(value)
        problems.extend(Problem(path, number, what) for what in found)
        if conversation is not None:
            conversations.append(conversation)
    if not conversations and not problems:
        problems.append(Problem(path, 0, "no conversations in this file"))
    return conversations, problems


def read_chat_data(files: Sequence[Path]) -> ChatData:
    """Read and check every file; collect all problems instead of stopping at the first."""
    if not files:
        raise BadInput("no data files given", "pass one or more chat JSONL files")
    conversations: list[Conversation] = []
    problems: list[Problem] = []
    for path in files:
        found, bad = _read_file(Path(path))
        conversations.extend(found)
        problems.extend(bad)
    prompts = Counter(c[0]["content"] for c in conversations if c[0]["role"] == "system")
    warnings: list[str] = []
    if len(prompts) > 1:
        warnings.append(f"{len(prompts)} different system prompts across the set; the model is "
                        "shipped with one (the most common), so the others will not match what "
                        "users see")
    without = sum(1 for c in conversations if c[0]["role"] != "system")
    if prompts and without:
        warnings.append(f"{without} conversations have no system prompt while others have one")
    return ChatData(
        conversations=tuple(conversations),
        problems=tuple(problems),
        warnings=tuple(warnings),
        system_prompts=tuple(prompt for prompt, _ in prompts.most_common()),
    )


def _render(tokenizer: Any, messages: Sequence[Message], *, generation_prompt: bool) -> str:
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=generation_prompt))


def assistant_spans(tokenizer: Any,
                    conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn in it.

    A turn's span runs from the end of the prefix rendered with the generation prompt to the end
    of the prefix rendered with the turn: exactly what the model must generate, end-of-turn token
    included, so it learns to stop.
    """
    text = _render(tokenizer, conversation, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, conversation[:index], generation_prompt=True)
        through = _render(tokenizer, conversation[: index + 1], generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise BadInput("the tokenizer's chat template renders earlier turns differently as a "
                           "conversation grows, so assistant turns cannot be located",
                           "use a model whose chat template is prefix-preserving (ChatML, "
                           "Qwen2.5, Llama-3)")
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_conversation(tokenizer: Any, conversation: Conversation,
                          max_len: int) -> TokenizedExample:
    """Token ids (cut to max_len) with 1 on tokens that overlap an assistant turn, else 0."""
    text, spans = assistant_spans(tokenizer, conversation)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])[:max_len]
    offsets = list(encoded["offset_mapping"])[:max_len]
    mask = tuple(int(any(start < span_end and end > span_start for span_start, span_end in spans))
                 for start, end in offsets)
    return TokenizedExample(input_ids=tuple(ids), assistant_mask=mask)


def load_tokenizer(name: str | Path) -> Any:
    """A fast tokenizer (offsets are needed for masking) from a folder or Hub id; no remote code."""
    from transformers import AutoTokenizer  # heavy, and only this check needs it

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise BadInput(f"cannot load a tokenizer from {name}: {error.__class__.__name__}",
                       "pass a model folder or Hub id that has tokenizer files") from error
    if not getattr(tokenizer, "is_fast", False):
        raise BadInput(f"the tokenizer of {name} is not a fast (Rust) tokenizer",
                       "use a model that ships tokenizer.json")
    if not getattr(tokenizer, "chat_template", None):
        raise BadInput(f"the tokenizer of {name} has no chat template",
                       "use an instruct/chat model, whose tokenizer_config.json has one")
    return tokenizer


def tokenize_all(tokenizer: Any, data: ChatData, max_len: int) -> list[TokenizedExample]:
    """Tokenize every conversation; drop those whose assistant turns all lie past max_len."""
    examples = [tokenize_conversation(tokenizer, c, max_len) for c in data.conversations]
    return [e for e in examples if any(e.assistant_mask)]


def summary_lines(data: ChatData, examples: Sequence[TokenizedExample] | None = None,
                  max_len: int | None = None) -> list[str]:
    """What a user wants to know about a valid set before training on it."""
    turns = sum(1 for c in data.conversations for m in c if m["role"] == "assistant")
    lines = [f"{len(data.conversations)} conversations, {turns} assistant turns",
             f"system prompts: {len(data.system_prompts)}",
             f"data digest: {data.digest}"]
    if examples is not None:
        total = sum(len(e.input_ids) for e in examples)
        trained = sum(sum(e.assistant_mask) for e in examples)
        longest = max((len(e.input_ids) for e in examples), default=0)
        lines.append(f"{total} tokens ({trained} in assistant turns, trained on); longest "
                     f"{longest}")
        dropped = len(data.conversations) - len(examples)
        if dropped and max_len is not None:
            lines.append(f"{dropped} conversations dropped: no assistant token within "
                         f"{max_len} tokens")
    return lines
