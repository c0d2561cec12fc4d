"""Throw-away interpreters for start-up tests: a bare venv whose site-packages holds the repository's
``vllm_pg_shim.pth`` and a copy of the shim built from symlinks (so a test can remove or break parts of it), plus
only the pure dependencies the shim imports (PyYAML, wrapt, packaging). Neither torch nor vLLM is there unless a
test puts a fake on ``PYTHONPATH``. Creating one takes well under a second (``venv --without-pip``).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE_VLLM = ROOT / "tests" / "fake_vllm"
DEPENDENCIES = ("yaml", "_yaml", "wrapt", "packaging")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def make_bare_env(where: Path, *, shim: bool = True) -> Path:
    """A venv at ``where``; returns its python. ``site_packages(python)`` is where its .pth and packages lie."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(where)
    python = where / "bin" / "python"
    site = site_packages(python)
    for name in DEPENDENCIES:
        source = _package_dir(name)
        if source is not None:
            (site / name).symlink_to(source, target_is_directory=True)
    if shim:
        (site / "vllm_pg_shim.pth").write_text((ROOT / "vllm_pg_shim.pth").read_text())
        package = site / "vllm_pg_shim"
        package.mkdir()
        for source in (ROOT / "shim").glob("*.py"):
            (package / source.name).symlink_to(source)
        (package / "patches").symlink_to(ROOT / "patches", target_is_directory=True)
        (package / "compat_matrix.yaml").write_text((ROOT / "compat_matrix.yaml").read_text())
    return python


def site_packages(python: Path) -> Path:
    return next((python.parent.parent / "lib").glob("python3*/site-packages"))


def clean_env(**extra: str) -> dict:
    """The environment without any of the shim's variables or a PYTHONPATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VLLM_PG_SHIM", "PYTEST_")) and k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def run(args: list[str], *, env: dict, timeout: float = 60, cwd: Path | None = None,
        python: str | Path = sys.executable) -> subprocess.CompletedProcess:
    """Run ``python *args`` in its own session; on expiry the whole session is killed and the test fails."""
    from support.harness import kill_tree

    proc = subprocess.Popen([str(python), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"{args!r} hung for {timeout}s:\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    finally:
        kill_tree(proc.pid)  # anything it left behind in its session
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# Appended to every case script: a host destroys its process group before it exits, as torch asks. Left alive,
# torch's exit can abort ("terminate called without an active exception"): one of the group's gloo threads needs
# the interpreter while it finalises. Seen with a host that had built two engines in turn, shim or no shim to blame.
HOST_EXIT = """
import sys as _sys
if "torch.distributed" in _sys.modules and _sys.modules["torch.distributed"].is_initialized():
    _sys.modules["torch.distributed"].destroy_process_group()
"""


def run_case(script: Path, code: str, *, env: dict, timeout: float = 60, cwd: Path | None = None,
             flags: tuple = (), python: str | Path = sys.executable):
    """Write ``code`` to ``script``, run it (see :func:`run`); returns (completed process, its last ``RESULT``
    line as a dict, or None)."""
    import json

    script.write_text(code + HOST_EXIT)
    out = run([*flags, str(script)], env=env, timeout=timeout, cwd=cwd, python=python)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    return out, (json.loads(lines[-1][7:]) if lines else None)
