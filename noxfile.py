"""nox sessions; what they test comes from compat_matrix.yaml (its ``tiers``), never from a list here.

- ``tests`` (default): the whole suite on the default end-to-end release (unit, torch-level, real engine).
- ``demo``: the seed scenario stock and with the shim, side by side.
- ``e2e-<version>``: the end-to-end tier on one listed release, recording its result in compat_matrix.yaml.
- ``pg-<version>`` (tag ``matrix``: ``nox -t matrix`` runs all): the process-group tier on one release, recording.
- ``gpu``: a GPU tier on this interpreter (a GPU host's own torch), recording: ``-- --tier gpu-2x`` (default;
  skips without two GPUs) or ``-- --tier gpu-1x`` (one GPU).
- ``bench``: the shim's cost as ratios against stock vLLM in the same run, into docs/benchmarks (not in ``tests``).

Virtual environments live outside the checkout (``$VLLM_PG_SHIM_CACHE/nox``, default ``~/.cache/vllm-pg-shim``)
and are reused, so a fresh clone does not download vLLM again.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nox
import yaml

ROOT = Path(__file__).parent
CACHE = Path(os.environ.get("VLLM_PG_SHIM_CACHE", Path.home() / ".cache" / "vllm-pg-shim"))
MATRIX = yaml.safe_load((ROOT / "compat_matrix.yaml").read_text())
E2E = MATRIX["tiers"]["e2e-cpu"]

nox.options.envdir = str(CACHE / "nox")
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

# PyPI's builds of these fail to load beside a +cpu torch, and vLLM's CPU build does not need them.
CONFLICTING = ["torchvision", "torchaudio", "torchcodec"]


def install_e2e_env(session: nox.Session, version: str, python: str = "python") -> None:
    """``python``: the interpreter of the environment to install into (default: the session's own venv)."""

    def install(*args: str) -> None:
        session.run(python, "-m", "pip", "install", *args, silent=True)  # as session.install is

    install(f"{E2E['distribution']}=={version}", *E2E["with"])
    session.run(python, "-m", "pip", "uninstall", "-y", "-q", *CONFLICTING, silent=True)
    # not editable: the shim's .pth and entry point must be installed as a user gets them
    install("--force-reinstall", "--no-deps", ".")
    install("wrapt", "packaging", "PyYAML", "pytest", "psutil")


@nox.session
def tests(session: nox.Session) -> None:
    """The default suite: unit, torch-level and end-to-end tests on the default vLLM CPU release, then the
    process-group tier on one release per family (the matrix's ``pg-gloo.default``)."""
    install_e2e_env(session, E2E["default"])
    session.run("python", "-m", "pytest", "tests", *session.posargs)
    for version in MATRIX["tiers"]["pg-gloo"]["default"]:
        session.notify(f"pg-check-{version}")


@nox.session
def demo(session: nox.Session) -> None:
    """The seed scenario stock and with the shim, side by side (real vLLM on CPU, a tiny model)."""
    install_e2e_env(session, E2E["default"])
    session.run("python", "demo/seed_demo.py", *session.posargs)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """The shim's cost against stock vLLM, as ratios taken with alternating repeats in the same run (real vLLM on
    CPU, the tiny model): writes docs/benchmarks/results.json, README.md (the table) and ratios.png.
    ``-- --repeats N`` (default 5), ``-- --quick`` (2 repeats), ``-- --only engine,worlds,startup,timeout``,
    ``-- --render`` (table and plot again from results.json). Runs in the ``tests`` session's venv (nox keeps a
    venv per session name; vLLM is not installed twice)."""
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
        install_pg_env(session, version)
        run_pg_tier(session)


for _version in PG["versions"]:

    @nox.session(name=f"pg-{_version}", venv_backend="uv", python="3.11", tags=["matrix"])
    def pg(session: nox.Session, version: str = _version) -> None:
        """Process-group tier on one release; its result is written into compat_matrix.yaml."""
        install_pg_env(session, version)
        run_pg_tier(session, "--record-matrix")


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """The GPU tiers on the interpreter that runs nox: a GPU host's torch is usually its own build, so no venv is
    made. ``-- --tier gpu-2x`` (default: NCCL seed case, TP=2 engines; skips without two CUDA devices) or
    ``-- --tier gpu-1x`` (seed case and framework shapes on one device, GPU 0 unless ``CUDA_VISIBLE_DEVICES`` says
    otherwise; docs/gpu-1x.md). ``-- --wheelhouse DIR`` installs every wheel in DIR (vLLM and what it imports,
    brought over by hand to a host with no network) into a folder of its own on PYTHONPATH. gpu-1x installs the
    shim into the interpreter's own site-packages, as a user's ``pip install`` does, so that ``VLLM_PG_SHIM=1`` runs
    through its ``.pth`` and vLLM's plugin entry point: use a throwaway interpreter (a GPU host lent for the run)."""
    args = list(session.posargs)
    tier = "gpu-2x"
    if "--tier" in args:
        at = args.index("--tier")
        tier = args[at + 1]
        del args[at:at + 2]
    tests = {"gpu-2x": "tests/test_gpu.py", "gpu-1x": "tests/test_gpu_1x.py"}
    if tier not in tests:
        session.error(f"--tier {tier}: expected one of {', '.join(tests)}")
    site = CACHE / "gpu-site"
    paths = [str(site)]
    if "--wheelhouse" in args:
        at = args.index("--wheelhouse")
        wheelhouse = Path(args[at + 1]).resolve()
        del args[at:at + 2]
        wheels = sorted(str(w) for w in wheelhouse.glob("*.whl"))
        if not wheels:
            session.error(f"no wheels in {wheelhouse}")
        session.run(sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(site), *wheels)
    # the shim from this checkout, built with the interpreter's own setuptools (no index needed)
    build = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation"]
    env = {}
    if tier == "gpu-1x":
        session.run(*build, "--force-reinstall", ".")
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    else:
        shim_site = CACHE / "gpu-shim"
        session.run(*build, "--upgrade", "--target", str(shim_site), ".")
        paths.insert(0, str(shim_site))
    env["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    session.run(sys.executable, "-m", "pytest", tests[tier], "--record-matrix", *args, env=env)
