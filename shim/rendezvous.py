"""The private world's rendezvous, bounded by ``VLLM_PG_SHIM_TIMEOUT``.

vLLM creates its world with ``torch.distributed.init_process_group(init_method="tcp://host:port", ...)``. While
a private world is being made, that call comes here. Without ``VLLM_PG_SHIM_TIMEOUT`` it goes to torch as it
is. With it, and a ``tcp://`` method, the shim opens the same TCP store torch would (same address, same
``default_pg`` key prefix, so members that run without the shim still meet it), each member announces itself
under ``vllm_pg_shim/arrived/<rank>``, and a member that has not seen all others within the bound raises
:class:`PrivateWorldTimeout` naming who arrived and who is missing, instead of waiting in gloo or NCCL.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta
from urllib.parse import urlparse

import torch.distributed.distributed_c10d as c10d

from . import ShimError
from ._env import TIMEOUT_VAR, rendezvous_timeout

ARRIVED_KEY = "vllm_pg_shim/arrived/{rank}"


class PrivateWorldTimeout(ShimError, TimeoutError):
    """A private world's members did not all arrive within ``VLLM_PG_SHIM_TIMEOUT``."""

    def __init__(self, message: str, *, arrived: list[int], missing: list[int]) -> None:
        super().__init__(message)
        self.arrived = arrived
        self.missing = missing


def _wait_for_members(store, rank: int, world_size: int, seconds: float, where: str) -> None:
    store.set(ARRIVED_KEY.format(rank=rank), f"{socket.gethostname()}:{os.getpid()}")
    keys = [ARRIVED_KEY.format(rank=r) for r in range(world_size)]
    deadline = time.monotonic() + seconds
    while not store.check(keys):
        if time.monotonic() >= deadline:
            arrived = [r for r, k in enumerate(keys) if store.check([k])]
            missing = [r for r in range(world_size) if r not in arrived]
            raise PrivateWorldTimeout(
                f"vLLM's private world at {where} (size {world_size}, this member is rank {rank}) did not "
                f"assemble within {TIMEOUT_VAR}={seconds:g}s: ranks arrived {arrived}, missing {missing}. "
                f"The host's WORLD is untouched.",
                arrived=arrived,
                missing=missing,
            )
        time.sleep(0.01)


def _open_store(host: str, port: int, rank: int, world_size: int, seconds: float, where: str):
    from torch.distributed import TCPStore

    try:
        return TCPStore(
            host,
            port,
            world_size,
            rank == 0,
            timeout=timedelta(seconds=seconds),
            wait_for_workers=False,
            multi_tenant=True,
        )
    except Exception as exc:  # rank 0's store never came up, or the port is someone else's
        if rank == 0:
            raise ShimError(f"vLLM's private world could not open its store at {where}: {exc}") from exc
        raise PrivateWorldTimeout(
            f"vLLM's private world at {where} (size {world_size}, this member is rank {rank}) did not "
            f"assemble within {TIMEOUT_VAR}={seconds:g}s: rank 0's store was not reachable ({exc}); ranks "
            f"arrived [{rank}] as far as this member can tell, missing [0]. The host's WORLD is untouched.",
            arrived=[rank],
            missing=[0],
        ) from exc


def routed_init_process_group(real):
    """``init_process_group`` as the router installs it: the host's calls pass through untouched."""

    def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1, store=None, **kw):
        from . import world

        seconds = rendezvous_timeout() if world.in_private_scope() else None
        private = world.scoped_world()
        if private is not None and private.rendezvous_store is not None and store is None \
                and init_method in (None, "env://"):
            # members meet where the role that made this world put them (not at the host's MASTER_PORT)
            store, init_method = private.rendezvous_store, None
            if seconds is not None and world_size > 1:
                _wait_for_members(store, rank, world_size, seconds, private.rendezvous_where)
        elif seconds is not None and store is None and init_method and world_size > 1:
            url = urlparse(init_method)
            if url.scheme == "tcp" and url.hostname and url.port:
                from torch.distributed import PrefixStore

                where = f"{url.hostname}:{url.port}"
                tcp = _open_store(url.hostname, url.port, rank, world_size, seconds, where)
                _wait_for_members(tcp, rank, world_size, seconds, where)
                if timeout is not None:
                    tcp.set_timeout(timeout)
                # torch prefixes the store it makes from an init_method the same way: members without the
                # shim use the very same keys.
                store, init_method = PrefixStore("default_pg", tcp), None
        if not world.in_private_scope():
            return real(backend=backend, init_method=init_method, timeout=timeout, world_size=world_size,
                        rank=rank, store=store, **kw)
        # torch records a few process-wide things when it makes a default group (its excepthook prefix, the
        # backend and init method of "the" WORLD): those stay the host's.
        saved = (sys.excepthook, getattr(c10d, "_backend", None), getattr(c10d, "_default_pg_init_method", None))
        try:
            return real(backend=backend, init_method=init_method, timeout=timeout, world_size=world_size,
                        rank=rank, store=store, **kw)
        finally:
            sys.excepthook = saved[0]
            for name, value in (("_backend", saved[1]), ("_default_pg_init_method", saved[2])):
                if hasattr(c10d, name):
                    setattr(c10d, name, value)

    init_process_group.__wrapped__ = real
    init_process_group.__doc__ = real.__doc__
    return init_process_group
