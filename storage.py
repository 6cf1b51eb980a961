"""Everything that touches the disk: atomic writes, the config digest, models and resume checkpoints.

Nothing here is in the paper; it is what makes a run safe to interrupt. Every file and model is written under
a temporary name and renamed when complete (`atomic`), so an interrupted run never leaves a half-written file
where a good one was. A model is a `save_pretrained` directory (safetensors + config.json) with its tokenizer
and a provenance.json saying what made it (settings, parent, world, machine); the same two functions save and
load models in one process and under torchrun (FSDP2 shards are gathered to rank 0 for saving, and a loaded
model is sharded). Checkpoints
hold what `--resume` needs to continue exactly: model, optimizer, and every rank's RNG and data positions.

    read_json / read_jsonl    a JSON / JSONL file, or one error line naming the file, the line and the fix
    append_jsonl(path, rows)  a line per finished job; resumed_jsonl(path): a rerun's rows, a torn last line dropped
    digest(*parts)            sha256 of a JSON rendering, 16 hex digits: the key of every cache
    file_digest(path)         sha256 of a model's weight files: the red team's key of a model, a search row's base
    save_model / load_model   a model directory (with provenance.json and a model card), single process or FSDP2
    cached(path, key)         the model at path if it was made from exactly `key`, else None
    save_checkpoint / load_checkpoint / load_rank_state   resume state (torch.distributed.checkpoint under torchrun)

Use:  save_model(model, tokenizer, Path("runs/bio/tar"), {"what": "TAR"}); model = load_model("runs/bio/tar")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

import fsdp
from cli import UserError, reason
from fsdp import Dist


def temporary(path: Path) -> Path:
    """Where `atomic` writes `path` first (the same name on every rank)."""
    return path.with_name(path.name + ".tmp")


def writable_dir(path: Path, d: Dist = Dist()) -> Path:
    """`path`, made (by rank 0) and checked writable before any work is done for it."""
    try:
        if d.is_main:
            path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise UserError(f"cannot write to {path}: {e.strerror or e}") from None
    return path


@contextlib.contextmanager
def atomic(path: Path):
    """Yields a temporary path beside `path` (a file or a directory) and moves it to `path` when the block
    ends without an error, replacing what was there; on an error the old `path` is untouched."""
    path = Path(path)
    tmp, old = temporary(path), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)  # a failed earlier try
    yield tmp
    shutil.rmtree(old, ignore_errors=True)
    if path.is_dir() and tmp.is_dir():  # a directory cannot replace a directory in one rename
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: Path, text: str) -> Path:
    with atomic(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path: Path, fix: str = "delete it to start over"):
    """A JSON file, or one UserError naming it, what is wrong and `fix` (what the user should do)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}); {fix}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); {fix}") from None


def read_jsonl(path: Path, fields: tuple[str, ...] = (), fix: str = "fix or delete it",
               torn_tail: bool = False) -> list[dict]:
    """The rows of a JSONL file (blank lines skipped), each an object with every one of `fields`, or one
    UserError naming the file, the line and `fix`. torn_tail: a last line cut off mid-write (a killed run's
    log) is dropped instead."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}); {fix}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail and n == len(lines):
                break
            raise UserError(f"{path} line {n} is not valid JSON ({e.msg}); {fix}") from None
        if not isinstance(row, dict):
            raise UserError(f"{path} line {n} is not a JSON object; {fix}")
        missing = [f for f in fields if f not in row]
        if missing:
            raise UserError(f"{path} line {n} lacks {', '.join(missing)} (each row needs {', '.join(fields)}); {fix}")
        rows.append(row)
    return rows


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Rows appended to a log as its job finishes: whatever happens to the jobs still running, they are kept (in one
    write: a kill leaves a job's lines whole or a torn last one, which `resumed_jsonl` drops)."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def resumed_jsonl(path: Path, fields: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a log that each finished job appends to, before a rerun appends more: [] where there is none;
    a last line cut off mid-write (the run was killed) is dropped from the file too, or the first line appended
    after it would make the file unreadable."""
    if not Path(path).exists():
        return []
    rows = read_jsonl(path, fields, torn_tail=True)
    with open(path, "rb") as fh:  # its last byte only: a whole line always ends in a newline
        size = fh.seek(0, 2)
        fh.seek(max(size - 1, 0))
        whole = fh.read(1) == b"\n"
    if not whole:  # the last line was cut (or the file is empty); otherwise the file is left as it is, in case
        write_jsonl(path, rows)  # another process appends to it
    return rows


def digest(*parts) -> str:
    """The key of a cache entry or world: the same parts give the same 16 hex digits on any machine."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of the *.safetensors files of a model directory, 16 hex digits: a retrained model gets a new one."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------
# Models: save_pretrained + tokenizer + provenance.json
# --------------------------------------------------------------------------------------------------------
def _quiet() -> None:
    """No transformers progress bars ("Loading weights", "Writing model shards"): one per model saved or loaded,
    noise between the stages' own progress lines."""
    from transformers.utils import logging
    logging.disable_progress_bar()


