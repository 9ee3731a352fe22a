"""The package imports one way: no module imports, directly or through others, a module that imports it back;
an import placed inside a function says why (start-up time), and the names shared across layers live in names.py."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dpo_recipes"


def package_imports() -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported package module, line, inside a function)] for every `from .x import` / `from . import x`."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                edges += [(t.split(".")[0], node.lineno, id(node) in nested) for t in targets]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dpo_recipes."):
                edges.append((node.module.split(".")[1], node.lineno, id(node) in nested))
        graph[path.stem] = edges
    return graph


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle_anywhere():
    graph = {m: sorted({t for t, _, _ in edges}) for m, edges in package_imports().items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_find_cycle_finds_one():  # the check above can fail
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None


def test_imports_inside_functions_give_their_reason():
    for module, edges in package_imports().items():
        lines = (PACKAGE / f"{module}.py").read_text().splitlines()
        for target, line, inside in edges:
            if inside:
                above = [l for l in lines[max(0, line - 4):line - 1] if l.strip().startswith("#")]  # the comment above
                text = lines[line - 1] + "".join(above)
                assert "#" in text, f"dpo_recipes/{module}.py:{line}: import of .{target} inside a function, no reason"


def test_bottom_modules_import_nothing_from_the_package():
    graph = package_imports()
    assert graph["names"] == [] and graph["errors"] == []
