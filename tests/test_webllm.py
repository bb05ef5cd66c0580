"""The chat-config rewrite and the AppConfig record web-llm reads (pure functions)."""

from __future__ import annotations

import json

import pytest

from webslm.errors import BadInput
from webslm.layout import package_weight_files
from webslm.webllm import (
    DEFAULT_BASE_URL,
    AppConfig,
    ChatConfig,
    ModelRecord,
    PackageFacts,
    Sampling,
    app_config,
    choose_system_prompt,
    model_record,
    model_url,
    render_app_config,
    rewrite_chat_config,
    sampling_defaults,
    stop_token_ids,
    vram_required_mb,
)

QWEN2_TEMPLATE = {"name": "qwen2", "system_message": "You are a helpful assistant.",
                  "stop_str": ["<|endoftext|>", "<|im_end|>"],
                  "stop_token_ids": [151643, 151645]}
SMALL_TOKENIZER = {"added_tokens": [{"id": 0, "content": "<|endoftext|>"},
                                    {"id": 1, "content": "<|im_start|>"},
                                    {"id": 2, "content": "<|im_end|>"}],
                   "model": {"vocab": {"a": 3}}}


def chat_config(vocab_size: int, quantization: str = "q4f16_1") -> dict:
    return {"vocab_size": vocab_size, "temperature": 1.0, "top_p": 1.0, "eos_token_id": [2, 0],
            "quantization": quantization, "context_window_size": 4096,
            "prefill_chunk_size": 1024, "tokenizer_files": ["tokenizer.json"],
            "model_config": {"hidden_size": 896, "num_attention_heads": 14,
                             "num_hidden_layers": 24, "num_key_value_heads": 2,
                             "intermediate_size": 4864},
            "conv_template": dict(QWEN2_TEMPLATE)}


def test_sampling_defaults_unless_the_model_says_otherwise() -> None:
    assert sampling_defaults(None) == Sampling(0.7, 0.8)
    assert sampling_defaults({"eos_token_id": 2}) == Sampling(0.7, 0.8)
    assert sampling_defaults({"temperature": 0.3, "top_p": 0.95}) == Sampling(0.3, 0.95)
    assert sampling_defaults({"top_p": 0.9}) == Sampling(0.7, 0.9)


def test_system_prompt_from_spec_else_from_finetune() -> None:
    finetune = {"system_prompt": "You are a careful insurance helper."}
    assert choose_system_prompt("From spec", finetune) == "From spec"
    assert choose_system_prompt(None, finetune) == "You are a careful insurance helper."
    assert choose_system_prompt(None, {"system_prompt": None}) is None
    assert choose_system_prompt(None, None) is None


def test_template_stop_ids_outside_a_small_vocab_come_from_the_tokenizer() -> None:
    assert stop_token_ids([151643, 151645], 512, SMALL_TOKENIZER, [2, 0],
                          ["<|endoftext|>", "<|im_end|>"]) == [0, 2]


def test_template_stop_ids_inside_the_vocab_are_kept() -> None:
    assert stop_token_ids([151643, 151645], 151936, SMALL_TOKENIZER, 2) == [151643, 151645]


def test_rewrite_sets_sampling_prompt_and_stop_ids_without_touching_the_input() -> None:
    original = chat_config(512)
    rewritten = rewrite_chat_config(original, sampling=Sampling(0.7, 0.8),
                                    system_prompt="Be brief.", tokenizer=SMALL_TOKENIZER)
    assert rewritten["temperature"] == 0.7 and rewritten["top_p"] == 0.8
    assert rewritten["conv_template"]["system_message"] == "Be brief."
    assert rewritten["conv_template"]["stop_token_ids"] == [0, 2]
    assert original["conv_template"]["stop_token_ids"] == [151643, 151645]
    assert original["temperature"] == 1.0


def test_rewrite_keeps_the_template_prompt_when_none_is_given() -> None:
    rewritten = rewrite_chat_config(chat_config(151936), sampling=Sampling(0.7, 0.8),
                                    system_prompt=None, tokenizer=None)
    assert rewritten["conv_template"]["system_message"] == "You are a helpful assistant."
    assert rewritten["conv_template"]["stop_token_ids"] == [151643, 151645]


@pytest.mark.parametrize("bad", ["models", "/models", "ftp://host/x", "http://"])
def test_base_url_must_be_absolute_http(bad: str) -> None:
    with pytest.raises(BadInput, match="absolute"):
        model_url(bad, "m")


def test_model_url_already_holds_resolve_main() -> None:
    assert model_url("https://cdn.example/m/", "tiny") == "https://cdn.example/m/tiny/resolve/main/"
    assert model_url(DEFAULT_BASE_URL, "x") == "http://127.0.0.1:8000/models/x/resolve/main/"


