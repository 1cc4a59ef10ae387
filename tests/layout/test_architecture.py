"""The rules the code's layout keeps, read from the imports themselves (module level: what importing a module
pulls in; imports inside functions are deliberate deferrals and are not edges of the layering)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The command line proper: what only the entry point (and the front itself) may import.
COMMAND_LINE = {"distill.front.cli", "distill.front.app", "distill.front.experiments", "distill.front.deploy",
                "distill.front.bench"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] in ("teachers", "students"):  # installed as distill.teachers / distill.students
        parts = ("distill", *parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """Every module a file imports at module level (`from x import y` counts x and x.y: y may be a module)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = {f"{base}.{alias.name}" for alias in node.names}
            # `from pkg import module` needs the module, not the package's contents
            found |= names if names <= set(MODULES) else {base} | names
    return found


SOURCES = {module_name(p): p for folder in ("distill", "teachers", "students") for p in (ROOT / folder).rglob("*.py")}
MODULES = set(SOURCES)
GRAPH = {name: {m for m in top_level_imports(path) if m in SOURCES and m != name} for name, path in SOURCES.items()}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def imports_torch(name: str) -> bool:
    return any(m.split(".")[0] == "torch" for m in top_level_imports(SOURCES[name]))


@pytest.mark.parametrize("name", sorted(n for n in SOURCES if n.startswith("distill.front")))
def test_the_front_imports_no_torch_not_even_through_another_module(name):
    """The command line checks every name, value and path before torch is imported (a typo answers at once)."""
    torch_users = sorted(m for m in {name} | reachable(name) if imports_torch(m))
    assert torch_users == []


def test_nothing_below_the_command_line_imports_it():
    offenders = sorted((name, sorted(GRAPH[name] & COMMAND_LINE)) for name in GRAPH
                       if GRAPH[name] & COMMAND_LINE and not name.startswith("distill.front") and name != "distill.__main__")
    assert offenders == []


@pytest.mark.parametrize("layer, forbidden", [
    ("distill.engine", ("distill.experiments", "distill.bench", "distill.deploy", "distill.front.cli")),
    ("distill.methods", ("distill.models", "distill.teachers", "distill.students", "distill.engine")),
    ("distill.data", ("distill.engine", "distill.models", "distill.methods", "distill.experiments")),
    ("distill.models", ("distill.engine", "distill.methods", "distill.experiments")),
])
def test_each_layer_knows_only_what_is_below_it(layer, forbidden):
    """The engine knows no experiment, benchmark or deployment; a method sees outputs, never networks."""
    offenders = sorted((name, sorted(m for m in GRAPH[name] if m.startswith(forbidden)))
                       for name in GRAPH if name.startswith(layer) and any(m.startswith(forbidden) for m in GRAPH[name]))
    assert offenders == []


def test_no_import_cycles():
    cycles = sorted(name for name in GRAPH if name in reachable(name))
    assert cycles == []


def test_the_rules_see_the_imports():
    """A rule that reads nothing passes by default: the graph must hold the edges everyone knows are there."""
    assert "distill.engine.loop" in GRAPH["distill.engine.run"]
    assert "distill.front.config" in GRAPH["distill.front.cli"]
    assert imports_torch("distill.engine.loop") and not imports_torch("distill.front.config")


# A file outside the repository: the notes folder beside the checkout, anything up from it, a temporary file.
# (A machine's absolute folders, in any tracked file, are tests/layout/test_no_machine_paths.py's.)
OUTSIDE = re.compile(r"(?<![\w.])(?:shared/|\.\./|/tmp/)")


def test_the_code_cites_no_file_outside_the_repository():
    """A source a docstring quotes must be one every reader can open: a paper, a repository, a file in this one."""
    offenders = sorted(f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in SOURCES.values()
                       for number, line in enumerate(path.read_text().splitlines(), 1) if OUTSIDE.search(line))
    assert offenders == []


def layout_parts(readme: str) -> dict[str, str]:
    """README's Layout block by package, as it is laid out: under `distill/`, a line two spaces in that names a
    folder (`  engine/`) opens that package's part, and every line indented deeper belongs to it; a line two
    spaces in that names a file (`  stats.py`) is a module at the top of distill/. The part ends at the next line
    two spaces in; the block's next line at the margin (`teachers/, students/`) ends distill/."""
    section = readme[readme.index("## Layout"):]
    lines = section.split("```")[1].splitlines()
    parts: dict[str, list[str]] = {}
    package = None
    for line in lines[lines.index("distill/") + 1:]:
        indent = len(line) - len(line.lstrip())
        if line.strip() and indent == 0:
            break
        if indent == 2:
            first = line.split()[0]
            package = "distill." + first.removesuffix("/") if first.endswith("/") else "distill"
        if package is not None:
            parts.setdefault(package, []).append(line)
    return {name: "\n".join(text) for name, text in parts.items()}


LISTED = [p for p in sorted((ROOT / "distill").rglob("*.py")) if p.stem not in ("__init__", "__main__")]


def entry(path: Path) -> re.Pattern:
    """A module's entry: its file name as a whole word (`state.py`, never the `state` of "a run's state", nor
    the `options.py` of bench/options.py)."""
    return re.compile(rf"(?<![\w./-]){re.escape(path.name)}\b")


def missing_from_layout(parts: dict[str, str]) -> list[str]:
    """Each module of distill/ whose file name its own package's part of the Layout does not name."""
    return [str(p.relative_to(ROOT)) for p in LISTED
            if not entry(p).search(parts.get(module_name(p).rpartition(".")[0], ""))]


README_PARTS = layout_parts((ROOT / "README.md").read_text())


def test_the_readme_layout_names_every_module_under_its_own_package():
    """README's Layout is how a newcomer finds a module: it names each one where it lives."""
    assert set(README_PARTS) == {module_name(p).rpartition(".")[0] for p in LISTED}  # the block read as laid out
    assert missing_from_layout(README_PARTS) == []


def test_a_module_whose_name_is_deleted_is_missing_though_its_description_stays():
    """engine's `state.py        a run's state and its last.pt/best.pt` without its file name: a bare-name search
    still finds "state" in the description (and "run", "log", "ops" are everywhere); the entry is gone all the same."""
    readme = (ROOT / "README.md").read_text()
    unnamed = readme.replace("    state.py        a run's state", "                    a run's state")
    assert unnamed != readme and "state" in unnamed.split("## Layout")[1]
    assert missing_from_layout(layout_parts(unnamed)) == ["distill/engine/state.py"]


def test_each_entry_counts_only_in_its_own_package():
    """Every module, its entry deleted from its own package's part, is missing: the same name in another part
    (bench/options.py beside front/options.py) or in a description does not stand in for it."""
    for path in LISTED:
        package = module_name(path).rpartition(".")[0]
        without = {**README_PARTS, package: entry(path).sub("", README_PARTS.get(package, ""))}
        assert missing_from_layout(without) == [str(path.relative_to(ROOT))]
