"""Resolve a model argument to a checked local folder: a folder on disk or a Hugging Face snapshot.

Hub downloads take only what a build needs (configs, tokenizer files, safetensors) and record
the commit they resolved to, so a build names the exact bytes it used. Models are refused
before any tool sees them when they would run code: `auto_map` (the model's own Python) or
pickle weights (unless the user says --allow-pickle). No trust_remote_code, ever.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webslm.errors import BadInput
from webslm.files import check_links, parse_json, readable
from webslm.hubapi import download_snapshot
from webslm.modelfiles import check_model_file
from webslm.normalize import load_config
from webslm.safetensors_index import INDEX_FILE, read_weight_map
from webslm.spec import BuildSpec, matching_model_type, mlc_model_type

# What `webslm finetune`/`merge` made the model from; the build takes its system prompt.
FINETUNE_FILE = "webslm.json"
CONFIG_FILES = ("config.json", "generation_config.json", FINETUNE_FILE)
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "merges.txt",
    "added_tokens.json", "special_tokens_map.json", "chat_template.jinja",
)
SAFETENSORS_PATTERNS = ("*.safetensors", INDEX_FILE)
PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"
PICKLE_PATTERNS = ("pytorch_model*.bin", PICKLE_INDEX_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# safetensors dtypes MLC-LLM v0.19.0's loader converts (numpy-backed; no F64/complex/FP8), and
# the bytes of one element of each.
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1}


@dataclass(frozen=True)
class ResolvedModel:
    """A local folder holding a checked model, and where it came from."""

    path: Path
    repo_id: str | None
    revision: str | None
    model_type: str
    files: tuple[str, ...]


def allow_patterns(allow_pickle: bool) -> list[str]:
    """The Hub allow-list: what a build reads, and pickle weights only when asked for."""
    patterns = [*CONFIG_FILES, *TOKENIZER_FILES, *SAFETENSORS_PATTERNS]
    return patterns + list(PICKLE_PATTERNS) if allow_pickle else patterns


def check_safetensors_header(path: Path) -> dict[str, Any]:
    """A safetensors file's header; refuse one that is unreadable or points past the file's end."""
    size = path.stat().st_size
    fix = "re-download or re-save the model"
    with readable(path) as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise BadInput(f"corrupt safetensors file {path.name}: shorter than its header", fix)
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise BadInput(f"corrupt safetensors header in {path.name}: header length "
                           f"{header_len} exceeds the file", fix)
        header = parse_json(handle.read(header_len), f"the safetensors header of {path.name}",
                            fix)
    if not isinstance(header, dict):
        raise BadInput(f"corrupt safetensors header in {path.name}: not an object", fix)
    data_size = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):
            raise BadInput(f"corrupt safetensors header in {path.name}: tensor {name!r} lies "
                           "outside the file or its data_offsets are not two integers", fix)
        dtype = entry.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise BadInput(f"tensor {name!r} in {path.name} has dtype {dtype!r}, which MLC-LLM "
                           "v0.19.0 cannot convert", "save the model in float32, float16 or "
                           "bfloat16 (e.g. model.to(torch.float16).save_pretrained(...))")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise BadInput(f"corrupt safetensors header in {path.name}: tensor {name!r} has "
                           f"shape {shape!r}, not a list of sizes", fix)
        size = DTYPE_BYTES[dtype] * math.prod(shape)
        if offsets[1] - offsets[0] != size:
            raise BadInput(f"corrupt safetensors header in {path.name}: tensor {name!r} "
                           f"({dtype} {shape}) needs {size} bytes but its data_offsets span "
                           f"{offsets[1] - offsets[0]}", fix)
    spans = sorted(tuple(entry["data_offsets"]) + (name,) for name, entry in header.items()
                   if name != "__metadata__")
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise BadInput(f"corrupt safetensors header in {path.name}: tensors {first!r} and "
                           f"{second!r} overlap", fix)
    return header


def _weight_files(folder: Path, names: list[str], allow_pickle: bool) -> list[str]:
    """The weight files a build reads, each opened once here (an unreadable one is exit 3)."""
    safetensors = [n for n in names if n.endswith(".safetensors")]
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if safetensors:
        for name in safetensors:
            check_safetensors_header(folder / name)
        index = folder / INDEX_FILE
        if index.is_file():
            shards = set(read_weight_map(index).values())
            missing = sorted(shards - set(names))
            if missing:
                raise BadInput(f"{folder} lacks safetensors shards {', '.join(missing)}",
                               "re-download the model")
        return safetensors + ([INDEX_FILE] if index.is_file() else [])
    if pickles:
        if not allow_pickle:
            raise BadInput(f"{folder} has only pickle weights ({pickles[0]}), which can run code "
                           "when loaded", "convert them to safetensors, or pass --allow-pickle "
                           "for a model you trust")
        weights = pickles + [n for n in names if n == PICKLE_INDEX_FILE]
        for name in weights:  # the safetensors files were opened above, for their headers
            with readable(folder / name):
                pass
        return weights
    raise BadInput(f"{folder} has no weights (*.safetensors)", "point at a complete model folder")


def check_model_folder(folder: Path, *, allow_pickle: bool = False) -> tuple[str, tuple[str, ...]]:
    """Validate a model folder; return its MLC model type and the files a build uses."""
    if not folder.is_dir():
        raise BadInput(f"model folder {folder} does not exist", "pass an existing folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BadInput(f"{folder} has no config.json", "point at a Hugging Face model folder")
    config: dict[str, Any] = load_config(config_path)
    if "auto_map" in config:
        raise BadInput(f"{folder.name} needs its own model code (auto_map in config.json), which "
                       "webslm never runs", "pick a model whose architecture transformers and "
                       "MLC-LLM support natively")
    model_type = mlc_model_type(str(config.get("model_type", "")))
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    if not any(n in ("tokenizer.json", "tokenizer.model") for n in names):
        raise BadInput(f"{folder} has no tokenizer (tokenizer.json or tokenizer.model)",
                       "add the model's tokenizer files")
    kept = [n for n in names if n in CONFIG_FILES or n in TOKENIZER_FILES]
    used = sorted(set(kept + _weight_files(folder, names, allow_pickle)))
    check_links(folder, used, link_roots(folder), "copy the real file into the model folder "
                "(a link may point only inside it, or into the blobs/ of the Hugging Face "
                "cache its snapshot is in)")
    for name in kept:
        check_model_file(folder / name)
    return model_type, tuple(used)


def link_roots(folder: Path) -> tuple[Path, ...]:
    """Where a model folder's files may really be: inside the folder and, for a Hugging Face
    cache snapshot (`<repo>/snapshots/<commit>`, all symbolic links), its repo's `blobs/`."""
    real = folder.resolve()
    if real.parent.name == "snapshots":
        return real, real.parent.parent / "blobs"
    return (real,)


def resolve_model(spec: BuildSpec, *, allow_pickle: bool = False,
                  local_folder: Path | None = None) -> ResolvedModel:
    """A checked local folder for the spec's model, downloading a Hub model when needed.

    A local model is at `local_folder` when given (verify finds it), else at the spec's path
    from the current folder."""
    if spec.is_local:
        folder, repo_id, revision = (local_folder or Path(spec.model)).resolve(), None, None
    else:
        folder = download_snapshot(spec.model, spec.revision, allow_patterns(allow_pickle))
        repo_id, revision = spec.model, folder.name
    detected, files = check_model_folder(folder, allow_pickle=allow_pickle)
    model_type = matching_model_type(spec.model_type, detected)
    return ResolvedModel(path=folder, repo_id=repo_id, revision=revision,
                         model_type=model_type, files=files)
