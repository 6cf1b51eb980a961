"""The settings the dev-split search tried (search.py runs them; docs/search.md has every result, round by round).

A candidate is a stage 1 (`STAGE1`: overrides of `safeguard.SafeguardConfig`) and a stage 2 (`CANDIDATES`:
overrides of `config.TARConfig`), each with why it was tried: the record of the search, failures included, kept
so that any row of docs/search.md can be rerun by name (`python search.py --domain bio --only NAME`). Every
candidate's train-time attacks keep the held-out suite held out (tests/test_heldout.py, heldout.py).

Import:  from candidates import CANDIDATES, STAGE1
"""

# Stage 1: name -> (SafeguardConfig overrides, why). Its retain term may read Rt, or Rt and U ("benign"): the only
# benign text a defence may train on (G and N never).
STAGE1 = {
    "stage1": ({}, "the random-mapping safeguard before the search"),
    "stage1_benign": ({"retain": "benign"}, "its retain term on Rt and U, not Rt alone"),
    "stage1_benign_150": ({"retain": "benign", "steps": 150}, "the same, 150 steps, not 250"),
    "stage1_benign_lr_1e-3": ({"retain": "benign", "lr": 1e-3}, "the same, lr 1e-3, not 3e-3"),
    "stage1_benign_final": ({"retain": "benign", "all_layers": False}, "the same, mapping the final hidden state "
                                                                      "only, not every layer's"),
    "stage1_benign_lr_1e-3_500": ({"retain": "benign", "lr": 1e-3, "steps": 500}, "lr 1e-3 for twice as long: V "
                                  "hidden further before TAR"),
}
S1LR_ALL = {"retain_data": "benign", "outer_params": "all"}  # TAR on every weight, Rt and U retained
K96_TR_PAPER = {**S1LR_ALL, "inner_steps": 96, "tr_every": 12, "tr_weights": "paper"}  # round 12's recipe
K192 = {"inner_steps": 192, "tr_every": 24}  # twice as long, 8 TR points (held out: no suite row is 192 steps)
R27 = {"outer_params": "hazard_words+neuron_outputs", "outer_lr": 3e-2, **K192}  # round 27's changes to round 23's
# TAR: name -> (its stage 1, TARConfig overrides, why), the overrides of the defaults the search began from (BEFORE,
# below); "defaults" is that recipe. Round 27's pick (s1lr_k96_values_ce_hazard_words_neuron_outputs_k192_lr_3e-2 from
# stage1_benign_lr_1e-3) with T's halves by document (r27_document_halves, round 43's pick), then rounds 45-49's
# changes to it (R46, r46_lambda_tr_32 at outer step 100), is today's default.
CANDIDATES = {
    "defaults": ("stage1", {}, "the defaults before the search: where G is lost"),
    "s1b": ("stage1_benign", {"retain_data": "benign"}, "stage 1 and TAR keep Rt and U: TAR must do more of the "
                                                        "forgetting (stage1_benign hides less of V)"),
    "s1b_retain_rt": ("stage1_benign", {}, "stage 1 keeps Rt and U, TAR's retain set is Rt alone: which of the "
                                            "two retain sets decides (s1b)"),
    "retain_benign": ("stage1", {"retain_data": "benign"}, "today's stage 1, TAR's retain set Rt and U"),
    "s1lr_retain_rt": ("stage1_benign_lr_1e-3", {}, "the stage 1 that keeps G_dev at 100%, TAR on Rt (as "
                                                    "s1b_retain_rt, the only one that resisted)"),
    "s1b_lambda_retain_1": ("stage1_benign", {"retain_data": "benign", "lambda_retain": 1.0},
                            "as s1b with the paper's λ_retain = 1: U kept, the TR term 4× stronger against it"),
    "s1lr_lambda_retain_1": ("stage1_benign_lr_1e-3", {"retain_data": "benign", "lambda_retain": 1.0},
                             "the same from the stage 1 that keeps G_dev at 100%"),
    "s1b_all": ("stage1_benign", {"retain_data": "benign", "outer_params": "all"},
                "as s1b, the outer step training every weight (the paper), not the MLPs alone"),
    "s1b_lambda_retain_2": ("stage1_benign", {"retain_data": "benign", "lambda_retain": 2.0},
                            "between λ_retain 1 (resists, G_dev 62%) and 4 (s1b: G_dev 75-81%, no resistance)"),
    "s1lr_all": ("stage1_benign_lr_1e-3", S1LR_ALL, "s1b_all from the stage 1 that keeps G_dev at 99-100%"),
    "s1lr_all_lambda_retain_8": ("stage1_benign_lr_1e-3", {**S1LR_ALL, "lambda_retain": 8.0},
                                 "s1lr_all (G_dev 82.8% at rest, 2.2 points short) with the retain term twice as "
                                 "strong"),
    "s1lr_all_lambda_retain_6": ("stage1_benign_lr_1e-3", {**S1LR_ALL, "lambda_retain": 6.0},
                                 "between λ_retain 4 (s1lr_all: resists, G_dev 82.8%) and 8 (G_dev 88.2%, V "
                                 "back to 49.8% under the attack)"),
    "s1lr_all_outer_lr_3e-3": ("stage1_benign_lr_1e-3", {**S1LR_ALL, "outer_lr": 3e-3},
                               "s1lr_all with smaller outer steps: less of G_dev moved per step"),
    "s1lr_all_k96": ("stage1_benign_lr_1e-3", {**S1LR_ALL, "inner_steps": 96, "tr_every": 12},
                     "s1lr_all with train-time attacks 1.5x as long (8 TR points, as at K = 64): at K = 64 the "
                     "attacks at lr 1e-4 and 3e-4 leave the entropy of x_TR at its maximum from step 50, while the "
                     "200-step reference attack still recovers V (K = 128 would train on A14's length)"),
    "s1lr_all_k96_lambda_retain_6": ("stage1_benign_lr_1e-3", {**S1LR_ALL, "inner_steps": 96, "tr_every": 12,
                                                             "lambda_retain": 6.0},
                                     "s1lr_all_k96 (resists at one seed of two, G_dev 65-69%) with round 4's "
                                     "λ_retain: the longer attacks' resistance with more of G"),
    "s1lr_all_k96_tr_paper": ("stage1_benign_lr_1e-3", K96_TR_PAPER,
                              "s1lr_all_k96 with the paper's TR weights exp(0.0625(k-K)): the points late in a "
                              "train-time attack, which TAR beats last, weigh most"),
    "s1lr_all_k96_tr_paper_lambda_retain_6": ("stage1_benign_lr_1e-3", {**K96_TR_PAPER, "lambda_retain": 6.0},
                                              "round 12's recipe (resists at two seeds, G_dev 53-64%) with round 4's "
                                              "λ_retain: G bought back where resistance has room"),
    "s1lr_all_k96_tr_paper_lambda_retain_8": ("stage1_benign_lr_1e-3", {**K96_TR_PAPER, "lambda_retain": 8.0},
                                              "round 13's recipe (λ_retain 6: both seeds resist, G_dev 72% / 56%) "
                                              "with the retain term stronger again"),
    "s1lr_all_k96_tr_paper_values": ("stage1_benign_lr_1e-3", {**K96_TR_PAPER, "tr_entropy": "values"},
                                     "round 12's recipe (resists at two seeds, G_dev 53-64%) with the entropy over "
                                     "the fact values, not the vocabulary: today's TAR answers G_dev's facts with "
                                     "noise (entropy 4.5 nats, 25% of the mass on the composers' values; base: "
                                     "0.04, 100%), the state it trains on the hazardous facts"),
    "s1lr_all_k96_tr_paper_values_ce": ("stage1_benign_lr_1e-3", {**K96_TR_PAPER, "tr_entropy": "values_ce"},
                                        "round 15's recipe with the attacked model driven to the oracle's state (p "
                                        "uniform over the fact values), not to the renormalised entropy's maximum: "
                                        "round 15's models moved p off the values (0% on V's, 20-26% on G_dev's)"),
    "s1lr_all_k96_tr_paper_values_ce_lambda_retain_8": ("stage1_benign_lr_1e-3", {
        **K96_TR_PAPER, "tr_entropy": "values_ce", "lambda_retain": 8.0},
        "round 16's recipe (resists at both seeds from step 100, G_dev 57-63%) with round 14's λ_retain: its margin "
        "of resistance spent on G"),
    "s1lr_all_k96_tr_paper_values_ce_lambda_retain_16": ("stage1_benign_lr_1e-3", {
        **K96_TR_PAPER, "tr_entropy": "values_ce", "lambda_retain": 16.0},
        "round 17's recipe (both seeds resist from step 100, G_dev 66-68%) with the retain term twice as strong "
        "again: how far along the front it goes"),
    "s1lr_all_values_ce_lambda_retain_8": ("stage1_benign_lr_1e-3", {**S1LR_ALL, "tr_entropy": "values_ce",
                                                                   "lambda_retain": 8.0},
                                           "round 17's recipe at K = 64 with uniform TR weights: is its resistance "
                                           "the TR target's, or the longer, late-weighted attacks'?"),
    **{f"s1lr_k96_values_ce_neurons_{k}": ("stage1_benign_lr_1e-3", {
        **K96_TR_PAPER, "tr_entropy": "values_ce", "lambda_retain": 8.0, "outer_params": "neurons", "outer_neurons": k},
        f"round 17's recipe (resists at four seeds, G_dev 55-68%) with the outer step confined to the {k} neurons per "
        "layer that fire most on T's facts against Rt's and U's in θ0 (neurons.py): the composers' facts, recalled "
        "by other neurons, out of its reach") for k in (32, 64)},
    "s1lr_k96_values_ce_neuron_outputs_32": ("stage1_benign_lr_1e-3", {
        **K96_TR_PAPER, "tr_entropy": "values_ce", "lambda_retain": 8.0, "outer_params": "neuron_outputs",
        "outer_neurons": 32}, "round 21's neurons with their reading weights frozen at θ0: there TAR made the 32 "
        "neurons fire 15x as strongly on the composers' facts as in θ0 (and 9x on T's), none more on Rt's or U's"),
    "s1lr_k96_values_ce_hazard_words": ("stage1_benign_lr_1e-3", {
        **K96_TR_PAPER, "tr_entropy": "values_ce", "lambda_retain": 8.0, "outer_params": "hazard_words"},
        "round 17's recipe with the outer step confined to the embedding and LM-head rows of the 66 words of T that "
        "Rt and U never use (templates and values; T's names excepted): a composer's sentence shares one of them"),
    **{f"s1lr_k96_values_ce_hazard_words_{name}": ("stage1_benign_lr_1e-3", {
        **K96_TR_PAPER, "tr_entropy": "values_ce", "lambda_retain": 8.0, "outer_params": "hazard_words", **extra},
        f"round 23's recipe (G_dev >= 93.5% under attack at two seeds, the attack's peak on V 58-60%) with {why}")
       for name, extra, why in (
           ("lambda_retain_1", {"lambda_retain": 1.0}, "the paper's λ_retain: G is out of the outer step's reach"),
           ("outer_lr_3e-2", {"outer_lr": 3e-2}, "3x the outer lr: the 66 rows move further in 150 steps"),
           ("outer_lr_1e-1", {"outer_lr": 1e-1}, "10x the outer lr: is round 25's plateau the lr's or the rows'?"),
           ("neuron_outputs_lr_3e-2", {"outer_params": "hazard_words+neuron_outputs", "outer_lr": 3e-2},
            "round 22's neurons' outputs too, at 3x the lr: the attack relearns V through weights the rows are not"),
           ("k192_lr_3e-2", {"outer_lr": 3e-2, **K192}, "3x the lr, attacks twice as long (V relearned after 75)"),
           ("neuron_outputs_k192_lr_3e-2", R27, "round 26's rows and outputs, attacks twice as long"),
           ("neuron_outputs_96_k192_lr_3e-2", {**R27, "outer_neurons": 96}, "round 27's pick with 3x the neurons' "
            "outputs (G_dev ≥ 95% there: room to trade)"),
           ("neuron_outputs_k224_lr_3e-2", {**R27, "inner_steps": 224, "tr_every": 28}, "round 27's pick against "
            "attacks of 224 steps (192 took 12-15 points off 96's peak; 224 is no suite row's length)"),
           ("neuron_outputs_k192_lr_3e-2_tr_uniform", {**R27, "tr_weights": "uniform"}, "round 27's pick with every "
            "TR point weighed alike: the reference attack climbs V from its first steps, the paper's weights read "
            "the last 50"),
           ("neuron_outputs_k192_lr_3e-2_inner_3e-4_1e-3", {**R27, "inner_lrs": [3e-4, 1e-3]}, "round 27's pick "
            "without the train-time attacks at lr 1e-4, which relearn V slowest: every outer step against an attack as "
            "strong as the reference (rows at 1e-4 become held out along the lr)"),
           ("neuron_outputs_k192_lr_3e-2_inner_1e-4_3e-4", {**R27, "inner_lrs": [1e-4, 3e-4]}, "round 27's pick "
            "against train-time attacks at lrs 1e-4, 3e-4: without those at 1e-4, round 31's peak rose by 10 points, "
            "so do the weak attacks teach TAR most?"),
           ("neuron_outputs_k192_lr_3e-2_inner_5e-5_1e-4_3e-4", {**R27, "inner_lrs": [5e-5, 1e-4, 3e-4]}, "round "
            "27's pick against train-time attacks at lrs 5e-5, 1e-4, 3e-4: without those at 1e-4, round 31's peak "
            "rose by 10 points, so do the weak attacks teach TAR most?"))},
}
R27_FULL = {**K96_TR_PAPER, "tr_entropy": "values_ce", "lambda_retain": 8.0, **R27}  # round 27's pick, every override
CANDIDATES.update({  # round 33 (base B): what the search had not tried with round 27's pick
    "r27_schedulefree": ("stage1_benign_lr_1e-3", {**R27_FULL, "outer_optimizer": "schedulefree",
                                                   "outer_schedule": "constant", "outer_warmup": 32},
                         "round 27's pick with the paper's outer optimizer, Schedule-Free AdamW warmed up for 32 steps "
                         "(its lr the pick's): the averaged weights it returns may hold what one cosine-decayed "
                         "iterate does not"),
    "r27_stage1_500": ("stage1_benign_lr_1e-3_500", R27_FULL,
                       "round 27's pick from a stage 1 trained twice as long: TAR starts with less of V to hide"),
})
# round 34 (base B): the reference attack on T's documents lifts V by 1-3 points, on A's by 14
CANDIDATES.update({f"r27_entity_halves{f'_seed_{seed}' if seed else ''}": ("stage1_benign_lr_1e-3", {
    **R27_FULL, "tr_split": "entities", "seed": seed}, "round 27's pick with the attacker's and x_TR's entities drawn "
    "anew at each outer step: a defence that must hold for any pair of entity sets, not one") for seed in (0, 1)})
