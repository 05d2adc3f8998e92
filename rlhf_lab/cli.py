"""The `rlhf-lab` command: each stage of RLHF, or all of them, on the tiny world by default.

    rlhf-lab run --out runs/pipeline            # SFT -> rankings -> reward model -> PPO -> report
    rlhf-lab run --out runs/pipeline --resume   # continue an interrupted run; finished stages are kept
    rlhf-lab sft | rank | rm | ppo --out DIR    # one stage (the earlier stages must be in DIR)
    rlhf-lab ppo --algo rloo | grpo --out DIR   # stage 3 with RLOO or GRPO instead of PPO (no value head)
    rlhf-lab dpo --out DIR                      # DPO on the reward model's pairs, beside stage 3

Every stage writes into DIR with the same layout the notebooks use under runs/:
    DIR/01_sft/adapter  DIR/02_rankings/rankings.jsonl  DIR/03_reward_model/reward_model  DIR/04_ppo
    (DIR/04_rloo, DIR/04_grpo for --algo rloo, grpo)  DIR/05_dpo
and `run` adds DIR/plots/*.png, DIR/samples.jsonl, DIR/report.md and DIR/summary.json.
Every field of each stage's dataclass config is an option (--sft-lr, --rm-epochs, --ppo-kl-target, ...),
checked while the command line is parsed; --help gives each one's range and default.

A mistake (a bad option, a missing or damaged file, a full disk) ends in one line that says what went
wrong, where, and what to do, with exit code 2; --debug (or RLHF_LAB_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

from . import config_file, distributed, gold, tracking
from .config_args import add_config_args, add_field_option, config_from_args, flag_of
from .utils import (PACKAGE_DIR, PRECISIONS, ConfigError, LabError, autocast_dtype, config_to_dict, pick_device,
                    read_json, save_config, set_precision, set_seed, short_path)

STAGES = ("sft", "rank", "rm", "ppo")  # what `run` runs; `dpo` is a stage of its own beside ppo
DEFAULT_OUT = "runs/pipeline"


# -----------------------------------------------------------------------------
# the options


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line, not a usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _CheckingParser(_Parser):
    """The same options, checking a config file's values: a bad one raises, for the caller to name the file."""

    def error(self, message):
        raise LabError(message)


def command_stages(name: str) -> tuple[str, ...]:
    """The stages whose options a command has: `run` all four, `iterate` its own and PPO's and the reward
    model's (the rounds retrain both), each stage command its own."""
    if name == "run":
        return STAGES
    return {"label": ("rank",), "iterate": ("iterate", "rm", "ppo")}.get(name, (name,))


def _report_to(text: str) -> str:
    """--report-to: none, tensorboard or wandb, whose package is installed here."""
    if text not in tracking.REPORT_TO:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(tracking.REPORT_TO)})")
    problem = tracking.missing_package(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _configs():
    """{stage: (its config class, the prefix of its options)}."""
    from .dpo import DPOConfig
    from .iterate import IterateConfig
    from .pipeline import RankConfig
    from .ppo import PPOConfig
    from .reward_model import RewardConfig
    from .sft import SFTConfig
    return {"sft": (SFTConfig, "sft_"), "rank": (RankConfig, ""), "rm": (RewardConfig, "rm_"),
            "ppo": (PPOConfig, "ppo_"), "dpo": (DPOConfig, "dpo_"), "iterate": (IterateConfig, "iterate_")}


# fields that get no option of their own: the command sets them (paths between stages), or a common
# option does (--device; the rank stage's --seed and --data)
_WIRED = {"sft": ("device",), "rank": ("seed", "prompts"), "rm": ("trunk", "sft_adapter", "device"),
          "ppo": ("sft", "reward_model", "reward", "model", "device"),
          "dpo": ("sft", "reward_model", "model", "device"),
          "iterate": ("seed", "rounds")}  # --seed, and --rounds (a shortcut of its own)
# iterate: PPO's options without those the rounds decide (steps per round, the algorithm, the held-out prompts)
# and the critic-free algorithms' fields; the seed is --seed's, one for every part of the rounds
_ITERATE_PPO_SKIP = ("steps", "algo", "eval_prompts", "group_size", "kl_loss_coef", "group_std", "seed")
# what --resume may find changed: the paths the command sets, and the device (a run may move machines)
_NOT_COMPARED = _WIRED | {"rank": ()}


def _out_folder(text: str) -> str:
    """--out: a folder that is there or can be made, and that this user can write into."""
    path = Path(text)
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {existing} is a file, not a folder; --out names the run's "
                                         "folder (it is made if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write into {existing} (a read-only disk, or a folder "
                                         "of another user); choose an --out you can write to")
    return text


def _device(text: str) -> str:
    """--device: a device name torch knows, and that this machine has."""
    try:
        pick_device(text)
    except LabError as err:
        raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None
    return text


