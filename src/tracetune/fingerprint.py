"""What a job's result depends on in tracetune's own code, derived from the imports.

A rule passes `code_fingerprint(its script)` as a param: the hash of every tracetune module the
script imports, directly or through other modules (imports inside functions count), plus the
package data files those modules name (templates, schemas). Modules are compared by their
syntax tree without docstrings, so a comment, a docstring or a reformatting reruns nothing,
while any change in behaviour reruns exactly the rules whose scripts reach the module. No list
of files is kept by hand, so none can drift from the imports.

Imports of `tracetune.runtime` are not followed: that subpackage holds how jobs run (serving a
model, MCP server processes, logging, which settings become params), never what they make, so an
edit there reruns nothing. What it decides about outputs reaches jobs as params, which Snakemake
compares itself.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
RUNTIME = "runtime"  # the subpackage of operational code: outside every fingerprint
DATA_DIRS = ("templates", "schemas")


def _tree(path: Path) -> ast.Module:
    stat = path.stat()
    return _parsed(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _parsed(path: Path, mtime_ns: int, size: int) -> ast.Module:
    """Keyed by the file's state too, so a process that plans several times sees every edit."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _module_path(dotted: str) -> Path | None:
    """tracetune.a.b → src/tracetune/a/b.py (or its package's __init__.py); None outside tracetune
    and inside tracetune.runtime."""
    parts = dotted.split(".")
    if parts[0] != "tracetune":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    if base.is_relative_to(PACKAGE / RUNTIME):
        return None
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[Path]:
    """The tracetune modules one file imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(_tree(path)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            module = _module_path(name)
            if module is not None:
                found.add(module)
    init = path.parent / "__init__.py"  # a subpackage's module runs its package's __init__
    if path.parent != PACKAGE and path.parent.is_relative_to(PACKAGE) and init.is_file() and init != path:
        found.add(init)
    return found


def module_closure(script: str | Path) -> list[Path]:
    """Every tracetune module `script` (a rule script or a module) reaches through imports."""
    seen: set[Path] = set()
    todo = list(_imported(Path(script).resolve()))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imported(module))
    return sorted(seen)


def _named_patterns(path: Path) -> set[str]:
    """File names a module spells out: plain strings, and f-strings as glob patterns
    (f"config.{section}.schema.yaml" → config.*.schema.yaml)."""
    patterns = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            patterns.add(node.value)
        elif isinstance(node, ast.JoinedStr):
            patterns.add("".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values))
    return patterns


def data_files(modules: list[Path]) -> list[Path]:
    """The package data files (templates, schemas) that these modules name."""
    candidates = [p for d in DATA_DIRS for p in sorted((PACKAGE / d).glob("*")) if p.is_file()]
    patterns = set().union(*(_named_patterns(m) for m in modules)) if modules else set()
    # A name, or a pattern with literal text at both ends: "*.json" alone would match too much.
    patterns = {p for p in patterns if "." in p and not p.startswith("*") and not p.endswith("*")}
    return [p for p in candidates if any(fnmatch.fnmatchcase(p.name, pattern) for pattern in patterns)]


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _behaviour(path: Path) -> bytes:
    """A module's syntax tree without docstrings (comments and layout are not in it)."""
    tree = _without_docstrings(ast.parse(path.read_text(encoding="utf-8")))
    return ast.dump(tree, annotate_fields=False, include_attributes=False).encode()


def code_fingerprint(script: str) -> str:
    """The hash of what `script` runs of tracetune: its modules' behaviour and their data files."""
    return _fingerprint(script, _source_state(script))


def _source_state(script: str) -> tuple:
    """Path, size and modification time of the script and of every package source and data file:
    one stat each, so rules can ask per job while an edit still reaches the next plan."""
    files = [Path(script), *sorted(PACKAGE.rglob("*.py")), *(p for d in DATA_DIRS for p in sorted((PACKAGE / d).glob("*")))]
    return tuple((str(p), st.st_mtime_ns, st.st_size) for p in files for st in [p.stat()])


@functools.cache
def _fingerprint(script: str, source_state: tuple) -> str:
    modules = module_closure(script)
    digest = hashlib.sha256()
    for path in modules:
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + _behaviour(path) + b"\0")
    for path in data_files(modules):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
