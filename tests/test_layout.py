"""The house rules: one import namespace, dependencies that point one way, cheap imports.

Every module is imported alone in a fresh interpreter, so an import circle or a module
that works only after another was imported fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"models": "autosearch.models", "storage": "autosearch.storage"}

# What each room may import from the project. Same-layer imports are allowed one way only
# (space uses training's recipe; results reads tuning's outcomes), never back.
ALLOWED = {
    "models": set(),
    "storage": set(),
    "training": {"models"},
    "space": {"models", "training"},
    "tuning": {"models", "storage", "space", "training"},
    "results": {"models", "storage", "space", "training", "tuning"},
    "cli": {"models", "storage", "space", "training", "tuning", "results"},
    "api": {"models", "storage", "space", "training", "tuning", "results", "cli"},
    "search": set(),  # search/__init__.py is a docstring
}


def _modules() -> list[tuple[str, Path]]:
    """(dotted name as installed, file) of every module in the three code folders."""
    found = []
    for folder in ("models", "storage", "search"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            if rel[:2] == ("search", "api"):
                dotted = ".".join(("autosearch", *rel[2:]))
            else:
                dotted = ".".join(("autosearch", *rel))
            found.append((dotted, path))
    return found


def _room(dotted: str) -> str:
    parts = dotted.split(".")
    if len(parts) == 1 or parts[1] in ("models", "storage"):
        return "api" if len(parts) == 1 else parts[1]
    if len(parts) == 2:  # autosearch.search, or a face module like autosearch.__main__
        return "search" if parts[1] == "search" else "api"
    return parts[2]


def _project_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.split(".")[0] in ("autosearch", "search", "models", "storage")}


MODULES = _modules()


def test_every_module_is_found() -> None:
    names = {m for m, _ in MODULES}
    assert {"autosearch", "autosearch.search.space", "autosearch.models"} <= names
    assert len(names) > 40


@pytest.mark.parametrize("dotted,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down_and_stay_in_the_namespace(dotted: str, path: Path) -> None:
    room = _room(dotted)
    for name in _project_imports(path):
        assert name.startswith("autosearch"), f"{dotted} imports {name} outside the namespace"
        target = _room(name) if name != "autosearch" else "api"
        if target == room:
            continue
        assert target in ALLOWED[room], f"{dotted} ({room}) imports {name} ({target})"


def test_the_trainer_knows_nothing_of_optuna_or_storage() -> None:
    for dotted, path in MODULES:
        if _room(dotted) in ("training", "models"):
            text = path.read_text()
            assert "import optuna" not in text, dotted
            assert "autosearch.storage" not in text, dotted


def test_every_module_imports_alone_in_a_fresh_interpreter(tmp_path: Path) -> None:
    # One interpreter loads the third-party libraries once, then forks a child per module:
    # each child starts with none of the project's modules loaded, so a circle or a module
    # that works only after another was imported fails, without paying torch's import
    # time for every module.
    names = [m for m, _ in MODULES if not m.endswith("__main__")]
    script = textwrap.dedent(
        """
        import importlib, os, sys, traceback
        import numpy, optuna, plotly, sqlalchemy, torch, typer, rich  # noqa: F401
        assert not any(m.startswith("autosearch") for m in sys.modules)
        bad = []
        for name in sys.argv[1:]:
            pid = os.fork()
            if pid == 0:
                try:
                    importlib.import_module(name)
                except BaseException:
                    print(f"{name}: {traceback.format_exc().strip().splitlines()[-1]}")
                    sys.stdout.flush()
                    os._exit(1)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            if status:
                bad.append(name)
        sys.exit(1 if bad else 0)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *names], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _loaded_after(statement: str, cwd: Path) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import autosearch",
        "import autosearch.search.space",
        "import autosearch.models",
        "from autosearch.search.training.recipe import TrainRecipe",
        "import autosearch.search.cli.app",
        "import autosearch.storage",
        "import autosearch.search.tuning.study",
    ],
)
def test_light_imports_load_no_torch_or_plotly(statement: str, tmp_path: Path) -> None:
    loaded = _loaded_after(statement, tmp_path)
    heavy = {"torch", "torch.optim", "plotly", "safetensors"} & loaded
    assert not heavy, f"{statement} loads {sorted(heavy)}"


def test_public_api_works_beside_a_users_own_models_and_search(tmp_path: Path) -> None:
    # Many ML projects have their own `models/`; ours must never be shadowed by it.
    for own in ("models", "search", "storage"):
        (tmp_path / own).mkdir()
        (tmp_path / own / "__init__.py").write_text("MINE = True\n")
    code = textwrap.dedent(
        """
        import models, search, storage
        assert models.MINE and search.MINE and storage.MINE
        from autosearch import load_best_model, get_preset, count_params, TrainRecipe
        assert count_params(get_preset("zigzag")) == 4891338
        assert callable(load_best_model) and TrainRecipe().batch_size > 0
        import autosearch
        assert set(autosearch.__all__) <= set(dir(autosearch))
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_unknown_public_names_fail_loudly() -> None:
    import autosearch

    with pytest.raises(AttributeError, match="no_such_thing"):
        autosearch.no_such_thing  # noqa: B018
