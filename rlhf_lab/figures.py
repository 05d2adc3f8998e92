"""A notebook's key figures, recorded where prose, READMEs and tests can read them.

A notebook computes its figures and calls `record(...)`; the call shows them under the cell and
carries them, as JSON, in an output of their own MIME type. `scripts/run_notebooks.py` collects them
after the run into `metadata["rlhf_lab"]["figures"]`, so the saved notebook holds exactly the numbers
its outputs show, and a test can check every figure a text quotes against them.

    from rlhf_lab import figures
    figures.record(best_beta=0.1, bon_gold={"1": 0.2, "64": 1.1})
"""

from __future__ import annotations

import json
import math

MIME = "application/vnd.rlhf-lab.figures+json"


def _plain(value):
    """JSON-ready: numpy and torch scalars to Python numbers, tuples to lists, dict keys to strings."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a recorded figure must be finite, got {value}")
        return value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    raise TypeError(f"cannot record a figure of type {type(value).__name__}: {value!r}")


def _text(figs: dict) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return str(v)
    return "figures recorded in this notebook's metadata:\n" + "\n".join(f"  {k} = {fmt(v)}" for k, v in figs.items())


def record(**figs) -> dict:
    """Show the figures under the cell and carry them in the output for the notebook runner.

    Outside IPython (a script, a test) it only returns them. A later record() of the same name wins.
    """
    figs = _plain(figs)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return figs
    if get_ipython() is not None:
        display({MIME: figs, "text/plain": _text(figs)}, raw=True)
    return figs


def collect(nb) -> dict:
    """Every figure a notebook (an nbformat notebook, or its JSON as a dict) recorded, in cell order."""
    figs: dict = {}
    for cell in nb["cells"]:
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = output.get("data", {})
            if MIME in data:
                value = data[MIME]
                figs.update(json.loads(value) if isinstance(value, str) else value)
    return figs


def of_notebook(path) -> dict:
    """The figures saved in a notebook file's metadata (by scripts/run_notebooks.py)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("metadata", {}).get("rlhf_lab", {}).get("figures", {})
