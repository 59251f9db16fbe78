"""Regenerate nvplugin/api from protos/api.proto with betterproto2-compiler.

    python scripts/gen_proto.py            # rewrite nvplugin/api in place
    python scripts/gen_proto.py --out DIR  # write elsewhere (the drift test uses this)

Needs the `dev` extra (grpcio-tools, betterproto2-compiler).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PACKAGE_DIR = ROOT / "nvplugin" / "api"
OPTIONS = "client_generation=async,server_generation=async"


def generate(out: Path) -> None:
    from grpc_tools import protoc  # imported here: a dev-only dependency

    out.mkdir(parents=True, exist_ok=True)
    # The compiler's plugin, and the ruff it formats with, sit beside this interpreter (a venv's
    # bin/), which need not be on PATH.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_betterproto2_out={out}",
        f"--python_betterproto2_opt={OPTIONS}",
        str(PROTO_DIR / "api.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: see the message above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output directory (default: nvplugin/api)")
    ns = parser.parse_args()
    if ns.out:
        generate(ns.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        shutil.rmtree(PACKAGE_DIR, ignore_errors=True)
        shutil.copytree(tmp, PACKAGE_DIR)
    print(f"regenerated {PACKAGE_DIR.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