def save_model(model, tokenizer, path: Path, provenance: dict, d: Dist = Dist()) -> None:
    """Writes `model` (gathered to a full state dict on rank 0 under torchrun) with save_pretrained, its
    tokenizer and provenance.json, under a temporary name renamed when complete. Every rank must call it."""
    state = fsdp.full_state_dict(model, d)  # a collective under torchrun: every rank takes part
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):  # tied weights are written once
        if first.setdefault(id(p), name) != name:
            state.pop(name, None)
    # never write a broken model: a NaN weight would score as a "perfect defence" (every choice ties)
    bad = d.is_main and not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if fsdp.any_rank(bad, d):
        raise UserError(f"refusing to save {path}: some weights are not finite (NaN or inf); nothing was written")
    if d.is_main:
        _quiet()
        with atomic(path) as tmp:
            model.save_pretrained(tmp, state_dict=state)  # safetensors
            config = json.loads((tmp / "config.json").read_text())  # FSDP2 renames the class (FSDPLlama...)
            config["architectures"] = [c.__name__ for c in type(model).__mro__ if "FSDP" not in c.__name__][:1]
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            tokenizer.save_pretrained(tmp)
            positions = getattr(model.config, "max_position_embeddings", None)
            saved = tmp / "tokenizer_config.json"
            if positions and tokenizer.model_max_length > positions and saved.exists():  # the built-in one says
                settings = json.loads(saved.read_text())                                  # "unlimited" (1e30)
                saved.write_text(json.dumps({**settings, "model_max_length": positions}, indent=2))
            # the weights' digest: a cache whose files changed since (truncated, edited) is rebuilt, not trusted
            # and what made them: the same run gives the same weights bitwise only on the same CPU model and torch
            made = {**provenance, "machine": machine(), "weights": file_digest(tmp)}
            (tmp / "provenance.json").write_text(json.dumps(made, indent=1))
            (tmp / "README.md").write_text(model_card(made))
    if d.distributed:
        dist.barrier()


def machine() -> dict:
    """The CPU (model name, family and model where /proc/cpuinfo says them), torch and its threads: a stage 1
    pretrained again repeats its weights bitwise on the same CPU model only (two CPUs, two bases: docs/search.md)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]  # the first core's block
        info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
        cpu = info.get("model name", cpu)
        if "cpu family" in info and "model" in info:  # x86: one marketing name covers several generations
            cpu += f" (family {info['cpu family']}, model {info['model']})"
    return {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads()}


def model_card(provenance: dict) -> str:
    """README.md of a saved model: a Hugging Face model card (YAML metadata: base_model, datasets) saying what made
    it, from what, with which settings and library versions, and its accuracies where they were measured."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    world, parent = provenance.get("world", {}), provenance.get("parent", "")
    meta = [f"base_model: {json.dumps(str(parent))}"] if parent else []
    meta += ["datasets:", *(f"- {json.dumps(n.split('@')[0])}" for n in provenance["datasets"])] \
        if provenance.get("datasets") else []
    data = ("the hub datasets " + ", ".join(provenance.get("datasets", [])) + (
        f", from local files in their schemas ({world['data_dir']})" if world.get("data_dir") else
        " (a revision after @ where pinned; the others as the hub held them when loaded)")) \
        if "tokenizer" in world else f"the built-in miniature world ({world.get('domain', '?')}, seed "  \
                                     f"{world.get('seed', '?')}), not real data"
    lines = ["---", *meta, "library_name: transformers", "tags:", "- tamper-resistance", "---", "",
             f"# {provenance.get('what', 'model')}", "",
             "Made by the reference implementation of TAR (Tamirisa et al., 2024, \"Tamper-Resistant Safeguards "
             "for Open-Weight LLMs\").", "", f"- made from: {parent or 'random initialisation'}", f"- data: {data}",
             "- versions: " + ", ".join(f"{p} {installed(p)}" for p in ("torch", "transformers", "lm_eval", "peft")),
             *([f"- made on: {provenance['machine']['cpu']}, {provenance['machine']['threads']} torch thread(s)"]
               if "machine" in provenance else []),
             "", "## Settings", "", "```json", json.dumps({k: provenance[k] for k in ("config", "world")
                                                           if k in provenance}, indent=1), "```"]
    if "accuracy" in provenance:
        lines += ["", "## Accuracy when saved", "", "| group | accuracy |", "|---|---|",
                  *(f"| {g} | {a:.1%} |" for g, a in provenance["accuracy"].items())]
    return "\n".join(lines) + "\n"


def provenance(path: str | Path) -> dict:
    """A saved model's provenance.json, or {} where there is none (a hub id, a model from elsewhere, a damaged file)."""
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads((Path(path) / "provenance.json").read_text())
        return saved if isinstance(saved, dict) else {}
    return {}


