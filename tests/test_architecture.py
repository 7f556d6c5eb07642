"""The invariants docs/architecture.md states, checked on the code so the map cannot drift.

Imports are read from the source (``ast``), function-level ones included: a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
# Wings that talk to the outside world through one library each.
LLAMA_WING = "ossrun.engine"
HARMONY_WING = "ossrun.harmony"
# The harmony modules front ends may use: they check input and never load openai_harmony.
HARMONY_WITHOUT_LIBRARY = {"ossrun.harmony.messages"}
FRONT_ENDS = ("ossrun.cli", "ossrun.terminal", "ossrun.server")


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name (``convert/`` is installed as ``ossrun.convert``)."""
    files = {}
    for folder, package in ((ROOT / "ossrun", "ossrun"), (ROOT / "convert", "ossrun.convert")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join([package, *parts])] = path
    return files


@lru_cache(maxsize=1)
def imports() -> dict[str, set[str]]:
    """Module -> every name it imports (top-level packages for third-party ones, dotted for ossrun)."""
    files = module_files()
    found: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                # ``from ossrun.x import y`` names the module ossrun.x.y where there is one, else ossrun.x
                submodules = {f"{target}.{alias.name}" for alias in node.names} & files.keys()
                names.update(submodules)
                if len(submodules) < len(node.names):
                    names.add(target)
        found[module] = names
    return found


def internal_graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: {name for name in names if name in files} for module, names in imports().items()}


def importers_of(library: str) -> set[str]:
    return {module for module, names in imports().items() if any(n == library or n.startswith(library + ".") for n in names)}


def in_wing(module: str, wing: str) -> bool:
    return module == wing or module.startswith(wing + ".")


def test_only_the_engine_wing_talks_to_llama_cpp():
    assert importers_of("llama_cpp") and all(in_wing(m, LLAMA_WING) for m in importers_of("llama_cpp"))
    # ctypes calls into llama.cpp's libraries are the engine's too.
    for module, path in module_files().items():
        if not in_wing(module, LLAMA_WING):
            text = path.read_text()
            assert "libggml" not in text and "libllama" not in text, module


def test_only_the_harmony_wing_talks_to_openai_harmony():
    users = importers_of("openai_harmony")
    assert users and all(in_wing(m, HARMONY_WING) for m in users)
    assert not users & HARMONY_WITHOUT_LIBRARY


def test_the_engine_never_imports_front_ends_harmony_or_the_store():
    for module, targets in internal_graph().items():
        if in_wing(module, LLAMA_WING):
            for target in targets:
                assert not any(in_wing(target, w) for w in (*FRONT_ENDS, HARMONY_WING, "ossrun.store", "ossrun.tools")), (
                    module,
                    target,
                )
                assert target not in ("ossrun.model",), (module, target)


def test_front_ends_consume_events_and_never_drive_the_engine_or_harmony():
    for module, targets in internal_graph().items():
        if any(in_wing(module, w) for w in FRONT_ENDS):
            for target in targets:
                assert not in_wing(target, LLAMA_WING), (module, target)
                assert not in_wing(target, HARMONY_WING) or target in HARMONY_WITHOUT_LIBRARY, (module, target)


def test_no_import_cycles():
    """No two modules import each other, directly or through others.

    The root package is left out: its lazy ``ossrun.load`` is the public facade, and every
    module that imports ``ossrun`` for ``__version__`` would otherwise close a loop through it.
    """
    graph = {m: {t for t in targets if t != "ossrun"} for m, targets in internal_graph().items() if m != "ossrun"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles


def test_no_sibling_modules_differ_by_one_letter():
    def one_apart(a: str, b: str) -> bool:
        if abs(len(a) - len(b)) > 1 or a == b:
            return False
        if len(a) == len(b):
            return sum(x != y for x, y in zip(a, b, strict=True)) == 1
        short, long = sorted((a, b), key=len)
        return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))

    by_package: dict[str, list[str]] = {}
    for module in module_files():
        package, _, name = module.rpartition(".")
        by_package.setdefault(package, []).append(name)
    for package, names in by_package.items():
        for a in names:
            for b in names:
                assert not one_apart(a, b), f"{package}: {a} and {b}"


def test_help_loads_neither_llama_cpp_nor_openai_harmony_nor_the_mcp_sdk():
    probe = (
        "import json, sys\n"
        "from ossrun.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    for command in ([], ["chat"], ["run"], ["serve"], ["convert"], ["models"], ["worker"]):
        code = probe.replace("['--help']", repr([*command, "--help"]))
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        loaded = set(json.loads(result.stderr))
        assert "llama_cpp" not in loaded and "openai_harmony" not in loaded, command
        assert not {"mcp", "mcp_types", "httpx2"} & loaded, command


def test_the_mcp_sdk_is_imported_only_where_servers_start():
    """``ossrun.tools`` is loaded with every model; the SDK only when MCP servers start (inside functions)."""
    assert {m for m in importers_of("mcp") if not m.startswith("ossrun.tools.mcp_")} == set()
    for module in ("ossrun.tools.mcp_servers", "ossrun.tools.mcp_tools", "ossrun.tools.mcp_config"):
        tree = ast.parse(module_files()[module].read_text())
        top_level = {
            alias.name.split(".")[0]
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
        }
        assert not {"mcp", "httpx2", "anyio"} & top_level, module
    probe = "import json, sys\nimport ossrun.tools\nsys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stderr))
    assert not {"mcp", "httpx2"} & loaded


def test_the_mcp_keeper_uses_the_standard_library_only():
    """mcp_child.py runs as a script with ``python -I -S``: no site-packages, no ossrun."""
    tree = ast.parse(module_files()["ossrun.tools.mcp_child"].read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)
    assert not any("ossrun.tools.mcp_child" in names for names in imports().values())


def test_the_map_names_every_wing_and_module_that_exists():
    text = ARCHITECTURE.read_text()
    for module in module_files():
        if module.count(".") == 1 and module != "ossrun.convert":
            assert f"`{module.split('.')[1]}" in text or module.split(".")[1] in ("__main__",), module
    for path in (ROOT / "ossrun").iterdir():
        if (path / "__init__.py").exists():
            assert f"`ossrun/{path.name}/`" in text, path.name


def test_the_python_tools_jail_uses_the_standard_library_alone_and_ossrun_never_imports_it():
    """sandbox_child.py runs as a script in a fresh interpreter before the model's code: its modules
    import the standard library and each other (by their bare names), and nothing of ossrun."""
    jail = {module for module in module_files() if module.startswith("ossrun.tools.sandbox_")}
    assert {m.rsplit(".", 1)[1] for m in jail} == {
        "sandbox_child",
        "sandbox_jail",
        "sandbox_mounts",
        "sandbox_bounds",
        "sandbox_seccomp",
    }
    bare = {m.rsplit(".", 1)[1] for m in jail}
    for module in jail:
        for name in imports()[module]:
            top = name.split(".")[0]
            assert name in bare or (top in sys.stdlib_module_names and top != "ossrun"), (module, name)
    for module, names in imports().items():
        assert not names & jail, (module, names & jail)
