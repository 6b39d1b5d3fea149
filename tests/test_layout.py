"""The shape of the package: no import cycles, short modules, a complete public API.

Read from the source (``ast``), nothing imported but the public names: a cycle or a long module
is named in the failure, so whoever adds it sees where.
"""

from __future__ import annotations

import ast
import importlib
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

#: A module longer than this says why at its top: a line "Long because: ..." in its docstring.
MAX_LINES = 400
LONG_MARKER = "Long because:"


def package_modules() -> dict[str, Path]:
    """Every module of the package by its installed name (``cli/`` installs as ``api_prompt.cli``)."""
    modules = {}
    for top, prefix in (
        (ROOT / "api_prompt", ["api_prompt"]),
        (ROOT / "cli", ["api_prompt", "cli"]),
    ):
        for path in sorted(top.rglob("*.py")):
            parts = prefix + list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = package_modules()


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _runtime_imports(tree: ast.Module):
    """Import statements anywhere (module level, functions, classes), except under TYPE_CHECKING
    (an import only type checkers read is no dependency when the code runs) and in a module's
    ``__getattr__`` (PEP 562: it only forwards an old import path, listed in CHANGELOG.md)."""
    stack: list[ast.AST] = [
        node
        for node in tree.body
        if not (isinstance(node, ast.FunctionDef) and node.name == "__getattr__")
    ]
    while stack:
        node = stack.pop()
        if _is_type_checking_block(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports, resolved to module names.

    ``from package import thing`` counts as importing ``package.thing`` when that is a module,
    else ``package``.
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                for alias in node.names
            ]
        for target in targets:
            # `import api_prompt.a.b` runs a.b; keep the longest name that is one of our modules
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(name, path) for name, path in MODULES.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected group of modules, as the path it takes.

    >>> find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    [['a', 'b', 'c', 'a']]
    >>> find_cycles({"a": {"b"}, "b": set()})
    []
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for group in sorted(groups):  # the group's first module in sorted order starts its cycle
        start, members = group[0], set(group)
        previous = {start: None}
        queue = deque([start])
        while queue:  # breadth first within the group: the shortest way back to the start
            node = queue.popleft()
            if start in graph[node] and node != start or (node == start and start in graph[start]):
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                cycles.append(path[::-1] + [start])
                break
            for nxt in sorted(graph[node] & members):
                if nxt not in previous:
                    previous[nxt] = node
                    queue.append(nxt)
    return cycles


def test_the_import_walk_sees_module_and_function_level_imports():
    graph = import_graph()
    # module level, relative: the Prompter imports the map operations
    assert "api_prompt.maps" in graph["api_prompt.prompter"]
    # cli/ resolves as api_prompt.cli
    assert "api_prompt.cli.common" in graph["api_prompt.cli.app"]
    # function level: the lmms-eval plugin loads the Prompter only when the model is built
    assert any(
        target.startswith("api_prompt.") for target in graph["api_prompt.evaluation.lmms_plugin"]
    )


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (module-level and function-level imports):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles
    )


def test_the_cycle_check_fails_on_a_function_level_cycle():
    """A cycle closed by an import inside a function is found too, and named by its path."""
    graph = import_graph()
    before = find_cycles(graph)
    graph["api_prompt.maps"] = graph["api_prompt.maps"] | {
        "api_prompt.prompter"
    }  # maps -> prompter -> maps
    new = [cycle for cycle in find_cycles(graph) if cycle not in before]
    assert len(new) == 1 and {"api_prompt.maps", "api_prompt.prompter"} <= set(new[0])
    assert new[0][0] == new[0][-1] and all(b in graph[a] for a, b in zip(new[0], new[0][1:]))


def _too_long() -> list[str]:
    long = []
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + (not text.endswith("\n"))
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and LONG_MARKER not in docstring:
            long.append(f"{name} ({path.relative_to(ROOT)}: {lines} lines)")
    return long


