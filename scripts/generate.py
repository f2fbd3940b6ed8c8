"""Generate Python stubs (messages, gRPC services, mypy .pyi) from protos/ into a folder.

Usage: python scripts/generate.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_INIT = '"""Generated from protos/ by `make generate`. Do not edit."""\n'


def main(out_dir: str) -> int:
    out = Path(out_dir)
    # protoc finds the mypy plugins (protoc-gen-mypy*) on PATH, next to this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    for package_dir in {Path(p).parent for p in protos}:
        # Every folder on the way is a regular package, so `loyalty.v1.*` imports cleanly.
        for part in [package_dir, *package_dir.parents][:-1]:
            (out / part).mkdir(parents=True, exist_ok=True)
            (out / part / "__init__.py").write_text(PACKAGE_INIT)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "generated")))
