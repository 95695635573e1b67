"""Execute an example notebook top to bottom and store its outputs in place.

    python examples/execute.py examples/01_spectrum.ipynb            # the full size (committed)
    HESSJAX_EXAMPLE_SIZE=small python examples/execute.py NB --out X  # what the tests run

The size goes to the kernel as HESSJAX_EXAMPLE_SIZE (each notebook's first code cell reads it).
The notebook's metadata records the size and a sha256 of its code cells, so a test can tell
when committed outputs are stale (code edited after the run). Written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile

import nbformat
from nbclient import NotebookClient

SIZE_VARIABLE = "HESSJAX_EXAMPLE_SIZE"


def code_hash(nb: nbformat.NotebookNode) -> str:
    """sha256 over the sources of the notebook's code cells, in order."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


def execute(nb: nbformat.NotebookNode, size: str, timeout: int = 1800, cwd: str | None = None):
    """Run every cell of nb (in place) at `size`; raises nbclient's CellExecutionError on the
    first failing cell. Returns nb with outputs and metadata['hessjax'] = {size, code_sha256}."""
    old = os.environ.get(SIZE_VARIABLE)
    os.environ[SIZE_VARIABLE] = size  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": cwd or os.getcwd()}}).execute()  # fmt: skip
    finally:
        if old is None:
            os.environ.pop(SIZE_VARIABLE, None)
        else:
            os.environ[SIZE_VARIABLE] = old
    nb.metadata["hessjax"] = {"size": size, "code_sha256": code_hash(nb)}
    return nb


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebook")
    p.add_argument("--size", default=os.environ.get(SIZE_VARIABLE, "full"))
    p.add_argument("--out", default=None, help="write here (default: the notebook itself)")
    args = p.parse_args(argv)
    nb = nbformat.read(args.notebook, as_version=4)
    execute(nb, args.size, cwd=os.path.dirname(os.path.abspath(args.notebook)))
    out = args.out or args.notebook
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), suffix=".ipynb")
    with os.fdopen(fd, "w") as f:
        nbformat.write(nb, f)
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, out)
    print(f"wrote {out} ({args.size})", file=sys.stderr)


if __name__ == "__main__":
    main()
