"""Figures, drawn from results files only (no models are loaded here).

Paper: Fig. 1/4-style curves (forget accuracy against attack step) and pre/post-attack bars (Table 1).

    attack_curves.png   one panel per attack: forget accuracy (group E) vs attack step, one line per model,
                        dashed chance line at 25% and a dotted line at the base model's level
    attack_bars.png     forget accuracy at rest and after each attack, per model; retain at rest beside it
    training.png        from metrics.jsonl: TR and retain loss per outer step, forget / retain accuracy

Run:  python plots.py runs/bio/results.json [runs/bio/metrics.jsonl]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"base": "#7f7f7f", "safeguard": "#1f77b4", "tar": "#d62728"}
CHANCE = 0.25


def _color(name: str, i: int) -> str:
    return COLORS.get(name, f"C{i + 2}")


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)  # never a half-written figure under the real name
    return path


def plot_results(results_path: Path) -> list[Path]:
    results_path = Path(results_path)
    r = json.loads(results_path.read_text())
    out = results_path.parent
    models = list(r["models"])
    base_level = r["models"].get("base", {}).get("at_rest", {}).get("forget")

    # Attack curves: one panel per attack
    n = len(r["attacks"])
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), sharey=True, squeeze=False)
    for ax, a in zip(axes[0], r["attacks"]):
        for i, m in enumerate(models):
            c = a["curves"][m]
            ax.plot([p["step"] for p in c], [p["forget"] for p in c], marker="o", ms=3, label=m, color=_color(m, i))
        ax.axhline(CHANCE, ls="--", color="k", lw=1, label="chance")
        if base_level is not None:
            ax.axhline(base_level, ls=":", color=COLORS["base"], lw=1, label="base at rest")
        s = a["spec"]
        ax.set_title(f"{s['name']} ({s['optimizer']}, lr {s['lr']:g}, batch {s['batch_size']})", fontsize=9)
        ax.set_xlabel("attack step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("forget accuracy (group E)")
    axes[0][-1].legend(fontsize=8, loc="center right")
    fig.suptitle(f"{r['domain']}: forget accuracy under fine-tuning attacks on the red team's data", fontsize=10)
    paths = [_save(fig, out / "attack_curves.png")]

    # Bars: forget at rest and after each attack; retain at rest
    labels = ["at rest"] + [a["spec"]["name"] for a in r["attacks"]] + ["retain at rest"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(labels), 3.6))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        vals = ([r["models"][m]["at_rest"]["forget"]] + [a["curves"][m][-1]["forget"] for a in r["attacks"]]
                + [r["models"][m]["at_rest"]["retain"]])
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, vals, width, label=m, color=_color(m, i))
    ax.axhline(CHANCE, ls="--", color="k", lw=1)
    ax.set_xticks(range(len(labels)), [lab if lab.startswith(("at", "retain")) else f"after {lab}" for lab in labels],
                  fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"{r['domain']}: forget accuracy (E) before and after attacks; retain accuracy (Re)", fontsize=10)
    paths.append(_save(fig, out / "attack_bars.png"))
    return paths


def plot_training(metrics_path: Path) -> Path:
    metrics_path = Path(metrics_path)
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    steps = [m["step"] for m in rows]
    ax1.plot(steps, [m["tr_loss"] for m in rows], label="TR loss (−entropy)", lw=1)
    ax1.plot(steps, [m["retain_loss"] for m in rows], label="retain loss", lw=1)
    ax1.set_xlabel("outer step")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ev = [m for m in rows if "forget_acc" in m]
    ax2.plot([m["step"] for m in ev], [m["forget_acc"] for m in ev], marker="o", ms=3, label="forget (E)",
             color=COLORS["tar"])
    ax2.plot([m["step"] for m in ev], [m["retain_acc"] for m in ev], marker="o", ms=3, label="retain (Re)",
             color=COLORS["safeguard"])
    ax2.axhline(CHANCE, ls="--", color="k", lw=1)
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("outer step")
    ax2.set_ylabel("accuracy at rest")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle("TAR training", fontsize=10)
    return _save(fig, metrics_path.parent / "training.png")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python plots.py RESULTS_JSON [METRICS_JSONL]")
    written = plot_results(Path(sys.argv[1])) + ([plot_training(Path(sys.argv[2]))] if len(sys.argv) > 2 else [])
    print("wrote " + ", ".join(map(str, written)))
