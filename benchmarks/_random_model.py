"""The random-weight Qwen2-shaped 0.49B model the GPU benchmarks share (built from a
config on the device: no weights travel)."""

from __future__ import annotations

from typing import Any


def random_qwen2(tokenizer_path: str, dtype: str, device: str) -> tuple[Any, Any]:
    """``(model, tokenizer)``: hidden 896, 14 heads, 2 KV heads, intermediate 4864,
    30 layers, seeded weights; the tokenizer's vocabulary sets the embedding size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=30,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config, dtype=getattr(torch, dtype), attn_implementation="sdpa"
    )
    return model.to(device).eval(), tokenizer
