"""The layering docs/architecture.md describes, checked on the source: no import cycle among nisbflow's modules, a
command line that only parses, calls one library entry and prints, and size budgets for commands, functions and
modules. Budgets count statements (every statement node, nested ones included), not lines, so that the formatter
(ruff format) can wrap a call over several lines without moving a function over its budget."""

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"nisbflow": ROOT / "nisbflow", "nisbflow_cli": ROOT / "cli"}
CLI_MAY_IMPORT = {"nisbflow", "nisbflow.jobs", "nisbflow.errors", "nisbflow.view", "nisbflow.tasks"}
"""What the command line may import from the library: its version, the entries, the error base class, the viewer it
serves, and the interrupt flag its signal handler sets (nisbflow.tasks: INTERRUPTED, nothing that computes)."""
LONGEST_COMMAND_BODY = 18
"""Statements of a command's body (docstring left out): parse, call one entry, print; about 20 lines."""


def statements(nodes) -> int:
    """Statements in ``nodes`` and everything nested in them (a compound statement counts, and so does each
    statement in its blocks)."""
    return sum(1 for node in nodes for inner in ast.walk(node) if isinstance(inner, ast.stmt))


def body_of(node) -> list:
    """A function's body without its docstring."""
    docstring = isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant)
    return node.body[1:] if docstring else node.body


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = (package,) + path.relative_to(folder).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(name: str, path: Path, known) -> set[str]:
    """Every module of ours that ``name`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)  # a package importing its own parent runs no code twice
    return targets


def test_no_import_cycle():
    known = modules()
    graph = nx.DiGraph()
    for name, path in known.items():
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in imports(name, path, known))
    assert graph.number_of_edges() > 100  # the walk found the imports
    cycles = list(nx.simple_cycles(graph))
    assert cycles == [], f"import cycles: {cycles}"


def test_the_command_line_only_calls_library_entries():
    """cli/ creates no cluster, stages no output, resolves no settings and computes no metric: it imports only the
    library entries (nisbflow.jobs) and the few things named in CLI_MAY_IMPORT."""
    known = modules()
    used = {target for name, path in known.items() if name.startswith("nisbflow_cli")
            for target in imports(name, path, known) if not target.startswith("nisbflow_cli")}
    assert "nisbflow.jobs" in used
    assert used <= CLI_MAY_IMPORT, f"the CLI reaches past the library entries: {sorted(used - CLI_MAY_IMPORT)}"
    for path in PACKAGES["nisbflow_cli"].glob("*.py"):
        text = path.read_text()
        for word in ("LocalCluster", "Client(", "StagedRun", "resolve_settings", "compute_tasks", "cluster_client"):
            assert word not in text, f"{path.name} uses {word}"


def test_no_command_body_is_long():
    """Each command (a function under @app.command / @…_app.command) is parsing, one call and printing: its body,
    docstring left out, at most LONGEST_COMMAND_BODY statements."""
    commands = 0
    for path in PACKAGES["nisbflow_cli"].glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            decorated = [ast.unparse(d) for d in node.decorator_list]
            if not any(".command(" in d or d.endswith(".command()") for d in decorated):
                continue
            commands += 1
            count = statements(body_of(node))
            assert count <= LONGEST_COMMAND_BODY, f"{path.name}: {node.name} has {count} statements"
    assert commands == 20  # every command was looked at


def test_the_conventions_cited_live_in_the_repository():
    """Code, tests and docs cite docs/design.md for the conventions (XYZ, source-voxel affinities, window geometry,
    NERL): it exists, holds each of them, and nothing points at a brief outside the repository."""
    design = (ROOT / "docs" / "design.md").read_text()
    for heading in ("## Axes and layout", "## Affinities", "## Sliding window", "## Decoding", "## NERL"):
        assert heading in design
    outside = [str(path.relative_to(ROOT)) for folder in ("nisbflow", "cli", "tests", "docs", "benchmarks")
               for path in (ROOT / folder).rglob("*") if path.suffix in {".py", ".md", ".yaml"}
               and "shared/" + "DESIGN" in path.read_text(errors="replace")]
    assert outside == []
    cited = [path for path in (ROOT / "nisbflow").rglob("*.py") if "docs/design.md" in path.read_text()]
    assert len(cited) >= 5


WRITTEN_ONCE = {
    "torch.load(": "nisbflow/model/reader.py",  # checkpoints: one read, one hash, one dispatch on the layout
    "hashlib.sha256(data)": "nisbflow/model/reader.py",
    "yaml.safe_load(path.read_text())": "nisbflow/config/tree.py",  # configuration files and their _base_ files
    '"_base_"': "nisbflow/config/tree.py",
}
"""Basics with one home: the text that does the job appears in no other module of the library (docs/architecture.md,
"shared basics")."""


def test_shared_basics_are_written_once():
    for text, home in WRITTEN_ONCE.items():
        holders = sorted(str(path.relative_to(ROOT)) for folder in PACKAGES.values() for path in folder.rglob("*.py")
                         if text in path.read_text())
        assert holders == [home], f"{text!r} is written in {holders}, not only in {home}"
    defined = [node.name for folder in PACKAGES.values() for path in folder.rglob("*.py")
               for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)]
    for name in ("parse_override", "merge", "deep_merge", "file_sha256", "read_checkpoint"):
        assert defined.count(name) <= 1, f"{name} is defined {defined.count(name)} times"


LONGEST_FUNCTION = 55
"""Statements of a library function's body (docstring left out): what fits on a screen (about 60 lines) and says
what goes in and out."""
LONGEST_MODULE = 600
"""Statements of a module (about 800 lines)."""
KEPT_WHOLE = {
    ("nisbflow/decode/agglomerate.py", "agglomerate_graph"):
        "waterz's IterativeRegionMerging loop reproduced step for step, to be read beside waterz's",
}
"""Kernels over the function budget on purpose, with the reason; numba kernels are excepted as a class."""


def test_functions_and_modules_fit_their_budgets():
    """No library or command-line function body over LONGEST_FUNCTION statements (numba kernels and KEPT_WHOLE
    excepted) and no module over LONGEST_MODULE statements."""
    over, checked = [], 0
    for folder in PACKAGES.values():
        for path in folder.rglob("*.py"):
            tree, where = ast.parse(path.read_text()), str(path.relative_to(ROOT))
            assert statements(tree.body) <= LONGEST_MODULE, f"{where} has {statements(tree.body)} statements"
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                checked += 1
                numba = any("jit" in ast.unparse(d) for d in node.decorator_list)
                count = statements(body_of(node))
                if not numba and (where, node.name) not in KEPT_WHOLE and count > LONGEST_FUNCTION:
                    over.append(f"{where}:{node.name} ({count} statements)")
    assert checked > 500 and over == [], over
