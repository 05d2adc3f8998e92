"""Iterated online RLHF (Bai et al. 2022, "Training a helpful and harmless assistant with RLHF",
section 4.5): the reward model and the policy are updated in rounds, so that the reward model keeps
judging the text the policy writes now, not only the SFT model's.

Why: the reward model learnt from rankings of the SFT model's samples. PPO moves the policy away from
them, into text the reward model has never seen; there its judgement is worth less (Bai et al. saw its
calibration fall off on the high-reward tail the policy reaches). So every round

1. draws K samples of the **current policy** for fresh prompts, and has them ranked (the simulated
   annotators; in notebook 07 the learner ranks some of them first),
2. trains the reward model again **from scratch on every ranking so far** (Bai et al. retrain on all
   data; a model continued on the new rankings alone would weigh the last round most and the SFT-era
   rankings less and less, and its result would depend on the order of the rounds),
3. continues PPO from the current policy against the refreshed reward model, with the KL still to the
   SFT model (the reference never moves: the penalty keeps measuring the distance from where we began).

Round 0 is plain RLHF: PPO from the SFT model against the first reward model. One-shot RLHF with the
same label budget (every ranking on SFT samples, one reward model, PPO for as many updates) is the
comparison that says whether the rounds were worth it.

    it = IteratedRLHF(iterate_config(fast=False), sft, rankings, reward_model, out_dir="runs/07_iterate")
    it.run()                  # rounds 0..cfg.rounds, then one-shot; resumable: run() again after a kill
    it.summary()              # per round: labels so far, RM accuracy on the policy's samples, gold, KL

Everything a round makes is under out_dir/round_<r>/ (rankings.jsonl, reward_model/, result.json);
the policy's PPO run, continued across rounds, is out_dir/ppo/; one-shot RLHF is out_dir/one_shot/.
A round is finished when its result.json is written; run() skips finished rounds and continues an
unfinished one where it stopped (the ranking top-up and PPO resume exactly, the reward model is
retrained: it is deterministic), so a killed run ends with the numbers an uninterrupted one has.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import torch

from .config_args import Count, Range, Seed, check_config
from .utils import LabError, read_json, replacing_folder, saved_folder, short_path

RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"


# -----------------------------------------------------------------------------
# configuration


@dataclass
class IterateConfig:
    """The rounds of iterated RLHF; saved as iterate_config.json with the run. PPO's and the reward
    model's own settings come from their configs (ppo.ppo_config, reward_model.reward_config)."""

    rounds: Count = 3  # refresh rounds after round 0 (Bai et al. ran weekly rounds; 3 show the trend here)
    rankings_per_round: Count = 100  # new rankings of the current policy's samples each round (the first
    # reward model had 400 of SFT samples: each round adds a quarter of that)
    k: Annotated[int, Range(2, 9)] = 4  # samples ranked per prompt, as stage 2's (pipeline.K_DEFAULT)
    steps_per_round: Count = 20  # PPO updates per round, round 0 included: 4 rounds x 20 = 80 in all
    accuracy_prompts: Annotated[int, Range(2)] = 256  # held-out prompts whose k samples of the current policy
    # measure the reward models' accuracy against gold (every pair that gold does not tie): ~1,500 pairs, a
    # standard error of ~1 point (64 prompts gave ~380 pairs and 2 points, as large as the differences measured)
    eval_prompts: Annotated[int, Range(2)] = 128  # held-out prompts for the policy's gold, proxy and KL
    one_shot: bool = True  # also run one-shot RLHF with the same number of rankings, all on SFT samples
    seed: Seed = 0  # the rankings' sampling and annotators, and every measurement

    def __post_init__(self):
        check_config(self)

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * (self.rounds + 1)


def iterate_config(fast: bool = False, **overrides) -> IterateConfig:
    """The lab's defaults: full mode 3 rounds of 100 rankings and 20 PPO updates (about 8 minutes on a
    2-core CPU, one-shot included); FAST mode (CI, a quick look) 2 rounds of 20 rankings and 4 updates."""
    cfg = IterateConfig(rounds=2, rankings_per_round=20, steps_per_round=4, accuracy_prompts=16,
                        eval_prompts=32) if fast else IterateConfig()
    names = {f.name for f in fields(IterateConfig)}
    for key in overrides:
        if key not in names:
            raise LabError(f"IterateConfig has no field {key!r}; the fields are {sorted(names)}.")
    return dataclasses.replace(cfg, **overrides)


