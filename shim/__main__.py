"""``vllm-pg-shim doctor`` / ``python -m vllm_pg_shim``: what the shim would do in this environment."""
from __future__ import annotations

import argparse
import json
import sys


def doctor(as_json: bool = False) -> int:
    from . import _env
    from ._lifecycle import status

    info = status()
    if info["family"] and not info["torch_guard"]["checked"] and _load_torch_distributed():
        info = status()  # where the shim would act, the torch guard's verdict matters: load torch to get it
    activation = info["activation"] or (
        "VLLM_PG_SHIM=1 (at interpreter start)" if _env.activation_requested() else "off"
    )
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    world = info["world"]
    vllm = info["vllm"]
    lines = [
        f"vllm-pg-shim   {info['shim_version']}",
        f"vLLM           {_vllm_line(vllm)}",
        f"torch          {info['torch'] or 'not installed'}" + _tested(info["torch_guard"]),
        f"torch guard    {_guard_line(info['torch_guard'])}" if info["torch"] else "torch guard    -",
        f"python         {info['python']}",
        f"family         {info['family'] or '-'}" + (f"  ({info['family_releases']})" if info["family"] else ""),
        f"decided by     {_decision(info)}",
        f"activation     {activation}",
        f"installed      {'yes' if info['installed'] else 'no'}",
        f"WORLD here     {world['host_world']}" + ("  (foreign: vLLM would get a private world)"
                                                   if world["host_world"] == "foreign" else ""),
        f"private worlds {len(world['private_worlds'])}",
        f"replaced       {len(info['replacements'])} name(s)" + ("" if info["replacements"] else "  (nothing)"),
        *(f"  {r['by']:<16} {r['name']}" for r in info["replacements"]),
        f"status         {info['reason']}",
    ]
    print("\n".join(lines))
    return 0


def _load_torch_distributed() -> bool:
    """The torch guard checks a loaded torch; install() never loads it (start-up stays cheap), doctor may."""
    import importlib
    import importlib.util

    try:
        if importlib.util.find_spec("torch") is None:
            return False
        importlib.import_module("torch.distributed.distributed_c10d")
    except Exception:  # a torch without distributed support: status() says so
        return False
    return True


def _tested(guard: dict) -> str:
    if guard["torch"] is None:
        return ""
    tested = guard["tested_versions"]
    return ("  (a tested release)" if guard["tested"] else
            f"  (not a tested release; tested: {tested[0]} to {tested[-1]})")


def _guard_line(guard: dict) -> str:
    if not guard["checked"]:
        return "not checked (no family applies here, or torch.distributed cannot be imported)"
    if not guard["differences"]:
        return "ok: the private torch names the shim relies on are as expected"
    verdict = "FORCED (VLLM_PG_SHIM_FORCE_TORCH=1) despite" if guard["forced"] else "REFUSED:"
    return f"{verdict} " + "; ".join(guard["differences"])


def _vllm_line(vllm: dict | None) -> str:
    if not vllm:
        return "not installed"
    version = vllm["version"] if vllm["version"] else "(no version in its metadata)"
    return f"{version} ({vllm['distribution']})"


def _decision(info: dict) -> str:
    decision = info.get("family_decision")
    if decision is None:
        return "-"
    return {"matrix": "compat_matrix.yaml covers this release", "forced": decision["note"],
            "shape": decision["note"]}[decision["how"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-pg-shim", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    doc = sub.add_parser("doctor", help="versions, family, activation and WORLD of this environment")
    doc.add_argument("--json", action="store_true", help="the full status() as JSON")
    args = parser.parse_args(argv)
    if args.command in (None, "doctor"):
        return doctor(as_json=getattr(args, "json", False))
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
