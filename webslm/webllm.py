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
from webslm.layout import APP_CONFIG_FILE, package_library_path
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


def vram_required_mb(chat_config: ChatConfig, weight_bytes: int) -> float:
    """Estimate: weights + a full KV cache + the prefill workspace (logits and MLP activations)."""
    shape = chat_config.shape
    act_bytes = 2 if is_f16(chat_config.quantization) else 4
    kv_cache = (2 * shape.layers * shape.kv_heads * shape.head_dim
                * (chat_config.context_window_size or 0) * act_bytes)
    workspace = chat_config.prefill_chunk_size * (
        chat_config.vocab_size * 4 + (shape.hidden + 2 * shape.intermediate) * act_bytes)
    return round((weight_bytes + kv_cache + workspace) / MIB, 2)


@dataclass(frozen=True)
class PackageFacts:
    """What the model record says about a built package (all digests are sha256 hex)."""

    name: str
    model_id: str
    quantization: str
    f16: bool
    chat_config: ChatConfig
    chat_config_digest: str
    library_digest: str
    tokenizer_digests: Mapping[str, str]
    weight_digests: Mapping[str, str]
    weight_bytes: int
    webllm_version: str
    toolchain_id: str
    system_prompt: str | None
    finetune: Mapping[str, Any] | None


