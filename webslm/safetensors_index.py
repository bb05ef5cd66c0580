"""model.safetensors.index.json: the weight index MLC-LLM's convert_weight reads.

Given a single `model.safetensors` and no index (most small models on the Hub), MLC-LLM v0.19.0
(`support/auto_weight.py`, `_check_safetensor`) loads the whole file with torch only to list its
tensors, then *writes* the index next to it: into the model folder, which webslm mounts
read-only, so the stage would fail with `OSError: [Errno 30] Read-only file system`. The `stage`
step writes the same index into the staged copy instead, from the header hub already checked, so
convert_weight finds it and never writes (nor loads the file just to list it).

The bytes are exactly what v0.19.0 writes: `json.dump({"weight_map": ...}, indent=2)`, tensors in
sorted order (safetensors' `keys()` order), no metadata, no trailing newline. Its order is also the
order convert_weight loads, and so stores, the parameters in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
HEADER_METADATA = "__metadata__"


def needs_index(names: Sequence[str]) -> bool:
    """A single `model.safetensors` without its index: convert_weight would write one."""
    return SINGLE_FILE in names and INDEX_FILE not in names


def tensor_names(header: dict[str, object]) -> list[str]:
    """The tensors a safetensors header lists, sorted (its metadata entry left out)."""
    return sorted(name for name in header if name != HEADER_METADATA)


def index_text(tensors: Iterable[str], shard: str = SINGLE_FILE) -> str:
    """The index MLC-LLM v0.19.0 writes for one safetensors file holding `tensors`."""
    return json.dumps({"weight_map": {name: shard for name in sorted(tensors)}}, indent=2)
