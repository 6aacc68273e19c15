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

from tests.test_imports import import_records, import_targets, module_names

#: Modules of `argen.models` that are the contract, not a model family.
MODEL_CONTRACT = {"argen.models", "argen.models.base"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package(module: str) -> str:
    """The package a module belongs to: argen.<first part> (argen.sampling, argen.nn, ...; a
    top-level module such as argen.cli or argen.runs is a package of its own)."""
    return ".".join(module.split(".")[:2])


def _is_family(module: str) -> bool:
    return (module == "argen.models" or module.startswith("argen.models.")) and module not in MODEL_CONTRACT


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_model_families_never_import_sampling():
    mods = module_names()
    bad = [f"{m}:{line} imports {t}" for m, base, names, line in import_records() if _is_family(m)
           for t in import_targets(base, names, mods) if _in(t, "argen.sampling")]
    assert not bad, "model family modules reach sampling only through ARModel.sample/complete:\n" + "\n".join(bad)


def test_the_model_contract_reaches_sampling_only_through_its_package():
    """argen.models.base imports `argen.sampling` (the package's entry points) lazily, nothing deeper."""
    mods = module_names()
    bad = [f"{m}:{line} imports {base}" for m, base, names, line in import_records() if m == "argen.models.base"
           and _in(base, "argen.sampling") and base != "argen.sampling"]
    assert not bad, "\n".join(bad)
    top_level = [n for n in ast.parse(mods["argen.models.base"].read_text()).body
                 if isinstance(n, (ast.Import, ast.ImportFrom)) and "sampling" in ast.unparse(n)]
    assert not top_level, "argen.models.base imports sampling at module level: " + ast.unparse(top_level[0])


def test_sampling_never_imports_a_model_family():
    mods = module_names()
    bad = [f"{m}:{line} imports {t}" for m, base, names, line in import_records() if _in(m, "argen.sampling")
           for t in import_targets(base, names, mods) if _is_family(t)]
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
    for m, base, names, line in import_records():
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


def test_the_rules_see_lazy_import_records():
    """The walker reads function bodies too (a lazy import is still a dependency)."""
    seen = {(m, base) for m, base, _, _ in import_records()}
    assert ("argen.models.base", "argen.sampling") in seen  # imported inside sample()/complete()


def test_every_model_declares_a_registered_stepper_kind():
    import argen
    from argen.registry import get_entry
    from argen.sampling import stepper_kinds

    for name in argen.list_models():
        kind = get_entry(name).cls.capabilities.stepper_kind
        assert kind in stepper_kinds(), (name, kind)