def build_parser(parser_class=_Parser) -> argparse.ArgumentParser:
    """The command line; `parser.commands` is {command: its parser}."""
    from .sft import SFTConfig

    parser = parser_class(prog="rlhf-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=parser_class)
    helps = {"run": "all stages, then a report", "sft": "stage 1: supervised fine-tuning with LoRA",
             "rank": "stage 2a: simulated annotators rank K samples per prompt",
             "label": "the same as rank", "rm": "stage 2b: the reward model from the rankings",
             "ppo": "stage 3: PPO (or --algo rloo, grpo) against the reward model with a KL penalty",
             "dpo": "DPO: the policy learns from the reward model's pairs directly, no RL (beside stage 3)",
             "iterate": "iterated online RLHF: rounds of rankings of the policy's samples, a reward model "
                        "retrained on them all, PPO continued (after stage 2)"}
    configs = _configs()
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--out", default=DEFAULT_OUT, type=_out_folder,
                       help=f"the run's folder (default: {DEFAULT_OUT})")
        p.add_argument("--model", default=None, help='"tiny" (offline default), a hub id such as "gpt2", or a local folder')
        p.add_argument("--data", default=None, help='"tiny", or a hub dataset such as "stanfordnlp/imdb", or a local file: '
                       "the demonstrations and prompts")
        add_field_option(p, SFTConfig, "seed", "--seed", dest="seed", help="one seed for every stage",
                         default_label="each config's")
        p.add_argument("--device", default="auto", type=_device,
                       help='"auto" (CUDA, MPS, then CPU; the default), "cpu", "cuda", "cuda:N", "mps"')
        p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=False,
                       help="a quick run with small settings (seconds to a minute a stage)")
        p.add_argument("--config", metavar="FILE", default=None,
                       help="options from a YAML or JSON file (a run's configs/<command>.yaml is one); options "
                       "given on the command line override it")
        p.add_argument("--report-to", default="none", type=_report_to, metavar="{none,tensorboard,wandb}",
                       help="also log every metric of metrics.jsonl to TensorBoard (DIR/logs) or Weights & Biases "
                       '(offline unless logged in); needs pip install "rlhf-lab[tensorboard]" or "[wandb]" '
                       "(default: none)")
        p.add_argument("--precision", choices=PRECISIONS, default=None,
                       help='forward passes: "auto" (bf16 autocast on a CUDA GPU that supports it, else fp32; '
                       'the default, or RLHF_LAB_PRECISION), "bf16", "fp32"')
        p.add_argument("--resume", action="store_true", help="continue the run in --out: keep finished stages, "
                       "continue PPO from its last checkpoint (the options must be those the run was made with)")
        p.add_argument("--debug", action="store_true", help="show the traceback of an error (or set RLHF_LAB_DEBUG=1)")
        stages = command_stages(name)
        if name == "iterate":
            from .iterate import IterateConfig
            add_field_option(p, IterateConfig, "rounds", "--rounds", dest="rounds", help="refresh rounds after round 0")
        if "ppo" in stages and name != "iterate":
            cls = configs["ppo"][0]
            g = p.add_argument_group("shortcuts")
            add_field_option(g, cls, "steps", "--steps", dest="steps", help="PPO updates (= --ppo-steps)")
            add_field_option(g, cls, "kl_coef", "--kl-coef", dest="kl_coef",
                             help="beta, the KL penalty's initial weight (= --ppo-kl-coef)")
            add_field_option(g, cls, "kl_target", "--kl-target", dest="kl_target",
                             help="target KL for the adaptive beta, nats (= --ppo-kl-target)")
            g.add_argument("--fixed-kl", action="store_true", help="keep beta fixed (no adaptive controller)")
            add_field_option(g, cls, "algo", "--algo", dest="algo",
                             help="the RL algorithm of stage 3: ppo (value head, GAE), rloo (leave-one-out "
                             "baseline) or grpo (group-normalised advantages, KL as a loss term); = --ppo-algo")
        if any(s in stages for s in ("sft", "rm", "ppo", "dpo")):
            add_field_option(p, SFTConfig, "r", "--lora-r", dest="lora_r", help="LoRA rank for every stage's adapter")
        for stage in stages:
            cls, prefix = configs[stage]
            skip = _WIRED[stage] + ({"ppo": _ITERATE_PPO_SKIP, "rm": ("seed",)}.get(stage, ()) if name == "iterate"
                                    else ())
            add_config_args(p, cls, prefix=prefix, skip=skip)
    from .classroom import add_class_parser
    add_class_parser(sub)  # rlhf-lab class items | merge: a class as annotators (classroom.py)
    p = sub.add_parser("compare", help="runs side by side: a table of their key figures and a plot of their curves",
                       description="runs side by side: a Markdown table of their key figures (and the settings "
                       "that differ) and a plot of gold, reward and KL per update; written to --out")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders of rlhf-lab runs (each a --out of run, ppo or dpo)")
    p.add_argument("--out", default="runs/compare", type=_out_folder,
                   help="where compare.md and compare.png go (default: runs/compare)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (or set RLHF_LAB_DEBUG=1)")
    parser.commands = sub.choices
    return parser


