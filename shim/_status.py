"""The typed result of ``status()`` (and of ``install()`` / ``uninstall()``)."""
from __future__ import annotations

import copy
from typing import Any

FIELDS = ("shim_version", "installed", "activation", "env", "vllm", "torch", "torch_guard", "family",
          "family_releases", "family_decision", "patched", "replacements", "missing", "import_environment", "python",
          "pid", "world", "reason")


class Status(dict):
    """What is active and why: a dict (``status()["installed"]``, ``json.dumps(status())``) whose keys are also
    typed attributes (``status().installed``). A dict subclass rather than a dataclass so that it stays what
    callers have always received, and costs no ``dataclasses`` import in every vLLM process."""

    shim_version: str
    installed: bool
    activation: str | None  # how it was installed: "install()", "VLLM_PG_SHIM=1", the vLLM plugin
    env: dict  # the shim's environment variables as this process sees them
    vllm: dict | None  # {"distribution", "version"}, or None without vLLM
    torch: str | None
    torch_guard: dict  # vllm_pg_shim.torch_guard.GuardResult.as_dict()
    family: str | None
    family_releases: str | None
    family_decision: dict | None  # {"how": "matrix" | "forced" | "shape", "note"}
    patched: list  # the vLLM names wrapped ("module.attr"), sorted
    replacements: list  # every name the shim replaced now: {"name", "by"} (see vllm_pg_shim._originals)
    missing: list  # targets of the family absent from this vLLM release
    import_environment: list  # variables install() wrote: {"variable", "before", "after"}
    python: str
    pid: int
    world: dict  # {"host_world", "router_installed", "private_worlds"}
    reason: str

    def __init__(self, **values: Any) -> None:
        unknown, absent = set(values) - set(FIELDS), set(FIELDS) - set(values)
        if unknown or absent:
            raise TypeError(f"Status fields: unknown {sorted(unknown)}, missing {sorted(absent)}")
        super().__init__((name, values[name]) for name in FIELDS)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        """A plain, independent copy."""
        return copy.deepcopy(dict(self))
