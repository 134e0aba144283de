"""The demo modules import one way: questions <- judge <- dataset, and probe <- questions."""

import ast
from pathlib import Path

import lightalign.demo

# Each module's allowed demo imports, anywhere in the module (a function-level import counts too).
ALLOWED = {
    "questions": set(),
    "judge": {"questions"},
    "dataset": {"questions", "judge"},
    "probe": {"questions"},
}


def _demo_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):  # "from .judge import x" and "from . import judge" count too
            module = "lightalign.demo" + (f".{node.module}" if node.module else "") if node.level else node.module
            modules = [module] + [f"{module}.{a.name}" for a in node.names]
        names |= {m.split(".")[2] for m in modules if m.startswith("lightalign.demo.")}
    return names


def test_demo_modules_import_one_way() -> None:
    folder = Path(lightalign.demo.__file__).parent
    found = {p.stem: _demo_imports(p) for p in folder.glob("*.py") if p.stem != "__init__"}
    assert found == ALLOWED