def _as_argv(action: argparse.Action, value) -> list[str]:
    """The command-line words that give option `action` the value `value` (a config file's setting)."""
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise LabError(f"must be true or false, not {value!r}")
        return [flag if value else "--no-" + flag[2:]]
    if action.nargs == "+":
        values = value if isinstance(value, list) else [value]
        return [flag, *map(str, values)]
    if isinstance(value, (list, dict)):
        raise LabError(f"must be a single value, not {value!r}")
    return [flag, "true" if value is True else "false" if value is False else str(value)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with --config's file read first: its settings become options placed before the
    ones typed, so that what is typed overrides the file. Each setting is checked as its option is, and a
    bad one is named with the file and its key."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # a bad option: one line and exit 2 (_Parser.error)
    if getattr(args, "config", None) is None:
        return args
    command = parser.commands[args.command]
    actions = {a.dest: a for a in command._actions if a.option_strings}
    checker = build_parser(_CheckingParser).commands[args.command]
    from_file = []
    try:
        settings = config_file.settings(args.config, set(actions), _configs())
    except LabError as err:
        command.exit(2, f"rlhf-lab: error: {' '.join(str(err).split())}\n")
    for key, dest, value in settings:
        try:
            words = _as_argv(actions[dest], value)
            checker.parse_args(words)
        except LabError as err:
            problem = str(err).replace(f"argument {'/'.join(actions[dest].option_strings)}: ", "")
            command.exit(2, f"rlhf-lab: error: {short_path(args.config)}: {key} = {value!r}: {problem}; fix it in "
                         "the file, or override it on the command line\n")
        from_file += words
    return parser.parse_args([args.command, *from_file, *argv[argv.index(args.command) + 1:]])


# -----------------------------------------------------------------------------
# the stages


def _option(args, name: str):
    """An option's value, or None where this command has no such option (rank has no --lora-r)."""
    return getattr(args, name, None)


def _stage_configs(args, fast: bool | None = None) -> dict:
    """The resolved config of each stage: FAST or full defaults, then the options given."""
    from .dpo import DPOConfig, dpo_config
    from .iterate import IterateConfig, iterate_config
    from .pipeline import RankConfig
    from .ppo import PPOConfig, ppo_config
    from .reward_model import RewardConfig, reward_config
    from .sft import SFTConfig, sft_config

    fast = bool(args.fast) if fast is None else fast
    common = {"seed": args.seed, "device": args.device}
    lora = {"r": _option(args, "lora_r")}
    sft = config_from_args(SFTConfig, args, "sft_", sft_config(fast), model=args.model, data=args.data,
                           **common, **lora)
    rank = config_from_args(RankConfig, args, "", RankConfig(), seed=args.seed, prompts=args.data)
    if rank.n_rankings is None:
        from .pipeline import N_RANKINGS
        rank = dataclasses.replace(rank, n_rankings=N_RANKINGS[fast])
    rm = config_from_args(RewardConfig, args, "rm_", reward_config(fast), **common, **lora)
    ppo_overrides = {"steps": _option(args, "steps"), "kl_coef": _option(args, "kl_coef"),
                     "kl_target": _option(args, "kl_target"), "algo": _option(args, "algo"), "prompts": args.data}
    if _option(args, "fixed_kl"):
        ppo_overrides["adaptive_kl"] = False
    ppo = config_from_args(PPOConfig, args, "ppo_", ppo_config(fast), **common, **lora, **ppo_overrides)
    dpo = config_from_args(DPOConfig, args, "dpo_", dpo_config(fast), **common, **lora, prompts=args.data)
    iterate = config_from_args(IterateConfig, args, "iterate_", iterate_config(fast), seed=args.seed,
                               rounds=_option(args, "rounds"))
    return {"sft": sft, "rank": rank, "rm": rm, "ppo": ppo, "dpo": dpo, "iterate": iterate}


# -----------------------------------------------------------------------------
# resuming: the run in --out must be the run these options describe


def _record_name(stage: str, configs: dict) -> str:
    """The name of a stage's records: the stage, or for stage 3 its algorithm (ppo, rloo, grpo), whose runs
    live side by side (DIR/04_ppo, DIR/04_rloo, DIR/04_grpo; configs/ppo.json, configs/rloo.json, ...)."""
    return configs["ppo"].algo if stage == "ppo" else stage


def _saved_config(out: Path, stage: str, configs: dict) -> tuple[dict, Path] | None:
    """What a stage in `out` was made with, and the file that says so: the stage's own record where it
    has one (it finished, or PPO or DPO started), else configs/<stage>.json, written when the stage began."""
    from . import pipeline

    own = {"sft": out / pipeline.SFT_DIR / "adapter" / "sft_config.json",
           "rm": out / pipeline.REWARD_DIR / "reward_model" / "reward_model.json",
           "ppo": out / pipeline.rl_dir(configs["ppo"].algo) / "ppo_config.json",
           "dpo": out / pipeline.DPO_DIR / "dpo_config.json"}.get(stage)
    for path in (own, out / "configs" / f"{_record_name(stage, configs)}.json"):
        if path is not None and path.is_file():
            saved = read_json(path, f"saved {stage} config")
            return (saved.get("config", {}) if path.name == "reward_model.json" else saved), path
    return None


def _differences(out: Path, configs: dict, stages) -> list[tuple[str, str, object, object]]:
    """(stage, field, saved value, value now) for each user-settable field that differs from the run."""
    found = []
    for stage in stages:
        saved = _saved_config(out, stage, configs)
        if saved is None:
            continue
        now = config_to_dict(configs[stage])
        for name, value in now.items():
            if name in _NOT_COMPARED[stage] or name not in saved[0]:
                continue
            if saved[0][name] != value:
                found.append((stage, name, saved[0][name], value))
    return found


def check_resume(args, out: Path, configs: dict, stages) -> None:
    """--resume continues the run in `out` as it was made: refuse options that would change it (the
    run would mix two settings and its summary would describe neither), naming what differs."""
    found = _differences(out, configs, stages)
    if not found:
        return
    prefixes = {stage: prefix for stage, (_, prefix) in _configs().items()}
    shown = [f"{stage}.{name} {saved!r} -> {now!r} ({flag_of(prefixes[stage], name)})"
             for stage, name, saved, now in found[:6]]
    more = f" and {len(found) - 6} more" if len(found) > 6 else ""
    hint = ""
    if not _differences(out, _stage_configs(args, fast=not args.fast), stages):
        hint = f" It was made {'without' if args.fast else 'with'} --fast."
    raise LabError(f"--resume would continue {short_path(out)} with other settings than it was made with: "
                   f"{', '.join(shown)}{more}.{hint} Resume with the options the run was made with (its configs "
                   f"are in {short_path(out / 'configs')}), or start a new run with another --out.")


def _save_configs(out: Path, configs: dict, stages) -> None:
    """configs/<stage>.json: what each stage of this command is made with (read again by --resume)."""
    for stage in stages:
        save_config(configs[stage], out / "configs" / f"{_record_name(stage, configs)}.json")


def start_command(args, out: Path, configs: dict) -> dict:
    """What every command does before its stages: configs/<command>.yaml, every option it resolved (a valid
    --config that makes the same run again), and the tracker of --report-to, started on that config."""
    command = "rank" if args.command == "label" else args.command
    dests = {a.dest for a in build_parser().commands[args.command]._actions if a.option_strings}
    resolved = config_file.resolved(command, args, configs, dests, _configs(), command_stages(command))
    config_file.write(resolved, out / "configs" / f"{command}.yaml")
    tracking.start(args.report_to, out / "logs", resolved, name=f"{out.name}-{command}")
    return resolved


def _write_jsonl(rows, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _save_figure(fig, path: Path) -> str:
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return short_path(path)


def require_stages(out: Path, *stages: str) -> None:
    """The earlier stages this one builds on must be in `out`: say which is missing and the command that
    makes it, before anything is loaded."""
    from . import pipeline

    # each stage's last file written: a stage killed while saving is not taken for a finished one
    needs = {"sft": (pipeline.sft_adapter_path(out) / "sft_result.json", "No LoRA adapter in {folder}"),
             "rank": (pipeline.rankings_path(out), "No rankings in {folder}"),
             "rm": (pipeline.reward_model_path(out) / "reward_model.json", "No reward model in {folder}")}
    for stage in stages:
        path, what = needs[stage]
        if not path.is_file():
            raise LabError(f"{what.format(folder=short_path(path.parent))} ({path.name} is missing): run "
                           f"`rlhf-lab {stage} --out {out}` first, or `rlhf-lab run --out {out}` for every stage.")


def stage_sft(out: Path, cfg, resume: bool) -> dict:
    from . import pipeline
    from .sft import RESULT_FILE, save_sft, train_sft

    path = pipeline.sft_adapter_path(out)
    if resume and (path / RESULT_FILE).is_file():
        print(f"[sft] done already: {short_path(path)}")
        saved = read_json(path / RESULT_FILE, "SFT result")
        return {k: v for k, v in saved.items() if k != "history"}  # as a fresh run's summary has it
    if (path / RESULT_FILE).is_file():
        raise LabError(f"{short_path(out)} already holds a run; pass --resume to continue it, or choose another --out.")
    result = train_sft(cfg, out_dir=path, progress=True)
    if not distributed.is_main():  # train_sft saved the adapter in the main process; the rest is its too
        return result.summary()
    if result.out_dir is None:
        save_sft(result, path)
    _write_jsonl(result.history, path.parent / "metrics.jsonl")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in result.history], [h["train_loss"] for h in result.history], label="train")
    ax.plot([h["step"] for h in result.history], [h["eval_loss"] for h in result.history], label="held-out")
    ax.axhline(result.eval_loss_before, color="gray", linestyle="--", label="before SFT")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per completion token")
    ax.set_title("SFT with LoRA")
    ax.legend()
    _save_figure(fig, out / "plots" / "sft_loss.png")
    print(f"[sft] held-out loss {result.eval_loss_before:.3f} -> {result.eval_loss_after:.3f} "
          f"({result.relative_drop:.0%} lower), {result.seconds:.0f} s")
    return result.summary()