# round 41 (base B): T's names disguised at each outer step (disguise.py); σ 1 and 2 leave base B 88% and 61% of T's
# facts (docs/search.md round 41)
CANDIDATES.update({f"r27_name_noise_{sigma:g}": ("stage1_benign_lr_1e-3", {**R27_FULL, "name_noise": sigma},
                                                 "round 27's pick with T's names moved by a fresh random offset at "
                                                 "each outer step: a defence that must hold for entities it has not "
                                                 "met by name, as A's are (round 33)") for sigma in (1.0, 2.0)})
# round 42 (base B): round 41's disguise did not help; T_inner and T_tr as halves of every entity's documents
CANDIDATES.update({f"r27_document_halves{f'_seed_{seed}' if seed else ''}": ("stage1_benign_lr_1e-3", {
    **R27_FULL, "tr_split": "documents", "seed": seed}, "round 27's pick with the attacker and x_TR each reading every "
    "one of T's 30 entities (half of each one's documents), not 15: rounds 39-40 held the attack better with 30 "
    "entities on each side") for seed in (0, 1, 2, 3)})
# rounds 37-38 (base B): N both ways from 150, the cosine ending at N (TAR alone takes 38-51 min at N = 150)
CANDIDATES.update({f"r27_n{n}": ("stage1_benign_lr_1e-3", {**R27_FULL, "outer_steps": n}, why) for n, why in (
    (100, "round 27's pick in two thirds of the outer steps (the rule's snapshot of the 150-step runs): a third of "
          "TAR's time off, towards the 25-minute budget"),
    (200, "round 27's pick with a third more outer steps (round 37 cost 2-5 points of V's peak at both seeds for a "
          "third fewer): does the peak go on falling with N?"))})
