"""What to build: a `BuildSpec`, the presets, and validation against MLC-LLM v0.19.0's choices.

Every name a user can type (model type, conversation template, quantization) is checked here,
before any download or container starts, against the lists read from MLC-LLM v0.19.0's source
(shared/reference/mlc-llm-v0.19.0.md). A typo fails with exit 2 and the closest valid names.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from webslm.errors import BadInput
from webslm.normalize import load_config

MODEL_TYPES: tuple[str, ...] = (
    "llama", "mistral", "gemma", "gemma2", "gpt2", "mixtral", "gpt_neox", "gpt_bigcode", "phi",
    "phi3", "phi3_v", "qwen", "qwen2", "qwen2_moe", "deepseek_v2", "stablelm", "baichuan",
    "internlm", "internlm2", "rwkv5", "orion", "llava", "rwkv6", "chatglm", "eagle", "bert",
    "medusa", "starcoder2", "cohere", "minicpm", "deepseek", "gptj", "olmo", "nemotron",
)
QUANTIZATIONS: tuple[str, ...] = (
    "q0f16", "q0f32", "q3f16_0", "q3f16_1", "q4f16_0", "q4f16_1", "q4f32_1", "q4f16_2",
    "q4f16_autoawq", "q4f16_ft", "e5m2_e5m2_f16", "e4m3_e4m3_f16", "e4m3_e4m3_f16_max_calibrate",
)
CONV_TEMPLATES: tuple[str, ...] = (
    "llama-3", "llama-3_1", "chatml", "chatml_nosystem", "qwen2", "open_hermes_mistral",
    "neural_hermes_mistral", "llama_default", "llama-2", "mistral_default", "gpt2",
    "codellama_completion", "codellama_instruct", "vicuna_v1.1", "conv_one_shot",
    "redpajama_chat", "rwkv_world", "rwkv", "gorilla", "gorilla-openfunctions-v2", "guanaco",
    "dolly", "oasst", "stablelm", "stablecode_completion", "stablecode_instruct", "minigpt",
    "moss", "LM", "stablelm-3b", "gpt_bigcode", "wizardlm_7b", "wizard_coder_or_math", "glm",
    "phi-2", "phi-3", "phi-3-vision", "stablelm-2", "gemma_instruction", "orion", "llava",
    "hermes2_pro_llama3", "hermes3_llama-3_1", "tinyllama_v1_0", "aya-23", "deepseek",
    "deepseek_v2", "deepseek_r1_qwen", "deepseek_r1_llama", "olmo", "nemotron",
)
AUTO = "auto"
DEFAULT_QUANTIZATION = "q4f16_1"
DEFAULT_CONTEXT_WINDOW = 4096
DEFAULT_PREFILL_CHUNK = 1024
MAX_CONTEXT_WINDOW = (1 << 31) - 1  # WebGPU has no 64-bit integers: sizes are 32-bit there

# The conversation template a model type gets when the user names none.
DEFAULT_CONV_TEMPLATE: dict[str, str] = {
    "qwen2": "qwen2", "llama": "llama-3", "gemma2": "gemma_instruction",
    "gemma": "gemma_instruction",
    "phi3": "phi-3", "mistral": "mistral_default", "olmo": "olmo", "nemotron": "nemotron",
    "deepseek_v2": "deepseek_v2", "stablelm": "stablelm-2",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_REVISION = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_.][A-Za-z0-9_./+-]{0,254}$")


@dataclass(frozen=True)
class Preset:
    """A model known to build and run in WebLLM, with its MLC model type and template."""

    model: str
    model_type: str
    conv_template: str


PRESETS: dict[str, Preset] = {
    "qwen2.5-0.5b": Preset("Qwen/Qwen2.5-0.5B-Instruct", "qwen2", "qwen2"),
    "qwen2.5-coder-1.5b": Preset("Qwen/Qwen2.5-Coder-1.5B-Instruct", "qwen2", "qwen2"),
    "qwen2.5-math-1.5b": Preset("Qwen/Qwen2.5-Math-1.5B-Instruct", "qwen2", "qwen2"),
    "llama-3.2-1b": Preset("meta-llama/Llama-3.2-1B-Instruct", "llama", "llama-3"),
    "gemma-2-2b": Preset("google/gemma-2-2b-it", "gemma2", "gemma_instruction"),
    "phi-3.5-mini": Preset("microsoft/Phi-3.5-mini-instruct", "phi3", "phi-3"),
    "smollm2-135m": Preset("HuggingFaceTB/SmolLM2-135M-Instruct", "llama", "chatml"),
    "smollm2-360m": Preset("HuggingFaceTB/SmolLM2-360M-Instruct", "llama", "chatml"),
}
DEFAULT_PRESET = "qwen2.5-0.5b"


@dataclass(frozen=True)
class BuildSpec:
    """Everything that decides a build's outputs, apart from the model's files and the toolchain."""

    model: str
    revision: str | None
    model_type: str
    conv_template: str
    quantization: str
    name: str
    context_window_size: int
    prefill_chunk_size: int
    system_prompt: str | None

    @property
    def model_id(self) -> str:
        """The WebLLM model_id: `<name>-<quantization>`."""
        return f"{self.name}-{self.quantization}"

    @property
    def is_local(self) -> bool:
        return is_local_model(self.model)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildSpec:
        """A spec read back (from a provenance), checked exactly as the CLI checks its flags."""
        try:
            spec = cls(**data)
        except TypeError as error:
            raise BadInput(f"not a webslm build spec: {error}", "rebuild it with webslm") from error
        return validate_spec(spec)

    def with_model_type(self, model_type: str) -> BuildSpec:
        """The spec once `auto` is resolved from the model's config.json."""
        template = self.conv_template
        if template == AUTO:
            template = default_conv_template(model_type)
        return replace(self, model_type=model_type, conv_template=template)


