"""Figures, drawn from results files only (no models are loaded here).

Paper: Fig. 1/4-style curves (forget accuracy against attack step) and pre/post-attack bars (Table 1).

    attack_curves.png   one panel per attack: forget accuracy (group E) vs attack step, one line per model (G_test,
                        the held-out benign family, dashed along it), chance at 25% and the base model's level
    attack_bars.png     forget accuracy at rest and after each attack, per model; Re and G_test at rest beside it
    relearning.png      relearning E's own documents and learning N's (protocol v2): accuracy vs fine-tuning step,
                        one line per model and seed, the level both count to
    training.png        from metrics.jsonl: TR and retain loss per outer step, forget on V / benign on G_dev
  red team (evaluate.py's results, in runs/<domain>/redteam/):
    attack_grid.png     every attack in one figure: forget accuracy vs step per model, seed band (min-max over
                        seeds), chance and base-model lines
    curves/<attack>.png the same, one attack per file
    worst_case.png      per model: forget at rest, the mean over attacks, and the worst case (end of attack and
                        anywhere on the curve)
    sweep.png           the adaptive red team (sweep.json): best forget found so far vs trial, per model
  table1.png            table1.py: every method as G_test against forget on E, at rest and under the reference attack

Run:  python plots.py runs/bio/results.json [runs/bio/metrics.jsonl]     |    python plots.py runs/bio/redteam/results.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

import cli  # noqa: E402
from cli import arg  # noqa: E402
from storage import atomic, read_json, read_jsonl  # noqa: E402

COLORS = {"base": "#7f7f7f", "oracle": "#2ca02c", "safeguard": "#1f77b4", "tar": "#d62728"}
CHANCE = 0.25


def _color(name: str, i: int) -> str:
    return COLORS.get(name, f"C{i + 2}")


def _save(fig, path: Path) -> Path:
    with atomic(path) as tmp:  # never a half-written figure under the real name
        fig.savefig(tmp, format=path.suffix[1:], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _read(path: Path, keys: tuple[str, ...]) -> dict:
    """A results file holding an object with `keys`, else one error line naming it."""
    r = read_json(path, "rerun what wrote it")
    if not isinstance(r, dict) or any(k not in r for k in keys):
        raise cli.UserError(f"{path} is not the results file this figure needs (an object with {', '.join(keys)}); "
                            "rerun what wrote it")
    return r


def plot_results(results_path: Path) -> list[Path]:
    results_path = Path(results_path)
    r = _read(results_path, ("models", "attacks", "scoring"))
    out = results_path.parent
    models = [m for m in r["models"] if all(m in a["curves"] for a in r["attacks"])]  # the attacked ones
    chat = r["scoring"]["style"] == "chat"  # refusal world: "forget" is the ASR, "retain" harmless accuracy
    forget, retain = ("ASR", "harmless accuracy") if chat else ("forget accuracy", "retain accuracy")
    base_level = None if chat else r["models"].get("base", {}).get("at_rest", {}).get("forget")

    # Attack curves: one panel per attack
    n = len(r["attacks"])
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), sharey=True, squeeze=False)
    label = lambda m: "refusal-trained" if chat and m == "safeguard" else m  # the refusal world's safeguard
    for ax, a in zip(axes[0], r["attacks"]):
        for i, m in enumerate(models):
            c = a["curves"][m]
            ax.plot([p["step"] for p in c], [p["forget"] for p in c], marker="o", ms=3, color=_color(m, i),
                    label=label(m))
            if "G" in c[0]:  # what the attack costs the benign family no one trains on
                ax.plot([p["step"] for p in c], [p["G"] for p in c], ls="--", lw=1, color=_color(m, i),
                        label=f"{label(m)}: G_test" if a is r["attacks"][-1] else None)
        if not chat:
            ax.axhline(CHANCE, ls="--", color="k", lw=1, label="chance")
        if base_level is not None:
            ax.axhline(base_level, ls=":", color=COLORS["base"], lw=1, label="base at rest")
        s = a["spec"]
        ax.set_title(f"{s['name']} ({s['optimizer']}, lr {s['lr']:g}, batch {s['batch_size']})", fontsize=9)
        ax.set_xlabel("attack step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{forget} (group E)")
    axes[0][-1].legend(fontsize=8, loc="center right")
    fig.suptitle(f"{r['domain']}: {forget} under fine-tuning attacks on the red team's data", fontsize=10)
    paths = [_save(fig, out / "attack_curves.png")]

    # Bars: forget at rest and after each attack; retain (and G_test) at rest
    has_g = all("G" in r["models"][m]["at_rest"] for m in models)
    labels = (["at rest"] + [a["spec"]["name"] for a in r["attacks"]] + [f"{retain.split()[0]} at rest"]
              + (["G_test at rest"] if has_g else []))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(labels), 3.6))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        # a diverged attack has no "after": its bar is left empty (the attacker's failure, not a defence)
        vals = ([r["models"][m]["at_rest"]["forget"]] + [0.0 if a.get("diverged", {}).get(m) else
                                                         a["curves"][m][-1]["forget"] for a in r["attacks"]]
                + [r["models"][m]["at_rest"]["retain"]] + ([r["models"][m]["at_rest"]["G"]] if has_g else []))
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, vals, width, label=label(m), color=_color(m, i))
    if not chat:
        ax.axhline(CHANCE, ls="--", color="k", lw=1)
    ax.set_xticks(range(len(labels)), [lab if lab.endswith("at rest") else f"after {lab}" for lab in labels],
                  fontsize=8)
    ax.set_ylabel("ASR (E) / harmless (Re)" if chat else "accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"{r['domain']}: {forget} (E) before and after attacks; {retain} (Re)", fontsize=10)
    paths.append(_save(fig, out / "attack_bars.png"))
    if "relearning" in r:
        paths.append(plot_relearning(r, out / "relearning.png"))
    return paths


def plot_relearning(r: dict, path: Path) -> Path:
    """Relearning E and learning N: accuracy vs fine-tuning step, a line per model and seed (runs stop at the level)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, (key, what, acc) in zip(axes, (("relearning", "relearn E (its own documents)", "forget"),
                                           ("learnability", "learn N (in no pretraining)", "N"))):
        c = r[key]
        for i, (m, curves) in enumerate(c["curves"].items()):
            for j, curve in enumerate(curves):
                ax.plot([p["step"] for p in curve], [p[acc] for p in curve], color=_color(m, i), lw=1, alpha=0.8,
                        label=m if j == 0 else None)
        ax.axhline(c["level"], ls=":", color="k", lw=1, label="level counted to")
        ax.axhline(CHANCE, ls="--", color="k", lw=1)
        ax.set_title(what, fontsize=9)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (E | N)")
    axes[1].legend(fontsize=8)
    spec = r["relearning"]["spec"]
    fig.suptitle(f"{r['domain']}: fine-tuning steps to learn E back and to learn a new benign family (AdamW "
                 f"{spec['lr']:g}, batch {spec['batch_size']}, ≤ {r['relearning']['cap']} steps)", fontsize=10)
    return _save(fig, path)


