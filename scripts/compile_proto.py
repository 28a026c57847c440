"""Generate the committed gRPC stubs from proto/; with --check, fail when they are stale."""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = Path("banditspec") / "v1"


def generate(out_dir: Path) -> list[Path]:
    protos = sorted((PROTO_DIR / PACKAGE).glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_DIR)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p.relative_to(out_dir) for p in (out_dir / PACKAGE).glob("*_pb2*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        committed = sorted(p.relative_to(ROOT) for p in (ROOT / PACKAGE).glob("*_pb2*"))
        if args.check:
            stale = [
                str(p)
                for p in generated
                if not (ROOT / p).exists() or not filecmp.cmp(Path(tmp) / p, ROOT / p, shallow=False)
            ]
            stale += [str(p) for p in committed if p not in generated]
            if stale:
                print("stale gRPC stubs, run scripts/compile_proto.py:", *stale, sep="\n  ")
                return 1
            print(f"{len(generated)} stubs up to date")
            return 0
        for p in committed:
            if p not in generated:
                (ROOT / p).unlink()
        for p in generated:
            (ROOT / p).write_bytes((Path(tmp) / p).read_bytes())
        print(f"wrote {len(generated)} stubs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
