"""Execute notebooks in place, so that the committed notebooks carry a full run's outputs.

    python scripts/run_notebooks.py notebooks/00_welcome.ipynb [more.ipynb ...] [--fast]

Without --fast this is the full (not FAST) run a reader should see. It refuses to save a notebook
whose run raised an error: a learner must never open a notebook on a traceback. The figures the
notebook recorded (rlhf_lab.figures.record) are saved in its metadata["rlhf_lab"]["figures"].
"""

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from rlhf_lab import figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--fast", action="store_true", help="run with RLHF_LAB_FAST=1 (for a quick check)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    os.environ["RLHF_LAB_FAST"] = "1" if args.fast else "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.time()
        try:
            client.execute()
        except CellExecutionError as err:
            print(f"{path}: a cell failed; the notebook was NOT saved.\n{err}", file=sys.stderr)
            return 1
        seconds = time.time() - start
        meta = nb.metadata.setdefault("rlhf_lab", {})
        meta["last_run"] = {"fast": args.fast, "seconds": round(seconds, 1)}
        meta["figures"] = figures.collect(nb)
        nbformat.write(nb, path)
        print(f"{path}: ran in {seconds:.0f} s ({'FAST' if args.fast else 'full'} mode), saved with outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
