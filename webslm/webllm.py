"""What WebLLM reads: the rewritten mlc-chat-config.json and the AppConfig model record.

Pure functions only. gen_config (MLC-LLM v0.19.0) takes sampling defaults from the model's
generation_config.json, a system prompt only from its conversation template, and stop tokens
hard-coded per template (qwen2: 151643/151645, ids a small vocabulary does not have). So after
gen_config the chat config is rewritten: our sampling defaults where the model sets none, the
spec's (or a fine-tune's) system prompt, and stop ids read from the model's own tokenizer when the
template's fall outside its vocabulary.

The AppConfig follows web-llm 0.2.79's ModelRecord (full URLs: a bare id fails in `new URL`),
plus `integrity` in the SRI format web-llm 0.2.83+ enforces (0.2.79 ignores it; our web client
checks it) and a `webslm` block the web client reads. web-llm's `integrity` has no place for the
weights, so their digests go in `webslm.weights` (ndarray-cache.json and every shard, SRI strings):
web-llm ignores the `webslm` block, and our client checks each shard before it enters Cache Storage.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from webslm.errors import BadInput
from webslm.files import canonical_json, read_json_object
from webslm.layout import library_path
from webslm.provenance import sri
from webslm.spec import is_f16

DEFAULT_BASE_URL = "http://127.0.0.1:8000/models"
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.8
FALLBACK_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
LOW_RESOURCE_MB = 2048.0
SHADER_F16 = "shader-f16"  # the WebGPU feature an f16 library needs (record.required_features)
MIB = 1024 * 1024
REBUILD = "rebuild with `invoke build`"


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float


def sampling_defaults(generation_config: Mapping[str, Any] | None) -> Sampling:
    """The model's own temperature/top_p when its generation_config.json sets them, else ours."""
    found = generation_config or {}
    return Sampling(temperature=float(found.get("temperature", DEFAULT_TEMPERATURE)),
                    top_p=float(found.get("top_p", DEFAULT_TOP_P)))


def choose_system_prompt(spec_prompt: str | None,
                         finetune: Mapping[str, Any] | None) -> str | None:
    """The spec's system prompt wins; else the one a fine-tune recorded in webslm.json."""
    if spec_prompt is not None:
        return spec_prompt
    prompt = (finetune or {}).get("system_prompt")
    return prompt if isinstance(prompt, str) else None


def _as_ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def tokenizer_token_ids(tokenizer: Mapping[str, Any], tokens: Iterable[str]) -> list[int]:
    """Ids of the given token strings in a tokenizer.json (added tokens, then the vocab)."""
    added = {t.get("content"): t.get("id") for t in tokenizer.get("added_tokens", [])}
    vocab = (tokenizer.get("model") or {}).get("vocab")
    vocab = vocab if isinstance(vocab, dict) else {}
    ids = [added.get(token, vocab.get(token)) for token in tokens]
    return [i for i in ids if isinstance(i, int)]


def stop_token_ids(template_ids: list[int], vocab_size: int, tokenizer: Mapping[str, Any] | None,
                   eos_token_id: Any, stop_str: Iterable[str] = ()) -> list[int]:
    """The template's stop ids if all lie inside the vocabulary, else ids from the tokenizer."""
    if all(0 <= i < vocab_size for i in template_ids):
        return list(template_ids)
    names = list(dict.fromkeys([*FALLBACK_STOP_TOKENS, *stop_str]))
    found = tokenizer_token_ids(tokenizer or {}, names) + _as_ids(eos_token_id)
    return sorted({i for i in found if 0 <= i < vocab_size})


def rewrite_chat_config(chat_config: Mapping[str, Any], *, sampling: Sampling,
                        system_prompt: str | None,
                        tokenizer: Mapping[str, Any] | None) -> dict[str, Any]:
    """gen_config's mlc-chat-config.json with sampling, system prompt and stop ids set (pure)."""
    result = copy.deepcopy(dict(chat_config))
    result["temperature"] = sampling.temperature
    result["top_p"] = sampling.top_p
    template = result.get("conv_template")
    if isinstance(template, dict):
        if system_prompt is not None:
            template["system_message"] = system_prompt
        vocab_size = int(result.get("vocab_size") or 0)
        template["stop_token_ids"] = stop_token_ids(
            _as_ids(template.get("stop_token_ids")), vocab_size, tokenizer,
            result.get("eos_token_id"), template.get("stop_str") or ())
    return result


