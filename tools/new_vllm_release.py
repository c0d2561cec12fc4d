"""A vLLM release that compat_matrix.yaml does not list yet, for the scheduled CI job
(.github/workflows/new-vllm-release.yml).

``find [--version V]`` prints ``version=<release>`` (GitHub's step-output format; empty when there is none): the
newest final release on PyPI newer than every release the pg tier lists, or ``V`` if the matrix does not list it.
``add V`` adds ``V`` to ``tiers.pg-gloo.versions`` and, where no family's range covers it, widens the newest
family's upper bound to the next minor release after it; the file is edited as text, so its comments stay.
Nothing is recorded here: ``nox -s pg-<V>`` records what its run showed.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
MATRIX = ROOT / "compat_matrix.yaml"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ci_matrix import flow_list  # noqa: E402


def pypi_releases() -> list[str]:
    """vLLM's final, not yanked releases on PyPI."""
    with urllib.request.urlopen("https://pypi.org/pypi/vllm/json", timeout=60) as response:
        releases = json.load(response)["releases"]
    return [v for v, files in releases.items()
            if files and not all(f.get("yanked") for f in files) and not Version(v).is_prerelease]


def listed(text: str) -> list[str]:
    return [str(v) for v in yaml.safe_load(text)["tiers"]["pg-gloo"]["versions"]]


def newest_unlisted(available: list[str], known: list[str]) -> str | None:
    newest_known = max(Version(v) for v in known)
    newer = [v for v in available if Version(v) > newest_known]
    return max(newer, key=Version) if newer else None


def add(text: str, version: str) -> str:
    """``text`` (compat_matrix.yaml) with ``version`` in the pg tier and inside the newest family's range."""
    data = yaml.safe_load(text)
    versions = listed(text)
    if version not in versions:
        versions = sorted([*versions, version], key=Version)
        block = re.compile(r"^(?P<indent> *)versions: \[[^\]]*\]", re.M)
        pg = text.index("\n  pg-gloo:")
        match = block.search(text, pg)
        if match is None:
            raise SystemExit("compat_matrix.yaml: no versions list under tiers.pg-gloo")
        text = text[:match.start()] + flow_list("versions", versions, match["indent"]) + text[match.end():]
    families = data["families"]
    if any(SpecifierSet(str(f["releases"])).contains(version) for f in families.values()):
        return text
    newest = max(families, key=lambda name: max(
        (Version(s.version) for s in SpecifierSet(str(families[name]["releases"])) if s.operator in (">=", "==")),
        default=Version("0")))
    old = str(families[newest]["releases"])
    v = Version(version)
    upper = f"<{v.major}.{v.minor + 1}"
    new = ",".join([s for s in old.split(",") if not s.strip().startswith("<")] + [upper])
    at = text.index(f"\n  {newest}:")
    line = re.compile(r'releases: "' + re.escape(old) + '"')
    match = line.search(text, at)
    if match is None:
        raise SystemExit(f"compat_matrix.yaml: family {newest} has no releases line {old!r}")
    return text[:match.start()] + f'releases: "{new}"' + text[match.end():]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    find = sub.add_parser("find")
    find.add_argument("--version", default="")
    sub.add_parser("add").add_argument("version")
    args = parser.parse_args(argv)
    text = MATRIX.read_text()
    if args.command == "find":
        known = listed(text)
        found = (args.version if args.version not in known else None) if args.version else \
            newest_unlisted(pypi_releases(), known)
        print(f"version={found or ''}")
        return 0
    MATRIX.write_text(add(text, args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
