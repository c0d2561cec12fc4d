"""Builds the tiny random Llama the end-to-end tests and the demo serve.

vLLM's CPU attention kernel needs head_dim 64, hence hidden 128 with 2 heads. The weights are seeded, so every
run of the suite serves the same model and greedy tokens can be compared across processes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

CACHE = Path(os.environ.get("VLLM_PG_SHIM_CACHE", Path.home() / ".cache" / "vllm-pg-shim"))
DEFAULT_DIR = CACHE / "models" / "tiny-llama"


def ensure_tiny_model(path: Path = DEFAULT_DIR) -> Path:
    if (path / "config.json").exists() and any(path.glob("*.safetensors")):
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tmp.rename(path)  # atomic: concurrent builders never see a half-written model
    return path


if __name__ == "__main__":
    print(ensure_tiny_model(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
