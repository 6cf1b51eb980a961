"""One command-line convention for every script: flags come from a config dataclass, bad input is one line.

A script describes its options as a dataclass whose fields are made with `arg()`: the default, the help text
and, where the value is a name, its choices. `flags()` turns the fields into argparse flags (`data_dir` ->
`--data-dir`; lists take several values; booleans get `--x / --no-x`), shows each default (and each choice) in
`--help`, and returns only the flags the user gave, so a preset can fill the rest (`config.configure`).
`main()` runs a script's body and turns every `UserError` into one `error: ...` line and a non-zero exit, an
orderly stop (`Stopped`) into its own message, and Ctrl-C into one line saying what was kept.

Use:  @dataclass
      class Args:
          domain: str = arg("bio", "the miniature world", choices=("bio", "chem", "cyber"))
      cli.run(Args, body, argv, "what the script does")      # body(Args(...)) under cli.main
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import field


class UserError(Exception):
    """A problem with what the user asked for: reported as one line, no traceback."""


class Stopped(Exception):
    """An orderly stop (SIGTERM after a checkpoint): its message says how to go on; exit non-zero."""


def arg(default, help: str, *, choices: tuple = (), of: type = float, positional: bool = False):
    """A config field: its default, its --help text, its allowed values (checked by `check_choices`) and, for
    a list, the type of its elements; `positional`: an optional positional argument instead of a flag."""
    make = (lambda: list(default)) if isinstance(default, (list, tuple)) else None
    kw = {"default_factory": make} if make else {"default": default}
    return field(metadata={"help": help, "choices": tuple(choices), "of": of, "positional": positional}, **kw)


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        sys.exit(f"error: {message} (see --help)")


def flags(cls, argv, description: str, note=lambda f: "") -> dict:
    """The flags of `cls`'s fields that the user gave in `argv` (a dict of field name -> value). `note(field)`
    adds text to a field's help (tar.py: the paper's value)."""
    p = _Parser(description=description)
    for f in dataclasses.fields(cls):
        default, meta = default_of(f), f.metadata
        shown = f" (default: {default})" if default not in ("", [], None) else ""
        choices = f" {{{'|'.join(meta['choices'])}}}" if meta["choices"] else ""
        kw = dict(default=argparse.SUPPRESS, help=(meta["help"] + choices + shown + note(f)).replace("%", "%%"))
        if meta["positional"]:
            p.add_argument(f.name, nargs="?", type=type(default), **kw)
        elif isinstance(default, bool):
            p.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, list):
            p.add_argument("--" + f.name.replace("_", "-"), type=meta["of"], nargs="+", **kw)
        else:
            p.add_argument("--" + f.name.replace("_", "-"), type=type(default), **kw)
    return vars(p.parse_args(argv))


def check_choices(cfg) -> None:
    """Every field with choices holds one of them (one error line naming the flag otherwise)."""
    for f in dataclasses.fields(cfg):
        allowed = f.metadata.get("choices")
        if allowed and getattr(cfg, f.name) not in allowed:
            raise UserError(f"--{f.name.replace('_', '-')} must be one of {', '.join(allowed)}")


def main(body) -> None:
    """Runs `body()`; bad input ends in one `error:` line, an orderly stop or Ctrl-C in one line of its own."""
    try:
        body()
    except (UserError, OSError) as e:
        sys.exit(f"error: {e}")
    except Stopped as e:
        sys.exit(str(e))
    except KeyboardInterrupt:
        sys.exit("interrupted: finished models, results and metrics lines are kept; nothing half-written remains")


def run(cls, body, argv, description: str) -> None:
    """A script's main: `body(cls(**flags))` under `main`'s one-line error handling."""
    main(lambda: body(cls(**flags(cls, argv, description))))
