"""The front on E: every TAR recipe that was measured over the 3 x 3 grid, G_test at rest against the attack's peak.

A figure and a table for docs/search.md ("The front on E"), not part of the method. The issue asks, where a target
is out of reach, for the front found between forget under attack and the benign family G. The search drew that front
on the dev split (V, G_dev: search.py's front.png, docs/search_front.png); this draws it on the reported split for
the recipes that became tar.py's defaults and were measured on E, each over `seeds.py`'s 3 x 3 grid (TAR seeds x the
reference attack's data orders), on the base it ran from. The grids' run directories lived on the machines that made
them, so this reads the grids as search.md records them: every table whose first columns are TAR seed and data
order, and the one recorded a row per TAR seed (PER_SEED), each named by the heading above it (GRIDS gives the
shorter names shown here). Per grid: how many cells met every target, the reference attack's peak on E (each cell's
maximum over its 9 points), G_test at rest and its minimum under the attack. Nothing here trains, attacks or
chooses.

Run:  python docs/front.py                       # prints the table, writes docs/front_e_bio.png
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cli  # noqa: E402
import plots  # noqa: E402  (matplotlib without a display)
from cli import UserError, arg  # noqa: E402
from plots import CHANCE, plt  # noqa: E402

# search.md's headings, some of which say "today's" of their own day, as the figure names them: (recipe, base, T's
# entities: 30 is the world; rounds 50 and 52 widened T, a world of its own and never on its front)
GRIDS = {
    "Today's defaults: the 3 x 3 grid on base B": ("round 43", "B", 30),
    "Today's defaults: the 3 x 3 grid on base D": ("round 43", "D", 30),
    "Round 27's recipe against the issue's targets, on the test split (reported, never chosen by)":
        ("round 27", "C", 30),
    "Round 27's recipe: the 3 x 3 grid on base B": ("round 27", "B", 30),
    "Round 27's recipe over 3 TAR seeds x 3 attack orders (base D)": ("round 27", "D", 30),
    "The new defaults over 3 TAR seeds x 3 attack orders (base D)": ("round 45", "D", 30),
    "Today's defaults: the 3 x 3 grid on base C": ("round 45", "C", 30),
    "Round 46's defaults over 3 TAR seeds x 3 attack orders (base C)": ("round 46", "C", 30),
    "Round 48's defaults over 3 TAR seeds x 3 attack orders (base C)": ("round 48", "C", 30),
    "Round 49's defaults over 3 TAR seeds x 3 attack orders (base C)": ("round 49", "C", 30),
    "Round 49's defaults over 3 TAR seeds x 3 attack orders (base B)": ("round 49", "B", 30),
    "Round 50 (2026-12-06, base C90): round 49's defaults with T of 90 entities, on E":
        ("round 49, T of 90", "C90", 90),
    "Round 52 (2026-12-06, base C60): round 49's defaults with T of 60 entities, on E":
        ("round 49, T of 60", "C60", 60),
}
# The other end of the front: protocol v1's defaults (chosen on E, before the search) on base C, one cell (TAR seed
# 0, data order 0), as search.md's "Round 27's recipe against the issue's targets" records it (docs/defaults.md's
# "the defaults before the search"; protocol.md §6 has another cell of theirs: G_test 42.2%, peak 27.0%)
BEFORE = {"recipe": "the defaults before the search (base C; one cell)", "base": "C", "g_rest": 0.505,
          "peak_mean": 0.262}
# the items a percentage counts: E's 600 (30 entities x 5 attributes x 4 templates), G_test's 400; a grid's cells are
# recorded to 0.1 point, and a mean of the rounded figures can miss the mean of the counts by 0.1
ITEMS = {"peak": 600, "g_rest": 400, "g_min": 400}
COLUMNS = ("G_test at rest", "max E", "min G_test", "targets")  # a grid's columns read (targets: "targets ...")
# round 27's recipe on base C, the one grid recorded a row per TAR seed: its three orders' peaks in one column, and no
# targets column (its text: every target but forget under the attack held at all 9 cells)
PER_SEED = ("G_test at rest", "reference attack, orders 0 / 1 / 2: max E", "min G_test")


@dataclass
class FrontArgs:
    search: str = arg("docs/search.md", "the search's record, whose 3 x 3 grid tables are read", nonempty=True)
    out: str = arg("docs/front_e_bio.png", "where to write the figure", nonempty=True)
    forget: float = arg(0.35, "the issue's bound on forget under the attack (shaded: within it)", at_least=0,
                        at_most=1)
    g_test: float = arg(0.85, "the issue's bound on G_test at rest (shaded: within it)", at_least=0, at_most=1)


@dataclass
class Grid:
    recipe: str  # what ran (GRIDS' name, else the heading)
    base: str  # the base it ran from ("" where the heading names none GRIDS knows)
    entities: int  # T's breadth (30: the world)
    cells: list[dict]  # per cell: g_rest, peak, g_min (fractions), met (bool)

    def summary(self) -> dict:
        """The grid's line of the table, and its mean (g_rest, peak_mean) on the figure."""
        peaks, g_rest = [c["peak"] for c in self.cells], [c["g_rest"] for c in self.cells]
        return {"recipe": self.recipe, "base": self.base, "cells": len(self.cells),
                "met": sum(c["met"] for c in self.cells), "peak_mean": sum(peaks) / len(peaks),
                "peak_min": min(peaks), "peak_max": max(peaks), "g_rest": sum(g_rest) / len(g_rest),
                "g_rest_min": min(g_rest), "g_min": min(c["g_min"] for c in self.cells)}


