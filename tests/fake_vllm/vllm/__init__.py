"""Fake vLLM for the shim's machinery tests (see tests/fake_vllm/README.md)."""