def is_f16(quantization: str) -> bool:
    """Whether the library needs the WebGPU `shader-f16` feature (q4f16_1 yes, q4f32_1 no)."""
    return "f16" in quantization


def is_local_model(model: str) -> bool:
    """A model argument names a local folder when it exists or looks like a path."""
    return (
        Path(model).exists()
        or model.startswith((".", "/", "~"))
        or not _HUB_ID.match(model.split("@", 1)[0])
    )


def closest(value: str, choices: tuple[str, ...] | list[str]) -> str:
    """`did you mean` text naming up to three close valid values."""
    matches = difflib.get_close_matches(value, list(choices), n=3, cutoff=0.4)
    if matches:
        return "did you mean " + " or ".join(matches) + "?"
    return "valid values: " + ", ".join(choices)


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise BadInput(f"unknown {kind} {value!r} for MLC-LLM v0.19.0", closest(value, choices))
    return value


def mlc_model_type(hf_model_type: str) -> str:
    """The MLC-LLM model type for a Hugging Face `model_type`, or BadInput when unsupported.

    MLC-LLM v0.19.0 detects a model by the config's own `model_type`, so the names are the same.
    """
    if hf_model_type not in MODEL_TYPES:
        raise BadInput(
            f"unsupported architecture: model_type {hf_model_type!r} is not one MLC-LLM v0.19.0 "
            "can compile",
            closest(hf_model_type, MODEL_TYPES) + " Pick a model of a supported architecture",
        )
    return hf_model_type


def default_conv_template(model_type: str) -> str:
    template = DEFAULT_CONV_TEMPLATE.get(model_type)
    if template is None:
        raise BadInput(
            f"no default conversation template for model type {model_type!r}",
            "pass --conv-template (e.g. chatml)",
        )
    return template


def read_hf_model_type(folder: Path) -> str:
    """The `model_type` in a local model folder's config.json."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BadInput(f"{folder} has no config.json",
                       "point --model at a Hugging Face model folder")
    model_type = load_config(config_path).get("model_type")
    if not isinstance(model_type, str):
        raise BadInput(f"{config_path} has no model_type", "pass --model-type explicitly")
    return model_type


def matching_model_type(declared: str, detected: str) -> str:
    """The model type read from the model's config.json, unless --model-type names another."""
    if declared not in (AUTO, detected):
        raise BadInput(f"--model-type {declared} does not match the model's config.json "
                       f"({detected})", f"drop --model-type or pass {detected}")
    return detected


def local_model_path(model: str, here: Path | None = None) -> str:
    """How a local model is named in the spec and the provenance: as given, relative to where
    webslm runs (an absolute or `~` path is made relative to it), starting with `./` or `../`
    so it never reads as a Hub id. The host's folder names stay out of a published file, and
    the same build run in another folder records the same spec."""
    path = Path(model).expanduser()
    if path.is_absolute():
        path = Path(os.path.relpath(path, here or Path.cwd()))
    text = path.as_posix()
    return text if text == ".." or text.startswith("../") else f"./{text}".removesuffix("/.")


def default_name(model: str) -> str:
    """A package name from a model argument: the folder or repo name, lower-cased."""
    base = model.split("@", 1)[0].rstrip("/").split("/")[-1].lower()
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", base).strip("-.") or "model"
    return cleaned[:96]


