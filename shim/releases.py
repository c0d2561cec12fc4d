"""Which release a vLLM build is, and whether a family's range covers it: PEP 440, cheaply.

``install()`` runs in every vLLM process, and importing ``packaging.specifiers`` costs more than all the rest of
it. The matrix's ranges and vLLM's version strings use a small part of PEP 440 (``==``, ``!=``, ``<``, ``<=``,
``>``, ``>=`` on plain releases, ``.postN``), which is evaluated here with PEP 440's rules; anything else (``~=``,
wildcards, a non-normalised version) goes to ``packaging``, which gives the same answer
(tests/test_releases.py compares the two).
"""
from __future__ import annotations

import re

from .exceptions import ShimError

# A normalised PEP 440 version (as distribution metadata carries it): release, pre, post, dev, local.
_VERSION = re.compile(r"(\d+(?:\.\d+)*)(?:(?:a|b|rc)\d+)?(?:\.post(\d+))?(?:\.dev\d+)?(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?")
_CLAUSE = re.compile(r"\s*(==|!=|<=|>=|<|>)\s*(\d+(?:\.\d+)*)(?:\.post(\d+))?\s*")


def release_key(version: str) -> str:
    """The release a build is matched by: ``0.33.0rc1+g12`` → ``0.33.0``; ``0.5.3.post1`` stays itself."""
    release, post = _parse(version)
    text = ".".join(map(str, release))
    return f"{text}.post{post}" if post >= 0 else text


def _parse(version: str) -> tuple[tuple[int, ...], int]:
    """(release, post) of a version; post is -1 for none, so that X < X.post0."""
    match = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if match:
        return tuple(int(p) for p in match.group(1).split(".")), int(match.group(2) or -1)
    from packaging.version import InvalidVersion, Version

    try:
        v = Version(version)
    except (InvalidVersion, TypeError) as exc:  # TypeError: metadata without a Version field gives None
        raise ShimError(f"vLLM reports the version {version!r}, which is not a PEP 440 version") from exc
    return tuple(v.release), v.post if v.post is not None else -1


def _key(version: str) -> tuple[tuple[int, ...], int]:
    release, post = _parse(version)
    return _trim(release), post


def _trim(release: tuple[int, ...]) -> tuple[int, ...]:
    """PEP 440 compares releases padded with zeros: 0.34 == 0.34.0."""
    end = len(release)
    while end > 1 and release[end - 1] == 0:
        end -= 1
    return release[:end]


def _clauses(specifiers: str) -> list[tuple[str, tuple[tuple[int, ...], int]]] | None:
    """The clauses of ``specifiers`` when all are in the simple form evaluated here; else None."""
    clauses = []
    for part in specifiers.split(","):
        match = _CLAUSE.fullmatch(part)
        if match is None:
            return None
        release = _trim(tuple(int(p) for p in match.group(2).split(".")))
        clauses.append((match.group(1), (release, int(match.group(3) or -1))))
    return clauses


def _holds(op: str, key: tuple[tuple[int, ...], int], bound: tuple[tuple[int, ...], int]) -> bool:
    if op == "==":
        return key == bound
    if op == "!=":
        return key != bound
    if op == "<":
        return key < bound
    if op == "<=":
        return key <= bound
    if op == ">=":
        return key >= bound
    # ">": never a post-release of the bound itself, unless the bound is one (PEP 440)
    return key > bound and not (bound[1] < 0 and key[0] == bound[0])


def check_specifiers(specifiers: str) -> None:
    """Raise ValueError unless ``specifiers`` is a PEP 440 specifier set."""
    if _clauses(specifiers) is not None:
        return
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(specifiers)
    except InvalidSpecifier as exc:
        raise ValueError(f"releases {specifiers!r} is not a PEP 440 version specifier") from exc


def covers(specifiers: str, version: str) -> bool:
    """Whether the release of ``version`` (see :func:`release_key`) is in ``specifiers`` (ValueError when
    ``specifiers`` is not a specifier set)."""
    clauses = _clauses(specifiers)
    if clauses is not None:
        key = _key(version)
        return all(_holds(op, key, bound) for op, bound in clauses)
    from packaging.specifiers import SpecifierSet

    # prereleases is explicit: packaging >= 26 changed how ranges admit dev/local builds.
    return SpecifierSet(specifiers).contains(release_key(version), prereleases=False)
