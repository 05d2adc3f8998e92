"""Execute notebooks in place, so that the committed notebooks carry a full run's outputs.

    python scripts/run_notebooks.py notebooks/00_welcome.ipynb [more.ipynb ...] [--fast] [--runs DIR]

Notebooks keep their results in runs/ (RLHF_LAB_RUNS) and take what an earlier run left there: 03
loads 02's rankings, 07 and 08 carry on from their own cached rounds. So a re-run after a change to the
package can replay old results. For a run from nothing, give an empty folder and every notebook in
order: --runs /tmp/fresh-runs notebooks/0*.ipynb. Without --runs, the runner says which notebooks
already have a run folder in runs/.

Without --fast this is the full (not FAST) run a reader should see. It refuses to save a notebook
whose run raised an error: a learner must never open a notebook on a traceback. The figures the
notebook recorded (rlhf_lab.figures.record) are saved in its metadata["rlhf_lab"]["figures"], and the
state of its widgets in metadata["widgets"], so that the committed notebook shows the ranking widget
(JupyterLab, nbviewer) and not its text repr, "VBox(children=(HTML(...".
"""

import argparse
import html
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from rlhf_lab import figures
from rlhf_lab.utils import RUNS_DIR


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def final_progress_text(nb) -> int:
    """A tqdm bar in a notebook is a widget whose plain-text copy is frozen at its first frame
    ("SFT:   0%|"); the widget state saved with the notebook holds its last. Rewrite the plain text
    from that state ("SFT: 100%|##########| 250/250 [00:27<00:00, ...]"), so a reader, a diff and
    GitHub's viewer see where the bar ended. Returns how many bars were rewritten."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    rewritten = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            view = output.get("data", {}).get(WIDGET_VIEW)
            model = state.get(view["model_id"]) if view else None
            if not model or model.get("model_name") != "HBoxModel":
                continue
            parts = [state.get(c.replace("IPY_MODEL_", ""), {}) for c in model["state"].get("children", [])]
            if len(parts) != 3 or "Progress" not in parts[1].get("model_name", ""):
                continue
            left, bar, right = (html.unescape(str(p["state"].get("value", ""))).replace("\u2007", " ") for p in parts)
            done = parts[1]["state"].get("value", 0) / (parts[1]["state"].get("max") or 1)
            bar = "#" * round(10 * done) + " " * (10 - round(10 * done))
            output["data"]["text/plain"] = f"{left}|{bar}|{right}"
            rewritten += 1
    return rewritten


def views_without_state(nb) -> list[str]:
    """The model ids of widget outputs whose model the notebook's saved widget state does not hold: each
    would show as its plain-text repr. Empty when every widget can be drawn from the notebook alone."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return [view["model_id"] for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
            if (view := output.get("data", {}).get(WIDGET_VIEW)) and view["model_id"] not in state]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--fast", action="store_true", help="run with RLHF_LAB_FAST=1 (for a quick check)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--runs", type=Path, help="the runs/ folder the notebooks read and write (RLHF_LAB_RUNS); "
                        "an empty one runs them from nothing")
    args = parser.parse_args()
    os.environ["RLHF_LAB_FAST"] = "1" if args.fast else "0"
    runs = args.runs.resolve() if args.runs else RUNS_DIR  # RUNS_DIR: RLHF_LAB_RUNS, or the repository's runs/
    if args.runs:
        runs.mkdir(parents=True, exist_ok=True)
        os.environ["RLHF_LAB_RUNS"] = str(runs)  # the kernels inherit it
    if existing := sorted(p.name for p in runs.glob("*") if p.is_dir()):
        print(f"note: {runs} already holds {', '.join(existing)}; notebooks that find their results there "
              "reuse them (--runs EMPTY_FOLDER runs from nothing)", flush=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        # store_widget_state is nbclient's default; named here because the committed notebooks rely on it
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3", store_widget_state=True,
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.time()
        try:
            client.execute()
        except CellExecutionError as err:
            print(f"{path}: a cell failed; the notebook was NOT saved.\n{err}", file=sys.stderr)
            return 1
        seconds = time.time() - start
        if missing := views_without_state(nb):
            print(f"{path}: {len(missing)} widget output(s) have no saved state (model {missing[0]}), so the "
                  "notebook would show their text repr; the notebook was NOT saved.", file=sys.stderr)
            return 1
        final_progress_text(nb)
        meta = nb.metadata.setdefault("rlhf_lab", {})
        meta["last_run"] = {"fast": args.fast, "seconds": round(seconds, 1)}
        meta["figures"] = figures.collect(nb)
        nbformat.write(nb, path)
        print(f"{path}: ran in {seconds:.0f} s ({'FAST' if args.fast else 'full'} mode), saved with outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