def check_base_url(base_url: str) -> str:
    """An absolute http(s) URL without a trailing slash, or BadInput."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadInput(f"--base-url {base_url!r} is not an absolute http(s) URL",
                       f"pass e.g. {DEFAULT_BASE_URL} (web-llm rejects relative model URLs)")
    return base_url.rstrip("/")


def model_url(base_url: str, name: str) -> str:
    """Where the package is served; ends in `resolve/main/` so web-llm 0.2.79 adds nothing."""
    return f"{check_base_url(base_url)}/{name}/resolve/main/"


def vram_required_mb(chat_config: Mapping[str, Any], weight_bytes: int) -> float:
    """Estimate: weights + a full KV cache + the prefill workspace (logits and MLP activations)."""
    model = chat_config.get("model_config") or {}
    hidden = int(model.get("hidden_size") or 0)
    heads = int(model.get("num_attention_heads") or 1)
    head_dim = int(model.get("head_dim") or (hidden // max(heads, 1)))
    layers = int(model.get("num_hidden_layers") or 0)
    kv_heads = int(model.get("num_key_value_heads") or heads)
    window = int(chat_config.get("context_window_size") or 0)
    chunk = int(chat_config.get("prefill_chunk_size") or 0)
    vocab = int(chat_config.get("vocab_size") or 0)
    intermediate = int(model.get("intermediate_size") or 4 * hidden)
    act_bytes = 2 if is_f16(str(chat_config.get("quantization", ""))) else 4
    kv_cache = 2 * layers * kv_heads * head_dim * window * act_bytes
    workspace = chunk * (vocab * 4 + (hidden + 2 * intermediate) * act_bytes)
    return round((weight_bytes + kv_cache + workspace) / MIB, 2)


@dataclass(frozen=True)
class PackageFacts:
    """What the model record says about a built package (all digests are sha256 hex)."""

    name: str
    model_id: str
    quantization: str
    f16: bool
    chat_config: Mapping[str, Any]
    chat_config_digest: str
    library_digest: str
    tokenizer_digests: Mapping[str, str]
    weight_digests: Mapping[str, str]
    weight_bytes: int
    webllm_version: str
    toolchain_id: str
    system_prompt: str | None
    finetune: Mapping[str, Any] | None


def model_record(facts: PackageFacts, base_url: str) -> dict[str, Any]:
    """One AppConfig.model_list entry for the package served under base_url (pure)."""
    url = model_url(base_url, facts.name)
    vram = vram_required_mb(facts.chat_config, facts.weight_bytes)
    record: dict[str, Any] = {
        "model": url,
        "model_id": facts.model_id,
        "model_lib": url + library_path(facts.model_id),
        "vram_required_MB": vram,
        "low_resource_required": vram <= LOW_RESOURCE_MB,
        "overrides": {
            "context_window_size": facts.chat_config.get("context_window_size"),
            "temperature": facts.chat_config.get("temperature"),
            "top_p": facts.chat_config.get("top_p"),
        },
        "integrity": {
            "config": sri(facts.chat_config_digest),
            "model_lib": sri(facts.library_digest),
            "tokenizer": {name: sri(d) for name, d in sorted(facts.tokenizer_digests.items())},
        },
        "webslm": {
            "webllm_version": facts.webllm_version,
            "toolchain_id": facts.toolchain_id,
            "system_prompt": facts.system_prompt,
            "finetune": dict(facts.finetune) if facts.finetune is not None else None,
            "weights": {name: sri(d) for name, d in sorted(facts.weight_digests.items())},
        },
    }
    if facts.f16:
        record["required_features"] = [SHADER_F16]
    return record


def app_config(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {"model_list": [dict(r) for r in records]}


def render_app_config(records: Iterable[Mapping[str, Any]]) -> str:
    """The text of webllm-app-config.json for these records (canonical JSON)."""
    return canonical_json(app_config(records))


def read_app_config(path: Path, fix: str = REBUILD) -> dict[str, Any]:
    """A webllm-app-config.json: a JSON object, or BadInput (with `fix` as the hint)."""
    return read_json_object(path, fix)


def render_chat_config(chat_config: Mapping[str, Any]) -> str:
    """The text of a rewritten mlc-chat-config.json (canonical JSON)."""
    return canonical_json(chat_config)


def read_chat_config(path: Path, fix: str = REBUILD) -> dict[str, Any]:
    """An mlc-chat-config.json: a JSON object, or BadInput (with `fix` as the hint)."""
    return read_json_object(path, fix)
