"""Dependencies point one way: each package imports only the packages below it (README's layout).

Every import of every module of our packages counts, wherever it stands (inside a function, under
`if TYPE_CHECKING:`). bench/ and tests/ may import anything and are not checked.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Package -> the modules of ours it may import, besides itself and third-party code. A module
# allows itself and its submodules ("fedq.errors" allows `from fedq.errors import ConfigError`).
ALLOWED: dict[str, frozenset[str]] = {
    "proto": frozenset(),
    "quant": frozenset({"proto"}),
    "fedq": frozenset({"quant", "proto"}),
    "strategies": frozenset({"fedq", "quant", "proto"}),
    "client": frozenset({"fedq", "quant", "proto"}),
    "server": frozenset({"strategies", "fedq", "quant", "proto"}),
    # A service of its own: the telemetry contract, and the core's error types only.
    "monitor": frozenset({"proto", "fedq.errors"}),
    "cli": frozenset({"proto", "quant", "fedq", "strategies", "client", "server", "monitor"}),
}
PACKAGES = frozenset(ALLOWED)


@dataclass(frozen=True)
class Violation:
    """An import that points the wrong way."""

    path: str  # the importing file, relative to the repository root
    line: int
    imported: str  # the imported module, dotted

    def __str__(self) -> str:
        package = self.path.split("/")[0]
        allowed = ", ".join(sorted(ALLOWED[package])) or "nothing of ours"
        return (
            f"{self.path}:{self.line} imports {self.imported}; "
            f"{package}/ may import only itself, third-party code and {allowed}"
        )


def module_name(path: str) -> str:
    """The dotted module name of a repository-relative .py path ("a/b/__init__.py" -> "a.b")."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: str, source: str) -> list[tuple[int, tuple[str, ...]]]:
    """Per name imported in `source`: its line and the dotted modules it may be.

    `from a import b` imports the module `a.b` or the name `b` of module `a`, so it may be
    either; relative imports are resolved against `path`'s package.
    """
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    found: list[tuple[int, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, (alias.name,)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, (base, f"{base}.{alias.name}")) for alias in node.names]
    return found


def _allows(allowed: frozenset[str], module: str) -> bool:
    return any(module == prefix or module.startswith(f"{prefix}.") for prefix in allowed)


def check_source(path: str, source: str) -> list[Violation]:
    """The imports in `source` (the file at repository-relative `path`) that break ALLOWED."""
    package = path.split("/")[0]
    allowed = ALLOWED[package] | {package}
    violations = []
    for line, readings in imported_names(path, source):
        if readings[0].split(".")[0] not in PACKAGES:
            continue  # the standard library or a third-party package
        if not any(_allows(allowed, module) for module in readings):
            violations.append(Violation(path, line, readings[-1]))
    return violations


def our_modules() -> list[Path]:
    """Every .py file of our packages, generated protobuf modules included."""
    return sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py"))


def test_every_package_exists() -> None:
    missing = [package for package in sorted(PACKAGES) if not (REPO_ROOT / package).is_dir()]
    assert not missing, f"packages named in ALLOWED but not in the repository: {missing}"


def test_imports_point_one_way() -> None:
    violations = [
        violation
        for path in our_modules()
        for violation in check_source(path.relative_to(REPO_ROOT).as_posix(), path.read_text())
    ]
    assert not violations, "imports that point the wrong way:\n" + "\n".join(map(str, violations))


@pytest.mark.parametrize(
    ("path", "source", "imported"),
    [
        ("monitor/store.py", "def f():\n    import server.metering\n", "server.metering"),
        ("monitor/store.py", "from fedq import runconfig\n", "fedq.runconfig"),
        ("monitor/store.py", "import fedq\n", "fedq"),
        ("fedq/data.py", "from server.telemetry import Telemetry\n", "server.telemetry.Telemetry"),
        ("proto/generate.py", "if True:\n    from quant import formats\n", "quant.formats"),
        ("client/training.py", "from strategies.fedau import FedAU\n", "strategies.fedau.FedAU"),
        ("monitor/settings.py", "from fedq import errors, runconfig\n", "fedq.runconfig"),
    ],
)
def test_the_checker_catches_a_wrong_way_import(path: str, source: str, imported: str) -> None:
    (violation,) = check_source(path, source)
    assert violation.imported == imported
    message = str(violation)
    assert message.startswith(f"{path}:")
    assert imported in message and "may import only" in message


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("monitor/settings.py", "from fedq.errors import ConfigError\n"),
        ("monitor/settings.py", "from fedq import errors\n"),
        ("monitor/api/rounds.py", "from ..deps import RunDep\nfrom . import schemas\n"),
        ("monitor/main.py", "import fastapi\nfrom proto import telemetry_pb2\n"),
        ("server/telemetry/__init__.py", "from fedq.runconfig import RunConfig\n"),
        ("cli/main.py", "from monitor.service import serve\nfrom server import server_app\n"),
    ],
)
def test_the_checker_lets_allowed_imports_pass(path: str, source: str) -> None:
    assert check_source(path, source) == []