def stage_rank(out: Path, cfg, device) -> dict:
    from . import pipeline
    from .sft import load_sft

    path = pipeline.rankings_path(out)
    record = path.parent / "rank_result.json"  # the seconds the rankings took, over every top-up
    n = cfg.n_rankings
    have = pipeline.count_rankings(path)
    spent = read_json(record, "rankings' record").get("seconds", 0.0) if record.is_file() else 0.0
    if have >= n:
        print(f"[rank] done already: {have} rankings in {short_path(path)}")
        return {"rankings": have, "k": cfg.k, "seconds": spent}
    require_stages(out, "sft")
    start = time.time()
    model, tokenizer = load_sft(pipeline.sft_adapter_path(out), device=device)
    prompts = None
    if cfg.prompts not in (None, "tiny"):
        from .loading import load_prompts
        prompts = load_prompts(cfg.prompts, "train")["prompt"]
    pipeline.top_up_rankings(path, model, tokenizer, n, K=cfg.k, prompts=prompts, seed=cfg.seed)
    seconds = time.time() - start
    print(f"[rank] simulated annotators ranked {n - have} prompts x {cfg.k} samples in {seconds:.0f} s")
    result = {"rankings": pipeline.count_rankings(path), "k": cfg.k, "seconds": spent + seconds}
    record.write_text(json.dumps(result) + "\n")
    return result


