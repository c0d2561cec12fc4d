# /// script
# dependencies = ["nox>=2025.2.9", "uv", "PyYAML"]
# ///
"""nox sessions; what they test comes from compat_matrix.yaml (its ``tiers``), never from a list here.

- ``tests`` (default): the whole suite on the default end-to-end release (unit, torch-level, real engine).
- ``demo``: the seed scenario stock and with the shim, side by side.
- ``e2e-<version>``: the end-to-end tier on one listed release, recording its result in compat_matrix.yaml.
- ``pg-<version>`` (tag ``matrix``: ``nox -t matrix`` runs all): the process-group tier on one release, recording.
- ``gpu``: the 2-GPU tier on this interpreter (a GPU host's own torch), recording; skips without two GPUs.
- ``bench``: the shim's cost as ratios against stock vLLM in the same run, into docs/benchmarks (not in ``tests``).

What nox itself needs to read this file and make its environments (uv for the ``pg-*`` sessions, PyYAML for the
matrix) is declared in the script block above: ``pip install nox && nox ...`` on a machine that has only Python and
pip makes nox install them into an environment of its own (``.nox/_nox_script_mode``) and run there. On an offline
host that already has them (the GPU hosts), ``NOX_SCRIPT_MODE=none`` skips that step.

Virtual environments live outside the checkout (``$VLLM_PG_SHIM_CACHE/nox``, default ``~/.cache/vllm-pg-shim``)
and are reused, so a fresh clone does not download vLLM again.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

try:
    import yaml
except ImportError as exc:  # NOX_SCRIPT_MODE=none (or a nox older than its script mode) with no PyYAML beside it
    raise SystemExit("noxfile.py reads compat_matrix.yaml with PyYAML, which the Python running nox lacks: "
                     "`pip install nox` (>= 2025.2.9) installs it by itself unless NOX_SCRIPT_MODE=none; "
                     "else `pip install PyYAML`") from exc

nox.needs_version = ">=2025.2.9"  # reads the script block above

ROOT = Path(__file__).parent
CACHE = Path(os.environ.get("VLLM_PG_SHIM_CACHE", Path.home() / ".cache" / "vllm-pg-shim"))
MATRIX = yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())
E2E = MATRIX["tiers"]["e2e-cpu"]

nox.options.envdir = str(CACHE / "nox")
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

# The fresh-machine check (.ci/check_fresh_setup) runs the README's commands with this set: every session stops
# once nox has made its environment, so the check covers what a new machine lacks without downloading vLLM.
ENVIRONMENTS_ONLY = os.environ.get("VLLM_PG_SHIM_NOX_ENVIRONMENTS_ONLY") == "1"


def environment_made(session: nox.Session) -> bool:
    """True (and says so) where the session is to stop now that its environment exists."""
    if ENVIRONMENTS_ONLY:
        session.log(f"environment ready: {getattr(session.virtualenv, 'location', None) or 'none: the host interpreter'}")
    return ENVIRONMENTS_ONLY

# PyPI's builds of these fail to load beside a +cpu torch, and vLLM's CPU build does not need them.
CONFLICTING = ["torchvision", "torchaudio", "torchcodec"]


def install_e2e_env(session: nox.Session, version: str, python: str = "python") -> None:
    """``python``: the interpreter of the environment to install into (default: the session's own venv)."""

    def install(*args: str) -> None:
        session.run(python, "-m", "pip", "install", *args, silent=True)  # as session.install is

    release = f"{E2E['distribution']}=={version}"
    try:
        # a +cpu torch already within pip's reach (a wheel cache or find-links) keeps the install off that index
        install(release, *E2E["with"])
    except nox.command.CommandFailed:
        session.log(f"{release} needs its +cpu torch from {E2E['torch_index']}; installing with that index")
        install("--extra-index-url", E2E["torch_index"], release, *E2E["with"])
    session.run(python, "-m", "pip", "uninstall", "-y", "-q", *CONFLICTING, silent=True)
    # not editable: the shim's .pth and entry point must be installed as a user gets them
    install("--force-reinstall", "--no-deps", ".")
    install("wrapt", "packaging", "PyYAML", "pytest", "psutil")


@nox.session
def tests(session: nox.Session) -> None:
    """The default suite: unit, torch-level and end-to-end tests on the default vLLM CPU release, then the
    process-group tier on one release per family (the matrix's ``pg-gloo.default``)."""
    for version in MATRIX["tiers"]["pg-gloo"]["default"]:
        session.notify(f"pg-check-{version}")
    if environment_made(session):
        return
    install_e2e_env(session, E2E["default"])
    session.run("python", "-m", "pytest", "tests", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The seed scenario stock and with the shim, side by side (real vLLM on CPU, a tiny model)."""
    if environment_made(session):
        return
    install_e2e_env(session, E2E["default"])
    session.run("python", "demo/seed_demo.py", *session.posargs)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """The shim's cost against stock vLLM, as ratios taken with alternating repeats in the same run (real vLLM on
    CPU, the tiny model): writes docs/benchmarks/results.json, README.md (the table) and ratios.png.
    ``-- --repeats N`` (default 5), ``-- --quick`` (2 repeats), ``-- --only engine,worlds,startup,timeout``,
    ``-- --render`` (table and plot again from results.json). Runs in the ``tests`` session's venv (nox keeps a
    venv per session name; vLLM is not installed twice)."""
    if environment_made(session):
        return
    venv = CACHE / "nox" / "tests"
    python = str(venv / "bin" / "python")
    if not Path(python).exists():
        session.run(sys.executable, "-m", "virtualenv", "-q", str(venv))  # virtualenv comes with nox
    install_e2e_env(session, E2E["default"], python)
    session.run(python, "-m", "pip", "install", "-q", "matplotlib")  # the plot only; never in a measured process
    session.run(python, "tests/support/bench.py", *session.posargs)


for _version in E2E["versions"]:

    @nox.session(name=f"e2e-{_version}")
    def e2e(session: nox.Session, version: str = _version) -> None:
        """End-to-end tier on one release; its result is written into compat_matrix.yaml."""
        if environment_made(session):
            return
        install_e2e_env(session, version)
        session.run("python", "-m", "pytest", "tests/test_e2e_seed.py", "--record-matrix", *session.posargs)


PG = MATRIX["tiers"]["pg-gloo"]


def install_pg_env(session: nox.Session, version: str) -> None:
    """vLLM without its dependencies, the torch its wheel pins (read from that wheel's metadata), and what vLLM's
    distributed code imports (found by importing it: each missing module's package is added, a few rounds):
    a few hundred MB beside torch instead of the whole engine's dependencies."""
    session.install("--no-deps", f"vllm=={version}", "packaging")
    pin = session.run("python", "-c", READ_TORCH_PIN, silent=True).strip()
    session.install(pin, *PG["with"], "wrapt", "packaging", "PyYAML", "pytest")
    session.install("--no-deps", "--reinstall", ".")
    released = release_day_after(version)
    # one step for what later releases need (exit code 1: one of them did not exist yet; discovery finds the rest)
    session.install(f"--exclude-newer={released}", *PG.get("prefetch", []), success_codes=[0, 1])
    for _ in range(30):
        output = session.run("python", "-c", FIND_MISSING_MODULE, silent=True,
                             env={"VLLM_PG_SHIM_BARE_IMPORT": "1", "VLLM_NCCL_SO_PATH": NO_NCCL})
        missing = [line.split()[1] for line in output.splitlines() if line.startswith("MISSING ")]
        if not missing:
            return
        # as of the release's day: a later package can break an old vLLM's imports (transformers 4.53 took a
        # config name vLLM 0.9.0 registers)
        session.install(f"--exclude-newer={released}", PG["packages"].get(missing[0], missing[0]))
    session.error("vLLM's distributed code still misses modules after 30 rounds")


def release_day_after(version: str) -> str:
    """The day after PyPI received ``vllm==version`` (uv's ``--exclude-newer`` takes it), from the index's JSON
    simple API (PEP 691/700: it gives each file's upload time)."""
    import datetime
    import json
    import urllib.request

    request = urllib.request.Request("https://pypi.org/simple/vllm/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    times = [f["upload-time"] for f in files if f["filename"].startswith((f"vllm-{version}-", f"vllm-{version}.tar"))]
    uploaded = min(datetime.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in times)
    return (uploaded + datetime.timedelta(days=1)).date().isoformat()


# Runs vLLM's distributed code once as the tier does (a clean process, a world of 1: its lazy imports too);
# prints the first missing top-level module, if any.
FIND_MISSING_MODULE = """
import socket, sys
sys.path.insert(0, "tests")
from support.pg_scenario import drive_vllm, import_parallel_state
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
try:
    drive_vllm(import_parallel_state(), world_size=1, rank=0, port=port)
except ModuleNotFoundError as exc:
    print("MISSING " + exc.name.split(".")[0])
"""


READ_TORCH_PIN = """
import importlib.metadata as md
from packaging.requirements import Requirement
reqs = [Requirement(r) for r in md.requires("vllm") or []]
torch = [r for r in reqs if r.name == "torch" and (r.marker is None or r.marker.evaluate({"extra": ""}))]
print(f"torch{torch[0].specifier}" if torch else "torch")
"""


# vLLM's CUDA wheels find libnccl beside torch and would build NCCL communicators for CPU tensors.
NO_NCCL = "/nonexistent/libnccl.so.2"


def run_pg_tier(session: nox.Session, *extra: str) -> None:
    session.run("python", "-m", "pytest", "tests/test_pg_tier.py", *extra, *session.posargs,
                env={"VLLM_PG_SHIM_BARE_IMPORT": "1", "VLLM_NCCL_SO_PATH": NO_NCCL})


for _version in PG["default"]:

    @nox.session(name=f"pg-check-{_version}", venv_backend="uv", python="3.11")
    def pg_check(session: nox.Session, version: str = _version) -> None:
        """Process-group tier on a family's default release, as part of ``tests`` (records nothing)."""
        if environment_made(session):
            return
        install_pg_env(session, version)
        run_pg_tier(session)


for _version in PG["versions"]:

    @nox.session(name=f"pg-{_version}", venv_backend="uv", python="3.11", tags=["matrix"])
    def pg(session: nox.Session, version: str = _version) -> None:
        """Process-group tier on one release; its result is written into compat_matrix.yaml."""
        if environment_made(session):
            return
        install_pg_env(session, version)
        run_pg_tier(session, "--record-matrix")


def host_python() -> str:
    """The interpreter whose own packages a ``venv_backend="none"`` session uses: the one running nox, except where
    nox re-ran itself from the environment its script mode made (which holds only nox, uv and PyYAML); there, the
    ``python3`` next on PATH, the one the user ran ``pip install nox`` with."""
    if Path(sys.prefix).name != "_nox_script_mode":
        return sys.executable
    own = Path(sys.prefix, "bin")
    outer = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d) != own]
    return shutil.which("python3", path=os.pathsep.join(outer)) or sys.executable


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """The 2-GPU tier (NCCL seed case, TP=2 engines) on the host's interpreter (``host_python()``): a GPU host's
    torch is usually its own build, so no venv is made. ``-- --wheelhouse DIR`` installs every wheel in DIR (vLLM and
    what it imports, brought over by hand to a host with no network) into a folder of its own on PYTHONPATH.
    Without two CUDA devices the tests skip and nothing is recorded."""
    if environment_made(session):
        return
    python = host_python()
    args = list(session.posargs)
    site = CACHE / "gpu-site"
    paths = [str(site)]
    if "--wheelhouse" in args:
        at = args.index("--wheelhouse")
        wheelhouse = Path(args[at + 1]).resolve()
        del args[at:at + 2]
        wheels = sorted(str(w) for w in wheelhouse.glob("*.whl"))
        if not wheels:
            session.error(f"no wheels in {wheelhouse}")
        session.run(python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(site), *wheels)
    # the shim from this checkout, built with the interpreter's own setuptools (no index needed)
    shim_site = CACHE / "gpu-shim"
    session.run(python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                "--upgrade", "--target", str(shim_site), ".")
    paths.insert(0, str(shim_site))
    env = {"PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    session.run(python, "-m", "pytest", "tests/test_gpu.py", "--record-matrix", *args, env=env)
