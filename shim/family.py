"""A patch family as data: the targets it wraps, by role, and the releases it covers.

Shared by the registry (``families``, which reads them from the matrix) and the shape check (``shape``, which
reads an unknown release's sources against them). Imports neither vLLM nor torch.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple

from . import releases
from .exceptions import ShimError

ROLES = ("init", "scope", "teardown", "device")

# NamedTuples rather than frozen dataclasses: made at every install(), where a dataclass costs ten times more.


class Target(NamedTuple):
    module: str
    qualname: str
    role: str
    optional: bool = False  # absent from some releases of the family

    @classmethod
    def parse(cls, entry: str, role: str) -> Target:
        module, _, qualname = entry.rstrip("?").partition(":")
        if not module or not qualname:
            raise ValueError(f"target {entry!r} is not 'module:qualname'")
        return cls(module, qualname, role, optional=entry.endswith("?"))

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"


class Family(NamedTuple):
    name: str
    releases: str
    module_name: str
    targets: tuple[Target, ...] = ()
    world_state: str | None = None  # "module:global" holding vLLM's world group once it has initialised

    def covers(self, version: str) -> bool:
        return releases.covers(self.releases, version)

    def has_patch_module(self) -> bool:
        """Whether the family's module exists (found, not imported: a family may import torch)."""
        import importlib.util

        try:
            return importlib.util.find_spec(f"vllm_pg_shim.patches.{self.module_name}") is not None
        except (ImportError, ValueError):
            return False

    def patch_module(self) -> ModuleType:
        name = f"vllm_pg_shim.patches.{self.module_name}"
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise ShimError(f"compat_matrix.yaml: family {self.name!r} names the patch module {self.module_name!r}, "
                            f"which cannot be imported as {name} ({exc})") from exc
