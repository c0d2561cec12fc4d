"""The version of an installed distribution, as ``importlib.metadata.version`` gives it, read cheaply.

``install()`` runs in every vLLM process, often before anything has imported ``importlib.metadata`` (whose import,
with the email parser it brings, costs more than the rest of ``install()``). A distribution installed the usual
way is a ``<name>-<version>.dist-info`` directory on ``sys.path`` with a ``METADATA`` file: that is read here, in
``sys.path`` order as ``importlib.metadata`` does. Anything else (eggs, zip archives, ``.egg-info``, a distribution
not found this way) is left to ``importlib.metadata`` itself.
"""
from __future__ import annotations

import os
import re
import sys

_ASK_IMPORTLIB = object()
_NOT_INSTALLED = object()


class NotInstalled(LookupError):
    """The distribution is not installed (importlib.metadata's PackageNotFoundError, without importing it)."""


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def version(name: str) -> str | None:
    """The ``Version`` of distribution ``name`` (None when its metadata has none); NotInstalled when absent."""
    found = _from_dist_info(_normalized(name))
    if found is _NOT_INSTALLED:
        raise NotInstalled(name)
    if found is not _ASK_IMPORTLIB:
        return found  # type: ignore[return-value]
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise NotInstalled(name) from None


def _from_dist_info(wanted: str) -> object:
    for entry in sys.path:
        try:
            children = os.listdir(entry or ".")
        except OSError:  # a zip archive, or a directory that does not exist
            if entry and os.path.isfile(entry):
                return _ASK_IMPORTLIB  # it reads archives: let it decide what comes first
            continue
        for child in children:
            low = child.lower()
            if low.endswith(".egg-info") and _normalized(low[:-9].partition("-")[0]) == wanted:
                return _ASK_IMPORTLIB
            if low.endswith(".dist-info") and _normalized(low[:-10].partition("-")[0]) == wanted:
                return _metadata_version(os.path.join(entry or ".", child))
    if any((f if isinstance(f, type) else type(f)).__module__ not in _KNOWN_FINDERS
           for f in sys.meta_path if hasattr(f, "find_distributions")):
        return _ASK_IMPORTLIB  # a finder of its own may provide distributions
    return _NOT_INSTALLED


# meta path finders whose distributions are those of sys.path's directories
_KNOWN_FINDERS = ("importlib._bootstrap_external", "_frozen_importlib_external")


def _metadata_version(dist_info: str) -> object:
    try:
        with open(os.path.join(dist_info, "METADATA"), encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    return None  # the headers end: no Version
                key, sep, value = line.partition(":")
                if sep and not line[0].isspace() and key.strip().lower() == "version":
                    return value.lstrip(" \t").rstrip("\r\n")  # as the email parser reads a header
    except (OSError, UnicodeDecodeError):
        return _ASK_IMPORTLIB
    return None
