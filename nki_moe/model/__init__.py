"""Qwen3-MoE configs, weights, tokenizer, assembled model and generation."""
