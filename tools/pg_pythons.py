"""The Python each pg-gloo session runs on: per release, the newest of the Pythons the package claims (pyproject.toml's
classifiers) that the release and the torch it pins both support on Linux x86_64, read from PyPI:

- the release's Requires-Python and its x86_64 Linux wheels' tags (``cp311-cp311``: that Python only; ``cp38-abi3``:
  3.8 and later), since the tier installs vLLM's wheel without building it;
- its torch requirement (the wheel's METADATA, read with range requests), and whether some torch release that
  meets it has an x86_64 Linux wheel for that Python (PyPI's torch has no sdist) whose Requires-Python admits it;
- and whether the release with all its dependencies installs on that Python as PyPI stood the day after the
  release (the day the tier installs with: uv's ``--exclude-newer``): uv resolves it for that Python, and no
  package of the resolution ships compiled wheels without one for that Python (an sdist of pure Python is fine).
  A Python newer than the release's dependencies fails there (vLLM 0.6.5 on 3.13: msgspec 0.18.6 had no cp313
  wheel and its sdist does not compile on 3.13), where the first two checks alone admit it.

``python tools/pg_pythons.py`` fills in the releases ``tiers.pg-gloo.versions`` lists and ``tiers.pg-gloo.python``
lacks (``--all``: every release again) and rewrites that block of compat_matrix.yaml as text, so its comments stay.
The noxfile reads the block; tests/unit/test_pg_pythons.py keeps it and the release list equal.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import parse_wheel_filename
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ci_matrix import MATRIX, flow_list, python_versions  # noqa: E402

BLOCK = re.compile(r"^    python:\n(?:      .*\n)*", re.M)


@cache
def simple_files(project: str) -> tuple[dict, ...]:
    """Every file of ``project`` on PyPI (PEP 691 JSON: name, Requires-Python, metadata availability, yanked)."""
    request = urllib.request.Request(f"https://pypi.org/simple/{project}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return tuple(json.load(response)["files"])


@cache
def linux_x86_64_wheels(project: str) -> dict[Version, list[dict]]:
    wheels: dict[Version, list[dict]] = {}
    for f in simple_files(project):
        name = f["filename"]
        if name.endswith(".whl") and not f.get("yanked") and re.search(r"linux[^-]*_x86_64\.whl$", name):
            wheels.setdefault(parse_wheel_filename(name)[1], []).append(f)
    return wheels


def wheel_admits(wheel: dict, python: str) -> bool:
    """``wheel`` installs on CPython ``python`` (its tags and its Requires-Python)."""
    if wheel.get("requires-python") and not SpecifierSet(wheel["requires-python"]).contains(python):
        return False
    nodot = python.replace(".", "")
    for tag in parse_wheel_filename(wheel["filename"])[3]:
        if tag.interpreter in (f"cp{nodot}", "py3"):
            return True
        if tag.abi == "abi3" and tag.interpreter.startswith("cp") and int(tag.interpreter[3:]) <= int(nodot[1:]):
            return True
    return False


class RemoteFile(io.RawIOBase):
    """A file on an HTTP server that answers range requests, read where zipfile seeks: a wheel's METADATA costs a
    few small requests, not the wheel (this machine's index serves no PEP 658 metadata and no per-release JSON)."""

    def __init__(self, url: str, size: int) -> None:
        self.url, self.size, self.position = url, size, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        end = min(self.position + len(buffer), self.size) - 1
        if end < self.position:
            return 0
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={self.position}-{end}"})
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


@cache
def requires_dist(wheel_url: str, size: int) -> tuple[str, ...]:
    """The Requires-Dist lines of the wheel at ``wheel_url``."""
    with zipfile.ZipFile(io.BufferedReader(RemoteFile(wheel_url, size), buffer_size=256 * 1024)) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(name).decode()
    return tuple(line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:"))


def torch_requirement(wheel: dict, python: str) -> Requirement | None:
    """The torch requirement in ``wheel``'s metadata, as it applies on Linux x86_64 with ``python``."""
    environment = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux",
                   "platform_machine": "x86_64", "python_version": python, "python_full_version": f"{python}.0",
                   "extra": ""}
    for line in requires_dist(wheel["url"], wheel["size"]):
        requirement = Requirement(line)
        if requirement.name == "torch" and (requirement.marker is None or requirement.marker.evaluate(environment)):
            return requirement
    return None


def torch_admits(requirement: Requirement | None, python: str) -> bool:
    if requirement is None:
        return True
    return any(requirement.specifier.contains(version, prereleases=False) and
               any(wheel_admits(w, python) for w in wheels)
               for version, wheels in linux_x86_64_wheels("torch").items())


def release_day_after(version: str) -> str:
    """The day after PyPI received ``vllm==version``: what the pg sessions give uv's ``--exclude-newer``."""
    prefixes = (f"vllm-{version}-", f"vllm-{version}.tar")
    times = [f["upload-time"] for f in simple_files("vllm") if f["filename"].startswith(prefixes)]
    uploaded = min(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in times)
    return (uploaded + timedelta(days=1)).date().isoformat()


def uv() -> str:
    try:
        from uv import find_uv_bin  # the uv package (nox's script environment has it)
        return find_uv_bin()
    except ImportError:
        found = shutil.which("uv")
        if not found:
            raise SystemExit("tools/pg_pythons.py resolves with uv: pip install uv") from None
        return found


UNAVAILABLE = re.compile(r"there (?:is no version|are no versions) of ([A-Za-z0-9][A-Za-z0-9._-]*)")


def resolved_pins(version: str, python: str) -> list[tuple[str, Version]] | None:
    """What ``vllm==version`` resolves to for ``python`` on Linux x86_64 as of the day after the release (None:
    it does not resolve). A package that PyPI holds no files of from before that day (pyairports' only files
    arrived in 2025; xgrammar 0.1.16's after vLLM 0.8.0's day) is left out of the resolution, as whatever the
    Python: it cannot tell Pythons apart, and the tier never installs the whole engine."""
    day, left_out = release_day_after(version), []
    with tempfile.TemporaryDirectory() as folder:
        overrides = Path(folder) / "overrides.txt"
        for _ in range(8):
            overrides.write_text("".join(f'{name}; sys_platform == "never"\n' for name in left_out))
            # a glibc of 2.35, as the machines the tier runs on have (vLLM 0.15's wheels are manylinux_2_31)
            command = [uv(), "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--python-version",
                       python, "--python-platform", "x86_64-manylinux_2_35", "--exclude-newer", day,
                       "--override", str(overrides), "-"]
            done = subprocess.run(command, input=f"vllm=={version}\n", capture_output=True, text=True,
                                  timeout=900)
            unavailable = UNAVAILABLE.search(done.stderr)
            if done.returncode == 0 or not unavailable or unavailable.group(1) in left_out:
                break
            left_out.append(unavailable.group(1))
    if done.returncode != 0:
        return None
    pins = [line.split("==") for line in done.stdout.splitlines() if "==" in line and not line.startswith("#")]
    return [(name.strip(), Version(pin.split(";")[0].strip())) for name, pin in pins]


def lacks_wheel_for(project: str, version: Version, python: str) -> bool:
    """``project==version`` ships compiled wheels for Linux x86_64, none of them for ``python``."""
    linux = linux_x86_64_wheels(project).get(version, [])
    return bool(linux) and not any(wheel_admits(w, python) for w in linux) and not any(
        f["filename"].startswith(f"{wheel_stem(linux[0])}-") and f["filename"].endswith("-none-any.whl")
        for f in simple_files(project))


def wheel_stem(wheel: dict) -> str:
    """``name-version`` as ``wheel``'s file name spells them."""
    return "-".join(wheel["filename"].split("-")[:2])


def installs_on(version: str, python: str) -> bool:
    pins = resolved_pins(version, python)
    return pins is not None and not any(lacks_wheel_for(name, pin, python) for name, pin in pins)


def newest_python(version: str, pythons: list[str]) -> str:
    wheels = linux_x86_64_wheels("vllm").get(Version(version), [])
    if not wheels:
        raise SystemExit(f"vllm {version}: no x86_64 Linux wheel on PyPI")
    candidates = [python for python in sorted(pythons, key=Version, reverse=True)
                  if (fitting := [w for w in wheels if wheel_admits(w, python)])
                  and torch_admits(torch_requirement(fitting[0], python), python)]
    if not candidates:
        raise SystemExit(f"vllm {version}: none of Python {', '.join(pythons)} fits it and its torch")
    installing = next((python for python in candidates if installs_on(version, python)), None)
    if installing is None:
        # nothing resolves as of the day on any Python (none did in the last --all run, with unavailable packages
        # left out): the resolution cannot tell the Pythons apart, the wheels' checks alone choose
        print(f"vllm {version}: its dependencies resolve on no Python as of its day; "
              f"Python {candidates[0]} from its and torch's wheels alone")
    return installing or candidates[0]


def pythons_by_release(text: str) -> dict[str, str]:
    """release -> Python, from compat_matrix.yaml's ``tiers.pg-gloo.python`` (Python -> releases)."""
    block = yaml.safe_load(text)["tiers"]["pg-gloo"].get("python") or {}
    return {str(v): str(python) for python, versions in block.items() for v in versions}


def render(text: str, chosen: dict[str, str]) -> str:
    """``text`` with its ``tiers.pg-gloo.python`` block holding ``chosen`` (appended to the tier if absent)."""
    pg = text.index("\n  pg-gloo:\n") + 1
    following = re.compile(r"^  \S", re.M).search(text, pg + 1)
    tier_end = following.start() if following else len(text)
    by_python: dict[str, list[str]] = {}
    for version in sorted(chosen, key=Version):
        by_python.setdefault(chosen[version], []).append(version)
    block = "\n".join(["    python:"] + [flow_list(f'"{python}"', by_python[python], "      ")
                                         for python in sorted(by_python, key=Version)]) + "\n"
    match = BLOCK.search(text, pg, tier_end)
    if match:
        return text[:match.start()] + block + text[match.end():]
    return text[:tier_end] + block + text[tier_end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every release again, not only those without a Python")
    args = parser.parse_args(argv)
    text = MATRIX.read_text()
    versions = [str(v) for v in yaml.safe_load(text)["tiers"]["pg-gloo"]["versions"]]
    known = {} if args.all else pythons_by_release(text)
    pythons = python_versions()
    simple_files("vllm"), linux_x86_64_wheels("torch")  # fetched once, before the threads share them
    lacking = [v for v in versions if v not in known]
    with ThreadPoolExecutor(max_workers=8) as pool:  # each release's checks wait on PyPI, not on this machine
        found = dict(zip(lacking, pool.map(lambda v: newest_python(v, pythons), lacking)))
    chosen = {v: known.get(v) or found[v] for v in versions}
    for version in versions:
        if version not in known:
            print(f"vllm {version}: Python {chosen[version]}")
    MATRIX.write_text(render(text, chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
