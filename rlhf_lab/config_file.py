"""Every option of a command from one file: `rlhf-lab run --config run.yaml`.

A config file is YAML (or JSON, which YAML reads too): the common options at the top, then one
section per stage holding that stage's fields, by the names its dataclass uses:

    command: run          # which command wrote it (informational: any command may read it)
    seed: 0
    fast: true
    sft:
      lr: 0.0002
      epochs: 2
    ppo:
      kl_coef: 0.05
      steps: 60

Options given on the command line override the file. Every command saves what it resolved (each
field's value after the defaults, the file and the options) as DIR/configs/<command>.yaml, itself a valid
--config: `rlhf-lab run --config runs/x/configs/run.yaml --out runs/y` makes the same run again.

A section for a stage the command does not run (a run's `sft:` read by `rlhf-lab ppo`) is passed over;
an unknown key, or a value outside its field's range, stops the command with the file, the key and the fix.
The file is only read.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

from .utils import LabError, short_path

# the common options a file may set at its top, by their option's dest; `command` is only informational
TOP = ("model", "data", "seed", "device", "fast", "precision", "report_to", "rounds")


def _plain(value):
    """A config value as YAML writes it: tuples as lists."""
    return list(value) if isinstance(value, tuple) else value


def read(path: str | Path) -> dict:
    """The file as a dict, or a LabError naming the file and the line of a syntax error."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LabError(f"--config {path}: no such file; name a YAML or JSON file of options (a run's "
                       "configs/<command>.yaml is one).")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else getattr(err, "lineno", None)
        where = f"{short_path(path)}, line {line}" if line else short_path(path)
        problem = getattr(err, "problem", None) or getattr(err, "msg", None) or str(err)
        raise LabError(f"{where}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({problem}); fix "
                       "that line, or write the file again from a run's configs/<command>.yaml.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LabError(f"{short_path(path)}: a config file holds keys and values (`seed: 0`, `ppo:` and its "
                       f"fields), not a {type(data).__name__}.")
    return data


def _unknown(path: Path, key: str, known) -> LabError:
    close = difflib.get_close_matches(key.rpartition(".")[2], [k.rpartition(".")[2] for k in known], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return LabError(f"{short_path(path)}: unknown key {key!r}{hint}; the keys are the options' names without "
                    "their stage prefix, under the stage (see rlhf-lab COMMAND --help, or a run's configs/).")


def settings(path: str | Path, dests: set[str], stages: dict[str, tuple[type, str]]
             ) -> list[tuple[str, str, object]]:
    """[(key in the file, option dest, value)] for a command whose options have `dests`, from the file.

    `stages` is {stage name: (its config class, its options' prefix)} for every stage the lab has; the
    fields a command has no option for (paths the command sets, or stages it does not run) are passed over.
    The values are checked by the command's own option parser (cli.py), as if typed on the command line.
    """
    path = Path(path)
    data = read(path)
    values = []
    for key, value in data.items():
        if key == "command":
            continue
        if key in TOP:
            if key in dests and value is not None:
                values.append((key, key, value))
            continue
        if key not in stages:
            raise _unknown(path, key, list(TOP) + list(stages))
        if not isinstance(value, dict):
            raise LabError(f"{short_path(path)}: {key} must hold that stage's fields (`{key}:` then indented "
                           f"`name: value` lines), not a {type(value).__name__}.")
        cls, prefix = stages[key]
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        for name, field_value in value.items():
            if name not in fields:
                raise _unknown(path, f"{key}.{name}", [f"{key}.{f}" for f in fields])
            if prefix + name not in dests or prefix + name in TOP:
                continue  # set by the command itself (a path between stages, or --seed), or a stage it does not run
            if field_value is not None:  # None: the field's own default
                values.append((f"{key}.{name}", prefix + name, field_value))
    return values


def resolved(command: str, args, configs: dict, dests: set[str], stages: dict[str, tuple[type, str]],
             run_stages) -> dict:
    """What a command ran with, as a config file: its common options (those given) and, for each stage it
    ran, every field it has an option for, resolved. Read back (settings), it makes the same run."""
    out = {"command": command}
    for key in TOP:
        value = getattr(args, key, None)
        if key in dests and value is not None:
            out[key] = _plain(value)
    for stage in run_stages:
        cls, prefix = stages[stage]
        cfg = configs[stage]
        out[stage] = {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cls)
                      if f.init and prefix + f.name in dests and prefix + f.name not in TOP}
    return out


def write(config: dict, path: Path) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# What this command ran with: every option, resolved. Use it again with\n"
              f"#   rlhf-lab {config.get('command', 'run')} --config {short_path(path)} --out NEW_FOLDER\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False))