def stage_rm(out: Path, cfg, args, resume: bool) -> dict:
    from . import pipeline
    from .preferences import load_preferences
    from .reward_model import META_FILE, plot_history, save_reward_model, train_reward_model

    path = pipeline.reward_model_path(out)
    if resume and (path / META_FILE).is_file():
        print(f"[rm] done already: {short_path(path)}")
        return read_json(path / META_FILE, "reward model's record")["metrics"]
    require_stages(out, "sft", "rank")
    start = time.time()
    sft_path = pipeline.sft_adapter_path(out)
    sft_saved = read_json(sft_path / "sft_config.json", "SFT config")
    base, data = sft_saved["model"], args.data or sft_saved.get("data")  # the run's data, also for `rlhf-lab rm`
    cfg = dataclasses.replace(cfg, trunk=base, sft_adapter=str(sft_path))
    # whole prompts held out, then at most 2,000 training pairs: the same split as the notebooks
    train, held_out = pipeline.reward_model_pairs(load_preferences(pipeline.rankings_path(out)), cfg)
    # one copy of the backbone (the SFT model merged): it samples for the normalisation, on the run's own
    # held-out prompts, then carries the reward adapter
    trunk, tokenizer, samples = pipeline.sft_trunk_and_samples(sft_path, base, pipeline.N_NORMALISE[bool(args.fast)],
                                                               cfg.seed, prompts=data, device=args.device)
    result = train_reward_model(cfg, train, trunk=trunk, tokenizer=tokenizer, eval_pairs=held_out, progress=True,
                                copy_trunk=False)
    norm = result.reward_model.normalise_on(samples) | {"prompts": data or "tiny"}
    metrics = result.metrics | {"normalisation": norm, "train_pairs": len(result.train_pairs),
                                "eval_pairs": len(result.eval_pairs), "seconds": time.time() - start}
    if distributed.is_main():  # one process writes; the others wait for the file they will read
        save_reward_model(result.reward_model, path, cfg, metrics)
    distributed.barrier()
    if not distributed.is_main():
        return metrics
    _write_jsonl(result.history, path.parent / "metrics.jsonl")
    _save_figure(plot_history(result.history), out / "plots" / "reward_model_accuracy.png")
    print(f"[rm] held-out accuracy vs the gold labeler {metrics['gold_accuracy']:.1%} on "
          f"{len(result.eval_pairs)} pairs ({len(result.train_pairs)} trained), {metrics['seconds']:.0f} s")
    return metrics


def stage_ppo(out: Path, cfg, args, resume: bool):
    from . import pipeline
    from .ppo import RESULT_FILE, build_trainer, plot_history, run_ppo

    ppo_dir = out / pipeline.rl_dir(cfg.algo)
    name = cfg.algo.upper()
    if resume and (ppo_dir / RESULT_FILE).is_file():
        print(f"[{cfg.algo}] done already: {short_path(ppo_dir)}")
        return read_json(ppo_dir / RESULT_FILE, f"{name} result"), None
    if (ppo_dir / RESULT_FILE).is_file():  # as sft and dpo do: a finished run is never trained over
        raise LabError(f"{short_path(ppo_dir)} already holds a finished {name} run; pass --resume to keep it, "
                       "or choose another --out.")
    require_stages(out, "sft", "rm")
    sft_path = pipeline.sft_adapter_path(out)
    base = read_json(sft_path / "sft_config.json", "SFT config")["model"]
    cfg = dataclasses.replace(cfg, sft=str(sft_path), reward_model=str(pipeline.reward_model_path(out)),
                              model=base, reward="rm", device=args.device)
    trainer = build_trainer(cfg, out_dir=ppo_dir, resume=resume, progress=True)
    result = run_ppo(trainer, progress=True)
    if not distributed.is_main():  # the evaluation, the files and the figure are the main process's
        return result.summary, trainer
    kl_target = cfg.kl_target if cfg.adaptive_kl and cfg.algo != "grpo" else None
    _save_figure(plot_history(result.history, kl_target=kl_target), out / "plots" / f"{cfg.algo}_training.png")
    s = result.summary
    print(f"[{cfg.algo}] gold score {s['gold_score_sft']:+.3f} (SFT) -> {s['gold_score_ppo']:+.3f} ({name}), "
          f"{s['gold_gain_in_sft_std']:+.2f} SFT std, KL {s['kl']:.2f} nats, "
          f"{s['episodes_per_second']:.1f} episodes/s")
    return s, trainer


def stage_dpo(out: Path, cfg, args, resume: bool) -> dict:
    """DPO on the pairs (and the held-out split) the reward model in `out` was trained on, on the SFT trunk;
    its samples scored by gold, the reward model and their KL to the SFT model, as stage 3's are."""
    from . import pipeline
    from .dpo import RESULT_FILE, build_dpo_trainer, plot_history, reward_model_split, run_dpo

    dpo_dir = out / pipeline.DPO_DIR
    if (dpo_dir / RESULT_FILE).is_file():
        if resume:
            print(f"[dpo] done already: {short_path(dpo_dir)}")
            return read_json(dpo_dir / RESULT_FILE, "DPO result")
        raise LabError(f"{short_path(dpo_dir)} already holds a finished DPO run; pass --resume to keep it, or choose "
                       "another --out.")
    require_stages(out, "sft", "rank", "rm")
    sft_path, reward_path = pipeline.sft_adapter_path(out), pipeline.reward_model_path(out)
    base = read_json(sft_path / "sft_config.json", "SFT config")["model"]
    cfg = dataclasses.replace(cfg, sft=str(sft_path), reward_model=str(reward_path), model=base, device=args.device)
    train, held_out = reward_model_split(reward_path, pipeline.rankings_path(out))
    trainer, reward = build_dpo_trainer(cfg, train, held_out, out_dir=dpo_dir, resume=resume, progress=True)
    result = run_dpo(trainer, reward, progress=True)
    if not distributed.is_main():  # the evaluation, the files and the figure are the main process's
        return result.summary
    _save_figure(plot_history(result.history), out / "plots" / "dpo_training.png")
    s = result.summary
    pairs = (f"held-out pairs ordered as gold orders them {s['heldout_gold_accuracy']:.1%} "
             f"({s['eval_pairs']} pairs), " if "heldout_gold_accuracy" in s else "")
    print(f"[dpo] {s['train_pairs']} pairs, {pairs}gold score {s['gold_score_sft']:+.3f} (SFT) -> "
          f"{s['gold_score_dpo']:+.3f} (DPO), {s['gold_gain_in_sft_std']:+.2f} SFT std, KL {s['kl']:.2f} nats, "
          f"{s['pairs_per_second']:.0f} pairs/s")
    return s


