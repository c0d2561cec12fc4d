"""Bad input: every case ends in a clear error or a documented no-op, never a crash at start-up, never a hang.

Each case runs in a fresh interpreter under a hard timeout (the fake ``vllm`` of tests/fake_vllm, real torch
where the case needs it, or a bare venv of tests/support/bare_env.py where torch or vLLM must be absent).

Covered elsewhere, not repeated here (tests/test_lifecycle.py): ``uninstall()`` while a private world lives
(``test_uninstall_while_vllm_uses_a_private_world_is_refused_and_changes_nothing``), install/uninstall from
several threads at once (``test_install_and_uninstall_from_many_threads_at_once_stay_consistent``), ``python -S``,
``-I`` and ``-E`` with ``VLLM_PG_SHIM=1`` (``test_interpreter_flags_with_env_activation``), ``VLLM_PG_SHIM`` set to
``0``/``off``/empty/``yes``/``2``, install() after vLLM made its own WORLD in a clean process, ``families()`` on
an unreadable or non-YAML file; tests/test_world.py: ``VLLM_PG_SHIM_TIMEOUT`` of ``abc``, ``-1``, ``0``, ``inf``;
tests/test_unknown_release.py: ``decide()`` on unparsable version strings.
"""
from __future__ import annotations

import json
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from support.bare_env import FAKE_VLLM, clean_env, make_bare_env, site_packages
from support.harness import run_python, run_snippet

PRELUDE = textwrap.dedent(
    """
    import datetime, json, socket, sys, time
    def port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0)); return s.getsockname()[1]
    def result(**kw):
        print("RESULT " + json.dumps(kw, default=str), flush=True)
    """
)


def py(tmp_path: Path, code: str, *, env_extra: dict | None = None, pythonpath: Path | None = FAKE_VLLM,
       flags: tuple = (), timeout: float = 60, python=sys.executable):
    """Run ``code`` (after PRELUDE) in a fresh interpreter; returns (completed process, RESULT dict or None)."""
    script = tmp_path / f"case_{len(list(tmp_path.glob('case_*.py')))}.py"
    env = clean_env(**(env_extra or {}))
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return run_snippet(script, PRELUDE + textwrap.dedent(code), env=env, timeout=timeout, flags=flags, python=python)


def shim_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "vllm-pg-shim" in line or "VLLM_PG_SHIM" in line]


def fake_with_metadata(tmp_path: Path, metadata: str) -> Path:
    root = tmp_path / "fake"
    shutil.copytree(FAKE_VLLM / "vllm", root / "vllm")
    (root / "vllm-0.dist-info").mkdir()
    (root / "vllm-0.dist-info" / "METADATA").write_text(metadata)
    return root


# --- VLLM_PG_SHIM ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,active", [(" 1 ", True), ("on", False), ("true", False), ("1 1", False),
                                          ("\uff11", False)])
def test_activation_accepts_1_only_and_warns_once_naming_the_value_and_the_accepted_ones(tmp_path, value, active):
    out, res = py(tmp_path, """
        import vllm_pg_shim
        result(installed=vllm_pg_shim.status()["installed"], torch="torch" in sys.modules)
        """, env_extra={"VLLM_PG_SHIM": value})
    assert out.returncode == 0, out.stderr
    assert res == {"installed": active, "torch": False}
    lines = shim_lines(out.stderr)
    if active:
        assert lines == [], out.stderr
    else:
        assert sum("accepted values" in line for line in lines) == 1, out.stderr
        assert repr(value) in out.stderr and "'1' (active), '0', 'off' or empty" in out.stderr


def test_unknown_activation_value_under_warnings_as_errors_still_starts_with_one_line(tmp_path):
    out, res = py(tmp_path, """
        import vllm_pg_shim
        result(installed=vllm_pg_shim.status()["installed"])
        """, env_extra={"VLLM_PG_SHIM": "yes"}, flags=("-W", "error"))
    assert out.returncode == 0 and res == {"installed": False}, out.stderr
    lines = shim_lines(out.stderr)
    assert len(lines) == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "stays inactive" in lines[0] and "VLLM_PG_SHIM='yes'" in lines[0] and "accepted values" in lines[0]


