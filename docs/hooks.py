"""mkdocs hooks: the README becomes the overview page, BUILD.md's solver guide its own page,
the notebooks of examples/ (where they run and are tested) are copied in, and the build
fails when a public name of a documented module has no docstring."""

import glob
import os
import re
import shutil

import griffe
from mkdocs.exceptions import PluginError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else None]


def documented_modules(docs: str = DOCS) -> list[str]:
    """The modules the API pages render (their `::: module` lines)."""
    found = []
    for page in sorted(glob.glob(os.path.join(docs, "api", "*.md"))):
        with open(page) as f:
            found += re.findall(r"^::: (\S+)", f.read(), flags=re.M)
    return found


def missing_docstrings(modules: list[str], search_path: str = ROOT) -> list[str]:
    """Public names of `modules` without a docstring: every name of a module's `__all__`
    (constants included), else every public function and class it defines."""
    missing, loaded = [], {}
    for path in modules:
        top = path.split(".")[0]
        if top not in loaded:
            loaded[top] = griffe.load(top, search_paths=[search_path])
        module = loaded[top] if path == top else loaded[top][path[len(top) + 1 :]]
        if module.exports is not None:
            names = list(module.exports)
        else:
            names = [n for n, o in module.members.items() if o.is_public and not o.is_alias
                     and o.kind.value in ("function", "class")]  # fmt: skip
        for name in names:
            doc = module[name].docstring
            if doc is None or not doc.value.strip():
                missing.append(f"{path}.{name}")
    return missing


def on_pre_build(config, **kwargs):
    missing = missing_docstrings(documented_modules())
    if missing:
        raise PluginError(f"public names without a docstring: {', '.join(missing)}")
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    readme = readme.replace("(BUILD.md#choosing-an-eigensolver)", "(solvers.md)")
    # other links to repository files (not pages of this site) become their plain names
    readme = re.sub(r"\[([^\]]+)\]\((?!https?://|#|examples/)([^)]+)\)", r"\1 (`\2`)", readme)
    with open(os.path.join(DOCS, "index.md"), "w") as f:
        f.write(readme)
    with open(os.path.join(ROOT, "BUILD.md")) as f:
        solvers = _section(f.read(), "## Choosing an eigensolver")
    with open(os.path.join(DOCS, "solvers.md"), "w") as f:
        f.write("# Choosing an eigensolver\n" + solvers.split("\n", 1)[1])
    os.makedirs(os.path.join(DOCS, "examples"), exist_ok=True)
    for path in glob.glob(os.path.join(ROOT, "examples", "*.ipynb")):
        shutil.copyfile(path, os.path.join(DOCS, "examples", os.path.basename(path)))