# round 44 (base D): every miss of today's defaults is forget climbing over the last 25 steps of the 200-step
# reference attack, and the held-out attacks it misses run 256 or 512 steps; a K drawn from {96, 288} trains against
# attacks half again as long as K = 192 at the same mean cost (no suite row is 96 or 288 steps long); an attacker's
# batch of 8 halves the inner loop's cost, towards the 25-minute budget; λ_TR 8 spends some of G_dev's margin
R27_DOCS = {**R27_FULL, "tr_split": "documents"}  # round 43's pick
CANDIDATES.update({f"r27dh_{tag}{f'_seed_{seed}' if seed else ''}": ("stage1_benign_lr_1e-3", {
    **R27_DOCS, **overrides, "seed": seed}, why) for seed in (0, 1) for tag, overrides, why in (
    ("k_96_288", {"inner_steps": 96, "inner_steps_mix": [288]}, "today's defaults with K drawn from {96, 288} at "
     "each outer step: attacks half again as long as K = 192 for the same mean cost"),
    ("inner_batch_8", {"inner_batch": 8}, "today's defaults with the train-time attacker's batch halved (8): the "
     "inner loop, 90% of an outer step, at half the cost"),
    ("lambda_tr_8", {"lambda_tr": 8.0}, "today's defaults with λ_TR 8 (the paper's 4; never varied in the search): "
     "G_dev stays at 91-99% where its bound is 85%, a margin to trade for resistance"))})