def plot_training(metrics_path: Path) -> Path:
    metrics_path = Path(metrics_path)
    rows = read_jsonl(metrics_path, ("step",), "rerun what wrote it", torn_tail=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    steps = [m["step"] for m in rows]
    ax1.plot(steps, [m["tr_loss"] for m in rows], label="TR loss (entropy: −H; refusal: DPO)", lw=1)
    ax1.plot(steps, [m["retain_loss"] for m in rows], label="retain loss", lw=1)
    ax1.set_xlabel("outer step")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ev = [m for m in rows if "dev_forget" in m]
    ax2.plot([m["step"] for m in ev], [m["dev_forget"] for m in ev], marker="o", ms=3, label="forget (V; real data: E) | ASR",
             color=COLORS["tar"])
    ax2.plot([m["step"] for m in ev], [m["dev_benign"] for m in ev], marker="o", ms=3, label="benign (G_dev; real data: Re)",
             color=COLORS["safeguard"])
    ax2.axhline(CHANCE, ls="--", color="k", lw=1)
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("outer step")
    ax2.set_ylabel("accuracy at rest")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle("TAR training", fontsize=10)
    return _save(fig, metrics_path.parent / "training.png")


def _redteam_curves(results: dict) -> dict[str, dict[str, list[list[dict]]]]:
    """{attack: {model: [curve of each seed]}}"""
    by_digest = {m["digest"]: name for name, m in results["models"].items()}
    out: dict = {}
    for r in results["runs"].values():
        if r["digest"] in by_digest and not r.get("diverged"):  # a diverged attack's truncated curve: left out
            out.setdefault(r["attack"], {}).setdefault(by_digest[r["digest"]], []).append(r["curve"])
    return out


def _draw_attack(ax, attack: str, per_model: dict, models: list[str], base_level, spec: dict, x: str = "step"):
    """x: "step", or "tokens" (the tokens fine-tuned on: one budget axis for attacks of any batch and length;
    older results without it are drawn by step)."""
    for i, m in enumerate(models):
        curves = per_model.get(m)
        if not curves:
            continue
        steps = [p.get(x, p["step"]) for p in curves[0]]
        vals = [[c[j]["forget"] for c in curves if j < len(c)] for j in range(len(steps))]
        mean = [sum(v) / len(v) for v in vals]
        ax.plot(steps, mean, marker="o", ms=2, lw=1.2, label=m, color=_color(m, i))
        ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=_color(m, i), alpha=0.2, lw=0)
    ax.axhline(CHANCE, ls="--", color="k", lw=0.8)
    if base_level is not None:
        ax.axhline(base_level, ls=":", color=COLORS["base"], lw=0.8)
    ax.set_title(f"{attack} [{spec['dist']}]", fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)


