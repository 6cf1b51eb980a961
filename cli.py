"""One command-line convention for every script: flags come from a config dataclass, bad input is one line.

A script describes its options as a dataclass whose fields are made with `arg()`: the default, the help text,
and the field's domain: its choices, or its bounds (`above=0`: positive; `at_least`, `at_most`), or that it
must not be empty. `flags()` turns the fields into argparse flags (`data_dir` -> `--data-dir`; lists take
several values; booleans get `--x / --no-x`), shows each default, choice and bound in `--help`, and returns
only the flags the user gave, so a preset can fill the rest (`config.configure`). `check()` holds a config to
its fields' domains (every number finite), before any work is done.

`main()` runs a script's body and ends every problem in one `error: ...` line on stderr, never a traceback:

    exit 2   usage: a flag's value outside its domain, an unknown flag or choice (`UsageError`)
    exit 1   failure: an unreadable file, a diverged training run, a missing model (`UserError`, OSError);
             an orderly stop (`Stopped`: SIGTERM or Ctrl-C after a checkpoint) says how to go on
    exit 130 a second Ctrl-C (finished models, results and metrics lines are kept)

`progress()` is every script's progress display: a tqdm bar on a terminal, else one log line every ~30 s.

Use:  @dataclass
      class Args:
          domain: str = arg("bio", "the miniature world", choices=("bio", "chem", "cyber"))
          steps: int = arg(100, "training steps", above=0)
      cli.run(Args, body, argv, "what the script does")      # body(Args(...)) under cli.main, after check()
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import textwrap
import time
from dataclasses import field

WORKERS = min(4, os.cpu_count() or 1)  # every --workers default: a worker per core, at most 4 (each holds a model)
INT_MAX = 2**31 - 1  # every integer flag fits a C int (what torch's seeds and thread counts take)


class UserError(Exception):
    """A problem with what the user asked for or gave (a file, a model): one line, exit 1, no traceback."""


class UsageError(UserError):
    """A flag outside its domain: one line, exit 2 (argparse's code for a usage error)."""


class Stopped(Exception):
    """An orderly stop (SIGTERM or Ctrl-C after a checkpoint): its message says how to go on; exit 1."""


def arg(default, help: str, *, choices: tuple = (), of: type = float, positional: bool = False, above=None,
        at_least=None, at_most=None, nonempty: bool = False):
    """A config field: its default, its --help text and its domain, which `check` enforces: `choices`; numbers
    (each element of a list) `above` (exclusive), `at_least`, `at_most`; `nonempty` for a string or list. Every
    float must be finite. `of`: the type of a list's elements; `positional`: an optional positional argument."""
    make = (lambda: list(default)) if isinstance(default, (list, tuple)) else None
    kw = {"default_factory": make} if make else {"default": default}
    meta = {"help": help, "choices": tuple(choices), "of": of, "positional": positional, "above": above,
            "at_least": at_least, "at_most": at_most, "nonempty": nonempty}
    return field(metadata=meta, **kw)


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def domain(meta) -> str:
    """A field's bounds in words ("positive", "≥ 0", "in [0, 1]"), empty when it has none."""
    lo, lo_in, hi = meta.get("above"), meta.get("at_least"), meta.get("at_most")
    if lo_in is not None and hi is not None:
        return f"in [{lo_in:g}, {hi:g}]"
    parts = ["positive" if lo == 0 else f"> {lo:g}"] if lo is not None else []
    parts += [f"≥ {lo_in:g}"] if lo_in is not None else []
    parts += [f"≤ {hi:g}"] if hi is not None else []
    return " and ".join(parts)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


class _Help(argparse.HelpFormatter):
    def _split_lines(self, text, width):  # a choice set or a path longer than a line stays whole, never cut
        return textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False)


