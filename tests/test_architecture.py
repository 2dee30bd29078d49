"""The package's shape: no import circles, layers that point one way, light paths that stay light.

These read the code's own imports (with `ast`), so a new module that closes a
circle or reaches up a layer fails here, in CI, before anyone has to find it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hotfolder"

# Lowest first. A module may import its own layer and the ones below it, never one above.
LAYERS = [
    ("foundation", ["hotfolder", "hotfolder.errors", "hotfolder.config", "hotfolder.fsutil", "hotfolder.log",
                    "hotfolder.weights"]),
    ("parts", ["hotfolder.job", "hotfolder.folders", "hotfolder.cache", "hotfolder.media", "hotfolder.backends",
               "hotfolder.service", "hotfolder.gallery"]),
    ("daemon", ["hotfolder.daemon"]),
    ("commands", ["hotfolder.commands"]),
    ("entry", ["hotfolder.cli", "hotfolder.__main__"]),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports, at the top or inside functions (not under TYPE_CHECKING)."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("hotfolder"):
                        out.add(_nearest(alias.name, modules))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".")
                    base = base[: len(base) - child.level + (1 if is_package else 0)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("hotfolder"):
                    for alias in child.names:
                        full = f"{target}.{alias.name}"
                        out.add(full if full in modules else _nearest(target, modules))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    out.discard(name)
    return out


def _nearest(dotted: str, modules: dict[str, Path]) -> str:
    while dotted not in modules and "." in dotted:
        dotted = dotted.rsplit(".", 1)[0]
    return dotted


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def _layer(module: str) -> int:
    best, depth = -1, -1
    for number, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "hotfolder" and module.startswith(prefix + "."))
            if matches and len(prefix) > depth:
                best, depth = number, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best


def _package_init_is_not_a_parent(importer: str, imported: str) -> bool:
    """Importing a subpackage runs its parents' __init__; that is not a dependency on them."""
    return importer.startswith(imported + ".")


def test_the_package_has_no_import_circles() -> None:
    graph = _graph()
    assert len(graph) > 30, sorted(graph)  # the walk found the package
    assert _cycles(graph) == []


def test_the_circle_check_catches_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layers_point_one_way() -> None:
    upward = []
    for importer, imported in _graph().items():
        for target in imported:
            if _package_init_is_not_a_parent(importer, target):
                continue
            if _layer(target) > _layer(importer):
                upward.append(f"{importer} ({LAYERS[_layer(importer)][0]}) imports {target} "
                              f"({LAYERS[_layer(target)][0]})")
    assert upward == []


def test_nothing_below_the_commands_reads_argv_or_stdin() -> None:
    readers = []
    for name, path in _modules().items():
        if _layer(name) >= 3:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys" \
                    and node.attr in ("argv", "stdin"):
                readers.append(f"{name}: sys.{node.attr} (line {node.lineno})")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "argparse" in names:
                    readers.append(f"{name}: imports argparse (line {node.lineno})")
    assert readers == []


LIGHT_PATHS = r"""
import json, sys
from pathlib import Path
from hotfolder.backends import choose
from hotfolder.config import Config
from hotfolder.job.spec import parse
from hotfolder.commands import status, submit
from hotfolder.daemon.daemon import Daemon

choose.is_apple_silicon = lambda: True   # decide as on a Mac: metadata and the HF cache folder only
root = Path(sys.argv[1])
config = Config(root=root, cache_dir=root / "cache", log_dir=root / "logs", state_dir=root / "state")
job = root / "lake.toml"
job.write_text('prompt = "A lake"\nbackend = "auto"\nmodel = "ltx-2"\n')
specs = parse(job, config)
submit.validate(config, [job])
status.show_status(config)
daemon = Daemon(config)
daemon.spool.ensure_folders()
daemon.spool.inbox.scan()
ray_config = Config(root=root, cache_dir=root / "cache", log_dir=root / "logs", state_dir=root / "state",
                    executor="ray")
Daemon(ray_config)  # built, not started: the Ray executor joins its cluster (and imports ray) only in run()
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "mlx", "mlx_video", "diffusers", "transformers",
                                                         "ray"})
print(json.dumps({"backend": specs[0].backend, "heavy": heavy}))
"""


def test_only_the_ray_executor_imports_ray() -> None:
    """`import ray` (seconds, hundreds of MB) lives in daemon/cluster.py alone, imported only for executor = "ray"."""
    importers = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.append(name)
    assert sorted(set(importers)) == ["hotfolder.daemon.cluster"]


def test_parsing_validating_status_and_the_scan_import_neither_torch_nor_mlx(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", LIGHT_PATHS, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HOME": str(tmp_path),
                                           "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], result
    assert result["backend"] in ("diffusers", "mlx")
