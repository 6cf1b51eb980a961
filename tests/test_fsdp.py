"""Real scale on CPU: tar.py --model under `torchrun --nproc_per_node 2` (FSDP2, gloo) equals one process with the
same global batch and seed (its LM head in chunks), for a tiny Llama and a tiny GPT-2, and so do stage 1
(safeguard.py --model), the red team (evaluate.py --model, the paper's attacks) and a LoRA attack; SIGTERM +
--resume under FSDP and SIGKILL + --resume in one process equal an uninterrupted run; the saved model reloads and
scores the same; the retain reference; presets; the memory estimate. Nine torchrun launches in all (most check
several things)."""

import json
import math
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import cli
import config
import evaluate
import fsdp
import ranks
import realdata
import realworld
import report
import safeguard
import scoring
import tar
from conftest import cli_error

ROOT = Path(__file__).resolve().parents[1]
# Tiny everything; micro-batch 1 so the 2 ranks and the single process see the same micro-batches. Outer lr 1e-3:
# a parameter whose true gradient is 0 (GPT-2's key bias) gets reduction-order noise that Adam scales to ~lr.
SMALL = dict(preset="mini", tr_mask="tokens", inner_steps=4, tr_every=2, inner_batch=4, tr_batch=4, retain_batch=4,
             micro_batch=1, seq_len=32, eval_every=0, outer_lr=1e-3)


def flags(**kw) -> list[str]:
    out = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [flag, str(v)]
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    fx = realdata.write_fixtures(root / "fx")
    return root, fx, {a: realdata.tiny_model(root / a, a) for a in ("llama", "gpt2")}


def single(root, fx, model, name, domain="bio", **kw) -> Path:
    """An in-process (single) run; returns its run directory."""
    cfg = config.configure(model=str(model), data_dir=str(fx), runs=str(root / name), domain=domain, **{**SMALL, **kw})
    tar.run(cfg, log=lambda *_: None)
    return root / name / domain


def why(out: str) -> str:
    """A failed launch's output for the assertion message: the lines that say why (a Python error, gloo's abort
    message, torchrun's summary of the failed rank), which a long tail can push out, then the tail itself."""
    said = [line for line in out.splitlines() if re.search(r"Error|Traceback|terminate called|what\(\)|enforce fail|"
                                                              r"Signal \d+|exitcode", line)]
    return "\n".join(said[:40]) + "\n...\n" + out[-2000:]


def torchrun(args: list[str], script: str = "tar.py", **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / script), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def max_diff(a: Path, b: Path, model: str = "tar") -> float:
    x, y = load_file(a / model / "model.safetensors"), load_file(b / model / "model.safetensors")
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_sigterm_and_resume_under_fsdp_equal_an_uninterrupted_run(setup):
    root, fx, models = setup
    args = flags(model=models["llama"], data_dir=fx, runs=root / "sig", outer_steps=12, checkpoint_every=2, **SMALL)
    proc = torchrun(args, start_new_session=True)
    ckpt = root / "sig" / "bio" / "checkpoint"
    deadline = time.time() + 240
    while not (ckpt / "rank1.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "stopped by SIGTERM after outer step" in out, why(out)
    stopped = torch.load(ckpt / "rank0.pt", weights_only=True)["step"]
    assert 2 <= stopped < 12
    proc = torchrun(args + ["--resume"])
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "resumed after outer step" in out, why(out)
    lines = (root / "sig" / "bio" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 13))  # redone steps are not doubled
    ref = single(root, fx, models["llama"], "sig_ref", outer_steps=12)
    assert max_diff(ref, root / "sig" / "bio") <= 1e-5


