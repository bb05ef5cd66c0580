"""The names of the files in a built package (dist/<name>), defined once.

    mlc-chat-config.json        the chat config web-llm reads (webslm.webllm rewrites it)
    ndarray-cache.json          the weights manifest, listing params_shard_N.bin
    tokenizer files             as the model ships them
    libs/<model_id>-webgpu.wasm the model library
    webllm-app-config.json      the AppConfig model record (webslm.webllm writes and reads it)
    provenance.json             the in-toto statement (webslm.provenance writes and reads it)
"""

from __future__ import annotations

from collections.abc import Iterable

CHAT_CONFIG_FILE = "mlc-chat-config.json"
WEIGHTS_MANIFEST = "ndarray-cache.json"
SHARD_PREFIX = "params_shard_"
LIBS_DIR = "libs"
APP_CONFIG_FILE = "webllm-app-config.json"
PROVENANCE_FILE = "provenance.json"


def library_name(model_id: str) -> str:
    """The model library's file name inside libs/."""
    return f"{model_id}-webgpu.wasm"


def package_library_path(model_id: str) -> str:
    """The model library's path inside the package."""
    return f"{LIBS_DIR}/{library_name(model_id)}"


def package_weight_files(names: Iterable[str]) -> list[str]:
    """The files web-llm reads the weights from: ndarray-cache.json and the shards it lists."""
    return sorted(n for n in names if n == WEIGHTS_MANIFEST or n.startswith(SHARD_PREFIX))
