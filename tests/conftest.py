"""Shared set-up: one torch thread (two busy threads on a 2-core box run ~10x slower), no hub access, and
ONE session-scoped pipeline on a reduced world that every accuracy test reads."""

import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="hf-datasets-"))  # never the user's cache
os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses (torchrun workers) too
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

import redteam  # noqa: E402
import report  # noqa: E402
import safeguard  # noqa: E402
import scoring  # noqa: E402
import storage  # noqa: E402
import tar  # noqa: E402
import candidates  # noqa: E402
from workers import Workers, result  # noqa: E402
from world import WorldConfig, build_world  # noqa: E402

# The reduced world and budgets of the shared pipeline (full size: 30 entities per group, 2000 base steps,
# 250 safeguard steps, 100 outer steps of a 150-step cosine at K = 192 with a TR point every 24). Here 30 outer
# steps of a 45-step cosine, K = 48 with a TR point every 6 (8 points, as at full size, against a 50-step attack as 192
# against 200); everything else is the defaults but T's halves, by entity (--tr-split fixed): in this world of 12
# entities per group the default split by document held the attack better (peak 32.9% against 43.3%) and kept G_test
# at rest at 85.0%, on the issue's bound, where by entity it keeps 93.8% (2026-12-05, an AMD EPYC, with round 43's
# defaults: 45 outer steps, λ_TR 4); at full size both keep G_test ≥ 94.8% (docs/search.md).
MINI = dict(world_entities=12, base_steps=550, safeguard_steps=120, outer_steps=30, inner_steps=48, tr_every=6,
            attack_steps=50, tr_split="fixed")
# The negative control of the G thresholds: the defaults before the dev-split search (candidates.BEFORE), at the
# reduced budget the pipeline gave them (45 outer steps, K = 12, a TR point every 4)
BEFORE = {**MINI, **candidates.BEFORE, "outer_steps": 45, "inner_steps": 12, "tr_every": 4}


def cli_error(capsys, main, argv) -> tuple[int, str]:
    """Runs a script's `main(argv)` in-process, expecting it to stop on bad input: returns its exit code and its
    one `error:` line, after checking that stderr holds exactly one such line and no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err, code = capsys.readouterr().err, e.value.code
    if isinstance(code, str):  # sys.exit("error: ...") prints the message and exits with 1
        err, code = err + code + "\n", 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return code, errors[0]


def tiny_model(vocab_size=40, width=16, layers=2, seed=0):
    """A random 2-layer Llama small enough for exact gradient checks."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg)


def fact_attributes(world, tokens) -> set[str]:
    """The attributes whose values `tokens` (a split) states: the next tokens of its fact positions, by value."""
    from domains import DOMAINS
    of = {v: a for a, (values, _) in DOMAINS[world.config.domain].attributes.items() for v in values}
    ids = {i for r, f in zip(tokens.ids, tokens.fact) for i in r[1:][f[:-1]].tolist()}
    return {of[world.tokenizer.convert_ids_to_tokens(i).lstrip("▁")] for i in ids}


# `python tar.py` on a tiny world with tiny budgets (seconds): the smoke test's run, and seeds.py's
SMOKE = ["--domain", "chem", "--world-entities", "4", "--base-steps", "30", "--safeguard-steps", "5",
         "--outer-steps", "3", "--inner-steps", "4", "--tr-every", "2", "--attack-steps", "10",
         "--eval-every", "2", "--relearn-cap", "10"]


def smoke_run(runs: Path, *extra: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`python tar.py` with SMOKE's flags and `extra` under `runs`: (its run directory, the finished process)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tar.py"), *SMOKE, "--runs", str(runs), *extra],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Path(runs) / "chem", proc


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """One smoke run, shared: test_tar checks its files, test_seeds studies its seeds."""
    return smoke_run(tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="session")
def small_world():
    """A small world for fast unit tests (not trained on)."""
    return build_world(WorldConfig(domain="bio", n_group=6, n_retain_train=6, n_retain_heldout=4,
                                   n_unrelated=4, n_general=4, n_new=4, docs_per_entity=4))


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """Base (and the oracle, on the second core) -> safeguard -> TAR on a reduced world, then the reference attack
    on each (the models before TAR on the second core while TAR trains), all measured once. Returns the models,
    the world and every accuracy the accuracy tests assert on."""
    cfg = tar.TARConfig(runs=str(tmp_path_factory.mktemp("runs")), **MINI)
    cfg.validate()
    world = build_world(cfg.world())
    run_dir = Path(cfg.runs) / cfg.domain
    run_dir.mkdir(parents=True)
    log = lambda *a: None
    stage1 = safeguard.for_method("random_mapping", steps=cfg.safeguard_steps)  # TAR's stage 1, as tar.py's
    base, key, theta0 = safeguard.stage_one(world, safeguard.BaseConfig(steps=cfg.base_steps), stage1, run_dir, log)
    ref_attack = report.end_of_run_attacks(cfg.attack_steps)[0]
    with Workers(1) as pool:  # the saved models are attacked on the second core while TAR trains on this one
        jobs = {n: pool.submit(redteam.run_job, redteam.Job(n, str(run_dir / n), ref_attack, world.config, every=25))
                for n in ("base", "oracle", "safeguard")}
        before = pool.submit(before_job, (cfg.runs, ref_attack))
        model = copy.deepcopy(theta0)
        tar.train_tar(model, copy.deepcopy(theta0), world, cfg, run_dir, log=log)
        untrained = safeguard.new_model(len(world.tokenizer), safeguard.ModelConfig(), world.tokenizer, seed=1)
        curves = {n: redteam.attack_curve(m, ref_attack, world, seed=0, every=25)
                  for n, m in {"untrained": untrained, "tar": model}.items()}
        curves.update({n: result(job)["curve"] for n, job in jobs.items()})
        before = result(before)
    models = {"untrained": untrained, "base": base, "oracle": storage.load_model(run_dir / "oracle"),
              "safeguard": theta0, "tar": model}
    at_rest = {n: scoring.accuracies(m, world, scoring.REPORTED) for n, m in models.items()}
    at_rest["tar_before"], curves["tar_before"] = before
    return {"world": world, "models": models, "at_rest": at_rest, "curves": curves, "cfg": cfg}


def before_job(job: tuple) -> tuple[dict, list]:
    """In a worker: TAR with the defaults before the search (BEFORE) from the pipeline's saved θ0, then the
    pipeline's reference attack: (accuracies at rest, the attack's curve)."""
    runs, attack = job
    torch.set_num_threads(1)
    cfg = tar.TARConfig(runs=runs, **BEFORE)
    world, run_dir = build_world(cfg.world()), Path(runs) / cfg.domain / "tar_before"
    run_dir.mkdir()
    model = storage.load_model(run_dir.parent / "safeguard")
    tar.train_tar(model, copy.deepcopy(model), world, cfg, run_dir, log=lambda *a: None)
    return scoring.accuracies(model, world, scoring.REPORTED), redteam.attack_curve(model, attack, world, seed=0,
                                                                                     every=25)
