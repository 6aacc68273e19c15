"""One-way dependencies between models and sampling, and no private names across packages.

Checked on the source (the AST), module-level and lazy (function-level) imports alike:

- a model family module (anything under `argen.models` but the contract, `argen.models.base`)
  never imports `argen.sampling`: sampling depends on models' public surface, not the reverse;
- no `argen.sampling` module imports a model family, nor reads a private attribute of any object
  but its own (`self._x`), so a sampler uses what a model offers, never its internals;
- no module imports a private (underscore) name or module from another package.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.test_imports import module_names

#: Modules of `argen.models` that are the contract, not a model family.
MODEL_CONTRACT = {"argen.models", "argen.models.base"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package(module: str) -> str:
    """The package a module belongs to: argen.<first part> (argen.sampling, argen.nn, ...; a
    top-level module such as argen.cli or argen.runs is a package of its own)."""
    return ".".join(module.split(".")[:2])


@functools.lru_cache(maxsize=1)
def imports() -> list[tuple[str, str, list[str], int]]:
    """(importing module, imported module, imported names ([] for `import x`), line) for every
    import of an argen module anywhere in a module's body."""
    mods = module_names()
    out = []
    for m, p in mods.items():
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


def _targets(base: str, names: list[str], mods: dict[str, Path]) -> list[str]:
    """Modules an import reaches: `from a.b import c` is module a.b.c when that exists, else a.b."""
    if not names:
        return [base]
    return [f"{base}.{n}" if f"{base}.{n}" in mods else base for n in names]


def _is_family(module: str) -> bool:
    return (module == "argen.models" or module.startswith("argen.models.")) and module not in MODEL_CONTRACT


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_model_families_never_import_sampling():
    mods = module_names()
    bad = [f"{m}:{line} imports {t}" for m, base, names, line in imports() if _is_family(m)
           for t in _targets(base, names, mods) if _in(t, "argen.sampling")]
    assert not bad, "model family modules reach sampling only through ARModel.sample/complete:\n" + "\n".join(bad)


def test_the_model_contract_reaches_sampling_only_through_its_package():
    """argen.models.base imports `argen.sampling` (the package's entry points) lazily, nothing deeper."""
    mods = module_names()
    bad = [f"{m}:{line} imports {base}" for m, base, names, line in imports() if m == "argen.models.base"
           and _in(base, "argen.sampling") and base != "argen.sampling"]
    assert not bad, "\n".join(bad)
    top_level = [n for n in ast.parse(mods["argen.models.base"].read_text()).body
                 if isinstance(n, (ast.Import, ast.ImportFrom)) and "sampling" in ast.unparse(n)]
    assert not top_level, "argen.models.base imports sampling at module level: " + ast.unparse(top_level[0])


def test_sampling_never_imports_a_model_family():
    mods = module_names()
    bad = [f"{m}:{line} imports {t}" for m, base, names, line in imports() if _in(m, "argen.sampling")
           for t in _targets(base, names, mods) if _is_family(t)]
    assert not bad, "sampling depends on models' public surface, never on a family module:\n" + "\n".join(bad)


def test_sampling_reads_no_private_attributes_of_other_objects():
    bad = []
    for m, p in module_names().items():
        if not _in(m, "argen.sampling"):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    bad.append(f"{m}:{node.lineno} reads {ast.unparse(node)}")
    assert not bad, "\n".join(bad)


def test_no_private_names_imported_across_packages():
    mods = module_names()
    bad = []
    for m, base, names, line in imports():
        here = _package(m)
        if not names:  # import a.b._c
            if any(_private(part) for part in base.split(".")) and not _in(base, here):
                bad.append(f"{m}:{line} imports private module {base}")
            continue
        for n in names:
            target = f"{base}.{n}" if f"{base}.{n}" in mods else base
            if _in(target, here):
                continue
            if _private(n) or any(_private(part) for part in base.split(".")):
                bad.append(f"{m}:{line} imports {base}.{n}")
    assert not bad, "private names stay inside their package:\n" + "\n".join(bad)


def test_the_rules_see_lazy_imports():
    """The walker reads function bodies too (a lazy import is still a dependency)."""
    seen = {(m, base) for m, base, _, _ in imports()}
    assert ("argen.models.base", "argen.sampling") in seen  # imported inside sample()/complete()


def test_every_model_declares_a_registered_stepper_kind():
    import argen
    from argen.registry import get_entry
    from argen.sampling import stepper_kinds

    for name in argen.list_models():
        kind = get_entry(name).cls.capabilities.stepper_kind
        assert kind in stepper_kinds(), (name, kind)