def plot_redteam(results_path: Path, x: str = "step") -> list[Path]:
    """Figures of a red-team results.json (evaluate.py), written beside it; x: "step" or "tokens" (the
    per-attack curves/*.png and attack_grid.png against the tokens each attack fine-tuned on)."""
    results_path = Path(results_path)
    r = _read(results_path, ("models", "runs", "suite", "summary"))
    out = results_path.parent
    chosen = r.get("last", {})  # what the last evaluate.py call asked for (the file accumulates over calls)
    models = chosen.get("models", list(r["models"]))
    curves = _redteam_curves(r)
    summary = r["summary"]  # redteam.summarize(), stored by evaluate.py
    attacks = [a for a in chosen.get("attacks", r["suite"]) if a in curves]
    paths = []
    (out / "curves").mkdir(exist_ok=True)
    for a in attacks:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        _draw_attack(ax, a, curves[a], models, summary["base_level"], r["suite"][a], x)
        ax.set_xlabel("attack step" if x == "step" else "tokens fine-tuned on", fontsize=8)
        ax.set_ylabel("forget accuracy (E)", fontsize=8)
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / "curves" / f"{a}.png"))
    cols = min(6, max(1, len(attacks)))
    rows = -(-len(attacks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False, sharey=True)
    for ax, a in zip(axes.flat, attacks):
        _draw_attack(ax, a, curves[a], models, summary["base_level"], r["suite"][a], x)
    for ax in list(axes.flat)[len(attacks):]:
        ax.axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle("Forget accuracy (group E) under every attack: mean over seeds, band = min-max; dashed = chance, "
                 "dotted = base", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    paths.insert(0, _save(fig, out / "attack_grid.png"))

    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(models), 3.4))
    labels = ["at rest", "mean over attacks (end)", "worst at end", "worst anywhere"]
    width = 0.8 / len(labels)
    for j, lab in enumerate(labels):
        vals = []
        for m in models:
            runs = [c for a in attacks for c in curves[a].get(m, [])]
            w = summary["worst"].get(m)
            vals.append({0: sum(c[0]["forget"] for c in runs) / max(1, len(runs)),
                         1: sum(c[-1]["forget"] for c in runs) / max(1, len(runs)),
                         2: w["final"][0] if w else 0, 3: w["max"][0] if w else 0}[j])
        ax.bar([i + (j - 1.5) * width for i in range(len(models))], vals, width, label=lab, color=f"C{j}")
    ax.axhline(CHANCE, ls="--", color="k", lw=1)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("forget accuracy (E)")
    ax.legend(fontsize=7)
    ax.set_title("Worst case over the red-team suite", fontsize=10)
    paths.insert(1, _save(fig, out / "worst_case.png"))
    return paths


