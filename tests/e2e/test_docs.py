"""The documentation site (mkdocs.yml): it builds with warnings as errors, renders every public
name of each subpackage, and a public name without a docstring fails the build."""

import importlib
import importlib.util
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("hooks", os.path.join(ROOT, "docs", "hooks.py"))
hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hooks)


def test_site_builds_strict_with_every_public_name(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for sub in ("linalg", "curvature", "continual", "data"):
        html = (site / "api" / sub / "index.html").read_text()
        ids = set(re.findall(r'id="(hessjax\.[A-Za-z_.0-9]*)"', html))
        module = importlib.import_module(f"hessjax.{sub}")
        assert not [n for n in module.__all__ if f"hessjax.{sub}.{n}" not in ids], sub
    for page in ("01_spectrum", "04_continual"):  # the notebooks, rendered with their outputs
        assert "<img" in (site / "examples" / page / "index.html").read_text()


def test_a_public_name_without_a_docstring_is_reported(tmp_path):
    assert hooks.missing_docstrings(hooks.documented_modules()) == []
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        '"""A package."""\n\n__all__ = ["good", "bad", "LIMIT"]\n\nLIMIT = 3\n\n\n'
        'def good():\n    """Documented."""\n\n\ndef bad():\n    return 1\n'
    )
    assert hooks.missing_docstrings(["fakepkg"], search_path=str(tmp_path)) == [
        "fakepkg.bad", "fakepkg.LIMIT",
    ]  # fmt: skip
