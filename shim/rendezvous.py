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

The bound also covers torch's making of the group right after the roll-call (gloo connects every pair then): a
member that arrived and died before that would otherwise keep the others there for the group's own timeout (30
minutes by default). Where torch can set a group's timeout afterwards (``_set_pg_timeout``), the group is made
with the bound and then given vLLM's own timeout back; on expiry the error names the members no longer running.

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

from . import _scope
from ._env import TIMEOUT_VAR, _warn_once, rendezvous_timeout
from .exceptions import PrivateWorldTimeout, ShimError

__all__ = ["PrivateWorldTimeout", "routed_init_process_group"]  # PrivateWorldTimeout: its documented old home

ARRIVED_KEY = "vllm_pg_shim/arrived/{rank}"


def _wait_for_members(store, rank: int, world_size: int, seconds: float, where: str) -> None:
    keys = [ARRIVED_KEY.format(rank=r) for r in range(world_size)]
    deadline = time.monotonic() + seconds
    seen, next_look = [rank], 0.0  # who had arrived when this member last looked
    while True:
        try:
            if next_look == 0.0:
                store.set(keys[rank], f"{socket.gethostname()}:{os.getpid()}")
            if store.check(keys):
                return
            now = time.monotonic()
            if now >= next_look or now >= deadline:
                seen = [r for r, k in enumerate(keys) if store.check([k])]
                next_look = now + 0.25
        except Exception as exc:  # the store went away: rank 0, which holds it, gave up first or died
            missing = [r for r in range(world_size) if r not in seen]
            raise PrivateWorldTimeout(
                f"vLLM's private world at {where} (size {world_size}, this member is rank {rank}) did not "
                f"assemble: its store closed while this member waited within {TIMEOUT_VAR}={seconds:g}s (rank 0 "
                f"ended its wait or died: {exc}); ranks arrived {seen}, missing {missing} when last seen. The "
                f"host's WORLD is untouched.",
                arrived=seen,
                missing=missing,
            ) from exc
        if now >= deadline:
            missing = [r for r in range(world_size) if r not in seen]
            raise PrivateWorldTimeout(
                f"vLLM's private world at {where} (size {world_size}, this member is rank {rank}) did not "
                f"assemble within {TIMEOUT_VAR}={seconds:g}s: ranks arrived {seen}, missing {missing}. "
                f"The host's WORLD is untouched.",
                arrived=seen,
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


def _client_store(args: tuple, kwargs: dict, seconds: float):
    """A member's connection to rank 0's store, bounded: torch's client waits for the server's answer to its ping
    without a timeout, so a port someone else listens on (and never answers) would hold it forever. It is made
    in a daemon thread; one that gets no answer in time is left blocked there (one thread and one socket, until
    that listener closes or the process ends) and this member raises instead."""
    import threading

    from torch.distributed import TCPStore

    box: dict = {}

    def connect():
        try:
            box["store"] = TCPStore(*args, **kwargs)
        except BaseException as exc:  # handed to the waiting member
            box["error"] = exc

    thread = threading.Thread(target=connect, name="vllm_pg_shim-store-client", daemon=True)
    thread.start()
    thread.join(seconds + 1.0)
    if "store" in box:
        return box["store"]
    if "error" in box:
        raise box["error"]
    raise TimeoutError(f"no answer within {seconds:g}s: something other than rank 0's store may be listening there")


def _tcp_store(host: str, port: int, rank: int, world_size: int, seconds: float):
    from torch.distributed import TCPStore

    args = (host, port, world_size, rank == 0)
    kwargs = dict(timeout=timedelta(seconds=seconds), wait_for_workers=False, multi_tenant=True)
    if rank != 0:
        return _client_store(args, kwargs, seconds)
    if not is_loopback(host):
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


def _gone(value: bytes) -> bool:
    """A member's roll-call entry ("host:pid"): True when it ran on this host and that process has ended."""
    host, _, pid = value.decode(errors="replace").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:  # a killed child its parent has not reaped yet is a zombie
            return f.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    except OSError:
        pass
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _form_group(real, kwargs: dict, *, roll_store, seconds: float, where: str):
    """torch makes the group after every member arrived; bound that too (see the module doc)."""
    set_timeout = getattr(c10d, "_set_pg_timeout", None)
    bound = timedelta(seconds=seconds)
    wanted = kwargs.get("timeout")
    if set_timeout is None or (wanted is not None and wanted <= bound):
        return real(**kwargs)
    world_size, rank = kwargs["world_size"], kwargs["rank"]
    # read now, while every member is there: once the group fails, rank 0 (which holds the store) may already
    # have given up and closed it, and a member would then have no one to name
    entries = {}
    for r in range(world_size):
        try:
            entries[r] = roll_store.get(ARRIVED_KEY.format(rank=r))
        except Exception:  # unreadable: say nothing about that member
            pass
    try:
        result = real(**{**kwargs, "timeout": bound})
    except Exception as exc:
        gone = [r for r, entry in entries.items() if _gone(entry)]
        said = f"ranks {gone} are no longer running" if gone else "a member may have died or stopped after arriving"
        raise PrivateWorldTimeout(
            f"vLLM's private world at {where} (size {world_size}, this member is rank {rank}): every member arrived "
            f"but the group was not formed within {TIMEOUT_VAR}={seconds:g}s ({said}): {exc}. The host's WORLD "
            f"is untouched.",
            arrived=[r for r in range(world_size) if r not in gone],
            missing=gone,
        ) from exc
    if wanted is None:
        try:
            wanted = c10d._get_default_timeout(c10d.Backend(kwargs.get("backend") or "gloo"))
        except Exception:
            wanted = c10d.default_pg_timeout
    set_timeout(wanted, c10d._world.default_pg)  # vLLM's own timeout for its collectives, as without the bound
    return result


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
        private = _scope.current()
        seconds = rendezvous_timeout() if private is not None else None
        roll_store = where = None
        if private is not None:
            _check_rank(world_size, rank)
        if private is not None and private.rendezvous_store is not None and store is None \
                and init_method in (None, "env://"):
            # members meet where the role that made this world put them (not at the host's MASTER_PORT)
            store, init_method = private.rendezvous_store, None
            if seconds is not None and world_size > 1:
                _wait_for_members(store, rank, world_size, seconds, private.rendezvous_where)
                roll_store, where = store, private.rendezvous_where
        elif seconds is not None and store is None and init_method and world_size > 1:
            url = urlparse(init_method)
            if url.scheme == "tcp" and url.hostname and url.port:
                from torch.distributed import PrefixStore

                where = f"{url.hostname}:{url.port}"
                tcp = _open_store(url.hostname, url.port, rank, world_size, seconds, where)
                _wait_for_members(tcp, rank, world_size, seconds, where)
                roll_store = tcp
                # torch prefixes the store it makes from an init_method the same way: members without the
                # shim use the very same keys.
                store, init_method = PrefixStore("default_pg", tcp), None
            else:
                _warn_once(
                    f"timeout-method:{url.scheme}",
                    f"{TIMEOUT_VAR} bounds a tcp://host:port rendezvous only; vLLM's private world meets at "
                    f"{init_method!r} here, which waits as long as vLLM's own timeout allows.",
                )
        call = dict(backend=backend, init_method=init_method, timeout=timeout, world_size=world_size, rank=rank,
                    store=store, **kw)
        if private is None:
            return real(**call)
        # torch records a few process-wide things when it makes a default group (its excepthook prefix, the
        # backend and init method of "the" WORLD): those stay the host's.
        saved = (sys.excepthook, getattr(c10d, "_backend", None), getattr(c10d, "_default_pg_init_method", None))
        try:
            if roll_store is None:
                return real(**call)
            result = _form_group(real, call, roll_store=roll_store, seconds=seconds, where=where)
            if timeout is not None and roll_store is not store:  # the shim's own store: vLLM's timeout from now on
                roll_store.set_timeout(timeout)
            return result
        finally:
            sys.excepthook = saved[0]
            for name, value in (("_backend", saved[1]), ("_default_pg_init_method", saved[2])):
                if hasattr(c10d, name):
                    setattr(c10d, name, value)

    init_process_group.__wrapped__ = real
    init_process_group.__doc__ = real.__doc__
    return init_process_group