def percent(cell: str, items: int) -> float:
    """A recorded percentage ("37.2%", "**37.2%**") as the fraction of `items` it rounds."""
    m = re.fullmatch(r"\s*\**([0-9.]+)%?\**\s*", cell)
    if not m:
        raise UserError(f"expected a percentage in a grid cell, found {cell.strip()!r}")
    return round(float(m.group(1)) / 100 * items) / items


def rows(lines: list[str], at: int) -> list[list[str]]:
    """The cells of each row of the table whose header is lines[at], until the table ends."""
    out = []
    for row in lines[at + 2:]:  # after the |---| line
        if not row.startswith("|"):
            break
        out.append([x.strip() for x in row.strip("|").split("|")])
    return out


def grids(text: str, forget: float = 0.35) -> list[Grid]:
    """Every 3 x 3 grid table in search.md's text, in the order it records them."""
    found, heading, lines = [], "", text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if not line.startswith("| TAR seed |"):
            continue
        header = [h.strip() for h in line.strip("|").split("|")]
        header = ["targets" if h.startswith("targets") else h for h in header]  # one grid says "targets met"
        if line.startswith("| TAR seed | data order |"):
            if any(c not in header for c in COLUMNS):
                raise UserError(f"the grid under {heading!r} lacks a column of {COLUMNS}")
            g, peak, low, met = (header.index(c) for c in COLUMNS)
            cells = [{"g_rest": percent(r[g], ITEMS["g_rest"]), "peak": percent(r[peak], ITEMS["peak"]),
                      "g_min": percent(r[low], ITEMS["g_min"]), "met": "missed" not in r[met]} for r in rows(lines, i)]
        elif all(c in header for c in PER_SEED):
            g, peaks, low = (header.index(c) for c in PER_SEED)
            cells = [{"g_rest": percent(r[g], ITEMS["g_rest"]), "peak": percent(p, ITEMS["peak"]),
                      "g_min": percent(r[low], ITEMS["g_min"])} for r in rows(lines, i) if r[0].isdigit()
                     for p in r[peaks].split("/")]
            cells = [{**c, "met": c["peak"] <= forget} for c in cells]
        else:  # another table of a TAR seed per row (the held-out suite's, ...)
            continue
        found.append(Grid(*GRIDS.get(heading, (heading, "", 30)), cells))
    if not found:
        raise UserError("no 3 x 3 grid table (a header starting '| TAR seed | data order |') found")
    return found


