"""The codebase's layering, checked from the source: the runtime library imports no service, no import
circle exists, the round loop speaks no protobuf, and no file names a package mirror's host."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("banditspec", "services")
# Not the project's files: VCS data, the virtual environment, caches and run outputs.
SKIPPED = (".git/", ".venv/", ".hypothesis/", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/", "results/", "build/")
MIRROR_HOSTS = ("deb.debian.org", "pypi.org", "files.pythonhosted.org", "download.pytorch.org", "--index-url")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "/v1/" not in path.as_posix():  # generated stubs
                found[module_name(path)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of this project that `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in known:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def test_the_runtime_library_imports_no_service():
    offenders = {
        name: sorted(d for d in deps if d.startswith("services"))
        for name, deps in graph().items()
        if name.startswith("banditspec") and not name.startswith("banditspec.cli")
    }
    assert {name: deps for name, deps in offenders.items() if deps} == {}


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if dep == node:
                continue
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_round_loop_speaks_no_protobuf():
    source = (ROOT / "services/controller/generation.py").read_text()
    tree = ast.parse(source)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not any(name.endswith(("_pb2", "_pb2_grpc")) for name in imported)
    assert "grpc" not in {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def test_no_file_names_a_package_mirror():
    offenders = []
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(SKIPPED) or "__pycache__" in path.parts or ".egg-info/" in relative:
            continue
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        if relative == "tests/unit/test_layers.py":
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        offenders += [f"{relative}: {host}" for host in MIRROR_HOSTS if host in text]
    assert offenders == []
