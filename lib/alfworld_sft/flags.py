"""Command-line flags generated from a command's config dataclass: each flag is declared once, on its field.

As TRL's `HfArgumentParser` does, a command's options are the fields of its config dataclass: a field declared with
`option(default, help, ...)` carries its help text (and, where needed, its flag's spelling, its choices and any
other `add_argument` keyword) in the field's metadata; `add_options` adds one argument per such field, and
`config_from_args` builds the config back from the parsed namespace. A field without help is not a flag: it is set
from Python only.

How a field becomes an argument:

* the flag is `--` + the field name with dashes (`max_seq_len` -> `--max-seq-len`), unless `flag=` names another
  (`data_format` -> `--format`); the parsed value is always stored under the field's name;
* the type comes from the annotation (configs use `from __future__ import annotations`: resolved with
  `typing.get_type_hints`): `int`, `float`, `Path` convert the value, `str` keeps it, `X | None` is `X`;
* `bool` is `argparse.BooleanOptionalAction` (`--packing` / `--no-packing`); a plain switch passes its action
  (`flag="--no-load-best", action="store_false"`);
* `tuple[X, ...]` takes one or more values (`nargs="+"`; `nargs="*"` passed to the option wins) and becomes a tuple;
* `choices=` is the one list the module that owns the values keeps (`prompts.DATA_FORMATS` for every `--format`);
  `check_choices(config)` holds a config built in Python to the same lists;
* a `type=` passed to the option converts the whole value and nothing is read from the annotation (collect's
  `--task-types 1,2` -> `("1", "2")`);
* a field without a default is a required flag, unless the command gives it a command-line default
  (`add_options(..., defaults={"adapter": "results/sft_adapter"})`: Python callers still name it);
* help may use argparse's `%(default)s`; a literal percent sign is `%%`.

A new command declares its flags on its config fields, then adds them to its parser and builds its config back:

    @dataclass(frozen=True)
    class MergeConfig:
        adapter: Path = option(help="adapter folder (default: %(default)s)")
        verify_prompts: int = option(3, "sample game prompts whose logits are compared after the merge")
        cache: Path = CACHE  # no help: set from Python only, not a flag

    def configure_parser(subparsers):
        parser = subparsers.add_parser("merge", help="...")
        add_options(parser, MergeConfig, defaults={"adapter": "results/sft_adapter"})
        parser.add_argument("--dry-run", action="store_true")  # not a MergeConfig field: written by hand
        parser.set_defaults(func=lambda args: merge_adapter(config_from_args(MergeConfig, args)))

`flag_of(config_cls, name)` is the flag that sets a field, for error messages that name it. Every command with a
config dataclass declares its flags so; a flag that sets no config field (`format --data`, `collect
--show-admissible-commands`) and the few flags of commands without a config (`doctor`, `compare`, `dagger-compare`,
`data`) are written by hand, each with a comment saying why.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from typing import Any

# Keys of a field's metadata that `option` fills.
HELP, FLAG, CHOICES, EXTRAS = "help", "flag", "choices", "argparse"


def option(
    default: Any = dataclasses.MISSING,
    help: str | None = None,
    *,
    flag: str | None = None,
    choices: Iterable[Any] | None = None,
    default_factory: Any = dataclasses.MISSING,
    **argparse_extras: Any,
) -> Any:
    """A dataclass field that is also a command-line flag: `dataclasses.field(default, default_factory)` whose
    metadata holds the help text, the flag's spelling (default `--` + the name with dashes), the choices and any
    other `add_argument` keyword (`metavar`, `nargs`, `action`), which wins over what the type implies."""
    if flag is not None and not flag.startswith("--"):
        raise ValueError(f"a flag starts with '--', got {flag!r}")
    metadata = {
        HELP: help,
        FLAG: flag,
        CHOICES: None if choices is None else tuple(choices),
        EXTRAS: dict(argparse_extras),
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def flag_fields(config_cls: type) -> list[dataclasses.Field]:
    """The fields of `config_cls` that are flags (those with help), in declaration order."""
    return [field for field in dataclasses.fields(config_cls) if field.metadata.get(HELP)]


def flag_of(config_cls: type, name: str) -> str:
    """The command-line option that sets field `name` of `config_cls`: its `flag=`, else `--` + name with dashes."""
    fields = {field.name: field for field in dataclasses.fields(config_cls)}
    if name not in fields:
        raise KeyError(f"{config_cls.__name__} has no field {name!r}")
    return fields[name].metadata.get(FLAG) or "--" + name.replace("_", "-")


def add_options(
    parser: argparse.ArgumentParser,
    config_cls: type,
    *,
    skip: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add to `parser` one argument per field of `config_cls` that has help, in field order, except those named in
    `skip`; `defaults` gives command-line defaults that differ from the dataclass's (or that it lacks)."""
    defaults = dict(defaults or {})
    unknown = (set(skip) | set(defaults)) - {field.name for field in dataclasses.fields(config_cls)}
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no field {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(config_cls)
    for field in flag_fields(config_cls):
        if field.name not in skip:
            parser.add_argument(flag_of(config_cls, field.name), **_argument(field, hints[field.name], defaults))


def config_from_args(config_cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """`config_cls` built from the parsed namespace: every field whose name is in it (a list given for a tuple field
    becomes a tuple), then `overrides` (values the command computes from its flags) over them; fields in neither
    keep their dataclass defaults."""
    hints = typing.get_type_hints(config_cls)
    given = vars(args)
    values = {}
    for field in dataclasses.fields(config_cls):
        if not field.init or field.name in overrides or field.name not in given:
            continue
        value = given[field.name]
        if isinstance(value, list) and typing.get_origin(_unwrap_optional(field.name, hints[field.name])) is tuple:
            value = tuple(value)
        values[field.name] = value
    return config_cls(**values, **overrides)


def check_choices(config: Any) -> None:
    """Refuse a field value that is not one of its option's `choices`, naming the flag (a ValueError): the parser
    checks the command line, this a config built in Python. None passes where the field may be None; a tuple's
    items are checked one by one."""
    hints = typing.get_type_hints(type(config))
    for field in flag_fields(type(config)):
        allowed, value = field.metadata.get(CHOICES), getattr(config, field.name)
        optional = type(None) in typing.get_args(hints[field.name])
        if allowed is None or (value is None and optional):
            continue
        many = typing.get_origin(_unwrap_optional(field.name, hints[field.name])) is tuple
        wrong = [item for item in (value if many and isinstance(value, tuple) else (value,)) if item not in allowed]
        if wrong:
            shown = ", ".join(str(choice) for choice in ((None, *allowed) if optional else allowed))
            raise ValueError(f"{flag_of(type(config), field.name)} must be one of {shown}, not {wrong[0]!r}")


def _unwrap_optional(name: str, hint: Any) -> Any:
    """`X | None` (or `Optional[X]`) -> X; any other type as it is. `name`: the field's, for the error."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        members = [member for member in typing.get_args(hint) if member is not type(None)]
        if len(members) != 1:
            raise TypeError(f"{name}: a flag's type is one type or that type | None, got {hint}")
        return members[0]
    return hint


def _argument(field: dataclasses.Field, hint: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`add_argument`'s keywords for one field."""
    kwargs: dict[str, Any] = {"dest": field.name, "help": field.metadata[HELP]}
    if field.name in defaults:
        kwargs["default"] = defaults[field.name]
    elif field.default is not dataclasses.MISSING:
        kwargs["default"] = field.default
    elif field.default_factory is not dataclasses.MISSING:
        kwargs["default"] = field.default_factory()
    else:
        kwargs["required"] = True
    if field.metadata.get(CHOICES) is not None:
        kwargs["choices"] = field.metadata[CHOICES]
    extras = field.metadata.get(EXTRAS, {})
    # An action given (store_true, store_false) takes no type; a type given converts the value as it stands.
    if "action" not in extras and "type" not in extras:
        kind = _unwrap_optional(field.name, hint)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            items = typing.get_args(kind)
            if len(items) != 2 or items[1] is not Ellipsis:
                raise TypeError(f"{field.name}: a tuple flag is tuple[X, ...], got {hint}")
            kwargs["nargs"] = "+"
            if items[0] is not str:
                kwargs["type"] = items[0]
        elif typing.get_origin(kind) is not None or not callable(kind):
            raise TypeError(f"{field.name}: no flag for the type {hint}; pass type= to option()")
        elif kind is not str:
            kwargs["type"] = kind
    return {**kwargs, **extras}