def stage_iterate(out: Path, configs: dict, args, resume: bool) -> dict:
    """Iterated online RLHF (rlhf_lab/iterate.py) on the SFT model, rankings and reward model in `out`:
    round 0 is PPO against that reward model, each later round ranks the policy's samples, retrains the
    reward model on every ranking so far and continues PPO; then one-shot RLHF with the same labels."""
    from . import pipeline
    from .iterate import SUMMARY_FILE, IteratedRLHF, plot_rounds

    folder = out / pipeline.ITERATE_DIR
    if (folder / SUMMARY_FILE).is_file() and not resume:
        raise LabError(f"{short_path(folder)} already holds an iterated run; pass --resume to keep it (or to "
                       "continue it), or choose another --out.")
    if folder.is_dir() and (folder / "iterate_config.json").is_file() and not resume:
        raise LabError(f"{short_path(folder)} holds an unfinished iterated run; pass --resume to continue it, or "
                       "choose another --out.")
    require_stages(out, "sft", "rank", "rm")
    cfg = configs["iterate"]
    ppo = {k: v for k, v in dataclasses.asdict(configs["ppo"]).items()
           if k not in _ITERATE_PPO_SKIP + _WIRED["ppo"] or k == "device"} | {"device": args.device}
    rm = {k: v for k, v in dataclasses.asdict(configs["rm"]).items()
          if k not in _WIRED["rm"] + ("seed",) or k == "device"} | {"device": args.device}
    it = IteratedRLHF(cfg, pipeline.sft_adapter_path(out), pipeline.rankings_path(out), pipeline.reward_model_path(out),
                      folder, fast=bool(args.fast), ppo_overrides=ppo, rm_overrides=rm, progress=True)
    summary = it.run()
    _save_figure(plot_rounds(it.summary(), it.history()), out / "plots" / "iterate.png")
    line = (f"[iterate] {summary['rounds']} rounds, {summary['labels']} rankings: reward model accuracy on the policy's "
            f"samples {summary['rm_acc_policy_samples_stale']:.1%} (first RM) -> "
            f"{summary['rm_acc_policy_samples_refreshed']:.1%} (refreshed); gold {summary['gold_sft']:+.3f} (SFT) -> "
            f"{summary['gold_iterated']:+.3f} (iterated, KL {summary['kl_iterated']:.2f} nats)")
    if "gold_one_shot_same_labels" in summary:
        line += (f", {summary['gold_one_shot_same_labels']:+.3f} (one-shot with the same labels, KL "
                 f"{summary['kl_one_shot']:.2f} nats)")
    print(line)
    return summary


# -----------------------------------------------------------------------------
# the whole pipeline and its report


def before_after_samples(out: Path, trainer, n_prompts: int, seed: int) -> list[dict]:
    """Base, SFT and PPO samples on the same held-out prompts, with gold and reward-model scores."""
    from .loading import load_model, load_prompts
    from .ppo import POLICY, sample_models

    cfg = trainer.cfg
    prompts = load_prompts(cfg.prompts, "validation", limit=n_prompts)["prompt"]
    base, _ = load_model(cfg.model, device=next(trainer.model.parameters()).device)
    models = {"base": base, "sft": (trainer.model, None), cfg.algo: (trainer.model, POLICY)}
    rows = sample_models(models, prompts, trainer.tokenizer, seed=seed, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, reward=trainer.reward)
    for row in rows:  # the report shows the normalised reward-model score, as PPO saw it
        if row.get("reward") is not None:
            row["reward"] = trainer.score_gain * row["reward"] + trainer.score_bias
    _write_jsonl(rows, out / "samples.jsonl")
    return rows


def sample_lengths(sft: dict, ppo: dict, max_new_tokens: int) -> dict:
    """How long the models write and how often they stop within max_new_tokens: the share of held-out samples
    that end with EOS and their mean length in tokens (EOS included), of the SFT model and of stage 3's policy
    (under "ppo" whatever the algo, as in its summary), beside the length of the demonstrations SFT taught.
    A policy that learns to stop early under the no-EOS score gains gold for that alone; these tell it apart."""
    def model(name):
        return {"eos_share": ppo.get(f"eos_share_{name}"), "mean_length": ppo.get(f"response_length_{name}")}

    return {"max_new_tokens": max_new_tokens, "demonstrations": sft.get("completion_tokens", {}),
            "sft": model("sft"), "ppo": model("ppo")}


