"""What the shim exposes: where its rendezvous listens, which files it makes, what the .pth runs, what it logs.

- When the shim opens the private world's store itself (``VLLM_PG_SHIM_TIMEOUT`` set, ``tcp://`` method), and
  vLLM's address is a loopback one (every member on this host), it listens on that address only. Without the
  bound, torch opens the store from vLLM's ``distributed_init_method`` exactly as in a clean vLLM process
  (vLLM's choice of address; torch's TCPStore listens on every interface whatever address it is given).
- The shim creates no files (no ``FileStore``, no temporary files); vLLM's own ``file://`` rendezvous is vLLM's.
- With ``VLLM_PG_SHIM`` unset the .pth imports nothing; set to an inactive value, only the tiny check.
- Nothing the shim prints or logs carries the environment's secrets.
"""
from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

import pytest

from support.bare_env import FAKE_VLLM, ROOT, clean_env, make_bare_env
from support.harness import run_python, run_snippet

HEAVY = ("torch", "vllm", "wrapt", "yaml", "packaging")

PRELUDE = """
import gc, json, socket, sys, threading, time
import psutil
def port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0)); return s.getsockname()[1]
def listening(p):
    conns = getattr(psutil.Process(), "net_connections", None) or psutil.Process().connections
    return sorted({c.laddr.ip for c in conns("inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == p})
def result(**kw):
    print("RESULT " + json.dumps(kw, default=str), flush=True)
"""


def py(tmp_path: Path, code: str, *, env_extra: dict | None = None, timeout: float = 60, cwd: Path | None = None):
    env = clean_env(PYTHONPATH=str(FAKE_VLLM), **(env_extra or {}))
    return run_snippet(tmp_path / "case.py", PRELUDE + code, env=env, timeout=timeout, cwd=cwd)


def _loopback_usable(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


# --- where the private world's rendezvous listens -----------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_shims_own_store_listens_on_the_loopback_address_only(tmp_path, host):
    if not _loopback_usable(host):
        pytest.skip(f"{host} cannot be bound here")
    url_host = f"[{host}]" if ":" in host else host
    out, res = py(tmp_path, f"""
import torch.distributed as dist
from torch.distributed import TCPStore
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port()}}", world_size=1, rank=0)   # the host
import vllm_pg_shim
vllm_pg_shim.install()
import vllm.distributed.parallel_state as ps
p, seen, stop = port({host!r}), set(), threading.Event()
def watch():
    while not stop.is_set():
        seen.update(listening(p)); time.sleep(0.02)
watcher = threading.Thread(target=watch); watcher.start()
try:   # a member that never comes: the shim's store stays up for the whole bound
    ps.init_distributed_environment(2, 0, "tcp://{url_host}:" + str(p), backend="gloo"); error = None
except vllm_pg_shim.ShimError as exc:
    error = type(exc).__name__
stop.set(); watcher.join(); gc.collect()
after = listening(p)
# the watcher itself works: a store as torch opens it, on the same kind of address, is seen
control_port = port({host!r})
control = TCPStore({host!r}, control_port, 1, True, wait_for_workers=False)
result(seen=sorted(seen), error=error, after=after, control=listening(control_port))
""", env_extra={"VLLM_PG_SHIM_TIMEOUT": "1.5"})
    assert out.returncode == 0 and res is not None, out.stderr
    assert res["error"] == "PrivateWorldTimeout"
    assert res["seen"] == [host], res          # never a wildcard address, never another interface
    assert res["after"] == []                  # closed with the failed world
    assert res["control"] != []                # (torch's own listens on every interface: see the report)


# --- files ----------------------------------------------------------------------------------------------------


def test_the_shim_creates_no_files_in_tmpdir_cwd_or_home(tmp_path):
    dirs = {name: tmp_path / name for name in ("tmpdir", "cwd", "home")}
    for d in dirs.values():
        d.mkdir()
    out, res = py(tmp_path, """
import torch, torch.distributed as dist
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port()}", world_size=1, rank=0)
import vllm_pg_shim
vllm_pg_shim.install()
import vllm.distributed.parallel_state as ps
for size in (1, 2):   # a private world made and ended; one whose store the shim opened and that timed out
    try:
        ps.init_distributed_environment(size, 0, f"tcp://127.0.0.1:{port()}", backend="gloo")
        t = torch.ones(1); dist.all_reduce(t)
        ps.cleanup_dist_env_and_memory()
    except vllm_pg_shim.ShimError:
        pass
result(status=vllm_pg_shim.status()["world"])
""", env_extra={"VLLM_PG_SHIM_TIMEOUT": "1", "TMPDIR": str(dirs["tmpdir"]), "HOME": str(dirs["home"])},
        cwd=dirs["cwd"])
    assert out.returncode == 0 and res is not None, out.stderr
    assert res["status"]["private_worlds"] == []
    created = {name: sorted(str(p.relative_to(d)) for p in d.rglob("*")) for name, d in dirs.items()}
    created["cwd"] = [p for p in created["cwd"] if p != "case.py"]
    assert created == {"tmpdir": [], "cwd": [], "home": []}


def test_the_shims_sources_make_no_file_store_and_no_temporary_files():
    pattern = re.compile(r"FileStore|HashStore|tempfile|mkstemp|mkdtemp|\.write_text\(|\.write_bytes\(|"
                         r"open\([^)]*['\"][wax]b?\+?['\"]|os\.open\(|os\.mkdir|\.mkdir\(")
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in sorted([*(ROOT / "shim").glob("*.py"), *(ROOT / "patches").glob("*.py")])
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if pattern.search(line) and not line.lstrip().startswith("#")]
    assert hits == []


