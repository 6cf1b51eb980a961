"""The hyperparameters of TAR (paper Sec. 4-5, App. hyperparameter tables), in one dataclass.

`TARConfig` holds every setting of Alg. 1 and of a run, with the miniature world's defaults (measured on this
repo's 2-core CPU; docs/results.md) and `--help` text; `PAPER` and `PAPER_DOMAIN` hold the paper's and its
official code's values (docs/paper.md §4), applied by `--preset paper` (the default with a real `--model`,
since the miniature defaults would wreck an 8B model). `configure()` applies a preset and then every flag
the user gave, so a given flag always wins. Every flag of tar.py is a field here (`--outer-lr` is
`outer_lr`); `python tar.py --help` shows each default beside the paper's value.

Use:  cfg = configure(domain="bio", outer_steps=10); cfg.validate()
      cfg = configure(model="meta-llama/Meta-Llama-3-8B-Instruct")    # preset paper
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cli
from adversary import TrainAttacks
from batching import check_split
from cli import UsageError, arg
from realworld import RealWorldConfig, attack_splits, hub_datasets
from storage import recorded_parent
from safeguard import SafeguardConfig
import world
from world import WORLDS, WorldConfig, entities_flag, t_extra_flag, world_config


@dataclass
class TARConfig:
    """Every hyperparameter, with the miniature defaults (docs/paper.md §7); PAPER below holds the paper's."""
    # what to run
    domain: str = arg("bio", "bio | chem | cyber (hazardous knowledge) | refusal (harmful requests, DPO TR loss)",
                      choices=WORLDS)
    model: str = arg("", "a Hugging Face causal LM (hub id or directory) to make tamper-resistant: θ0 of Alg. 1, "
                         "trained on the real datasets; empty: the built-in miniature world and its tiny Llama")
    preset: str = arg("mini", "mini (defaults shown) | paper (the values in [paper: ...]); default: paper with "
                          "--model, else mini. Flags you give override the preset", choices=("mini", "paper"))
    data_dir: str = arg("", "with --model: local files in the real datasets' schemas instead of the hub "
                            "(names in realworld.SOURCES)")
    seq_len: int = arg(256, "with --model: documents are cut to this many tokens", above=0)
    max_docs: int = arg(0, "with --model: at most this many documents per split (0 = all)", at_least=0)
    wmdp_revision: str = arg("", "with --model: the hub revision (commit or tag) of WMDP to score on; empty: the "
                                 "newest (its rows changed on 2024-04-23; docs/data.md). In the model card")
    mmlu_shots: int = arg(5, "with --model: MMLU's few-shot examples, the first n of each item's subject in MMLU's "
                             "dev split (lm-eval's sampler; its CLI: --num_fewshot 5); WMDP is 0-shot", at_least=0)
    runs: str = arg("runs", "runs directory; this run reads and writes <runs>/<domain>/", nonempty=True)
    seed: int = arg(0, "training seed of TAR: its sampled attacks and data order (the world, base, oracle and "
                       "safeguard come from --world-seed, so a seed study keeps one world and one θ0)", at_least=0)
    world_seed: int = arg(0, "seed of the world and of every model before TAR (base, oracle, safeguard)",
                          at_least=0)
    attack_seed: int = arg(0, "data order of the end-of-run attacks (this seed) and of the relearning and "
                              "learnability runs (this seed, +1, +2)", at_least=0)
    threads: int = arg(1, "torch threads (1 is fastest for the miniature model; never more than your cores)",
                       above=0)
    # Alg. 1
    # deviation: N = 100 outer steps (paper: 750) because a laptop affords about that many at K = 192 within the
    # 25-minute budget, and checkpoint selection on V picked step 100 of round 49's runs, whose cosine is 150 steps
    # long (docs/search.md round 49): the run stops there, two thirds of the way down its cosine (--outer-cosine).
    outer_steps: int = arg(100, "N: outer steps", above=0)
    # deviation: K = 192 (paper: 64) because on the miniature the 200-step reference attack still relearns V from
    # models that beat every 64- or 96-step train-time attack; K = 192 took 12-15 points off its peak on V (docs/
    # search.md rounds 6, 12, 27), and no row of the held-out suite is 192 steps long, so the suite stays held out.
    inner_steps: int = arg(192, "K: attacker steps per outer step", above=0)
    inner_steps_mix: list = arg((), "more values of K: each outer step draws its K uniformly from --inner-steps and "
                                    "these (default: none, K alone; the search's round 44)", of=int, above=0)
    # deviation: a TR point every 24 inner steps, 8 points per outer step (paper: every 4, 16 points) because the
    # TR gradient's cost grows with the points, and the search kept 8 as K grew from 64 to 192.
    tr_every: int = arg(24, "take the TR gradient after every this many inner steps", above=0)
    tr_weights: str = arg("paper", "weights of the TR points: paper (exp(0.0625(k-K)), not normalised: the late "
                                   "points, which TAR beats last, weigh most) | uniform (mean)",
                          choices=("paper", "uniform"))
    tr_loss: str = arg("entropy", "tamper-resistance loss: entropy (knowledge restriction) | dpo (refusal: chosen "
                                  "= refusal, rejected = compliance; the default with --domain refusal)",
                       choices=("entropy", "dpo"))
    dpo_beta: float = arg(0.1, "β of the DPO TR loss", above=0)
    tr_mask: str = arg("fact", "positions of the entropy TR loss: fact (next token is a fact value; the miniature "
                               "world only) | tokens (real tokens) | all (padding too)",
                       choices=("fact", "tokens", "all"))
    # deviation: L_TR drives the attacked model to the uniform distribution over the domain's fact values at the
    # fact positions (paper: the maximal entropy over the whole vocabulary, --tr-entropy vocab) because the
    # vocabulary's entropy taught TAR to answer facts no loss rehearses (G) with noise, 4.5 nats, where a model
    # that never knew spreads its answer over the values (docs/search.md rounds 15-17, docs/fact_entropy.py).
    tr_entropy: str = arg("values_ce", "what L_TR drives the attacked model to at the fact positions: vocab (maximal "
                                   "entropy over the whole vocabulary: the paper) | values (maximal entropy of p "
                                   "renormalised over the domain's fact values: those T_tr's facts take, T's with "
                                   "--tr-split entities) "
                                   "| values_ce (cross-entropy to the uniform distribution over those values: mass "
                                   "on them, spread among them, as a model that never knew). values*: the "
                                   "miniature world only", choices=("vocab", "values", "values_ce"))
    # deviation: train-time attack LRs {1e-4, 3e-4, 1e-3} (paper bio: {2e-6, 2e-5, 4e-5}) because a 0.8M-parameter
    # model needs larger steps than an 8B one to relearn a fact in K steps; the red team keeps the paper's ratios.
    inner_lrs: list = arg((1e-4, 3e-4, 1e-3), "train-time attack learning rates (sampled uniformly)", above=0)
    # deviation: smaller batches, attacker 8 and x_TR 32 (paper: 32 and 64) because T's halves hold 300 documents
    # each, and the attacker's 8 brings TAR within the 25-minute budget, its pick on V no worse (search.md round 46).
    inner_batch: int = arg(8, "train-time attacker batch size (global)", above=0)
    # deviation: no retain→forget attacks by default (paper bio: ⅓, cyber: ½) because the defaults were measured
    # without them (a search with ⅓ is in docs/results.md); --preset paper sets the paper's shares.
    retain_then_forget: float = arg(0.0, "probability that a sampled attack is retain->forget", at_least=0,
                                    at_most=1)
    tr_batch: int = arg(32, "x_TR batch size (global; held-out forget documents)", above=0)
    retain_batch: int = arg(64, "x_r batch size (global; retain documents)", above=0)
    # x_TR is held out from the attacker's data (Alg. 1 l.4), as the paper's forget documents are split in two: here
    # each of T's entities gives half its documents to each side, so both read all 30 (docs/search.md rounds 42-43)
    tr_split: str = arg("documents", "the documents of T the train-time attacker and x_TR come from: documents (half "
                                     "of every entity's documents for the attacker, the other half for x_TR) | fixed "
                                     "(T_inner and T_tr, T's two halves by entity: the recipe before round 42) | "
                                     "entities (a random half of T's entities for the attacker and the other half for "
                                     "x_TR, drawn anew at each outer step) | attributes (every document of T, the "
                                     "attacker reading the sentences of 3 of the 5 attributes and x_TR the other 2, "
                                     "drawn anew at each outer step); the miniature's knowledge worlds only "
                                     "(elsewhere: fixed)",
                        choices=("fixed", "entities", "documents", "attributes"))
    # deviation: x_r is Rt and U, every benign text of the miniature a defence may read (paper: the retain corpus)
    # because with Rt alone TAR kept the cities and lost the rivers and the composers (docs/search.md rounds 1-2);
    # on real data the retain corpus is one source: --model takes Rt.
    retain_data: str = arg("benign", "x_r's documents: benign (Rt and the unrelated text U: rivers; the miniature "
                                     "world only) | Rt (retain-train cities; with --model the retain corpus)",
                           choices=("benign", "Rt"))
    # deviation: λ_TR = 32 (paper: 4) because G_dev kept a margin of 6-14 points over its bound at 4, and each
    # doubling lowered the reference attack's worst peak on V over three TAR seeds: 37.2% at 4, 36.2% at 8, 33.8%
    # at 16, 33.2% at 32 with G_dev still ≥ 96% at rest (docs/search.md rounds 45, 48 and 49).
    lambda_tr: float = arg(32.0, "λ_TR", at_least=0)
    # deviation: λ_retain = 8 (paper: 1) because the outer step must not drift the benign families no loss reads
    # (G) into the hazardous facts' state; 8 slowed that drift most without costing resistance (docs/search.md
    # rounds 14, 17-18: 16 lost it at one seed of two).
    lambda_retain: float = arg(8.0, "λ_retain", at_least=0)
    # deviation: the outer step trains only the embedding and LM-head rows of the words of T that the retain data
    # never uses and what T's 32 most selective MLP neurons per layer write (paper: every weight) because trained
    # anywhere else it moved the composers' facts (G) with the hazardous ones: G_dev at rest fell to 53-68% on
    # every weight or the MLPs, and stays at 95-100% here (docs/search.md rounds 21-27). The miniature world only:
    # the selection reads its fact positions; with --model, every weight (--preset paper) or the MLPs (mini).
    outer_params: str = arg("hazard_words+neuron_outputs", "the weights the outer step trains: "
                            "hazard_words+neuron_outputs (both below) | hazard_words (the embedding and LM-head rows "
                            "of the words of T that the retain data never uses) | neurons (the --outer-neurons MLP "
                            "neurons per layer that fire most on T's facts against the retain data's, in θ0: "
                            "neurons.py) | neuron_outputs (of those, only what each writes) | mlp (each layer's "
                            "MLP) | all (the paper). All but mlp and all: the miniature world only. Attacks always "
                            "move every weight", choices=("hazard_words+neuron_outputs", "hazard_words", "neurons",
                                                          "neuron_outputs", "mlp", "all"))
    name_noise: float = arg(0.0, "σ of disguise.py: during each outer step the input embedding of every name of T "
                                 "is moved by a fresh random offset σ times its length, so the attacker and x_TR "
                                 "meet T's entities as new ones (0: off; the miniature's bio, chem or cyber only)",
                            at_least=0)
    outer_neurons: int = arg(32, "with --outer-params neurons: neurons per layer the outer step trains", above=0)
    outer_optimizer: str = arg("adamw", "outer optimizer: adamw (wd 0) | schedulefree (Schedule-Free AdamW)",
                               choices=("adamw", "schedulefree"))
    outer_lr: float = arg(3e-2, "outer learning rate", above=0)
    outer_eps: float = arg(1e-3, "ε of the outer Adam(W): lr·m/(√v + ε). Near a clipped gradient's typical entry "
                                 "(1e-3 here) weights with small gradients take smaller steps (docs/results.md)",
                          at_least=0)
    outer_warmup: int = arg(0, "outer warmup steps", at_least=0)
    outer_schedule: str = arg("cosine", "outer learning-rate schedule after warmup (adamw): constant | cosine (to 0 "
                                        "at step N: the run ends where its updates have died down; cyber held on "
                                        "4 of 5 seeds, 0 of 3 at a constant lr; docs/results.md)",
                              choices=("constant", "cosine"))
    outer_cosine: float = arg(1.5, "the cosine's length as a multiple of N (1: the lr reaches 0 at step N; 1.5: "
                                   "the run stops at step N of a cosine 1.5 N long, as the snapshot the search "
                                   "picked: docs/search.md round 49)", at_least=1)
    grad_clip: float = arg(1.0, "clip the outer gradient to this norm (0 = off)", at_least=0)
    squared_distance: bool = arg(True, "squared hidden-state distance in the retain loss")
    reference: str = arg("safeguard", "frozen reference of the retain loss: safeguard (θ0) | base (the model θ0 "
                                      "was made from: the miniature's base; with --model the parent θ0's "
                                      "provenance.json or model card names, else θ0) | with --model, a model dir or id",
                         nonempty=True)
    # scale (fsdp.py): memory, accumulation, checkpoints
    micro_batch: int = arg(0, "rows per forward/backward on each process; larger batches are accumulated "
                              "(0 = a process's whole share)", at_least=0)
    snapshot_offload: bool = arg(False, "keep Alg. 1's snapshot in CPU memory (one model copy less on the GPU)")
    loss_chunk: int = arg(0, "apply the LM head this many positions at a time in the entropy TR, LM and attacker "
                             "losses, recomputing each chunk's logits in the backward pass (0 = the whole sequence): "
                             "at 8B the (B, T, 128K) logits are a step's largest activation", at_least=0)
    checkpoint_every: int = arg(10, "write <runs>/<domain>/checkpoint every this many outer steps, and on SIGTERM "
                                    "or Ctrl-C (0 = only then)", at_least=0)
    resume: bool = arg(False, "continue from <runs>/<domain>/checkpoint exactly")
    # reporting
    eval_every: int = arg(20, "measure forget accuracy on the dev group V and benign accuracy on G_dev every this "
                              "many outer steps (0 = never during training; E is never read while training)",
                          at_least=0)
    attack_steps: int = arg(200, "length of each end-of-run attack (evaluated every 25 steps)", above=0)
    relearn_cap: int = arg(400, "most steps of the relearning (E) and learnability (N) fine-tunes (protocol v2; 0 = "
                                "not measured)", at_least=0)
    workers: int = arg(cli.WORKERS, "processes for the end-of-run attacks (one torch thread each; one core stays "
                                    "with TAR)", above=0)
    # earlier stages of the miniature world (cached in <runs>/<domain>/base and safeguard)
    world_entities: int = entities_flag()
    world_t_extra: int = t_extra_flag()
    base_steps: int = arg(2000, "base pretraining steps", above=0)
    safeguard_steps: int = arg(SafeguardConfig.steps, "random-mapping safeguard steps", above=0)

    def validate(self):
        """Every flag in its domain (cli.check: finite, bounds, choices), then the checks that join two flags;
        run before any work, so a bad value never costs a trained base."""
        cli.check(self)  # --domain among them: one of world.WORLDS
        if not self.model and self.reference not in ("safeguard", "base"):
            raise UsageError("--reference takes a model directory or hub id only with --model (here: safeguard, base)")
        if self.outer_warmup >= self.outer_steps:
            raise UsageError("--outer-warmup must be shorter than --outer-steps")
        for flag, value, off in (("--tr-split", self.tr_split, "fixed"), ("--name-noise", self.name_noise, 0.0)):
            if value != off and (self.model or self.domain == "refusal"):  # their presets leave both off
                raise UsageError(f"{flag} {value} reshapes T, the hazardous entities: the miniature's bio, chem or "
                                 "cyber only")
        if self.tr_every > min([self.inner_steps, *self.inner_steps_mix]):
            raise UsageError("--tr-every must not exceed --inner-steps or --inner-steps-mix (no TR point would be "
                             "taken)")
        if self.outer_optimizer == "schedulefree" and self.outer_schedule != "constant":
            raise UsageError("Schedule-Free AdamW has no schedule: use --outer-schedule constant")
        if self.outer_cosine != 1 and self.outer_schedule != "cosine":
            raise UsageError("--outer-cosine is the length of the cosine: use it with --outer-schedule cosine")
        if self.tr_loss == "dpo" and self.domain != "refusal":
            raise UsageError("--tr-loss dpo needs (refusal, compliance) pairs: use it with --domain refusal")
        if self.tr_loss == "dpo" and self.micro_batch % 2:
            raise UsageError("--tr-loss dpo keeps (chosen, rejected) rows together: --micro-batch must be even")
        check_split({"--inner-batch": self.inner_batch, "--retain-batch": self.retain_batch,
                     "--tr-batch": self.tr_batch * (2 if self.tr_loss == "dpo" else 1)}, self.micro_batch)  # DPO: pairs
        if self.model and self.retain_data != "Rt":
            raise UsageError("--retain-data benign is the miniature world's (Rt and the rivers); with --model: Rt")
        if self.tr_entropy != "vocab" and (self.model or self.tr_loss != "entropy" or self.tr_mask != "fact"):
            raise UsageError("--tr-entropy values/values_ce need the miniature world's fact positions: --tr-mask fact, "
                             "--tr-loss entropy, no --model")
        if self.outer_params not in ("mlp", "all") and (self.model or self.tr_loss != "entropy"):
            raise UsageError(f"--outer-params {self.outer_params} selects by the miniature world's facts: no "
                             "--model, no --tr-loss dpo")
        if self.model and self.tr_mask == "fact" and self.tr_loss == "entropy":
            raise UsageError("real text has no fact positions: use --tr-mask tokens or all with --model")

    def training_settings(self) -> dict:
        """What a cache key of the trained model holds: every training setting, less those added since at the value
        that trained every earlier run (ADDED), so that adding a setting leaves earlier keys as they were."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_TRAINING and not (k in ADDED and v == ADDED[k])}

    def changed_since(self, saved: dict) -> list[str]:
        """The training settings of a checkpoint's config (asdict) that differ from these: --resume refuses them."""
        now, saved = asdict(self), {**ADDED, **saved}  # a setting it does not record: ADDED's value, else changed
        return [k for k in {**saved, **now} if k not in NOT_TRAINING and (k not in saved or now.get(k) != saved[k])]

    def world(self) -> WorldConfig | RealWorldConfig:
        if self.model:
            return RealWorldConfig(self.domain, self.model, self.data_dir, self.seq_len, self.max_docs,
                                   self.wmdp_revision or None, self.mmlu_shots)
        return world_config(self.domain, self.world_entities, self.world_seed, self.world_t_extra)

    def reference_model(self) -> tuple[str, str]:
        """With --model: (the model the retain loss's frozen reference loads, why that one)."""
        if self.reference not in ("safeguard", "base"):
            return self.reference, "--reference"
        parent = recorded_parent(self.model) if self.reference == "base" else None
        return (parent, "θ0's recorded parent") if parent else \
            (self.model, "θ0" + (" (it records no parent model)" if self.reference == "base" else ""))

    def datasets(self) -> list[str]:
        """The hub datasets a real run reads (its model card), WMDP at --wmdp-revision; none in the miniature."""
        return hub_datasets(self.domain, self.wmdp_revision) if self.model else []

    def train_attacks(self) -> TrainAttacks:
        return TrainAttacks(lrs=tuple(self.inner_lrs), steps=(self.inner_steps, *self.inner_steps_mix),
                            batch_size=self.inner_batch, retain_then_forget=self.retain_then_forget,
                            forget=attack_splits(self.domain) if self.model else ("T_inner",))  # real bio: 2


