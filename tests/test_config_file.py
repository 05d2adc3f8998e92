"""--config FILE (rlhf_lab/config_file.py): every option from a file, the command line over it, and the
resolved configs/<command>.yaml of a run read back to the same run."""

import json

import pytest

from faults import one_line_error

from rlhf_lab import config_file
from rlhf_lab.cli import _stage_configs, parse_args


def _write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_file_sets_options_and_the_command_line_overrides_it(tmp_path):
    path = _write(tmp_path, "seed: 3\nfast: true\nppo:\n  kl_coef: 0.07\n  steps: 9\n  adaptive_kl: false\n"
                            "  target_modules: [c_attn]\nsft:\n  lr: 0.001\n")
    before = path.read_bytes()
    args = parse_args(["run", "--config", str(path), "--steps", "4", "--sft-lr", "0.002"])
    configs = _stage_configs(args)
    assert args.fast is True and args.seed == 3
    assert configs["ppo"].kl_coef == 0.07 and configs["ppo"].adaptive_kl is False
    assert configs["ppo"].target_modules == ("c_attn",)
    assert configs["ppo"].steps == 4        # --steps (a shortcut) over the file's ppo.steps
    assert configs["sft"].lr == 0.002       # --sft-lr over the file's sft.lr
    assert configs["sft"].seed == 3 and configs["rm"].seed == 3  # the common seed, as --seed gives it
    assert path.read_bytes() == before      # only read
    # --no-fast overrides the file's fast: true
    assert parse_args(["run", "--config", str(path), "--no-fast"]).fast is False


def test_the_resolved_config_reads_back_to_the_same_configs(tmp_path):
    args = parse_args(["run", "--fast", "--seed", "5", "--kl-coef", "0.11", "--fixed-kl", "--rm-epochs", "3",
                       "--n-rankings", "40", "--lora-r", "4"])
    configs = _stage_configs(args)
    from rlhf_lab.cli import _configs, build_parser, command_stages

    dests = {a.dest for a in build_parser().commands["run"]._actions if a.option_strings}
    resolved = config_file.resolved("run", args, configs, dests, _configs(), command_stages("run"))
    path = tmp_path / "configs" / "run.yaml"
    config_file.write(resolved, path)
    stages = command_stages("run")  # what `run` runs (its dpo config is never used)
    again = _stage_configs(parse_args(["run", "--config", str(path)]))
    assert {s: again[s] for s in stages} == {s: configs[s] for s in stages}
    assert configs["ppo"].r == 4 and configs["ppo"].adaptive_kl is False and configs["rank"].n_rankings == 40
    # JSON is a config file too
    json_path = _write(tmp_path, json.dumps(resolved), "run.json")
    again = _stage_configs(parse_args(["run", "--config", str(json_path)]))
    assert {s: again[s] for s in stages} == {s: configs[s] for s in stages}


def test_sections_of_other_commands_are_passed_over(tmp_path):
    path = _write(tmp_path, "sft:\n  lr: 0.001\nrank:\n  n_rankings: 30\nppo:\n  kl_coef: 0.2\n")
    args = parse_args(["ppo", "--config", str(path)])  # `rlhf-lab ppo` with a whole run's config
    assert _stage_configs(args)["ppo"].kl_coef == 0.2


@pytest.mark.parametrize("text, words", [
    ("ppo:\n  kl_cof: 0.1\n", ["unknown key 'ppo.kl_cof'", "did you mean kl_coef"]),
    ("ppo:\n  kl_coef: -1\n", ["ppo.kl_coef = -1", "must be >= 0", "fix it in the file"]),
    ("sft:\n  epochs: 1.5\n", ["sft.epochs = 1.5", "not a whole number"]),
    ("ppo:\n  algo: sac\n", ["ppo.algo = 'sac'", "invalid choice"]),
    ("fast: 3\n", ["fast = 3", "true or false"]),
    ("precision: bf17\n", ["precision = 'bf17'", "invalid choice"]),
    ("reward:\n  lr: 1\n", ["unknown key 'reward'"]),
    ("ppo: 3\n", ["ppo must hold that stage's fields"]),
    ("- 1\n- 2\n", ["holds keys and values"]),
    ("ppo:\n  kl_coef: [1\n", ["line 3", "not valid YAML"]),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(capsys, tmp_path, text, words):
    path = _write(tmp_path, text)
    line = one_line_error(capsys, "run", "--config", path, "--out", tmp_path / "out")
    assert str(path) in line or "run.yaml" in line, line
    for word in words:
        assert word in line, line
    assert path.read_text() == text
    assert not (tmp_path / "out").exists()


def test_a_missing_file_is_one_line(capsys, tmp_path):
    line = one_line_error(capsys, "run", "--config", tmp_path / "nope.yaml")
    assert "nope.yaml: no such file" in line


def test_a_run_made_again_from_its_config_gives_the_same_summary(tiny_run, replayed_run):
    """The round trip the README promises: `rlhf-lab run --config DIR/configs/run.yaml` makes the same run."""
    first, again = (json.loads((run / "summary.json").read_text()) for run in (tiny_run, replayed_run))

    def figures(summary):  # everything but the clock and the command typed
        return {k: figures(v) if isinstance(v, dict) else v for k, v in summary.items()
                if "seconds" not in k and k not in ("command", "episodes_per_second")
                and not k.endswith("per_second")}

    assert figures(again) == figures(first)
    assert (tiny_run / "samples.jsonl").read_text() == (replayed_run / "samples.jsonl").read_text()
    saved = (replayed_run / "configs" / "run.yaml").read_text()
    assert saved.split("\n", 2)[2].replace("report_to: tensorboard", "report_to: none") == \
        (tiny_run / "configs" / "run.yaml").read_text().split("\n", 2)[2]