def write_report(out: Path, summary: dict, samples: list[dict]) -> Path:
    """A short Markdown report: the headline numbers, the plots, and a few samples of each model."""
    import html

    s = summary
    algo = s["ppo"].get("algo", "ppo")  # stage 3's algorithm: ppo, rloo or grpo
    name = algo.upper()
    stages_total = sum(s.get("stage_seconds", {}).values())
    took = (f"Resumed with --resume: this command took {s['seconds']:.0f} s; the stages took {stages_total:.0f} s "
            "in all when they ran (the table's seconds)." if s.get("resumed") else f"Total {s['seconds']:.0f} s.")
    lines = [
        "# rlhf-lab run", "",
        f"Made by `rlhf-lab run` on {time.strftime('%Y-%m-%d %H:%M')}, {'FAST' if s['fast'] else 'full'} mode, "
        f"model `{s['model']}`, seed {s['seed']}. {took}", "",
        "| stage | result | seconds |", "|---|---|---|",
        f"| 1. SFT | held-out loss {s['sft']['eval_loss_before']:.3f} -> {s['sft']['eval_loss_after']:.3f} "
        f"({s['sft']['relative_drop']:.0%} lower) | {s['sft']['seconds']:.0f} |",
        f"| 2a. rankings | {s['rankings']['rankings']} rankings of K = {s['rankings']['k']} (simulated annotators) "
        f"| {s['rankings']['seconds']:.0f} |",
        f"| 2b. reward model | held-out accuracy vs gold {s['reward_model']['heldout_accuracy']:.1%} "
        f"| {s['reward_model']['seconds']:.0f} |",
        f"| 3. {name} | gold {s['ppo']['gold_score_sft']:+.3f} (SFT) -> {s['ppo']['gold_score_ppo']:+.3f} ({name}), "
        f"KL {s['ppo']['kl']:.2f} nats, {s['ppo']['episodes_per_second']:.1f} episodes/s | {s['ppo']['seconds']:.0f} |",
        "", *_length_lines(s.get("lengths"), name),
        "", "![SFT loss](plots/sft_loss.png)", "![reward model](plots/reward_model_accuracy.png)",
        f"![{name}](plots/{algo}_training.png)", "", "## Samples (held-out prompts, same seed for each model)", "",
        "| prompt | model | completion | gold | reward model |", "|---|---|---|---|---|",
    ]
    for row in samples[: 3 * 8]:
        text = html.escape(row["completion"]).replace("|", "\\|").replace("\n", " ")
        reward = f"{row['reward']:+.2f}" if row.get("reward") is not None else ""
        lines.append(f"| {html.escape(row['prompt'])} | {row['model']} | {text} | {row['gold']:+.2f} | {reward} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _length_lines(lengths: dict | None, name: str) -> list[str]:
    """The report's lines on EOS share and length (sample_lengths), or none for a summary without them."""
    if not lengths or lengths["sft"]["eos_share"] is None:
        return []
    sft, policy, demos = lengths["sft"], lengths["ppo"], lengths.get("demonstrations") or {}
    line = (f"Held-out samples of at most {lengths['max_new_tokens']} new tokens: ended with EOS "
            f"{sft['eos_share']:.0%} (SFT) -> {policy['eos_share']:.0%} ({name}), mean length "
            f"{sft['mean_length']:.1f} -> {policy['mean_length']:.1f} tokens.")
    if demos:
        line += (f" The SFT demonstrations' completions: {demos['mean']:.1f} tokens on average with EOS, 95% "
                 f"within {demos['p95']}.")
    return [line]


def run_pipeline(args) -> dict:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.resume and (out / "01_sft").exists():
        raise LabError(f"{out} already holds a run; pass --resume to continue it, or choose another --out.")
    distributed.barrier()  # under accelerate launch: every process has looked before any makes a folder
    configs = _stage_configs(args)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        check_resume(args, out, configs, STAGES)
    seed = configs["ppo"].seed
    set_seed(seed)
    if distributed.is_main():  # under accelerate launch one process writes (rlhf_lab/distributed.py)
        _save_configs(out, configs, STAGES)
        start_command(args, out, configs)
    start = time.time()
    device = pick_device(args.device)
    summary = {"model": configs["sft"].model, "seed": seed, "fast": bool(args.fast), "resumed": bool(args.resume),
               "device": str(device), "precision": "bf16" if autocast_dtype(device) is not None else "fp32",
               "world_size": distributed.world_size(),  # processes under accelerate launch (1: not launched)
               "gold_reference": gold.get_reference(), "command": " ".join(["rlhf-lab"] + sys.argv[1:])}
    summary["sft"] = stage_sft(out, configs["sft"], args.resume)
    with distributed.main_process_first():  # the main process ranks; the others then find the file
        summary["rankings"] = stage_rank(out, configs["rank"], args.device)
    rm = stage_rm(out, configs["rm"], args, args.resume)
    summary["reward_model"] = {"heldout_accuracy": rm["gold_accuracy"], **{k: v for k, v in rm.items()
                                                                          if isinstance(v, (int, float))}}
    ppo, trainer = stage_ppo(out, configs["ppo"], args, args.resume)
    summary["ppo"] = ppo
    if trainer is None:  # PPO was finished earlier: reload it for the samples
        from . import pipeline
        from .ppo import build_trainer
        ppo_dir = out / pipeline.rl_dir(configs["ppo"].algo)
        cfg = dataclasses.replace(configs["ppo"], **read_json(ppo_dir / "ppo_config.json", "PPO config"))
        trainer = build_trainer(cfg, out_dir=ppo_dir, resume=True, progress=False)
    if not distributed.is_main():  # the report is the main process's
        distributed.barrier()
        return summary
    samples = before_after_samples(out, trainer, n_prompts=16 if args.fast else 64, seed=seed)
    summary["lengths"] = sample_lengths(summary["sft"], ppo, configs["ppo"].max_new_tokens)
    summary["seconds"] = time.time() - start
    summary["stage_seconds"] = {"sft": summary["sft"]["seconds"], "rankings": summary["rankings"]["seconds"],
                                "reward_model": summary["reward_model"]["seconds"], "ppo": ppo["seconds"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    report = write_report(out, summary, samples)
    print(f"\ndone in {summary['seconds']:.0f} s: {short_path(report)}, {short_path(out / 'summary.json')}")
    distributed.barrier()
    return summary


def compare_runs(args) -> None:
    """`rlhf-lab compare RUN_DIR...`: the runs' key figures as a Markdown table (printed, and in
    --out/compare.md) and their curves per update side by side (--out/compare.png)."""
    from .runs import load_runs, plot_runs, runs_table

    runs = [run for path in args.runs for run in load_runs(path)]
    out = Path(args.out)
    table = runs_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text("# rlhf-lab compare\n\n" + table + "\n\n![curves](compare.png)\n")
    plot = _save_figure(plot_runs(runs), out / "compare.png")
    print(table)
    print(f"\n{short_path(out / 'compare.md')}, {plot}")


def run_stage(args) -> None:
    """One stage (sft, rank or label, rm, ppo) into --out."""
    stage = {"label": "rank"}.get(args.command, args.command)
    out = Path(args.out)
    configs = _stage_configs(args)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        check_resume(args, out, configs, (stage,))
    if stage == "iterate" and distributed.world_size() > 1:
        raise LabError("`rlhf-lab iterate` runs in one process; under accelerate launch the lab runs run, sft, rank, "
                       "rm, ppo (--algo ppo, rloo, grpo) and dpo. Start it without accelerate launch.")
    if distributed.is_main():  # under accelerate launch one process writes (rlhf_lab/distributed.py)
        _save_configs(out, configs, (stage,))
        start_command(args, out, configs)
    if stage == "sft":
        stage_sft(out, configs["sft"], args.resume)
    elif stage == "rank":
        with distributed.main_process_first():  # the main process ranks; the others then find the file
            stage_rank(out, configs["rank"], args.device)
    elif stage == "rm":
        stage_rm(out, configs["rm"], args, args.resume)
    elif stage == "ppo":
        stage_ppo(out, configs["ppo"], args, args.resume)
    elif stage == "dpo":
        stage_dpo(out, configs["dpo"], args, args.resume)
    elif stage == "iterate":
        stage_iterate(out, configs, args, args.resume)


# -----------------------------------------------------------------------------
# the one place where an error becomes the line a user sees

_DISK_PROBLEMS = {  # errno: (what happened, what to do)
    errno.ENOSPC: ("no space left on the disk", "free some space (df -h shows where) or choose another --out, "
                   "then run the same command with --resume"),
    errno.EDQUOT: ("your disk quota is used up", "free some space or choose another --out, then run the same "
                   "command with --resume"),
    errno.EROFS: ("the disk is read-only", "choose an --out on a disk you can write to"),
    errno.EACCES: ("permission denied", "choose an --out you can write to, or check the file's permissions"),
    errno.EPERM: ("permission denied", "choose an --out you can write to, or check the file's permissions"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EISDIR: ("it is a folder, not a file", "name the file inside it"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
}


def _os_error_of(err: BaseException) -> tuple[int, str | None] | None:
    """(errno, file) if `err` is, or wraps, an operating-system error (safetensors' Rust writer reports a
    full disk as "... (os error 28)"), else None."""
    while err is not None:
        if isinstance(err, OSError) and err.errno is not None:
            return err.errno, err.filename
        found = re.search(r"os error (\d+)", str(err))
        if found:
            return int(found.group(1)), None
        err = err.__cause__ or err.__context__
    return None


def user_message(err: BaseException, out: str | None = None) -> tuple[str, int]:
    """(the one line to show, the exit code) for an exception that ended a command."""
    if isinstance(err, ConfigError) and err.fields and "(option" not in str(err):
        prefix = {cls.__name__: prefix for cls, prefix in _configs().values()}.get(err.config)
        if prefix is not None:  # a config rule found at run time (e.g. max_length against the model)
            flags = ", ".join(flag_of(prefix, name) for name in err.fields)
            return " ".join(f"{err} (option {flags})".split()), 2
    if isinstance(err, LabError):
        return " ".join(str(err).split()), 2  # one line, however the message was wrapped
    os_error = _os_error_of(err)
    if os_error is not None:
        code, filename = os_error
        what, fix = _DISK_PROBLEMS.get(code, (os.strerror(code).lower(), "check the path and the disk"))
        where = short_path(filename) if filename else f"while writing into {out}" if out else "while reading or writing"
        return f"{where}: {what}; {fix}.", 2
    first = " ".join(str(err).split())[:200]
    return (f"internal error ({type(err).__name__}: {first}). This is a bug in rlhf-lab, not something you did: "
            "run the same command with --debug (or RLHF_LAB_DEBUG=1) to see the traceback, and report it."), 1


def _close_progress_bars() -> None:
    """End any progress bar's line first, so that the error starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _one_line_warning(message, category, filename, lineno, file=None, line=None, _show=warnings.showwarning):
    """The lab's own warnings as one line each ("rlhf-lab: warning: ..."); other libraries' as usual."""
    if not str(filename).startswith(str(PACKAGE_DIR)):
        return _show(message, category, filename, lineno, file, line)
    print(f"rlhf-lab: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def _debug(args) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("RLHF_LAB_DEBUG", "").strip().lower() in (
        "1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # a bad option, or a bad setting in --config's file: one line and exit 2
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            if getattr(args, "precision", None) is not None:
                set_precision(args.precision)
            if getattr(args, "device", None) == "cpu":  # under accelerate launch: CPU processes (gloo)
                distributed.set_cpu(True)
            distributed.quiet_other_processes()  # under accelerate launch one process prints
            if distributed.launch_problem():
                warnings.warn(distributed.launch_problem(), stacklevel=1)
            # gold judges fluency against the tiny corpus in the tiny world, by English rules elsewhere
            gold.set_reference(gold.reference_for(getattr(args, "data", None)))
            if args.command == "run":
                run_pipeline(args)
            elif args.command == "compare":
                compare_runs(args)
            elif args.command == "class":
                from .classroom import run_class
                run_class(args)
            else:
                run_stage(args)
            return 0
        except KeyboardInterrupt:
            _close_progress_bars()
            print("rlhf-lab: interrupted; continue with the same command and --resume.", file=sys.stderr)
            return 130
        except Exception as err:
            if _debug(args):
                raise
            message, code = user_message(err, args.out)
            _close_progress_bars()
            print(f"rlhf-lab: error: {message}", file=sys.stderr)
            return code
        finally:
            tracking.stop()


if __name__ == "__main__":
    sys.exit(main())
