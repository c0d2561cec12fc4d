"""Checks the end-to-end tiers' tests share (tests/test_e2e_seed.py, tests/test_gpu.py, tests/test_gpu_1x.py)."""
from __future__ import annotations


def assert_ranks_healthy(out, world: int) -> None:
    """The run ended by itself and left nothing running; every rank finished, its host collectives exact."""
    assert not out.timed_out and out.returncode == 0, out.describe()
    assert out.leftovers == [], out.describe()
    assert sorted(out.ranks) == list(range(world)), out.describe()
    for rank, data in out.ranks.items():
        assert "done" in out.stages(rank), out.describe()
        assert data["world_all_reduce_ok"] and data["subgroup_all_reduce_ok"] and data["broadcast_ok"], data
        assert (data["host_rank"], data["host_world_size"]) == (rank, world)
