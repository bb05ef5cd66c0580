"""model.safetensors.index.json: the weight index MLC-LLM's convert_weight reads.

Given a single `model.safetensors` and no index (most small models on the Hub), MLC-LLM v0.19.0
(`support/auto_weight.py`, `_check_safetensor`) loads the whole file with torch only to list its
tensors, then *writes* the index next to it: into the model folder, which webslm mounts
read-only, so the stage would fail with `OSError: [Errno 30] Read-only file system`. (Shards
without an index it refuses outright.) The `stage` step writes the index into the staged copy
instead, from the safetensors headers, so convert_weight finds it and never writes.

The bytes are exactly what v0.19.0 writes: `json.dump({"weight_map": ...}, indent=2)`, tensors in
sorted order (safetensors' `keys()` order), no metadata, no trailing newline. Its order is also the
order convert_weight loads, and so stores, the parameters in.

A model that ships its own index is read here too (`read_weight_map`): the build checks that
every shard it names is in the folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from webslm.errors import BadInput
from webslm.files import parse_json, readable

INDEX_FILE = "model.safetensors.index.json"
HEADER_METADATA = "__metadata__"


def needs_index(names: Sequence[str]) -> bool:
    """Safetensors weights without their index: convert_weight would write one (or fail)."""
    return INDEX_FILE not in names and any(n.endswith(".safetensors") for n in names)


def weight_map(headers: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each tensor -> the file holding it, from every safetensors file's header, sorted."""
    where: dict[str, str] = {}
    for file, header in sorted(headers.items()):
        for tensor in header:
            if tensor == HEADER_METADATA:
                continue
            if tensor in where:
                raise BadInput(f"tensor {tensor} is in both {where[tensor]} and {file}",
                               "keep one copy of the model's weights in the folder")
            where[tensor] = file
    return dict(sorted(where.items()))


def index_text(tensor_files: Mapping[str, str]) -> str:
    """The index MLC-LLM v0.19.0 writes, for tensors in the given files."""
    return json.dumps({"weight_map": dict(sorted(tensor_files.items()))}, indent=2)


def read_weight_map(index: Path) -> dict[str, str]:
    """The weight_map of a model's own index (tensor name -> shard file): which shards the
    folder must hold."""
    fix = "re-download the model or fix the index file"
    with readable(index) as handle:
        document = parse_json(handle.read(), index.name, fix)
    tensor_files = document.get("weight_map", {}) if isinstance(document, dict) else None
    if not isinstance(tensor_files, dict) or not all(
            isinstance(v, str) for v in tensor_files.values()):
        raise BadInput(f"{index.name} is not a JSON object with a weight_map of shard names",
                       fix)
    return tensor_files
