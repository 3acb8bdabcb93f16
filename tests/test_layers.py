"""The package's layers (`fcdpo.LAYERS`): no module imports from a layer above its own, none is left out of
the table, and no modules import each other in a circle. Imports inside functions count like any other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fcdpo
from fcdpo import LAYERS

PACKAGE = Path(fcdpo.__file__).parent
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}


def module_name(path: Path) -> str:
    """`tasks.fol` for src/fcdpo/tasks/fol.py, `tasks` for its __init__.py, "" for the package itself."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def fcdpo_imports(source: str, module: str, modules: set[str]) -> list[tuple[int, str]]:
    """`(line, module)` for every import of an fcdpo module in `source`, at any depth (functions, classes,
    `if TYPE_CHECKING:`), relative ones resolved; `from fcdpo.x import name` is an import of `x` unless
    `x.name` is a module itself. Modules are named as in `LAYERS`; "" is the package itself."""
    found = []
    parts = module.split(".") if module else []
    package = parts if MODULES.get(module, Path()).name == "__init__.py" else parts[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = ".".join(["fcdpo", *package[: len(package) - (node.level - 1)], *([base] if base else [])])
            names = [f"{base}.{alias.name}" for alias in node.names]
            names = [name if name.removeprefix("fcdpo.") in modules else base for name in names]
        else:
            continue
        for name in names:
            if name == "fcdpo" or name.startswith("fcdpo."):
                found.append((node.lineno, _known(name.removeprefix("fcdpo").removeprefix("."), modules)))
    return found


def _known(name: str, modules: set[str]) -> str:
    """The module a dotted name imports: the name itself, or the nearest package above it."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def upward_imports(imports: dict[str, list[tuple[int, str]]], layer_of: dict[str, int]) -> list[str]:
    """One message per import of a module in a higher layer than the importer's."""
    names = [name for name, _ in LAYERS]
    problems = []
    for module, found in sorted(imports.items()):
        for line, target in found:
            if module not in layer_of or target not in layer_of:
                continue  # a module missing from the table fails its own test
            if target != module and layer_of[target] > layer_of[module]:
                problems.append(
                    f"fcdpo.{module} (layer {layer_of[module] + 1}, {names[layer_of[module]]}) imports "
                    f"fcdpo.{target} (layer {layer_of[target] + 1}, {names[layer_of[target]]}) at line {line}: "
                    "a module may import only from its own layer and the layers below it")
    return problems


def circles(imports: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """The groups of two or more modules that import each other in a loop (strongly connected components)."""
    graph = {module: sorted({target for _, target in found if target and target != module})
             for module, found in imports.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, []):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return found


IMPORTS = {module: fcdpo_imports(path.read_text(encoding="utf-8"), module, set(MODULES))
           for module, path in MODULES.items()}


def test_every_module_has_one_layer_and_the_table_names_only_modules():
    listed = [module for _, modules in LAYERS for module in modules]
    assert len(listed) == len(set(listed)), "a module is listed in two layers"
    missing = sorted(set(MODULES) - set(listed) - {""})
    assert not missing, f"not in fcdpo.LAYERS: {['fcdpo.' + m for m in missing]}; add each to the layer it belongs to"
    stale = sorted(set(listed) - set(MODULES))
    assert not stale, f"fcdpo.LAYERS names modules that do not exist: {stale}"


def test_no_module_imports_from_a_layer_above_its_own():
    problems = upward_imports({m: found for m, found in IMPORTS.items() if m}, LAYER_OF)
    assert not problems, "\n".join(problems)


def test_no_modules_import_each_other_in_a_circle():
    found = circles(IMPORTS)
    assert not found, "modules that import each other in a circle: " + "; ".join(
        ", ".join(f"fcdpo.{module}" for module in group) for group in found)


def test_the_package_map_imports_nothing_of_fcdpo():
    assert IMPORTS[""] == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_each_module_docstring_says_its_job_then_its_layer(module):
    docstring = ast.get_docstring(ast.parse(MODULES[module].read_text(encoding="utf-8"))) or ""
    if module not in LAYER_OF:
        pytest.fail(f"fcdpo.{module} is not in fcdpo.LAYERS")
    layer = LAYERS[LAYER_OF[module]][0]
    assert docstring.strip(), f"fcdpo.{module} has no docstring saying what it is for"
    assert f"Layer: {layer}" in docstring, f"fcdpo.{module}'s docstring should say 'Layer: {layer}' and what it imports"


# The checks themselves, on made-up modules: they must see what they are meant to see.


def test_an_upward_import_inside_a_function_is_found_and_named():
    source = "def f():\n    from fcdpo.agent import Agent\n"
    imports = {"settings": fcdpo_imports(source, "settings", set(MODULES)), "agent": []}
    [problem] = upward_imports(imports, LAYER_OF)
    assert problem.startswith("fcdpo.settings (layer 1, settings and formats) imports fcdpo.agent (layer 5, agents) "
                              "at line 2")


def test_imports_of_submodules_relative_imports_and_type_checking_blocks_are_all_seen():
    source = ("from typing import TYPE_CHECKING\nfrom fcdpo import prefix_attention\nimport fcdpo.tasks.fol\n"
              "from .records import BadRow\nif TYPE_CHECKING:\n    from fcdpo.config import Profile\n")
    assert fcdpo_imports(source, "tasks.sources", set(MODULES)) == [
        (2, "prefix_attention"), (3, "tasks.fol"), (4, "tasks.records"), (6, "config")]


def test_a_circle_through_a_function_level_import_is_found():
    imports = {"a": [(1, "b")], "b": [(9, "c")], "c": [(4, "a")], "d": [(1, "a")]}
    assert circles(imports) == [["a", "b", "c"]]
