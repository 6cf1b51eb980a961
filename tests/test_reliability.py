"""Never report a broken model as a defence: a diverged run stops with one line and writes nothing, a failed
rerun keeps the last run's files, damaged files are one line each, Ctrl-C and SIGKILL leave no worker behind,
a diverged attack is the attacker's failure, and the tokenizer keeps the spaces of what a model generates."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import adversary
import cli
import plots
import protocol
import redteam
import safeguard
import search
import storage
import tar
from conftest import cli_error, tiny_model

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--domain", "chem", "--world-entities", "4", "--base-steps", "30", "--safeguard-steps", "5",
         "--outer-steps", "3", "--inner-steps", "4", "--tr-every", "2", "--attack-steps", "10", "--eval-every", "2",
         "--relearn-cap", "0", "--workers", "1"]  # relearning and learnability: tests/test_tar.py's smoke run


def snapshot(run: Path) -> dict:
    """The files a finished run leaves, by content."""
    return {name: (run / name).read_bytes() for name in ("metrics.jsonl", "results.json", "tar/model.safetensors")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (tar.py in-process), with a checkpoint of every step."""
    runs = tmp_path_factory.mktemp("runs")
    tar.main(SMOKE + ["--runs", str(runs), "--checkpoint-every", "1"])
    return runs