# -----------------------------------------------------------------------------
# measurements


def label_agreement(rankings: str | Path) -> float:
    """The share of a rankings file's pairs (gold does not tie) whose chosen text gold prefers: how well the
    annotators' labels agree with what we want, on the samples they were shown."""
    from .preferences import load_preferences
    from .reward_model import gold_order

    order = [o for o in gold_order(load_preferences(rankings)) if o != 0]
    return sum(o > 0 for o in order) / len(order) if order else float("nan")


@torch.no_grad()
def accuracy_on_samples(reward_models: dict, items: list[dict]) -> dict:
    """Each reward model's accuracy against gold on the pairs of `items` ({"prompt", "completions"}: k
    samples of one prompt): over every pair within a prompt that gold does not tie, the share the reward
    model orders as gold does (its ties count as wrong). reward_models: {name: RewardModel}.
    Returns {name: accuracy} and "pairs": how many pairs were judged."""
    from .gold import gold_scores

    pairs = []  # (index of text a, index of text b, +1 if gold prefers a else -1)
    prompts, responses = [], []
    for item in items:
        first = len(responses)
        golds = gold_scores([item["prompt"] + c for c in item["completions"]])
        for c in item["completions"]:
            prompts.append(item["prompt"])
            responses.append(c)
        for i in range(len(golds)):
            for j in range(i + 1, len(golds)):
                if golds[i] != golds[j]:
                    pairs.append((first + i, first + j, 1.0 if golds[i] > golds[j] else -1.0))
    if not pairs:
        raise LabError("gold ties every pair of these samples, so no accuracy can be measured; use more prompts.")
    a, b, sign = (torch.tensor(x) for x in zip(*pairs))
    out = {"pairs": len(pairs)}
    for name, reward_model in reward_models.items():
        scores = torch.tensor(reward_model.score_texts(prompts, responses, normalised=False))  # (N,)
        out[name] = ((scores[a] - scores[b]) * sign > 0).float().mean().item()
    return out


# -----------------------------------------------------------------------------
# the rounds