# --- the .pth -------------------------------------------------------------------------------------------------

PROBE = ("import sys, json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
         f"{HEAVY!r} or m.startswith('vllm_pg_shim'))))")


def _imported_at_startup(python, env) -> tuple[list[str], list[str]]:
    out = run_python(["-X", "importtime", "-c", PROBE], env=env, python=python, timeout=60)
    assert out.returncode == 0, out.stderr
    timed = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert len(timed) > 10, out.stderr   # -X importtime did report (the probe can see imports)
    return json.loads(out.stdout.strip().splitlines()[-1]), timed


@pytest.mark.parametrize("where", ["this interpreter", "a venv with the repository's .pth"])
def test_with_VLLM_PG_SHIM_unset_the_pth_imports_nothing(tmp_path, where):
    python = sys.executable if where == "this interpreter" else make_bare_env(tmp_path / "venv")
    modules, timed = _imported_at_startup(python, clean_env(PYTHONPATH=str(FAKE_VLLM)))
    assert modules == []
    assert [m for m in timed if m.split(".")[0] in HEAVY or m.startswith("vllm_pg_shim")] == []
    # and when set to an inactive value, the tiny check only
    modules, _ = _imported_at_startup(python, clean_env(PYTHONPATH=str(FAKE_VLLM), VLLM_PG_SHIM="0"))
    assert modules == ["vllm_pg_shim", "vllm_pg_shim._env", "vllm_pg_shim._startup"]


# --- secrets --------------------------------------------------------------------------------------------------

SECRETS = {"HF_TOKEN": "secret-xyz-hf-0123", "AWS_SECRET_ACCESS_KEY": "secret-xyz-aws-4567",
           "VLLM_API_KEY": "secret-xyz-vllm-89ab", "HUGGING_FACE_HUB_TOKEN": "secret-xyz-hub-cdef"}


def test_nothing_the_shim_prints_or_logs_contains_the_environments_secrets(tmp_path):
    env = {**SECRETS, "VLLM_PG_SHIM": "1", "VLLM_PG_SHIM_FORCE": "no-such-family", "VLLM_PG_SHIM_TIMEOUT": "1"}
    out, res = py(tmp_path, """
import logging, os
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="LOG %(name)s %(levelname)s %(message)s")
import torch, torch.distributed as dist
host_port = port()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(host_port))
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{host_port}", world_size=1, rank=0)
import vllm_pg_shim
from vllm_pg_shim.__main__ import main
print(json.dumps(vllm_pg_shim.status(), default=str))           # the start-up refusal (no such family)
print(json.dumps(vllm_pg_shim.install(family="v1"), default=str))
import vllm.distributed.parallel_state as ps
ps.init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port()}", backend="gloo")   # a private world
print(json.dumps(vllm_pg_shim.status(), default=str))
ps.cleanup_dist_env_and_memory()
try:
    ps.init_distributed_environment(2, 0, f"tcp://127.0.0.1:{port()}", backend="gloo")  # times out
except vllm_pg_shim.ShimError as exc:
    print(exc)
main(["doctor"]); main(["doctor", "--json"])
ps.init_distributed_environment(1, 0, "env://", backend="gloo")   # shares the host's WORLD: logs vLLM's call
result(present=all(os.environ.get(k) == v for k, v in SECRETS.items()))
""".replace("SECRETS", repr(SECRETS)), env_extra=env)
    assert out.returncode == 0 and res == {"present": True}, out.stderr
    doctor = run_python(["-m", "vllm_pg_shim", "doctor", "--json"],
                        env=clean_env(PYTHONPATH=str(FAKE_VLLM), **env), timeout=60)
    assert doctor.returncode == 0, doctor.stderr
    everything = out.stdout + out.stderr + doctor.stdout + doctor.stderr
    # the run did say things: the start-up refusal, the private world, the timeout, the shared WORLD
    for said in ("'no-such-family'", "gets private world", "did not assemble within", "shares the host's WORLD",
                 "LOG vllm_pg_shim"):
        assert said in everything, said
    assert "secret-xyz" not in everything
