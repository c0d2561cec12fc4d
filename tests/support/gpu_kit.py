"""Builds the kit for an offline GPU host (docs/gpu-1x.md): one vLLM release's wheel, checked and repacked, and the
wheels it imports, as one ``tar | xz -9`` archive split into pieces small enough for one device call each.

    python3 tests/support/gpu_kit.py 0.21.0 --extra-wheels extra-wheels.txt --out /tmp/kit-0.21.0 \\
        [--set llguidance==1.7.3 ...] [--torch 2.11.0] [--cudart 13]

Refuses a release whose wheel does not pin ``torch==--torch`` or whose ``_C`` (``_C_stable_libtorch`` from 0.24)
does not link ``libcudart.so.--cudart``: the host's torch and CUDA runtime are fixed. The repacked wheel leaves out
what a dense bf16 Llama on Hopper never loads (vLLM imports each inside try/except or behind a check) and stores
its entries uncompressed, so the outer xz compresses them well. ``--set`` replaces an extra wheel's pin (a later
release may need another version than the list's). Writes ``house/`` (the wheels), ``kit.tar.xz``, its
``kit.sha256`` and ``kit.partNN`` pieces into ``--out``.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# every glibc the GPU host's (2.35) covers: wheels name the oldest they need (llguidance 1.7: manylinux_2_31)
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + ["manylinux2014_x86_64",
                                                                             "manylinux1_x86_64"]
DROP = [
    "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",  # FlashAttention 2: Hopper takes FA3
    "vllm/_moe_C*.abi3.so",                      # MoE kernels (_moe_C_stable_libtorch from 0.24)
    "vllm/_flashmla_C.abi3.so",                  # MLA (DeepSeek)
    "vllm/_flashmla_extension_C.abi3.so",
    "vllm/third_party/deep_gemm/*",              # FP8 GEMM JIT
]
PIECE = "53M"  # two pieces of a ~100 MiB kit, each with the checkout inside the device tool's 64 MiB a call


def download(requirements: list[str], into: Path, python: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python, "--implementation", "cp", "-d", str(into)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + requirements, check=True)


def check(wheel: Path, torch: str, cudart: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        metadata = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line for line in z.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
        if f"Requires-Dist: torch=={torch}" not in requires:
            pins = [r for r in requires if r.startswith("Requires-Dist: torch")]
            raise SystemExit(f"{wheel.name} does not pin torch=={torch}: {pins}")
        core = [n for n in z.namelist() if n in ("vllm/_C.abi3.so", "vllm/_C_stable_libtorch.abi3.so")]
        with tempfile.TemporaryDirectory() as tmp:
            linked = ""
            for name in core:
                z.extract(name, tmp)
                linked += subprocess.run(["readelf", "-d", str(Path(tmp) / name)], capture_output=True, text=True,
                                         check=True).stdout
    if f"libcudart.so.{cudart}" not in linked:
        raise SystemExit(f"{wheel.name}: {core} do not link libcudart.so.{cudart}")


def dropped(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in DROP)


def repack(src: Path, dst: Path) -> int:
    """``src`` without the DROP entries (and their RECORD lines), entries stored; returns the bytes left out."""
    left_out = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if dropped(info.filename):
                left_out += info.file_size
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not dropped(line.split(",", 1)[0])).encode()
            entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            entry.external_attr = info.external_attr
            zout.writestr(entry, data)
    return left_out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("version")
    p.add_argument("--extra-wheels", type=Path, required=True, help="one pinned requirement a line")
    p.add_argument("--set", action="append", default=[], help="NAME==VERSION replacing that extra wheel's pin")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--python", default="3.12", help="the GPU host's Python")
    p.add_argument("--torch", default="2.11.0", help="the GPU host's torch release")
    p.add_argument("--cudart", default="13", help="the GPU host's CUDA runtime major version")
    args = p.parse_args(argv)
    pins = {line.split("==")[0].lower(): line.strip() for line in args.extra_wheels.read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    pins.update({req.split("==")[0].lower(): req for req in args.set})
    downloads, house = args.out / "download", args.out / "house"
    house.mkdir(parents=True, exist_ok=True)
    download([f"vllm=={args.version}"], downloads, args.python)
    wheel = next(downloads.glob(f"vllm-{args.version}-*.whl"))
    check(wheel, args.torch, args.cudart)
    print(f"{wheel.name}: pins torch=={args.torch}, links libcudart.so.{args.cudart}; "
          f"{repack(wheel, house / wheel.name) / 2**20:.0f} MiB left out")
    download(sorted(pins.values()), house, args.python)
    archive = args.out / "kit.tar.xz"
    subprocess.run(f"tar -cf - -C {args.out} house | xz -9 -T2 > {archive}", shell=True, check=True)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (args.out / "kit.sha256").write_text(f"{digest}  kit.tar.xz\n")
    subprocess.run(["split", "-b", PIECE, "-d", str(archive), str(args.out / "kit.part")], check=True)
    print(f"{archive}: {archive.stat().st_size / 2**20:.1f} MiB, sha256 {digest}; "
          f"pieces: {', '.join(sorted(x.name for x in args.out.glob('kit.part*')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
