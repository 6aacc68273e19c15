"""The import graph keeps its one-way rules (checked on the source, not by importing it)."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """module -> argen modules it imports anywhere in its body (lazy imports included)."""
    mods = module_names()

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                graph[m] |= {resolve(a.name) for a in node.names if a.name.startswith("argen")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = pkg
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = anchor + ("." + node.module if node.module else "")
                if base.startswith("argen"):
                    graph[m] |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else resolve(base) for a in node.names}
    return graph


def test_only_the_entry_point_imports_the_cli():
    users = sorted(m for m, deps in import_graph().items() if "argen.cli" in deps and m not in ("argen.cli", "argen.__main__"))
    assert users == [], f"modules importing argen.cli (use argen.runs for shared helpers): {users}"


def test_command_modules_do_not_import_each_other():
    commands = {"argen.cli", "argen.compress.commands", "argen.metrics.commands"}
    graph = import_graph()
    bad = {m: sorted(graph[m] & commands - {m}) for m in commands - {"argen.cli"} if graph[m] & commands - {m}}
    assert not bad, bad


def test_metric_networks_do_not_import_the_extractor_factory():
    graph = import_graph()  # features builds extractors from the networks, never the reverse
    for net in ("argen.metrics.mnist_net", "argen.metrics.weights"):
        assert "argen.metrics.features" not in graph[net], net