# The settings that leave the trained weights as they are: a resumed run may change them (a moved run directory,
# more workers, a longer end-of-run attack or another order of its data)
NOT_TRAINING = ("runs", "resume", "checkpoint_every", "workers", "attack_steps", "attack_seed", "relearn_cap",
                "wmdp_revision", "mmlu_shots")  # WMDP and MMLU are only scored
# Settings added after runs were first saved -> the value that trained every run saved before them (changed_since,
# training_settings); a world setting's is the world's own (world.ADDED; its flag is --world-<name>)
ADDED = {"tr_split": "fixed", "name_noise": 0.0, "inner_steps_mix": [], "outer_cosine": 1.0,
         **{f"world_{name}": value for name, value in world.ADDED.items()}}
# The paper's hyperparameters (docs/paper.md §4, official code, bio), in one place: --preset paper. Where our
# miniature default differs, a `# deviation:` marker says why (docs/deviations.md).
PAPER = dict(outer_steps=750, inner_steps=64, tr_every=4, tr_weights="paper", tr_mask="all", tr_entropy="vocab",
             outer_params="all", retain_data="Rt",
             inner_lrs=[2e-6, 2e-5, 4e-5], inner_batch=32, retain_then_forget=1 / 3, tr_batch=64, retain_batch=64,
             lambda_tr=4.0, lambda_retain=1.0, outer_optimizer="schedulefree", outer_lr=2e-5, outer_eps=1e-8,
             outer_warmup=32, outer_schedule="constant", grad_clip=0.0, squared_distance=False, reference="base",
             seq_len=256, tr_split="fixed")  # fixed: with --model, the datasets' own attack and x_TR splits