def test_a_diverged_run_writes_nothing_and_a_failed_rerun_keeps_the_last_run(finished, tmp_path, capsys,
                                                                              monkeypatch):
    runs = tmp_path / "runs"
    shutil.copytree(finished, runs)
    run, before = runs / "chem", snapshot(runs / "chem")
    argv = SMOKE + ["--runs", str(runs), "--outer-steps", "5", "--checkpoint-every", "1"]
    # a NaN forced into the TR loss at outer step 3 (2 TR points per step: K = 4, a point every 2)
    real, calls = tar.tr_loss, []
    monkeypatch.setattr(tar, "tr_loss", lambda *a: real(*a) * (float("nan") if len(calls.append(1) or calls) > 4
                                                               else 1.0))
    code, line = cli_error(capsys, tar.main, argv)
    assert code == 1 and "TAR diverged at outer step 3" in line and "checkpoint of outer step 2 is kept" in line
    assert snapshot(run) == before  # no model, no results, and the last run's metrics.jsonl intact
    assert torch.load(run / "checkpoint" / "rank0.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(tar, "tr_loss", real)
    shutil.copytree(run / "checkpoint", tmp_path / "kept")
    shutil.copy(run / "metrics.partial.jsonl", tmp_path / "kept")
    # a legal but unwise outer lr on every weight starts, and stops where it diverges
    code, line = cli_error(capsys, tar.main, argv + ["--outer-lr", "1e3", "--outer-params", "all"])
    assert code == 1 and "TAR diverged at outer step" in line and snapshot(run) == before
    # the checkpoint of the NaN run (same settings) resumes; a torn last metrics line (a kill mid-write) is dropped
    # and a damaged cached base is rebuilt, not trusted
    shutil.rmtree(run / "checkpoint")
    shutil.copytree(tmp_path / "kept", run / "checkpoint")
    shutil.move(run / "checkpoint" / "metrics.partial.jsonl", run / "metrics.partial.jsonl")
    torch.save({"step": 3}, run / "checkpoint" / "rank0.pt")  # a checkpoint from elsewhere: refused
    code, line = cli_error(capsys, tar.main, argv + ["--resume"])
    assert code == 1 and "lacks config" in line
    shutil.copy(tmp_path / "kept" / "rank0.pt", run / "checkpoint" / "rank0.pt")
    with open(run / "metrics.partial.jsonl", "a") as f:
        f.write('{"step": 3, "tr_lo')
    (run / "base" / "model.safetensors").write_bytes((run / "base" / "model.safetensors").read_bytes()[:100])
    tar.main(argv + ["--resume"])
    assert "base: " in capsys.readouterr().out
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert storage.load_model(run / "base") is not None and not (run / "metrics.partial.jsonl").exists()


def test_search_scores_snapshots_in_a_sealed_world_and_resumes(finished, tmp_path, monkeypatch):
    """search.py on the tiny run's cached base: stage 1, TAR with its snapshots (scored on V and G_dev, with E,
    Re, G_test and N sealed away), the rows kept; a rerun trains nothing; a changed setting, or another reference
    attack, runs again."""
    runs = tmp_path / "runs"
    shutil.copytree(finished, runs)
    monkeypatch.setattr(protocol, "REFERENCE", dataclasses.replace(protocol.REFERENCE, steps=4))
    monkeypatch.setitem(search.CANDIDATES, "tiny", ("stage1", {"outer_steps": 3, "inner_steps": 4, "tr_every": 2}, ""))
    args = search.SearchArgs(domain="chem", runs=str(runs), world_entities=4, base_steps=30, safeguard_steps=5,
                             snapshot_every=2, workers=1, only=["stage1", "tiny"])
    worlds, real = [], search.stage_one
    monkeypatch.setattr(search, "stage_one", lambda *a: worlds.append(made := real(*a)) or made)
    rows = search.run_job(("stage1", args)) + search.run_job(("tiny", args))
    assert [(r["name"], r["step"]) for r in rows] == [("stage1", 0), ("tiny", 2), ("tiny", 3)]
    assert all({"V", "G_dev", "forget_V_attacked", "G_dev_attacked"} <= set(r) and "E" not in r for r in rows)
    assert (runs / "chem" / "search" / "tiny" / "tar").is_dir()
    for (world, *_), group in zip(worlds, ("E", "Re", "G_test", "N")):  # each read of these raises
        with pytest.raises(cli.UserError, match="sealed"):
            world.items[group]
    out = runs / "chem" / "search" / "search.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"name": "tiny", "ste')  # a torn last line
    monkeypatch.setattr(search, "run_job", lambda job: pytest.fail(f"{job[0]} ran again"))
    assert len(search.search(args)) == 3 and "| tiny | stage1 | 3 |" in (out.parent / "search.md").read_text()
    assert len(out.read_text().splitlines()) == 3  # the torn line is gone: the next run appends after whole lines
    assert (out.parent / "search.png").stat().st_size > 0
    monkeypatch.setattr(search, "Workers", lambda n: pytest.fail("a changed setting is run again") or None)
    with pytest.raises(pytest.fail.Exception, match="run again"):
        search.search(dataclasses.replace(args, snapshot_every=1))
    monkeypatch.setattr(protocol, "REFERENCE", dataclasses.replace(protocol.REFERENCE, steps=5))
    with pytest.raises(pytest.fail.Exception, match="run again"):  # the rows were scored by another attack
        search.search(args)


@pytest.mark.parametrize("damage", ["garbage state", "truncated rank file", "no state.pt"])
def test_a_damaged_checkpoint_is_one_line(finished, tmp_path, capsys, damage):
    runs = tmp_path / "runs"
    shutil.copytree(finished, runs)
    ckpt = runs / "chem" / "checkpoint"
    assert (ckpt / "rank0.pt").exists()
    if damage == "garbage state":
        (ckpt / "state.pt").write_bytes(b"not a torch file")
    elif damage == "truncated rank file":
        (ckpt / "rank0.pt").write_bytes((ckpt / "rank0.pt").read_bytes()[:50])
    else:
        (ckpt / "state.pt").unlink()
    code, line = cli_error(capsys, tar.main, SMOKE + ["--runs", str(runs), "--resume"])
    what = "cannot read rank0.pt" if damage == "truncated rank file" else "cannot read the checkpoint"
    assert code == 1 and what in line and str(ckpt) in line


def test_damaged_results_and_models_are_one_line(finished, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(finished, runs)
    run = runs / "chem"
    (run / "results.json").write_text('{"domain": "chem", "mod')
    code, line = cli_error(capsys, plots.main, [str(run / "results.json")])
    assert code == 1 and f"{run / 'results.json'} is not valid JSON" in line
    (run / "redteam").mkdir()
    (run / "redteam" / "results.json").write_text("[1, 2")
    with pytest.raises(cli.UserError, match="is not valid JSON"):
        redteam.redteam({"tar": run / "tar"}, [], None, 1, 1, run / "redteam", log=lambda *_: None)
    (run / "tar" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(cli.UserError, match=f"cannot load the model in {run / 'tar'}"):
        storage.load_model(run / "tar")


def test_safeguard_shares_the_world_and_base_flags(finished, capsys):
    """safeguard.py with tar.py's world and base flags reuses what tar.py made, instead of retraining over it."""
    flags = ["--runs", str(finished), "--domain", "chem", "--world-entities", "4", "--base-steps", "30",
             "--safeguard-steps", "5"]
    safeguard.main(flags)
    out = capsys.readouterr().out
    assert "base: reusing" in out and "random_mapping: reusing" in out


def test_a_diverged_attack_is_the_attackers_failure(small_world, tmp_path):
    model = tiny_model(vocab_size=len(small_world.tokenizer))
    storage.save_model(model, small_world.tokenizer, tmp_path / "m", {"what": "test"})
    blowup = adversary.Attack("blowup", lr=1e30, steps=8, batch_size=4, optimizer="sgd", dist="OOD")
    calm = adversary.Attack("calm", lr=1e-3, steps=4, batch_size=4, dist="OOD")
    results = redteam.redteam({"m": tmp_path / "m"}, [blowup, calm], small_world.config, 1, 1, tmp_path / "rt",
                              log=lambda *_: None)
    runs = {r["attack"]: r for r in results["runs"].values()}
    assert runs["blowup"]["diverged"] and runs["calm"]["diverged"] is None
    assert all(p["step"] < runs["blowup"]["diverged"] for p in runs["blowup"]["curve"])  # no point from NaN weights
    s = redteam.summarize(results)
    assert s["cells"]["blowup"]["m"]["diverged"] == 1 and s["worst"]["m"]["max"][1] == "calm"
    assert "diverged ✝1" in redteam.redteam_table(results)
    with pytest.raises(adversary.Diverged, match="non-finite") as e:
        adversary.attack(tiny_model(vocab_size=len(small_world.tokenizer)), blowup,
                         adversary.attack_stream(blowup, small_world.tokens, 0))
    assert 1 <= e.value.step <= 8


def children(pid: int) -> set[int]:
    """The pids whose parent is `pid` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def all_gone(pids: set[int], within: float = 10.0) -> bool:
    """Whether every process in `pids` has ended (waiting up to `within` seconds: an exit is not instant)."""
    deadline = time.time() + within
    while any(map(alive, pids)) and time.time() < deadline:
        time.sleep(0.1)
    return not any(map(alive, pids))


def start_tar(runs: Path, *extra) -> tuple[subprocess.Popen, set[int]]:
    """tar.py in its own session, waited for until TAR trains and the end-of-run worker runs; its workers' pids."""
    args = [sys.executable, str(ROOT / "tar.py"), *SMOKE, "--runs", str(runs), "--outer-steps", "400",
            "--checkpoint-every", "1", *extra]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    partial, deadline = runs / "chem" / "metrics.partial.jsonl", time.time() + 120
    while proc.poll() is None and time.time() < deadline and not (
            partial.exists() and len(partial.read_text().splitlines()) >= 2 and children(proc.pid)):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    return proc, children(proc.pid)


def test_ctrl_c_and_sigkill_leave_no_worker_behind(tmp_path):
    proc, workers = start_tar(tmp_path)
    assert workers and all(map(alive, workers))
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "stopped by Ctrl-C after outer step" in err and "Traceback" not in err, err
    assert time.time() - t0 < 30 and all_gone(workers)  # discarded attacks are not waited for
    proc, workers = start_tar(tmp_path, "--resume")
    proc.kill()  # SIGKILL: no handler runs in the parent
    proc.wait()
    # a worker killed while it still imports torch (before its PR_SET_PDEATHSIG) exits when the import is done and
    # it sees its parent gone: seconds on a loaded machine, so the wait is longer than for Ctrl-C
    assert all_gone(workers, within=60), "a worker outlived its killed parent"


@pytest.mark.parametrize("script", ["safeguard.py", "evaluate.py"])
def test_ctrl_c_is_one_line(finished, tmp_path, script):
    if script == "safeguard.py":
        args = ["--runs", str(tmp_path), "--domain", "chem", "--world-entities", "4", "--base-steps", "100000"]
    else:
        args = [str(finished / "chem"), "--models", "base", "safeguard", "--suite", "quick", "--workers", "2",
                "--out", str(tmp_path / "rt")]
    # a terminal's shell starts a command with Ctrl-C's default disposition; this pytest may hold SIGINT ignored
    # (POSIX: a job a non-interactive shell starts with `&`, as CI runners do), and an ignored signal is inherited
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = (lambda: (tmp_path / "chem").is_dir()) if script == "safeguard.py" else \
        (lambda: len(children(proc.pid)) >= 2)  # pretraining / the workers (and their tracker) are running
    deadline = time.time() + 120
    while proc.poll() is None and not started() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    workers = children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("interrupted")]
    assert all_gone(workers)


def test_progress_logs_a_line_when_not_a_terminal(capsys):
    bar = cli.progress(10, "TAR")  # pytest's stderr is not a terminal
    assert isinstance(bar, cli._LogLines)
    bar.every = 0.0
    with bar:
        for step in range(4):
            bar.set_postfix(TR="1.00")
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("TAR: 1/10, TR 1.00 (") and "ETA" in lines[0] and len(lines) == 5


def test_a_saved_model_records_the_machine_that_made_it(small_world, tmp_path):
    """provenance.json and the model card name the CPU, torch and its threads: a stage 1 repeats bitwise only on
    the same CPU model (docs/search.md)."""
    storage.save_model(tiny_model(vocab_size=len(small_world.tokenizer)), small_world.tokenizer, tmp_path / "m",
                       {"what": "test"})
    made = json.loads((tmp_path / "m" / "provenance.json").read_text())["machine"]
    assert made == storage.machine() and made["cpu"] and made["torch"] == torch.__version__
    card = (tmp_path / "m" / "README.md").read_text()
    assert f"- made on: {made['cpu']}, {torch.get_num_threads()} torch thread(s)" in card


def test_generated_text_keeps_its_spaces(small_world, tmp_path):
    """A model made to generate the world's own sentence (generation constrained to its next token) shows it with
    every space: decode(generate(...)) and `pipeline`'s text are the sentence; the saved tokenizer knows the
    model's length."""
    from transformers import AutoTokenizer, pipeline
    tok = small_world.tokenizer
    model = tiny_model(vocab_size=len(tok))
    storage.save_model(model, tok, tmp_path / "m", {"what": "test"})
    saved = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert saved.model_max_length == model.config.max_position_embeddings == 128
    generate = pipeline("text-generation", model=model, tokenizer=saved)
    for doc in small_world.docs["Rt"][:3] + small_world.docs["T"][:3]:
        sentence = doc.split(".")[0] + "."
        ids = saved(sentence)["input_ids"]
        assert saved.decode(ids, skip_special_tokens=True) == " " + sentence
        force = lambda _, prefix: [ids[len(prefix)]] if len(prefix) < len(ids) else [saved.eos_token_id]
        prompt = " ".join(sentence.split()[:2])
        out = model.generate(**saved(prompt, return_tensors="pt"), max_new_tokens=len(ids), do_sample=False,
                             prefix_allowed_tokens_fn=force)
        assert saved.decode(out[0], skip_special_tokens=True) == " " + sentence
        text = generate(prompt, max_new_tokens=len(ids), do_sample=False, prefix_allowed_tokens_fn=force)
        assert text[0]["generated_text"] == sentence  # prompt + the continuation decoded alone, its space kept
