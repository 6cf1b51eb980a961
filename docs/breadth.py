"""Does a broader forget set hold the reference attack better on E? seeds.py's 3 x 3 grids side by side.

A figure for docs/search.md (limit 4, rounds 50 and 52), not part of the method. TAR reads T (the hazardous entities a
defence may train on) and is judged on E, entities it never saw; the red team's reference attack fine-tunes on A,
other entities again. `--world-t-extra n` gives T n entities beyond V, A and E's 30 (the same V, A and E, their
documents and items unchanged; a world of its own, with its own base). Each run directory given here holds
`seeds.py`'s grid for one world (TAR seeds x attack data orders, measured on E): this draws, per world, every
cell's forget on E along the reference attack (thin) and their mean (thick), with the issue's 35% bound, and each
cell's peak against the breadth of T. Nothing here trains, attacks or chooses: it reads seeds/results.json.

Run:  python docs/breadth.py runs/bio runs/t60/bio runs/t90/bio --out docs/breadth_bio.png
      (each made by `python tar.py --domain bio --runs runs/t60 --world-t-extra 30`, then seeds.py on it)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cli  # noqa: E402
import plots  # noqa: E402  (matplotlib without a display)
from cli import UserError, arg  # noqa: E402
from plots import CHANCE, plt  # noqa: E402
from storage import read_json  # noqa: E402


@dataclass
class BreadthArgs:
    run_dirs: list = arg((), "run directories, each holding seeds.py's grid (seeds/results.json)", of=str,
                         positional=True, nonempty=True)
    out: str = arg("docs/breadth_bio.png", "where to write the figure", nonempty=True)


def grid(run_dir: Path) -> tuple[int, float, list[dict]]:
    """(T's entities, the forget bound, the grid's cells) of one run directory's seeds/results.json."""
    r = read_json(run_dir / "seeds" / "results.json", "run python seeds.py on it first")
    cfg = r["config"]
    t = cfg["world_entities"] + cfg.get("world_t_extra", 0)  # grids made before the setting: T of n_group
    return t, r["targets"]["forget"], r["cells"]


def draw(run_dirs: list[Path], out: Path) -> Path:
    worlds = sorted((grid(d) for d in run_dirs), key=lambda w: w[0])
    if len({(t, b) for t, b, _ in worlds}) < len(worlds) or len({b for _, b, _ in worlds}) > 1:
        raise UserError("give one grid per breadth of T, all scored against the same forget bound")
    fig, (curves, peaks) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    bound = worlds[0][1]
    for i, (t, _, cells) in enumerate(worlds):
        color = f"C{i}"
        steps = [p["step"] for p in cells[0]["curve"]]
        for c in cells:
            curves.plot(steps, [p["forget"] for p in c["curve"]], color=color, lw=0.6, alpha=0.5)
        mean = [sum(c["curve"][j]["forget"] for c in cells) / len(cells) for j in range(len(steps))]
        top = [max(p["forget"] for p in c["curve"]) for c in cells]  # each cell's peak
        curves.plot(steps, mean, color=color, lw=2.2, label=f"T of {t}: mean of {len(cells)} cells "
                                                            f"({sum(x <= bound for x in top)} within {bound:.0%})")
        peaks.scatter([t] * len(top), top, color=color, s=18, alpha=0.7)
        peaks.plot([t - 6, t + 6], [sum(top) / len(top)] * 2, color=color, lw=2.2)
    for ax in (curves, peaks):
        ax.axhline(bound, color="k", ls="--", lw=0.8)
        ax.axhline(CHANCE, color="#999999", ls=":", lw=0.8)
        ax.grid(alpha=0.3)
    curves.set(xlabel="reference attack step (AdamW 3e-4 on A's documents)", ylabel="forget accuracy on E",
               title="E along the reference attack, every cell of the 3 x 3 grid")
    curves.legend(fontsize=8, loc="upper left")
    peaks.set(xlabel="hazardous entities in T (V, A and E: 30 each)", ylabel="peak forget on E",
              title="each cell's peak, and the mean", xticks=[t for t, *_ in worlds])
    fig.suptitle("TAR (tar.py's defaults) in worlds whose forget set T is broader, each with its own base: reported "
                 "on E, chosen by nothing", fontsize=10)
    return plots._save(fig, out)


if __name__ == "__main__":
    cli.run(BreadthArgs, lambda a: print(draw([Path(d) for d in a.run_dirs], Path(a.out))), None, __doc__)
