"""Numbers quoted in prose are the numbers the committed runs measured.

Each row names a file, the exact words that quote a number, and where the number comes from: a figure a
notebook recorded (rlhf_lab.figures, saved in its metadata by scripts/run_notebooks.py) or a file the lab
ships with its figures (data/tiny-gpt2/pretraining.json). The quoted text must be in the file, and the
figure, written the way the text writes it, must be the quoted number. Re-run a notebook and a figure
moves: this test names every sentence to update.
"""

import json
import sys
from pathlib import Path

import pytest

from rlhf_lab import figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_common import read_tables  # noqa: E402 (standard library only at import time)

ROOT = Path(__file__).resolve().parents[1]


def notebook(name):
    return lambda: figures.of_notebook(ROOT / "notebooks" / f"{name}.ipynb")


def pretraining():
    return json.loads((ROOT / "data" / "tiny-gpt2" / "pretraining.json").read_text())


def pretraining_8layers():
    return json.loads((ROOT / "data" / "tiny-gpt2-8layers" / "pretraining.json").read_text())


def record(name):
    """A measurement the READMEs quote, kept in benchmarks/results/ (a benchmark's --record, or a run's summary)."""
    return lambda: json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())


def bench_row(name, label, table=0):
    """One row of a benchmark record's report table, {first cell: other cells}, as benchmarks/README.md has it."""
    def source():
        return read_tables(record(name)()["table"])[table]["rows"][label]
    return source


def peak_rss_cells(rows):
    """The cells of a benchmark table's peak-RSS row, whose label says whether it is the highest of several rounds."""
    return next(cells for label, cells in rows.items() if label.startswith("peak RSS"))


def pct(x, digits=0):
    return f"{100 * x:.{digits}f}%"


