"""install / uninstall / status: the patch machinery, knowing nothing of any one vLLM release.

The family (from compat_matrix.yaml) names targets; each is wrapped the moment its module is imported (a
post-import hook, so later ``from … import`` copies take the wrapper) or at once when it is already loaded, in
which case copies already bound in loaded ``vllm.*`` modules are rebound as well. Every replacement is
recorded with its original in the shim's one registry (``_originals``), and ``uninstall`` puts back exactly
those originals, where the shim's wrapper is still in place.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from types import ModuleType
from typing import Any

from . import __version__, _env, _import_hooks, _installed, _originals
from ._status import Status
from .exceptions import ShimError, UnsupportedTorch
from .families import Decision, Family, Target, decide, vllm_distribution

INFO, WARNING = 20, 30  # logging's levels, named without importing logging


def _log(level: int, message: str, *args) -> None:
    """Log to the "vllm_pg_shim" logger. While nothing has imported logging, nothing has configured it either, so
    an info record would go nowhere: logging (costly at interpreter start) is imported for warnings only."""
    if level < WARNING and "logging" not in sys.modules:
        return
    import logging

    logging.getLogger("vllm_pg_shim").log(level, message, *args)


_C10D = "torch.distributed.distributed_c10d"  # loaded: torch.distributed is in use and the guard can check it


class _State:
    """This process's install (one per process, behind ``_lock``)."""

    def __init__(self) -> None:
        self.installed = False
        self.how: str | None = None
        self.family: Family | None = None
        self.decision: Decision | None = None
        self.distribution: tuple[str, str] | None = None
        self.generation = 0  # import hooks of an earlier install() see a newer generation and do nothing
        self.environment: list[dict] = []  # variables install() wrote: name, before, after
        self.missing: list[str] = []
        self.hooks: list = []  # the import hooks of this install, cancelled by uninstall
        self.guard: Any = None  # torch_guard.GuardResult once torch.distributed was checked
        self.refusal: str | None = None  # why the shim stood down after install() (a torch imported later differed)


_lock = threading.RLock()
_state = _State()


_wrapper_class = None


def _shim_wrapper_class():
    """wrapt is imported only on install: the class is made then, once."""
    global _wrapper_class
    if _wrapper_class is None:
        import wrapt

        class ShimWrapper(wrapt.FunctionWrapper):
            """Marks a vLLM function wrapped by vllm-pg-shim (never wrapped twice)."""

        _wrapper_class = ShimWrapper
    return _wrapper_class


def is_shim_wrapper(obj) -> bool:
    return _wrapper_class is not None and isinstance(obj, _wrapper_class)


def _resolve_owner(module: ModuleType, qualname: str):
    owner = module
    *path, attr = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, attr


def _patch_target(module: ModuleType, target: Target, family_module: ModuleType) -> tuple | None:
    """Wrap one target; returns (original, wrapper, owner module) when copies of it elsewhere need rebinding."""
    from . import roles

    try:
        owner, attr = _resolve_owner(module, target.qualname)
        original = vars(owner)[attr] if isinstance(owner, type) else getattr(owner, attr)
    except (AttributeError, KeyError):
        if not target.optional:
            _state.missing.append(str(target))
            _log(WARNING, "vllm-pg-shim: %s is not in this vLLM release; not wrapped", target)
        return None
    if is_shim_wrapper(original):
        return None
    role = getattr(family_module, "ROLE_FUNCTIONS", {}).get(target.role) or roles.ROLE_FUNCTIONS[target.role]
    wrapper = _shim_wrapper_class()(original, functools.partial(role, family_module=family_module))
    _originals.replace(owner, attr, wrapper, by=_originals.VLLM, original=original)
    return (original, wrapper, owner) if isinstance(owner, ModuleType) else None


def _rebind_copies(patched: list[tuple]) -> None:
    """Names bound with ``from … import`` before the patch still hold the original: point them at the wrapper.

    One pass over the loaded ``vllm.*`` modules serves all the targets of a module: a pass reads every name of
    every loaded vLLM module, the largest part of ``install()`` once vLLM's modules are loaded."""
    by_id = {id(original): (original, wrapper, owner) for original, wrapper, owner in patched}
    if not by_id:
        return
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "vllm" or name.startswith("vllm.")):
            continue
        for attr, value in list(vars(mod).items()):
            hit = by_id.get(id(value))
            if hit is not None and hit[0] is value and mod is not hit[2]:
                _originals.replace(mod, attr, hit[1], by=_originals.VLLM)


def _watch_child_exit(_multiprocessing: ModuleType) -> None:
    with _lock:
        if _state.installed:
            from . import _exit

            _exit.watch_multiprocessing_child_exit()


def _on_import(module: ModuleType, generation: int) -> None:
    with _lock:
        if not _state.installed or generation != _state.generation or _state.family is None:
            return  # an earlier install's hook, running while a later one is active
        from . import _exit

        _exit.watch_multiprocessing_child_exit()
        family_module = _state.family.patch_module()
        patched = []
        for target in _state.family.targets:
            if target.module == module.__name__:
                patched.append(_patch_target(module, target, family_module))
        _rebind_copies([p for p in patched if p is not None])


