"""A TEST STAND-IN for a built dist folder: small fake files in the real layout.

The real package comes from the MLC-LLM toolchain image, which tests cannot build here. This
writes the same file names and the same `webllm-app-config.json` record, made by the product's
own `webslm.webllm.model_record` from the files' real digests, so the web client and the server
see exactly the contract of the brief. The weights are random bytes and the model library is an
empty (valid) WebAssembly module: loading goes as far as web-llm instantiating it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from webslm.files import canonical_json
from webslm.layout import (
    CHAT_CONFIG_FILE,
    package_library_path,
    package_weight_files,
)
from webslm.provenance import hash_files, list_files
from webslm.toolchain import load_lock
from webslm.webllm import (
    DEFAULT_BASE_URL,
    ChatConfig,
    PackageFacts,
    app_config,
    model_record,
    render_app_config,
)

EMPTY_WASM_MODULE = b"\0asm\x01\0\0\0"
FINETUNE = {"base_model": "Qwen/Qwen2.5-0.5B-Instruct", "base_revision": None,
            "data_digest": "sha256:" + "0" * 64, "system_prompt": "You are a clinic assistant.",
            "recipe": {}, "webslm_version": "0.1.0"}
TOOLCHAIN_ID = "f" * 64
SHARD_BYTES = 96 * 1024


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def make_fake_dist(out: Path, name: str, quantization: str = "q4f32_1", *,
                   system_prompt: str | None = None, finetune: dict[str, Any] | None = None,
                   webllm_version: str | None = None, base_url: str = DEFAULT_BASE_URL,
                   shards: int = 1, shard_bytes: int = SHARD_BYTES) -> Path:
    """out/<name>/ holding a package in the dist layout; returns that folder."""
    folder = out / name
    model_id = f"{name}-{quantization}"
    rng = random.Random(name)
    names = [f"params_shard_{i}.bin" for i in range(shards)]
    for shard in names:
        write(folder / shard, rng.randbytes(shard_bytes))
    write(folder / "ndarray-cache.json", canonical_json({
        "metadata": {"ParamSize": shards, "ParamBytes": shards * shard_bytes, "BitsPerParam": 32},
        "records": [{"dataPath": shard, "format": "raw-shard", "nbytes": shard_bytes,
                     "records": [], "md5sum": ""} for shard in names]}))
    chat_config = {
        "model_type": "qwen2", "quantization": quantization, "vocab_size": 512,
        "context_window_size": 512, "prefill_chunk_size": 128, "temperature": 0.6,
        "top_p": 0.9, "tokenizer_files": ["tokenizer.json"],
        "model_config": {"hidden_size": 64, "num_attention_heads": 4,
                         "num_hidden_layers": 2, "num_key_value_heads": 2},
        "conv_template": {"name": "chatml", "system_message": system_prompt or ""},
    }
    write(folder / CHAT_CONFIG_FILE, canonical_json(chat_config))
    write(folder / "tokenizer.json", json.dumps({"version": "1.0", "model": {"vocab": {}}}))
    write(folder / "tokenizer_config.json", json.dumps({"model_max_length": 512}))
    write(folder / package_library_path(model_id), EMPTY_WASM_MODULE)
    digests = hash_files(folder, list_files(folder))
    facts = PackageFacts(
        name=name, model_id=model_id, quantization=quantization, f16="f16" in quantization,
        chat_config=ChatConfig.from_json(chat_config),
        chat_config_digest=digests[CHAT_CONFIG_FILE],
        library_digest=digests[package_library_path(model_id)],
        tokenizer_digests={n: digests[n] for n in ("tokenizer.json", "tokenizer_config.json")},
        weight_digests={n: digests[n] for n in package_weight_files(digests)},
        weight_bytes=shards * shard_bytes,
        webllm_version=webllm_version or load_lock().webllm_version,
        toolchain_id=TOOLCHAIN_ID, system_prompt=system_prompt, finetune=finetune)
    write(folder / "webllm-app-config.json",
          render_app_config(app_config([model_record(facts, base_url)])))
    return folder