# --- VLLM_PG_SHIM_TIMEOUT --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "-inf", "1e400", "1e15", "2147484", "5s", "0x10", "--1"])
def test_bad_timeout_is_ignored_with_a_warning_naming_the_value_and_the_accepted_range(value):
    from vllm_pg_shim import _env

    _env._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _env.rendezvous_timeout({"VLLM_PG_SHIM_TIMEOUT": value}) is None
        assert _env.rendezvous_timeout({"VLLM_PG_SHIM_TIMEOUT": value}) is None  # once per value
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert f"VLLM_PG_SHIM_TIMEOUT={value!r}" in messages[0]
    assert "greater than 0" in messages[0] and str(_env.MAX_TIMEOUT) in messages[0]


@pytest.mark.parametrize("value,seconds", [("2", 2.0), (" 2.5 ", 2.5), ("1e3", 1000.0), ("2147483", 2147483.0),
                                           ("", None), ("   ", None)])
def test_good_or_blank_timeouts_pass_without_a_warning(value, seconds):
    from vllm_pg_shim import _env

    _env._warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _env.rendezvous_timeout({"VLLM_PG_SHIM_TIMEOUT": value}) == seconds


def test_a_bad_timeout_in_the_real_path_warns_once_and_vllm_still_gets_its_world(tmp_path):
    out, res = py(tmp_path, """
        import warnings
        import torch, torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port()}", world_size=1, rank=0)  # host
        import vllm_pg_shim
        vllm_pg_shim.install()
        import vllm.distributed.parallel_state as ps
        sizes = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):  # two engines, one after the other
                ps.init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port()}", backend="gloo")
                sizes.append(len(vllm_pg_shim.status()["world"]["private_worlds"]))
                ps.cleanup_dist_env_and_memory()
        t = torch.ones(1); dist.all_reduce(t)
        result(warnings=[str(w.message) for w in caught], sizes=sizes, host=t.item(),
               after=vllm_pg_shim.status()["world"])
        """, env_extra={"VLLM_PG_SHIM_TIMEOUT": "nan"})
    assert out.returncode == 0 and res is not None, out.stderr
    assert [w for w in res["warnings"] if "VLLM_PG_SHIM_TIMEOUT='nan'" in w] == res["warnings"]
    assert len(res["warnings"]) == 1
    assert res["sizes"] == [1, 1] and res["host"] == 1.0
    assert res["after"]["private_worlds"] == [] and res["after"]["router_installed"] is False


# --- TP x PP larger than the members that will ever come --------------------------------------------------------

OVERSIZED = textwrap.dedent("""
    import torch, torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port()}", world_size=1, rank=0)  # host of 1
    import vllm_pg_shim
    vllm_pg_shim.install()
    import vllm.distributed.parallel_state as ps
    start = time.monotonic()
    try:  # TP=2 x PP=2 asked for, on a host where no other member will ever come
        ps.init_distributed_environment(4, 0, f"tcp://127.0.0.1:{port()}", backend="gloo", **KW)
        error = None
    except Exception as exc:
        error = exc
    elapsed = time.monotonic() - start
    t = torch.ones(1); dist.all_reduce(t)
    ps.init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port()}", backend="gloo")  # the shim still works
    again = len(vllm_pg_shim.status()["world"]["private_worlds"])
    ps.cleanup_dist_env_and_memory()
    result(type=type(error).__name__, shim_error=isinstance(error, vllm_pg_shim.ShimError), error=str(error),
           arrived=getattr(error, "arrived", None), missing=getattr(error, "missing", None), elapsed=elapsed,
           host=t.item(), again=again, after=vllm_pg_shim.status()["world"])
""")


def test_a_private_world_larger_than_its_members_fails_clearly_within_VLLM_PG_SHIM_TIMEOUT(tmp_path):
    out, res = py(tmp_path, "KW = {}\n" + OVERSIZED, env_extra={"VLLM_PG_SHIM_TIMEOUT": "2"})
    assert out.returncode == 0 and res is not None, out.stderr
    assert res["type"] == "PrivateWorldTimeout" and res["shim_error"]
    assert res["arrived"] == [0] and res["missing"] == [1, 2, 3]
    assert "size 4" in res["error"] and "ranks arrived [0], missing [1, 2, 3]" in res["error"]
    assert 1.5 <= res["elapsed"] < 15
    assert res["host"] == 1.0 and res["again"] == 1
    assert res["after"]["private_worlds"] == [] and res["after"]["router_installed"] is False


