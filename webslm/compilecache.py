"""torch.compile's caches kept across runs, and whether they already hold a run's layers.

Compiling the decoder layers costs a minute or more once per process; most of that is Inductor
lowering the graphs and Triton compiling kernels, which Inductor caches on disk (its FX-graph
and AOT-autograd caches, keyed by the graph, its shapes, the settings and torch's version).
Its default folder is under /tmp, which a reboot empties; training points it at
`$XDG_CACHE_HOME/webslm/torch-compile` (unless the user set TORCHINDUCTOR_CACHE_DIR), so a
second run on the same base model finds it filled. A marker per `compile_key` records that a
compiled run of that shape finished, which `recipe.should_compile` reads as a cheaper compile.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from webslm.cache import default_cache_dir
from webslm.files import atomic_write_text, canonical_json, sha256_bytes

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
COMPILED_MARKERS = "compiled"  # one empty file per compile_key that finished a compiled run


def cache_folder() -> Path:
    return default_cache_dir() / "torch-compile"


def keep_inductor_caches(folder: Path) -> Path:
    """Point Inductor's caches (and the Triton kernels it compiles) at `folder` unless the
    user chose a folder; return the folder in use. Call before the first compile."""
    return Path(os.environ.setdefault(INDUCTOR_CACHE_ENV, str(folder / "inductor")))


def compile_key(model_config: Mapping[str, Any], compiled_settings: Mapping[str, Any],
                versions: Mapping[str, str]) -> str:
    """What the compiled layers depend on: the model's shape, the recipe's settings that reach
    the compiled graphs, and the versions of torch, Triton and the GPU."""
    text = canonical_json({"model": dict(model_config), "settings": dict(compiled_settings),
                           "versions": dict(versions)})
    return sha256_bytes(text.encode("utf-8"))


def was_compiled(folder: Path, key: str) -> bool:
    return (folder / COMPILED_MARKERS / key).is_file()


def mark_compiled(folder: Path, key: str) -> None:
    atomic_write_text(folder / COMPILED_MARKERS / key, "")
