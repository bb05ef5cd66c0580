"""Rewrite a config.json written by newer transformers into what MLC-LLM v0.19.0 reads.

transformers 5 nests RoPE settings in `rope_parameters` and writes `dtype` instead of
`torch_dtype`. MLC-LLM v0.19.0 reads the old top-level keys: without them a qwen2 build fails
(missing rope_theta) and, worse, a llama build silently uses the default RoPE base and drops
llama3 scaling. This module restores the old keys per architecture, and refuses a config that
lacks what the architecture needs instead of letting the compiler guess.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webslm.errors import BadInput
from webslm.files import atomic_write_text, check_writable, read_json_object

# Model types whose MLC-LLM v0.19.0 config needs a RoPE base; it silently defaults when absent.
NEEDS_ROPE_BASE = frozenset({"qwen2", "llama", "mistral", "phi3", "gemma", "gemma2"})
# The RoPE scaling types MLC-LLM v0.19.0 accepts, per model type (others have no scaling support).
SUPPORTED_SCALING = {"llama": ("llama3",), "phi3": ("longrope", "su")}
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
LONGROPE_KEYS = ("long_factor", "short_factor")
# Keys that old configs kept at top level and transformers 5 may move into rope_parameters.
TOP_LEVEL_ROPE_KEYS = ("rope_theta", "partial_rotary_factor")


@dataclass(frozen=True)
class NormalizedConfig:
    """A rewritten config and one line per change made (empty when it was already old-format)."""

    config: dict[str, Any]
    changes: tuple[str, ...]


@dataclass(frozen=True)
class NormalizeResult:
    config_path: Path
    changes: tuple[str, ...]


def _rope_type(rope: dict[str, Any]) -> str:
    return str(rope.get("rope_type") or rope.get("type") or "default")


def _restored_scaling(model_type: str, rope: dict[str, Any]) -> dict[str, Any]:
    """The `rope_scaling` dict MLC-LLM v0.19.0 expects for this model type's scaling."""
    kind = _rope_type(rope)
    if kind not in SUPPORTED_SCALING.get(model_type, ()):
        supported = SUPPORTED_SCALING.get(model_type)
        fix = (f"MLC-LLM v0.19.0 supports only {', '.join(supported)} scaling for {model_type}"
               if supported else f"MLC-LLM v0.19.0 has no RoPE scaling for {model_type}")
        raise BadInput(f"config.json uses RoPE scaling {kind!r}", fix + "; use a model without it")
    keys = LLAMA3_KEYS if model_type == "llama" else LONGROPE_KEYS
    missing = [key for key in keys if key not in rope]
    if missing:
        raise BadInput(f"rope_parameters ({kind}) lacks {', '.join(missing)}",
                       "restore them from the model's original config.json")
    scaling = {key: rope[key] for key in keys}
    if model_type == "llama":
        scaling["rope_type"] = "llama3"
    else:
        scaling["type"] = "longrope"
    return scaling


def normalize_config(config: dict[str, Any], model_type: str | None = None) -> NormalizedConfig:
    """Return the config with the old top-level keys restored, and what changed. Pure."""
    if not isinstance(config, dict):
        raise BadInput("config.json is not a JSON object", "point at a Hugging Face config.json")
    kind = model_type or str(config.get("model_type", ""))
    result = dict(config)
    changes: list[str] = []

    if "dtype" in result:
        dtype = result.pop("dtype")
        if "torch_dtype" not in result and dtype is not None:
            result["torch_dtype"] = dtype
            changes.append(f"torch_dtype: set to {dtype!r} from dtype")
        changes.append("dtype: removed (MLC-LLM v0.19.0 reads `dtype` as its own compute dtype)")

    rope = result.get("rope_parameters")
    if rope is not None and not isinstance(rope, dict):
        raise BadInput("rope_parameters in config.json is not an object", "fix config.json")
    if isinstance(rope, dict):
        for key in TOP_LEVEL_ROPE_KEYS:
            if key not in rope:
                continue
            if key not in result:
                result[key] = rope[key]
                changes.append(f"{key}: set to {rope[key]!r} from rope_parameters")
            elif result[key] != rope[key]:
                raise BadInput(f"config.json has {key}={result[key]!r} but rope_parameters says "
                               f"{rope[key]!r}", "keep one value")
        if _rope_type(rope) != "default" and result.get("rope_scaling") is None:
            result["rope_scaling"] = _restored_scaling(kind, rope)
            kind_name = _rope_type(rope)
            changes.append(f"rope_scaling: restored {kind_name} scaling from rope_parameters")
        if kind == "phi3" and "original_max_position_embeddings" in rope and \
                "original_max_position_embeddings" not in result:
            result["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
            changes.append("original_max_position_embeddings: set from rope_parameters")

    if kind in NEEDS_ROPE_BASE and "rope_theta" not in result:
        raise BadInput(f"config.json has no RoPE base (rope_theta) at top level or in "
                       f"rope_parameters, which {kind} needs",
                       "add rope_theta from the model's original config.json")
    return NormalizedConfig(config=result, changes=tuple(changes))


def config_path_of(path: Path) -> Path:
    """A model folder's config.json, or the path itself when it names a file."""
    candidate = path / "config.json" if path.is_dir() else path
    if not candidate.is_file():
        raise BadInput(f"{candidate} does not exist", "pass a model folder or its config.json")
    return candidate


def load_config(path: Path) -> dict[str, Any]:
    return read_json_object(path, "pass a Hugging Face config.json")


def in_place_target(source: Path) -> Path:
    """The config.json to rewrite in place, with what would be lost refused: a symbolic link
    would become a regular file (and its target stay old), a read-only file is the user saying
    "do not change this"."""
    if source.is_symlink():
        raise BadInput(f"{source} is a symbolic link to {source.resolve()}; normalizing in place "
                       "would replace the link with a file",
                       f"pass --out DIR, or normalize {source.resolve()} itself")
    links = source.stat().st_nlink
    if links > 1:
        raise BadInput(f"{source} is one of {links} hard links to the same file; normalizing in "
                       "place would break the link (the other names would keep the old config)",
                       "pass --out DIR, or copy the file first")
    if not source.stat().st_mode & 0o222:
        raise BadInput(f"{source} is read-only; normalize leaves read-only files alone",
                       "pass --out DIR to write the normalized config elsewhere, or make it "
                       "writable first")
    return source


def normalize_path(path: Path, out: Path | None = None) -> NormalizeResult:
    """Normalize a model folder's config.json in place (atomically, keeping its mode, owner and
    group) or into `out`/config.json."""
    source = config_path_of(Path(path))
    normalized = normalize_config(load_config(source))
    mode = stat.S_IMODE(source.stat().st_mode)
    if out is not None:
        check_writable(Path(out))
        target = Path(out) / "config.json"
        if target.resolve() == source.resolve():
            in_place_target(source)
        mode |= stat.S_IWUSR  # a copy the user can normalize again
    else:
        target = source
        if not normalized.changes:
            return NormalizeResult(config_path=target, changes=())
        in_place_target(source)
    text = json.dumps(normalized.config, indent=2, ensure_ascii=False) + "\n"
    owner = None if out is not None else (source.stat().st_uid, source.stat().st_gid)
    try:
        atomic_write_text(target, text, mode=mode, owner=owner)
    except PermissionError as error:
        raise BadInput(f"cannot give the rewritten {target} its owner and group back "
                       f"({error.strerror})", "pass --out DIR, or normalize as its owner") \
            from error
    return NormalizeResult(config_path=target, changes=normalized.changes)