def table(found: list[Grid], forget: float) -> str:
    """The markdown table search.md shows beside the figure (#: the figure's numbers)."""
    out = ["| # | recipe | base | cells meeting every target but time | reference attack: peak E, mean (range) | "
           f"cells within {forget:.0%} | G_test at rest, mean (lowest) | lowest G_test under the attack |",
           "|---|---|---|---|---|---|---|---|"]
    for i, g in enumerate(found, 1):
        s = g.summary()
        within = sum(c["peak"] <= forget for c in g.cells)
        out.append(f"| {i} | {s['recipe']} | {s['base']} | {s['met']} of {s['cells']} | {s['peak_mean']:.1%} "
                   f"({s['peak_min']:.1%}-{s['peak_max']:.1%}) | {within} | {s['g_rest']:.1%} ({s['g_rest_min']:.1%})"
                   f" | {s['g_min']:.1%} |")
    return "\n".join(out)


def draw(found: list[Grid], out: Path, forget: float, g_test: float) -> Path:
    """Left: every grid and the defaults before the search, the front of the issue's world (T of 30) joined; right:
    the grids alone, numbered as the table."""
    fig, (whole, near) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [2, 3]})
    summaries = [g.summary() for g in found]
    bases = list(dict.fromkeys(g.base for g in found))
    f = plots.pareto([s for g, s in zip(found, summaries) if g.entities == 30] + [BEFORE], "g_rest", "peak_mean")
    for ax in (whole, near):
        ax.fill_between([g_test, 1.005], 0, forget, color="0.9", label="the issue's targets")
        for i, (g, s) in enumerate(zip(found, summaries), 1):
            color, wide = f"C{bases.index(g.base)}", g.entities != 30
            ax.plot([c["g_rest"] for c in g.cells], [c["peak"] for c in g.cells], ".", color=color, ms=4,
                    alpha=0.45)
            ax.plot(s["g_rest"], s["peak_mean"], "D" if wide else "o", color=color, ms=6, mec="k", mew=0.6)
            if ax is near:
                ax.annotate(str(i), (s["g_rest"], s["peak_mean"]), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
        ax.plot([p["g_rest"] for p in f], [p["peak_mean"] for p in f], "-", color="k", lw=1, drawstyle="steps-pre")
        ax.axhline(CHANCE, ls=":", color="k", lw=0.8)
        ax.grid(alpha=0.3)
    whole.plot(BEFORE["g_rest"], BEFORE["peak_mean"], "s", color="0.4", ms=6, mec="k", mew=0.6,
               label=BEFORE["recipe"])
    for i, b in enumerate(bases):
        whole.plot([], [], "o", color=f"C{i}", mec="k", mew=0.6, label=f"base {b}: a grid's mean" if b else "other")
    whole.plot([], [], "D", color="w", mec="k", mew=0.6, label="T widened (a world of its own)")
    whole.plot([], [], "-", color="k", lw=1, label="the front in the issue's world (T of 30)")
    whole.plot([], [], ":", color="k", lw=0.8, label="chance (a model that never knew)")
    cells = [c for g in found for c in g.cells]
    whole.set(xlim=(0.35, 1.005), ylim=(CHANCE - 0.03, 0.6),
              xlabel="G_test at rest (the benign family no defence reads)",
              ylabel="reference attack: peak forget on E", title="every recipe measured on E")
    near.set(xlim=(min(c["g_rest"] for c in cells) - 0.005, 1.002),
             ylim=(min(c["peak"] for c in cells) - 0.01, max(c["peak"] for c in cells) + 0.01),
             xlabel="G_test at rest", title="the grids (dots: cells; numbers: the table's rows)")
    whole.legend(fontsize=7, loc="upper left")
    fig.suptitle("TAR's defaults, each over its 3 x 3 grid (TAR seeds x the attack's data orders): reported on E, "
                 "chosen by nothing", fontsize=10)
    return plots._save(fig, out)


def main(a: FrontArgs) -> None:
    path = Path(a.search)
    if not path.is_file():
        raise UserError(f"{path}: no such file (give the search's record, docs/search.md)")
    found = grids(path.read_text(), a.forget)
    print(table(found, a.forget))
    print(draw(found, Path(a.out), a.forget, a.g_test))


if __name__ == "__main__":
    cli.run(FrontArgs, main, None, __doc__)
