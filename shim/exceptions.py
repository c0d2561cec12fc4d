"""Every error the shim raises, in one module that imports nothing (importing the package stays cheap)."""
from __future__ import annotations

__all__ = ["ShimError", "PrivateWorldTimeout", "UnsupportedTorch"]


class ShimError(RuntimeError):
    """Raised when the shim refuses to act; the message says why and what to do."""


class PrivateWorldTimeout(ShimError, TimeoutError):
    """A private world's members did not all arrive within ``VLLM_PG_SHIM_TIMEOUT``."""

    def __init__(self, message: str, *, arrived: list[int], missing: list[int]) -> None:
        super().__init__(message)
        self.arrived = arrived
        self.missing = missing


class UnsupportedTorch(ShimError):
    """torch's private internals differ from those the shim relies on (``differences`` names each one)."""

    def __init__(self, message: str, *, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences
