"""Bad input never becomes a number: every corrupt local file, bad row and bad flag given to evaluate.py is
exactly one `error:` line (exit 1 for a file, 2 for a flag), never a traceback; an MC answer outside its
choices (which would score every model 0% forget, a "perfect defence") is rejected from either layout and from
the hub; and a model is red-teamed in the world it was made in (provenance.json), its tokenizer checked."""

import json
import shutil
from dataclasses import asdict

import pytest

import cli
import data
import evaluate
import realdata
import realworld
import world
from conftest import cli_error

ATTACK = ["--attacks", "T1_adamw_1e-3_32", "--seeds", "1", "--workers", "1"]  # the shortest named attack


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """The real-data layout with a tiny model of its tokenizer, and an export with a model of its world (and
    one without provenance.json)."""
    root = tmp_path_factory.mktemp("inputs")
    small = world.build_world(world.world_config("bio", 2))
    data.main(["--world-entities", "2", "--out", str(root / "export")])
    realdata.world_model(small, root / "mini")
    realdata.world_model(small, root / "plain", provenance=False)
    return {"real": realdata.write_fixtures(root / "real"), "llama": realdata.tiny_model(root / "llama"),
            "export": root / "export", "mini": root / "mini", "plain": root / "plain"}


def one_error(argv, capsys) -> tuple[int, str]:
    """evaluate.py with `argv` stops with exactly one `error:` line, no traceback: (exit code, the line)."""
    return cli_error(capsys, evaluate.main, [str(a) for a in argv])


def copy_with(src, tmp_path, name: str, text: str):
    """A copy of the directory `src` with file `name` replaced by `text`."""
    d = tmp_path / src.name
    shutil.copytree(src, d)
    (d / name).write_text(text)
    return d


MC = {"question": "Which leaf?", "choices": ["a", "b", "c", "d"], "answer": 1}
BAD_MC = {  # name -> (file content, what the error line must say)
    "answer 7 of 4": (json.dumps({**MC, "answer": 7}), "answer 7 is not one of its 4 choices"),
    "letter E of 4": (json.dumps({**MC, "answer": "E"}), "answer 'E' is not one of its 4 choices"),
    "answer true": (json.dumps({**MC, "answer": True}), "answer True is not one of"),
    "bad JSON line": (json.dumps(MC) + "\n{\"question\": ", "line 2 is not valid JSON"),
    "missing key": (json.dumps({"question": "q", "choices": ["a", "b"]}), "line 1 lacks answer"),
    "empty file": ("\n", "holds no rows"),
    "choices a string": (json.dumps({**MC, "choices": "abcd"}), "choices must be a list of 2 to 4 strings"),
    "five choices": (json.dumps({**MC, "choices": list("abcde")}), "choices must be a list of 2 to 4 strings"),
    "question a number": (json.dumps({**MC, "question": 3}), "question must be a string"),
    "not an object": ("[1, 2]", "line 1 is not a JSON object"),
}


@pytest.mark.parametrize("case", BAD_MC)
def test_bad_mc_file_is_one_line_in_both_layouts(case, fx, tmp_path, capsys):
    text, says = BAD_MC[case]
    for layout, name, model in (("real", "wmdp-bio.jsonl", "llama"), ("export", "mc_E.jsonl", "mini")):
        d = copy_with(fx[layout], tmp_path / layout, name, text + "\n")
        status, line = one_error(["--model", fx[model], "--data-dir", d, *ATTACK], capsys)
        assert status == 1 and f"{d / name}" in line and says in line, (layout, line)


def test_hub_rows_are_checked_too(monkeypatch):
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list([MC, {**MC, "answer": 7}]))
    with pytest.raises(cli.UserError, match=r"cais/wmdp \(wmdp-bio\) row 2: answer 7 is not one of its 4 choices"):
        realworld.load_rows("wmdp-bio")


BAD_REAL = {  # file of the real layout -> (content, what the error line must say)
    "pile-bio.jsonl": (json.dumps({"txt_chunk": "a leaf", "label": "yes"}), "label must be true or false"),
    "magpie.jsonl": (json.dumps({"conversations": [{"from": "system", "value": "hi"}]}), "conversations must be"),
    "camel-bio.jsonl": (json.dumps({"text_chunk": ["a", "list"]}), "text_chunk must be a string"),
    "mmlu.jsonl": (json.dumps({**MC, "subject": "virology"}), "no retain items"),  # every row of a bio subject
    "wmdp-bio.json": (json.dumps({"rows": [MC]}), "is not a JSON list of rows"),
    "wmdp-bio.parquet": ("not parquet", "cannot read"),
    "chem-forget.txt": ("\n  \n", "holds no passages"),
}


@pytest.mark.parametrize("name", BAD_REAL)
def test_bad_real_file_is_one_line(name, fx, tmp_path, capsys):
    text, says = BAD_REAL[name]
    d = copy_with(fx["real"], tmp_path, name, text + "\n")
    (d / "wmdp-bio.jsonl").unlink() if name.startswith("wmdp-bio.") else None  # the .json / .parquet is read
    domain = "chem" if name == "chem-forget.txt" else "bio"
    status, line = one_error(["--model", fx["llama"], "--data-dir", d, "--domain", domain, *ATTACK], capsys)
    assert status == 1 and says in line, line


BAD_EXPORT = {  # case -> (file of the export, its content or None: deleted, what the error line must say)
    "bad JSON": ("world.json", "{\"config\": ", "world.json is not valid JSON"),
    "no world config": ("world.json", json.dumps({"config": {"domain": "bio", "planets": 3}}),
                        "world.json holds no world config"),
    "text a number": ("docs_A.jsonl", json.dumps({"text": 5}), "docs_A.jsonl row 1: text must be a string"),
    "empty file": ("mc_Re.jsonl", "", "mc_Re.jsonl holds no rows"),
    "no mc_Re": ("mc_Re.jsonl", None, "lacks mc_Re.jsonl"),
}


@pytest.mark.parametrize("case", BAD_EXPORT)
def test_bad_export_is_one_line(case, fx, tmp_path, capsys):
    name, text, says = BAD_EXPORT[case]
    d = copy_with(fx["export"], tmp_path, name, text or "")
    (d / name).unlink() if text is None else None
    status, line = one_error(["--model", fx["mini"], "--data-dir", d, *ATTACK], capsys)
    assert status == 1 and says in line, line


def test_export_refuses_a_model_of_another_world(fx, tmp_path, capsys):
    """The seed-1 world's names are unknown words to the seed-0 tokenizer: not scored on <unk>."""
    realdata.world_model(world.build_world(world.world_config("bio", 2, seed=1)), tmp_path / "seed1",
                         provenance=False)
    status, line = one_error(["--model", tmp_path / "seed1", "--data-dir", fx["export"], *ATTACK], capsys)
    assert status == 1 and "cannot spell" in line and "made in another world" in line, line


def test_bad_paths_and_flags_are_one_line(fx, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    mini, real = fx["mini"], fx["real"]
    for argv, code, says in [
            ([], 2, "give a run directory or --model"),
            ([tmp_path, "--model", mini], 2, "give a run directory or --model"),
            (["--model", mini, "--models", "tar"], 2, "--models picks models of a run directory"),
            (["--model", mini, "--seeds", "0"], 2, "--seeds must be positive"),
            (["--model", mini, "--workers", "0"], 2, "--workers must be positive"),
            (["--model", mini, "--domain", "physics"], 2, "--domain must be one of"),
            (["--model", mini, "--attacks", "nope"], 2, "unknown attack nope"),
            (["--model", mini, "--domain", "chem", *ATTACK], 2, "contradicts the models' provenance.json"),
            (["--model", fx["plain"], "--data-dir", fx["export"], "--domain", "chem", *ATTACK], 2,
             "contradicts the world in"),
            (["--model", tmp_path / "nowhere"], 1, "no model directory"),
            (["--model", "no/such-model", "--data-dir", real, *ATTACK], 1, "cannot fetch model no/such-model"),
            (["--model", mini, "--data-dir", tmp_path / "empty"], 1, "holds neither layout"),
            (["--model", mini, "--data-dir", tmp_path / "nowhere"], 1, "is not a directory"),
            (["--model", tmp_path / "empty"], 1, "holds no saved model")]:
        status, line = one_error(argv, capsys)
        assert status == code and says in line, (argv, line)


def test_bad_run_files_are_one_line(tmp_path, capsys):
    """A corrupt results.json or provenance.json, and a run whose models were made in different worlds."""
    w0, w1 = (world.build_world(world.world_config("bio", 2, seed=s)) for s in (0, 1))
    realdata.world_model(w0, tmp_path / "bio" / "plain", provenance=False)
    (tmp_path / "bio" / "results.json").write_text("{\"world\": ")
    status, line = one_error([tmp_path / "bio", *ATTACK], capsys)
    assert status == 1 and "results.json is not valid JSON" in line, line
    realdata.world_model(w0, tmp_path / "run" / "a")
    realdata.world_model(w1, tmp_path / "run" / "b")
    status, line = one_error([tmp_path / "run", *ATTACK], capsys)
    assert status == 1 and "made in different worlds (a: seed 0; b: seed 1)" in line, line
    (tmp_path / "run" / "b" / "provenance.json").write_text("[")
    status, line = one_error([tmp_path / "run", *ATTACK], capsys)
    assert status == 1 and "provenance.json is not valid JSON" in line, line


def test_model_is_scored_in_its_own_world(fx, tmp_path, capsys):
    """A model of the seed-1 world (same vocabulary size, another order) is red-teamed in the seed-1 world its
    provenance names, with no --domain; a model of it without provenance (scored in the default world) and one
    whose tokenizer is not its world's are refused; an export of the same world gives the same curves."""
    w1 = world.build_world(world.world_config("bio", 2, seed=1))
    realdata.world_model(w1, tmp_path / "seed1")
    evaluate.main([str(a) for a in ["--model", tmp_path / "seed1", *ATTACK]])
    results = json.loads((tmp_path / "seed1" / "redteam" / "results.json").read_text())
    assert results["world"]["config"] == asdict(w1.config) and results["world"]["digest"] == w1.digest
    realdata.world_model(w1, tmp_path / "elsewhere" / "bio" / "seed1", provenance=False)
    status, line = one_error([tmp_path / "elsewhere" / "bio", *ATTACK], capsys)
    assert status == 1 and "tokenizer is not the one of the world" in line, line
    shutil.copytree(tmp_path / "seed1", tmp_path / "mixed")
    shutil.rmtree(tmp_path / "mixed" / "redteam")
    world.build_world(world.world_config("bio", 2)).tokenizer.save_pretrained(tmp_path / "mixed")  # seed 0's
    status, line = one_error(["--model", tmp_path / "mixed", *ATTACK], capsys)
    assert status == 1 and "tokenizer is not the one of the world" in line, line
    data.main(["--world-entities", "2", "--world-seed", "1", "--out", str(tmp_path / "export1")])
    evaluate.main([str(a) for a in ["--model", tmp_path / "seed1", "--data-dir", tmp_path / "export1",
                                    "--out", tmp_path / "out", *ATTACK]])
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert again["world"]["digest"] == w1.digest and again["world"]["config"]["data_dir"] == str(tmp_path / "export1")
    assert [r["curve"] for r in again["runs"].values()] == [r["curve"] for r in results["runs"].values()]


def test_real_world_from_the_data_dir_or_the_provenance(fx, tmp_path):
    """The real layout in --domain's world; a model of tar.py --model (provenance: a RealWorldConfig) in the
    domain, data and sequence length it was trained with, read with its own saved tokenizer."""
    evaluate.main([str(a) for a in ["--model", fx["llama"], "--data-dir", fx["real"], "--domain", "cyber",
                                    "--out", tmp_path / "a", *ATTACK]])
    saved = json.loads((tmp_path / "a" / "results.json").read_text())["world"]
    assert saved["style"] == "letter" and saved["config"] == asdict(realworld.RealWorldConfig(
        "cyber", str(fx["llama"]), str(fx["real"])))
    shutil.copytree(fx["llama"], tmp_path / "tar")
    made = realworld.RealWorldConfig("chem", "some/hub-id", str(fx["real"]), seq_len=16)
    (tmp_path / "tar" / "provenance.json").write_text(json.dumps({"what": "TAR", "world": asdict(made)}))
    evaluate.main([str(a) for a in ["--model", tmp_path / "tar", "--out", tmp_path / "b", *ATTACK]])
    saved = json.loads((tmp_path / "b" / "results.json").read_text())["world"]
    assert saved["config"] == {**asdict(made), "tokenizer": str(tmp_path / "tar")}
