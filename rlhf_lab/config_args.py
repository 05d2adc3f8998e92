"""Dataclass configs as command-line options: every field becomes `--field-name`, and the comment or
docstring beside the field becomes its --help, so a config documents itself once (CleanRL's Args).

The values a field accepts are part of its annotation, `epochs: Count = 2` or
`kl_kind: Annotated[str, OneOf("k1", "k2", "k3")] = "k1"`, and one function checks them all:
check_config, which each config's __post_init__ calls (so a config cannot be made with lr=0), and
which the command line turns into option types (so `--sft-lr 0` is refused while parsing, and
--help states each range).

Standard library only when imported: benchmarks/ppo_vs_trl.py loads this file on its own.

Why this file and not a library (issue 19 asked; both were weighed against what the command line must do):
- HfArgumentParser (transformers) turns each dataclass into flat options named after the fields, so the
  stages' fields of the same name (SFTConfig.lr, RewardConfig.lr, PPOConfig.lr, each config's seed) collide;
  it takes help from `field(metadata={"help": ...})`, not from the comments the configs carry; it checks
  no ranges.
- tyro (CleanRL's choice) does read field comments and nests configs under prefixes, but as `--sft.lr`
  and `--ppo.kl-coef`: every option the README, the notebooks and the tests use would change. It checks
  types and choices, not ranges, so the Range / OneOf checks below stay either way (the configs call them
  in __post_init__, for notebooks too); and its error output is a multi-line box, where the lab promises
  one line and exit code 2.
What a library would replace is field_help (about 25 lines: comments to --help); the rest is the checks
and the per-stage prefixes the lab needs anyway. Config files (--config) are config_file.py's, on PyYAML.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import math
import tokenize
import typing
from functools import lru_cache
from typing import Annotated

# -----------------------------------------------------------------------------
# the values a field accepts


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class Range:
    """The numbers a field accepts: finite, from low to high; an open end excludes the bound itself.

    (Plain classes here, not dataclasses: benchmarks/ppo_vs_trl.py loads this file outside the package,
    where a dataclass cannot find its module.)
    """

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False):
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open  # True: the bound itself is out (lr > 0, not >= 0)

    def __repr__(self) -> str:
        return f"Range({self.describe()})"

    def describe(self) -> str:
        """The range as --help shows it: "> 0", ">= 1", "0 to 1", ">= 0 and < 1", "finite"."""
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {_number(self.low)}"
        high = None if self.high is None else f"{'<' if self.high_open else '<='} {_number(self.high)}"
        if low and high:
            both_closed = not (self.low_open or self.high_open)
            return f"{_number(self.low)} to {_number(self.high)}" if both_closed else f"{low} and {high}"
        return low or high or "finite"

    def problem(self, value, integer: bool = False) -> str | None:
        """Why `value` is not allowed, or None if it is."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, not {type(value).__name__} {value!r}"
        if integer and not isinstance(value, int):
            return "must be a whole number"
        if not math.isfinite(value):
            return f"must be a finite number ({self.describe()})"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            return f"must be {self.describe()}"
        return None


class OneOf:
    """The strings a field accepts."""

    def __init__(self, *choices: str):
        self.choices = tuple(choices)

    def __repr__(self) -> str:
        return f"OneOf{self.choices}"

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def problem(self, value, integer: bool = False) -> str | None:
        return None if value in self.choices else f"must be {self.describe()}"


