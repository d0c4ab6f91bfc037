"""The random-weight Qwen2-shaped models the GPU benchmarks share (built from a
config on the device: no weights travel).  ``random-qwen2-0.5b`` is the default;
``random-qwen2-1.5b`` and ``random-qwen2-7b`` have Qwen2's published shapes at
those sizes, for runs where the model's compute (a long prefill) must weigh."""

from __future__ import annotations

from typing import Any

# hidden, intermediate, layers, attention heads, KV heads, tied embeddings
SHAPES: dict[str, tuple[int, int, int, int, int, bool]] = {
    "random-qwen2-0.5b": (896, 4864, 30, 14, 2, True),
    "random-qwen2-1.5b": (1536, 8960, 28, 12, 2, True),
    "random-qwen2-7b": (3584, 18944, 28, 28, 4, False),
}


def random_qwen2(
    tokenizer_path: str, dtype: str, device: str, name: str = "random-qwen2-0.5b"
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of shape ``name`` (a key of :data:`SHAPES`), seeded
    weights made on ``device``; the tokenizer's vocabulary sets the embedding size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    if name not in SHAPES:
        raise SystemExit(f"unknown random model {name!r}: one of {', '.join(SHAPES)}")
    hidden, intermediate, layers, heads, kv_heads, tied = SHAPES[name]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=8192,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a 7B model in seconds
        model = AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, dtype), attn_implementation="sdpa"
        )
    return model.to(device).eval(), tokenizer
