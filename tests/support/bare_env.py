"""Throw-away interpreters for start-up tests: a bare venv whose site-packages holds the repository's
``vllm_pg_shim.pth`` and a copy of the shim built from symlinks (so a test can remove or break parts of it), plus
only the pure dependencies the shim imports (PyYAML, wrapt, packaging). Neither torch nor vLLM is there unless a
test puts a fake on ``PYTHONPATH``. Creating one takes well under a second (``venv --without-pip``).
"""
from __future__ import annotations

import importlib.util
import os
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