def test_without_VLLM_PG_SHIM_TIMEOUT_vllms_own_timeout_bounds_the_wait_and_the_error_is_torchs(tmp_path):
    """Documented no-timeout behaviour: the shim adds no bound of its own; vLLM's ``timeout`` (torch's default
    when vLLM passes none: 30 minutes on gloo) ends the wait with torch's error, and the host's WORLD survives."""
    out, res = py(tmp_path, "KW = {'timeout': datetime.timedelta(seconds=2)}\n" + OVERSIZED)
    assert out.returncode == 0 and res is not None, out.stderr
    assert res["error"] != "None" and not res["shim_error"]
    assert 1.5 <= res["elapsed"] < 30
    assert res["host"] == 1.0 and res["again"] == 1
    assert res["after"]["private_worlds"] == [] and res["after"]["router_installed"] is False


def test_a_rank_outside_the_private_worlds_size_is_refused_at_once(tmp_path):
    out, res = py(tmp_path, """
        import torch, torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port()}", world_size=1, rank=0)
        import vllm_pg_shim
        vllm_pg_shim.install()
        import vllm.distributed.parallel_state as ps
        start = time.monotonic()
        try:
            ps.init_distributed_environment(2, 5, f"tcp://127.0.0.1:{port()}", backend="gloo"); error = None
        except vllm_pg_shim.ShimError as exc:
            error = str(exc)
        result(error=error, elapsed=time.monotonic() - start, after=vllm_pg_shim.status()["world"],
               host=dist.get_world_size())
        """)
    assert out.returncode == 0 and res is not None, out.stderr
    assert "size 2 as rank 5" in res["error"] and "0..1" in res["error"]
    assert res["elapsed"] < 2 and res["after"]["private_worlds"] == [] and res["host"] == 1


def test_VLLM_PG_SHIM_TIMEOUT_with_a_file_rendezvous_warns_once_that_it_does_not_apply(tmp_path):
    """vLLM 0.28+ meets over ``file://`` on CPU (and multiproc): the bound covers ``tcp://`` only, and says so."""
    out, res = py(tmp_path, f"""
        import warnings
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port()}}", world_size=1, rank=0)
        import vllm_pg_shim
        vllm_pg_shim.install()
        import vllm.distributed.parallel_state as ps
        seen, errors = [], []
        for size in (1, 2, 2):   # a world of one waits for nobody: nothing to bound, nothing said
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    ps.init_distributed_environment(size, 0, f"file://{tmp_path}/store{{len(seen)}}", backend="gloo",
                                                    timeout=datetime.timedelta(seconds=1))
                    ps.cleanup_dist_env_and_memory()
                    errors.append(None)
                except Exception as exc:
                    errors.append(type(exc).__name__)
            seen.append([str(w.message) for w in caught])
        result(seen=seen, errors=errors, after=vllm_pg_shim.status()["world"])
        """, env_extra={"VLLM_PG_SHIM_TIMEOUT": "5"})
    assert out.returncode == 0 and res is not None, out.stderr
    assert res["seen"][0] == [] and res["seen"][2] == [], res  # once per process
    assert len(res["seen"][1]) == 1 and "tcp://host:port rendezvous only" in res["seen"][1][0]
    assert "file://" in res["seen"][1][0]
    assert res["errors"][0] is None and res["errors"][1] not in (None, "PrivateWorldTimeout")
    assert res["after"]["private_worlds"] == []


# --- VLLM_PG_SHIM_FORCE ----------------------------------------------------------------------------------------


def test_forcing_a_family_that_does_not_exist_is_refused_clearly_everywhere(tmp_path):
    out, res = py(tmp_path, """
        import vllm_pg_shim
        from vllm_pg_shim.__main__ import main
        status = vllm_pg_shim.status()
        try:
            vllm_pg_shim.install(family="nope2"); error = None
        except vllm_pg_shim.ShimError as exc:
            error = str(exc)
        rc = main(["doctor"])
        result(installed=status["installed"], reason=status["reason"], family=status["family"], error=error, rc=rc,
               torch="torch" in sys.modules)
        """, env_extra={"VLLM_PG_SHIM": "1", "VLLM_PG_SHIM_FORCE": "nope"})
    assert out.returncode == 0 and res is not None, out.stderr
    lines = shim_lines(out.stderr)
    assert len(lines) == 1 and "stays inactive" in lines[0], out.stderr  # the start-up refusal, one line
    for text in (lines[0], res["reason"]):
        assert "'nope'" in text and "does not exist" in text and "'v1'" in text and "legacy_050" in text
    assert "'nope2'" in res["error"] and "known families" in res["error"]
    assert res["installed"] is False and res["family"] is None and res["rc"] == 0 and res["torch"] is False
    assert "family         -" in out.stdout and "'nope' (VLLM_PG_SHIM_FORCE" in out.stdout