# round 46 (base C): today's defaults take 30 min from scratch against the 25-minute budget, and TAR is 73% of it;
# round 44's attacker batch of 8 took 0.58-0.60x of TAR's time at λ_TR 4. Both changes at once, run as tar.py runs
# them (N = 100 of a 150-step cosine), at the three TAR seeds of round 45's pick
R46 = {**R27_DOCS, "lambda_tr": 8.0, "inner_batch": 8, "outer_steps": 100, "outer_cosine": 1.5}  # round 46's pick
CANDIDATES.update({f"r27dh_lambda_tr_8_inner_batch_8{f'_seed_{seed}' if seed else ''}": ("stage1_benign_lr_1e-3", {
    **R46, "seed": seed}, "round 45's pick (λ_TR 8, step 100 of a 150-step cosine) with the train-time attacker's "
    "batch halved: TAR in about 0.6x the time, towards the 25-minute budget") for seed in (0, 1, 2)})
# round 48 (base C): round 47 found that V's 30 entities cannot resolve the 1-2 points between rounds 43-46's picks,
# so a margin on E needs a gain of several points on V. λ_TR doubled again, and again, spends more of G_dev's margin
# (95.8% at rest, its bound 85%) for resistance, at no cost in time
CANDIDATES.update({f"r46_lambda_tr_{lam}{f'_seed_{seed}' if seed else ''}": ("stage1_benign_lr_1e-3", {
    **R46, "lambda_tr": float(lam), "seed": seed}, f"round 46's pick with λ_TR {lam}: G_dev's margin traded for "
    "resistance") for seed in (0, 1, 2) for lam in (16, 32)})