def recorded_parent(model: str) -> str | None:
    """The model a saved model was made from: provenance.json's parent, else its model card's base_model; None for a
    hub id or a directory that records neither."""
    if parent := provenance(model).get("parent"):
        return parent
    with contextlib.suppress(OSError, IndexError, ValueError):
        for line in (Path(model) / "README.md").read_text().split("---")[1].splitlines():  # the card's YAML header
            if line.startswith("base_model:"):
                value = line.split(":", 1)[1].strip()
                return (json.loads(value) if value.startswith('"') else value) or None
    return None


def load_model(name: str | Path, d: Dist = Dist(), safetensors_only: bool = False):
    """A Hugging Face causal LM (hub id or directory) in fp32; sharded under torchrun (each layer cut as it is
    wrapped), else moved to d.device. Every rank reads the file; the OS page cache shares it. safetensors_only:
    a model from outside the run (`--model`) never goes through pickle."""
    from transformers import AutoModelForCausalLM
    _quiet()
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32,
                                                     **({"use_safetensors": True} if safetensors_only else {}))
    except Exception as e:
        why = reason(e)
        if Path(name).is_dir():
            raise UserError(f"cannot load the model in {name} ({why}): its files are damaged or incomplete; "
                            "make it again (delete the directory)") from None
        raise UserError(f"cannot load model {name} ({why}): offline, gated or not a"
                        f"{' safetensors' if safetensors_only else ''} causal LM; pass a local directory") from None
    model.config.use_cache = False  # its forwards train or score: no KV cache (generate() sets its own)
    return fsdp.shard(model, d) if d.distributed else model.to(d.device)


def cached(path: Path, key: str):
    """The model at `path` if its provenance says it was made from exactly `key` (world, config, seed,
    parent), else None: a changed world or setting never reuses a stale model."""
    try:
        saved = json.loads((Path(path) / "provenance.json").read_text())
        if saved["key"] == key and saved["weights"] == file_digest(path):
            return load_model(path)
    except (OSError, KeyError, ValueError, TypeError, UserError):  # unreadable or changed: made again
        pass
    return None


# --------------------------------------------------------------------------------------------------------
# Resume checkpoints: DCP for a sharded model + optimizer (each rank writes its shards), one file otherwise
# --------------------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, model, optimizer, rank_state: dict, d: Dist) -> None:
    """Writes path.tmp and renames it to path when every rank has finished (a killed save leaves the previous
    checkpoint intact). rank_state: this rank's RNG and data positions (tensors, numbers, lists, dicts)."""
    with atomic(path) if d.is_main else contextlib.nullcontext(temporary(path)) as tmp:  # rank 0 renames
        if d.is_main:
            tmp.mkdir(parents=True, exist_ok=True)
        if d.distributed:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict
            dist.barrier()
            model_sd, optim_sd = get_state_dict(fsdp.reshard(model), optimizer)  # the shards, as the optimizer
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
        else:
            torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, tmp / "state.pt")
        torch.save(rank_state, tmp / f"rank{d.rank}.pt")
        if d.distributed:
            dist.barrier()  # every rank's files are in tmp before rank 0 renames it
    if d.distributed:
        dist.barrier()


def load_rank_state(path: Path, d: Dist) -> dict:
    """This rank's saved state (step, config, RNGs, data positions), or one UserError on every rank: a missing
    file (another number of processes wrote the checkpoint) or a damaged one."""
    rank_file = path / f"rank{d.rank}.pt"
    try:
        state, problem = torch.load(rank_file, weights_only=True), None
    except FileNotFoundError:
        state, problem = None, f"no {rank_file.name}: no checkpoint, or one written by another number of processes"
    except Exception as e:  # a truncated or foreign file: torch raises many classes
        state, problem = None, f"cannot read {rank_file.name} ({reason(e)})"
    if not isinstance(state, dict) and problem is None:
        problem = f"{rank_file.name} is not a checkpoint's state"
    if fsdp.any_rank(problem is not None, d):
        raise UserError(f"--resume: {problem or 'another rank cannot read its state'} in {path}; delete it and run "
                        "without --resume")
    return state


def load_checkpoint(path: Path, model, optimizer, d: Dist) -> None:
    """Restores model and optimizer in place. Loads only what save_checkpoint wrote (weights_only torch files;
    DCP's metadata is pickled by torch itself). A damaged checkpoint is one UserError."""
    try:
        if d.distributed:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
            model_sd, optim_sd = get_state_dict(fsdp.reshard(model), optimizer)  # the shards, as the optimizer
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=str(path / "dcp"))
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        else:
            state = torch.load(path / "state.pt", weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optim"])
    except Exception as e:  # torch.load, DCP and load_state_dict raise many classes for a damaged file
        raise UserError(f"--resume: cannot read the checkpoint in {path} ({reason(e)}); delete it and run without "
                        "--resume") from None