PAPER_DOMAIN = {"cyber": dict(inner_lrs=[2e-5, 4e-5], retain_then_forget=1 / 2),  # forget, retain→forget (½ each)
                "chem": dict(inner_lrs=[2e-5, 4e-5], lambda_tr=3.0),
                "refusal": dict(tr_loss="dpo", outer_steps=100, retain_then_forget=0.0)}  # Sec. 5: N = 100
# The miniature refusal world's own defaults (given flags still override them), from a short sweep
# (docs/refusal.md): outer lr 1e-2 broke refusal and harmless answers, 1e-3 resisted little; longer inner attacks (K)
# resist longer and cost harmless accuracy, which λ_retain buys back. It was measured with the knowledge worlds'
# earlier defaults (every weight trained, ε 1e-8, a TR point every 4 inner steps weighed alike, x_r from Rt, the
# vocabulary's entropy, a constant outer lr) and keeps them.
MINI_DOMAIN = {"refusal": dict(tr_loss="dpo", outer_steps=100, inner_steps=128, outer_lr=3e-3, lambda_retain=16.0,
                               tr_every=4, tr_weights="uniform", tr_entropy="vocab", retain_data="Rt", outer_eps=1e-8,
                               outer_params="all", outer_schedule="constant", lambda_tr=4.0, tr_split="fixed",
                               inner_batch=16)}