# (file, the quoted words, where the figures come from, the number as the words write it)
QUOTES = [
    ("data/README.md", "**Validation perplexity: 4.29**", pretraining, lambda f: f"{f['val_perplexity']:.2f}"),
    ("data/README.md", "(mean loss 1.456 nats per token", pretraining, lambda f: f"{f['val_loss']:.3f}"),
    ("data/README.md", "**Validation perplexity: 4.31** (mean loss 1.461 nats per token), no better than the 4-layer "
     "model's 4.29", lambda: (pretraining_8layers(), pretraining()),
     lambda f: f"**Validation perplexity: {f[0]['val_perplexity']:.2f}** (mean loss {f[0]['val_loss']:.3f} nats per token), "
               f"no better than the 4-layer model's {f[1]['val_perplexity']:.2f}"),
    ("data/README.md", "1,968,640 parameters (1.7x the tiny GPT-2's; 8 blocks", lambda: (pretraining_8layers(), pretraining()),
     lambda f: f"{f[0]['parameters']:,} parameters ({f[0]['parameters'] / f[1]['parameters']:.1f}x the tiny GPT-2's; "
               f"{f[0]['config']['n_layer']} blocks"),
    ("data/README.md", "2,394 steps in 1,832 s on 2 CPU cores (2 torch threads", pretraining_8layers,
     lambda f: f"{f['steps']:,} steps in {f['seconds']:,.0f} s"),
    ("data/README.md", "128 positions: 1,175,552 parameters", notebook("00_welcome"), lambda f: f"{f['parameters']:,}"),
    ("data/README.md", "100% end with EOS", notebook("00_welcome"), lambda f: pct(f["eos_share"])),
    ("data/README.md", "distinct-2 0.40", notebook("00_welcome"), lambda f: f"{f['distinct_2']:.2f}"),
    ("data/README.md", "gold scores mean +0.07", notebook("00_welcome"), lambda f: f"{f['mean_gold']:+.2f}"),
    ("notebooks/00_welcome.ipynb", "its 1.2M-parameter GPT-2", notebook("00_welcome"),
     lambda f: f"{f['parameters'] / 1e6:.1f}"),
    ("notebooks/05_overoptimisation.ipynb", "64 samples buy about 3 nats", notebook("05_overoptimisation"),
     lambda f: f"{f['bon_kl']['64']:.0f}"),
    ("notebooks/07_iterated_rlhf.ipynb", "89% of round 0's pairs", notebook("07_iterated_rlhf"),
     lambda f: pct(f["labels_agree_per_round"][0])),
    ("notebooks/07_iterated_rlhf.ipynb", "68-82% of the later rounds'", notebook("07_iterated_rlhf"),
     lambda f: f"{100 * min(f['labels_agree_per_round'][1:]):.0f}-{pct(max(f['labels_agree_per_round'][1:]))}"),
    ("notebooks/02_rankings.ipynb", "against gold on 599 held-out pairs", notebook("08_classroom"),
     lambda f: str(f["rm_eval_pairs"])),
    ("notebooks/02_rankings.ipynb", "75.0% from the scores", notebook("08_classroom"),
     lambda f: pct(f["rm_gold_acc_from_scores"], 1)),
    ("notebooks/02_rankings.ipynb", "75.3% from the rankings", notebook("08_classroom"),
     lambda f: pct(f["rm_gold_acc_from_rankings"], 1)),
    ("notebooks/02_rankings.ipynb", "standardising each learner's scores first (76.7%)", notebook("08_classroom"),
     lambda f: pct(f["rm_gold_acc_from_scores_per_learner"], 1)),
    ("notebooks/03_reward_model.ipynb", "On 1,509 held-out pairs ordered by gold", notebook("03_reward_model"),
     lambda f: f"{f['size_study_pairs']:,}"),
    ("notebooks/03_reward_model.ipynb", "**82.7%** against gold with one layer", notebook("03_reward_model"),
     lambda f: pct(f["trunk_sizes"]["1 layer, pretrained"]["gold_accuracy"], 1)),
    ("notebooks/03_reward_model.ipynb", "**85.2%** with two", notebook("03_reward_model"),
     lambda f: pct(f["trunk_sizes"]["2 layers, pretrained"]["gold_accuracy"], 1)),
    ("notebooks/03_reward_model.ipynb", "**87.3%** with all four", notebook("03_reward_model"),
     lambda f: pct(f["trunk_sizes"]["4 layers, pretrained"]["gold_accuracy"], 1)),
    ("notebooks/03_reward_model.ipynb", "standard deviation is at most 1.4 points", notebook("03_reward_model"),
     lambda f: f"{100 * max(v['std'] for k, v in f['trunk_sizes'].items() if 'pretrained' in k):.1f}"),
    ("notebooks/03_reward_model.ipynb", "reach only **70.0%**", notebook("03_reward_model"),
     lambda f: pct(f["trunk_sizes"]["4 layers, random"]["gold_accuracy"], 1)),
    ("notebooks/03_reward_model.ipynb", "(3.4 points between seeds)", notebook("03_reward_model"),
     lambda f: f"{100 * f['trunk_sizes']['4 layers, random']['std']:.1f}"),
    ("notebooks/03_reward_model.ipynb", "worth some 17 points over random weights", notebook("03_reward_model"),
     lambda f: f"{100 * (f['trunk_sizes']['4 layers, pretrained']['gold_accuracy'] - f['trunk_sizes']['4 layers, random']['gold_accuracy']):.0f}"),
    ("notebooks/03_reward_model.ipynb", "The 8-layer trunk reaches **88.5%** against **87.2%** for its like-for-like "
     "partner", notebook("03_reward_model"),
     lambda f: f"**{pct(f['trunk_sizes']['8 layers, pretrained, no SFT']['gold_accuracy'], 1)}** against "
               f"**{pct(f['trunk_sizes']['4 layers, pretrained, no SFT']['gold_accuracy'], 1)}**"),
    ("notebooks/03_reward_model.ipynb", "deviations 0.8 and 0.9 points): 1.3 points", notebook("03_reward_model"),
     lambda f: (lambda big, small: f"{100 * big['std']:.1f} and {100 * small['std']:.1f} points): "
                f"{100 * (big['gold_accuracy'] - small['gold_accuracy']):.1f} points")(
         f["trunk_sizes"]["8 layers, pretrained, no SFT"], f["trunk_sizes"]["4 layers, pretrained, no SFT"])),
    ("notebooks/03_reward_model.ipynb", "1.8x the training time (92 s against 52 s a run)", notebook("03_reward_model"),
     lambda f: (lambda big, small: f"{big / small:.1f}x the training time ({big:.0f} s against {small:.0f} s")(
         f["trunk_sizes"]["8 layers, pretrained, no SFT"]["seconds"], f["trunk_sizes"]["4 layers, pretrained, no SFT"]["seconds"])),
    ("notebooks/03_reward_model.ipynb", "for 1.7x the trunk's parameters", lambda: (pretraining_8layers(), pretraining()),
     lambda f: f"{f[0]['parameters'] / f[1]['parameters']:.1f}x"),
    ("notebooks/03_reward_model.ipynb", "(validation perplexity 4.31 against 4.29", lambda: (pretraining_8layers(), pretraining()),
     lambda f: f"{f[0]['val_perplexity']:.2f} against {f[1]['val_perplexity']:.2f}"),
    ("notebooks/03_reward_model.ipynb", "the SFT trunk's 87.3% and the bare trunk's 87.2% are one result",
     notebook("03_reward_model"),
     lambda f: f"{pct(f['trunk_sizes']['4 layers, pretrained']['gold_accuracy'], 1)} and the bare trunk's "
               f"{pct(f['trunk_sizes']['4 layers, pretrained, no SFT']['gold_accuracy'], 1)}"),
    ("notebooks/04_ppo.ipynb", "the same 40 updates reach **+1.33** (from +0.07)", notebook("04_ppo"),
     lambda f: f"{f['steps']} updates reach **{f['from_pretrained']['gold_after']:+.2f}** (from "
               f"{f['from_pretrained']['gold_before']:+.2f})"),
    ("notebooks/04_ppo.ipynb", "from the SFT model **+1.25** (from +0.08)", notebook("04_ppo"),
     lambda f: f"**{f['gold_ppo']:+.2f}** (from {f['gold_sft']:+.2f})"),
    ("notebooks/04_ppo.ipynb", "at 4.3 and 4.0 nats of KL", notebook("04_ppo"),
     lambda f: f"{f['from_pretrained']['kl']:.1f} and {f['kl']:.1f}"),
    ("notebooks/02_rankings.ipynb", "Two annotators give the same score to 16% of texts", notebook("02_rankings"),
     lambda f: pct(f["score_exact_agreement"])),
    ("notebooks/02_rankings.ipynb", "they order 86% of pairs the same way", notebook("02_rankings"),
     lambda f: pct(f["ranking_agreement"])),
    ("notebooks/exercises/solutions/01_sft_loss.ipynb", "falls from about 4.4 nats (the pretrained model) to about 1.0",
     lambda: figures.of_notebook(ROOT / "notebooks/exercises/solutions/01_sft_loss.ipynb"),
     lambda f: f"{f['eval_loss_before']:.1f} nats (the pretrained model) to about {f['eval_loss_after']:.1f}"),
    ("notebooks/exercises/solutions/02_preferences.ipynb", "(0.36 here; chance is 0.5",
     lambda: figures.of_notebook(ROOT / "notebooks/exercises/solutions/02_preferences.ipynb"),
     lambda f: f"{f['accuracy_before']:.2f}"),
    ("notebooks/exercises/solutions/02_preferences.ipynb", "climbs to about 0.85 in full mode",
     lambda: figures.of_notebook(ROOT / "notebooks/exercises/solutions/02_preferences.ipynb"),
     lambda f: f"{f['accuracy_after']:.2f}"),
    ("notebooks/09_limits.ipynb", "agree with gold on some 88% of held-out pairs", notebook("03_reward_model"),
     lambda f: pct(f["label_gold_agreement"])),
    ("notebooks/04_ppo.ipynb", "gold **+1.21** (1 layer) and **+1.18** (8 layers) after the same 40 updates against "
     "**+1.25** with the stage-2 model", notebook("04_ppo"),
     lambda f: f"**{f['small_rm']['gold_after']:+.2f}** (1 layer) and **{f['large_rm']['gold_after']:+.2f}** (8 layers) "
               f"after the same {f['steps']} updates against **{f['gold_ppo']:+.2f}**"),
    ("notebooks/04_ppo.ipynb", "at 4.3, 4.1 and 4.0 nats of KL (one seed each)", notebook("04_ppo"),
     lambda f: f"{f['small_rm']['kl']:.1f}, {f['large_rm']['kl']:.1f} and {f['kl']:.1f}"),
    ("notebooks/04_ppo.ipynb", "(89.8%, 89.5% and 89.5%)", notebook("04_ppo"),
     lambda f: f"{pct(f['small_rm']['gold_accuracy'], 1)}, {pct(f['large_rm']['gold_accuracy'], 1)} and "
               f"{pct(f['stage2_rm_gold_accuracy'], 1)}"),
    # README.md's speed table and sentences, from the benchmarks' records
    ("README.md", "| episodes / s, 2 threads (`python benchmarks/ppo_vs_trl.py --rounds 3`) | 96.4 | 37.6 | **2.56x** |",
     bench_row("ppo_vs_trl", "episodes / s (median)"), lambda c: f"| {c[0]} | {c[1]} | **{c[2]}** |"),
    ("README.md", "| peak resident memory (highest round), 2 threads | 0.59 GiB | 1.03 GiB | **0.57x** |",
     bench_row("ppo_vs_trl", "peak RSS (GiB), highest round"), lambda c: f"| {c[0]} GiB | {c[1]} GiB | **{c[2]}** |"),
    ("README.md", "| memory once the libraries are imported | 0.34 GiB | 0.42 GiB | 0.81x |",
     bench_row("ppo_vs_trl", "RSS after imports (GiB)"), lambda c: f"| {c[0]} GiB | {c[1]} GiB | {c[2]} |"),
    ("README.md", "104.9 against 38.8 episodes/s, **2.70x**",
     bench_row("ppo_vs_trl_compile", "episodes / s (median)"), lambda c: f"{c[0]} against {c[1]} episodes/s, **{c[2]}**"),
    ("README.md", "at 0.61 GiB against 1.03 GiB (0.59x)",
     bench_row("ppo_vs_trl_compile", "peak RSS (GiB), highest round"), lambda c: f"at {c[0]} GiB against {c[1]} GiB ({c[2]})"),
    ("README.md", "(the whole subprocess: 28.4 s against 23.4 s)",
     bench_row("ppo_vs_trl_compile", "seconds, whole subprocess"), lambda c: f"{c[0]} s against {c[1]} s"),
    ("benchmarks/README.md", "The reward model's step costs 2.7x its forward pass on the same 64 texts (9.30 s against 3.46 s;",
     record("hub_scale"), lambda r: (lambda st: f"{st['rm_step']['seconds'] / st['rm_forward_64']['seconds']:.1f}x its forward "
                                                f"pass on the same 64 texts ({st['rm_step']['seconds']:.2f} s against "
                                                f"{st['rm_forward_64']['seconds']:.2f} s")(r["figures"]["steps"])),
    ("benchmarks/README.md", "counts more FLOPs (10,807 GFLOPs against 9,858) and takes less time (61.5 s against",
     record("hub_scale"), lambda r: f"({r['figures']['steps']['ppo_update']['flops'] / 1e9:,.0f} GFLOPs against 9,858) and "
                                    f"takes less time ({r['figures']['steps']['ppo_update']['seconds']:.1f} s against"),
    ("benchmarks/README.md", "ours allocates 0.40x what TRL 1.12 does",
     bench_row("ppo_vs_trl_heap", "malloc'd and in use, peak (GiB; --heap)"), lambda c: f"ours allocates {c[2]} what"),
    ("README.md", "| parameters held | 5.0 MiB | 13.7 MiB | 0.36x |",
     bench_row("ppo_vs_trl", "parameters held (MiB)"), lambda c: f"| {c[0]} MiB | {c[1]} MiB | {c[2]} |"),
    ("README.md", "side's fastest of 3 interleaved rounds. Measured 2026-12-05 on a 2-core Intel Xeon machine",
     record("ppo_vs_trl"), lambda r: f"fastest of {r['command'].split('--rounds ')[1].split()[0]} interleaved rounds. "
                                     f"Measured {r['date']} on a {r['machine']['nproc']}-core Intel Xeon"),
    ("README.md", "torch 2.13.0+cpu, transformers 5.25.0, peft 0.21.2, trl 1.12.0 (2 threads)", record("ppo_vs_trl"),
     lambda r: ", ".join(f"{k} {r['versions'][k]}" for k in ("torch", "transformers", "peft", "trl"))
     + f" ({r['config']['threads']} threads)"),
    # README.md's main job, from the record of that `rlhf-lab run` (its summary.json)
    ("README.md", "(2 min 3 s on an idle 2-core machine, 2026-12-05: reward model 85.6% accurate against the gold "
     "labeler, PPO +1.10 SFT standard deviations of gold score at 5.0 nats of KL;", record("pipeline"),
     lambda r: f"({int(r['seconds'] // 60)} min {round(r['seconds'] % 60)} s on an idle 2-core machine, {r['date']}: "
               f"reward model {pct(r['reward_model']['heldout_accuracy'], 1)} accurate against the gold labeler, PPO "
               f"{r['ppo']['gold_gain_in_sft_std']:+.2f} SFT standard deviations of gold score at {r['ppo']['kl']:.1f} "
               "nats of KL;"),
    # the CPU launch of the distributed run, from those runs' summary.json
    ("README.md", "2 processes, gold -0.134 (SFT) -> +0.906 (PPO) at 3.50 nats of KL", record("distributed"),
     lambda r: f"{r['two']['world_size']} processes, gold {r['two']['ppo']['gold_score_sft']:+.3f} (SFT) -> "
               f"{r['two']['ppo']['gold_score_ppo']:+.3f} (PPO) at {r['two']['ppo']['kl']:.2f} nats of KL"),
    ("README.md", "one process, -0.035 -> +1.008 at 3.84 nats, 24 s (33 s)", record("distributed"),
     lambda r: f"one process, {r['one']['ppo']['gold_score_sft']:+.3f} -> {r['one']['ppo']['gold_score_ppo']:+.3f} at "
               f"{r['one']['ppo']['kl']:.2f} nats, {r['one']['seconds']:.0f} s ({r['one']['wall_seconds']:.0f} s)"),
    ("README.md", "29 s of stages (37 s with the launch)", record("distributed"),
     lambda r: f"{r['two']['seconds']:.0f} s of stages ({r['two']['wall_seconds']:.0f} s with the launch)"),
    # README.md on the hub world at GPT-2's size, from hub_scale.py's record
    ("README.md", "steps: 986 TFLOPs in all, SFT's held-out loss 2.0% of them. On one H200 that is about 1.5 minutes",
     record("hub_scale"), lambda r: f"steps: {r['figures']['estimate']['total_flops'] / 1e12:.0f} TFLOPs in all, SFT's "
                                    f"held-out loss {pct(r['figures']['estimate']['sft_eval_share_of_flops'], 1)} of them. "
                                    f"On one H200 that is about {r['figures']['estimate']['gpu_seconds'] / 60:.1f} minutes"),
    ("README.md", "Memory on the CPU peaked at 7.9 GiB (the reward model's step on 32 pairs), 6.3 GiB for a PPO update",
     record("hub_scale"), lambda r: f"peaked at {r['figures']['steps']['rm_step']['peak_gib']:.1f} GiB (the reward model's "
                                    f"step on 32 pairs), {r['figures']['steps']['ppo_update']['peak_gib']:.1f} GiB"),
    ("README.md", "the same run would take about 1.8 hours", record("hub_scale"),
     lambda r: f"about {r['figures']['estimate']['cpu_seconds'] / 3600:.1f} hours"),
    ("README.md", "6.9x, 2.1x and 2.0x the throughput at 0.53x, 0.64x and 0.61x the peak memory",
     lambda: read_tables(record("vs_trl_current")()["table"])[0]["rows"],
     lambda rows: f"{float(rows['DPO'][3][:-1]):.1f}x, {float(rows['RLOO'][3][:-1]):.1f}x and "
                  f"{float(rows['GRPO'][3][:-1]):.1f}x the throughput at {rows['DPO'][6]}, {rows['RLOO'][6]} and "
                  f"{rows['GRPO'][6]} the peak memory"),
]


