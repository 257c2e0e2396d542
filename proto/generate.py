"""Regenerate the Python modules of every `proto/*.proto` file with grpc_tools.protoc.

Run from anywhere as `python -m proto.generate`. The repository root is the include path, so
the generated gRPC stubs import their messages as `from proto import telemetry_pb2` and work
as modules of the package `proto` without any rewriting. No `.pyi` stubs: ruff would lint
them (pyproject excludes only the generated `.py` files).
"""

from __future__ import annotations

import argparse
import logging
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent

log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """protoc refused a .proto file."""


def proto_files() -> list[Path]:
    """The .proto files in `proto/`, sorted by name."""
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_root: Path = REPO_ROOT) -> list[Path]:
    """Generate `*_pb2.py` and `*_pb2_grpc.py` under `out_root/proto/`.

    Returns the generated files. `out_root` is the repository root for the committed modules,
    or a scratch directory to compare a fresh generation with them.
    """
    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    sources = [str(p.relative_to(REPO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"--proto_path={REPO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise GenerationError(f"protoc failed on {', '.join(sources)}")
    return generated_files(out_root)


def generated_files(out_root: Path = REPO_ROOT) -> list[Path]:
    """The generated modules under `out_root/proto/`, sorted by name."""
    patterns = ("*_pb2.py", "*_pb2_grpc.py")
    return sorted(p for pattern in patterns for p in (out_root / "proto").glob(pattern))


def main() -> None:
    """Command line: regenerate the committed modules (or into `--out`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="root to generate under")
    out = parser.parse_args().out
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in generate(out):
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