def model_record(facts: PackageFacts, base_url: str) -> ModelRecord:
    """One AppConfig.model_list entry for the package served under base_url (pure)."""
    url = model_url(base_url, facts.name)
    vram = vram_required_mb(facts.chat_config, facts.weight_bytes)
    record: dict[str, Any] = {
        "model": url,
        "model_id": facts.model_id,
        "model_lib": url + package_library_path(facts.model_id),
        "vram_required_MB": vram,
        "low_resource_required": vram <= LOW_RESOURCE_MB,
        "overrides": {
            "context_window_size": facts.chat_config.context_window_size,
            "temperature": facts.chat_config.temperature,
            "top_p": facts.chat_config.top_p,
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
    return ModelRecord.from_json(record)


# ---------------------------------------------------------------------------- the files (typed)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _texts(value: Any) -> dict[str, str]:
    return {k: v for k, v in _object(value).items() if isinstance(v, str)}


@dataclass(frozen=True)
class Integrity:
    """The record's SRI strings: web-llm checks config and model_lib, our client the tokenizer."""

    config: str | None
    model_lib: str | None
    tokenizer: Mapping[str, str]


@dataclass(frozen=True)
class WebslmBlock:
    """The record's `webslm` block: web-llm ignores it; our client, publish and verify read it.
    A record without one reads as all None (and no weights)."""

    webllm_version: str | None
    toolchain_id: str | None
    system_prompt: str | None
    finetune: Mapping[str, Any] | None
    weights: Mapping[str, str]


@dataclass(frozen=True)
class ModelRecord:
    """One AppConfig.model_list entry: the fields webslm reads, and `raw`, the whole JSON object
    (written back as it is, so rewriting one field keeps every other byte)."""

    model: str
    model_id: str | None
    model_lib: str
    required_features: tuple[str, ...]
    integrity: Integrity
    webslm: WebslmBlock
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ModelRecord:
        raw = copy.deepcopy(dict(value))
        integrity, block = _object(raw.get("integrity")), _object(raw.get("webslm"))
        features = raw.get("required_features")
        return cls(
            model=str(raw.get("model", "")),
            model_id=_text(raw.get("model_id")),
            model_lib=str(raw.get("model_lib", "")),
            required_features=tuple(features) if isinstance(features, list) else (),
            integrity=Integrity(config=_text(integrity.get("config")),
                                model_lib=_text(integrity.get("model_lib")),
                                tokenizer=_texts(integrity.get("tokenizer"))),
            webslm=WebslmBlock(
                webllm_version=_text(block.get("webllm_version")),
                toolchain_id=_text(block.get("toolchain_id")),
                system_prompt=_text(block.get("system_prompt")),
                finetune=block["finetune"] if isinstance(block.get("finetune"), dict) else None,
                weights=_texts(block.get("weights")),
            ),
            raw=raw,
        )

    def library_path_in_folder(self) -> str | None:
        """The library's path inside the model folder (model_lib relative to model), or None
        when model_lib lies outside it. The one derivation check, publish and verify use."""
        model, lib = self.model, self.model_lib
        if not model.endswith("/") or not lib.startswith(model) or len(lib) == len(model):
            return None
        return lib[len(model):]

    def with_urls(self, model: str, model_lib: str) -> ModelRecord:
        """The same record served from elsewhere: only `model` and `model_lib` change."""
        return ModelRecord.from_json({**self.raw, "model": model, "model_lib": model_lib})


@dataclass(frozen=True)
class AppConfig:
    """A webllm-app-config.json: its model records, and any other top-level keys as they were."""

    records: tuple[ModelRecord, ...]
    rest: Mapping[str, Any]

    @classmethod
    def from_json(cls, value: Mapping[str, Any], fix: str = REBUILD) -> AppConfig:
        records = value.get("model_list", [])
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise BadInput(f"{APP_CONFIG_FILE}'s model_list is not a list of model records", fix)
        rest = {k: copy.deepcopy(v) for k, v in value.items() if k != "model_list"}
        return cls(tuple(ModelRecord.from_json(r) for r in records), rest)

    def to_json(self) -> dict[str, Any]:
        return {**self.rest, "model_list": [dict(r.raw) for r in self.records]}


def app_config(records: Iterable[ModelRecord]) -> AppConfig:
    return AppConfig(records=tuple(records), rest={})


def render_app_config(config: AppConfig) -> str:
    """The text of webllm-app-config.json (canonical JSON)."""
    return canonical_json(config.to_json())


def read_app_config(path: Path, fix: str = REBUILD) -> AppConfig:
    """A webllm-app-config.json, or BadInput (with `fix` as the hint)."""
    return AppConfig.from_json(read_json_object(path, fix), fix)


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class ModelShape:
    """The chat config's `model_config` sizes the VRAM estimate needs (0 where absent)."""

    hidden: int
    heads: int
    head_dim: int
    layers: int
    kv_heads: int
    intermediate: int

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ModelShape:
        hidden, heads = _int(value.get("hidden_size")), _int(value.get("num_attention_heads"), 1)
        return cls(hidden=hidden, heads=heads,
                   head_dim=_int(value.get("head_dim"), hidden // max(heads, 1)),
                   layers=_int(value.get("num_hidden_layers")),
                   kv_heads=_int(value.get("num_key_value_heads"), heads),
                   intermediate=_int(value.get("intermediate_size"), 4 * hidden))


@dataclass(frozen=True)
class ChatConfig:
    """An mlc-chat-config.json: the fields webslm reads, and `raw`, the whole JSON object."""

    quantization: str
    conv_template: Mapping[str, Any]
    tokenizer_files: tuple[str, ...]
    context_window_size: int | None
    prefill_chunk_size: int
    vocab_size: int
    temperature: float | None
    top_p: float | None
    shape: ModelShape
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ChatConfig:
        raw = copy.deepcopy(dict(value))
        files = raw.get("tokenizer_files")
        window = raw.get("context_window_size")
        return cls(quantization=str(raw.get("quantization", "")),
                   conv_template=_object(raw.get("conv_template")),
                   tokenizer_files=tuple(files) if isinstance(files, list) else (),
                   context_window_size=_int(window) if window is not None else None,
                   prefill_chunk_size=_int(raw.get("prefill_chunk_size")),
                   vocab_size=_int(raw.get("vocab_size")),
                   temperature=_number(raw.get("temperature")),
                   top_p=_number(raw.get("top_p")),
                   shape=ModelShape.from_json(_object(raw.get("model_config"))),
                   raw=raw)


def render_chat_config(chat_config: ChatConfig) -> str:
    """The text of a rewritten mlc-chat-config.json (canonical JSON)."""
    return canonical_json(chat_config.raw)


def read_chat_config(path: Path, fix: str = REBUILD) -> ChatConfig:
    """An mlc-chat-config.json, or BadInput (with `fix` as the hint)."""
    return ChatConfig.from_json(read_json_object(path, fix))
