"""Build glue that pyproject.toml cannot express: the design card's layout (core in shim/, families in
patches/, the matrix at the top) installed as one package, plus the activation .pth at site-packages' root."""
from pathlib import Path
import shutil

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