class DeviceName:
    """A torch device name the lab can use: auto, cpu, cuda, cuda:N or mps (is it there? pick_device says)."""

    def describe(self) -> str:
        return "auto, cpu, cuda, cuda:N or mps"

    def problem(self, value, integer: bool = False) -> str | None:
        kind, _, index = str(value).partition(":")
        if kind not in ("auto", "cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
            return f"must be {self.describe()} (a device name torch knows), not {value!r}"
        return None


# The ranges the configs use, as annotations: `epochs: Count = 2`.
Count = Annotated[int, Range(1)]  # 1, 2, 3, ...
Whole = Annotated[int, Range(0)]  # 0, 1, 2, ...
Positive = Annotated[float, Range(0, low_open=True)]  # > 0
NonNegative = Annotated[float, Range(0)]  # >= 0
Finite = Annotated[float, Range()]  # any number but NaN and infinity
Fraction = Annotated[float, Range(0, 1)]  # 0 to 1
Dropout = Annotated[float, Range(0, 1, high_open=True)]  # a dropout of 1 drops everything
Seed = Annotated[int, Range(0, 2**32 - 1)]  # what NumPy's seed accepts
Device = Annotated[str, DeviceName()]


@lru_cache(maxsize=None)
def field_limits(cls) -> dict[str, tuple[object, bool]]:
    """{field: (its Range / OneOf / DeviceName, whether it must be a whole number)} from the annotations."""
    hints = typing.get_type_hints(cls, include_extras=True)
    limits = {}
    for name, hint in hints.items():
        candidates = [hint] + list(typing.get_args(hint))  # Count | None holds the Annotated inside
        for candidate in candidates:
            for meta in getattr(candidate, "__metadata__", ()):
                if hasattr(meta, "problem"):
                    limits[name] = (meta, typing.get_args(candidate)[0] is int)
    return limits


def check_config(cfg) -> None:
    """Raise ConfigError unless each field of `cfg` is within its annotated range (None is allowed
    where the field is optional), then unless the config's own rules between fields hold (its
    `check()` method, where it has one). The one place where configs are validated."""
    from .utils import ConfigError  # here, not at the top: this file must import without torch

    cls = type(cfg)
    for name, (limit, integer) in field_limits(cls).items():
        value = getattr(cfg, name)
        problem = None if value is None else limit.problem(value, integer)
        if problem:
            raise ConfigError(f"{cls.__name__}.{name} = {value!r}: it {problem}.", cls.__name__, (name,), problem)
    if hasattr(cfg, "check"):
        cfg.check()


@lru_cache(maxsize=None)
def field_help(cls) -> dict[str, str]:
    """{field: help} from a trailing `# comment` on the field's line, with the comment lines that carry it on
    (up to the next field or a `# --- section` line), or a docstring under it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments, own_line = {}, {}  # line -> text: trailing comments; comments alone on their line
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (own_line if tok.line.strip().startswith("#") else comments)[tok.start[0]] = text
    helps = {}
    body = ast.parse(source).body[0].body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            text = comments.get(node.lineno, "")
            line = node.end_lineno + 1
            while text and line in own_line and not own_line[line].startswith("---"):
                text, line = f"{text} {own_line[line]}", line + 1
            nxt = body[i + 1] if i + 1 < len(body) else None
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                    and isinstance(nxt.value.value, str):
                text = (text + " " + " ".join(nxt.value.value.split())).strip()
            helps[name] = text
    return helps


# -----------------------------------------------------------------------------
# configs -> options


def _parser_type(annotation):
    """The type argparse should convert to, for the annotations our configs use (Annotated removed)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _parser_type(args[0])
    if origin in (tuple, list):
        return ("list", args[0] if args and args[0] is not Ellipsis else str)
    return annotation


def option_type(kind, limit=None, integer: bool = False):
    """An argparse `type`: converts the text to `kind` and refuses what `limit` does not accept, so a
    bad value stops the command while it is parsed, in one line that names the option."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number' if kind is float else 'valid'}"
            ) from None
        problem = limit.problem(value, integer) if limit is not None else None
        if problem:
            raise argparse.ArgumentTypeError(f"got {text}; it {problem}")
        return value

    convert.__name__ = getattr(kind, "__name__", "value")
    return convert


def add_field_option(group, cls, name: str, flag: str, dest: str | None = None, help: str | None = None,
                     default_label: str | None = None):
    """One option for field `name` of dataclass `cls`, checked against the field's range, with the
    range and the default in its help. add_config_args uses it for every field; the command line also
    uses it for shortcuts such as --steps (= --ppo-steps) and --lora-r (every stage's r)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    kind = _parser_type(typing.get_type_hints(cls)[name])
    limit, integer = field_limits(cls).get(name, (None, False))
    text = help if help is not None else field_help(cls).get(name, "")
    extra = (f"{limit.describe()}; " if isinstance(limit, Range) else "") + f"default: {default_label or default}"
    help_text = f"{text} ({extra})".strip().replace("%", "%%")
    dest = dest or name
    if kind is bool:
        return group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                  help=help_text)
    if isinstance(kind, tuple):
        return group.add_argument(flag, dest=dest, nargs="+", type=kind[1], default=None, help=help_text)
    kind = kind if kind in (int, float, str) else str
    choices = limit.choices if isinstance(limit, OneOf) else None
    return group.add_argument(flag, dest=dest, type=option_type(kind, None if choices else limit, integer),
                              choices=choices, default=None, help=help_text)


def add_config_args(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple[str, ...] = ()):
    """Add one option per field of dataclass `cls` (with `prefix` for stage-specific names)."""
    group = parser.add_argument_group(f"{cls.__name__} ({cls.__module__})")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        add_field_option(group, cls, f.name, "--" + (prefix + f.name).replace("_", "-"), dest=prefix + f.name)
    return group


def flag_of(prefix: str, name: str) -> str:
    """The option of field `name` under `prefix`: ("ppo_", "kl_target") -> "--ppo-kl-target"."""
    return "--" + (prefix + name).replace("_", "-")


def config_from_args(cls, args: argparse.Namespace, prefix: str = "", base=None, **overrides):
    """A `cls` from `base` (or the defaults), changed only where an option was given on the command line."""
    base = base if base is not None else cls()
    changes = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, prefix + f.name, None)
        if value is not None:
            changes[f.name] = tuple(value) if isinstance(getattr(base, f.name), tuple) else value
    changes.update({k: v for k, v in overrides.items() if v is not None})
    from .utils import ConfigError

    try:
        return dataclasses.replace(base, **changes)  # runs the config's checks (__post_init__)
    except ConfigError as err:  # a rule between fields (each field alone was checked while parsing)
        flags = ", ".join(flag_of(prefix, name) for name in err.fields)
        raise ConfigError(f"{err} (options {flags})", err.config, err.fields, err.problem) from None
