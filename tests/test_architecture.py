"""The project's modules import one another one way only: no import circle, function-local
imports included (a local import that dodges a circle at run time still makes the design circular)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "projects", "feedback", "training")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source (module level or in a function)."""

    def resolve(name: str) -> str | None:
        # "training.models.TrainingRun" -> "training.models"; a package resolves to its __init__.
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                imported.update(resolve(f"{base}.{alias.name}") for alias in node.names)
        graph[name] = {target for target in imported if target is not None and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_local_imports_and_finds_a_circle():
    # The checker itself: a function-local import closing a circle is found.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    source = "def f():\n    from training.runs import start_run\n"
    tree = ast.parse(source)
    assert any(isinstance(node, ast.ImportFrom) and node.module == "training.runs" for node in ast.walk(tree))
    modules = project_modules()
    assert "training.runs" in import_graph(modules)["training.tasks"]  # `from training import ..., runs, ...`


def test_no_import_circle_among_the_projects_modules():
    cycle = find_cycle(import_graph(project_modules()))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_engine_imports_nothing_from_django_or_the_apps():
    for name, path in project_modules().items():
        if not name.startswith("training.kto"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for imported in names:
                assert imported.split(".")[0] not in (
                    "django",
                    "rest_framework",
                    "celery",
                    "projects",
                    "feedback",
                    "config",
                ), f"{name} imports {imported}"
                assert not imported.startswith("training.") or imported.startswith("training.kto"), (
                    f"{name} imports {imported}"
                )


# --- web workers never import torch ------------------------------------------------------------
MODEL_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "vllm")
# Settings whose dotted paths the web process never imports: Celery's task names (sent by name)
# and the inference backend (imported by the serving process only).
NOT_IMPORTED_BY_THE_WEB = ("CELERY_", "PROSPECT_INFERENCE_BACKEND")


def _third_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _named_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules named in string constants (settings' dotted paths, include("app.urls")),
    except in the settings that only Celery or the serving process read (task routes, the backend)."""
    named = set()
    for statement in ast.parse(path.read_text()).body:
        targets = [
            t.id
            for t in getattr(statement, "targets", [getattr(statement, "target", None)])
            if t is not None and isinstance(t, ast.Name)
        ]
        if any(target.startswith(NOT_IMPORTED_BY_THE_WEB) for target in targets):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
                name = node.value
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name.split(".")[0] in PACKAGES:
                    named.add(name)
    return named


def web_modules() -> tuple[set[str], dict[str, str]]:
    """Every project module a web worker may import: from the WSGI entry point, the settings (their
    dotted paths: middleware, apps, the URLconf) and the URL modules they include, following imports
    anywhere in a module (function-local too). Returns (modules, how each was reached)."""
    modules = project_modules()
    graph = import_graph(modules)
    roots = ["config.wsgi", "config.settings", "config.urls"]
    for app in PACKAGES:
        roots += [name for name in (f"{app}.apps", f"{app}.models", f"{app}.admin") if name in modules]
    reached: dict[str, str] = {root: "root" for root in roots}
    stack = list(roots)
    while stack:
        module = stack.pop()
        targets = set(graph[module])
        if module == "config.settings" or module.endswith(".urls"):
            # Celery task names are strings the web process sends, never imports: only settings
            # and URL modules name modules that Django itself imports.
            targets |= _named_modules(modules[module], modules)
        for target in targets:
            if target not in reached:
                reached[target] = module
                stack.append(target)
    return set(reached), reached


def test_the_web_process_never_imports_torch():
    modules = project_modules()
    reached, parent = web_modules()
    assert "training.api" in reached and "training.openai_proxy" in reached  # the graph sees the web views
    for name in sorted(reached):
        heavy = _third_party_imports(modules[name]) & set(MODEL_LIBRARIES)
        chain = [name]
        while parent.get(chain[-1], "root") != "root":
            chain.append(parent[chain[-1]])
        assert not heavy, f"{name} imports {sorted(heavy)}; a web worker reaches it via {' <- '.join(chain)}"
    # The serving side does, and is not reachable from the web.
    assert "training.serving" not in reached and "training.serving_http" not in reached
