"""docs/quickstart.ipynb runs end to end in a fresh kernel, as a reader would run it:
a model object defined in the notebook comes back compressed, with a verdict on its
measured 2x target on onnxruntime that agrees with itself everywhere it is shown.

Whether 2x is met depends on the machine's CPU (CI once ran it on one where the tiny
budget stopped short): a speed figure belongs in BENCHMARKS.md, not in a unit test, so
the test checks that the verdict is consistent, not which it is."""

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "quickstart.ipynb"


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


@pytest.mark.slow
def test_the_quickstart_notebook_runs_and_reports_one_verdict(tmp_path, monkeypatch):
    # The kernel imports compressflow from this checkout (an install made before the
    # package existed would not find it) and writes its records under tmp_path.
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), path])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = "\n".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    verdicts = re.findall(r"target speedup >= 2 on onnxruntime-cpu: (MET|NOT MET)", outputs)
    assert verdicts, "the report states the target and its verdict"
    met = verdicts[0] == "MET"
    assert f"target met: {met}" in outputs  # result.met says what the report said
    speedup = float(re.search(r"measured speedup on onnxruntime-cpu: ([0-9.]+)", outputs)[1])
    assert speedup > 1.0  # a pruned network, measured faster than the baseline
    assert "SmallCNN" in outputs  # the winner came back as the notebook's own class
    plots = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert plots, "the front plot is shown"
    assert (tmp_path / "quickstart-out" / "mlflow.db").is_file()
