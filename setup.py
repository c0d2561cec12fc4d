"""Build glue that pyproject.toml cannot express: the design card's layout (core in shim/, families in
patches/, the matrix at the top) installed as one package, plus the activation .pth at site-packages' root.

The wheel carries compat_matrix.yaml and its runtime form (compat_matrix.runtime.json: the sections install()
reads, as JSON, so that no vLLM process imports PyYAML); the run records (compat_records.yaml) stay in the
repository."""
from pathlib import Path
import shutil
import sys
import warnings

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class build_py_with_matrix_and_pth(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib)
        (target / "vllm_pg_shim").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "compat_matrix.yaml", target / "vllm_pg_shim" / "compat_matrix.yaml")
        shutil.copy(ROOT / "vllm_pg_shim.pth", target / "vllm_pg_shim.pth")
        write_runtime_matrix(target)


def write_runtime_matrix(build_lib: Path) -> None:
    """compat_matrix.runtime.json, made by the package just built (its format is the package's own)."""
    sys.path.insert(0, str(build_lib))
    try:
        from vllm_pg_shim.families import RUNTIME_PATH, runtime_form

        RUNTIME_PATH.write_text(runtime_form((ROOT / "compat_matrix.yaml").read_bytes()))
    except ImportError as exc:  # no PyYAML in this build environment: install() then reads the YAML itself
        warnings.warn(f"compat_matrix.runtime.json not written ({exc}); install() will parse compat_matrix.yaml",
                      stacklevel=2)
    finally:
        sys.path.remove(str(build_lib))
        for name in [m for m in sys.modules if m == "vllm_pg_shim" or m.startswith("vllm_pg_shim.")]:
            del sys.modules[name]


cmdclass = {"build_py": build_py_with_matrix_and_pth}

try:  # editable installs (PEP 660) ship only a finder: add the activation .pth to that wheel as well
    from setuptools.command.editable_wheel import editable_wheel

    class editable_wheel_with_pth(editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            strategy = super()._select_strategy(*args, **kwargs)

            class WithActivationPth:
                def __call__(self, wheel, files, mapping):
                    strategy(wheel, files, mapping)
                    wheel.writestr("vllm_pg_shim.pth", (ROOT / "vllm_pg_shim.pth").read_bytes())

                def __enter__(self):
                    strategy.__enter__()
                    return self

                def __exit__(self, *exc):
                    return strategy.__exit__(*exc)

            return WithActivationPth()

    cmdclass["editable_wheel"] = editable_wheel_with_pth
except ImportError:  # setuptools < 64 has no PEP 660 editable wheels
    pass

setup(cmdclass=cmdclass)
