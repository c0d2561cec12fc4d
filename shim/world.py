"""Private worlds: vLLM's torch.distributed state kept beside the host's, in the same process.

torch keeps "the world" (default group, group maps, the name counter) in one object,
``distributed_c10d._world``, a private torch API (see vllm_pg_shim.torch_guard). When vLLM initialises in a process
whose WORLD someone else made, the shim gives vLLM a :class:`PrivateWorld` (a ``_World`` with storage of its
own) and turns torch's one ``_world`` object into a :class:`RoutingWorld` by changing its class in place, so
every reference to it, including copies other modules hold, sees the routing:

- which world is *current* is per thread (a ContextVar): vLLM's wrapped entry points run with their private
  world current, everything else with the host's. The default group, the name counter, every enumeration and
  every new entry belong to the current world only, so ``new_group`` names, ``destroy_process_group()`` and
  ``is_initialized()`` never cross between host and vLLM;
- look-ups keyed by a group object fall through to the world that owns that group, and a torch.distributed
  function given one of vLLM's groups runs with vLLM's world current, so a collective on one of vLLM's groups
  translates its global ranks (and finds its own rank) correctly whichever world is current.

torch's C++ registry of group names is process-wide and refuses duplicates, while a private world must name its
groups exactly as vLLM's clean processes do ("0", "1", ...: the names prefix the rendezvous keys its peers use).
So the registry calls are routed too: a private group is registered, and renamed, as
``vllm_pg_shim.<world id>.<name>``, and a private teardown unregisters only its own names.

Nothing here is installed until a private world is needed, and it is removed again when the last one ends.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import os
import sys
import threading
import types
from collections.abc import MutableMapping
from typing import Any, Iterator

import torch
import torch.distributed.distributed_c10d as c10d

from . import _originals, rendezvous
from ._scope import current as _current_scoped
from ._scope import in_private_scope, scope  # noqa: F401 (in_private_scope: the roles reach it here)
from .torch_guard import per_process_storage, world_properties

NAME_PREFIX = "vllm_pg_shim."

_lock = threading.RLock()
_live: list[PrivateWorld] = []
# The default group vLLM made itself in a clean process (pid, group): a WORLD vLLM owns is not foreign.
_vllm_owned_default: tuple[int, Any] | None = None


_BASE_PROPERTIES = world_properties(c10d)
_STORAGE = per_process_storage(c10d)


class PrivateWorld(c10d._World):
    """A ``_World`` whose every map and counter is its own: vLLM's world, separate from the host's."""

    _ids = itertools.count(1)

    def __init__(self, label: str = "") -> None:
        super().__init__()
        self._own = {name: factory() for name, factory in _STORAGE.items()}
        self._private_group_count = 0
        self.id = next(self._ids)
        self.pid = os.getpid()
        self.label = label
        self.registered: dict[str, Any] = {}  # registry name -> group, for a teardown that touches only these
        # Where members meet when vLLM names no address of its own (``env://`` from an external launcher on
        # some of the host's ranks): a key space of the host's store, set by the role that made this world.
        self.rendezvous_store: Any = None
        self.rendezvous_where = ""

    @property
    def group_count(self) -> int:
        return self._private_group_count

    @group_count.setter
    def group_count(self, value: int) -> None:
        self._private_group_count = value

    def registry_name(self, name: str) -> str:
        return name if name.startswith(NAME_PREFIX) else f"{NAME_PREFIX}{self.id}.{name}"

    def describe(self) -> dict:
        default = self.default_pg
        return {
            "id": self.id,
            "label": self.label,
            "initialized": default is not None,
            "rank": default.rank() if default is not None else None,
            "size": default.size() if default is not None else None,
            "groups": sorted(str(v) for v in self._own.get("pg_names", {}).values()),
        }


def _own_storage_property(name: str) -> property:
    return property(lambda self: self._own[name], doc=f"This private world's own ``{name}``.")


for _name in _STORAGE:
    setattr(PrivateWorld, _name, _own_storage_property(_name))


class RoutedMap(MutableMapping):
    """A view of one world's map that falls through to the other worlds for keys that are groups.

    Iteration, length, ``clear`` and new keys concern the current (primary) world only; reading, replacing or
    deleting an existing group's entry reaches whichever world holds it. String keys (tags) never fall
    through: both worlds use the same tag names for different groups.
    """

    __slots__ = ("_primary", "_others")

    def __init__(self, primary: dict, others: list[dict]) -> None:
        self._primary = primary
        self._others = others

    def _holder(self, key) -> dict | None:
        if key in self._primary:
            return self._primary
        if not isinstance(key, str):
            for other in self._others:
                if key in other:
                    return other
        return None

    def __getitem__(self, key):
        holder = self._holder(key)
        if holder is None:
            raise KeyError(key)
        return holder[key]

    def __setitem__(self, key, value) -> None:
        (self._holder(key) or self._primary)[key] = value

    def __delitem__(self, key) -> None:
        holder = self._holder(key)
        if holder is None:
            raise KeyError(key)
        del holder[key]

    def __contains__(self, key) -> bool:
        return self._holder(key) is not None

    def __iter__(self) -> Iterator:
        return iter(self._primary)

    def __len__(self) -> int:
        return len(self._primary)

    def clear(self) -> None:
        self._primary.clear()

    def __repr__(self) -> str:
        return f"RoutedMap({self._primary!r}, +{len(self._others)} other worlds)"


def _host_value(world, name: str):
    return _BASE_PROPERTIES[name].fget(world)


def _routed_property(name: str, kind: type) -> property:
    if issubclass(kind, dict):

        def fget(self):
            private = _current_scoped()
            worlds = [private, self] if private is not None else [self]
            worlds += [w for w in _live if w is not private]
            maps = [_host_value(w, name) if w is self else getattr(w, name) for w in worlds]
            return RoutedMap(maps[0], maps[1:])

    else:

        def fget(self):
            private = _current_scoped()
            return getattr(private, name) if private is not None else _host_value(self, name)

    return property(fget, doc=f"``{name}`` of the current world (see vllm_pg_shim.world).")


def _routed_scalar(name: str) -> property:
    base = _BASE_PROPERTIES[name]

    def fget(self):
        private = _current_scoped()
        return getattr(private, name) if private is not None else base.fget(self)

    def fset(self, value):
        private = _current_scoped()
        if private is not None:
            setattr(private, name, value)
        else:
            base.fset(self, value)

    return property(fget, fset, doc=f"``{name}`` of the current world (see vllm_pg_shim.world).")


def _instance_storage_properties() -> dict[str, type]:
    """``_World`` properties stored on the instance (per world already): route them to the current world."""
    probe = c10d._World()
    found = {}
    for name, prop in _BASE_PROPERTIES.items():
        if name in _STORAGE or name in ("default_pg", "group_count") or prop.fset is not None:
            continue
        try:
            value = prop.fget(probe)
        except Exception:
            continue
        if isinstance(value, (dict, list)) and id(value) in {id(v) for v in vars(probe).values()}:
            found[name] = type(value)
    return found


class RoutingWorld(c10d._World):
    """The class torch's own ``_world`` object takes while a private world exists (see the module doc)."""