# The miniature defaults that read the built-in world's facts or families, and what --preset mini takes instead with
# a real --model (the miniature recipe before the dev-split search: every fact position's vocabulary entropy, the
# retain corpus, the MLPs)
MINI_REAL = dict(tr_entropy="vocab", retain_data="Rt", outer_params="mlp", tr_split="fixed")


def configure(**given) -> TARConfig:
    """The config from the flags a user gave: the preset's values (paper with a real --model unless a preset
    is named), then every given flag on top (`tar.configure(model=..., preset="mini", outer_steps=2)`)."""
    preset = given["preset"] if "preset" in given else "paper" if given.get("model") else "mini"
    domain = given.get("domain", "bio")
    values = {**PAPER, **PAPER_DOMAIN.get(domain, {})} if preset == "paper" else \
        {**(MINI_REAL if given.get("model") else {}), **MINI_DOMAIN.get(domain, {})}
    if given.get("outer_optimizer") == "schedulefree":  # it has no schedule: the mini preset's cosine does not apply
        values = {**values, "outer_schedule": "constant"}
    if {**values, **given}.get("outer_schedule") == "constant":  # no cosine, so no cosine's length to set apart
        values = {**values, "outer_cosine": 1.0}
    return TARConfig(**{**values, **given, "preset": preset})


def paper_value(f) -> str:
    """--help's note on a field: the miniature refusal world's own default, and the paper's value."""
    mini = "; ".join(f"{dom} {v[f.name]}" for dom, v in MINI_DOMAIN.items() if f.name in v)
    overrides = "".join(f"; {dom} {v[f.name]}" for dom, v in PAPER_DOMAIN.items() if f.name in v)
    return (f" [mini {mini}]" if mini else "") + (f" [paper: {PAPER[f.name]}{overrides}]" if f.name in PAPER else "")


def parse_args(argv=None) -> TARConfig:
    given = cli.flags(TARConfig, argv, "TAR (Alg. 1): on the built-in miniature world, or on any Hugging Face "
                                       "causal LM with --model (under torchrun: FSDP2).", paper_value)
    real_only = [k for k in ("data_dir", "seq_len", "max_docs", "wmdp_revision", "mmlu_shots")
                 if k in given and not given.get("model")]
    if real_only:  # the miniature world has no such setting: a flag given and silently ignored misleads
        raise UsageError(f"{', '.join(cli.flag(k) for k in real_only)} only apply to a real --model")
    return configure(**given)