def facts(quantization: str) -> PackageFacts:
    return PackageFacts(
        name="tiny", model_id=f"tiny-{quantization}", quantization=quantization,
        f16="f16" in quantization, chat_config=ChatConfig.from_json(rewrite_chat_config(
            chat_config(151936, quantization), sampling=Sampling(0.6, 0.9), system_prompt=None,
            tokenizer=None)),
        chat_config_digest="00" * 32, library_digest="11" * 32,
        tokenizer_digests={"tokenizer.json": "22" * 32},
        weight_digests={"ndarray-cache.json": "44" * 32, "params_shard_0.bin": "55" * 32},
        weight_bytes=300 * 1024 * 1024,
        webllm_version="0.2.79", toolchain_id="3" * 64, system_prompt=None,
        finetune={"base_model": "Qwen/Qwen2.5-0.5B-Instruct"})


def test_model_record_for_an_f16_library() -> None:
    record = model_record(facts("q4f16_1"), "https://cdn.example/models")
    base = "https://cdn.example/models/tiny/resolve/main/"
    assert record.model == base
    assert record.model_id == "tiny-q4f16_1"
    assert record.model_lib == base + "libs/tiny-q4f16_1-webgpu.wasm"
    assert record.library_path_in_folder() == "libs/tiny-q4f16_1-webgpu.wasm"
    assert record.required_features == ("shader-f16",)
    assert record.raw["required_features"] == ["shader-f16"]
    assert record.raw["overrides"] == {
        "context_window_size": 4096, "temperature": 0.6, "top_p": 0.9}
    assert record.integrity.config == "sha256-" + "AA" * 21 + "A="
    assert set(record.integrity.tokenizer) == {"tokenizer.json"}
    assert record.webslm.webllm_version == "0.2.79"
    assert record.webslm.finetune == {"base_model": "Qwen/Qwen2.5-0.5B-Instruct"}
    assert record.webslm.weights == {"ndarray-cache.json": "sha256-" + "RE" * 21 + "Q=",
                                     "params_shard_0.bin": "sha256-" + "VV" * 21 + "U="}
    assert app_config([record]).to_json() == {"model_list": [record.raw]}
    assert AppConfig.from_json(json.loads(render_app_config(app_config([record])))) == (
        app_config([record]))


def test_model_record_for_an_f32_library_needs_no_shader_f16() -> None:
    record = model_record(facts("q4f32_1"), DEFAULT_BASE_URL)
    assert record.required_features == () and "required_features" not in record.raw


@pytest.mark.parametrize(("model", "model_lib"), [
    ("https://x/m/resolve/main/", "https://elsewhere/m/resolve/main/libs/a.wasm"),
    ("https://x/m/resolve/main", "https://x/m/resolve/main/libs/a.wasm"),  # no folder
    ("https://x/m/resolve/main/", "https://x/m/resolve/main/"),  # the folder itself
])
def test_a_library_outside_the_model_folder_has_no_path_in_it(model: str, model_lib: str) -> None:
    record = ModelRecord.from_json({"model": model, "model_lib": model_lib})
    assert record.library_path_in_folder() is None


def test_package_weight_files_are_the_manifest_and_its_shards() -> None:
    names = ["libs/x.wasm", "params_shard_1.bin", "ndarray-cache.json", "ndarray-cache-b16.json",
             "params_shard_0.bin", "tokenizer.json"]
    assert package_weight_files(names) == ["ndarray-cache.json", "params_shard_0.bin",
                                           "params_shard_1.bin"]


def test_vram_estimate_grows_with_weights_context_and_f32() -> None:
    config = chat_config(151936)
    base = vram_required_mb(ChatConfig.from_json(config), 300 * 1024 * 1024)
    assert 300 < base < 2048  # a 0.5B q4 model fits a low-resource device
    assert vram_required_mb(ChatConfig.from_json(config), 600 * 1024 * 1024) == pytest.approx(
        base + 300, abs=0.01)
    longer = ChatConfig.from_json({**config, "context_window_size": 8192})
    assert vram_required_mb(longer, 300 * 1024 * 1024) > base
    f32 = ChatConfig.from_json(chat_config(151936, "q4f32_1"))
    assert vram_required_mb(f32, 300 * 1024 * 1024) > base
    # the sizes MLC-LLM writes for Qwen2.5-0.5B (head_dim 64 = 896 / 14): the KV cache is
    # 2 x 24 layers x 2 heads x 64 x 4096 tokens x 2 bytes = 48 MiB
    shorter = ChatConfig.from_json({**config, "context_window_size": 0})
    assert base - vram_required_mb(shorter, 300 * 1024 * 1024) == pytest.approx(48, abs=0.01)