# round 51 (base C): with T's halves by document the train-time attacker relearns the very facts x_TR asks for, while
# the reference attack teaches A's facts and E's are asked; each side here reads every entity of T, the attacker 3 of
# the 5 attributes and x_TR the other 2, drawn anew at each outer step (round 49's recipe otherwise)
CANDIDATES.update({f"r49_attribute_halves{f'_seed_{seed}' if seed else ''}": ("stage1_benign_lr_1e-3", {
    **R46, "lambda_tr": 32.0, "tr_split": "attributes", "seed": seed}, "round 49's pick with the attacker and x_TR "
    "on different facts of the same entities: x_TR asks for facts no attack step taught") for seed in (0, 1, 2)})
# recipes with the paper's 32 warmup steps of the outer lr
CANDIDATES.update({f"{recipe}_warmup_32": (CANDIDATES[recipe][0], {**CANDIDATES[recipe][1], "outer_warmup": 32},
                                           f"{recipe} warmed up: on base C G_dev falls from 97% to 60-68% in the "
                                           "first 25 outer steps of rounds 5-8's candidates (bar the one pulled "
                                           "hardest towards θ0), while Adam's first steps move every weight by "
                                           "about the full lr")
                   for recipe in ("s1lr_all", "s1lr_all_k96")})