RoutingWorld.default_pg = _routed_scalar("default_pg")
RoutingWorld.group_count = _routed_scalar("group_count")
for _name, _kind in {**_STORAGE, **_instance_storage_properties()}.items():
    setattr(RoutingWorld, _name, _routed_property(_name, _kind))


# --- torch's C++ name registry and the module functions that touch process-wide state ---------------------


def _routed_register(real):
    def _register_process_group(group_name, pg):
        private = _current_scoped()
        if private is None:
            return real(group_name, pg)
        name = private.registry_name(str(group_name))
        if hasattr(pg, "_set_group_name"):
            pg._set_group_name(name)  # functional collectives resolve a group by this name: keep it unique
        private.registered[name] = pg
        return real(name, pg)

    return _register_process_group


def _owner_of(name: str) -> PrivateWorld | None:
    for w in _live:
        if name in w.registered:
            return w
    return None


def _routed_unregister(real):
    def _unregister_process_group(group_name):
        name = str(group_name)
        private = _current_scoped()
        if private is not None:
            name = private.registry_name(name)
        owner = _owner_of(name)
        if owner is not None:
            owner.registered.pop(name, None)
        elif name.startswith(NAME_PREFIX):
            return None  # a private name already released: nothing of the host's to touch
        return real(name)

    return _unregister_process_group


