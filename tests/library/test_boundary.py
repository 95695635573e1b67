"""The library boundary: `import hessjax` and its subpackages stay light and global-state free."""

import ast
import os
import subprocess
import sys

from _env import ROOT

HEAVY = ("matplotlib", "tensorflow_datasets", "orbax")


def test_importing_hessjax_loads_no_plotting_tfds_or_orbax():
    """Every subpackage imports in a fresh interpreter without matplotlib (so the user's
    backend is untouched), TFDS or orbax; those belong to experiments/ or load lazily."""
    code = (
        "import sys, hessjax, hessjax.linalg, hessjax.curvature, hessjax.analysis, "
        "hessjax.continual, hessjax.data, hessjax.models, hessjax.training, hessjax.distributed\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _owner(module: str) -> str:
    """The package a private name defined in `module` belongs to: a private helper module
    (`pkg/_helpers.py`) is shared by its package, any other module keeps its privates."""
    parts = module.split(".")
    return ".".join(parts[:-1]) if parts[-1].startswith("_") else module


def _private_imports(path: str) -> list[str]:
    """Imports in `path` of a private module or name owned by another module or package."""
    importer = _module_name(path)
    package = importer if path.endswith("__init__.py") else importer.rpartition(".")[0]
    with open(path) as f:
        tree = ast.parse(f.read())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [tuple(a.name.rsplit(".", 1)) for a in node.names if "." in a.name]
        else:
            continue
        for source, name in targets:
            chain = source.split(".") + [name]
            if os.path.exists(os.path.join(os.path.dirname(path), chain[0] + ".py")):
                chain = package.split(".") + chain  # a script's sibling module (benchmarks/)
            for i, part in enumerate(chain):
                if not part.startswith("_") or part.startswith("__"):
                    continue
                owner = _owner(".".join(chain[: i + 1])) if i else part
                if not (importer == owner or package == owner or package.startswith(owner + ".")):
                    bad.append(f"{importer}: {'.'.join(chain)}")
                break
    return bad


def test_no_module_imports_another_modules_private_names():
    """The API rule of BUILD.md: a private name (`_x`) is imported only by its own module, and
    a private helper module (`pkg/_x.py`) only by modules of its package `pkg`."""
    bad = []
    for top in ("hessjax", "experiments", "benchmarks"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            bad += [p for f in files if f.endswith(".py")
                    for p in _private_imports(os.path.join(folder, f))]  # fmt: skip
    assert not bad, bad


def test_the_private_import_rule_catches_what_it_should(tmp_path, monkeypatch):
    """The scanner flags a private name of another module and another package's private
    module, and lets a package use its own private helper module."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    path = tmp_path / "pkg" / "sub" / "mod.py"
    path.write_text(
        "from pkg.sub import _helpers\nfrom pkg.sub._helpers import f\nfrom pkg._top import g\n"
        "from pkg.other import _hidden\nfrom pkg.other._helpers import h\nimport pkg.other._x\n"
        "from _sibling import f\n"
    )
    (tmp_path / "pkg" / "sub" / "_sibling.py").write_text("")
    assert _private_imports(str(path)) == [
        "pkg.sub.mod: pkg.other._hidden",
        "pkg.sub.mod: pkg.other._helpers.h",
        "pkg.sub.mod: pkg.other._x",
    ]
