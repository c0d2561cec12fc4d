"""The shim's errors live in one module, are exported from the package root, and cost no torch import."""
from __future__ import annotations

import subprocess
import sys


def test_errors_are_exported_from_the_root_without_importing_torch():
    code = ("import sys, vllm_pg_shim as s; from vllm_pg_shim import exceptions as e; "
            "assert s.ShimError is e.ShimError and s.PrivateWorldTimeout is e.PrivateWorldTimeout; "
            "assert s.UnsupportedTorch is e.UnsupportedTorch; "
            "assert issubclass(s.PrivateWorldTimeout, (s.ShimError, TimeoutError)); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_documented_old_path_of_private_world_timeout_still_works():
    import vllm_pg_shim
    from vllm_pg_shim.rendezvous import PrivateWorldTimeout

    assert PrivateWorldTimeout is vllm_pg_shim.PrivateWorldTimeout
    error = PrivateWorldTimeout("late", arrived=[0], missing=[1])
    assert (error.arrived, error.missing, str(error)) == ([0], [1], "late")
