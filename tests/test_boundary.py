"""The library boundary: `import hessjax` and its subpackages stay light and global-state free."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
