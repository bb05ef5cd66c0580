"""Packaging: dist/<name>/ written whole from the stage outputs — the weights, the tokenizer,
the rewritten chat config, the model library, the AppConfig record and the provenance statement.

The folder appears at once or not at all (files.atomic_directory). The files are copies of
verified stage outputs, so their digests are known; only the rewritten chat config is hashed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webslm import provenance, webllm
from webslm.files import atomic_directory, clone_or_copy, read_json_object
from webslm.hub import FINETUNE_FILE, ResolvedModel
from webslm.layout import (
    APP_CONFIG_FILE,
    CHAT_CONFIG_FILE,
    PROVENANCE_FILE,
    SHARD_PREFIX,
    library_name,
    package_library_path,
    package_weight_files,
)
from webslm.provenance import hash_files
from webslm.spec import is_f16

if TYPE_CHECKING:
    from webslm.spec import BuildSpec
    from webslm.toolchain import Toolchain

GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class StageFiles:
    """A stage's output folder and the sha256 of each file in it."""

    path: Path
    files: Mapping[str, str]


def copy_files(source: Path, names: Sequence[str], target: Path) -> None:
    for name in names:
        clone_or_copy(source / name, target / name)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a stage's output, or None when the file is absent."""
    if not path.is_file():
        return None
    return read_json_object(path, "remove the stage cache (--no-cache) and build again")


def write_package(final: Path, *, spec: BuildSpec, model: ResolvedModel,
                  inputs: Mapping[str, str], staged: StageFiles, weights: StageFiles,
                  chat: StageFiles, library: StageFiles, toolchain: Toolchain, image_digest: str,
                  base_url: str | None, allow_pickle: bool,
                  stages: Mapping[str, Mapping[str, str]],
                  ) -> tuple[dict[str, Any], dict[str, str]]:
    """Write dist/<name>/ whole; returns its provenance statement and the shipped files' digests."""
    finetune = read_json(staged.path / FINETUNE_FILE)
    system_prompt = webllm.choose_system_prompt(spec.system_prompt, finetune)
    raw_chat = read_json(chat.path / CHAT_CONFIG_FILE) or {}
    chat_config = webllm.ChatConfig.from_json(webllm.rewrite_chat_config(
        raw_chat, sampling=webllm.sampling_defaults(read_json(staged.path / GENERATION_CONFIG)),
        system_prompt=system_prompt, tokenizer=read_json(chat.path / "tokenizer.json")))
    lib_name, lib_path = library_name(spec.model_id), package_library_path(spec.model_id)
    with atomic_directory(final, PROVENANCE_FILE) as folder:
        copy_files(weights.path, sorted(weights.files), folder)
        copy_files(chat.path, sorted(n for n in chat.files if n != CHAT_CONFIG_FILE), folder)
        (folder / CHAT_CONFIG_FILE).write_text(webllm.render_chat_config(chat_config),
                                               encoding="utf-8")
        clone_or_copy(library.path / lib_name, folder / lib_path)
        # copies of verified stage outputs: their digests are known; only the rewritten
        # chat config is new
        outputs = {**weights.files,
                   **{n: d for n, d in chat.files.items() if n != CHAT_CONFIG_FILE},
                   lib_path: library.files[lib_name],
                   **hash_files(folder, [CHAT_CONFIG_FILE])}
        statement = provenance.statement(
            outputs=outputs, spec=spec.to_json(),
            model={"id": model.repo_id or spec.model, "revision": model.revision,
                   "source": "hub" if model.repo_id else "local", "allow_pickle": allow_pickle},
            inputs=inputs, toolchain_id=toolchain.id, image=toolchain.image,
            image_digest=image_digest,
            lock_digest=toolchain.lock_digest,
            webllm_version=toolchain.webllm_version,
            stages=stages,
        )
        facts = webllm.PackageFacts(
            name=spec.name, model_id=spec.model_id,
            quantization=spec.quantization, f16=is_f16(spec.quantization),
            chat_config=chat_config, chat_config_digest=outputs[CHAT_CONFIG_FILE],
            library_digest=outputs[lib_path],
            tokenizer_digests={n: outputs[n] for n in chat_config.tokenizer_files
                               if n in outputs},
            weight_digests={n: outputs[n] for n in package_weight_files(outputs)},
            weight_bytes=sum((folder / n).stat().st_size
                             for n in outputs if n.startswith(SHARD_PREFIX)),
            webllm_version=toolchain.webllm_version, toolchain_id=toolchain.id,
            system_prompt=system_prompt, finetune=finetune,
        )
        record = webllm.model_record(facts, base_url or webllm.DEFAULT_BASE_URL)
        (folder / APP_CONFIG_FILE).write_text(
            webllm.render_app_config(webllm.app_config([record])), encoding="utf-8")
        (folder / PROVENANCE_FILE).write_text(provenance.render(statement), encoding="utf-8")
    shipped = {n: d for n, d in outputs.items() if n not in provenance.NOT_SUBJECTS}
    return statement, shipped