def test_forcing_a_family_overrides_a_version_that_does_not_parse(tmp_path):
    fake = fake_with_metadata(tmp_path, "Metadata-Version: 2.1\nName: vllm\nVersion: garbage\n")
    out, res = py(tmp_path, """
        import vllm_pg_shim
        s = vllm_pg_shim.install()
        result(installed=s["installed"], decision=s["family_decision"], family=s["family"])
        """, env_extra={"VLLM_PG_SHIM_FORCE": " v1 "}, pythonpath=fake)
    assert out.returncode == 0, out.stderr
    assert res == {"installed": True, "decision": {"how": "forced", "note": "VLLM_PG_SHIM_FORCE=v1"}, "family": "v1"}


# --- version strings vLLM's metadata reports ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["garbage", "", None, "0.34.0.dev12+g1234"])
def test_versions_that_do_not_parse_are_refused_by_install_status_doctor_and_startup_alike(tmp_path, version):
    meta = "Metadata-Version: 2.1\nName: vllm\n" + (f"Version: {version}\n" if version is not None else "")
    fake = fake_with_metadata(tmp_path, meta)
    out, res = py(tmp_path, """
        import warnings
        import vllm_pg_shim
        from vllm_pg_shim.__main__ import main
        started = vllm_pg_shim.status()["installed"]   # VLLM_PG_SHIM=1 tried at start-up
        vllm_pg_shim.uninstall()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                vllm_pg_shim.install(); error = None
            except vllm_pg_shim.ShimError as exc:
                error = str(exc)
        status = vllm_pg_shim.status()
        rcs = [main(["doctor"]), main(["doctor", "--json"])]
        result(started=started, error=error, reason=status["reason"], decision=status.get("family_decision"),
               warnings=[str(w.message) for w in caught], rcs=rcs)
        """, env_extra={"VLLM_PG_SHIM": "1"}, pythonpath=fake)
    assert out.returncode == 0 and res is not None, out.stderr
    assert res["rcs"] == [0, 0]
    if version == "0.34.0.dev12+g1234":  # a dev build of an unknown release: the nearest family, by its shape
        assert res["error"] is None and res["decision"]["how"] == "shape" and res["started"] is True
        assert any("0.34.0.dev12+g1234 is not in compat_matrix.yaml; family v1 applied" in w for w in res["warnings"])
        return
    message = f"vLLM reports the version {version!r}, which is not a PEP 440 version"
    assert res["started"] is False and res["error"] == message and res["reason"] == message
    lines = shim_lines(out.stderr)
    assert len(lines) == 1 and message in lines[0] and "stays inactive" in lines[0], out.stderr
    assert f"status         {message}" in out.stdout


# --- compat_matrix.yaml -----------------------------------------------------------------------------------------

FAMILY = "families:\n  v1:\n    releases: '>=0.11.0,<0.34'\n    module: v1\n"
CORRUPT_MATRICES = {
    "invalid YAML": ("families: [unclosed", "is not valid YAML"),
    "no families": ("schema: 1\nresults: []\n", "has no 'families' mapping"),
    "empty families": ("families: {}\n", "has no 'families' mapping (or it is empty)"),
    "families is a list": ("families: [v1]\n", "has no 'families' mapping"),
    "family is a string": ("families:\n  v1: '>=0.11'\n", "family 'v1' is malformed (expected a mapping"),
    "no releases": ("families:\n  v1: {module: v1}\n", "family 'v1' is malformed (no 'releases' key)"),
    "unparsable specifier": (FAMILY.replace(">=0.11.0,<0.34", ">>0.11") + "    targets: {}\n",
                             "releases '>>0.11' is not a PEP 440 version specifier"),
    "target without ':'": (FAMILY + "    targets:\n      init: [vllm.distributed.parallel_state]\n",
                           "target 'vllm.distributed.parallel_state' is not 'module:qualname'"),
    "targets not a list": (FAMILY + "    targets:\n      init: vllm.distributed.parallel_state:x\n",
                           "targets.init must be a list"),
    "unknown role": (FAMILY + "    targets:\n      inits: ['vllm.distributed.parallel_state:x']\n",
                     "unknown role(s) ['inits'] under 'targets'; accepted: ['init', 'scope', 'teardown', 'device']"),
    "missing patch module": (FAMILY.replace("module: v1", "module: nope") + "    targets: {}\n",
                             "the patch module 'nope' does not exist in vllm_pg_shim.patches"),
    "missing file": (None, "cannot read its compatibility matrix"),
}