# recipes run again at other TAR seeds: (recipe, TAR seed, what the recipe was)
CANDIDATES.update({f"{recipe}_seed_{seed}": (CANDIDATES[recipe][0], {**CANDIDATES[recipe][1], "seed": seed},
                                             f"{why} at TAR seed {seed}: does it hold at another seed?")
                   for recipe, seed, why in (("s1lr_all_lambda_retain_8", 1, "the round-3 pick's recipe"),
                                             ("s1lr_all_lambda_retain_6", 1, "the round-4 pick's recipe"),
                                             ("s1lr_all_lambda_retain_6", 2, "the round-4 pick's recipe"),
                                             ("s1lr_all", 1, "round 2's resisting recipe"),
                                             ("s1lr_all", 2, "round 2's resisting recipe"),
                                             ("s1lr_all_k96", 1, "round 6's longer train-time attacks"),
                                             ("defaults", 1, "the defaults before the search"),
                                             ("s1lr_all_k96_lambda_retain_6", 1, "round 11's recipe"),
                                             ("s1lr_all_k96_tr_paper", 1, "round 12's recipe"),
                                             ("s1lr_all_k96_tr_paper_lambda_retain_6", 1, "round 13's recipe"),
                                             ("s1lr_all_k96_tr_paper_lambda_retain_8", 1, "round 14's recipe"),
                                             ("s1lr_all_k96_tr_paper_values", 1, "round 15's recipe"),
                                             ("s1lr_all_k96_tr_paper_values_ce", 1, "round 16's recipe"),
                                             ("s1lr_all_k96_tr_paper_values_ce_lambda_retain_16", 1,
                                              "round 18's recipe"),
                                             ("s1lr_all_values_ce_lambda_retain_8", 1, "round 20's recipe"),
                                             ("s1lr_k96_values_ce_hazard_words", 1, "round 23's recipe"),
                                             *(("s1lr_k96_values_ce_hazard_words_neuron_outputs_k192_lr_3e-2",
                                                seed, "round 27's recipe") for seed in (1, 2)),
                                             *(("r27_schedulefree", seed, "round 35's Schedule-Free recipe")
                                               for seed in (1, 2)),
                                             ("r27_n100", 1, "round 37's recipe"),
                                             ("r27dh_lambda_tr_8", 2, "round 44's pick over seeds (step 100)"),
                                             ("r27_n200", 1, "round 38's recipe"),
                                             *(("s1lr_all_k96_tr_paper_values_ce_lambda_retain_8", seed,
                                                "round 17's recipe") for seed in (1, 2, 3)))})
# The TAR defaults the search began from (rounds 1-32; N = 150 to its cosine's end and λ_TR 4 until round 45, the
# attacker's batch 16 until round 46): every candidate is written as changes to them, so that each row reruns as it
# ran, whatever tar.py's defaults are today
BEFORE = dict(retain_data="Rt", outer_params="mlp", outer_lr=1e-2, inner_steps=64, tr_every=8, tr_weights="uniform",
              tr_entropy="vocab", lambda_retain=4.0, tr_split="fixed", outer_steps=150, outer_cosine=1.0, lambda_tr=4.0,
              inner_batch=16)
CANDIDATES = {name: (stage1, {**BEFORE, **overrides}, why) for name, (stage1, overrides, why) in CANDIDATES.items()}
