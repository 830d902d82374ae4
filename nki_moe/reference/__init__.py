"""NumPy references for every op and the whole Qwen3-MoE forward."""