def prose(path: Path) -> str:
    """A README's text, or a notebook's markdown cells joined (line breaks as spaces)."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = path.read_text()
    return " ".join(text.split())


@pytest.mark.parametrize("file, words, source, written", QUOTES, ids=[f"{q[0]}: {q[1]}" for q in QUOTES])
def test_quoted_number_is_the_measured_one(file, words, source, written):
    text = prose(ROOT / file)
    assert words in text, f"{file} no longer says {words!r}: update this test's row or the text"
    figs = source()
    assert figs, f"no figures for {words!r}: run scripts/run_notebooks.py on the notebook"
    number = written(figs)
    assert number in words, f"{file} says {words!r}, the figures say {number}"


def solution(name):
    return figures.of_notebook(ROOT / "notebooks" / "exercises" / "solutions" / f"{name}.ipynb")


def _run(r):
    return f"+{r['held_out_sft']:.2f} → {r['held_out_ppo']:+.2f}"


def test_the_exercises_readme_table_is_the_solutions_figures():
    """notebooks/exercises/README.md's "before → after" table, row by row, written from the figures the
    committed solution notebooks recorded: re-run a solution and this names the row to update."""
    s1, s2, s3, s4 = (solution(n) for n in ("01_sft_loss", "02_preferences", "03_rewards_advantages",
                                             "04_ppo_update"))
    assert all(f and f["fast"] is False for f in (s1, s2, s3, s4)), "run scripts/run_notebooks.py on the solutions"
    r3, m3, r4, c4, m4 = (s3["your_reward_and_gae"], s3["score_after_last_token"], s4["your_losses"],
                          s4["your_controller"], s4["min_instead_of_max"])
    rows = [
        f"{s1['steps']} steps on {s1['demonstrations']:,} demonstrations | held-out loss "
        f"{s1['eval_loss_before']:.2f} → {s1['eval_loss_after']:.2f} nats per completion token (no-shift mistake: "
        f"{s1['no_shift_eval_loss_before']:.2f} → {s1['no_shift_eval_loss_after']:.2f})",
        f"({s2['train_pairs']:,} pairs to train on, {s2['held_out_pairs']} held out, from {s2['rankings']} rankings) | "
        f"held-out accuracy {s2['accuracy_before']:.2f} → {s2['accuracy_after']:.2f} (vs gold "
        f"{s2['gold_accuracy_before']:.2f} → {s2['gold_accuracy_after']:.2f}); {s2['padding_yours']['left']:.3f} under "
        f"both left and right padding (`mask.sum(-1) - 1`: {s2['padding_usual_mistake']['left']:.3f} under left)",
        f"{r3['updates']} updates of 64, the learner's reward (then + GAE) | gold score of the batches "
        f"{r3['gold_first']:+.2f} → {r3['gold_last']:+.2f}; on 128 held-out prompts SFT {r3['held_out_sft']:+.2f} → PPO "
        f"{r3['held_out_ppo']:+.2f} at {r3['kl']:.1f} nats of KL (score one slot after the last token: batches "
        f"{m3['gold_first']:+.2f} → {m3['gold_last']:+.2f}, held out {m3['held_out_sft']:+.2f} → {m3['held_out_ppo']:+.2f} "
        f"at {m3['kl']:.1f} nats)",
        f"gold {r4['gold_first']:+.2f} → {r4['gold_last']:+.2f}, held out {r4['held_out_sft']:+.2f} → "
        f"{r4['held_out_ppo']:+.2f} at {r4['kl']:.1f} nats of KL; with the controller beta "
        f"{s4['controller_beta_first']:.2f} → {s4['controller_beta_final']:.2f}, held out {c4['held_out_sft']:+.2f} → "
        f"{c4['held_out_ppo']:+.2f} at {c4['kl']:.1f} nats (`min` instead of `max`: KL {m4['kl']:.0f} nats, held out "
        f"{m4['held_out_ppo']:+.2f}, EOS in {100 * m4['eos_share_ppo']:.0f}% of the responses)",
    ]
    assert s2["padding_yours"]["left"] == pytest.approx(s2["padding_yours"]["right"], abs=1e-3)  # "both"
    text = (ROOT / "notebooks" / "exercises" / "README.md").read_text()
    for row in rows:
        assert row in text, f"notebooks/exercises/README.md should say: {row}"


def test_the_benchmark_tables_are_the_records():
    """benchmarks/README.md shows the benchmarks' tables as the committed records (benchmarks/results/, written
    by --record) have them: PPO against TRL 1.12 row by row, and the summary of DPO, RLOO and GRPO against
    TRL's current trainers cell by cell (its last column says the goals in words)."""
    text = (ROOT / "benchmarks" / "README.md").read_text()
    ppo = record("ppo_vs_trl")()
    rows = [line for line in ppo["table"].splitlines() if line.startswith("|")]
    assert len(rows) > 10
    for line in rows:
        assert line in text, f"benchmarks/README.md should have the record's row: {line}"
    current = read_tables(record("vs_trl_current")()["table"])[0]
    assert set(current["rows"]) == {"DPO", "RLOO", "GRPO"}
    for method, cells in current["rows"].items():
        row = "| " + " | ".join([method, *cells[:-1]]) + " |"
        assert row in text, f"benchmarks/README.md should have the record's row: {row}"
    hub = record("hub_scale")()
    for line in hub["table"].splitlines():
        if line.startswith("|"):
            assert line in text, f"benchmarks/README.md should have the hub_scale record's row: {line}"


