"""A patch family as data: the targets it wraps, by role, and the releases it covers.

Shared by the registry (``families``, which reads them from the matrix) and the shape check (``shape``, which
reads an unknown release's sources against them). Imports neither vLLM nor torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from .exceptions import ShimError

ROLES = ("init", "scope", "teardown", "device")


@dataclass(frozen=True)
class Target:
    module: str
    qualname: str
    role: str
    optional: bool = False  # absent from some releases of the family

    @classmethod
    def parse(cls, entry: str, role: str) -> "Target":
        module, _, qualname = entry.rstrip("?").partition(":")
        if not module or not qualname:
            raise ValueError(f"target {entry!r} is not 'module:qualname'")
        return cls(module, qualname, role, optional=entry.endswith("?"))

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"


@dataclass(frozen=True)
class Family:
    name: str
    releases: str
    module_name: str
    targets: tuple[Target, ...] = field(default=())
    world_state: str | None = None  # "module:global" holding vLLM's world group once it has initialised

    def covers(self, version: str) -> bool:
        from packaging.specifiers import SpecifierSet

        # prereleases is explicit: packaging >= 26 changed how ranges admit dev/local builds.
        return SpecifierSet(self.releases).contains(release_key(version), prereleases=False)

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


def release_key(version: str) -> str:
    """The release a build is matched by: ``0.33.0rc1+g12`` → ``0.33.0``; ``0.5.3.post1`` stays itself."""
    from packaging.version import InvalidVersion, Version

    try:
        v = Version(version)
    except (InvalidVersion, TypeError) as exc:  # TypeError: metadata without a Version field gives None
        raise ShimError(f"vLLM reports the version {version!r}, which is not a PEP 440 version") from exc
    key = ".".join(str(p) for p in v.release)
    return f"{key}.post{v.post}" if v.post is not None else key
