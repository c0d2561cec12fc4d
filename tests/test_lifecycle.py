"""install / uninstall orderings, each in a fresh interpreter, against the fake vllm package.

The fake is shaped like real vLLM where the machinery cares (re-exports, ``from … import`` copies); what the
wrappers do to real vLLM is tested end to end in test_e2e_seed.py.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from support.harness import run_python, run_snippet

FAKE = Path(__file__).with_name("fake_vllm")

# Every place the fake binds a wrapped function: module attributes, the re-export and the copies.
PROBE = textwrap.dedent(
    """
    import importlib, json, sys
    def names():
        spots = {
            "ps.init": ("vllm.distributed.parallel_state", "init_distributed_environment"),
            "ps.teardown": ("vllm.distributed.parallel_state", "cleanup_dist_env_and_memory"),
            "dist.init": ("vllm.distributed", "init_distributed_environment"),
            "gpu_worker.init": ("vllm.v1.worker.gpu_worker", "init_distributed_environment"),
            "gpu_worker.iwde": ("vllm.v1.worker.gpu_worker", "init_worker_distributed_environment"),
            "cpu_worker.iwde": ("vllm.v1.worker.cpu_worker", "init_worker_distributed_environment"),
            "core.cleanup": ("vllm.v1.engine.core", "cleanup_dist_env_and_memory"),
        }
        out = {}
        for key, (mod, attr) in spots.items():
            m = sys.modules.get(mod)
            out[key] = None if m is None else type(getattr(m, attr)).__name__
        return out
    def import_all():
        for m in ("vllm.distributed", "vllm.v1.worker.gpu_worker", "vllm.v1.worker.cpu_worker", "vllm.v1.engine.core"):
            importlib.import_module(m)
    """
)


def run_probe(code: str, *, env_extra: dict | None = None, pythonpath: Path = FAKE, timeout: float = 60,
              tmp_path: Path) -> dict:
    """Run ``code`` after PROBE in a fresh interpreter with the fake vLLM on the path; it must exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_PG_SHIM")}
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(Path(__file__).parent)])
    env.update(env_extra or {})
    out, result = run_snippet(tmp_path / "probe.py", PROBE + "\n" + textwrap.dedent(code), env=env, timeout=timeout)
    log = out.stdout + out.stderr
    assert out.returncode == 0, f"probe failed ({out.returncode}):\n{log}"
    return {"result": result, "log": log}


ALL_WRAPPED = {k: "ShimWrapper" for k in
               ("ps.init", "ps.teardown", "dist.init", "gpu_worker.init", "gpu_worker.iwde", "cpu_worker.iwde",
                "core.cleanup")}
ALL_PLAIN = {k: "function" for k in ALL_WRAPPED}


@pytest.mark.parametrize("order", ["install-then-import", "import-then-install"])
def test_install_wraps_every_binding_whatever_the_import_order(tmp_path, order):
    r = run_probe(
        f"""
        import vllm_pg_shim
        if {order!r} == "import-then-install":
            import_all()  # copies bound before the patch must be rebound
        vllm_pg_shim.install()
        import_all()
        print("RESULT " + json.dumps(names()))
        """,
        tmp_path=tmp_path,
    )
    assert r["result"] == ALL_WRAPPED


def test_install_is_idempotent_and_never_double_wraps(tmp_path):
    r = run_probe(
        """
        import vllm_pg_shim
        import_all()
        vllm_pg_shim.install()
        first = vllm_pg_shim.status()["patched"]
        vllm_pg_shim.install()
        import vllm.distributed.parallel_state as ps
        inner = ps.init_distributed_environment.__wrapped__
        print("RESULT " + json.dumps({"same": first == vllm_pg_shim.status()["patched"],
                                      "inner": type(inner).__name__}))
        """,
        tmp_path=tmp_path,
    )
    assert r["result"] == {"same": True, "inner": "function"}


@pytest.mark.parametrize("order", ["import-install-uninstall", "install-import-uninstall",
                                   "half-install-rest-uninstall"])
