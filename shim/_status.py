"""The typed result of ``status()`` (and of ``install()`` / ``uninstall()``)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Optional


@dataclass(eq=False)
class Status(dict):
    """What is active and why. Typed fields (``status().installed``), and also a plain dict
    (``status()["installed"]``, ``json.dumps(status())``): the dict holds the same values as the fields."""

    shim_version: str
    installed: bool
    activation: Optional[str]  # how it was installed: "install()", "VLLM_PG_SHIM=1", the vLLM plugin
    env: dict  # the shim's environment variables as this process sees them
    vllm: Optional[dict]  # {"distribution", "version"}, or None without vLLM
    torch: Optional[str]
    torch_guard: dict  # vllm_pg_shim.torch_guard.GuardResult.as_dict()
    family: Optional[str]
    family_releases: Optional[str]
    family_decision: Optional[dict]  # {"how": "matrix" | "forced" | "shape", "note"}
    patched: list  # the vLLM names wrapped ("module.attr"), sorted
    replacements: list  # every name the shim replaced now: {"name", "by"} (see vllm_pg_shim._originals)
    missing: list  # targets of the family absent from this vLLM release
    import_environment: list  # variables install() wrote: {"variable", "before", "after"}
    python: str
    pid: int
    world: dict  # {"host_world", "router_installed", "private_worlds"}
    reason: str

    def __post_init__(self) -> None:
        dict.update(self, {f.name: getattr(self, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, Any]:
        """A plain, independent copy."""
        return copy.deepcopy(dict(self))