def resolve_spec(
    preset: str | None = None,
    model: str | None = None,
    model_type: str | None = None,
    conv_template: str | None = None,
    quantization: str | None = None,
    name: str | None = None,
    context_window_size: int | None = None,
    prefill_chunk_size: int | None = None,
    system_prompt: str | None = None,
) -> BuildSpec:
    """Combine a preset (or a model argument) with overrides into a validated BuildSpec.

    A local model's `auto` model type is resolved from its config.json right away; a Hub
    model's stays `auto` until the model is downloaded (webslm.hub).
    """
    if preset is not None and model is not None:
        raise BadInput("--preset and --model exclude each other", "pass one of them")
    revision: str | None = None
    if model is None:
        preset = preset or DEFAULT_PRESET
        if preset not in PRESETS:
            raise BadInput(f"unknown preset {preset!r}", closest(preset, list(PRESETS)))
        chosen = PRESETS[preset]
        source, base_type, base_template, base_name = (
            chosen.model, chosen.model_type, chosen.conv_template, preset,
        )
    else:
        source, base_type, base_template, base_name = model, AUTO, AUTO, default_name(model)
        if "@" in model and not Path(model).exists():
            source, revision = model.rsplit("@", 1)
            if not revision:
                raise BadInput(f"empty revision in {model!r}",
                               "use ORG/NAME@REVISION or drop the @")
        if is_local_model(source):
            try:
                folder = Path(source).expanduser().resolve()
            except (RuntimeError, OSError) as error:  # RuntimeError: a symlink loop (3.11)
                raise BadInput(f"model folder {source} cannot be resolved (a symbolic link "
                               "loop?)", "pass the real folder") from error
            if not folder.is_dir():
                raise BadInput(f"model folder {folder} does not exist",
                               "pass a local model folder or a Hugging Face id like ORG/NAME")
            source, base_name = local_model_path(source), default_name(str(folder))

    chosen_type = model_type or base_type
    if chosen_type != AUTO:
        _check_choice("model type", chosen_type, MODEL_TYPES + (AUTO,))
    if model is not None and is_local_model(source):
        chosen_type = matching_model_type(chosen_type,
                                          mlc_model_type(read_hf_model_type(Path(source))))
    chosen_template = conv_template or base_template
    if chosen_template != AUTO:
        _check_choice("conversation template", chosen_template, CONV_TEMPLATES)
    elif chosen_type != AUTO:
        chosen_template = default_conv_template(chosen_type)
    window = DEFAULT_CONTEXT_WINDOW if context_window_size is None else context_window_size
    chunk = (min(DEFAULT_PREFILL_CHUNK, window) if prefill_chunk_size is None
             else prefill_chunk_size)
    return validate_spec(BuildSpec(
        model=source,
        revision=revision,
        model_type=chosen_type,
        conv_template=chosen_template,
        quantization=quantization or DEFAULT_QUANTIZATION,
        name=name or base_name,
        context_window_size=window,
        prefill_chunk_size=chunk,
        system_prompt=system_prompt,
    ))


def _check_type(field: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadInput(f"the spec's {field} {value!r} is not "
                       f"{'an integer' if kind is int else 'text'}", "rebuild it with webslm")


def validate_spec(spec: BuildSpec) -> BuildSpec:
    """The spec when every field is one the CLI accepts, else BadInput naming the field: the
    one check of a spec, whether it came from flags or from a provenance someone handed us
    (a name like `../../x` or a quantization like `q4f16_1; rm -rf /` never reaches a path or
    a container's arguments)."""
    for field, kind in (("model", str), ("model_type", str), ("conv_template", str),
                        ("quantization", str), ("name", str), ("context_window_size", int),
                        ("prefill_chunk_size", int)):
        _check_type(field, getattr(spec, field), kind)
    for field in ("revision", "system_prompt"):
        if getattr(spec, field) is not None:
            _check_type(field, getattr(spec, field), str)
    if not (_HUB_ID.match(spec.model) or spec.model == ".."
            or spec.model.startswith(("./", "../"))):
        raise BadInput(f"model {spec.model!r} is neither a Hugging Face id nor a relative "
                       "folder path", "pass ORG/NAME or a local folder")
    if spec.revision is not None and not _REVISION.match(spec.revision):
        raise BadInput(f"invalid revision {spec.revision!r}",
                       "pass a branch, tag or commit of the model repo after @")
    if spec.model_type != AUTO:
        _check_choice("model type", spec.model_type, MODEL_TYPES)
    if spec.conv_template != AUTO:
        _check_choice("conversation template", spec.conv_template, CONV_TEMPLATES)
    _check_choice("quantization", spec.quantization, QUANTIZATIONS)
    if not _NAME.match(spec.name):
        raise BadInput(f"invalid name {spec.name!r}",
                       "use letters, digits, '.', '_' and '-' (at most 96, starting alphanumeric)")
    window, chunk = spec.context_window_size, spec.prefill_chunk_size
    if not (0 < window <= MAX_CONTEXT_WINDOW and 0 < chunk <= MAX_CONTEXT_WINDOW):
        raise BadInput("context window and prefill chunk sizes must be from 1 to "
                       f"{MAX_CONTEXT_WINDOW}", "pass e.g. 4096")
    if chunk > window:
        raise BadInput(f"prefill chunk size {chunk} exceeds the context window {window}",
                       "pass a --prefill-chunk-size no larger than --context-window-size")
    return spec
