"""Runs side by side: what `rlhf-lab compare RUN_DIR...` shows, and what a notebook can call on runs it made.

    runs = load_runs("runs/beta-0.05") + load_runs("runs/beta-0.2")
    print(runs_table(runs))     # Markdown: gold SFT -> policy, gain in SFT std, KL, RM accuracy, seconds,
                                # and the settings that differ between the runs
    fig = plot_runs(runs)       # gold, reward and KL per update, one line per run

A run is one stage-3 result in a folder an `rlhf-lab` command wrote (DIR/04_ppo, 04_rloo, 04_grpo, 05_dpo;
a folder holding several gives one run each). In a notebook, `run_entry(label, summary, history)` makes
the same kind of dict from a trainer's result, so a sweep made in memory goes through the same table and plot.
Files are only read; a missing or damaged one is named, with what to do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .utils import LabError, read_json, short_path

RESULTS = {"ppo": ("04_ppo", "ppo_result.json"), "rloo": ("04_rloo", "ppo_result.json"),
           "grpo": ("04_grpo", "ppo_result.json"), "dpo": ("05_dpo", "dpo_result.json")}
# settings that say where or how a run was made, not what it is: never a difference worth a column
_NOT_SETTINGS = ("command", "device", "report_to", "precision")


def run_entry(label: str, summary: dict, history: list[dict] | None = None, method: str = "ppo",
              settings: dict | None = None, reward_model_accuracy: float | None = None, path=None) -> dict:
    """One run as the table and the plot take it: its final figures (a PPO/DPO summary: gold_score_sft,
    gold_score_<method>, gold_gain_in_sft_std, kl, seconds), its per-update metrics, its settings."""
    policy = summary.get(f"gold_score_{method}", summary.get("gold_score_ppo"))  # rloo, grpo: "_ppo"
    return {"label": label, "method": method, "path": path, "history": list(history or []),
            "settings": dict(settings or {}), "reward_model_accuracy": reward_model_accuracy,
            "gold_sft": summary.get("gold_score_sft"), "gold_policy": policy,
            "gain_in_sft_std": summary.get("gold_gain_in_sft_std"), "kl": summary.get("kl"),
            "seconds": summary.get("seconds")}


def read_metrics(path: Path) -> list[dict]:
    """A metrics.jsonl, each line a dict; a run killed mid-line leaves a last line cut short, which is
    passed over (the lines before it are whole). Any other bad line is named."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise LabError(f"{short_path(path)}, line {n}: not a JSON record; the file is damaged. Delete that line "
                           "(or the run's folder) and compare again.") from None
        if not isinstance(row, dict):
            raise LabError(f"{short_path(path)}, line {n}: a {type(row).__name__}, not a record of metrics.")
        rows.append(row)
    return rows


def _settings(folder: Path) -> dict:
    """The run's settings, flat ("ppo.kl_coef": 0.05): from the configs/<command>.yaml its commands wrote,
    or (runs made before those existed) from configs/<stage>.json."""
    import yaml

    flat = {}
    configs = folder / "configs"
    for path in sorted(configs.glob("*.yaml")) if configs.is_dir() else ():
        data = yaml.safe_load(path.read_text()) or {}
        for key, value in data.items():
            if isinstance(value, dict):
                flat |= {f"{key}.{name}": v for name, v in value.items()}
            elif key not in _NOT_SETTINGS:
                flat[key] = value
    if not flat and configs.is_dir():
        for path in sorted(configs.glob("*.json")):
            data = read_json(path, "saved config")
            flat |= {f"{path.stem}.{name}": v for name, v in data.items() if not isinstance(v, dict)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()
            if k.rpartition(".")[2] not in _NOT_SETTINGS}


def load_runs(folder: str | Path) -> list[dict]:
    """Every finished stage-3 run (PPO, RLOO, GRPO, DPO) in an rlhf-lab run folder, as run_entry dicts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LabError(f"{short_path(folder)}: no such folder; name the --out folder of an rlhf-lab run.")
    found = [(method, folder / sub / name) for method, (sub, name) in RESULTS.items() if (folder / sub / name).is_file()]
    if not found:
        started = [sub for sub, _ in RESULTS.values() if (folder / sub).is_dir()]
        hint = (f" ({', '.join(started)} started but did not finish: continue it with --resume)" if started else "")
        raise LabError(f"{short_path(folder)} holds no finished PPO, RLOO, GRPO or DPO run{hint}; compare folders "
                       "made by `rlhf-lab run`, `rlhf-lab ppo` or `rlhf-lab dpo`.")
    accuracy = None
    rm_record = folder / "03_reward_model" / "reward_model" / "reward_model.json"
    if rm_record.is_file():
        accuracy = read_json(rm_record, "reward model's record").get("metrics", {}).get("gold_accuracy")
    settings = _settings(folder)
    entries = []
    for method, path in found:
        label = folder.name if len(found) == 1 else f"{folder.name}/{method}"
        entries.append(run_entry(label, read_json(path, f"{method.upper()} result"), read_metrics(path.parent /
                                 "metrics.jsonl"), method, settings, accuracy, path=folder))
    return entries


def differences(runs: list[dict]) -> list[str]:
    """The settings whose values are not the same in every run (a key only some runs have counts too)."""
    keys = sorted({k for run in runs for k in run["settings"]})
    return [k for k in keys if len({repr(run["settings"].get(k)) for run in runs}) > 1]


def _number(value, form: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, form)


def runs_table(runs: list[dict]) -> str:
    """The runs' key figures as a Markdown table, a row each, with the settings that differ."""
    if not runs:
        raise LabError("no runs to compare; name at least one run folder.")
    differ = differences(runs) if len(runs) > 1 else []
    head = ["run", "method", "gold SFT -> policy", "gain (SFT std)", "KL (nats)", "RM acc. vs gold", "seconds"]
    lines = ["| " + " | ".join(head + differ) + " |", "|" + "---|" * (len(head) + len(differ))]
    for run in runs:
        gold = (f"{run['gold_sft']:+.3f} -> {run['gold_policy']:+.3f}"
                if run["gold_sft"] is not None and run["gold_policy"] is not None else "")
        cells = [run["label"], run["method"].upper(), gold, _number(run["gain_in_sft_std"], "+.2f"),
                 _number(run["kl"], ".2f"), _number(run["reward_model_accuracy"], ".1%"), _number(run["seconds"], ".0f")]
        cells += [str(run["settings"].get(k, "")) for k in differ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


CURVES = (("gold", "gold score (policy samples)"), ("score_normalised", "reward (normalised)"),
          ("kl", "KL(policy || SFT), nats"))


def plot_runs(runs: list[dict]):
    """Gold, reward and KL per update, one line per run (DPO has no per-update samples: it is in the table)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    drawn = 0
    for i, run in enumerate(runs):
        history = [h for h in run["history"] if all(key in h for key, _ in CURVES)]
        if not history:
            continue
        drawn += 1
        for ax, (key, _) in zip(axes, CURVES):
            ax.plot([h["step"] for h in history], [h[key] for h in history], color=f"C{i % 10}", label=run["label"])
    for ax, (_, title) in zip(axes, CURVES):
        ax.set(xlabel="update", title=title)
    if drawn:
        axes[0].legend(fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "no per-update curves\n(DPO runs are in the table)", ha="center", va="center",
                     transform=axes[1].transAxes)
    fig.tight_layout()
    return fig