def test_kill_and_resume_in_one_process_is_exact(setup):
    """SIGKILL (no warning) at a random outer step, then --resume from the default checkpoints (every 10 steps):
    the same weights as never stopping. Schedule-Free AdamW as the outer optimizer, so its state and train/eval
    switch go through the checkpoint."""
    root, fx, models = setup
    kill_at = random.Random().randint(11, 19)  # a fresh draw each run; printed on failure
    kw = dict(SMALL, outer_steps=24, outer_optimizer="schedulefree", outer_warmup=4)
    args = [sys.executable, str(ROOT / "tar.py"), *flags(model=models["llama"], data_dir=fx, runs=root / "kill", **kw)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = root / "kill" / "bio" / "metrics.partial.jsonl"
    while proc.poll() is None and not (log.exists() and len(log.read_text().splitlines()) >= kill_at):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before step {kill_at}"
    killed_at = torch.load(root / "kill" / "bio" / "checkpoint" / "rank0.pt", weights_only=True)["step"]
    assert killed_at % 10 == 0 and 10 <= killed_at <= kill_at + 2 and not (root / "kill" / "bio" / "tar").exists()
    (root / "kill").rename(root / "moved")  # a run directory moved (or spelled differently) still resumes
    args = [sys.executable, str(ROOT / "tar.py"), *flags(model=models["llama"], data_dir=fx, runs=root / "moved", **kw)]
    done = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, why(done.stderr)
    ref = single(root, fx, models["llama"], "kill_ref", outer_steps=24, outer_optimizer="schedulefree", outer_warmup=4)
    assert max_diff(ref, root / "moved" / "bio") == 0.0, kill_at  # exactly the uninterrupted run
    # a changed training setting is refused rather than silently mixed into the resumed run
    bad = subprocess.run(args + ["--outer-lr", "0.5", "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "other settings (outer_lr)" in bad.stderr


@pytest.mark.parametrize("arch, domain", [("llama", "bio"), ("gpt2", "cyber")])
def test_the_three_commands_under_fsdp_equal_one_process(setup, arch, domain):
    """The real-scale pipeline, each command as docs/scale.md gives it, on 2 gloo ranks and in one process, for a
    Llama and a GPT-2 (tied embeddings, Conv1D, transformer.h). 1. safeguard.py --model: random mapping on the
    real corpora by the same defend loop, equal to 1e-5; the saved θ0 names its parent, so 2. tar.py --reference
    base (the paper preset's) trains against the original: equal to 1e-5 (the sharded run applies the LM head in
    chunks of 8 positions, --loss-chunk, against the single process's whole logits; FSDP2 without chunks is the
    SIGTERM test's), its gathered model reloads under its own class and scores what the sharded one did. 3.
    evaluate.py --model on TAR's output (its world from the provenance): two of the paper's attacks, cut to 4
    steps and scored every 2, sharded over 2 gloo ranks (FSDP2, micro-batches of 1 row, the attacker's LM head in
    chunks of 3) give the same curves on WMDP and MMLU as one process, the attacker's loss included; the paper's LoRA attack runs sharded too (its
    dropout masks are each rank's own: its points are recorded at the same steps and tokens;
    test_lora_attacks_and_chunked_losses_under_fsdp_equal_one_process checks its weights)."""
    root, fx, models = setup
    base, root = models[arch], root / arch
    kw = dict(model=base, data_dir=fx, domain=domain, seq_len=32, micro_batch=1, safeguard_steps=3)
    safeguard.main(flags(runs=root / "sg_single", **kw))
    proc = torchrun(flags(runs=root / "sg_fsdp", **kw), script="safeguard.py")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, why(out)
    single_run, sharded_run = root / "sg_single" / domain, root / "sg_fsdp" / domain
    assert max_diff(single_run, sharded_run, "safeguard") <= 1e-5
    theta0 = sharded_run / "safeguard"
    moved, start = load_file(theta0 / "model.safetensors"), load_file(base / "model.safetensors")
    assert max((moved[k] - start[k]).abs().max().item() for k in start) > 1e-5  # stage 1 did move the weights
    saved = json.loads((theta0 / "provenance.json").read_text())
    assert saved["parent"] == str(base) and saved["config"]["per"] == "token" and saved["config"]["absolute"]
    assert f'base_model: "{base}"' in (theta0 / "README.md").read_text()
    assert config.configure(model=str(theta0)).reference_model() == (str(base), "θ0's recorded parent")
    if arch == "llama":
        with pytest.raises(cli.UsageError, match="--method random_mapping"):
            safeguard.build_real(safeguard.SafeguardArgs(model=str(base), method="rmu"))
        # the miniature's stage 1 never retrains over a real θ0 in the same directory
        with pytest.raises(cli.UserError, match="holds a safeguard of a real model"):
            safeguard.build(safeguard.SafeguardArgs(runs=str(root / "sg_single"), world_entities=4, base_steps=2))

    ref = single(root, fx, theta0, "tar_single", domain, reference="base", outer_steps=2)
    proc = torchrun(flags(model=theta0, data_dir=fx, runs=root / "tar_fsdp", domain=domain, reference="base",
                          outer_steps=2, loss_chunk=8, **SMALL))
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, why(out)
    run = root / "tar_fsdp" / domain
    assert max_diff(ref, run) <= 1e-5
    first = [json.loads((r / "metrics.jsonl").read_text().splitlines()[0]) for r in (ref, run)]
    assert first[0]["grad_norm"] == pytest.approx(first[1]["grad_norm"], rel=1e-6)  # step 1's gradient
    tarred = load_file(run / "tar" / "model.safetensors")
    assert max((tarred[k] - moved[k]).abs().max().item() for k in moved) > 1e-3  # TAR did move the weights
    assert json.loads((run / "tar" / "provenance.json").read_text())["parent"] == str(theta0)
    # the gathered model loads with transformers under its own class and scores what the sharded one did
    assert json.loads((run / "tar" / "config.json").read_text())["architectures"] == [
        {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[arch]]
    reloaded = AutoModelForCausalLM.from_pretrained(run / "tar", dtype=torch.float32)
    world = realworld.load_real_world(realworld.RealWorldConfig(domain, str(run / "tar"), str(fx), SMALL["seq_len"]))
    in_memory = json.loads((run / "results.json").read_text())["models"]["tar"]["at_rest"]
    assert report.at_rest(reloaded, world, scoring.reported(world)) == in_memory
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2] and all(abs(m["tr_loss"]) > 0 for m in steps)

    attacks = ["--attacks", "A1_adamw_4e-5_1000", "A2_r2f_2e-5_1000", "A8_lora16_1e-4_1000"]
    args = [*flags(model=run / "tar", steps=4, every=2, seeds=1, micro_batch=1), *attacks]
    evaluate.main([*args, "--out", str(root / "rt_single"), "--workers", "1"])
    proc = torchrun([*args, "--out", str(root / "rt_fsdp"), "--loss-chunk", "3"], script="evaluate.py")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, why(out)
    single_rt, sharded_rt = (json.loads((root / r / "results.json").read_text())["runs"]
                             for r in ("rt_single", "rt_fsdp"))
    assert single_rt.keys() == sharded_rt.keys() and len(sharded_rt) == 3
    for key, run in sharded_rt.items():
        assert run["attack"].endswith("_1000@4") and [p["step"] for p in run["curve"]] == [0, 2, 4]
        assert run["diverged"] is None and all(math.isfinite(p.get("loss", 0)) for p in run["curve"])
        for a, b in zip(single_rt[key]["curve"], run["curve"], strict=True):  # steps, tokens, accuracies; loss
            if "lora" in key:  # dropout: the same points, not the same numbers
                assert (a["step"], a["tokens"]) == (b["step"], b["tokens"]), key
                continue
            assert a == {**b, **({"loss": pytest.approx(b["loss"], rel=1e-5)} if "loss" in b else {})}, key


def test_lora_attacks_and_chunked_losses_under_fsdp_equal_one_process(setup):
    """One launch of tests/ranks.py on 2 gloo ranks, for a Llama and a GPT-2 (tied head, Conv1D projections):
    - LoRA: peft's adapters are injected into the sharded model, whole on each rank; their gradients are averaged
      over the ranks (without it the weights differ by 7e-4) and each rank merges its rows of ΔW into its shards.
      Three steps leave the weights of one process (≤ 1e-5); no adapter is left.
    - Logits in chunks (--loss-chunk 3): the gradient of every weight of the entropy TR + LM + retain loss, sharded
      and chunked, equals one process's with whole logits (≤ 1e-6)."""
    root, _, models = setup
    args = []
    for arch, path in models.items():
        ranks.lora_attack(path, root / f"lora_{arch}_single.safetensors")
        ranks.chunked_grads(path, root / f"grads_{arch}_single.safetensors")
        args += ["lora", str(path), str(root / f"lora_{arch}_fsdp.safetensors")]
        args += ["chunked3", str(path), str(root / f"grads_{arch}_fsdp.safetensors")]
    proc = torchrun(args, script="tests/ranks.py")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, why(out)
    for arch, path in models.items():
        single, sharded = (load_file(root / f"lora_{arch}_{how}.safetensors") for how in ("single", "fsdp"))
        start = load_file(path / "model.safetensors")
        assert single.keys() == sharded.keys() and set(start) <= set(single), arch  # no lora_A/lora_B left
        assert max((single[k] - sharded[k]).abs().max().item() for k in single) <= 1e-5, arch
        assert max((single[k] - start[k]).abs().max().item() for k in start) > 1e-4, arch  # the attack moved them
        whole, chunked = (load_file(root / f"grads_{arch}_{how}.safetensors") for how in ("single", "fsdp"))
        assert whole.keys() == chunked.keys() and all(g.abs().max() > 0 for g in whole.values()), arch
        assert max((whole[k] - chunked[k]).abs().max().item() for k in whole) <= 1e-6, arch


def test_the_retain_reference_is_theta0_its_recorded_parent_or_a_given_model(setup):
    root, fx, models = setup
    theta0, parent = root / "theta0", realdata.tiny_model(root / "parent", "llama", seed=1)  # another base
    shutil.copytree(models["llama"], theta0)
    (theta0 / "provenance.json").write_text(json.dumps({"what": "random_mapping safeguard", "parent": str(parent)}))
    of = lambda **kw: config.configure(model=str(theta0), **kw).reference_model()
    assert of(reference="base") == (str(parent), "θ0's recorded parent") == of()  # the paper preset's reference
    assert of(reference="safeguard") == (str(theta0), "θ0")
    assert of(reference=str(parent)) == (str(parent), "--reference")
    card = root / "carded"  # no provenance.json: the model card's base_model names the parent
    shutil.copytree(models["llama"], card)
    (card / "README.md").write_text(f'---\nbase_model: "{parent}"\nlibrary_name: transformers\n---\n# θ0\n')
    assert config.configure(model=str(card), reference="base").reference_model()[0] == str(parent)
    assert config.configure(model=str(models["llama"]), reference="base").reference_model() == \
        (str(models["llama"]), "θ0 (it records no parent model)")
    with pytest.raises(cli.UserError, match="only with --model"):
        config.configure(reference=str(parent)).validate()
    # the run trains against it: at outer step 1 θ is θ0, so the hidden-state distance is 0 to θ0 alone
    rep = {}
    for reference in ("safeguard", "base"):
        run = single(root, fx, theta0, f"ref_{reference}", outer_steps=1, reference=reference)
        rep[reference] = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["retain_rep"]
    assert rep["safeguard"] == pytest.approx(0.0, abs=1e-10) and rep["base"] > 1e-3


def test_bad_batch_arithmetic_fails_before_any_work(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "8")  # as torchrun --nproc_per_node 8 sets it
    # the paper preset's attacker batch 32 is 4 rows a rank: micro-batches of 16 cannot be cut from it
    code, line = cli_error(capsys, tar.main, ["--model", "no/such/model", "--micro-batch", "16"])
    assert code == 2 and line.startswith("error: --inner-batch 32 rows do not split over 8 process(es) in "
                                         "micro-batches of 16")
    config.configure(model="m", micro_batch=4).validate()  # 4 rows a rank: fits
    code, line = cli_error(capsys, safeguard.main, ["--model", "no/such/model", "--micro-batch", "3"])
    assert code == 2 and "the safeguard's batches of 32 rows do not split over 8" in line  # not a load error


def test_presets_and_flag_precedence():
    mini = config.configure()
    assert mini.preset == "mini" and mini.outer_optimizer == "adamw" and mini.inner_steps == 192
    paper = config.configure(model="some/model")  # a real model implies the paper's hyperparameters
    assert (paper.preset, paper.outer_optimizer, paper.outer_lr, paper.inner_steps, paper.lambda_retain,
            paper.tr_mask, paper.outer_warmup) == ("paper", "schedulefree", 2e-5, 64, 1.0, "all", 32)
    for eps in (1e-8, 1e-3):  # --outer-eps reaches the outer optimizer
        opt, _ = tar.outer_optimizer(torch.nn.Linear(2, 2), config.configure(outer_eps=eps, outer_params="all"))
        assert opt.param_groups[0]["eps"] == eps and opt.param_groups[0]["lr"] == mini.outer_lr
    assert config.configure(model="m", domain="chem").lambda_tr == 3.0  # per-domain paper value
    assert config.configure(model="m", domain="cyber").inner_lrs == [2e-5, 4e-5]
    assert config.parse_args(["--model", "m", "--inner-steps", "8"]).inner_steps == 8  # a given flag wins
    assert config.parse_args(["--model", "m", "--preset", "mini", "--tr-mask", "all"]).inner_steps == 192
    with pytest.raises(cli.UserError, match="no fact positions"):
        config.configure(model="m", preset="mini").validate()
    with pytest.raises(cli.UserError, match="--retain-data benign is the miniature world's"):
        config.configure(model="m", retain_data="benign", tr_mask="tokens").validate()
    with pytest.raises(cli.UserError, match="no schedule"):
        config.configure(outer_optimizer="schedulefree", outer_schedule="cosine").validate()
    # the mini preset decays the outer lr by cosine to 0 at step N; Schedule-Free and refusal keep a constant lr
    assert config.configure(outer_optimizer="schedulefree").outer_schedule == "constant"
    assert config.configure(domain="refusal").outer_schedule == "constant" and paper.outer_schedule == "constant"

    def lrs(**given):
        opt, schedule = tar.outer_optimizer(torch.nn.Linear(2, 2), config.configure(outer_params="all", **given))
        for _ in range(given["outer_steps"]):
            opt.step()
            schedule.step()
            yield opt.param_groups[0]["lr"]
    full = list(lrs(outer_steps=16, outer_cosine=1.0))
    assert mini.outer_schedule == "cosine" and full[7] == pytest.approx(mini.outer_lr / 2) and full[-1] == 0.0
    # the default stops at N, two thirds of the way down a cosine 1.5 N long: the first N steps of the longer run
    assert mini.outer_cosine == 1.5 and list(lrs(outer_steps=8)) == list(lrs(outer_steps=12, outer_cosine=1.0))[:8]
    with pytest.raises(cli.UsageError, match="--outer-cosine"):
        config.configure(outer_schedule="constant", outer_cosine=1.5).validate()
    # a constant lr (given, the paper's, refusal's, Schedule-Free's) has no cosine: the default's 1.5 does not apply
    for given in (dict(outer_schedule="constant"), dict(model="m"), dict(domain="refusal"),
                  dict(outer_optimizer="schedulefree")):
        assert config.configure(**given).outer_cosine == 1.0, given


def test_memory_estimate_from_the_config_alone():
    from transformers import AutoConfig
    config = AutoConfig.for_model(**fsdp.LLAMA3_8B)
    P = fsdp.count_parameters(config)
    assert 8.02e9 < P < 8.04e9  # Llama-3-8B: 8.03B
    est = fsdp.memory_estimate(config, 8, 4, 256)
    assert est["parameters"] == pytest.approx(4 * P / 8 / 2**30)
    assert est["inner AdamW state"] == est["outer optimizer state"] == pytest.approx(2 * est["parameters"])
    offload = fsdp.memory_estimate(config, 8, 4, 256, snapshot_offload=True)
    assert est["total"] - offload["total"] == pytest.approx(est["parameters"])
    assert fsdp.memory_estimate(config, 8, 8, 256)["activations"] == pytest.approx(2 * est["activations"])
    assert "fits a 80 GiB card" in fsdp.format_estimate(est, "llama3-8b", 8, 80)
    assert "does NOT fit a 16 GiB card" in fsdp.format_estimate(est, "llama3-8b", 8, 16)