@pytest.fixture(scope="module")
def corrupt_matrix_results(tmp_path_factory):
    """Every corrupt matrix of CORRUPT_MATRICES through install(), status() and doctor in one interpreter, the
    loader pointed at a temporary file (the real compat_matrix.yaml is never touched)."""
    tmp = tmp_path_factory.mktemp("matrix")
    paths = {}
    for i, (name, (text, _)) in enumerate(CORRUPT_MATRICES.items()):
        paths[name] = tmp / f"m{i}.yaml"
        if text is not None:
            paths[name].write_text(text)
    out, res = py(tmp, f"""
        import contextlib, io, pathlib
        import vllm_pg_shim, vllm_pg_shim.families as families
        from vllm_pg_shim.__main__ import main
        out = {{}}
        for name, path in {json.dumps({k: str(v) for k, v in paths.items()})}.items():
            families.MATRIX_PATH = pathlib.Path(path)
            try:
                vllm_pg_shim.install(); error = None
            except Exception as exc:
                error = [type(exc).__name__, str(exc)]
            try:
                reason = vllm_pg_shim.status()["reason"]
            except Exception as exc:
                reason = "status() raised " + repr(exc)
            with contextlib.redirect_stdout(io.StringIO()) as doctor:
                try:
                    rc = main(["doctor", "--json"])
                except Exception as exc:
                    rc = repr(exc)
            out[name] = dict(error=error, reason=reason, rc=rc, installed=vllm_pg_shim.status()["installed"],
                             doctor_reason=json.loads(doctor.getvalue())["reason"] if rc == 0 else None)
        result(**out)
        """)
    assert out.returncode == 0 and res is not None, out.stderr
    return res


@pytest.mark.parametrize("case", list(CORRUPT_MATRICES))
def test_a_corrupt_or_missing_matrix_is_a_clear_shim_error_in_install_status_and_doctor(corrupt_matrix_results,
                                                                                       case):
    res, fragment = corrupt_matrix_results[case], CORRUPT_MATRICES[case][1]
    assert res["error"][0] == "ShimError" and fragment in res["error"][1], res
    assert fragment in res["reason"] and fragment in res["doctor_reason"], res
    assert res["rc"] == 0 and res["installed"] is False


# --- what is missing from the environment: vLLM, torch, torch.distributed, parts of the shim -------------------


@pytest.fixture
def bare(tmp_path):
    return make_bare_env(tmp_path / "venv")


def test_without_vllm_startup_says_so_in_one_line_and_install_status_doctor_are_clear(tmp_path, bare):
    out, res = py(tmp_path, """
        import vllm_pg_shim
        from vllm_pg_shim.__main__ import main
        try:
            vllm_pg_shim.install(); error = None
        except vllm_pg_shim.ShimError as exc:
            error = str(exc)
        status = vllm_pg_shim.status()
        result(error=error, reason=status["reason"], vllm=status["vllm"], rc=main(["doctor"]))
        """, env_extra={"VLLM_PG_SHIM": "1"}, pythonpath=None, python=bare)
    assert out.returncode == 0 and res is not None, out.stderr
    assert out.stderr.strip() == ("vllm-pg-shim: VLLM_PG_SHIM is set but the shim stays inactive: vLLM is not "
                                  "installed in this environment; nothing to patch")
    assert res == {"error": "vllm-pg-shim: vLLM is not installed in this environment; nothing to patch",
                   "reason": "vLLM is not installed here", "vllm": None, "rc": 0}
    assert "vLLM           not installed" in out.stdout and "torch          not installed" in out.stdout


def test_without_torch_install_refuses_clearly(tmp_path, bare):
    out, res = py(tmp_path, """
        import vllm_pg_shim
        try:
            vllm_pg_shim.install(); error = None
        except vllm_pg_shim.ShimError as exc:
            error = str(exc)
        result(error=error, torch=vllm_pg_shim.status()["torch"])
        """, env_extra={"VLLM_PG_SHIM": "1"}, python=bare)
    assert out.returncode == 0 and res is not None, out.stderr
    assert res == {"error": "vllm-pg-shim: torch is not installed in this environment", "torch": None}
    assert len(shim_lines(out.stderr)) == 1 and "torch is not installed" in out.stderr


