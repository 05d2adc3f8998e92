"""Issue 12, class 8: a resume must not describe another run. Options that differ from what the stages
were made with are refused, naming each field and its option (summary.json and configs/ stay as they
were); the rank stage resumes exactly (an interrupted top-up no longer reseeds with seed + count)."""

import json

import pytest
from faults import PPO, RANK, RM, RUN, cli, copy_run, one_line_error

import rlhf_lab.pipeline as pipeline


def snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in [run / "summary.json", *sorted((run / "configs").glob("*"))]}


def test_resume_with_another_seed_is_refused_and_changes_nothing(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    before = snapshot(run)
    line = one_line_error(capsys, "run", *RUN, "--resume", "--seed", "1", "--out", run)
    assert f"--resume would continue {run} with other settings than it was made with: " in line
    for stage, flag in (("sft", "--sft-seed"), ("rank", "--seed"), ("rm", "--rm-seed"), ("ppo", "--ppo-seed")):
        assert f"{stage}.seed 0 -> 1 ({flag})" in line
    assert f"its configs are in {run / 'configs'}" in line and "another --out" in line
    assert snapshot(run) == before  # seed 1 was written nowhere
    assert json.loads((run / "summary.json").read_text())["seed"] == 0


def test_a_changed_stage_option_is_refused_naming_it(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    line = one_line_error(capsys, "rm", "--fast", *RM, "--resume", "--rm-lr", "0.5", "--out", run)
    assert "rm.lr 0.003 -> 0.5 (--rm-lr)" in line
    line = one_line_error(capsys, "ppo", "--fast", *PPO, "--resume", "--ppo-kl-coef", "0.3", "--out", run)
    assert "ppo.kl_coef 0.15 -> 0.3 (--ppo-kl-coef)" in line


def test_forgetting_fast_is_named_as_such(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    line = one_line_error(capsys, "run", *[o for o in RUN if o != "--fast"], "--resume", "--out", run)
    assert "It was made with --fast." in line and "sft.lr 0.004 -> 0.002 (--sft-lr)" in line


def test_resume_with_the_same_options_keeps_every_stage(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    code, out, err = cli(capsys, "run", *RUN, "--resume", "--out", run)
    assert code == 0, err[-2000:]
    assert all(f"[{stage}] done already" in out for stage in ("sft", "rank", "rm", "ppo"))
    summary = json.loads((run / "summary.json").read_text())
    first = json.loads((tiny_run / "summary.json").read_text())
    assert "history" not in summary["sft"] and set(summary["sft"]) == set(first["sft"])
    for key in ("eval_loss_before", "eval_loss_after", "relative_drop"):
        assert summary["sft"][key] == first["sft"][key]
    assert summary["ppo"]["gold_score_ppo"] == first["ppo"]["gold_score_ppo"]
    # the report of a resumed run gives each stage's time from when it ran, not the resume's 0 s
    assert summary["stage_seconds"] == first["stage_seconds"] and summary["stage_seconds"]["rankings"] > 0
    assert summary["resumed"] is True and first["resumed"] is False
    report = (run / "report.md").read_text()
    assert f"Resumed with --resume: this command took {summary['seconds']:.0f} s; the stages took " \
           f"{sum(first['stage_seconds'].values()):.0f} s in all when they ran" in report


# -----------------------------------------------------------------------------
# the rank stage resumes exactly


class Killed(KeyboardInterrupt):
    """The kernel dying after a few rankings (each ranking is on disk when add() returns)."""


def interrupt_after(monkeypatch, n: int):
    import rlhf_lab.rankings as rankings

    real, calls = rankings.rank_with, {"n": 0}

    def rank_with(*args, **kwargs):
        if calls["n"] == n:
            raise Killed()
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(rankings, "rank_with", rank_with)
    return real


def ranked(path):
    return [(r["prompt"], r["completions"], r["ranking"], r["annotator"])
            for r in map(json.loads, path.read_text().splitlines())]


def test_a_killed_rank_stage_then_resume_gives_the_uninterrupted_rankings(capsys, tiny_run, tmp_path, monkeypatch):
    run = copy_run(tiny_run, tmp_path)
    store = run / "02_rankings" / "rankings.jsonl"
    store.unlink()
    real = interrupt_after(monkeypatch, 5)
    code, _, err = cli(capsys, "rank", "--fast", *RANK, "--out", run)
    assert code == 130 and "interrupted; continue with the same command and --resume" in err
    assert len(store.read_text().splitlines()) == 5
    assert pipeline.top_up_plan_path(store).is_file()  # the plan stays for the resume
    import rlhf_lab.rankings as rankings

    monkeypatch.setattr(rankings, "rank_with", real)
    code, out, err = cli(capsys, "rank", "--fast", *RANK, "--resume", "--out", run)
    assert code == 0, err[-2000:]
    assert ranked(store) == ranked(tiny_run / "02_rankings" / "rankings.jsonl")  # the same 16, in order
    assert not pipeline.top_up_plan_path(store).exists()


def test_without_the_plan_the_resume_would_differ(tiny, tmp_path, monkeypatch):
    """What the plan fixes: a fresh top-up after 5 of 12 samples the other 7 with seed + 5."""
    model, tokenizer = tiny
    prompts = [f"Review {i}: the film" for i in range(12)]
    full = tmp_path / "full.jsonl"
    pipeline.top_up_rankings(full, model, tokenizer, 12, K=3, prompts=prompts, seed=4)
    cut = tmp_path / "cut.jsonl"
    real = interrupt_after(monkeypatch, 5)
    with pytest.raises(Killed):
        pipeline.top_up_rankings(cut, model, tokenizer, 12, K=3, prompts=prompts, seed=4)
    import rlhf_lab.rankings as rankings

    monkeypatch.setattr(rankings, "rank_with", real)
    plan = json.loads(pipeline.top_up_plan_path(cut).read_text())
    assert (plan["n_rankings"], plan["K"], plan["seed"], plan["sample_seed"]) == (12, 3, 4, 4)
    assert plan["prompts"] == prompts
    stale = tmp_path / "stale.jsonl"
    stale.write_text(cut.read_text())  # the same 5, but no plan: the top-up has to make a new one
    pipeline.top_up_rankings(cut, model, tokenizer, 12, K=3, prompts=prompts, seed=4)
    pipeline.top_up_rankings(stale, model, tokenizer, 12, K=3, prompts=prompts, seed=4)
    assert ranked(cut) == ranked(full)
    assert ranked(stale)[:5] == ranked(full)[:5] and ranked(stale)[5:] != ranked(full)[5:]


def test_a_plan_made_with_other_settings_is_not_used(tiny, tmp_path):
    model, tokenizer = tiny
    prompts = [f"Review {i}: the film" for i in range(6)]
    store = tmp_path / "rankings.jsonl"
    pipeline.top_up_plan_path(store).write_text(json.dumps({"n_rankings": 6, "K": 3, "seed": 99, "sample_seed": 99,
                                                            "prompts": ["not these"]}))
    new = pipeline.top_up_rankings(store, model, tokenizer, 6, K=3, prompts=prompts, seed=4)
    assert [r["prompt"] for r in new] == prompts
    assert not pipeline.top_up_plan_path(store).exists()


def test_a_damaged_plan_is_named(tiny, tmp_path):
    from rlhf_lab.utils import LabError

    store = tmp_path / "rankings.jsonl"
    pipeline.top_up_plan_path(store).write_text('{"n_rankings": 6, "K"')
    with pytest.raises(LabError, match=r"rankings\.jsonl\.top-up\.json, line 1, column \d+: the top-up plan is not "
                                       r"valid JSON"):
        pipeline.top_up_rankings(store, *tiny, 6, K=3, prompts=["a b"], seed=4)