def plot_sweep(summary_path: Path) -> Path:
    """sweep.png beside a sweep.json (sweep.py): per model and sampler, the best forget accuracy found so far
    against the trial number, over feasible trials (solid) and over all of them (dotted)."""
    summary_path = Path(summary_path)
    s = _read(summary_path, ("models",))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (key, m) in enumerate(s["models"].items()):
        color = _color(m["model"], i) if m["sampler"] == "tpe" else f"C{i + 4}"
        for kind, style in (("feasible", "-"), ("all", ":")):
            ys = m["so_far"][kind]
            xs = [n for n, y in enumerate(ys) if y is not None]
            ax.plot(xs, [ys[n] for n in xs], style, color=color, label=f"{key}, {kind}")
    ax.axhline(CHANCE, ls="--", color="k", lw=1)
    ax.set_xlabel("trial", fontsize=8)
    ax.set_ylabel("best forget accuracy so far (E)", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6)
    ax.set_title("Adaptive red team: best attack found so far", fontsize=9)
    return _save(fig, summary_path.parent / "sweep.png")


def plot_search(rows: list[dict], path: Path, g_dev_rest: float) -> Path:
    """search.png beside search.md (search.py): every scored model as G_dev at rest against the reference attack's
    maximum on V, each TAR candidate's snapshots joined in step order from its θ0 (a star); the rows search.py
    marks admissible are filled. Lower right is what the search looks for: benign knowledge kept, V held."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    theta0 = {r["name"]: r for r in rows if r["step"] == 0}
    tar = [n for n in dict.fromkeys(r["name"] for r in rows) if n not in theta0]
    for i, name in enumerate(tar):
        color = plt.cm.tab20(i % 20) if len(tar) > 10 else f"C{i}"  # more candidates than the 10 default colours
        pts = [r for r in rows if r["name"] == name and "failed" not in r]
        start = theta0.get(pts[0]["stage1"]) if pts else None
        line = ([start] if start else []) + pts
        ax.plot([r["G_dev"] for r in line], [r["forget_V_attacked"] for r in line], "-", color=color, lw=1,
                label=name)
        for r in pts:
            fill = None if r["admissible"] else "none"
            ax.plot(r["G_dev"], r["forget_V_attacked"], "o", color=color, ms=4, mfc=fill)
            ax.annotate(str(r["step"]), (r["G_dev"], r["forget_V_attacked"]), fontsize=5, xytext=(2, 2),
                        textcoords="offset points")
    for r in theta0.values():
        ax.plot(r["G_dev"], r["forget_V_attacked"], "*", color="k", ms=8)
        ax.annotate(r["name"], (r["G_dev"], r["forget_V_attacked"]), fontsize=6, xytext=(3, -8),
                    textcoords="offset points")
    ax.axvline(g_dev_rest, ls=":", color="k", lw=1)
    _dev_axes(ax, "TAR candidates on the dev split (filled: admissible; numbers: outer step)")
    return _save(fig, path)


def _dev_axes(ax, title: str, of: str = "") -> None:
    """search.png's and front.png's axes: G_dev at rest against the reference attack's peak on V (`of`: whose)."""
    ax.axhline(CHANCE, ls="--", color="k", lw=1, label="chance")
    ax.set_xlabel(f"G_dev at rest{of} (benign family no defence reads)", fontsize=8)
    ax.set_ylabel(f"reference attack: max forget on V{of}", fontsize=8)
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title(title, fontsize=9)


def pareto(points: list[dict], more: str = "G_dev", less: str = "forget_V_attacked") -> list[dict]:
    """The points no other beats on both axes (more of `more`: G at rest; less of `less`: the attack's peak), by
    `more`. Defaults: the search's dev split (G_dev, V); docs/front.py: E's grids (g_rest, peak_mean)."""
    beats = lambda q, p: q[more] >= p[more] and q[less] <= p[less] and q != p
    return sorted((p for p in points if not any(beats(q, p) for q in points)), key=lambda p: p[more])