def test_a_torch_without_distributed_is_refused_and_status_still_answers(tmp_path):
    out, res = py(tmp_path, """
        import torch.distributed as dist
        dist.is_available = lambda: False   # as on a torch built without USE_DISTRIBUTED
        import vllm_pg_shim
        try:
            vllm_pg_shim.install(); error = None
        except vllm_pg_shim.ShimError as exc:
            error = str(exc)
        status = vllm_pg_shim.status()
        result(error=error, installed=status["installed"], patched=status["patched"])
        """)
    assert out.returncode == 0 and res is not None, out.stderr
    assert res == {"error": "vllm-pg-shim: this torch build has no torch.distributed; there is nothing to isolate",
                   "installed": False, "patched": []}


def _break(package: Path, how: str) -> None:
    if how == "half-removed (no _startup.py)":
        (package / "_startup.py").unlink()
    elif how == "__init__ raises ImportError":
        (package / "__init__.py").unlink()
        (package / "__init__.py").write_text("raise ImportError('half-upgraded')\n")
    elif how == "core module missing (_lifecycle.py)":
        (package / "_lifecycle.py").unlink()
    elif how == "package directory gone":
        shutil.rmtree(package)


@pytest.mark.parametrize("how", ["half-removed (no _startup.py)", "__init__ raises ImportError",
                                 "core module missing (_lifecycle.py)", "package directory gone"])
def test_a_broken_install_never_stops_python_and_says_so_in_at_most_one_line(tmp_path, bare, how):
    _break(site_packages(bare) / "vllm_pg_shim", how)
    code = ["-c", "import sys; print('started', 'torch' in sys.modules)"]
    # the .pth is processed twice in a venv (lib and lib64): still one line
    active = run_python(code, env=clean_env(VLLM_PG_SHIM="1", PYTHONPATH=str(FAKE_VLLM)), python=bare, timeout=30)
    assert active.returncode == 0 and active.stdout.strip() == "started False", active.stderr
    lines = active.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vllm-pg-shim: VLLM_PG_SHIM is set but the shim"), active.stderr
    assert "stays inactive" in lines[0]
    unset = run_python(code, env=clean_env(PYTHONPATH=str(FAKE_VLLM)), python=bare, timeout=30)
    assert unset.returncode == 0 and unset.stdout.strip() == "started False" and unset.stderr == ""


@pytest.mark.parametrize("matrix", ["corrupt", "missing"])
def test_a_corrupt_or_missing_installed_matrix_at_startup_is_one_line_and_python_runs(tmp_path, bare, matrix):
    installed = site_packages(bare) / "vllm_pg_shim" / "compat_matrix.yaml"
    if matrix == "corrupt":
        installed.write_text("families:\n  v1: {releases: '>=0.11', module: v1, targets: {init: [nocolon]}}\n")
    else:
        installed.unlink()
    stub = tmp_path / "stub" / "torch"   # a torch to be found (the matrix is read after that check); never imported
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('the stub torch is not for importing')\n")
    path = f"{FAKE_VLLM}:{stub.parent}"
    out = run_python(["-c", "print('started')"], env=clean_env(VLLM_PG_SHIM="1", PYTHONPATH=path), python=bare,
                     timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "started", out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "stays inactive" in lines[0], out.stderr
    assert ("target 'nocolon' is not 'module:qualname'" if matrix == "corrupt"
            else "cannot read its compatibility matrix") in lines[0]


# --- install() after vLLM initialised inside the host's WORLD ---------------------------------------------------


def test_install_after_vllm_initialised_in_the_hosts_world_leaves_it_alone_and_says_so(tmp_path):
    out, res = py(tmp_path, """
        import torch, torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port()}", world_size=1, rank=0)  # host
        import vllm.distributed.parallel_state as ps
        ps.init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port()}", backend="gloo")  # stock: joins it
        import vllm_pg_shim
        status = vllm_pg_shim.install()
        t = torch.ones(1); dist.all_reduce(t, group=ps._WORLD)   # vLLM's group still works
        result(world=status["world"], installed=status["installed"], wrapped=type(ps.init_distributed_environment)
               .__name__, sum=t.item())
        ps.destroy_distributed_environment()   # the host ends vLLM's world (its group's gloo workers) before it exits
        """)
    assert out.returncode == 0 and res is not None, out.stderr
    assert res["installed"] is True and res["wrapped"] == "ShimWrapper" and res["sum"] == 1.0
    assert res["world"]["host_world"] == "vllm" and res["world"]["private_worlds"] == []
    lines = shim_lines(out.stderr)
    assert len(lines) == 1 and "already initialised its distributed state" in lines[0], out.stderr
    assert "Install the shim before vLLM initialises" in lines[0]