def _routed_unregister_all(real, register):
    def _unregister_all_process_groups():
        private = _current_scoped()
        if private is not None:
            _forget_names(private)
            return None
        real()
        for w in _live:  # the host's teardown clears the whole registry: put vLLM's names back
            for name, pg in w.registered.items():
                register(name, pg)
        return None

    return _unregister_all_process_groups


def _routed_update_default_pg(real):
    def _update_default_pg(pg):
        if _current_scoped() is not None:
            # torch also records the process's global rank for its logs here: that stays the host's.
            c10d._world.default_pg = pg
            return None
        return real(pg)

    return _update_default_pg


def _owner_of_group(group) -> PrivateWorld | None:
    if group is None:
        return None
    for w in _live:
        if group in w.pg_map:
            return w
    return None


def _routed_group_function(real, group_at: int):
    """A torch.distributed function given one of vLLM's groups while the host's world is current runs with that
    group's world current: torch <= 2.4 takes "my rank" in object collectives, send/recv and gather/scatter
    from the default group (``get_rank()``), which would be the host's rank, not vLLM's; and ``get_rank(group)``
    computes from the default group's rank too."""

    @functools.wraps(real)
    def call(*args, **kwargs):
        if _current_scoped() is None and _live:
            owner = _owner_of_group(kwargs["group"] if "group" in kwargs
                                    else args[group_at] if len(args) > group_at else None)
            if owner is not None:
                with scope(owner):
                    return real(*args, **kwargs)
        return real(*args, **kwargs)

    return call


@functools.lru_cache(maxsize=None)
def _group_functions() -> dict[str, int]:
    """torch.distributed's public functions that take a ``group``, with its position: found, not listed, so
    every release's set is covered. (Read before the router replaces any of them.)"""
    import torch.distributed as dist

    found = {}
    for name in getattr(c10d, "__all__", ()):
        fn = vars(c10d).get(name)
        # type(), not isinstance(): a deprecated torch object (reduce_op) warns on any attribute access
        if type(fn) is not types.FunctionType or vars(dist).get(name) is not fn:
            continue
        try:
            params = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            continue
        if "group" in params and name != "init_process_group":
            found[name] = params.index("group")
    return found


def _safe(fn) -> None:
    try:
        fn()
    except Exception:
        pass


def _forget_names(world: PrivateWorld) -> None:
    """Take a private world's names out of torch's registry (the real function: no routing involved)."""
    unregister = _originals.get_original(c10d, "_unregister_process_group")
    for name in list(world.registered):
        _safe(lambda: unregister(name))
    world.registered.clear()


def _router_replacements() -> dict[str, Any]:
    """c10d's functions as the router replaces them (those this torch has)."""
    replacements: dict[str, Any] = {}
    if hasattr(c10d, "_register_process_group"):
        replacements["_register_process_group"] = _routed_register(c10d._register_process_group)
    if hasattr(c10d, "_unregister_process_group"):
        replacements["_unregister_process_group"] = _routed_unregister(c10d._unregister_process_group)
    if hasattr(c10d, "_unregister_all_process_groups"):
        replacements["_unregister_all_process_groups"] = _routed_unregister_all(
            c10d._unregister_all_process_groups, getattr(c10d, "_register_process_group", lambda n, p: None)
        )
    if hasattr(c10d, "_update_default_pg"):
        replacements["_update_default_pg"] = _routed_update_default_pg(c10d._update_default_pg)
    replacements["init_process_group"] = rendezvous.routed_init_process_group(c10d.init_process_group)
    for name, group_at in _group_functions().items():
        replacements[name] = _routed_group_function(getattr(c10d, name), group_at)
    return replacements


_router_on = False


