"""The package's architecture, checked: imports point one way (from the command line down to the
vLLM-free core), and no module imports itself back through others, counting imports inside
functions (only `if TYPE_CHECKING:` imports are exempt)."""

from __future__ import annotations

import ast
from pathlib import Path

import minedraft

ROOT = Path(minedraft.__file__).parent
# Lowest first: a package may import from its own layer and those below it.
LAYERS = ["core", "models", "drafter", "vllm_ext", "bench", "runtime", "analysis", "train",
          "reporting", "cli"]
VLLM_FREE = ("core",)  # no vLLM and no torch import, anywhere in these packages


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str] = frozenset()) -> set[str]:
    """Every module imported anywhere in the file (except under `if TYPE_CHECKING:`); `from P
    import M` counts as importing module P.M (and not P) when P.M is one of `modules`."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            out.update(n for n in names if n in modules)
            if any(n not in modules for n in names):
                out.add(node.module)
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {mod: {i for i in imports(path, set(files)) if i in files and i != mod}
            for mod, path in files.items()}


def layer(mod: str) -> int | None:
    parts = mod.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_imports_point_down():
    upward = []
    for mod, deps in graph().items():
        for dep in deps:
            a, b = layer(mod), layer(dep)
            if a is not None and b is not None and b > a:
                upward.append(f"{mod} -> {dep}")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    g = graph()
    cycles, state = [], {}

    def visit(mod, stack):
        state[mod] = "open"
        for dep in sorted(g[mod]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[mod] = "done"

    for mod in sorted(g):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_core_is_vllm_and_torch_free():
    for pkg in VLLM_FREE:
        for path in (ROOT / pkg).rglob("*.py"):
            bad = {i for i in imports(path) if i.split(".")[0] in ("vllm", "torch", "transformers")}
            assert not bad, f"{path.name} imports {bad}"
