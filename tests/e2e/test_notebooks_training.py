"""The example notebooks 03 (monitor) and 04 (continual) at the small size, their computed
values checked (the rest: test_notebooks_analysis.py)."""

import pytest
from notebooks import CHECKS, run_small


@pytest.mark.parametrize("name", ["03_monitor.ipynb", "04_continual.ipynb"])
def test_notebook_runs_at_the_small_size(name, tmp_path):
    CHECKS[name](run_small(name, str(tmp_path)))
