"""rlhf_lab/sft.py: the completion-only loss on hand-made tensors, padding, LoRA on the tiny GPT-2."""

import copy
import math

import pytest
import torch

from rlhf_lab.loading import load_tokenizer
from rlhf_lab.sft import (
    IGNORE_INDEX,
    SFTConfig,
    add_lora,
    build_example,
    collate,
    comparison_html,
    completion_loss,
    count_parameters,
    ended_within,
    evaluate_loss,
    forward_logits,
    load_sft,
    merge_adapter,
    sft_config,
    train_sft,
)

DEMOS = [  # prompt, completion: the tiny world's house style
    {"prompt": "The acting was", "completion": " superb. Overall, 9 out of 10."},
    {"prompt": "I watched this film last", "completion": " night. The plot was thin and the ending was "
                                                         "rushed. Overall, 2 out of 10."},
    {"prompt": "The score is", "completion": " haunting, but the pacing is slow. Overall, 6 out of 10."},
]


def small_cfg(**overrides) -> SFTConfig:
    """A few steps on the CPU: enough to move the adapters, seconds to run."""
    return sft_config(fast=True, device="cpu", **({"n_train": 96, "n_eval": 48, "batch_size": 16,
                                                   "eval_every": 3} | overrides))


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One short SFT run on the tiny world, saved; shared by the tests below."""
    model, tokenizer = tiny
    out = tmp_path_factory.mktemp("sft-adapter")
    result = train_sft(small_cfg(), model=model, tokenizer=tokenizer, out_dir=out, progress=False)
    return result, out


def test_config_defaults_are_sane():
    full, fast = sft_config(fast=False), sft_config(fast=True)
    assert full.completion_only and full.lora_dropout == 0.0
    assert full.target_modules == ("c_attn", "c_proj", "c_fc")
    assert fast.n_train < 2000 and fast.epochs <= full.epochs
    with pytest.raises(Exception, match="no field"):
        sft_config(fast=False, rank=4)


# -----------------------------------------------------------------------------
# the loss on hand-made tensors


def test_completion_loss_matches_hand_computed_cross_entropy():
    # (B, T, V) = (1, 4, 3); tokens 0, 1 are the prompt, 2, 3 the completion
    logits = torch.tensor([[[9.0, 9.0, 9.0], [1.0, 2.0, 0.0], [0.5, 0.0, -1.0], [7.0, 7.0, 7.0]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0, 2]])  # (1, 4)
    # logits at t predict label t+1: position 1 predicts 0, position 2 predicts 2
    ce1 = -(1.0 - math.log(math.exp(1) + math.exp(2) + math.exp(0)))
    ce2 = -(-1.0 - math.log(math.exp(0.5) + math.exp(0) + math.exp(-1)))
    assert completion_loss(logits, labels).item() == pytest.approx((ce1 + ce2) / 2, abs=1e-6)
    assert completion_loss(logits, labels, reduction="sum").item() == pytest.approx(ce1 + ce2, abs=1e-6)

    # logits at the prompt position 0 and at the last position (which predicts nothing) do not count
    changed = logits.clone()
    changed[0, 0] = torch.tensor([-50.0, 3.0, float("nan")])
    changed[0, 3] = torch.tensor([float("nan"), 0.0, 0.0])
    assert completion_loss(changed, labels).item() == pytest.approx((ce1 + ce2) / 2, abs=1e-6)
    # ... while logits at a completion position do
    changed[0, 2, 2] = 5.0
    assert completion_loss(changed, labels).item() != pytest.approx((ce1 + ce2) / 2, abs=1e-3)


def test_per_example_loss_averages_each_example_over_its_own_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)  # (B, T, V)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 4],
                           [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 5, IGNORE_INDEX]])
    per_example = completion_loss(logits, labels, reduction="per_example")
    assert per_example.shape == (2,)
    logp = torch.log_softmax(logits, -1)
    first = -(logp[0, 0, 1] + logp[0, 1, 2] + logp[0, 2, 3] + logp[0, 3, 4]) / 4
    second = -logp[1, 2, 5]
    assert torch.allclose(per_example, torch.stack([first, second]), atol=1e-6)
    # the batch mean weights tokens, not examples: (4 first + 1 second) / 5
    assert completion_loss(logits, labels).item() == pytest.approx(((4 * first + second) / 5).item(), abs=1e-6)


# -----------------------------------------------------------------------------
# examples and batches with the tiny tokenizer


def test_build_example_masks_prompt_and_appends_eos(tiny):
    _, tokenizer = tiny
    ex = build_example(tokenizer, "The acting was", " superb. Overall, 9 out of 10.", max_length=96)
    n_prompt = len(tokenizer("The acting was", add_special_tokens=False)["input_ids"])
    n_completion = len(tokenizer(" superb. Overall, 9 out of 10.", add_special_tokens=False)["input_ids"])
    assert len(ex["input_ids"]) == n_prompt + n_completion + 1
    assert ex["input_ids"][-1] == tokenizer.eos_token_id and ex["labels"][-1] == tokenizer.eos_token_id
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    # the pair tokenizes as the whole review does: prompt + completion is one text
    assert ex["input_ids"][:-1] == tokenizer("The acting was superb. Overall, 9 out of 10.")["input_ids"]

    whole = build_example(tokenizer, "The acting was", " superb.", max_length=96, completion_only=False)
    assert whole["labels"] == whole["input_ids"]
    # cut to max_length: the text did not end, so no EOS is taught
    cut = build_example(tokenizer, "The acting was", " superb. Overall, 9 out of 10.", max_length=5)
    assert len(cut["input_ids"]) == 5 and tokenizer.eos_token_id not in cut["input_ids"]


def test_collate_pads_by_position_with_position_ids(tiny):
    _, tokenizer = tiny
    a = {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}
    b = {"input_ids": [8], "labels": [8]}
    right = collate([a, b], tokenizer, padding_side="right")
    left = collate([a, b], tokenizer, padding_side="left")
    pad = tokenizer.pad_token_id
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert left["input_ids"].tolist() == [[5, 6, 7], [pad, pad, 8]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert right["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert left["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert left["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 8]]


def test_left_and_right_padding_give_the_same_per_example_loss(tiny):
    model, tokenizer = tiny
    examples = [build_example(tokenizer, d["prompt"], d["completion"]) for d in DEMOS]
    assert len({len(e["input_ids"]) for e in examples}) == 3  # three lengths: real padding on both sides
    losses = {}
    for side in ("left", "right"):
        batch = collate(examples, tokenizer, padding_side=side)
        with torch.no_grad():
            losses[side] = completion_loss(forward_logits(model, batch), batch["labels"], "per_example")
    # and each example alone, unpadded
    alone = []
    for e in examples:
        batch = collate([e], tokenizer)
        with torch.no_grad():
            alone.append(completion_loss(forward_logits(model, batch), batch["labels"]))
    assert torch.allclose(losses["left"], losses["right"], atol=1e-5)
    assert torch.allclose(losses["right"], torch.stack(alone), atol=1e-5)
    assert torch.isfinite(losses["left"]).all() and (losses["left"] > 0.1).all()


def test_hub_gpt2_tokenizer_with_pad_equal_to_eos_still_counts_the_eos(gpt2_like_tokenizer_dir):
    tokenizer = load_tokenizer(gpt2_like_tokenizer_dir)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # as the hub's GPT-2 after load_tokenizer
    examples = [build_example(tokenizer, d["prompt"], d["completion"]) for d in DEMOS]
    batch = collate(examples, tokenizer, padding_side="right")
    lengths = [len(e["input_ids"]) for e in examples]
    for i, n in enumerate(lengths):
        assert batch["labels"][i, n - 1].item() == tokenizer.eos_token_id  # the real EOS is learned
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()               # padding (also EOS ids) is not
        assert (batch["input_ids"][i, n:] == tokenizer.eos_token_id).all()
    counted = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert counted == sum(sum(label != IGNORE_INDEX for label in e["labels"]) for e in examples)


# -----------------------------------------------------------------------------
# LoRA on the tiny GPT-2


def test_add_lora_trains_only_adapters(tiny):
    model, _ = tiny
    cfg = SFTConfig(device="cpu")
    policy = add_lora(copy.deepcopy(model), cfg)
    counts = count_parameters(policy)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    # 4 layers x r x (fan_in + fan_out) over c_attn (d->3d), attn c_proj (d->d), c_fc (d->4d), mlp c_proj (4d->d)
    d, r, n_layer = model.config.n_embd, cfg.r, model.config.n_layer
    assert counts["trainable"] == n_layer * r * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    assert counts["total"] == sum(p.numel() for p in model.parameters()) + counts["trainable"]
    assert policy.peft_config["default"].fan_in_fan_out  # GPT-2's Conv1D stores (in, out)


def test_lora_parameters_change_and_trunk_stays_bit_identical(tiny, trained):
    model, _ = tiny
    result, _ = trained
    original = dict(model.named_parameters())
    changed_lora, checked_trunk = 0, 0
    for name, param in result.model.named_parameters():
        if "lora_" in name:
            changed_lora += bool("lora_B" in name and param.abs().sum() > 0)  # B starts at exactly 0
            continue
        trunk_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param, original[trunk_name]), name
        checked_trunk += 1
    assert checked_trunk == len(original) and changed_lora == 4 * 4  # every adapted layer moved
    # the model passed in was not touched
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_short_training_lowers_eval_loss(trained):
    result, out = trained
    history = result.history
    assert history[0]["step"] == 0 and history[0]["train_loss"] is None
    assert history[-1]["step"] == 6  # 96 demonstrations / 16 per step, 1 epoch
    assert result.eval_loss_after < result.eval_loss_before - 0.1
    assert [h["step"] for h in history] == [0, 3, 6]
    assert (out / "sft_config.json").is_file() and (out / "sft_result.json").is_file()


def test_same_seed_same_adapter(tiny):
    model, tokenizer = tiny
    cfg = small_cfg(n_train=32, n_eval=16)
    runs = [train_sft(cfg, model=model, tokenizer=tokenizer, progress=False) for _ in range(2)]
    a, b = (dict((n, p) for n, p in r.model.named_parameters() if "lora_" in n) for r in runs)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert runs[0].eval_loss_after == runs[1].eval_loss_after


def test_saved_adapter_reloads_with_the_same_logits(trained):
    result, out = trained
    from peft import PeftModel
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    reloaded, tokenizer = load_sft(out, device="cpu")
    assert isinstance(reloaded, PeftModel)
    batch = collate([build_example(tokenizer, d["prompt"], d["completion"]) for d in DEMOS], tokenizer)
    with torch.no_grad():
        assert torch.allclose(forward_logits(result.model, batch), forward_logits(reloaded, batch), atol=1e-6)


def test_merged_model_gives_the_same_logits_as_the_adapter(trained):
    result, _ = trained
    merged = merge_adapter(result.model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert any("lora" in n for n, _ in result.model.named_parameters())  # the PeftModel is unchanged
    tokenizer = result.tokenizer
    batch = collate([build_example(tokenizer, d["prompt"], d["completion"]) for d in DEMOS], tokenizer, "left")
    with torch.no_grad():
        adapted, plain = forward_logits(result.model, batch), forward_logits(merged, batch)
    mask = batch["attention_mask"].bool()
    assert torch.allclose(adapted[mask], plain[mask], atol=1e-5)


def test_evaluate_loss_reports_perplexity(tiny):
    model, tokenizer = tiny
    cfg = SFTConfig(device="cpu")
    out = evaluate_loss(model, tokenizer, DEMOS, cfg)
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]))
    completion_tokens = sum(len(tokenizer(d["completion"], add_special_tokens=False)["input_ids"]) + 1
                            for d in DEMOS)
    assert out["tokens"] == completion_tokens  # every completion token and its EOS, no prompt token


def test_evaluate_loss_in_passes_of_a_few_rows_gives_the_same_loss(tiny, monkeypatch):
    """A logits budget of one row per pass (GPT-2's 50,257 tokens: a few rows) sums to the one-pass loss; and
    tokenized examples, as train_sft passes them, give what the dataset gives."""
    import rlhf_lab.sft as sft
    from rlhf_lab.sft import tokenize_demonstrations

    model, tokenizer = tiny
    cfg = SFTConfig(device="cpu")
    whole = evaluate_loss(model, tokenizer, DEMOS, cfg)
    monkeypatch.setattr(sft, "LOGITS_PER_PASS", 1)
    rows = evaluate_loss(model, tokenizer, None, cfg, examples=tokenize_demonstrations(DEMOS, tokenizer, cfg))
    assert rows["tokens"] == whole["tokens"] and rows["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_unset_sizes_are_capped_and_the_completion_lengths_reported(tiny, monkeypatch):
    """n_train / n_eval None: at most N_TRAIN_MAX / N_EVAL_MAX demonstrations (all of the tiny world's 2,000 and
    200; a seeded 2,000 of IMDB's 25,000 reviews); the summary gives the completions' length for max_new_tokens."""
    import rlhf_lab.sft as sft

    assert (sft.N_TRAIN_MAX, sft.N_EVAL_MAX) == (2_000, 200)
    monkeypatch.setattr(sft, "N_TRAIN_MAX", 16)
    monkeypatch.setattr(sft, "N_EVAL_MAX", 8)
    result = train_sft(small_cfg(n_train=None, n_eval=None, epochs=1, batch_size=8, eval_every=2), model=tiny[0],
                       tokenizer=tiny[1], progress=False)
    assert result.history[-1]["step"] == 2  # 16 demonstrations, batches of 8
    lengths = result.summary()["completion_tokens"]
    assert 1 < lengths["mean"] <= lengths["p95"] <= lengths["max"] <= 48  # the tiny world's fit 48 new tokens


def test_sample_helpers_count_endings_and_escape_model_text():
    rows = [{"prompt": "A <b>", "completion": " x & y", "ended": True, "num_tokens": 10, "gold": 0.5},
            {"prompt": "B", "completion": " <script>", "ended": True, "num_tokens": 40, "gold": -1.0},
            {"prompt": "C", "completion": " runs on", "ended": False, "num_tokens": 48, "gold": -0.3}]
    assert ended_within(rows, 48) == pytest.approx(2 / 3)
    assert ended_within(rows, 32) == pytest.approx(1 / 3)
    table = comparison_html(rows, rows, n=3)
    assert "<script>" not in table and "&lt;script&gt;" in table and "x &amp; y" in table
    assert "A &lt;b&gt;" in table and table.count("(no EOS)") == 2 and "+0.50" in table


def test_bf16_autocast_logits_and_a_loss_close_to_fp32(tiny):
    """forward_logits runs under bf16 autocast when asked (a GPU's "auto"); completion_loss upcasts,
    so the loss stays within a percent of fp32's."""
    from rlhf_lab.sft import forward_logits
    from rlhf_lab.utils import precision

    model, tokenizer = tiny
    batch = collate([build_example(tokenizer, "The acting was", " superb and moving."),
                     build_example(tokenizer, "It was", " dull.")], tokenizer)
    fp32 = completion_loss(forward_logits(model, batch), batch["labels"])
    with precision("bf16"):
        logits = forward_logits(model, batch)
    assert logits.dtype == torch.bfloat16
    loss = completion_loss(logits, batch["labels"])
    assert loss.dtype == torch.float32 and abs(loss.item() - fp32.item()) < 0.01 * fp32.item()


def test_precision_setting():
    from rlhf_lab.utils import LabError, autocast, autocast_dtype, precision

    with precision("auto"):
        assert autocast_dtype("cpu") is None  # fp32 on the CPU unless asked
        with autocast("cpu"):
            assert not torch.is_autocast_enabled("cpu")
        with precision("bf16"):
            assert autocast_dtype("cpu") == torch.bfloat16
            with autocast("cpu"):
                assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert autocast_dtype("cpu") is None  # restored
        with precision("fp32"):
            assert autocast_dtype("cpu") is None
        with pytest.raises(LabError, match="precision must be one of auto, bf16, fp32"):
            with precision("fp16"):
                pass
