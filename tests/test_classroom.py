"""Tests for rlhf_lab/classroom.py: the item set, learners' files merged (bad ones included), agreement
statistics against hand-computed values, simulated learners, the score-regression reward model, the CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import cli, one_line_error

from rlhf_lab import classroom
from rlhf_lab.classroom import (ClassLabels, agreement, exact_agreement, kendalls_w, krippendorff_alpha,
                                pair_order_agreement, read_class_files, score_regression_loss, score_targets)
from rlhf_lab.scores import LabelStore
from rlhf_lab.utils import LabError

nan = float("nan")


# -----------------------------------------------------------------------------
# the statistics, against values worked out by hand


def test_krippendorffs_alpha_matches_the_textbook_and_a_hand_computed_case():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units, some missing
    data = np.array([[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
                     [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
                     [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
                     [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]])
    assert krippendorff_alpha(data, "interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha(data, "ordinal") == pytest.approx(0.815, abs=5e-4)
    # 2 learners, 3 texts, scores (1, 2, 3) and (1, 2, 4): D_o = 2/6 (one unit 1 apart, both orders),
    # D_e = 82/30 (all ordered pairs of the 6 values), alpha = 1 - (1/3) / (41/15) = 36/41
    assert krippendorff_alpha(np.array([[1, 2, 3], [1, 2, 4]]), "interval") == pytest.approx(36 / 41)
    # places (3, 2, 1) and (3, 1, 2), ordinal: n_1 = n_2 = n_3 = 2, delta(1,2) = delta(2,3) = 2^2, delta(1,3) =
    # 4^2; D_o = 16/6, D_e = 192/30, alpha = 1 - (16/6) / 6.4 = 7/12
    assert krippendorff_alpha(np.array([[3, 2, 1], [3, 1, 2]]), "ordinal") == pytest.approx(7 / 12)
    assert math.isnan(krippendorff_alpha(np.array([[4, 4], [4, 4]]), "interval"))  # no variation: undefined
    assert math.isnan(krippendorff_alpha(np.array([[1, nan], [nan, 2]]), "interval"))  # nothing pairable


def test_kendalls_w_exact_matches_and_pair_agreement_by_hand():
    # places of 3 objects by 3 raters: sums (4, 6, 8), mean 6, S = 8; W = 12 * 8 / (9 * 24) = 4/9
    assert kendalls_w(np.array([[1, 2, 3], [1, 3, 2], [2, 1, 3]])) == pytest.approx(4 / 9)
    assert kendalls_w(np.array([[1, 2, 3, 4]] * 5)) == pytest.approx(1.0)
    # (a, b): 3 texts both scored, 2 equal; (a, c): 2 and 2; (b, c): 2 and 1 -> 5 of 7
    assert exact_agreement(np.array([[1, 2, 3], [1, 2, 4], [1, nan, 3]])) == pytest.approx(5 / 7)
    # rankings as values (higher = better): orders 0 > 1 > 2 and 1 > 0 > 2 agree on 2 of 3 pairs
    assert pair_order_agreement(np.array([[3, 2, 1], [2, 3, 1]])) == (2.0, 3)
    # scores (5, 5, 3) and (6, 4, 3): a tie counts 1/2, the other two pairs agree: 2.5 of 3
    assert pair_order_agreement(np.array([[5, 5, 3], [6, 4, 3]])) == (2.5, 3)
    assert pair_order_agreement(np.array([[5, nan, 3], [1, 4, 7]])) == (0.0, 1)  # only the pair both scored


def tiny_class(tmp_path) -> Path:
    """Two learners, one prompt of three texts: scores (1, 2, 3) and (1, 2, 4); rankings 2 > 1 > 0 and
    1 > 2 > 0, so places (3, 2, 1) and (3, 1, 2): the hand-computed cases above, through real files."""
    prompt, texts = "The film", [" bad.", " fine.", " great."]
    for name, scores, ranking, first in (("ada", [1, 2, 3], [2, 1, 0], "score"), ("bo", [1, 2, 4], [1, 2, 0], "rank")):
        store = LabelStore(tmp_path / f"{name}.jsonl")
        if first == "rank":
            store.add(prompt, texts, ranking, annotator=name, seconds=20.0)
        for text, score in zip(texts, scores):
            store.add_score(prompt, text, score, annotator=name, seconds=4.0 if name == "ada" else 6.0)
        if first == "score":
            store.add(prompt, texts, ranking, annotator=name, seconds=10.0)
    return tmp_path


def test_agreement_of_a_tiny_class_from_its_files(tmp_path):
    labels = read_class_files([tiny_class(tmp_path)])
    assert labels.problems == [] and labels.learners == ["ada", "bo"]
    assert labels.first == {"ada": "score", "bo": "rank"}
    result = agreement(labels)
    assert result["alpha_scores"] == pytest.approx(36 / 41)
    assert result["alpha_rankings"] == pytest.approx(7 / 12)
    assert result["exact_share_scores"] == pytest.approx(2 / 3)
    assert result["kendalls_w"] == pytest.approx(0.75)  # sums (6, 3, 3): S = 6, W = 72 / 96
    assert result["pair_agreement_scores"] == 1.0  # both score in the order bad < fine < great
    assert result["pair_agreement_rankings"] == pytest.approx(2 / 3)
    assert result["pairs_compared_scores"] == result["pairs_compared_rankings"] == 3
    assert agreement(labels, first="score")["learners"] == 1
    cost = classroom.label_cost(labels)
    assert cost["seconds_per_score"] == 5.0 and cost["seconds_per_ranking"] == 15.0  # medians of (4, 6), (10, 20)
    assert cost["seconds_per_prompt_scored"] == 15.0 and cost["pairs_per_prompt"] == 3
    gold = classroom.versus_gold(labels)
    assert gold["ada"]["rankings"] == gold["ada"]["scores"] == 1.0  # gold: great > fine > bad
    assert gold["bo"]["rankings"] == pytest.approx(2 / 3) and gold["bo"]["scores"] == 1.0


# -----------------------------------------------------------------------------
# merging files: several learners, a truncated file and a malformed one


def test_merge_reports_bad_files_by_name_and_line_and_keeps_the_rest(tmp_path):
    item_set = {"items": [{"prompt": f"P{i}", "completions": [f" a{i}", f" b{i}", f" c{i}", f" d{i}"]} for i in range(3)],
                "score_order": [[i, j] for j in range(4) for i in range(3)], "scale": [1, 7], "k": 4}
    learners = classroom.simulated_class(4, seed=1)
    paths = classroom.write_simulated_files(item_set, learners, tmp_path)
    (tmp_path / "SIMULATED").unlink()  # from here on the folder holds a "class's" files
    truncated = paths[1].read_bytes()
    lines = truncated.split(b"\n")
    paths[1].write_bytes(b"\n".join(lines[:5]) + b"\n" + lines[5][:30])  # killed mid-line: 5 labels kept
    bad = paths[2].read_text().splitlines()
    bad[3] = "not json at all"
    bad[7] = bad[7].replace('"score": ', '"score": 99, "x": ')
    paths[2].write_text("\n".join(bad) + "\n")
    (tmp_path / "notes.jsonl").write_bytes(b"\xff\xfe binary\n")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}

    labels = read_class_files([tmp_path, tmp_path / "missing.jsonl"])
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before  # reading never changes a file
    with pytest.raises(LabError, match="holds .jsonl files that this function did not write"):
        classroom.write_simulated_files(item_set, learners, tmp_path)  # never over a class's files
    problems = "\n".join(labels.problems)
    assert f"{paths[1].name}, line 6: the last line is cut off" in problems
    assert f"{paths[2].name}, line 4: not valid JSON" in problems and "fix or delete that line" in problems
    assert f"{paths[2].name}, line 8: " in problems and "Fix or delete that line." in problems
    assert "notes.jsonl, line 1: not UTF-8 text" in problems and "notes.jsonl: no labels" not in problems
    assert "missing.jsonl: cannot be read" in problems
    assert labels.learners == [l.name for l in learners]  # every learner still counts
    n_labels = {name: sum(r["learner"] == name for r in labels.scores + labels.rankings) for name in labels.learners}
    assert n_labels == {learners[0].name: 15, learners[1].name: 5, learners[2].name: 13, learners[3].name: 15}
    result = agreement(labels)
    assert result["learners"] == 4 and result["texts_scored"] == 12 and result["prompts_ranked"] == 3
    assert 0 <= result["pair_agreement_scores"] <= 1 and 0 <= result["pair_agreement_rankings"] <= 1


@pytest.mark.slow
def test_two_learners_writing_into_one_file_at_once_lose_nothing(tmp_path):
    """Two kernels (processes) add labels to one shared class file as fast as they can: every label of both
    is there once, whole (the store's lock; one fsynced line per label)."""
    path = tmp_path / "class.jsonl"
    code = ("import sys\nfrom rlhf_lab.scores import LabelStore\nstore = LabelStore(sys.argv[1])\n"
            "for i in range(30):\n"
            "    store.add_score('p', f' text {i}', 1 + i % 7, annotator=sys.argv[2], seconds=1.0, if_new=True)\n"
            "    store.add('q', [f' a{i}', f' b{i}'], [i % 2, 1 - i % 2], annotator=sys.argv[2], if_new=True)\n")
    writers = [subprocess.Popen([sys.executable, "-c", code, str(path), name]) for name in ("ada", "bo")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    labels = read_class_files([path])
    assert labels.problems == [] and sorted(labels.learners) == ["ada", "bo"]
    for name in ("ada", "bo"):
        assert sorted(s["score"] for s in labels.scores if s["learner"] == name) == sorted(1 + i % 7 for i in range(30))
        assert len([r for r in labels.rankings if r["learner"] == name]) == 30


def test_the_same_name_in_two_files_and_a_second_label_are_reported(tmp_path):
    for folder in ("a", "b"):
        store = LabelStore(tmp_path / folder / "ada.jsonl")
        store.add_score("p", " x", 3, annotator="ada")
        store.add_score("p", " y", 5, annotator="ada")
    store.add_score("p", " x", 6, annotator="ada")  # the same text again (a hand-made file): first one kept
    labels = read_class_files([tmp_path / "a", tmp_path / "b"])
    assert labels.learners[0] == "ada" and labels.learners[1].startswith("ada (") and labels.learners[1].endswith(
        "b/ada.jsonl)")
    assert any("is also in" in p for p in labels.problems)
    assert any("b/ada.jsonl, line 3: ada labelled this text already (line 1); the first label is kept." in p
               for p in labels.problems)
    assert [s["score"] for s in labels.scores if s["learner"] == labels.learners[1]] == [3, 5]


# -----------------------------------------------------------------------------
# the item set and a learner's session


@pytest.mark.slow
def test_item_set_order_file_and_learner_session(tmp_path, tiny):
    model, tokenizer = tiny
    order = classroom.spread_order(8, 4, seed=3)
    assert sorted(order) == [(i, j) for i in range(8) for j in range(4)]
    assert all(a[0] != b[0] for a, b in zip(order, order[1:]))  # a prompt's samples never back to back

    item_set = classroom.make_item_set(model, tokenizer, n_prompts=3, k=3, seed=0, max_new_tokens=24)
    assert len(item_set["items"]) == 3 and all(len(set(i["completions"])) == 3 for i in item_set["items"])
    path = classroom.save_item_set(item_set, tmp_path / "items.json")
    assert classroom.load_item_set(path) == item_set
    edited = json.loads(path.read_text())
    edited["items"][0]["completions"][0] = " edited"
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(LabError, match=r"edited.json: the items do not match the set's id"):
        classroom.load_item_set(tmp_path / "edited.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(LabError, match="other.json is not a class item set"):
        classroom.load_item_set(tmp_path / "other.json")

    assert {classroom.first_task(f"learner {i}") for i in range(6)} == {"score", "rank"}
    session = classroom.learner_session(item_set, "Ada L.", tmp_path / "class", first="rank", keyboard=False)
    assert session.path.name == "ada-l.jsonl" and session.order == ("rank", "score")
    ranker, scorer = session.parts
    for _ in range(3):
        ranker.click(0)
        ranker.click(1)
        ranker.submit()
    scorer.choose(4)
    scorer.submit()
    again = classroom.learner_session(item_set, "Ada L.", tmp_path / "class", first="rank", keyboard=False)
    assert again.parts[0].current_item is None and again.parts[1].progress_text == "1 of 9 scored, 0 skipped"
    labels = read_class_files([tmp_path / "class"])
    assert labels.learners == ["Ada L."] and labels.first == {"Ada L.": "rank"} and len(labels.rankings) == 3
    with pytest.raises(LabError, match="set NAME to your name"):
        classroom.learner_file(tmp_path, "  ")


# -----------------------------------------------------------------------------
# simulated learners: their own scale, so scores are no shared affine map of what they perceive


def test_simulated_learners_use_their_own_scales_and_rank_by_their_own_perception():
    learners = classroom.simulated_class(12, seed=0)
    assert len({(l.low, l.high) for l in learners}) >= 2 and len({round(l.curve, 3) for l in learners}) == 12
    texts = [f"The film was {w}." for w in ("great", "good", "fine", "dull", "awful", "not bad", "superb")]
    for learner in learners:
        scores = [learner.score(t) for t in texts]
        assert all(learner.low <= s <= learner.high for s in scores)
        perceived = [learner.perceive(t, "rank") for t in texts]
        assert learner.rank(texts) == sorted(range(len(texts)), key=lambda i: -perceived[i])
    # the map from perception to score is a person's own curve: on the same perceptions, two learners'
    # scores are not one affine function of the other's
    a, b = learners[0], learners[1]
    grid = np.linspace(-2, 1.5, 50)

    def curve(l):
        return l.low + (l.high - l.low) * (1 / (1 + np.exp(-(grid - l.centre) / l.width))) ** l.curve

    fit = np.polyfit(curve(a), curve(b), 1)
    assert np.abs(np.polyval(fit, curve(a)) - curve(b)).max() > 0.1


# -----------------------------------------------------------------------------
# the reward model from scores


def test_score_regression_loss_on_hand_made_tensors():
    predicted = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)    # (B,)
    target = torch.tensor([1.0, 0.0, 5.0])                           # (B,)
    loss = score_regression_loss(predicted, target)
    assert loss.item() == pytest.approx(8 / 3)                        # (0 + 4 + 4) / 3
    loss.backward()
    assert predicted.grad.tolist() == pytest.approx([0.0, 4 / 3, -4 / 3])  # 2 (p - t) / B


def test_score_targets_pooled_and_per_learner():
    labels = ClassLabels(scores=[{"learner": l, "prompt": "p", "completion": c, "score": s}
                                 for l, c, s in (("a", "x", 1), ("a", "y", 3), ("b", "x", 5), ("b", "y", 7))])
    pooled = {t["completion"]: t["target"] for t in score_targets(labels)}
    # all four scores: mean 4, std sqrt(5); x: mean of (-3, 1)/sqrt(5), y: mean of (-1, 3)/sqrt(5)
    assert pooled["x"] == pytest.approx(-1 / math.sqrt(5)) and pooled["y"] == pytest.approx(1 / math.sqrt(5))
    per_learner = {t["completion"]: t["target"] for t in score_targets(labels, "learner")}
    assert per_learner == {"x": pytest.approx(-1.0), "y": pytest.approx(1.0)}  # each learner: -1 and +1


@pytest.mark.slow
def test_score_model_trains_its_adapter_and_head_only(tiny):
    from rlhf_lab.reward_model import reward_config

    model, tokenizer = tiny
    examples = [{"prompt": "The film was", "completion": c, "target": t}
                for c, t in ((" great, I loved it.", 1.5), (" awful and dull.", -1.5), (" fine.", 0.0))]
    cfg = reward_config(fast=True, epochs=8, warmup_steps=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = classroom.train_score_model(cfg, examples, model, tokenizer)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the trunk was copied
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 8 and losses[-1] < losses[0]
    adapter = [p for n, p in result.reward_model.named_parameters() if ".reward." in n and "lora_B" in n]
    assert adapter and any(p.abs().sum() > 0 for p in adapter)  # LoRA's B starts at zero: it moved
    scores = result.reward_model.score_texts(["The film was"] * 2, [" great, I loved it.", " awful and dull."],
                                             normalised=False)
    assert scores[0] > scores[1]


# -----------------------------------------------------------------------------
# the command line


def test_class_merge_prints_the_table_and_user_mistakes_are_one_line(tmp_path, capsys):
    folder = tiny_class(tmp_path / "class")
    (folder / "cut.jsonl").write_text('{"prompt": "The film", "completion": " ok", "sc')
    code, out, err = cli(capsys, "class", "merge", folder, "--out", tmp_path / "out")
    assert code == 0, err
    assert "2 learners (1 scored first, 1 ranked first): 3 texts scored, 1 prompts ranked" in out
    assert "Krippendorff's alpha      0.88 interval     0.58 ordinal" in out
    assert "same score / Kendall's W  67%               W = 0.75" in out
    assert "pairs ordered alike       100.0% (implied)  66.7%" in out
    assert "seconds per prompt (K=3)  15 s (3 scores)   15 s" in out
    assert "rlhf-lab: warning: " in err and "cut.jsonl, line 1: the last line is cut off" in err
    saved = json.loads((tmp_path / "out" / "agreement.json").read_text())
    assert saved["agreement"]["alpha_scores"] == pytest.approx(36 / 41) and saved["by_first_task"]["score"]["learners"] == 1

    line = one_line_error(capsys, "class", "merge", folder / "ada.jsonl")
    assert line.startswith("rlhf-lab: error: agreement needs at least two learners' labels; the files hold 1 (ada)")
    line = one_line_error(capsys, "class", "merge")
    assert "error: the following arguments are required: FILE" in line
    line = one_line_error(capsys, "class", "items", "--prompts", "0")
    assert line == "rlhf-lab: error: --prompts 0: give 1 to 100 (a class labels 8 in about 8 minutes)."