def test_where_the_memory_goes_is_the_heap_records():
    """benchmarks/README.md's --heap table and the figures its bullets quote come from the --heap records
    (benchmarks/results/*_heap.json): peak RSS, malloc's bytes in use and its heap, per method."""
    text = (ROOT / "benchmarks" / "README.md").read_text()
    heap = {}
    for label, name, index in [("PPO (TRL 1.12)", "ppo_vs_trl_heap", 0), ("DPO", "vs_trl_current_heap", 1),
                               ("RLOO", "vs_trl_current_heap", 2), ("GRPO", "vs_trl_current_heap", 3)]:
        rows = read_tables(record(name)()["table"])[index]["rows"]
        assert "--heap" in record(name)()["command"]
        rss = peak_rss_cells(rows)
        in_use = rows["malloc'd and in use, peak (GiB; --heap)"]
        taken = rows["malloc's heap from the system, peak (GiB; --heap)"]
        rest = [f"{float(rss[i]) - float(taken[i]):.2f}" for i in (0, 1)]
        row = (f"| {label} | {rss[0]} / {rss[1]} | {rss[2]} | {in_use[0]} / {in_use[1]} | {in_use[2]} | "
               f"{taken[0]} / {taken[1]} | {taken[2]} | {rest[0]} / {rest[1]} |")
        assert row in text, f"benchmarks/README.md should have the --heap records' row: {row}"
        heap[label] = {"rss": rss, "in_use": in_use, "heap": taken, "rest": rest}
    ppo, rloo, grpo = heap["PPO (TRL 1.12)"], heap["RLOO"], heap["GRPO"]
    rloo_total = 0.6 * float(rloo["rss"][1])
    ppo_heap = 0.5 * float(ppo["rss"][1]) - float(ppo["rest"][0])
    sentences = [
        f"What ours allocates is {ppo['in_use'][2]} (PPO) to {grpo['in_use'][2]} (GRPO) of what TRL allocates.",
        f"{rloo['rest'][0]} GiB of ours and {ppo['rest'][1]} to {rloo['rest'][1]} GiB of TRL's",
        f"({rloo['heap'][0]} against {rloo['in_use'][0]} GiB)",
        f"at 0.6x of TRL's {rloo['rss'][1]} GiB, RLOO would have {rloo_total:.2f} GiB in all, which leaves "
        f"{rloo_total - float(rloo['rest'][0]):.2f} GiB of heap beside ours' {rloo['rest'][0]} GiB of libraries",
        f"PPO at 0.5x of TRL 1.12's {ppo['rss'][1]} GiB would leave about {ppo_heap:.2f} GiB of heap, where "
        f"ours has {ppo['in_use'][0]} GiB in use at its peak",
    ]
    flat = " ".join(text.split())
    for sentence in sentences:
        assert sentence in flat, f"benchmarks/README.md should say: {sentence}"