def test_uninstall_restores_every_original_exactly(tmp_path, order):
    r = run_probe(
        f"""
        import vllm_pg_shim
        order = {order!r}
        originals = {{}}
        def snapshot():
            import vllm.distributed.parallel_state as ps
            return {{n: getattr(ps, n) for n in dir(ps) if callable(getattr(ps, n))}}
        if order == "import-install-uninstall":
            import_all(); before = snapshot(); vllm_pg_shim.install()
        elif order == "install-import-uninstall":
            vllm_pg_shim.install(); import_all()
            before = {{n: f.__wrapped__ if hasattr(f, "__wrapped__") else f for n, f in snapshot().items()}}
        else:
            import vllm.distributed.parallel_state; before = snapshot(); vllm_pg_shim.install(); import_all()
        vllm_pg_shim.uninstall()
        after = snapshot()
        import vllm.distributed as d, vllm.v1.worker.gpu_worker as g, vllm.v1.worker.cpu_worker as c
        import vllm.v1.engine.core as core
        exact = all(after[n] is before[n] for n in before)
        copies = (d.init_distributed_environment is before["init_distributed_environment"]
                  and g.init_distributed_environment is before["init_distributed_environment"]
                  and c.init_worker_distributed_environment is g.init_worker_distributed_environment
                  and core.cleanup_dist_env_and_memory is before["cleanup_dist_env_and_memory"])
        print("RESULT " + json.dumps({{"names": names(), "exact": exact, "copies": copies,
                                      "installed": vllm_pg_shim.status()["installed"]}}))
        """,
        tmp_path=tmp_path,
    )
    assert r["result"] == {"names": ALL_PLAIN, "exact": True, "copies": True, "installed": False}


def test_reinstall_after_uninstall_wraps_again_and_old_hooks_stay_quiet(tmp_path):
    r = run_probe(
        """
        import vllm_pg_shim
        vllm_pg_shim.install(); vllm_pg_shim.uninstall(); vllm_pg_shim.install()
        import_all()   # the first install's import hook must not wrap a second time
        import vllm.distributed.parallel_state as ps
        print("RESULT " + json.dumps({"names": names(),
                                      "inner": type(ps.init_distributed_environment.__wrapped__).__name__}))
        """,
        tmp_path=tmp_path,
    )
    assert r["result"] == {"names": ALL_WRAPPED, "inner": "function"}


def test_status_says_what_and_why(tmp_path):
    r = run_probe(
        """
        import vllm_pg_shim
        before = vllm_pg_shim.status()
        vllm_pg_shim.install()
        import_all()
        after = vllm_pg_shim.status()
        print("RESULT " + json.dumps({"before": before, "after": after}))
        """,
        tmp_path=tmp_path,
    )
    before, after = r["result"]["before"], r["result"]["after"]
    assert before["installed"] is False and before["family"] == "v1"
    assert after["installed"] is True and after["activation"] == "install()"
    assert after["vllm"] == {"distribution": "vllm", "version": "0.32.0"}
    assert after["world"]["host_world"] == "none"
    assert "no foreign WORLD" in after["reason"]
    assert "vllm.distributed.parallel_state.init_distributed_environment" in after["patched"]


def _fake_with_version(tmp_path: Path, version: str) -> Path:
    import shutil

    root = tmp_path / "fake"
    shutil.copytree(FAKE / "vllm", root / "vllm")
    info = root / f"vllm-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    return root


@pytest.mark.parametrize("shape", ["fits", "changed"])
def test_unknown_release_is_applied_when_its_shape_fits_else_refused(tmp_path, shape):
    fake = _fake_with_version(tmp_path, "0.99.0")
    if shape == "changed":  # vLLM stopped guarding its own init_process_group with is_initialized()
        ps = fake / "vllm" / "distributed" / "parallel_state.py"
        ps.write_text(ps.read_text().replace("if not torch.distributed.is_initialized():", "if True:"))
    r = run_probe(
        """
        import warnings
        import vllm_pg_shim
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                status = vllm_pg_shim.install(); refused = None
            except vllm_pg_shim.ShimError as exc:
                status, refused = vllm_pg_shim.status(), str(exc)
        vllm_pg_shim.uninstall()
        forced = vllm_pg_shim.install(family="v1")
        print("RESULT " + json.dumps({"refused": refused, "decision": status.get("family_decision"),
                                      "warnings": [str(w.message) for w in caught],
                                      "forced": forced["family_decision"]}))
        """,
        pythonpath=fake,
        tmp_path=tmp_path,
    )
    res = r["result"]
    if shape == "fits":
        assert res["refused"] is None and res["decision"]["how"] == "shape"
        assert any("0.99.0 is not in compat_matrix.yaml; family v1 applied" in w for w in res["warnings"])
    else:
        assert "vLLM 0.99.0 is not in compat_matrix.yaml" in res["refused"]
        assert "nearest family, v1" in res["refused"] and "behind is_initialized()" in res["refused"]
        assert "VLLM_PG_SHIM_FORCE" in res["refused"]
    assert res["forced"] == {"how": "forced", "note": "VLLM_PG_SHIM_FORCE=v1"}