class IteratedRLHF:
    """Iterated online RLHF on one run folder. `run()` does every round that is not finished yet,
    then one-shot RLHF; the steps of a round are methods of their own, so that a notebook can let the
    learner rank some of the policy's samples before the annotators top the round up (`round_items`).

    sft:          the SFT adapter folder (the reference of every round, and the start of round 0)
    rankings:     the first rankings file (of SFT samples), as stage 2 wrote it
    reward_model: the first reward model, trained on `rankings` (stage 2b)
    ppo_overrides, rm_overrides: changes to ppo_config(fast) and reward_config(fast)
    """

    def __init__(self, cfg: IterateConfig, sft: str | Path, rankings: str | Path, reward_model: str | Path,
                 out_dir: str | Path, fast: bool = False, ppo_overrides: dict | None = None,
                 rm_overrides: dict | None = None, progress: bool = True):
        from .ppo import ppo_config
        from .reward_model import reward_config

        check_config(cfg)
        self.cfg, self.fast, self.progress = cfg, fast, progress
        self.sft, self.rankings, self.reward_model = Path(sft), Path(rankings), Path(reward_model)
        for path, what, fix in ((self.sft / "adapter_config.json", "SFT adapter", "rlhf-lab sft"),
                                (self.rankings, "rankings file", "rlhf-lab rank"),
                                (self.reward_model / "reward_model.json", "reward model", "rlhf-lab rm")):
            if not path.is_file():
                raise LabError(f"iterated RLHF starts from stage 2's results, but the {what} {short_path(path)} is "
                               f"missing: make it first (`{fix}`, or `rlhf-lab run` for every stage).")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ppo_cfg = ppo_config(fast, **(ppo_overrides or {}))
        if self.ppo_cfg.algo != "ppo":
            raise LabError("iterated RLHF continues PPO across rounds; RLOO and GRPO are not wired in here.")
        self.rm_cfg = reward_config(fast, **(rm_overrides or {}))
        self.base = read_json(self.sft / "sft_config.json", "SFT config")["model"]  # the model under the adapter
        self._check_same_run()
        from .loading import load_prompts

        self.eval_prompts = load_prompts(self.ppo_cfg.prompts, "validation", limit=cfg.eval_prompts)["prompt"]
        self.accuracy_prompts = load_prompts(self.ppo_cfg.prompts, "validation", limit=cfg.accuracy_prompts)["prompt"]

    # --- the run's folder --------------------------------------------------------------------------

    def round_dir(self, r: int) -> Path:
        return self.out_dir / f"round_{r}"

    def rankings_of(self, r: int) -> Path:
        """Round r's rankings: the first file for round 0, round_<r>/rankings.jsonl after it."""
        return self.rankings if r == 0 else self.round_dir(r) / "rankings.jsonl"

    def reward_model_of(self, r: int) -> Path:
        return self.reward_model if r == 0 else self.round_dir(r) / "reward_model"

    def result_of(self, r: int) -> dict | None:
        path = self.round_dir(r) / RESULT_FILE
        return read_json(path, f"round {r} result") if path.is_file() else None

    def _check_same_run(self) -> None:
        """A folder holds one iterated run: resuming with other settings would mix two."""
        record = {"iterate": dataclasses.asdict(self.cfg), "fast": self.fast, "sft": str(self.sft),
                  "rankings": str(self.rankings), "reward_model": str(self.reward_model),
                  "ppo": {k: v for k, v in dataclasses.asdict(self.ppo_cfg).items() if k not in ("device", "steps")},
                  "rm": {k: v for k, v in dataclasses.asdict(self.rm_cfg).items() if k != "device"}}
        record = json.loads(json.dumps(record, default=list))  # tuples as lists, as read back
        path = self.out_dir / "iterate_config.json"
        if path.is_file():
            flat = lambda d: {f"{part}.{k}": v for part, sub in d.items()
                              for k, v in (sub.items() if isinstance(sub, dict) else [("", sub)])}
            saved, now = flat(read_json(path, "iterated RLHF record")), flat(record)
            differ = sorted(k.rstrip(".") for k in now if saved.get(k) != now[k])
            if differ:
                raise LabError(f"{short_path(self.out_dir)} holds an iterated run made with other settings "
                               f"({', '.join(differ[:6])} differ); continue it with the settings it was made with "
                               f"(see {short_path(path)}), or choose another folder.")
        else:
            path.write_text(json.dumps(record, indent=2) + "\n")

    # --- one round's steps -------------------------------------------------------------------------

    def trainer(self, r: int, out: Path | None = None):
        """The PPO trainer as round r ends: the policy continued from the last checkpoint in out (default
        out_dir/ppo), against round r's reward model, to (r + 1) * steps_per_round updates."""
        from .ppo import build_trainer

        cfg = dataclasses.replace(self.ppo_cfg, sft=str(self.sft), reward_model=str(self.reward_model_of(r)),
                                  model=self.base, steps=self.cfg.steps_per_round * (r + 1), reward="rm",
                                  seed=self.cfg.seed, eval_prompts=self.cfg.eval_prompts)
        return build_trainer(cfg, out_dir=out or self.out_dir / "ppo", resume=True, progress=False)

    def round_items(self, r: int, n: int, exclude=()) -> list[dict]:
        """k samples of the policy that round r starts from (round r - 1's) for n fresh prompts, for the
        learner to rank into round r's file (widget.RankingWidget(items, it.rankings_of(r))). Pass their
        prompts to run_round(r, exclude=...): the annotators then leave to the learner what the learner has
        not ranked yet. [] once round r's rankings are closed (its reward model is trained)."""
        from .loading import load_prompts
        from .pipeline import sample_items

        if r < 1 or (self.round_dir(r) / "before_ppo.json").is_file():
            return []
        self.round_dir(r).mkdir(parents=True, exist_ok=True)  # where the widget writes
        trainer = self.trainer(r - 1)
        used = self._used_prompts(r) | set(exclude)
        prompts = [p for p in dict.fromkeys(load_prompts(self.ppo_cfg.prompts, "train")["prompt"]) if p not in used][:n]
        return sample_items(trainer.model, trainer.tokenizer, prompts, K=self.cfg.k, seed=self.cfg.seed + 1000 * r)

    def _used_prompts(self, r: int) -> set:
        """Prompts ranked in any round before r (never ranked twice: each label counted once)."""
        from .rankings import RankingStore

        return {rec["prompt"] for q in range(r) if self.rankings_of(q).is_file()
                for rec in RankingStore(self.rankings_of(q)).records()}

    def rank(self, r: int, policy=None, exclude=()) -> Path:
        """Round r's rankings: the annotators top round_<r>/rankings.jsonl up to rankings_per_round with
        samples of the current policy (round r - 1's), on prompts no earlier round ranked; rankings the
        learner made in the file (round_items, the widget) count, and `exclude` (the prompts still waiting
        in the learner's widget) are left for the learner."""
        from .loading import load_prompts
        from .pipeline import count_rankings, top_up_rankings

        path = self.rankings_of(r)
        path.parent.mkdir(parents=True, exist_ok=True)
        if count_rankings(path) >= self.cfg.rankings_per_round:
            return path
        trainer = policy if policy is not None else self.trainer(r - 1)
        prompts = load_prompts(self.ppo_cfg.prompts, "train")["prompt"]
        top_up_rankings(path, trainer.model, trainer.tokenizer, self.cfg.rankings_per_round, K=self.cfg.k,
                        prompts=prompts, exclude_prompts=sorted(self._used_prompts(r) | set(exclude)),
                        seed=self.cfg.seed + r)
        return path

    def pairs_until(self, r: int, one_shot: bool = False):
        """Every ranking of rounds 0..r as pairs (or the one-shot file's), each record once."""
        import datasets

        from .preferences import load_preferences

        files = [self.out_dir / "one_shot" / "rankings.jsonl"] if one_shot else [self.rankings_of(q) for q in range(r + 1)]
        return datasets.concatenate_datasets([load_preferences(f) for f in files])

    def train_reward_model(self, r: int, one_shot: bool = False) -> Path:
        """A reward model trained from scratch on every ranking of rounds 0..r (or the one-shot file), on
        the SFT trunk, normalised on SFT samples as stage 2b's; saved whole or not at all."""
        from .pipeline import N_NORMALISE, sft_trunk_and_samples
        from .reward_model import META_FILE, save_reward_model, split_by_prompt, train_reward_model

        path = self.out_dir / "one_shot" / "reward_model" if one_shot else self.reward_model_of(r)
        if saved_folder(path, META_FILE) is not None:
            return saved_folder(path, META_FILE)
        start = time.time()
        cfg = dataclasses.replace(self.rm_cfg, trunk=self.base, sft_adapter=str(self.sft), seed=self.cfg.seed)
        pairs = self.pairs_until(r, one_shot)
        train, held_out = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)  # every pair: no 2,000 cap here
        # one copy of the backbone, as stage 2b: it samples for the normalisation (the run's prompts), then
        # carries the reward adapter
        trunk, tokenizer, samples = sft_trunk_and_samples(self.sft, self.base, N_NORMALISE[self.fast], cfg.seed,
                                                          prompts=self.ppo_cfg.prompts, device=cfg.device)
        result = train_reward_model(cfg, train, trunk=trunk, tokenizer=tokenizer, eval_pairs=held_out,
                                    progress=self.progress, copy_trunk=False)
        norm = result.reward_model.normalise_on(samples)
        metrics = result.metrics | {"normalisation": norm, "train_pairs": len(result.train_pairs),
                                    "eval_pairs": len(result.eval_pairs), "pairs": len(pairs),
                                    "seconds": time.time() - start}
        with replacing_folder(path) as tmp:
            save_reward_model(result.reward_model, tmp, cfg, metrics)
        return path

    def measure_accuracy(self, policy, reward_models: dict) -> dict:
        """The reward models' accuracy against gold on k held-out samples of `policy` (a trainer) per prompt."""
        from .evaluation import rng_kept
        from .pipeline import sample_items
        from .reward_model import load_reward_model

        with rng_kept():
            items = sample_items(policy.model, policy.tokenizer, list(self.accuracy_prompts), K=self.cfg.k,
                                 seed=self.cfg.seed + 7)
        loaded = {name: load_reward_model(path, device=self.ppo_cfg.device) for name, path in reward_models.items()}
        return accuracy_on_samples(loaded, items)

    def train_policy(self, r: int):
        """PPO continued to the end of round r against round r's reward model (resumes from the checkpoint)."""
        trainer = self.trainer(r)
        trainer.train(progress=self.progress)
        return trainer

    def evaluate(self, trainer) -> dict:
        """The policy on the held-out prompts: gold, proxy (the reward model it trained against) and KL."""
        from .ppo import evaluate_adapter

        summary, samples = evaluate_adapter(trainer, list(self.eval_prompts), seed=self.cfg.seed)
        return {"gold": summary["gold_score_ppo"], "gold_se": summary["gold_std_ppo"] / math.sqrt(len(self.eval_prompts)),
                "proxy": summary["reward_score_ppo"], "kl": summary["kl_ppo"], "eos_share": summary["eos_share_ppo"],
                "samples": samples[:8]}

    def labels_until(self, r: int) -> int:
        from .pipeline import count_rankings

        return sum(count_rankings(self.rankings_of(q)) for q in range(r + 1))

    def run_round(self, r: int, exclude=()) -> dict:
        """Round r, from wherever it stopped: rank (r > 0), refresh the reward model (r > 0), measure the
        stale and the refreshed reward model on the current policy's samples, continue PPO, measure.
        exclude: prompts the annotators leave alone (those waiting in the learner's widget)."""
        done = self.result_of(r)
        if done is not None:
            return done
        from .ppo import evaluate_adapter
        from .reward_model import reward_model_info

        start = time.time()
        result = {"round": r}
        self.round_dir(r).mkdir(parents=True, exist_ok=True)
        measured = self.round_dir(r) / "before_ppo.json"  # written before this round's PPO starts
        if not measured.is_file():
            before = self.trainer(r - 1) if r > 0 else self.trainer(0)  # the policy this round starts from
            if before.step_count != self.cfg.steps_per_round * r:
                raise LabError(f"internal: round {r} should start at update {self.cfg.steps_per_round * r}, its "
                               f"policy is at {before.step_count}; delete {short_path(self.out_dir)} and start again.")
            state = {}
            if r == 0:  # where every round starts from: the SFT model on the held-out prompts
                sft, _ = evaluate_adapter(before, list(self.eval_prompts), adapter=None, seed=self.cfg.seed)
                state = {"sft_gold": sft["gold_score_ppo"], "sft_proxy": sft["reward_score_ppo"],
                         "labels_agree_with_gold": label_agreement(self.rankings_of(0))}
            else:
                self.rank(r, policy=before, exclude=exclude)
                self.train_reward_model(r)
                accuracy = self.measure_accuracy(before, {"stale": self.reward_model_of(0),
                                                           "refreshed": self.reward_model_of(r)})
                state = {"rm_acc_stale": accuracy["stale"], "rm_acc_refreshed": accuracy["refreshed"],
                         "rm_acc_pairs": accuracy["pairs"], "labels_agree_with_gold": label_agreement(self.rankings_of(r))}
            del before
            measured.write_text(json.dumps(state, indent=2) + "\n")
        result |= read_json(measured, f"round {r} measurements")

        rm_metrics = reward_model_info(self.reward_model_of(r)).get("metrics", {})
        trainer = self.train_policy(r)
        result |= {"labels": self.labels_until(r), "steps": trainer.step_count,
                   "rm_heldout_accuracy": rm_metrics.get("gold_accuracy"),
                   "rm_pairs": rm_metrics.get("train_pairs", 0) + rm_metrics.get("eval_pairs", 0),
                   "kl_coef": trainer.kl_ctl.value}
        result |= {f"policy_{k}": v for k, v in self.evaluate(trainer).items()}
        result["seconds"] = time.time() - start  # this session's share when resumed
        (self.round_dir(r) / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
        if self.progress:
            acc = (f"RM accuracy on the policy's samples {result['rm_acc_stale']:.1%} (stale) -> "
                   f"{result['rm_acc_refreshed']:.1%} (refreshed); " if r > 0 else "")
            print(f"[round {r}] {result['labels']} rankings so far; {acc}gold {result['policy_gold']:+.2f}, "
                  f"KL {result['policy_kl']:.1f} nats ({result['seconds']:.0f} s)")
        return result

    def run_one_shot(self) -> dict:
        """One-shot RLHF with the same labels: the first rankings topped up with SFT samples to the iterated
        run's total, one reward model on them all, PPO from SFT for as many updates."""
        import shutil

        from .pipeline import count_rankings, top_up_rankings
        from .sft import load_sft

        folder = self.out_dir / "one_shot"
        if (folder / RESULT_FILE).is_file():
            return read_json(folder / RESULT_FILE, "one-shot result")
        start = time.time()
        folder.mkdir(parents=True, exist_ok=True)
        rankings = folder / "rankings.jsonl"
        total = self.labels_until(self.cfg.rounds)
        if not rankings.is_file():  # the first rankings, copied whole, then topped up with SFT samples
            tmp = rankings.with_name("rankings.jsonl.copy")
            shutil.copyfile(self.rankings, tmp)
            tmp.replace(rankings)
        if count_rankings(rankings) < total:
            from .loading import load_prompts

            model, tokenizer = load_sft(self.sft, device=self.ppo_cfg.device)
            top_up_rankings(rankings, model, tokenizer, total, K=self.cfg.k,
                            prompts=load_prompts(self.ppo_cfg.prompts, "train")["prompt"], seed=self.cfg.seed + 999)
            del model
        reward_model = self.train_reward_model(self.cfg.rounds, one_shot=True)
        from .ppo import build_trainer

        cfg = dataclasses.replace(self.ppo_cfg, sft=str(self.sft), reward_model=str(reward_model), reward="rm",
                                  model=self.base, steps=self.cfg.total_steps, seed=self.cfg.seed,
                                  eval_prompts=self.cfg.eval_prompts)
        trainer = build_trainer(cfg, out_dir=folder / "ppo", resume=True, progress=False)
        trainer.train(progress=self.progress)
        result = {"labels": count_rankings(rankings), "steps": trainer.step_count}
        result |= {f"policy_{k}": v for k, v in self.evaluate(trainer).items()}
        last = self.trainer(self.cfg.rounds)  # the iterated run's final policy: how do both reward models judge it?
        accuracy = self.measure_accuracy(last, {"one_shot": reward_model, "iterated": self.reward_model_of(self.cfg.rounds),
                                                "stale": self.reward_model_of(0)})
        result |= {"rm_acc_on_iterated_policy": accuracy["one_shot"],
                   "iterated_rm_acc_on_iterated_policy": accuracy["iterated"],
                   "stale_rm_acc_on_iterated_policy": accuracy["stale"], "seconds": time.time() - start}
        (folder / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
        if self.progress:
            print(f"[one-shot] {result['labels']} rankings of SFT samples, {result['steps']} updates: gold "
                  f"{result['policy_gold']:+.2f}, KL {result['policy_kl']:.1f} nats ({result['seconds']:.0f} s)")
        return result

    def run(self) -> dict:
        """Every round not finished yet, then one-shot RLHF (cfg.one_shot); returns summary()."""
        for r in range(self.cfg.rounds + 1):
            self.run_round(r)
        if self.cfg.one_shot:
            self.run_one_shot()
        return self.summary(write=True)

    def history(self) -> list[dict]:
        """PPO's per-update metrics across every round (the continued run's metrics.jsonl)."""
        path = self.out_dir / "ppo" / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def summary(self, write: bool = False) -> dict:
        """The finished rounds and one-shot, and the figures notebook 07 records."""
        rounds = [res for r in range(self.cfg.rounds + 1) if (res := self.result_of(r)) is not None]
        out = {"rounds": len(rounds) - 1, "per_round": [{k: v for k, v in res.items() if k != "policy_samples"}
                                                      for res in rounds]}
        if rounds and len(rounds) > 1:
            last = rounds[-1]
            out |= {"rm_acc_policy_samples_stale": last["rm_acc_stale"],
                    "rm_acc_policy_samples_refreshed": last["rm_acc_refreshed"],
                    "gold_iterated": last["policy_gold"], "kl_iterated": last["policy_kl"], "labels": last["labels"]}
        if rounds:
            out["gold_sft"] = rounds[0]["sft_gold"]
        one_shot = self.out_dir / "one_shot" / RESULT_FILE
        if one_shot.is_file():
            res = read_json(one_shot, "one-shot result")
            out |= {"gold_one_shot_same_labels": res["policy_gold"], "kl_one_shot": res["policy_kl"],
                    "one_shot": {k: v for k, v in res.items() if k != "policy_samples"}}
        if write:
            (self.out_dir / SUMMARY_FILE).write_text(json.dumps(out, indent=2) + "\n")
        return out


# -----------------------------------------------------------------------------
# figures


def plot_rounds(summary: dict, history: list[dict] | None = None):
    """Left: the reward models' accuracy against gold on the current policy's samples, round by round
    (the first reward model, stale, and the refreshed one). Middle: the policy's gold after each round,
    with one-shot RLHF's at the same label budget. Right: PPO's training batches across the rounds."""
    import matplotlib.pyplot as plt

    rounds = summary["per_round"]
    fig, (ax_acc, ax_gold, ax_run) = plt.subplots(1, 3, figsize=(14, 3.8))
    later = [r for r in rounds if "rm_acc_stale" in r]
    ax_acc.plot([r["round"] for r in later], [r["rm_acc_stale"] for r in later], "o-", color="C7",
                label="first reward model (stale)")
    ax_acc.plot([r["round"] for r in later], [r["rm_acc_refreshed"] for r in later], "o-", color="C0",
                label="refreshed on every ranking so far")
    ax_acc.set(xlabel="round", ylabel="accuracy vs gold", title="judging the policy's own samples",
               xticks=[r["round"] for r in later])
    ax_acc.legend(fontsize=8)
    labels = [r["labels"] for r in rounds]
    ax_gold.errorbar(labels, [r["policy_gold"] for r in rounds], yerr=[r["policy_gold_se"] for r in rounds], fmt="o-",
                     capsize=2, color="C0", label="iterated: the policy after each round")
    if summary.get("gold_sft") is not None:
        ax_gold.axhline(summary["gold_sft"], color="#999", ls=":", label="SFT")
    if "one_shot" in summary:
        one = summary["one_shot"]
        ax_gold.errorbar([one["labels"]], [one["policy_gold"]], yerr=[one["policy_gold_se"]], fmt="D", ms=8, capsize=2,
                         color="C3", label="one-shot, the same labels (all on SFT samples)")
    ax_gold.set(xlabel="rankings so far", ylabel="gold (held-out prompts)", title="what we wanted")
    ax_gold.legend(fontsize=8)
    if history:
        steps = [m["step"] for m in history]
        ax_run.plot(steps, [m["gold"] for m in history], color="C1", alpha=0.8, label="gold (batch)")
        ax_run.plot(steps, [m["score_normalised"] for m in history], color="C0", alpha=0.8,
                    label="reward model of the round (batch)")
        for r in rounds[1:]:
            ax_run.axvline(r["steps"] - (rounds[1]["steps"] - rounds[0]["steps"]), color="#999", ls=":", lw=1)
        ax_run.set(xlabel="PPO update (dotted: a refreshed reward model takes over)", ylabel="score",
                   title="PPO, continued across the rounds")
        ax_run.legend(fontsize=8)
    fig.tight_layout()
    return fig
