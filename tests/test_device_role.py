"""The ``device`` role: vLLM's device config, made in a process whose foreign host set a CUDA device, names it.

Unit cases on stand-in configs (the role reads ``device_type`` and ``device`` only); the real engine case is in
the 2-GPU tier (``test_gpu.py::test_gpu_in_process_engine_on_rank1_uses_the_device_the_host_set``).
"""
from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")

from vllm_pg_shim import roles, world  # noqa: E402


def post_init(config):
    """What vLLM's ``DeviceConfig.__post_init__`` does with ``device="auto"`` on a GPU host."""
    config.device = torch.device(config.device_type)


def configure(monkeypatch, *, host="foreign", host_device=1, device_type="cuda", device=None):
    monkeypatch.setattr(world, "host_world_state", lambda: host)
    monkeypatch.setattr(roles, "host_cuda_device", lambda: host_device)
    config = types.SimpleNamespace(device_type=device_type, device=device)
    roles.device(post_init, config, (config,), {})
    return config.device


def test_a_foreign_host_that_set_device_1_gives_vllm_cuda_1(monkeypatch):
    assert configure(monkeypatch) == torch.device("cuda", 1)


@pytest.mark.parametrize("case", [dict(host="none"), dict(host="vllm"), dict(host_device=None),
                                  dict(device_type="cpu")],
                         ids=["no-host-world", "vllms-own-world", "host-chose-no-device", "cpu"])
def test_otherwise_vllms_choice_stands(monkeypatch, case):
    chosen = configure(monkeypatch, **case)
    assert chosen == torch.device(case.get("device_type", "cuda"))


def test_a_device_index_vllm_was_given_is_kept(monkeypatch):
    def post_init_with_index(config):
        config.device = torch.device("cuda", 0)

    monkeypatch.setattr(world, "host_world_state", lambda: "foreign")
    monkeypatch.setattr(roles, "host_cuda_device", lambda: 1)
    config = types.SimpleNamespace(device_type="cuda", device=None)
    roles.device(post_init_with_index, config, (config,), {})
    assert config.device == torch.device("cuda", 0)


def test_host_cuda_device_never_initialises_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: pytest.fail("CUDA initialised"))
    assert roles.host_cuda_device() is None
