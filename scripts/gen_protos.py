"""Regenerate the Python stubs of the wire contract from protos/edgefleet/v1/*.proto.

Usage:
    python scripts/gen_protos.py            # rewrite protos/edgefleet/v1/*_pb2*.py
    python scripts/gen_protos.py --check    # exit 1 if the committed stubs are stale

The .proto files import each other as "edgefleet/v1/x.proto" (the path other
languages see); the generated Python imports are rewritten to live under the
``protos`` package so that the stubs need no sys.path tricks.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_DIR = PROTO_ROOT / "edgefleet" / "v1"
_IMPORT = re.compile(r"^from edgefleet\.v1 import ", re.MULTILINE)


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc into out_dir and return {file name: rewritten text}."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency only

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    result = {}
    for path in sorted((out_dir / "edgefleet" / "v1").glob("*_pb2*.py*")):
        text = _IMPORT.sub("from protos.edgefleet.v1 import ", path.read_text())
        result[path.name] = text
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    committed = {p.name: p.read_text() for p in PROTO_DIR.glob("*_pb2*.py*")}
    if opts.check:
        stale = sorted(set(fresh) ^ set(committed)) + sorted(
            name for name in fresh.keys() & committed.keys() if fresh[name] != committed[name]
        )
        for name in stale:
            diff = difflib.unified_diff(
                committed.get(name, "").splitlines(), fresh.get(name, "").splitlines(), name, "fresh", lineterm=""
            )
            print("\n".join(list(diff)[:20]), file=sys.stderr)
        if stale:
            print(f"stale stubs: {', '.join(stale)}; run: python scripts/gen_protos.py", file=sys.stderr)
            return 1
        print("stubs are up to date")
        return 0
    for name in set(committed) - set(fresh):
        (PROTO_DIR / name).unlink()
    for name, text in fresh.items():
        (PROTO_DIR / name).write_text(text)
    print(f"wrote {len(fresh)} files to {PROTO_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
