"""The red-team suite stays held out from the attacks TAR trains against (heldout.py): today's distributions and
every search candidate keep every non-TRAIN row outside A_train along the axes that held it out, a distribution
widened along such an axis is caught, and docs/heldout.md lists both sets as the code defines them."""

from dataclasses import replace
from pathlib import Path

import heldout
import search
from config import configure

DEFAULT = configure(domain="bio").train_attacks()


def names(found: list[str]) -> list[str]:
    return [v.split(":")[0] for v in found]


def test_todays_train_time_distributions_hold_out_every_row():
    assert heldout.violations(DEFAULT, DEFAULT) == []
    refusal = configure(domain="refusal").train_attacks()
    assert heldout.violations(refusal, refusal, ("refusal",)) == []
    assert "A1_adamw_3e-4_256" in heldout.rows() and "T1_adamw_1e-3_32" not in heldout.rows()  # TRAIN is exempt


def test_every_search_candidate_keeps_the_suite_held_out():
    for name in search.CANDIDATES:
        cfg = search.tar_config(search.SearchArgs(), search.parts(name)[1])
        assert heldout.violations(cfg.train_attacks(), DEFAULT) == [], name


def test_a_distribution_widened_along_a_held_out_axis_is_caught():
    # 6e-4 is the LR that (with its length) holds A1_adamw_6e-4_b32_256 out: that axis is lost
    assert names(heldout.violations(replace(DEFAULT, lrs=(*DEFAULT.lrs, 6e-4)), DEFAULT)) == ["A1_adamw_6e-4_b32_256"]
    # K = 256: every 256-step row loses its length; A1_adamw_3e-4_256 is then held out along no axis at all
    long = heldout.violations(replace(DEFAULT, steps=(256,)), DEFAULT)
    assert "A1_adamw_3e-4_256: held out along no axis" in long[0] and len(long) == 16
    # a K of 256 drawn beside 192 (--inner-steps-mix) loses the same rows: every K A_train can draw counts
    assert heldout.violations(replace(DEFAULT, steps=(192, 256)), DEFAULT) == long
    # widened where no row stands: allowed
    assert heldout.violations(replace(DEFAULT, lrs=(*DEFAULT.lrs, 2e-3)), DEFAULT) == []
    # the paper's own A_train trains retain→forget as A2 does; A2 stays held out by LR and length (docs/heldout.md)
    paper = configure(domain="bio", preset="paper").train_attacks()
    assert names(heldout.violations(paper, DEFAULT)) == ["A2_r2f_3e-4_256"]
    assert heldout.held_out_along(heldout.rows()["A2_r2f_3e-4_256"], paper) == ["lr", "length"]


def test_lrs_compare_at_three_digits():
    # the suite computes LRs from its base LR (3e-4 / 3 is 9.999…e-05): the refusal row R1 trains at a grid LR
    assert heldout.point(heldout.rows(("refusal",))["R1_adamw_1e-4_256"])["lr"] == "0.0001"
    assert heldout.held_out_along(heldout.rows(("refusal",))["R1_adamw_1e-4_256"], DEFAULT) == ["length"]


def test_docs_list_both_sets_as_the_code_defines_them():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "heldout.md").read_text()
    assert doc == heldout.render(), "docs/heldout.md is stale: run python heldout.py"
