"""The 2-GPU tier: the seed case as users write it on GPUs (NCCL), and a TP=2 engine built from a host WORLD.

Needs two CUDA devices and a vLLM built for them (``nox -s gpu``; README: "The 2-GPU tier"). Elsewhere every
test here skips. Tokens are compared with a clean single-process run of the same engine shape.
"""
from __future__ import annotations

import pytest

from support.checks import assert_ranks_healthy
from support.harness import run_scenario

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
if torch.cuda.device_count() < 2:
    pytest.skip("the 2-GPU tier needs two CUDA devices", allow_module_level=True)
vllm = pytest.importorskip("vllm", reason="the 2-GPU tier needs vLLM built for CUDA")

# The seed case stock hangs in init_world_group while rank 1 waits in its all_reduce; a clean engine is up in
# about a minute there, so a run still short of its engine after this long is the hang.
STOCK_BOUND = 150
BOUND = 300



@pytest.fixture(scope="session")
def clean_tokens(tmp_path_factory, model):
    """Per TP size: what the prompts give in a clean process that owns no WORLD (no shim)."""
    cache = {}

    def tokens(tp: int):
        if tp not in cache:
            out = run_scenario(tmp_path_factory.mktemp(f"clean-tp{tp}"), model=model, activation="clean",
                               in_process=True, world=1, timeout=BOUND, tp=tp)
            assert out.returncode == 0 and not out.timed_out, out.describe()
            cache[tp] = out.ranks[0]["tokens"][0]
        return cache[tp]

    return tokens


def assert_healthy(out, *, engine_ranks, expected_tokens, private_worlds):
    assert_ranks_healthy(out, world=2)
    for rank, data in out.ranks.items():
        if "shim_status" in data:
            worlds = data["shim_status"]["world"]["private_worlds"]
            expected = private_worlds.get(rank, [])
            assert [(w["size"], w["rank"]) for w in worlds] == expected, data["shim_status"]
        if rank in engine_ranks:
            assert data["tokens"] == [expected_tokens], (data["tokens"], expected_tokens)


def test_gpu_seed_stock_in_process_engine_hangs(tmp_path, model, record_property):
    out = run_scenario(tmp_path, model=model, activation="stock", in_process=True, backend="nccl",
                       timeout=STOCK_BOUND)
    assert out.timed_out, out.describe()
    assert out.ranks_without("engine_built_0", [0]) == [0], out.describe()
    assert out.ranks_without("done", [1]) == [1], out.describe()
    record_property("gpu_seed_stock", f"NCCL seed case, in-process engine: hang (stopped after {STOCK_BOUND} s)")


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "engine-process"])
def test_gpu_seed_case_with_shim(tmp_path, model, clean_tokens, in_process):
    out = run_scenario(tmp_path, model=model, activation="install", in_process=in_process, backend="nccl",
                       timeout=BOUND)
    assert_healthy(out, engine_ranks=[0], expected_tokens=clean_tokens(1),
                   private_worlds={0: [(1, 0)]} if in_process else {})


@pytest.mark.parametrize("activation", ["stock", "install"])
def test_gpu_tp2_external_launcher_on_the_host_world(tmp_path, model, clean_tokens, activation):
    """Both host ranks hold one shard of a TP=2 engine (torchrun style): vLLM's own shared-WORLD mode, which
    the shim leaves alone: it must work stock and with the shim alike."""
    out = run_scenario(tmp_path, model=model, activation=activation, in_process=True, backend="nccl",
                       engine_ranks=(0, 1), tp=2, executor="external_launcher", timeout=BOUND)
    assert_healthy(out, engine_ranks=[0, 1], expected_tokens=clean_tokens(2), private_worlds={})


@pytest.mark.parametrize("activation", ["stock", "install"])
def test_gpu_tp2_engine_built_on_rank0(tmp_path, model, clean_tokens, activation):
    """Rank 0 builds a TP=2 engine (vLLM's own worker processes, one per GPU) while rank 1 keeps its GPU for the
    host's collectives."""
    out = run_scenario(tmp_path, model=model, activation=activation, in_process=True, backend="nccl",
                       tp=2, timeout=BOUND)
    assert_healthy(out, engine_ranks=[0], expected_tokens=clean_tokens(2), private_worlds={})


def test_gpu_in_process_engine_on_rank1_uses_the_device_the_host_set(tmp_path, model, clean_tokens):
    """Rank 1 set CUDA device 1 and builds an in-process engine while rank 0 keeps GPU 0 for the host: the engine
    is on GPU 1 and rank 1's current device is still 1 (stock vLLM's in-process executor takes ``cuda:0``)."""
    out = run_scenario(tmp_path, model=model, activation="install", in_process=True, backend="nccl",
                       engine_ranks=(1,), timeout=BOUND)
    assert_healthy(out, engine_ranks=[1], expected_tokens=clean_tokens(1), private_worlds={1: [(1, 0)]})
    built = out.ranks[1]
    assert built["cuda_current_device"] == 1, built
    on_gpu0, on_gpu1 = built["cuda_allocated"][:2]
    assert on_gpu0 == 0 and on_gpu1 > 0, built
