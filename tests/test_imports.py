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
def import_records() -> list[tuple[str, str, list[str], int]]:
    """(importing module, imported module, imported names ([] for `import x`), line) for every
    import of an argen module anywhere in a module's body (lazy imports included)."""
    out = []
    for m, p in module_names().items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                out += [(m, a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "argen"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = pkg
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = anchor + ("." + node.module if node.module else "")
                if base.split(".")[0] == "argen":
                    out.append((m, base, [a.name for a in node.names], node.lineno))
    return out


def import_targets(base: str, names: list[str], mods: dict[str, Path]) -> list[str]:
    """Modules an import reaches: `from a.b import c` is module a.b.c when that exists, else a.b
    (a name that is not a module resolves to the longest module prefix)."""
    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    if not names:
        return [resolve(base)]
    return [f"{base}.{n}" if f"{base}.{n}" in mods else resolve(base) for n in names]


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """module -> argen modules it imports anywhere in its body (lazy imports included)."""
    mods = module_names()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, base, names, _ in import_records():
        graph[m] |= set(import_targets(base, names, mods))
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