def test_dev_and_local_builds_are_matched_by_their_release(tmp_path):
    from vllm_pg_shim.families import release_key

    assert release_key("0.33.0rc1+g1234") == "0.33.0"
    assert release_key("0.32.0+cpu") == "0.32.0"
    assert release_key("0.34.0.dev12+g1234") == "0.34.0"
    assert release_key("0.5.3.post1") == "0.5.3.post1"


def test_corrupt_matrix_is_a_clear_error(tmp_path):
    from vllm_pg_shim import ShimError
    from vllm_pg_shim.families import families

    bad = tmp_path / "m.yaml"
    bad.write_text("families: [unclosed")
    with pytest.raises(ShimError, match="not valid YAML"):
        families(str(bad))
    with pytest.raises(ShimError, match="cannot read"):
        families(str(tmp_path / "missing.yaml"))
    bad.write_text("families:\n  x: {module: m}\n")
    with pytest.raises(ShimError, match="family 'x' is malformed"):
        families(str(bad))


def test_env_activation_at_startup_imports_nothing_heavy(tmp_path):
    r = run_probe(
        """
        import sys
        before = {m: m in sys.modules for m in ("torch", "vllm", "vllm_pg_shim")}
        import vllm_pg_shim
        installed = vllm_pg_shim.status()["installed"]
        import_all()
        print("RESULT " + json.dumps({"before": before, "installed": installed, "names": names(),
                                      "activation": vllm_pg_shim.status()["activation"]}))
        """,
        env_extra={"VLLM_PG_SHIM": "1"},
        tmp_path=tmp_path,
    )
    res = r["result"]
    assert res["before"] == {"torch": False, "vllm": False, "vllm_pg_shim": True}
    assert res["installed"] is True and res["activation"] == "VLLM_PG_SHIM=1"
    assert res["names"] == ALL_WRAPPED


@pytest.mark.parametrize("value,warns", [("0", False), ("off", False), ("", False), ("OFF", False),
                                         ("yes", True), ("2", True)])
def test_env_values_other_than_1_leave_the_shim_off(tmp_path, value, warns):
    r = run_probe(
        """
        import sys
        import vllm_pg_shim
        print("RESULT " + json.dumps({"installed": vllm_pg_shim.status()["installed"],
                                      "torch": "torch" in sys.modules}))
        """,
        env_extra={"VLLM_PG_SHIM": value},
        tmp_path=tmp_path,
    )
    assert r["result"] == {"installed": False, "torch": False}
    warned = r["log"].count("accepted values")
    assert warned == (1 if warns else 0), r["log"]


def test_vllm_plugin_entry_point_is_registered():
    from importlib.metadata import entry_points

    eps = entry_points(group="vllm.general_plugins")
    assert any(ep.value == "vllm_pg_shim._startup:vllm_plugin" for ep in eps)


