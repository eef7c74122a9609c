"""The server's packages import only downwards (docs/architecture.md).

routes -> services -> {models, jobs} -> {store, engine}; protocol (the wire format) and
modelfiles (file-format facts) are leaves anyone above the engine may read. Read from the
source (every import, function-level ones included), so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> the server packages (and outside libraries) it must not import
FORBIDDEN: dict[str, set[str]] = {
    "routes": {"engine", "models", "store", "jobs"},
    "services": {"routes", "app", "starlette", "uvicorn", "sse_starlette"},
    "models": {"routes", "services", "jobs", "app", "starlette"},
    "jobs": {"routes", "services", "app", "starlette"},
    "store": {"engine", "models", "services", "jobs", "routes", "app", "starlette"},
    "engine": {"models", "store", "services", "jobs", "routes", "protocol", "app", "starlette"},
    "protocol": {"engine", "models", "store", "services", "jobs", "routes", "app"},
}


def imports_of(path: Path) -> set[str]:
    """Top names imported by a module: `server.x` as `x`, outside packages by their name."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "server":
                names = [f"server.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            out.add(parts[1] if parts[0] == "server" and len(parts) > 1 else parts[0])
    return out


def violations(root: Path) -> list[str]:
    """Every forbidden import under `root`/server, as `server/pkg/mod.py imports x`."""
    found = []
    for package, banned in FORBIDDEN.items():
        for module in sorted((root / "server" / package).rglob("*.py")):
            for name in sorted(imports_of(module) & banned):
                found.append(f"{module.relative_to(root)} imports {name}")
    return found


def package_cycles(root: Path) -> list[tuple[str, str]]:
    """Pairs of server packages that import each other."""
    edges: dict[str, set[str]] = {}
    for package in FORBIDDEN:
        for module in (root / "server" / package).rglob("*.py"):
            edges.setdefault(package, set()).update(imports_of(module) & set(FORBIDDEN))
    return sorted((a, b) for a in edges for b in edges[a] if a < b and a in edges.get(b, set()))


def test_the_server_packages_keep_their_layers() -> None:
    assert violations(ROOT) == []


def test_no_two_server_packages_import_each_other() -> None:
    assert package_cycles(ROOT) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("engine/x.py", "from server.models.store import ModelCatalog\n", "imports models"),
        ("protocol/x.py", "def f():\n    import server.engine.base\n", "imports engine"),
        ("services/x.py", "from starlette.requests import Request\n", "imports starlette"),
        ("routes/x.py", "from server import store\n", "imports store"),
    ],
)
def test_the_checker_catches_a_broken_rule(
    tmp_path: Path, module: str, source: str, expected: str
) -> None:
    path = tmp_path / "server" / module
    path.parent.mkdir(parents=True)
    path.write_text(source)
    assert violations(tmp_path) == [f"server/{module} {expected}"]


def test_the_checker_catches_a_cycle(tmp_path: Path) -> None:
    for package, target in (("models", "jobs"), ("jobs", "models")):
        (tmp_path / "server" / package).mkdir(parents=True)
        (tmp_path / "server" / package / "m.py").write_text(f"import server.{target}.m\n")
    assert package_cycles(tmp_path) == [("jobs", "models")]


def test_the_conversation_format_imports_none_of_its_users() -> None:
    users = {"server", "finetune", "datalab"}
    for module in sorted((ROOT / "chatfmt").rglob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & users, module