def flags(cls, argv, description: str, note=lambda f: "") -> dict:
    """The flags of `cls`'s fields that the user gave in `argv` (a dict of field name -> value). `note(field)`
    adds text to a field's help (tar.py: the paper's value)."""
    p = _Parser(description=description, formatter_class=_Help)
    for f in dataclasses.fields(cls):
        default, meta = default_of(f), f.metadata
        shown = f" (default: {default})" if default not in ("", [], None) else ""
        bounds = f" [{domain(meta)}]" if domain(meta) else ""
        choices = f" {{{'|'.join(meta['choices'])}}}" if meta["choices"] else ""
        text = meta["help"] + choices + bounds + shown + note(f)
        kw = dict(default=argparse.SUPPRESS, help=text.replace("%", "%%"))
        if meta["positional"]:
            many = isinstance(default, list)
            p.add_argument(f.name, nargs="*" if many else "?", type=meta["of"] if many else type(default), **kw)
        elif isinstance(default, bool):
            p.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, list):
            p.add_argument(flag(f.name), type=meta["of"], nargs="+", **kw)
        else:
            p.add_argument(flag(f.name), type=type(default), **kw)
    return vars(p.parse_args(argv))


def check(cfg) -> None:
    """Every field of `cfg` lies in its domain (`arg`): a UsageError naming the first flag that does not."""
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        if not meta:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if meta["nonempty"] and (value == "" or value == [] or value == ()):
            raise UsageError(f"{flag(f.name)} must not be empty")
        if meta["choices"] and any(v not in meta["choices"] for v in values):
            raise UsageError(f"{flag(f.name)} must be one of {', '.join(meta['choices'])}, got {value!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, int) and abs(v) > INT_MAX:
                raise UsageError(f"{flag(f.name)} must be at most {INT_MAX}, got {v}")
            lo, lo_in, hi = meta["above"], meta["at_least"], meta["at_most"]
            if not math.isfinite(v) or (lo is not None and not v > lo) or (lo_in is not None and not v >= lo_in) \
                    or (hi is not None and not v <= hi):
                raise UsageError(f"{flag(f.name)} must be {domain(meta) or 'a finite number'}, got {v}")


def reason(e: Exception, n: int = 160) -> str:
    """An exception as a short phrase for an error line: its class and the first line of its message."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:n]}"


def main(body) -> None:
    """Runs `body()`; bad input ends in one `error:` line (exit 2 usage, 1 failure), an orderly stop in one
    line of its own. A Ctrl-C that reaches here (a second one, or one outside a training loop) is one line."""
    try:
        body()
    except UsageError as e:
        print(f"error: {e} (see --help)", file=sys.stderr)
        sys.exit(2)
    except (UserError, OSError) as e:
        sys.exit(f"error: {e}")
    except Stopped as e:
        sys.exit(str(e))
    except KeyboardInterrupt:
        print("interrupted: finished models, results and metrics lines are kept; nothing half-written remains",
              file=sys.stderr)
        sys.exit(130)


def run(cls, body, argv, description: str) -> None:
    """A script's main: `body(cls(**flags))` under `main`'s one-line error handling, after `check`."""
    def checked():
        args = cls(**flags(cls, argv, description))
        check(args)
        body(args)
    main(checked)


# --------------------------------------------------------------------------------------------------------
# Progress: a bar on a terminal, a line every ~30 s in a log (a piped run is never silent for long)
# --------------------------------------------------------------------------------------------------------
class _LogLines:
    """tqdm's update / set_postfix / close, printed as one line per `every` seconds (and one at the end)."""

    def __init__(self, total: int, desc: str, initial: int, every: float):
        self.total, self.desc, self.n, self.every, self.postfix = total, desc, initial, every, {}
        self.t0, self.start, self.last = time.time(), initial, time.time()

    def update(self, n: int = 1):
        self.n += n
        if time.time() - self.last >= self.every:
            self.last = time.time()
            self._line()

    def set_postfix(self, **kw):
        self.postfix = kw

    def _line(self):
        elapsed, done = time.time() - self.t0, self.n - self.start
        eta = f", ETA {elapsed / done * (self.total - self.n):.0f}s" if done and self.total else ""
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total}{extra} ({elapsed:.0f}s{eta})", file=sys.stderr, flush=True)

    def close(self):
        if self.n > self.start:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int, desc: str, initial: int = 0, unit: str = "step", leave: bool = False,
             enabled: bool = True, every: float = 30.0):
    """The progress display of one stage: a tqdm bar when stderr is a terminal, else `_LogLines`."""
    if not enabled:
        from tqdm import tqdm
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, initial=initial, unit=unit, leave=leave)
    return _LogLines(total, desc, initial, every)
