"""Tiny random models built locally, standing in for Hub downloads (which this machine cannot make).

Each model is written the way the installed transformers writes it (5.x: `dtype`, nested
`rope_parameters`), with safetensors weights and a byte-level BPE tokenizer trained here. The
tokenizer uses Qwen2's own normalizer and split regex, so `AutoTokenizer` (which swaps in a
Qwen2Tokenizer for qwen2 configs) produces the same ids as the trained tokenizer.
"""

from __future__ import annotations

from pathlib import Path

QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VOCAB_SIZE = 512
ARCHITECTURES = ("qwen2", "llama", "gemma2", "phi3", "mistral")

_CORPUS = [
    "You are a careful assistant. Answer in plain language and suggest a professional.",
    "What should I do if I have a headache that does not go away?",
    "Read your policy documents and call your insurer to ask about the deductible.",
    "A lawyer can explain how the rules apply to your situation.",
    "The quick brown fox jumps over the lazy dog 0123456789 times.",
    "Hello! How can I help you today? I am happy to help.",
]


def _train_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 20, trainer=trainer)
    return tokenizer


def _config(arch: str, vocab_size: int, eos_id: int, pad_id: int):
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=pad_id,
    )
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, rope_theta=1000000.0, tie_word_embeddings=True)
    if arch == "llama":
        scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}
        return transformers.LlamaConfig(**common, rope_theta=500000.0, rope_scaling=scaling)
    if arch == "gemma2":
        return transformers.Gemma2Config(**common, head_dim=16, rope_theta=10000.0)
    if arch == "phi3":
        half_head = 64 // 4 // 2
        scaling = {"type": "longrope", "long_factor": [1.5] * half_head,
                   "short_factor": [1.0] * half_head}
        common["num_key_value_heads"] = 4
        return transformers.Phi3Config(**common, rope_theta=10000.0, rope_scaling=scaling,
                                       original_max_position_embeddings=1024)
    if arch == "mistral":
        return transformers.MistralConfig(**common, rope_theta=1000000.0, sliding_window=1024)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHITECTURES}")


def make_tiny_model(folder: Path, arch: str = "qwen2", *, seed: int = 0) -> Path:
    """Write a tiny random `arch` model (safetensors, tokenizer, configs) into `folder`."""
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    eos_id = tokenizer.token_to_id("<|im_end|>")
    pad_id = tokenizer.token_to_id("<|endoftext|>")
    config = _config(arch, tokenizer.get_vocab_size(), eos_id, pad_id)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    model.generation_config = transformers.GenerationConfig(
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, bos_token_id=pad_id,
        do_sample=True, temperature=0.7, top_p=0.8, repetition_penalty=1.05,
    )
    model.generation_config.save_pretrained(folder)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
    )
    fast.save_pretrained(folder)
    return folder
