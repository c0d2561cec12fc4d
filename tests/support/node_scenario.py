"""Scenarios across two simulated nodes (tests/test_nodes.py): a host WORLD of 4 over gloo, 2 ranks per node.

Run as a script. Without ``--rank`` it is the driver: it starts one process per rank on its node
(tests/support/netns.py's ``node_command``), torchrun-style (``RANK``, ``LOCAL_RANK``, ``GROUP_RANK``,
``MASTER_ADDR`` = node 0's address...), waits for them and exits with the first non-zero exit status. Every rank
process stays in the driver's session, so the test's bounded run kills them all. With ``--rank`` it is that rank.

Cases (each rank writes ``rank<N>.json`` stage by stage, as tests/support/seed_scenario.py does):

- ``seed``: node 1's first rank (host rank 2) builds an in-process ``LLM`` and generates; every rank then runs
  collectives on the host's WORLD and a new subgroup.
- ``colocate``: TRL's colocate mode on every rank (``external_launcher``, TP=1, ``seed=rank``), then
  ``del llm; gc.collect()``, and the host's WORLD keeps training.
- ``launcher``: host ranks 2 and 3 (node 1) form one TP=2 ``external_launcher`` engine while node 0's ranks train.
- ``timeout``: ranks numbered across the nodes (0 and 2 on node 0, 1 and 3 on node 1), so that each aligned
  external-launcher world of 2 spans both; every rank starts vLLM's distributed set-up as a TP=2 launcher member
  (they meet in the host's store). Host rank 1 (node 1) is killed as the others wait: host rank 0 (node 0) must
  get ``PrivateWorldTimeout`` within ``VLLM_PG_SHIM_TIMEOUT``, while host ranks 2 and 3 assemble their world
  across the nodes and run its collectives.

Every rank records the sockets its process and its children listen on (address, port) after its engine exists.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.netns import Node, node_command  # noqa: E402
from support.seed_scenario import _write, build_llm, generate, host_collectives, train  # noqa: E402

WORLD = 4
CASES = ("seed", "colocate", "launcher", "timeout")
TRAIN_STEPS = 20
KILLED = 1  # the timeout case's member killed during the rendezvous (node 1)


def node_of(rank: int, case: str) -> int:
    """torchrun numbers ranks node by node; the timeout case numbers them across nodes so that its aligned
    external-launcher world spans both."""
    return rank % 2 if case == "timeout" else rank // 2


def listening_sockets() -> list[dict]:
    """TCP sockets this process and its descendants listen on (the namespace's view)."""
    import psutil

    me = psutil.Process()
    found = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            connections = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in connections:
            if c.status == psutil.CONN_LISTEN:
                found.append({"ip": c.laddr.ip, "port": c.laddr.port, "pid": proc.pid})
    return found


def shim_status() -> dict | None:
    try:
        import vllm_pg_shim
    except ImportError:
        return None
    status = vllm_pg_shim.status()
    return status if status["installed"] else None


def rank_main(args: argparse.Namespace) -> None:
    rank, out = args.rank, Path(args.out)
    _write(out, rank, stage="started", pid=os.getpid(), node=node_of(rank, args.case), hostname=os.uname().nodename)
    if args.activation == "install":
        import vllm_pg_shim

        vllm_pg_shim.install()
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://")
    _write(out, rank, stage="host_world_ready")
    if args.case == "timeout":
        timeout_member(args)
        return
    engine_ranks = {"seed": [2], "colocate": list(range(WORLD)), "launcher": [2, 3]}[args.case]
    trainers = [r for r in range(WORLD) if r not in engine_ranks]
    train_group = dist.new_group(trainers) if trainers else None  # made on every rank, before any engine
    fields: dict = {}
    if rank in trainers:
        fields.update(train(TRAIN_STEPS, rank, trainers, train_group, torch.device("cpu")))
    else:
        args.tp, args.executor = (2, "external_launcher") if args.case == "launcher" else (
            (1, "external_launcher") if args.case == "colocate" else (1, "default"))
        llm = build_llm(args.model, args)
        fields["tokens"] = generate(llm)
        fields["listening_with_engine"] = listening_sockets()
        status = shim_status()
        if status is not None:
            fields["private_worlds"] = status["world"]["private_worlds"]
        if args.case == "colocate":
            del llm
            gc.collect()
    _write(out, rank, stage="engine_stage_done", **fields)
    result = host_collectives(rank, WORLD)
    if args.case == "colocate":  # training goes on after the engines are gone
        result.update(train(TRAIN_STEPS, rank, list(range(WORLD)), None, torch.device("cpu")))
    result["listening_at_end"] = listening_sockets()
    _write(out, rank, stage="host_collectives_done", **result)
    dist.destroy_process_group()
    _write(out, rank, stage="done")


def timeout_member(args: argparse.Namespace) -> None:
    from support.pg_scenario import drive_vllm, import_parallel_state

    rank, out = args.rank, Path(args.out)
    ps = import_parallel_state()
    if rank == KILLED:
        _write(out, rank, stage="killing_itself")
        os.kill(os.getpid(), signal.SIGKILL)  # as a node's process killed while its peers wait in the rendezvous
    called = {}
    real = ps.init_distributed_environment

    @functools.wraps(real)
    def timed(*args, **kwargs):  # the bound runs from vLLM's call, not from the config set up before it
        called["at"] = time.monotonic()
        return real(*args, **kwargs)

    ps.init_distributed_environment = timed
    _write(out, rank, stage="rendezvous")
    try:
        result = drive_vllm(ps, world_size=2, rank=rank % 2, port=None, call_rank=rank)
    except Exception as exc:
        _write(out, rank, stage="rendezvous_failed", error_type=type(exc).__name__, error=str(exc)[:2000],
               after=round(time.monotonic() - called.get("at", float("nan")), 2))
    else:
        _write(out, rank, stage="rendezvous_assembled", vllm=result)
    _write(out, rank, stage="done")
    # the host's WORLD has lost a member: no collective on it can complete, so the rank ends here
    os._exit(0)


def driver(args: argparse.Namespace) -> int:
    nodes = [Node(**n) for n in json.loads(args.nodes)]
    procs = []
    for rank in range(WORLD):
        node = nodes[node_of(rank, args.case)]
        local = [r for r in range(WORLD) if node_of(r, args.case) == node.index]
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(local.index(rank)), WORLD_SIZE=str(WORLD),
                   LOCAL_WORLD_SIZE=str(len(local)), GROUP_RANK=str(node.index), MASTER_ADDR=nodes[0].address,
                   MASTER_PORT=str(args.port), TORCHELASTIC_RUN_ID="vllm-pg-shim-nodes",
                   TORCHELASTIC_RESTART_COUNT="0", TORCHELASTIC_MAX_RESTARTS="0",
                   GLOO_SOCKET_IFNAME=node.interface)
        argv = [sys.executable, __file__, *sys.argv[1:], "--rank", str(rank)]
        procs.append(subprocess.Popen(node_command(node, argv), env=env))
    codes = [p.wait() for p in procs]
    (Path(args.out) / "driver.json").write_text(json.dumps({"exit_codes": codes}))
    expected = [-signal.SIGKILL if r == KILLED and args.case == "timeout" else 0 for r in range(WORLD)]
    return 0 if codes == expected else 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=CASES)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--nodes", required=True, help="the two nodes, as JSON (tests/support/netns.py's Node fields)")
    p.add_argument("--port", type=int, required=True, help="MASTER_PORT on node 0")
    p.add_argument("--activation", choices=["stock", "install"], default="stock")
    p.add_argument("--rank", type=int)
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.rank is None:
        sys.exit(driver(args))
    rank_main(args)


if __name__ == "__main__":
    main()
