"""One command-line convention for every script, fuzzed in-process through each script's main(argv): every flag
given a value outside its domain is one `error:` line (exit 2) before any work; edge values inside the domain
are accepted."""

import dataclasses
import math

import pytest

import adversary
import config
import cli
import data
import evaluate
import fsdp
import plots
import safeguard
import search
import seeds
import selection
import table1
import tar
from benchmarks import gpu, tar_step
from conftest import cli_error

# every script with flags: its main(argv) and the dataclass its flags come from
SCRIPTS = {"tar.py": (tar.main, tar.TARConfig), "safeguard.py": (safeguard.main, safeguard.SafeguardArgs),
           "evaluate.py": (evaluate.main, evaluate.RedTeamArgs), "data.py": (data.main, data.WorldArgs),
           "plots.py": (plots.main, plots.PlotArgs), "fsdp.py": (fsdp.main, fsdp.EstimateArgs),
           "selection.py": (selection.main, selection.SelectionArgs), "search.py": (search.main, search.SearchArgs),
           "seeds.py": (seeds.main, seeds.SeedsArgs), "table1.py": (table1.main, table1.Table1Args),
           "benchmarks/gpu.py": (gpu.main, gpu.GpuArgs), "benchmarks/tar_step.py": (tar_step.main, tar_step.BenchArgs)}


def is_number(f) -> bool:
    kind = f.metadata["of"] if isinstance(cli.default_of(f), list) else type(cli.default_of(f))
    return kind in (int, float) and not isinstance(cli.default_of(f), bool)


def bad_values(f) -> list[str]:
    """Values outside the field's domain: below / above its bounds, not finite, the wrong type, empty."""
    meta, default = f.metadata, cli.default_of(f)
    if meta["choices"]:
        return ["bogus", ""]
    if not is_number(f):
        return [""] if meta["nonempty"] else []
    kind = meta["of"] if isinstance(default, list) else type(default)
    out = ["x", ""] + (["1.5", "nan", "inf", str(2**63)] if kind is int else ["nan", "inf", "-inf"])
    if meta["above"] is not None:
        out += [str(kind(meta["above"])), str(kind(meta["above"]) - 1)]
    if meta["at_least"] is not None:
        out += [str(kind(meta["at_least"]) - 1)]
    if meta["at_most"] is not None:
        out += [str(kind(meta["at_most"]) + 1)]
    return out


CASES = [(script, f.name, value) for script, (_, cls) in SCRIPTS.items() for f in dataclasses.fields(cls)
         if not f.metadata["positional"] for value in bad_values(f)]


def test_every_number_has_a_domain():
    """A numeric flag without bounds would let -1 or a NaN through to the training loop."""
    loose = [f"{s} {cli.flag(f.name)}" for s, (_, cls) in SCRIPTS.items() for f in dataclasses.fields(cls)
             if is_number(f) and not any(f.metadata[k] is not None for k in ("above", "at_least", "at_most"))]
    assert not loose and len(CASES) > 150


def test_out_of_domain_values_are_one_usage_error(capsys, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("work started before the flags were checked")
    monkeypatch.setattr(adversary, "attack_steps", no_work)
    monkeypatch.setattr(safeguard, "build_world", no_work)
    failures = []
    for script, name, value in CASES:
        main, cls = SCRIPTS[script]
        default = cli.default_of(next(f for f in dataclasses.fields(cls) if f.name == name))
        argv = [cli.flag(name), *(["1e-4", value] if isinstance(default, list) else [value])]
        code, line = cli_error(capsys, main, argv)
        if code != 2 or cli.flag(name) not in line and "argument" not in line:
            failures.append((script, argv, code, line))
    assert not failures, failures[:5]


def test_edge_values_inside_the_domain_are_accepted():
    """0 where a field allows it, a bound itself, an empty --model: the config is built and checked without error."""
    for script, (_, cls) in SCRIPTS.items():
        for f in dataclasses.fields(cls):
            meta, values = f.metadata, []
            if is_number(f):
                values = [v for v in (meta["at_least"], meta["at_most"]) if v is not None]
                values += [meta["above"] + 1] if meta["above"] is not None else []
            elif isinstance(cli.default_of(f), str) and not meta["choices"] and not meta["nonempty"]:
                values = [""]
            for v in values:
                given = {f.name: [v] if isinstance(cli.default_of(f), list) else v}
                if cls is tar.TARConfig:  # the flags a cross-check pairs it with, inside their domain too
                    partner = {"outer_warmup": {"outer_steps": v + 1 if isinstance(v, int) else 1},
                               "inner_steps": {"tr_every": v}, "inner_steps_mix": {"tr_every": v},
                               "seq_len": {"model": "some/model"}, "data_dir": {"model": "some/model"},
                               "max_docs": {"model": "some/model"}}
                    given.update(partner.get(f.name, {}))
                cfg = config.configure(**given) if cls is tar.TARConfig else cls(**given)
                cfg.validate() if cls is tar.TARConfig else cli.check(cfg)
                assert all(math.isfinite(x) for x in ([v] if isinstance(v, (int, float)) else [])), (script, f.name)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_choices_defaults_and_bounds(script, capsys):
    main, cls = SCRIPTS[script]
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta["choices"]:
            assert "{" + "|".join(meta["choices"]) + "}" in text, f.name
        if cli.domain(meta):
            assert f"[{cli.domain(meta)}]" in text, f.name


def test_shared_flags_share_their_defaults():
    """The flags several scripts have mean the same and default the same."""
    fields = {s: {f.name: cli.default_of(f) for f in dataclasses.fields(cls)} for s, (_, cls) in SCRIPTS.items()}
    shared = {}
    for names in fields.values():
        for name, default in names.items():
            shared.setdefault(name, set()).add(repr(default))
    for name in ("workers", "seed", "world_seed", "runs", "world_entities", "world_t_extra", "base_steps",
                 "safeguard_steps"):
        assert len(shared[name]) == 1, (name, shared[name])
    assert fields["tar.py"]["workers"] == fields["evaluate.py"]["workers"] == cli.WORKERS
    assert {s for s, f in fields.items() if "world_entities" in f} == \
        {s for s, f in fields.items() if "world_t_extra" in f}  # one world, whichever script builds it
