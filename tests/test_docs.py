"""The repository reads on its own: no reference to files that do not ship with it, one concept per module
within its line budget, docs/deviations.md generated from the code's markers, Alg. 1 citations that exist in
docs/paper.md, and links that resolve."""

import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import deviations  # noqa: E402  (docs/deviations.py)

MODULES = sorted(ROOT.glob("*.py"))
TEXT = MODULES + sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")) + \
    sorted((ROOT / "docs").glob("*.py")) + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
# the design notes this repo was written from, which do not ship with it (spelled so this file does not match)
OUTSIDE = ["../" + "shared"] + [name + ".md" for name in ("PAPER", "DATA", "ATTACKS", "BASELINES", "DESIGN",
                                                           "STYLE", "PROTOCOL")]


def test_no_reference_outside_the_repository():
    bad = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:80]}" for p in TEXT
           for n, line in enumerate(p.read_text().splitlines(), 1)
           if any(re.search(rf"(?<![\w/]){re.escape(o)}", line) for o in OUTSIDE)]
    assert not bad, "\n".join(bad)


def test_modules_and_readme_within_their_budgets():
    long = {p.name: n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_deviations_doc_is_generated_from_the_markers():
    found = deviations.markers()
    assert len(found) >= 15
    assert all(" because " in m["text"] for m in found), [m for m in found if " because " not in m["text"]]
    assert (ROOT / "docs" / "deviations.md").read_text() == deviations.render(found), \
        "docs/deviations.md is stale: run python docs/deviations.py"


def test_deviation_markers_are_collected_with_their_continuation(tmp_path):
    (tmp_path / "m.py").write_text('def f():\n    x = 1\n    # deviation: A (paper: B) because C\n    # and D.\n'
                                   '    y = 2  # not part of it\n    # a later comment\n')
    assert deviations.markers(tmp_path) == [{"file": "m.py", "where": "f", "text": "A (paper: B) because C and D."}]


def test_alg1_citations_name_lines_of_the_listing():
    listing = (ROOT / "docs" / "paper.md").read_text()
    numbers = {int(n) for n in re.findall(r"^\s*(\d+)\s+\S", listing[listing.index("```"):], re.M) if int(n) <= 20}
    assert set(range(1, 13)) <= numbers, "docs/paper.md must hold Alg. 1 numbered 1..12"
    cited = set()
    for p in MODULES:
        for a, b in re.findall(r"Alg\. 1 l\.(\d+)(?:-(\d+))?", p.read_text()):
            cited.update(range(int(a), int(b or a) + 1))
    assert cited and cited <= set(range(1, 13)), sorted(cited)
    body = (ROOT / "tar.py").read_text().split("def outer_step(", 1)[1].split("\ndef ", 1)[0]
    order = [int(n) for n in re.findall(r"# l\.(\d+)", body)]
    assert order == sorted(order) and set(order) >= {3, 4, 5, 6, 9, 10, 11, 12}, order  # the paper's order


@pytest.mark.parametrize("doc", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
    missing = [link for link in links if "://" not in link and not (doc.parent / link).exists()]
    assert not missing, missing


def headings(doc: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, every character but letters, digits, _,
    - and spaces dropped, spaces to hyphens (nothing collapsed); a repeated heading gets -1, -2, ..."""
    seen, out = {}, set()
    for title in re.findall(r"^#+\s+(.*)$", doc.read_text(), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("doc", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_anchors_name_a_heading(doc):
    """Every link to a section (file.md#anchor, or #anchor in the same file) names one of its headings."""
    links = re.findall(r"\]\(([^)#\s]*\.md|)#([^)\s]+)\)", doc.read_text())
    anchors = {target: headings(doc.parent / target if target else doc) for target, _ in links}  # each file once
    broken = [f"{target}#{anchor}" for target, anchor in links if anchor not in anchors[target]]
    assert not broken, broken


def test_fact_entropy_reads_the_three_states():
    """docs/fact_entropy.py (search round 15's diagnostic): a model that knows (one-hot on the value), the paper's
    TR state (uniform over the vocabulary) and the oracle's (uniform over the values), read at two fact positions."""
    import torch
    from types import SimpleNamespace
    from batching import Tokens
    import fact_entropy
    ids = torch.tensor([[1, 5, 7, 6, 8]])  # facts: 7 and 8 follow positions 1 and 3
    tokens = Tokens(ids, torch.ones_like(ids, dtype=torch.bool), torch.zeros_like(ids, dtype=torch.bool))
    values, hazardous = torch.tensor([7, 8, 9]), torch.tensor([2, 3])

    def model(logits):
        return lambda input_ids, attention_mask: SimpleNamespace(logits=logits)
    knows = torch.full((1, 5, 10), -1e4)
    knows[0, torch.arange(4), ids[0, 1:]] = 0.0
    uniform_values = torch.full((1, 5, 10), -1e4)
    uniform_values[..., values] = 0.0
    read = lambda lg: fact_entropy.fact_entropy(model(lg), tokens, values, hazardous)
    assert read(knows) == pytest.approx({"entropy": 0, "on values": 1, "among them": 0, "hazardous": 0}, abs=1e-4)
    assert read(torch.zeros(1, 5, 10)) == pytest.approx(
        {"entropy": math.log(10), "on values": 0.3, "among them": math.log(3), "hazardous": 0.2}, abs=1e-4)
    assert read(uniform_values) == pytest.approx(
        {"entropy": math.log(3), "on values": 1, "among them": math.log(3), "hazardous": 0}, abs=1e-4)


@pytest.mark.parametrize("group", ["embedding, LM head", "MLPs"])
def test_relearned_through_moves_only_its_group(small_world, group):
    """docs/relearned_through.py (search round 25's diagnostic): the attack moves exactly the group's weights, and
    reads V and G_dev at step 0 and every 25 steps."""
    import dataclasses
    import torch
    from conftest import tiny_model
    import protocol
    import relearned_through as rt
    model = tiny_model(vocab_size=len(small_world.tokenizer))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    points = rt.attack_only(model, small_world, rt.GROUPS[group], dataclasses.replace(protocol.REFERENCE, steps=50,
                                                                                       batch_size=4))
    assert len(points) == 3 and set(points[0]) == {"forget", "G"}
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved == {n for n in before if rt.GROUPS[group](n)}


def test_entity_transfer_halves_A_by_entity_and_grafts_one_part():
    """docs/entity_transfer.py (search round 33's diagnostic): A's halves are half of its entities each, together
    all of A; a graft holds the trained model's tensors of one part and θ0's elsewhere."""
    import torch
    from conftest import tiny_model
    import entity_transfer as et
    from world import WorldConfig, build_world
    w = build_world(WorldConfig(domain="bio", n_group=6, n_retain_train=6, n_retain_heldout=4, n_unrelated=4,
                                n_general=4, n_new=4, docs_per_entity=4))
    halves = [et.attack_on(w, d) for d in ("A[:half]", "A[half:]")]
    assert [s.data for _, s in halves] == ["A[:half]", "A[half:]"]
    rows = [wd.tokens[s.data].ids for wd, s in halves]
    assert [len(r) for r in rows] == [12, 12] and torch.equal(torch.cat(rows), w.tokens["A"].ids)
    assert et.attack_on(w, "T_inner")[1].data == "T_inner"
    theta0, trained = tiny_model(vocab_size=len(w.tokenizer)), tiny_model(vocab_size=len(w.tokenizer), seed=1)
    graft, before = et.with_part(theta0, trained, et.PARTS["word rows"]), dict(theta0.named_parameters())
    moved = {n for n, p in graft.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n in before if "embed_tokens" in n or "lm_head" in n}
    assert all(torch.equal(p, dict(trained.named_parameters())[n]) for n, p in graft.named_parameters() if n in moved)


def test_iterates_parses_windows_and_averages_what_each_iterate_moved():
    """docs/iterates.py (search round 47's diagnostic): 'b' is the snapshot, 'a-b' the uniform average of steps
    a..b; a tensor an iterate did not move off θ0 enters the average as θ0's; the spread over entities is the
    standard error clustered by entity."""
    import torch
    import iterates as it
    from cli import UserError
    assert it.window("75") == (75, 75) and it.window("51-100") == (51, 100)
    for bad in ("x", "0", "9-3", "1-"):
        with pytest.raises(UserError, match="--windows"):
            it.window(bad)
    theta0 = {"a": torch.zeros(2), "b": torch.ones(2)}
    states = [{"a": torch.tensor([2.0, 4.0])}, {"a": torch.tensor([4.0, 0.0]), "b": torch.tensor([3.0, 3.0])}]
    avg = it.averaged(states, theta0)
    assert torch.equal(avg["a"], torch.tensor([3.0, 2.0])) and torch.equal(avg["b"], torch.tensor([2.0, 2.0]))
    items = [{"fact_id": f"{e}/{r}"} for e in ("a", "b", "c") for r in ("x", "y")]
    assert it.entity_se([True, False] * 3, items) == 0.0  # every entity alike: no spread
    # entities a and b all right, c all wrong: p = 2/3, SE² = 3/2 · ((2 − 4/3)² · 2 + (4/3)²) / 6² = 1/9
    assert abs(it.entity_se([True] * 4 + [False] * 2, items) - 1 / 3) < 1e-9


def test_diagnostics_read_the_world_their_models_were_made_in(tmp_path):
    """The docs/ diagnostics take the world from the models' provenance.json (a model of a --world-t-extra world
    gets that world); models of two worlds (θ0 included), or with no provenance, are one error line;
    entity_transfer.py draws one panel per model."""
    from dataclasses import asdict
    from conftest import tiny_model
    import entity_transfer as et
    import relearned_through as rt
    from cli import UserError
    from storage import save_model
    from world import build_world, world_config
    made = {}
    for name, cfg in {"wide": world_config("bio", 4, t_extra=2), "plain": world_config("bio", 4)}.items():
        w = build_world(cfg)
        save_model(tiny_model(vocab_size=len(w.tokenizer)), w.tokenizer, tmp_path / name, {"world": asdict(cfg)})
        made[name] = w
    wide, plain = str(tmp_path / "wide"), str(tmp_path / "plain")
    args = rt.parse_models([wide, "--theta0", plain], rt.__doc__, {"theta0": "θ0"})
    assert args.models == [wide] and args.theta0 == plain
    assert rt.models_world(wide, "") is made["wide"] and len(made["wide"].entities["T"]) == 6
    for given in ([wide, plain], [wide, args.theta0]):
        with pytest.raises(UserError, match="different worlds"):
            rt.models_world(*given)
    before = {k: v for k, v in asdict(world_config("bio", 4)).items() if k != "t_extra"}  # saved before the setting
    save_model(tiny_model(vocab_size=len(made["plain"].tokenizer)), made["plain"].tokenizer, tmp_path / "old",
               {"world": before})
    assert rt.models_world(plain, str(tmp_path / "old")) is made["plain"]
    (tmp_path / "bare").mkdir()
    with pytest.raises(UserError, match="provenance"):
        rt.models_world(str(tmp_path / "bare"))
    et.plot({m: {d: [0.2, 0.3, 0.4] for d in et.DATA} for m in ("a", "b")}, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_breadth_draws_one_grid_per_breadth_of_T(tmp_path):
    """docs/breadth.py (search rounds 50 and 52's figure): seeds.py grids of worlds with another T, sorted by T's
    breadth (a grid saved before --world-t-extra counts as T of n_group); two grids of one breadth are one error."""
    import json
    import breadth
    from cli import UserError
    curve = [{"step": s, "forget": f} for s, f in ((0, 0.23), (100, 0.3), (200, 0.36))]
    for name, cfg in {"t90": {"world_entities": 30, "world_t_extra": 60}, "t30": {"world_entities": 30},
                      "again": {"world_entities": 30, "world_t_extra": 0}}.items():
        (tmp_path / name / "seeds").mkdir(parents=True)
        (tmp_path / name / "seeds" / "results.json").write_text(json.dumps(
            {"config": cfg, "targets": {"forget": 0.35}, "cells": [{"curve": curve}] * 3}))
    assert breadth.grid(tmp_path / "t30")[:2] == (30, 0.35) and breadth.grid(tmp_path / "t90")[0] == 90
    out = breadth.draw([tmp_path / "t90", tmp_path / "t30"], tmp_path / "b.png")
    assert out.stat().st_size > 10_000
    with pytest.raises(UserError, match="one grid per breadth"):
        breadth.draw([tmp_path / "t30", tmp_path / "again"], tmp_path / "c.png")


def test_front_reads_every_grid_search_md_records(tmp_path):
    """docs/front.py (the front on E): each 3 x 3 grid table under its heading, its cells' peaks, G_test and targets
    read by column name (one grid says "targets met"; one records a row per TAR seed, its orders' peaks in one
    column), each percentage taken back to the item count it rounds; the table in search.md is the script's output."""
    import front
    import plots
    from cli import UserError
    head = ("| TAR seed | data order | E at rest | G_test at rest | max E | min G_test | {} |\n"
            "|---|---|---|---|---|---|---|\n")
    row = "| 0 | {} | 23.0% | {}% | {}% | {}% | {} |\n"
    per_seed = ("| TAR seed | E at rest | G_test at rest | reference attack, orders 0 / 1 / 2: max E | min G_test |\n"
                "|---|---|---|---|---|\n| 0 | 23.7% | 97.0% | 37.0 / 34.2 / 37.8% | 94.5% |\n"
                "| the oracle | 24.0% | | | |\n")
    text = ("## Round 52 (2026-12-06, base C60): round 49's defaults with T of 60 entities, on E\n\n" +
            head.format("targets") + row.format(0, 95.0, 30.0, 91.0, "**met**") +
            row.format(1, 93.0, 34.2, 90.0, "missed: learning N") + "\ntext\n### A grid of its own\n" +
            head.format("targets met") + row.format(0, 97.0, 40.0, 96.0, "missed: E under attack") +
            "\n## Per seed\n" + per_seed + "\n| TAR seed | held |\n|---|---|\n| 0 | 60% |\n")
    first, second, third = front.grids(text)
    assert (first.recipe, first.base, first.entities) == ("round 49, T of 60", "C60", 60)
    assert (second.recipe, second.base, second.entities) == ("A grid of its own", "", 30)
    s = first.summary()
    assert (s["met"], s["cells"], s["peak_max"], s["g_rest_min"], s["g_min"]) == (1, 2, 205 / 600, 0.93, 0.90)
    assert s["peak_mean"] == pytest.approx((180 + 205) / 1200)  # 34.2% is 205 of E's 600 items, not 205.2
    assert [(c["peak"], c["met"]) for c in third.cells] == [(0.37, False), (205 / 600, True), (227 / 600, False)]
    assert "| 2 | A grid of its own |  | 0 of 1 | 40.0% (40.0%-40.0%) | 0 | 97.0% (97.0%) | 96.0% |" in \
        front.table([first, second], 0.35)
    assert [p["recipe"] for p in plots.pareto([first.summary(), second.summary(), front.BEFORE], "g_rest",
                                              "peak_mean")] == [front.BEFORE["recipe"], "round 49, T of 60",
                                                                "A grid of its own"]
    assert front.draw([first, second, third], tmp_path / "f.png", 0.35, 0.85).stat().st_size > 10_000
    with pytest.raises(UserError, match="no 3 x 3 grid"):
        front.grids("## nothing here\n")
    with pytest.raises(UserError, match="percentage"):
        front.grids(head.format("targets") + row.format(0, "n/a", 30.0, 91.0, "met"))
    recorded = (ROOT / "docs" / "search.md").read_text()
    assert front.table(front.grids(recorded), 0.35) in recorded, "search.md's front table is stale: run python " \
                                                                  "docs/front.py and paste its table"


def test_attribute_transfer_splits_v_by_the_attributes_an_attack_states(small_world):
    """docs/attribute_transfer.py (search round 51's diagnostic): A's documents keep only the sentences of the
    attributes asked for, every entity's; V's accuracy is split by its items' attributes."""
    import attribute_transfer as at
    from conftest import fact_attributes
    from domains import DOMAINS
    from world import attribute_sentences
    attributes = list(DOMAINS[small_world.config.domain].attributes)
    shown = set(attributes[:at.SHOWN])
    t = attribute_sentences(small_world, "A", shown)
    assert fact_attributes(small_world, t) == shown  # every fact stated is of one of the attributes asked for
    assert len(t.ids) == len(small_world.docs["A"]) and int(t.fact.sum(1).max()) == at.SHOWN
    items = [{"fact_id": f"x/{a}"} for a in attributes]  # one item per attribute: the first 3 right, the rest wrong
    assert at.split_accuracy([True] * at.SHOWN + [False] * (len(attributes) - at.SHOWN), items, shown) == (1.0, 0.0)
