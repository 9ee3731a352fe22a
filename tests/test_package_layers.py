"""The package imports one way, in wings by the stage of a run (dpo_recipes/__init__.py):

- the bottom (errors, names, renames, cli) at the package root imports only the bottom; errors and names nothing;
- data/ never imports train/, train/ never imports report/, nothing outside commands/ imports commands/;
- no module imports, directly or through others, a module that imports it back, and the longest import chain
  (its floors) is at most MAX_FLOORS modules;
- an import placed inside a function says why, in a comment (start-up time, an optional package).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dpo_recipes"
BOTTOM = {"errors", "names", "renames", "cli"}
WINGS = ("data", "models", "train", "report", "commands")
MAX_FLOORS = 7


def module_name(path: Path) -> str:
    """dpo_recipes/train/losses.py -> 'train.losses'; dpo_recipes/errors.py -> 'errors'."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__init__.py"}


def resolve(module: str, node: ast.ImportFrom, known: set[str]) -> list[str]:
    """The package modules an import statement names ('' entries dropped)."""
    if node.level:
        base = module.split(".")[:-node.level] if node.level <= module.count(".") + 1 else []
        stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
    elif (node.module or "") == "dpo_recipes" or (node.module or "").startswith("dpo_recipes."):
        stem = node.module.removeprefix("dpo_recipes").removeprefix(".")
    else:
        return []
    targets = []
    for alias in node.names:
        full = f"{stem}.{alias.name}" if stem else alias.name
        targets.append(full if full in known else stem)  # `from wing import module` or `from module import name`
    return [t for t in targets if t in known]


def package_imports() -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported package module, line, inside a function)]."""
    found = modules()
    graph = {}
    for module, path in found.items():
        tree = ast.parse(path.read_text())
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                edges += [(t, node.lineno, id(node) in nested) for t in resolve(module, node, set(found))]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    name = alias.name.removeprefix("dpo_recipes.")
                    if alias.name.startswith("dpo_recipes.") and name in found:
                        edges.append((name, node.lineno, id(node) in nested))
        graph[module] = edges
    return graph


def wing(module: str) -> str:
    return module.split(".")[0] if "." in module else ""


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


def longest_chain(graph: dict[str, list[str]]) -> list[str]:
    """The longest path of imports (a list of modules; its length is the floors). The graph has no cycle."""
    memo: dict[str, list[str]] = {}

    def chain(node):
        if node not in memo:
            memo[node] = [node, *max((chain(n) for n in graph.get(node, [])), key=len, default=[])]
        return memo[node]

    return max((chain(n) for n in sorted(graph)), key=len, default=[])


def simple_graph() -> dict[str, list[str]]:
    return {m: sorted({t for t, _, _ in edges}) for m, edges in package_imports().items()}


def test_every_module_is_in_the_bottom_or_a_wing():
    stray = [m for m in modules() if (wing(m) not in WINGS if "." in m else m not in BOTTOM)]
    assert stray == [], f"modules outside the bottom and the wings {WINGS}: {stray}"


def test_no_import_circle_anywhere():
    graph = simple_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_longest_import_chain_has_at_most_max_floors():
    chain = longest_chain(simple_graph())
    assert 3 <= len(chain) <= MAX_FLOORS, " -> ".join(chain)


def test_find_cycle_and_longest_chain_can_fail():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert longest_chain({"a": ["b", "d"], "b": ["c"], "c": [], "d": []}) == ["a", "b", "c"]


def test_wings_import_one_way():
    forbidden = {"data": {"train", "report", "commands"}, "train": {"report", "commands"}}
    for module, edges in package_imports().items():
        for target, line, _ in edges:
            where = f"dpo_recipes/{module.replace('.', '/')}.py:{line}"
            assert wing(target) not in forbidden.get(wing(module), set()), f"{where}: {wing(module)}/ imports {target}"
            assert wing(target) != "commands" or wing(module) == "commands", f"{where}: imports {target} (commands/)"


def test_the_bottom_imports_only_the_bottom():
    graph = package_imports()
    assert graph["names"] == [] and graph["errors"] == []
    for module in BOTTOM:
        assert {t for t, _, _ in graph[module]} <= BOTTOM, module


def test_resolve_reads_every_import_form():
    known = {"errors", "train.losses", "train.packing", "data.sources"}
    parse = lambda text: ast.parse(text).body[0]  # noqa: E731
    assert resolve("train.trainer", parse("from .losses import Pairs"), known) == ["train.losses"]
    assert resolve("train.trainer", parse("from ..errors import UserError"), known) == ["errors"]
    assert resolve("train.trainer", parse("from dpo_recipes.data.sources import Source"), known) == ["data.sources"]
    assert resolve("report.audit", parse("from dpo_recipes.train import losses, packing"), known) == [
        "train.losses", "train.packing"]
    assert resolve("report.audit", parse("from torch import nn"), known) == []


def test_imports_inside_functions_give_their_reason():
    for module, edges in package_imports().items():
        lines = modules()[module].read_text().splitlines()
        for target, line, inside in edges:
            if inside:
                above = [l for l in lines[max(0, line - 4):line - 1] if l.strip().startswith("#")]  # the comment above
                text = lines[line - 1] + "".join(above)
                assert "#" in text, f"dpo_recipes/{module.replace('.', '/')}.py:{line}: import of {target} inside a " \
                                    "function, no reason"
