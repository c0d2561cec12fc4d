"""The private torch internals the shim relies on, checked before it relies on them.

torch's ``_World`` is an "experimental API ... subject to change", and the shim reads and replaces a handful of
other private names of ``torch.distributed.distributed_c10d``. :data:`INTERNALS` lists each one with what the
shim needs of it; :func:`check` compares a loaded torch with that list. A torch whose internals differ is refused
with every difference named (``VLLM_PG_SHIM_FORCE_TORCH=1`` overrides, with a warning), instead of a private world
that silently shares state with the host's.

Importing this module does not import torch: the check runs once ``distributed_c10d`` is loaded (at ``install()``
when it already is, else right after its import), so activation at interpreter start stays cheap.
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Callable, NamedTuple

C10D = "torch.distributed.distributed_c10d"

# The torch releases the test tiers ran on (local labels such as +cpu dropped); tests/test_torch_guard.py keeps
# this equal to the torch versions in compat_records.yaml.
TESTED_TORCH = ("2.3.0", "2.3.1", "2.4.0", "2.5.1", "2.6.0", "2.7.0", "2.7.1", "2.8.0", "2.9.0", "2.9.1", "2.10.0",
                "2.11.0", "2.13.0", "2.14.0")

# ``_World`` maps that torch keeps in module globals (one per process): a private world gets its own of each.
PER_PROCESS_MAPS = ("pg_map", "pg_names", "pg_group_ranks", "pg_backend_config", "tags_to_pg", "pg_to_tag")

ABSENT = "absent"
A_CLASS = "a class constructible without arguments"
SETTABLE = "a property with a setter"
PER_PROCESS = "a property over a dict global to distributed_c10d"
CALLABLE = "callable"


def world_properties(c10d: ModuleType) -> dict[str, property]:
    """Every property of ``_World`` (its own and inherited)."""
    props: dict[str, property] = {}
    for klass in reversed(c10d._World.__mro__):
        props.update({k: v for k, v in vars(klass).items() if isinstance(v, property)})
    return props


def per_process_storage(c10d: ModuleType) -> dict[str, type]:
    """The ``_World`` properties whose storage is a module global of c10d (one per process, not per world).

    Found by identity rather than listed, so a torch release that adds such a map gets private storage too."""
    module_containers = {id(v) for v in list(vars(c10d).values()) if type(v) in (dict, list)}
    probe = c10d._World()
    found = {}
    for name, prop in world_properties(c10d).items():
        if name in ("default_pg", "group_count") or prop.fget is None:
            continue
        try:
            value = prop.fget(probe)
        except Exception:  # computed properties that need an initialised group
            continue
        if id(value) in module_containers:
            found[name] = type(value)
    return found


def _takes(n: int) -> str:
    return f"a function taking {n} positional argument{'s' if n != 1 else ''}"


def _class(c10d: ModuleType, name: str) -> str:
    klass = getattr(c10d, name, None)
    if klass is None:
        return ABSENT
    if not isinstance(klass, type):
        return f"a {type(klass).__name__}, not a class"
    try:
        klass()
    except Exception as exc:
        return f"a class whose constructor raised {exc!r}"
    return A_CLASS


def _world_property(c10d: ModuleType, name: str) -> str:
    if not isinstance(getattr(c10d, "_World", None), type):
        return ABSENT
    prop = world_properties(c10d).get(name)
    if prop is None:
        return ABSENT
    return SETTABLE if prop.fset is not None else "a read-only property"


def _per_process_map(c10d: ModuleType, name: str) -> str:
    if _world_property(c10d, name) == ABSENT:
        return ABSENT
    try:
        storage = per_process_storage(c10d)
    except Exception as exc:
        return f"unreadable ({exc!r})"
    return PER_PROCESS if storage.get(name) is dict else "a property over storage of each _World instance"


def _instance(c10d: ModuleType, name: str) -> str:
    klass, value = getattr(c10d, "_World", None), getattr(c10d, name, None)
    if value is None:
        return ABSENT
    if isinstance(klass, type) and isinstance(value, klass):
        return "an instance of _World"
    return f"a {type(value).__qualname__} object that is not an instance of _World"


def _function(c10d: ModuleType, name: str, arguments: int | None) -> str:
    fn = getattr(c10d, name, None)
    if fn is None:
        return ABSENT
    if not callable(fn):
        return f"a {type(fn).__name__}, not callable"
    if arguments is None:
        return CALLABLE
    import inspect

    try:
        inspect.signature(fn).bind(*[None] * arguments)
    except TypeError:
        return f"a function whose parameters are {list(inspect.signature(fn).parameters)}"
    except ValueError:  # a builtin without a signature
        return "callable, with no readable signature"
    return _takes(arguments)


def _method(c10d: ModuleType, owner: str, name: str) -> str:
    klass = getattr(c10d, owner, None)
    return CALLABLE if callable(getattr(klass, name, None)) else ABSENT


class Internal(NamedTuple):
    """One private torch name and what the shim needs of it."""

    name: str  # as reached from torch.distributed.distributed_c10d
    expected: str
    observe: Callable[[ModuleType], str]
    optional: bool = False  # used only where torch has it (older releases lack it)
    why: str = ""


INTERNALS: tuple[Internal, ...] = (
    Internal("_World", A_CLASS, lambda m: _class(m, "_World"),
             why="a private world is a _World of its own; torch's _world becomes a routing subclass"),
    Internal("_World.default_pg", SETTABLE, lambda m: _world_property(m, "default_pg"),
             why="routed to the current world"),
    Internal("_World.group_count", SETTABLE, lambda m: _world_property(m, "group_count"),
             why="routed to the current world"),
    *(Internal(f"_World.{n}", PER_PROCESS, functools.partial(_per_process_map, name=n),
               why="storage a private world must have its own of") for n in PER_PROCESS_MAPS),
    Internal("_world", "an instance of _World", lambda m: _instance(m, "_world"),
             why="its class is swapped for the routing one while a private world lives"),
    Internal("_get_default_store", _takes(0), lambda m: _function(m, "_get_default_store", 0),
             why="the host's store, where an external-launcher private world meets"),
    Internal("_update_default_pg", _takes(1), lambda m: _function(m, "_update_default_pg", 1), optional=True,
             why="replaced: a private default group must not become the host's"),
    Internal("_register_process_group", CALLABLE, lambda m: _function(m, "_register_process_group", None),
             optional=True, why="replaced: private group names are prefixed in torch's process-wide registry"),
    Internal("_unregister_process_group", CALLABLE, lambda m: _function(m, "_unregister_process_group", None),
             optional=True, why="replaced: a private teardown unregisters only its own names"),
    Internal("_unregister_all_process_groups", CALLABLE,
             lambda m: _function(m, "_unregister_all_process_groups", None), optional=True,
             why="replaced: the host's teardown must not drop vLLM's names (nor vLLM's the host's)"),
    Internal("_set_pg_timeout", _takes(2), lambda m: _function(m, "_set_pg_timeout", 2), optional=True,
             why="the bounded rendezvous gives vLLM's group its own timeout back"),
    Internal("_get_default_timeout", _takes(1), lambda m: _function(m, "_get_default_timeout", 1), optional=True,
             why="vLLM's default timeout, restored after the bounded rendezvous"),
    Internal("ProcessGroup._set_group_name", CALLABLE, lambda m: _method(m, "ProcessGroup", "_set_group_name"),
             optional=True, why="a private group's registry name, for functional collectives"),
)


class GuardResult(NamedTuple):
    """What the guard found (``status()["torch_guard"]``)."""

    torch: str | None
    tested: bool
    tested_versions: tuple[str, ...] = TESTED_TORCH
    checked: bool = False  # False until torch.distributed is loaded
    differences: tuple[str, ...] = ()
    forced: bool = False

    @property
    def ok(self) -> bool:
        return self.checked and not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {**self._asdict(), "tested_versions": list(self.tested_versions),
                "differences": list(self.differences), "ok": self.ok}

    def summary(self) -> str:
        if not self.checked:
            return "not checked yet (torch.distributed is not imported in this process)"
        if not self.differences:
            return f"ok: the {len(INTERNALS)} private torch names the shim relies on are as expected"
        head = "FORCED despite differences" if self.forced else "REFUSED"
        return f"{head}: " + "; ".join(self.differences)


def differences(c10d: ModuleType) -> list[str]:
    """Each internal whose observed form differs from what the shim needs, in words."""
    found = []
    for internal in INTERNALS:
        try:
            observed = internal.observe(c10d)
        except Exception as exc:  # a torch odd enough to break the probe differs by definition
            observed = f"unreadable ({exc!r})"
        if observed == internal.expected or (internal.optional and observed == ABSENT):
            continue
        found.append(f"torch.distributed.distributed_c10d.{internal.name}: expected {internal.expected}, "
                     f"found {observed}")
    return found


def release_of(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: builds of one release share its internals."""
    return version.split("+", 1)[0]


def check(c10d: ModuleType, torch_version: str | None, *, forced: bool) -> GuardResult:
    return GuardResult(torch=torch_version, tested=torch_version is not None and release_of(torch_version)
                       in TESTED_TORCH, checked=True, differences=tuple(differences(c10d)), forced=forced)


def unchecked(torch_version: str | None, *, forced: bool) -> GuardResult:
    return GuardResult(torch=torch_version, tested=torch_version is not None and release_of(torch_version)
                       in TESTED_TORCH, forced=forced)


def refusal(result: GuardResult) -> str:
    from ._env import FORCE_TORCH_VAR

    return (f"vllm-pg-shim: torch {result.torch} differs from what the shim relies on in "
            f"{len(result.differences)} private name(s): " + "; ".join(result.differences)
            + f". Tested torch releases: {', '.join(result.tested_versions)}. {FORCE_TORCH_VAR}=1 applies the "
              f"shim anyway (at your own risk: its private worlds may share state with the host's).")