def _note_existing_vllm_world(family: Family) -> None:
    """vLLM may have initialised before the shim came (a clean process): that WORLD is vLLM's own, not foreign.
    The family names where vLLM keeps its world group (``world_state`` in compat_matrix.yaml)."""
    if not family.world_state:
        return
    module_name, _, attr = family.world_state.partition(":")
    module = sys.modules.get(module_name)
    if module is not None and getattr(module, attr, None) is not None:
        from . import world

        world.note_vllm_owned_default()
        # Who made that WORLD cannot be told after the fact, and an engine already built is never moved.
        _log(
            WARNING,
            "vllm-pg-shim: vLLM had already initialised its distributed state when the shim was installed: its "
            "WORLD is taken as vLLM's own and left as it is. Install the shim before vLLM initialises."
        )


def install(*, family: str | None = None, how: str = "install()") -> Status:
    with _lock:
        if _state.installed:
            return status()
        dist = vllm_distribution()
        if dist is None:
            raise ShimError("vllm-pg-shim: vLLM is not installed in this environment; nothing to patch")
        _check_torch_distributed()
        c10d = sys.modules.get(_C10D)
        if c10d is not None:
            _guard_torch(c10d)  # refuses before anything is touched
        decision = decide(dist[1], dist[0], forced=family or _env.forced_family())
        chosen = decision.family
        chosen.patch_module()  # fail here, not in an import hook, if the family module is broken
        if decision.how == "shape":
            import warnings

            warnings.warn(f"vllm-pg-shim: {decision.note}", RuntimeWarning, stacklevel=3)
        _state.installed, _state.how, _state.family, _state.distribution = True, how, chosen, dist
        _state.decision = decision
        _state.generation += 1
        _state.missing.clear()
        _state.refusal = None
        hooks = {module: functools.partial(_on_import, generation=_state.generation)
                 for module in dict.fromkeys(t.module for t in chosen.targets)}
        if c10d is None:  # checked right after torch.distributed is imported, before vLLM can use it
            hooks = {_C10D: functools.partial(_guard_on_import, generation=_state.generation), **hooks}
        _state.hooks = list(hooks.values())
        for module_name, hook in hooks.items():
            _import_hooks.register(hook, module_name)  # runs now if the module is already imported
        _note_existing_vllm_world(chosen)
        _write_import_environment(dist[1])
        # No multiprocessing child can exist before multiprocessing is imported: watch from then on.
        _import_hooks.register(_watch_child_exit, "multiprocessing")
        _state.hooks.append(_watch_child_exit)
        _log(INFO, "vllm-pg-shim %s installed (%s) for %s %s, family %s", __version__, how, *dist, chosen.name)
        return status()


def _guard_torch(c10d: ModuleType):
    """The torch guard's verdict on ``c10d``; raises UnsupportedTorch unless VLLM_PG_SHIM_FORCE_TORCH=1."""
    from . import torch_guard

    result = _state.guard = torch_guard.check(c10d, _torch_version(), forced=_env.torch_forced())
    if result.differences:
        if not result.forced:
            raise UnsupportedTorch(torch_guard.refusal(result), differences=list(result.differences))
        _env._warn_once(f"force-torch:{result.torch}",
                        f"vllm-pg-shim: {_env.FORCE_TORCH_VAR}=1: applied to torch {result.torch} although "
                        + "; ".join(result.differences), stacklevel=4)
    return result


def _guard_on_import(c10d: ModuleType, generation: int) -> None:
    """torch.distributed was imported after install(): an import hook may not raise, so a torch that differs
    makes the shim stand down (every original back) and say why, as install() would have refused it."""
    with _lock:
        if not _state.installed or generation != _state.generation:
            return
        try:
            _guard_torch(c10d)
        except UnsupportedTorch as exc:
            _restore_everything()
            _state.refusal = str(exc)
            import warnings

            warnings.warn(f"{exc} The shim stood down; vLLM runs as stock.", RuntimeWarning, stacklevel=2)


def _write_import_environment(version: str) -> None:
    """Write now what ``import vllm`` of this release writes into its process's environment.

    Host ranks that build no engine never import vLLM: without this they keep another NCCL_CUMEM_ENABLE than
    the ranks that do (0.7.0-0.10.1), and NCCL groups spanning both disagree. Written at install(), before the
    host makes its NCCL groups, every rank where the shim is installed agrees, and vLLM's own import then finds
    its value in place."""
    from .families import import_environment

    _state.environment.clear()
    for write in import_environment(version):
        before = os.environ.get(write.variable)
        if write.unless_exists and os.path.exists(write.unless_exists):
            continue
        if write.only_if_unset and before is not None:
            continue
        os.environ[write.variable] = write.value
        _state.environment.append({"variable": write.variable, "before": before, "after": write.value})
        if before != write.value:
            _log(INFO, "vllm-pg-shim: %s=%s, as `import vllm` %s sets it on every rank", write.variable,
                     write.value, version)


