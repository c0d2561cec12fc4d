"""The private world's rendezvous, bounded by ``VLLM_PG_SHIM_TIMEOUT``.

vLLM creates its world with ``torch.distributed.init_process_group(init_method="tcp://host:port", ...)``. While
a private world is being made, that call comes here. Without ``VLLM_PG_SHIM_TIMEOUT`` it goes to torch as it
is. With it, and a ``tcp://`` method, the shim opens the same TCP store torch would (same address, same
``default_pg`` key prefix, so members that run without the shim still meet it), each member announces itself
under ``vllm_pg_shim/arrived/<rank>``, and a member that has not seen all others within the bound raises
:class:`PrivateWorldTimeout` naming who arrived and who is missing, instead of waiting in gloo or NCCL. Any other
method (``file://``, ``env://``) is left to torch and vLLM's own timeout, with a warning once; except an
external-launcher engine on some of the host's ranks: its ``env://`` members meet in a key space of the host's
store, and the same roll-call bounds that.

Where the shim opens that store and the address is a loopback one (every member on this host), rank 0's server
listens on that address only; torch's own would listen on every interface. The shim creates no files.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from datetime import timedelta
from urllib.parse import urlparse

import torch.distributed.distributed_c10d as c10d

from . import ShimError
from ._env import TIMEOUT_VAR, _warn_once, rendezvous_timeout

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


def is_loopback(host: str) -> bool:
    """An IP literal on loopback (127.0.0.0/8, ::1): every member of a world meeting there is on this host."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve differently on other hosts, so it is torch's to bind
        return False


def _loopback_listener(host: str, port: int) -> int:
    """A socket listening on ``host`` only, handed to the store as its descriptor (the store owns it then).

    torch's TCPStore server listens on every interface whatever address it is given; a private world whose
    address is a loopback one has all its members on this host and needs no other interface."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's own listener does
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock.detach()


def _tcp_store(host: str, port: int, rank: int, world_size: int, seconds: float):
    from torch.distributed import TCPStore

    args = (host, port, world_size, rank == 0)
    kwargs = dict(timeout=timedelta(seconds=seconds), wait_for_workers=False, multi_tenant=True)
    if rank != 0 or not is_loopback(host):
        return TCPStore(*args, **kwargs)
    fd = _loopback_listener(host, port)
    try:
        return TCPStore(*args, master_listen_fd=fd, **kwargs)
    except NotImplementedError:  # torch 2.4-2.10: the libuv server takes no descriptor; the legacy one does
        return TCPStore(*args, master_listen_fd=fd, use_libuv=False, **kwargs)
    except TypeError:  # a torch without master_listen_fd: its store listens as torch's own does
        os.close(fd)
        return TCPStore(*args, **kwargs)


def _open_store(host: str, port: int, rank: int, world_size: int, seconds: float, where: str):
    try:
        return _tcp_store(host, port, rank, world_size, seconds)
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


def _check_rank(world_size, rank) -> None:
    """A private world's rank outside its size would wait for a peer that can never come: refuse it at once."""
    if isinstance(world_size, int) and isinstance(rank, int) and world_size > 0 and rank != -1 \
            and not 0 <= rank < world_size:
        raise ShimError(
            f"vLLM asked for a private world of size {world_size} as rank {rank}; its ranks are 0..{world_size - 1}. "
            f"Nothing was created; the host's WORLD is untouched."
        )


def routed_init_process_group(real):
    """``init_process_group`` as the router installs it: the host's calls pass through untouched."""

    def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1, store=None, **kw):
        from . import world

        seconds = rendezvous_timeout() if world.in_private_scope() else None
        private = world.scoped_world()
        if private is not None:
            _check_rank(world_size, rank)
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
            else:
                _warn_once(
                    f"timeout-method:{url.scheme}",
                    f"{TIMEOUT_VAR} bounds a tcp://host:port rendezvous only; vLLM's private world meets at "
                    f"{init_method!r} here, which waits as long as vLLM's own timeout allows.",
                )
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
