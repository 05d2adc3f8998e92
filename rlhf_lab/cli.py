"""The `rlhf-lab` command: each stage of RLHF, or all of them, on the tiny world by default.

    rlhf-lab run --out runs/pipeline            # SFT -> rankings -> reward model -> PPO -> report
    rlhf-lab run --out runs/pipeline --resume   # continue an interrupted run; finished stages are kept
    rlhf-lab sft | rank | rm | ppo --out DIR    # one stage (earlier stages must be in DIR, or are made)

Every stage writes into DIR with the same layout the notebooks use under runs/:
    DIR/01_sft/adapter  DIR/02_rankings/rankings.jsonl  DIR/03_reward_model/reward_model  DIR/04_ppo
and `run` adds DIR/plots/*.png, DIR/samples.jsonl, DIR/report.md and DIR/summary.json.
Every field of each stage's dataclass config is an option (--sft-lr, --rm-epochs, --ppo-kl-target, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from .config_args import add_config_args, config_from_args
from .utils import (PRECISIONS, LabError, autocast_dtype, config_to_dict, pick_device, save_config, set_precision,
                    set_seed, short_path)

STAGES = ("sft", "rank", "rm", "ppo")
DEFAULT_OUT = "runs/pipeline"


# -----------------------------------------------------------------------------
# the options


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line, not a usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _configs():
    from .ppo import PPOConfig
    from .reward_model import RewardConfig
    from .sft import SFTConfig
    return {"sft": (SFTConfig, "sft_"), "rm": (RewardConfig, "rm_"), "ppo": (PPOConfig, "ppo_")}


# fields the command sets itself (paths between stages), not the user
_WIRED = {"sft": ("device",), "rm": ("trunk", "sft_adapter", "device"),
          "ppo": ("sft", "reward_model", "reward", "model", "device")}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rlhf-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    helps = {"run": "all stages, then a report", "sft": "stage 1: supervised fine-tuning with LoRA",
             "rank": "stage 2a: simulated annotators rank K samples per prompt",
             "label": "the same as rank", "rm": "stage 2b: the reward model from the rankings",
             "ppo": "stage 3: PPO against the reward model with a KL penalty"}
    configs = _configs()
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--out", default=DEFAULT_OUT, help=f"the run's folder (default: {DEFAULT_OUT})")
        p.add_argument("--model", default=None, help='"tiny" (offline default), a hub id such as "gpt2", or a local folder')
        p.add_argument("--data", default=None, help='"tiny", or a hub dataset such as "stanfordnlp/imdb", or a local file: '
                       "the demonstrations and prompts")
        p.add_argument("--seed", type=int, default=None, help="one seed for every stage (default: each config's)")
        p.add_argument("--device", default="auto", help='"auto" (CUDA, MPS, then CPU), "cpu", "cuda", ...')
        p.add_argument("--fast", action="store_true", help="a quick run with small settings (seconds to a minute a stage)")
        p.add_argument("--precision", choices=PRECISIONS, default=None,
                       help='forward passes: "auto" (bf16 autocast on a CUDA GPU that supports it, else fp32; '
                       'the default, or RLHF_LAB_PRECISION), "bf16", "fp32"')
        p.add_argument("--resume", action="store_true", help="continue the run in --out: keep finished stages, "
                       "continue PPO from its last checkpoint")
        stages = STAGES if name == "run" else ({"label": ("rank",)}.get(name, (name,)))
        if "rank" in stages:
            g = p.add_argument_group("rankings")
            g.add_argument("--k", type=int, default=4, help="samples ranked per prompt (InstructGPT: 4 to 9)")
            g.add_argument("--n-rankings", type=int, default=None, help="rankings to collect (default: 340, "
                           "about 2,000 pairs; --fast: 60)")
        if "ppo" in stages:
            g = p.add_argument_group("shortcuts")
            g.add_argument("--steps", type=int, default=None, help="PPO updates (= --ppo-steps)")
            g.add_argument("--kl-coef", type=float, default=None, help="beta, the KL penalty's initial weight")
            g.add_argument("--kl-target", type=float, default=None, help="target KL for the adaptive beta (nats)")
            g.add_argument("--fixed-kl", action="store_true", help="keep beta fixed (no adaptive controller)")
        if any(s in stages for s in ("sft", "rm", "ppo")):
            p.add_argument("--lora-r", type=int, default=None, help="LoRA rank for every stage's adapter")
        for stage in stages:
            if stage in configs:
                cls, prefix = configs[stage]
                add_config_args(p, cls, prefix=prefix, skip=_WIRED[stage])
    return parser


# -----------------------------------------------------------------------------
# the stages


def _stage_configs(args) -> dict:
    """The resolved config of each stage: FAST or full defaults, then the options given."""
    from .ppo import PPOConfig, ppo_config
    from .reward_model import RewardConfig, reward_config
    from .sft import SFTConfig, sft_config

    common = {"seed": args.seed, "device": args.device}
    lora = {"r": args.lora_r}
    sft = config_from_args(SFTConfig, args, "sft_", sft_config(args.fast), model=args.model, data=args.data,
                           **common, **lora)
    rm = config_from_args(RewardConfig, args, "rm_", reward_config(args.fast), **common, **lora)
    ppo_overrides = {"steps": getattr(args, "steps", None), "kl_coef": getattr(args, "kl_coef", None),
                     "kl_target": getattr(args, "kl_target", None), "prompts": args.data}
    if getattr(args, "fixed_kl", False):
        ppo_overrides["adaptive_kl"] = False
    ppo = config_from_args(PPOConfig, args, "ppo_", ppo_config(args.fast), **common, **lora, **ppo_overrides)
    return {"sft": sft, "rm": rm, "ppo": ppo}


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


def stage_sft(out: Path, cfg, resume: bool) -> dict:
    from . import pipeline
    from .sft import RESULT_FILE, save_sft, train_sft

    path = pipeline.sft_adapter_path(out)
    if resume and (path / RESULT_FILE).is_file():
        print(f"[sft] done already: {short_path(path)}")
        return json.loads((path / RESULT_FILE).read_text())
    if (path / RESULT_FILE).is_file():
        raise LabError(f"{short_path(out)} already holds a run; pass --resume to continue it, or choose another --out.")
    result = train_sft(cfg, out_dir=path, progress=True)
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


def stage_rank(out: Path, args, seed: int) -> dict:
    from . import pipeline
    from .sft import load_sft

    path = pipeline.rankings_path(out)
    n = args.n_rankings if args.n_rankings is not None else pipeline.N_RANKINGS[bool(args.fast)]
    have = pipeline.count_rankings(path)
    if have >= n:
        print(f"[rank] done already: {have} rankings in {short_path(path)}")
        return {"rankings": have, "k": args.k, "seconds": 0.0}
    start = time.time()
    model, tokenizer = load_sft(pipeline.sft_adapter_path(out), device=args.device)
    prompts = None
    if args.data not in (None, "tiny"):
        from .loading import load_prompts
        prompts = load_prompts(args.data, "train")["prompt"]
    pipeline.top_up_rankings(path, model, tokenizer, n, K=args.k, prompts=prompts, seed=seed)
    seconds = time.time() - start
    print(f"[rank] simulated annotators ranked {n - have} prompts x {args.k} samples in {seconds:.0f} s")
    return {"rankings": pipeline.count_rankings(path), "k": args.k, "seconds": seconds}


def stage_rm(out: Path, cfg, args, resume: bool) -> dict:
    from . import pipeline
    from .preferences import load_preferences
    from .reward_model import META_FILE, plot_history, save_reward_model, train_reward_model
    from .sft import load_sft, merge_adapter

    path = pipeline.reward_model_path(out)
    if resume and (path / META_FILE).is_file():
        print(f"[rm] done already: {short_path(path)}")
        return json.loads((path / META_FILE).read_text())["metrics"]
    start = time.time()
    sft_path = pipeline.sft_adapter_path(out)
    policy, tokenizer = load_sft(sft_path, device=args.device)
    base = json.loads((sft_path / "sft_config.json").read_text())["model"]
    cfg = dataclasses.replace(cfg, trunk=base, sft_adapter=str(sft_path))
    # whole prompts held out, then at most 2,000 training pairs: the same split as the notebooks
    train, held_out = pipeline.reward_model_pairs(load_preferences(pipeline.rankings_path(out)), cfg)
    result = train_reward_model(cfg, train, trunk=merge_adapter(policy), tokenizer=tokenizer,
                                eval_pairs=held_out, progress=True)
    n_norm = pipeline.N_NORMALISE[bool(args.fast)]
    norm = result.reward_model.normalise_on(pipeline.normalisation_samples(policy, tokenizer, n_norm, cfg.seed))
    metrics = result.metrics | {"normalisation": norm, "train_pairs": len(result.train_pairs),
                                "eval_pairs": len(result.eval_pairs), "seconds": time.time() - start}
    save_reward_model(result.reward_model, path, cfg, metrics)
    _write_jsonl(result.history, path.parent / "metrics.jsonl")
    _save_figure(plot_history(result.history), out / "plots" / "reward_model_accuracy.png")
    print(f"[rm] held-out accuracy vs the gold labeler {metrics['gold_accuracy']:.1%} on "
          f"{len(result.eval_pairs)} pairs ({len(result.train_pairs)} trained), {metrics['seconds']:.0f} s")
    return metrics


def stage_ppo(out: Path, cfg, args, resume: bool):
    from . import pipeline
    from .ppo import RESULT_FILE, build_trainer, plot_history, run_ppo

    ppo_dir = out / pipeline.PPO_DIR
    if resume and (ppo_dir / RESULT_FILE).is_file():
        print(f"[ppo] done already: {short_path(ppo_dir)}")
        return json.loads((ppo_dir / RESULT_FILE).read_text()), None
    sft_path = pipeline.sft_adapter_path(out)
    base = json.loads((sft_path / "sft_config.json").read_text())["model"]
    cfg = dataclasses.replace(cfg, sft=str(sft_path), reward_model=str(pipeline.reward_model_path(out)),
                              model=base, reward="rm", device=args.device)
    trainer = build_trainer(cfg, out_dir=ppo_dir, resume=resume, progress=True)
    result = run_ppo(trainer, progress=True)
    _save_figure(plot_history(result.history, kl_target=cfg.kl_target if cfg.adaptive_kl else None),
                 out / "plots" / "ppo_training.png")
    s = result.summary
    print(f"[ppo] gold score {s['gold_score_sft']:+.3f} (SFT) -> {s['gold_score_ppo']:+.3f} (PPO), "
          f"+{s['gold_gain_in_sft_std']:.2f} SFT std, KL {s['kl']:.2f} nats, "
          f"{s['episodes_per_second']:.1f} episodes/s")
    return s, trainer


# -----------------------------------------------------------------------------
# the whole pipeline and its report


def before_after_samples(out: Path, trainer, n_prompts: int, seed: int) -> list[dict]:
    """Base, SFT and PPO samples on the same held-out prompts, with gold and reward-model scores."""
    from .loading import load_model, load_prompts
    from .ppo import POLICY, sample_models

    cfg = trainer.cfg
    prompts = load_prompts(cfg.prompts, "validation", limit=n_prompts)["prompt"]
    base, _ = load_model(cfg.model, device=next(trainer.model.parameters()).device)
    models = {"base": base, "sft": (trainer.model, None), "ppo": (trainer.model, POLICY)}
    rows = sample_models(models, prompts, trainer.tokenizer, seed=seed, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, reward=trainer.reward)
    for row in rows:  # the report shows the normalised reward-model score, as PPO saw it
        if row.get("reward") is not None:
            row["reward"] = trainer.score_gain * row["reward"] + trainer.score_bias
    _write_jsonl(rows, out / "samples.jsonl")
    return rows


def write_report(out: Path, summary: dict, samples: list[dict]) -> Path:
    """A short Markdown report: the headline numbers, the plots, and a few samples of each model."""
    import html

    s = summary
    lines = [
        "# rlhf-lab run", "",
        f"Made by `rlhf-lab run` on {time.strftime('%Y-%m-%d %H:%M')}, {'FAST' if s['fast'] else 'full'} mode, "
        f"model `{s['model']}`, seed {s['seed']}. Total {s['seconds']:.0f} s.", "",
        "| stage | result | seconds |", "|---|---|---|",
        f"| 1. SFT | held-out loss {s['sft']['eval_loss_before']:.3f} -> {s['sft']['eval_loss_after']:.3f} "
        f"({s['sft']['relative_drop']:.0%} lower) | {s['sft']['seconds']:.0f} |",
        f"| 2a. rankings | {s['rankings']['rankings']} rankings of K = {s['rankings']['k']} (simulated annotators) "
        f"| {s['rankings']['seconds']:.0f} |",
        f"| 2b. reward model | held-out accuracy vs gold {s['reward_model']['heldout_accuracy']:.1%} "
        f"| {s['reward_model']['seconds']:.0f} |",
        f"| 3. PPO | gold {s['ppo']['gold_score_sft']:+.3f} (SFT) -> {s['ppo']['gold_score_ppo']:+.3f} (PPO), "
        f"KL {s['ppo']['kl']:.2f} nats, {s['ppo']['episodes_per_second']:.1f} episodes/s | {s['ppo']['seconds']:.0f} |",
        "", "![SFT loss](plots/sft_loss.png)", "![reward model](plots/reward_model_accuracy.png)",
        "![PPO](plots/ppo_training.png)", "", "## Samples (held-out prompts, same seed for each model)", "",
        "| prompt | model | completion | gold | reward model |", "|---|---|---|---|---|",
    ]
    for row in samples[: 3 * 8]:
        text = html.escape(row["completion"]).replace("|", "\\|").replace("\n", " ")
        reward = f"{row['reward']:+.2f}" if row.get("reward") is not None else ""
        lines.append(f"| {html.escape(row['prompt'])} | {row['model']} | {text} | {row['gold']:+.2f} | {reward} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_pipeline(args) -> dict:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.resume and (out / "01_sft").exists():
        raise LabError(f"{out} already holds a run; pass --resume to continue it, or choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    configs = _stage_configs(args)
    seed = configs["ppo"].seed
    set_seed(seed)
    (out / "configs").mkdir(exist_ok=True)
    for name, cfg in configs.items():
        save_config(cfg, out / "configs" / f"{name}.json")
    start = time.time()
    device = pick_device(args.device)
    summary = {"model": configs["sft"].model, "seed": seed, "fast": bool(args.fast),
               "device": str(device), "precision": "bf16" if autocast_dtype(device) is not None else "fp32",
               "command": " ".join(["rlhf-lab"] + sys.argv[1:])}
    summary["sft"] = stage_sft(out, configs["sft"], args.resume)
    summary["rankings"] = stage_rank(out, args, seed)
    rm = stage_rm(out, configs["rm"], args, args.resume)
    summary["reward_model"] = {"heldout_accuracy": rm["gold_accuracy"], **{k: v for k, v in rm.items()
                                                                          if isinstance(v, (int, float))}}
    ppo, trainer = stage_ppo(out, configs["ppo"], args, args.resume)
    summary["ppo"] = ppo
    if trainer is None:  # PPO was finished earlier: reload it for the samples
        from .ppo import build_trainer
        cfg = dataclasses.replace(configs["ppo"], **json.loads((out / "04_ppo" / "ppo_config.json").read_text()))
        trainer = build_trainer(cfg, out_dir=out / "04_ppo", resume=True, progress=False)
    samples = before_after_samples(out, trainer, n_prompts=16 if args.fast else 64, seed=seed)
    summary["seconds"] = time.time() - start
    summary["stage_seconds"] = {"sft": summary["sft"]["seconds"], "rankings": summary["rankings"]["seconds"],
                                "reward_model": summary["reward_model"]["seconds"], "ppo": ppo["seconds"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    report = write_report(out, summary, samples)
    print(f"\ndone in {summary['seconds']:.0f} s: {short_path(report)}, {short_path(out / 'summary.json')}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.precision is not None:
            set_precision(args.precision)
        if args.command == "run":
            run_pipeline(args)
            return 0
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        configs = _stage_configs(args)
        if args.command == "sft":
            stage_sft(out, configs["sft"], args.resume)
        elif args.command in ("rank", "label"):
            stage_rank(out, args, configs["ppo"].seed)
        elif args.command == "rm":
            stage_rm(out, configs["rm"], args, args.resume)
        elif args.command == "ppo":
            stage_ppo(out, configs["ppo"], args, args.resume)
        return 0
    except LabError as err:
        print(f"rlhf-lab: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"rlhf-lab: error: {err.filename or err}: no such file; check the path.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlhf-lab: interrupted; continue with the same command and --resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
