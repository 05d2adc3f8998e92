"""Dataclass configs as command-line options: every field becomes `--field-name`, and the comment or
docstring beside the field becomes its --help, so a config documents itself once (CleanRL's Args)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing
from functools import lru_cache


@lru_cache(maxsize=None)
def field_help(cls) -> dict[str, str]:
    """{field: help} from a trailing `# comment` on the field's line or a docstring under it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    helps = {}
    body = ast.parse(source).body[0].body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            text = comments.get(node.lineno, "")
            nxt = body[i + 1] if i + 1 < len(body) else None
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                    and isinstance(nxt.value.value, str):
                text = (text + " " + " ".join(nxt.value.value.split())).strip()
            helps[name] = text
    return helps


def _parser_type(annotation):
    """The type argparse should convert to, for the annotations our configs use."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing) | {"Path": __import__("pathlib").Path})  # noqa: S307
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _parser_type(args[0])
    if origin in (tuple, list):
        return ("list", args[0] if args and args[0] is not Ellipsis else str)
    return annotation


def add_config_args(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple[str, ...] = ()):
    """Add one option per field of dataclass `cls` (with `prefix` for stage-specific names)."""
    helps = field_help(cls)
    group = parser.add_argument_group(f"{cls.__name__} ({cls.__module__})")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kind = _parser_type(f.type)
        flag = "--" + (prefix + f.name).replace("_", "-")
        help_text = (helps.get(f.name, "") + f" (default: {default})").strip().replace("%", "%%")
        dest = prefix + f.name
        if kind is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(kind, tuple):
            group.add_argument(flag, dest=dest, nargs="+", type=kind[1], default=None, help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=kind if kind in (int, float, str) else str,
                               default=None, help=help_text)
    return group


def config_from_args(cls, args: argparse.Namespace, prefix: str = "", base=None, **overrides):
    """A `cls` from `base` (or the defaults), changed only where an option was given on the command line."""
    base = base if base is not None else cls()
    changes = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, prefix + f.name, None)
        if value is not None:
            changes[f.name] = tuple(value) if isinstance(getattr(base, f.name), tuple) else value
    changes.update({k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(base, **changes)
