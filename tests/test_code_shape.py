"""The shape rules of the style guide: small modules, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "src" / "detector").rglob("*.py"), *(ROOT / "callbacks").rglob("*.py")])
MAX_FILE_LINES = 400
MAX_BODY_LINES = 60  # a function's body, its docstring and its signature (a flat table of arguments) not counted


def long_functions(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            lines = node.end_lineno - body[0].lineno + 1
            if lines > MAX_BODY_LINES:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := p.read_text().count("\n")) > MAX_FILE_LINES}
    assert not long, long


def test_no_function_body_over_60_lines():
    found = [f for p in SOURCES for f in long_functions(p)]
    assert not found, found
