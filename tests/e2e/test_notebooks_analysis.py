"""The example notebooks 01 (spectrum) and 02 (structure), and what every notebook shares:
each runs top to bottom at the small size in a fresh kernel and its computed values pass
checks; the committed copies carry the outputs of their full-size run, not stale relative to
their code cells; an unknown size fails clearly. (03 and 04: test_notebooks_training.py.)"""

import os

import pytest
from nbclient.exceptions import CellExecutionError
from notebooks import CHECKS, EXAMPLES, execute, read, run_small


def test_every_notebook_has_checks():
    assert sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".ipynb")) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_committed_outputs_are_the_full_run_of_the_current_code(name):
    nb = read(name)
    meta = nb.metadata.get("hessjax", {})
    assert meta.get("size") == "full", f"{name}: run `python examples/execute.py examples/{name}`"
    assert meta.get("code_sha256") == execute.code_hash(nb), (
        f"{name}: code cells changed since its outputs were made; run "
        f"`python examples/execute.py examples/{name}` and commit the result"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not any(o.output_type == "error" for c in code for o in c.outputs)


@pytest.mark.parametrize("name", ["01_spectrum.ipynb", "02_structure.ipynb"])
def test_notebook_runs_at_the_small_size(name, tmp_path):
    CHECKS[name](run_small(name, str(tmp_path)))


def test_unknown_size_fails_in_the_first_cell(tmp_path):
    with pytest.raises(CellExecutionError, match="must be one of .*'huge'"):
        execute.execute(read("01_spectrum.ipynb"), "huge", timeout=300, cwd=str(tmp_path))