def test_no_module_is_long_without_a_reason_at_its_top():
    long = _too_long()
    assert not long, (
        f"modules over {MAX_LINES} lines without a {LONG_MARKER!r} line in their "
        f"docstring: split them, or say why not:\n" + "\n".join(long)
    )


#: What a user imports from ``api_prompt`` itself, and the module each is defined in.
PUBLIC_API = {
    "prompt": "api_prompt.prompter",
    "Prompter": "api_prompt.prompter",
    "AttentionMap": "api_prompt.attention_map",
    "CLIPAttributor": "api_prompt.attribution.clip",
    "SigLIPAttributor": "api_prompt.attribution.clip",
    "LLaVAAttributor": "api_prompt.attribution.llava",
    # the extension points: one registration function each, and the record it registers
    "register_backend": "api_prompt.attribution.registry",
    "BackendSpec": "api_prompt.attribution.registry",
    "register_recipe": "api_prompt.maps",
    "Recipe": "api_prompt.maps",
    "register_decomposition": "api_prompt.attribution.clip",
    "register_style": "api_prompt.styles",
    "Style": "api_prompt.styles",
    "register_target": "api_prompt.targets",
    "TargetSpec": "api_prompt.targets",
    "register_benchmark": "api_prompt.evaluation.benchmarks",
    "Benchmark": "api_prompt.evaluation.benchmarks",
    "register_output_format": "api_prompt.batch.formats",
    "OutputFormat": "api_prompt.batch.formats",
    # the target protocol, and scoring one answer
    "Target": "api_prompt.targets",
    "score": "api_prompt.evaluation",
    "evaluate": "api_prompt.evaluation.runner",
}


@pytest.mark.parametrize("name", sorted(PUBLIC_API))
def test_public_api_is_importable_from_the_package(name):
    import api_prompt

    namespace: dict = {}
    exec(f"from api_prompt import {name}", namespace)  # the import statement a user writes
    assert namespace[name] is getattr(importlib.import_module(PUBLIC_API[name]), name)
    assert name in api_prompt.__all__ and name in dir(api_prompt)


def test_every_listed_public_name_resolves():
    import api_prompt

    missing = [name for name in api_prompt.__all__ if not hasattr(api_prompt, name)]
    assert not missing


def test_type_checkers_see_the_same_public_names():
    """``api_prompt/__init__.py`` imports each lazy public name under TYPE_CHECKING, so that
    ``from api_prompt import Prompter`` is typed; that block names the modules ``__getattr__`` uses."""
    import api_prompt

    tree = ast.parse((ROOT / "api_prompt" / "__init__.py").read_text(encoding="utf-8"))
    typed = {}
    for node in ast.walk(tree):
        if _is_type_checking_block(node):
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom) and statement.level == 1
                for alias in statement.names:
                    typed[alias.asname or alias.name] = f"api_prompt.{statement.module}"
    public = dict(api_prompt._PUBLIC)
    assert set(typed) == set(public)
    assert sorted(api_prompt.__all__) == sorted([*public, "__version__"])
    for name, module in typed.items():
        assert getattr(importlib.import_module(module), name) is getattr(api_prompt, name), name


def test_each_extension_point_keeps_a_runnable_example():
    """``--doctest-modules`` runs whatever examples there are; this keeps them from all going
    away where they matter most: every module that defines a registration function runs at least
    one example (not marked +SKIP) in its docstrings."""
    import doctest

    import api_prompt

    without = []
    for name in (name for name in api_prompt.__all__ if name.startswith("register_")):
        module_name = getattr(api_prompt, name).__module__
        module = importlib.import_module(module_name)
        examples = [
            example
            for test in doctest.DocTestFinder().find(module, module_name)
            for example in test.examples
            if not example.options.get(doctest.SKIP)
        ]
        if not examples:
            without.append(f"{module_name} (defines {name})")
    assert not without, "no runnable docstring example in: " + ", ".join(without)
