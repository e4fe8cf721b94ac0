"""Generate the Python protobuf/gRPC code and .pyi stubs under clients/tocsin/v1.

The one pinned way to regenerate: `python scripts/gen_protos.py` (grpcio-tools and
mypy-protobuf versions are pinned in pyproject's dev extra). `--check` regenerates into a
temporary folder and exits 1 if the committed files differ, so CI catches stale code.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "clients"
PACKAGE_DIR = Path("tocsin") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_root: Path) -> list[Path]:
    protos = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(
        p for p in (out_root / PACKAGE_DIR).iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    )


def committed_files() -> list[Path]:
    return sorted(p for p in (OUT / PACKAGE_DIR).iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        fresh_names = {p.name for p in fresh}
        old_names = {p.name for p in committed_files()}
        stale = sorted(fresh_names ^ old_names)
        stale += [
            p.name
            for p in fresh
            if p.name in old_names and not filecmp.cmp(p, OUT / PACKAGE_DIR / p.name, False)
        ]
    if stale:
        print("generated code is stale; run `python scripts/gen_protos.py`:", *stale)
        return 1
    print("generated code is current")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    if parser.parse_args().check:
        return check()
    for old in committed_files():
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copy(path, OUT / PACKAGE_DIR / path.name)
    print("generated", *(p.name for p in committed_files()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