def test_doctor_runs_as_console_script_and_module(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_PG_SHIM")}
    env["PYTHONPATH"] = str(FAKE)
    out = run_python(["-m", "vllm_pg_shim", "doctor"], env=env)
    assert out.returncode == 0, out.stderr
    assert "family         v1" in out.stdout and "WORLD here     none" in out.stdout
    script = Path(sys.executable).with_name("vllm-pg-shim")
    out2 = run_python(["doctor", "--json"], env=env, python=script)
    assert out2.returncode == 0 and json.loads(out2.stdout)["family"] == "v1"


@pytest.mark.parametrize("who", ["vllm", "host"])
def test_install_after_a_world_exists_tells_vllms_own_world_from_a_foreign_one(tmp_path, who):
    r = run_probe(
        f"""
        import socket, torch.distributed as dist
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
        import vllm.distributed.parallel_state as ps
        if {who!r} == "vllm":   # vLLM initialised first, in a clean process: its WORLD is its own
            ps.init_distributed_environment(1, 0, f"tcp://127.0.0.1:{{port}}", backend="gloo")
        else:
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", world_size=1, rank=0)
        import vllm_pg_shim
        vllm_pg_shim.install()
        print("RESULT " + json.dumps(vllm_pg_shim.status()["world"]))
        """,
        tmp_path=tmp_path,
    )
    assert r["result"]["host_world"] == ("vllm" if who == "vllm" else "foreign")
    assert r["result"]["private_worlds"] == []


def test_uninstall_while_vllm_uses_a_private_world_is_refused_and_changes_nothing(tmp_path):
    r = run_probe(
        """
        import socket, torch.distributed as dist
        def port():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0)); return s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port()}", world_size=1, rank=0)  # host
        import vllm_pg_shim
        vllm_pg_shim.install()
        import vllm.distributed.parallel_state as ps
        ps.init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port()}", backend="gloo")
        live = vllm_pg_shim.status()["world"]["private_worlds"]
        try:
            vllm_pg_shim.uninstall(); refused = None
        except vllm_pg_shim.ShimError as exc:
            refused = str(exc)
        still = vllm_pg_shim.status()["installed"]
        ps.destroy_distributed_environment()
        after = vllm_pg_shim.uninstall()
        print("RESULT " + json.dumps({"live": len(live), "refused": refused, "still": still,
                                      "after": after["installed"], "host": dist.is_initialized()}))
        """,
        tmp_path=tmp_path,
    )
    res = r["result"]
    assert res["live"] == 1 and "still uses private world" in res["refused"] and res["still"] is True
    assert res["after"] is False and res["host"] is True


def test_install_and_uninstall_from_many_threads_at_once_stay_consistent(tmp_path):
    r = run_probe(
        """
        import threading, vllm_pg_shim
        import_all()
        def churn(n):
            for i in range(50):
                (vllm_pg_shim.install if (i + n) % 2 else vllm_pg_shim.uninstall)()
        threads = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        vllm_pg_shim.install()
        import vllm.distributed.parallel_state as ps
        wrapped_once = type(ps.init_distributed_environment.__wrapped__).__name__
        vllm_pg_shim.uninstall()
        print("RESULT " + json.dumps({"names": names(), "wrapped_once": wrapped_once}))
        """,
        tmp_path=tmp_path,
    )
    assert r["result"] == {"names": ALL_PLAIN, "wrapped_once": "function"}


def test_without_vllm_install_is_a_clear_error_and_env_activation_only_says_so(tmp_path):
    r = run_probe(
        """
        import vllm_pg_shim, vllm_pg_shim.families as f
        f.VLLM_DISTRIBUTIONS = ()   # as if no vLLM were installed
        try:
            vllm_pg_shim.install(); error = None
        except vllm_pg_shim.ShimError as exc:
            error = str(exc)
        print("RESULT " + json.dumps({"error": error, "reason": vllm_pg_shim.status()["reason"]}))
        """,
        tmp_path=tmp_path,
    )
    assert "vLLM is not installed" in r["result"]["error"]
    assert r["result"]["reason"] == "vLLM is not installed here"


@pytest.mark.parametrize("flag,active", [("-S", False), ("-I", True), ("-E", True)])
def test_interpreter_flags_with_env_activation(tmp_path, flag, active):
    """-S skips site (and so the .pth): documented as inactive. -I/-E ignore PYTHON* variables only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_PG_SHIM")}
    env["VLLM_PG_SHIM"] = "1"
    code = ("import sys, json\n"
            "print(json.dumps(bool(sys.modules.get('vllm_pg_shim._lifecycle') and "
            "sys.modules['vllm_pg_shim._lifecycle'].installed())))")
    out = run_python([flag, "-c", code], env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) is active
