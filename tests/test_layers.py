"""Import contracts: the layers point one way, nothing imports in a function to dodge a cycle.

Layers, lowest first (a module imports only from its own layer or a lower one):

1. core: ``files``, ``strict``, ``config``, ``distributed``, ``checkpoint``, ``quant``,
   ``calib``, ``search``, ``methods``,
   ``policy``, ``card``, ``io``
   and the protocols ``models.base``, ``models.sampling``, ``models.patches``;
2. models: the adapters and pipeline families of diffusers classes;
3. zoo: the embedded models;
4. eval: metrics of the embedded tasks;
5. api: ``pipeline`` (loading and ``quantize_``);
6. top: ``bench`` (the experiment runner), ``cli`` and ``commands``, and the package's public API.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
CORE_MODELS = ("adatsq.models.base", "adatsq.models.sampling", "adatsq.models.patches")
LAYERS = [
    ("core", ("adatsq.files", "adatsq.strict", "adatsq.config", "adatsq.distributed",
              "adatsq.checkpoint", "adatsq.quant", "adatsq.calib",
              "adatsq.search", "adatsq.methods", "adatsq.policy", "adatsq.card", "adatsq.io",
              *CORE_MODELS)),
    ("models", ("adatsq.models",)),
    ("zoo", ("adatsq.zoo",)),
    ("eval", ("adatsq.eval",)),
    ("api", ("adatsq.pipeline",)),
    ("top", ("adatsq.bench", "adatsq.cli", "adatsq.commands", "adatsq")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "adatsq").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported adatsq module or name, at module level) of every import in ``path``:
    ``from package import submodule`` imports the submodule, ``from module import name`` the
    module."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                                ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            if name == "adatsq" or name.startswith("adatsq."):
                found.append((name, id(node) in top))
    return found


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported name lives in (``adatsq.eval.paired.verdict`` -> the module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    own = _layer(module)
    for name, _ in _imports(MODULES[module], module):
        target = _resolve(name, MODULES)
        if target is None or target == module:
            continue
        assert _layer(target) <= own, (f"{module} ({LAYERS[own][0]}) imports {target} "
                                       f"({LAYERS[_layer(target)][0]})")


def test_no_import_is_hidden_in_a_function():
    hidden = set()
    for module, path in MODULES.items():
        for name, at_top in _imports(path, module):
            target = _resolve(name, MODULES)
            if not at_top and target not in (None, module):
                hidden.add((module, target))
    assert not hidden, sorted(hidden)


def test_module_imports_have_no_cycle():
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, at_top in _imports(path, module):
            target = _resolve(name, MODULES)
            if at_top and target not in (None, module):
                graph[module].add(target)
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_contract_covers_every_module():
    assert all(_layer(m) is not None for m in MODULES)
    assert _layer("adatsq.models.base") == 0 and _layer("adatsq.models.flux") == 1
    assert _layer("adatsq.bench") == 5 and _layer("adatsq.eval.tasks") == 3