def test_the_allocator_table_is_the_allocator_records():
    """benchmarks/README.md's allocator table: each cell is ours / TRL (speed, peak memory) from the default
    records (glibc) and from benchmarks/results/allocators.json (jemalloc, tcmalloc preloaded into both sides)."""
    text = (ROOT / "benchmarks" / "README.md").read_text()

    def cells(rec):
        ppo = read_tables(rec["ppo_vs_trl"]["table"])[0]["rows"]
        current = read_tables(rec["vs_trl_current"]["table"])[0]["rows"]
        peak = peak_rss_cells(ppo)
        return [f"{ppo['episodes / s (median)'][2]}, {peak[2]}"] + [
            f"{current[m][3]}, {current[m][6]}" for m in ("DPO", "RLOO", "GRPO")]

    allocators = record("allocators")()
    rows = [("glibc 2.36, the default (the records above, 3 rounds)",
             {"ppo_vs_trl": record("ppo_vs_trl")(), "vs_trl_current": record("vs_trl_current")()}),
            ("jemalloc 5.3", allocators["jemalloc"]), ("tcmalloc 2.10 (gperftools, minimal)", allocators["tcmalloc"])]
    for label, rec in rows:
        row = "| " + " | ".join([label, *cells(rec)]) + " |"
        assert row in text, f"benchmarks/README.md should have the allocator row: {row}"
    for name in ("jemalloc", "tcmalloc"):
        assert all(f"lib{name}" in allocators[name][s]["command"] for s in ("ppo_vs_trl", "vs_trl_current"))
    tc = read_tables(allocators["tcmalloc"]["vs_trl_current"]["table"])[0]["rows"]["RLOO"]
    je = read_tables(allocators["jemalloc"]["vs_trl_current"]["table"])[0]["rows"]["RLOO"]
    flat = " ".join(text.split())
    ours = [float(read_tables(allocators[a]["vs_trl_current"]["table"])[0]["rows"][m][4])
            for a in ("jemalloc", "tcmalloc") for m in ("DPO", "RLOO", "GRPO")]
    ours += [float(peak_rss_cells(read_tables(allocators[a]["ppo_vs_trl"]["table"])[0]["rows"])[0])
             for a in ("jemalloc", "tcmalloc")]
    assert f"Both lower ours' peak to {min(ours):.2f} to {max(ours):.2f} GiB." in flat
    assert f"jemalloc lowers TRL's as much (RLOO: {je[5]} GiB)" in flat
    assert f"tcmalloc leaves TRL's peak ({tc[5]} GiB) and speeds TRL up more than ours (RLOO: {tc[2]} samples/s " \
           f"against jemalloc's {je[2]})" in flat