def _install_router() -> None:
    global _router_on
    if _router_on:
        return
    import torch.distributed as dist

    for name, fn in _router_replacements().items():
        original = getattr(c10d, name)
        _originals.replace(c10d, name, fn, by=_originals.TORCH_ROUTER)
        if vars(dist).get(name) is original:  # torch.distributed re-exports it; vLLM calls it through the package
            _originals.replace(dist, name, fn, by=_originals.TORCH_ROUTER)
    _originals.replace(c10d._world, "__class__", RoutingWorld, by=_originals.TORCH_ROUTER,
                       owner_name=f"{c10d.__name__}._world")
    _router_on = True


def _remove_router() -> None:
    global _router_on
    if _router_on:
        _router_on = False
        _originals.restore(_originals.TORCH_ROUTER)


def router_installed() -> bool:
    return _router_on


# --- the private worlds' life cycle ----------------------------------------------------------------------


def host_default_group():
    world = c10d._world
    if isinstance(world, RoutingWorld):
        return _BASE_PROPERTIES["default_pg"].fget(world)
    return world.default_pg


def host_world_state() -> str:
    """``none`` (no WORLD), ``vllm`` (vLLM made it here, in this process) or ``foreign`` (anyone else made it,
    including a WORLD inherited through fork: its sockets belong to the parent)."""
    default = host_default_group()
    if default is None:
        return "none"
    owned = _vllm_owned_default
    if owned is not None and owned[0] == os.getpid() and owned[1] is default:
        return "vllm"
    return "foreign"


def note_vllm_owned_default() -> None:
    """Record that the current host default group was made by vLLM itself (a clean process)."""
    global _vllm_owned_default
    default = host_default_group()
    _vllm_owned_default = (os.getpid(), default) if default is not None else None


def current_private() -> PrivateWorld | None:
    """This process's live private world (vLLM keeps one distributed state per process)."""
    pid = os.getpid()
    with _lock:
        for w in reversed(_live):
            if w.pid == pid:
                return w
    return None


def new_private_world(label: str) -> PrivateWorld:
    with _lock:
        _install_router()
        world = PrivateWorld(label)
        _live.append(world)
        return world


def release(world: PrivateWorld) -> None:
    """Forget a private world whose groups are gone; the router leaves once no private world is live."""
    with _lock:
        if world not in _live:
            return
        with scope(world):
            if world.default_pg is not None:
                return
            _forget_names(world)
        _live.remove(world)
        if not any(w.pid == os.getpid() for w in _live):
            _live.clear()  # worlds inherited through fork belong to the parent
            _remove_router()


# torch before 2.8 (pytorch/pytorch#154976) frees a process group holding the GIL, and the group's gloo backend
# joins its worker threads on the way; a worker still dropping a finished collective's tensors needs the GIL to
# free their Python objects, so the teardown never returns (seen in vLLM 0.7.0's forked TP worker, torch 2.5.1).
_FREES_GROUPS_HOLDING_THE_GIL = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 8)


@contextlib.contextmanager
def gloo_backends_freed_last(world: c10d._World) -> Iterator[None]:
    """Tear down ``world``'s groups inside this block with their gloo backends ending only after it.

    Holding the backends makes freeing a group drop just a reference; the backends end at the block's end, in
    their own destructor, which releases the GIL while it joins the workers. Nothing is held on a torch that
    frees groups without the GIL, or where a group cannot give its backend (a private method of ProcessGroup)."""
    held = _cpu_backends(world) if _FREES_GROUPS_HOLDING_THE_GIL else []
    try:
        yield
    finally:
        held.clear()


def _cpu_backends(world: c10d._World) -> list:
    """The CPU (gloo) backends of ``world``'s groups; a frame of its own, so no group outlives it in a local."""
    backends = []
    for group in list(world.pg_map):
        try:
            backends.append(group._get_backend(torch.device("cpu")))
        except (AttributeError, RuntimeError):  # no CPU backend, or a torch without the method
            continue
    return backends


def discard(world: PrivateWorld) -> None:
    """Tear down whatever a failed initialisation left in ``world``, then release it."""
    with scope(world), gloo_backends_freed_last(world):
        if world.default_pg is not None:
            _safe(lambda: c10d.destroy_process_group())
    release(world)


def describe() -> dict:
    return {
        "host_world": host_world_state() if "torch.distributed" in sys.modules else "none",
        "router_installed": router_installed(),
        "private_worlds": [w.describe() for w in _live if w.pid == os.getpid()],
    }
