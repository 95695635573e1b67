"""The package as a user installs it: `python -m build` makes a wheel and an sdist that pass
`twine check`; the wheel ships py.typed and the single-sourced version, and installed into a
fresh virtual environment it imports and computes from outside the repository."""

import os
import subprocess
import sys
import zipfile

import hessjax

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USE = """
import jax, jax.numpy as jnp, numpy as np, hessjax
from hessjax.curvature import MeanLoss, hessian_operator, mse
from hessjax.linalg import eigsh, to_dense
from hessjax.models import MLP
model = MLP((4, 2), act="tanh")
x = jax.random.normal(jax.random.key(0), (8, 3))
y = jax.random.randint(jax.random.key(1), (8,), 0, 2)
op = hessian_operator(MeanLoss(model.apply, mse), model.init(jax.random.key(2), x),
                      (x[None], y[None]))  # one microbatch of 8
top = float(eigsh(op, 1, key=jax.random.key(3), tol=1e-6).eigenvalues[0])
want = float(np.linalg.eigvalsh(np.asarray(to_dense(op)))[-1])
assert abs(top - want) <= 1e-4 * abs(want), (top, want)
print(hessjax.__file__, hessjax.__version__)
"""


def _run(*cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_wheel_builds_checks_and_installs_outside_the_repository(tmp_path):
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--outdir", str(dist), ROOT, cwd=tmp_path)
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1 and len(list(dist.glob("*.tar.gz"))) == 1
    files = [str(f) for f in dist.iterdir()]
    _run(sys.executable, "-m", "twine", "check", "--strict", *files, cwd=tmp_path)
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "hessjax/py.typed" in names
    assert f"hessjax-{hessjax.__version__}.dist-info/METADATA" in names
    assert not any(n.startswith(("tests/", "experiments/", "benchmarks/")) for n in names)
    venv = tmp_path / "venv"  # the dependencies come from this interpreter's site-packages
    _run(sys.executable, "-m", "venv", "--system-site-packages", str(venv), cwd=tmp_path)
    python = str(venv / "bin" / "python")
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0]),
         cwd=tmp_path)  # fmt: skip
    where, version = _run(python, "-c", USE, cwd=tmp_path).split()
    assert where.startswith(str(venv)) and version == hessjax.__version__