def _restore_import_environment() -> None:
    """Put back what install() wrote, unless vLLM was imported since (it wrote the same and relies on it) or
    someone changed the value meanwhile."""
    for record in reversed(_state.environment):
        if "vllm" in sys.modules or os.environ.get(record["variable"]) != record["after"]:
            continue
        if record["before"] is None:
            os.environ.pop(record["variable"], None)
        else:
            os.environ[record["variable"]] = record["before"]
    _state.environment.clear()


def _check_torch_distributed() -> None:
    """Refuse a torch without torch.distributed, without importing torch at interpreter start."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise ShimError("vllm-pg-shim: torch is not installed in this environment")
    tdist = sys.modules.get("torch.distributed")
    if tdist is not None and not tdist.is_available():
        raise ShimError("vllm-pg-shim: this torch build has no torch.distributed; there is nothing to isolate")


def uninstall() -> Status:
    with _lock:
        if not _state.installed:
            return status()
        if _C10D in sys.modules:
            from . import world

            live = world.current_private()
            if live is not None:
                raise ShimError(
                    "vllm-pg-shim: a vLLM engine still uses private world "
                    f"{live.id} ({live.label}); delete it (or call vLLM's cleanup_dist_env_and_memory()) "
                    "before uninstall(). Nothing was changed."
                )
        _restore_everything()
        _state.guard = None
        return status()


def _restore_everything() -> None:
    """Put back every original the shim replaced (the caller holds the lock)."""
    for hook in _state.hooks:
        _import_hooks.cancel(hook)
    _state.hooks.clear()
    for left in _originals.restore(_originals.VLLM):
        _log(INFO, "vllm-pg-shim: %s was replaced again since the shim wrapped it; left as it is", left.name)
    # copies taken from a patched module after install (``from … import`` after the patch) hold the wrapper too
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "vllm" or name.startswith("vllm.")):
            continue
        for attr, value in list(vars(mod).items()):
            if is_shim_wrapper(value):
                setattr(mod, attr, value.__wrapped__)
    if "vllm_pg_shim._exit" in sys.modules:  # else it never started
        from . import _exit

        _exit.stop()
    _restore_import_environment()
    _state.installed, _state.how = False, None
    _state.generation += 1


def installed() -> bool:
    return _state.installed


def status() -> Status:
    dist = _state.distribution or vllm_distribution()
    decision, refusal = _state.decision if _state.installed else None, None
    if decision is None and dist is not None:
        try:
            decision = decide(dist[1], dist[0], forced=_env.forced_family())
        except ShimError as exc:
            refusal = str(exc)
    c10d = sys.modules.get(_C10D)
    if "vllm_pg_shim.world" in sys.modules or (c10d is not None and c10d._world.default_pg is not None):
        from . import world

        world_now = world.describe()
    else:  # no WORLD and no private world can exist before the world module is loaded
        world_now = {"host_world": "none", "router_installed": False, "private_worlds": []}
    guard = _torch_guard_result()
    replaced = _originals.saved()
    return Status(
        shim_version=__version__,
        installed=_state.installed,
        activation=_state.how,
        env={var: os.environ.get(var) for var in _env.ALL_VARS},
        vllm={"distribution": dist[0], "version": dist[1]} if dist else None,
        torch=guard.torch,
        torch_guard=guard.as_dict(),
        family=decision.family.name if decision else None,
        family_releases=decision.family.releases if decision else None,
        family_decision={"how": decision.how, "note": decision.note} if decision else None,
        patched=sorted({e.name for e in replaced if e.by == _originals.VLLM}),
        replacements=[e.describe() for e in replaced],
        missing=list(_state.missing),
        import_environment=[dict(r) for r in _state.environment],
        python=sys.version.split()[0],
        pid=os.getpid(),
        world=world_now,
        reason=refusal or _reason(dist is not None, world_now, guard),
    )


def _torch_guard_result():
    from . import torch_guard

    if _state.guard is not None:
        return _state.guard
    c10d = sys.modules.get(_C10D)
    if c10d is None:
        return torch_guard.unchecked(_torch_version(), forced=_env.torch_forced())
    return torch_guard.check(c10d, _torch_version(), forced=_env.torch_forced())


def _reason(has_vllm: bool, world_now: dict, guard) -> str:
    if not has_vllm:
        return "vLLM is not installed here"
    if not _state.installed and _state.refusal:
        return _state.refusal
    if not _state.installed and guard.differences and not guard.forced:
        from . import torch_guard

        return torch_guard.refusal(guard)
    if not _state.installed:
        return "not installed: call vllm_pg_shim.install() or set VLLM_PG_SHIM=1"
    host = world_now["host_world"]
    if world_now["private_worlds"]:
        return "active: vLLM runs in a private world beside the host's WORLD"
    if host == "foreign":
        return "active: this process's WORLD is foreign; vLLM will get a private world when it initialises"
    return "active: no foreign WORLD here, so vLLM runs exactly as stock"


def _torch_version() -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(getattr(torch, "__version__", None), str):
        return str(torch.__version__)
    try:
        return _installed.version("torch")
    except _installed.NotInstalled:
        return None
