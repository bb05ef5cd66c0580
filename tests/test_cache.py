"""The stage cache: keys that change with every input, entries that appear whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from webslm.cache import StageCache, StageKey, default_cache_dir, tree_digest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

BASE = StageKey(stage="convert_weight", toolchain_id="a" * 64,
                inputs={"stage/config.json": "1" * 64, "stage/model.safetensors": "2" * 64},
                arguments=("mlc_llm", "convert_weight", "--quantization", "q4f16_1"))


def test_key_is_stable_and_independent_of_input_order() -> None:
    reordered = StageKey(BASE.stage, BASE.toolchain_id,
                         dict(reversed(list(BASE.inputs.items()))), BASE.arguments)
    assert reordered.digest == BASE.digest
    assert len(BASE.digest) == 64


@pytest.mark.parametrize("changed", [
    StageKey("gen_config", BASE.toolchain_id, BASE.inputs, BASE.arguments),
    StageKey(BASE.stage, "b" * 64, BASE.inputs, BASE.arguments),
    StageKey(BASE.stage, BASE.toolchain_id,
             {**BASE.inputs, "stage/model.safetensors": "3" * 64}, BASE.arguments),
    StageKey(BASE.stage, BASE.toolchain_id, {**BASE.inputs, "stage/extra": "4" * 64},
             BASE.arguments),
    StageKey(BASE.stage, BASE.toolchain_id, BASE.inputs,
             ("mlc_llm", "convert_weight", "--quantization", "q4f32_1")),
], ids=["stage", "toolchain", "input byte", "extra input", "argument"])
def test_key_changes_with_each_component(changed: StageKey) -> None:
    assert changed.digest != BASE.digest


def test_argument_order_matters() -> None:
    swapped = StageKey(BASE.stage, BASE.toolchain_id, BASE.inputs, tuple(reversed(BASE.arguments)))
    assert swapped.digest != BASE.digest


def test_tree_digest_names_paths_and_contents() -> None:
    files = {"a.bin": "1" * 64, "libs/b.wasm": "2" * 64}
    assert tree_digest(files) == tree_digest(dict(reversed(list(files.items()))))
    assert tree_digest(files) != tree_digest({"a.bin": "1" * 64, "libs/c.wasm": "2" * 64})
    assert tree_digest(files) != tree_digest({"a.bin": "1" * 64, "libs/b.wasm": "3" * 64})


@contextlib.contextmanager
def stage_output(cache: StageCache) -> Iterator[Path]:
    """A scratch folder for a stage to fill, removed afterwards (as a build's scratch area is)."""
    folder = cache.scratch_folder("stage")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_store_then_lookup_gives_the_files_read_only(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "cache")
    assert cache.lookup(BASE) is None
    with stage_output(cache) as output:
        (output / "sub").mkdir()
        (output / "sub" / "x.bin").write_bytes(b"payload")
        entry = cache.store(BASE, output, {"sub/x.bin": sha(b"payload")})
    found = cache.lookup(BASE)
    assert found is not None and found.path == entry.path
    assert (found.path / "sub" / "x.bin").read_bytes() == b"payload"
    assert found.files == {"sub/x.bin": sha(b"payload")}
    assert not os.stat(found.path / "sub" / "x.bin").st_mode & 0o222
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_a_second_store_of_the_same_key_keeps_the_first(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    for payload in (b"first", b"second"):
        with stage_output(cache) as output:
            (output / "f").write_bytes(payload)
            cache.store(BASE, output, {"f": sha(payload)})
    entry = cache.lookup(BASE)
    assert entry is not None and (entry.path / "f").read_bytes() == b"first"


def test_a_half_written_entry_is_invisible(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    (tmp_path / "stages" / BASE.digest / "out").mkdir(parents=True)  # no entry.json: unfinished
    assert cache.lookup(BASE) is None


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "webslm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "webslm"


def test_a_changed_entry_is_discarded_with_a_warning(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cache = StageCache(tmp_path)
    with stage_output(cache) as output:
        (output / "f").write_bytes(b"payload")
        entry = cache.store(BASE, output, {"f": sha(b"payload")})
    os.chmod(entry.path / "f", 0o644)
    (entry.path / "f").write_bytes(b"edited!")
    assert cache.lookup(BASE) is None
    assert "was changed after it was stored (f)" in capsys.readouterr().err
    assert not (tmp_path / "stages" / BASE.digest).exists()
    assert list((tmp_path / "tmp").iterdir()) == []