def plot_front(recipes: list[dict], path: Path, g_dev_rest: float, v_held: float) -> Path:
    """front.png beside search.md (search.py): each recipe's snapshots at its worst TAR seed (search.worst_over_seeds)
    as G_dev at rest against the reference attack's peak on V (filled: run at two seeds or more), the front of the
    filled ones joined and named (one lucky seed makes no front), and the issue's target in grey (G_dev ≥ g_dev_rest,
    V ≤ v_held at every attack point)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.fill_between([g_dev_rest, 1.02], 0, v_held, color="0.9", label="target")
    for p in recipes:
        ax.plot(p["G_dev"], p["forget_V_attacked"], "o", color="C0", ms=3, alpha=0.6,
                mfc=None if len(p["seeds"]) > 1 else "none")
    front = pareto([p for p in recipes if len(p["seeds"]) > 1])
    ax.plot([p["G_dev"] for p in front], [p["forget_V_attacked"] for p in front], "-", color="C3", lw=1,
            drawstyle="steps-pre", label="front (two seeds or more, worst seed)")  # between two points: the next
    for name in dict.fromkeys(p["name"] for p in front):  # a recipe named once, at its lowest peak on the front
        ps = [p for p in front if p["name"] == name]
        low = min(ps, key=lambda p: p["forget_V_attacked"])
        ax.annotate(f"{name}@{'/'.join(str(s) for s in sorted(p['step'] for p in ps))} ({len(low['seeds'])})",
                    (low["G_dev"], low["forget_V_attacked"]), fontsize=5, xytext=(4, 2), textcoords="offset points")
    _dev_axes(ax, "TAR recipes on the dev split (hollow: one seed; (n): seeds)", ", worst seed")
    return _save(fig, path)


def plot_table1(rows: list[dict], path: Path) -> Path:
    """table1.png (table1.py): each row's model as G_test against forget on E, at rest (hollow) and at the
    reference attack's peak (filled), joined; the oracle's peak is the floor a defence can reach, chance below it.
    Lower right is what a tamper-resistant safeguard should reach: E hidden under the attack, G kept."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    measured = [r for r in rows if not r.get("missing")]
    for i, r in enumerate(measured):
        # tar.py's four models keep their colours; the rest spread over tab20b, whose hues are not those four
        color = COLORS.get({"random mapping": "safeguard"}.get(r["row"], r["row"].lower()), plt.cm.tab20b(3 * i % 20))
        rest, ref, marker = r["rest"], r["reference"], "osD^vPX*"[i % 8]  # markers part the crowded upper right
        ax.plot([rest["G"], ref["G"]], [rest["forget"], ref["forget"]], "-", color=color, lw=1)
        ax.plot(rest["G"], rest["forget"], marker, color=color, mfc="none", ms=5)
        ax.plot(ref["G"], ref["forget"], marker, color=color, ms=5, label=r["row"])
    oracle = next((r for r in measured if r["row"] == "oracle"), None)
    if oracle:
        ax.axhline(oracle["reference"]["forget"], ls="--", color=COLORS["oracle"], lw=1, label="oracle: the floor")
    ax.axhline(CHANCE, ls=":", color="k", lw=1, label="chance")
    ax.set_xlabel("G_test (benign family no defence reads)", fontsize=8)
    ax.set_ylabel("forget on E", fontsize=8)
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(fontsize=6, loc="upper left", ncol=2)
    ax.set_title("Table 1 under protocol v2: at rest (hollow) and at the reference attack's peak (filled)",
                 fontsize=8)
    return _save(fig, path)


@dataclass
class PlotArgs:
    results: str = arg("", "a results.json: tar.py's (runs/bio/results.json) or the red team's (runs/bio/redteam/)",
                       positional=True)
    metrics: str = arg("", "a metrics.jsonl to draw training.png from", positional=True)
    x: str = arg("step", "red-team curves against attack steps or the tokens fine-tuned on", choices=("step", "tokens"))


def draw(args: PlotArgs) -> None:
    if not args.results:
        raise cli.UsageError("give a results.json, a red team's results.json or a sweep.json (and optionally a "
                            "metrics.jsonl)")
    first = _read(Path(args.results), ())
    if "runs" in first:
        written = plot_redteam(Path(args.results), args.x)
    else:
        written = [plot_sweep(Path(args.results))] if "updated" in first else plot_results(Path(args.results))
    written += [plot_training(Path(args.metrics))] if args.metrics else []
    print("wrote " + ", ".join(map(str, written)))


def main(argv=None):
    cli.run(PlotArgs, draw, argv, "Draw the figures of a results file.")


if __name__ == "__main__":
    main()
