"""SIGKILL `assistant train` / `assistant rsft` at a random point, run it again, and get exactly what an
uninterrupted run gives: same weights, same candidates, same accepted samples (none lost, none twice).

The runs are real subprocesses of `python -m assistant.cli` on tiny random models and the fixture clips;
the uninterrupted reference runs in-process with the same config (one torch thread everywhere, so the
arithmetic is the same).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
FSC = FIXTURES / "fsc" / "data" / "train_data.csv"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


# ------------------------------------------------------------------------------------------ helpers

def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "assistant.cli", *args], cwd=ROOT, env=_env(),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run_cli(args: list[str], log: Path, timeout: float = 300, start=start_cli) -> str:
    """Run a command started by ``start`` (its own process group) to the end; its log on success."""
    proc = start(args, log)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert code == 0, f"assistant {' '.join(args)} failed ({code}):\n{text[-4000:]}"
    return text


def kill_when(proc: subprocess.Popen, ready, extra_delay: float, log: Path, timeout: float = 240) -> None:
    """SIGKILL `proc` (its process group) `extra_delay` seconds after `ready()` first holds; fail if it ends
    on its own first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before the kill point; make it longer:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("kill point never reached")
        time.sleep(0.01)
    time.sleep(extra_delay)
    if proc.poll() is not None:
        pytest.fail(f"the run finished before the kill; make it longer:\n{log.read_text(errors='replace')[-3000:]}")
    os.killpg(proc.pid, signal.SIGKILL)         # the whole group: every process of a launched run
    assert proc.wait(timeout=30) == -signal.SIGKILL


def step_saved(train_dir: Path, step: int):
    """A kill point: training in ``train_dir`` has saved its resumable checkpoint of ``step`` or later."""
    state = train_dir / "last" / "trainer_state.json"

    def ready() -> bool:
        try:
            return json.loads(state.read_text())["step"] >= step
        except (OSError, ValueError, KeyError):       # not there yet, or being replaced
            return False
    return ready


def lines_reached(path: Path, target: int):
    """A kill point: ``path`` holds at least ``target`` lines."""
    def reached() -> bool:
        try:
            return path.read_bytes().count(b"\n") >= target
        except OSError:
            return False
    return reached


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{a} vs {b}, {k}: {m}")


def assert_no_pickles(folder: Path) -> None:
    found = [p for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    assert not found, f"pickle-format files written: {found}"


def rng_for(name: str) -> random.Random:
    """A random kill point, printed so a failure can be replayed (ASSISTANT_KILL_SEED=...)."""
    seed = int(os.environ.get("ASSISTANT_KILL_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"{name}: kill seed {seed}")
    return random.Random(seed)


class one_thread:
    """The in-process reference uses one torch thread, like the subprocesses (same arithmetic)."""

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


# -------------------------------------------------------------------------------------------- train

TRAIN_ARGS = dict(tiny_random=True, train_manifest=str(FSC), dev_manifest=str(FSC), batch_size=1, max_steps=24,
                  save_every_steps=3, eval_every_steps=8, dev_limit=2, warmup_steps=2, lr=3e-3,
                  freeze_encoder_layers=1, cache_encoder=True, threads=1, seed=3)


def _flags(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        if k in ("generate", "accept", "finetune"):   # a nested config: one dotted flag per key (--finetune.lr 0.001)
            out += [a for kk, vv in v.items() for a in (f"--{k}." + kk.replace("_", "-"), str(vv))]
            continue
        out += ["--" + k.replace("_", "-"), json.dumps(v) if isinstance(v, dict) else str(v).lower()
                if isinstance(v, bool) else str(v)]
    return out


def test_train_killed_at_a_random_step_resumes_to_the_same_weights(tmp_path):
    from assistant.config import load_config
    from assistant.train import TrainConfig, recipe_main

    with one_thread():
        recipe_main(load_config(TrainConfig, None, output_dir=str(tmp_path / "straight"), **TRAIN_ARGS))

    rng = rng_for("train")
    out, log = tmp_path / "killed", tmp_path / "train.log"
    args = ["train", *_flags(dict(TRAIN_ARGS, output_dir=str(out)))]
    target = rng.randint(3, 15)
    state = out / "last" / "trainer_state.json"

    def reached() -> bool:
        try:
            return json.loads(state.read_text())["step"] >= target
        except (OSError, ValueError, KeyError):
            return False

    kill_when(start_cli(args, log), reached, rng.uniform(0, 0.6), log)
    killed_at = json.loads(state.read_text())["step"] if state.is_file() else 0
    assert killed_at < TRAIN_ARGS["max_steps"], "killed after the run had finished"

    text = run_cli(args, log)
    assert f"resumed from {out / 'last'}" in text            # it went on, it did not start over
    final = json.loads(state.read_text())
    reference = json.loads((tmp_path / "straight" / "last" / "trainer_state.json").read_text())
    assert final["step"] == reference["step"] == TRAIN_ARGS["max_steps"]
    assert final["best_key"] == pytest.approx(reference["best_key"])
    for name in ("last", "best"):
        assert_same_weights(tmp_path / "straight" / name / "model.safetensors", out / name / "model.safetensors")
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.old"))
    assert_no_pickles(out)


# --------------------------------------------------------------------------------------------- rsft

def _known_model(out: Path) -> Path:
    """A tiny random model trained until it says the first FSC clip's frame: sampling from it gives
    valid frames (the verifier accepts some), so there are real accept/reject decisions to compare."""
    from assistant.config import load_config
    from assistant.train import TrainConfig, recipe_main

    cfg = load_config(TrainConfig, None, tiny_random=True, train_manifest=str(FSC), dev_manifest=str(FSC),
                      output_dir=str(out), train_limit=1, dev_limit=1, batch_size=1, max_steps=150, lr=5e-3,
                      warmup_steps=1, freeze_encoder_layers=None, cache_encoder=True, save_every_steps=1000,
                      eval_every_steps=150, threads=1, train_embeddings=True)
    with one_thread():
        recipe_main(cfg)
    return out / "best"


@pytest.fixture(scope="module")
def init_model(tmp_path_factory) -> Path:
    return _known_model(tmp_path_factory.mktemp("init"))


def _pool(n: int) -> list:
    from assistant.data.manifest import read_manifest

    utts = read_manifest(FSC)
    return [type(utts[0])(**dict(vars(utts[i % len(utts)]), id=f"pool-{i:02d}")) for i in range(n)]


@pytest.mark.parametrize("cut", ["mid-line", "part-of-a-group", "data-written-log-not", "torn-log-line"])
def test_generation_torn_by_a_kill_is_redone_exactly(init_model, tmp_path, cut):
    """What a SIGKILL can leave on disk mid-batch (Python flushes its buffer whenever it fills): the resumed
    file must equal an uninterrupted run's, byte for byte, with no lost or doubled candidates."""
    from assistant.model.slu import SLUModel
    from assistant.rsft.generate import GenerateConfig, candidates_on_disk, generate_candidates, progress_path

    pool = _pool(12)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEjunk")
    pool[5].audio = str(broken)                       # unreadable: skipped, and not retried differently
    model = SLUModel.from_pretrained(init_model)
    params = GenerateConfig(num_samples=3, max_new_tokens=40, batch_size=4)
    with one_thread():
        ref = generate_candidates(model, pool, tmp_path / "ref.jsonl", params, seed=7)
    data = (tmp_path / "ref.jsonl").read_bytes()
    log = progress_path(tmp_path / "ref.jsonl").read_text().splitlines(keepends=True)
    assert len(log) == 3 and not ref[5] and all(ref[i] for i in range(12) if i != 5)

    # On-disk state after a kill during the third batch (pool-08..11).
    lines = data.splitlines(keepends=True)
    first = next(i for i, l in enumerate(lines) if json.loads(l)["utt_id"] >= "pool-08")
    cut_data = {"mid-line": b"".join(lines[:first]) + lines[first][: len(lines[first]) // 2],
                "part-of-a-group": b"".join(lines[:first + 1]),
                "data-written-log-not": data,
                "torn-log-line": data}[cut]
    cut_log = "".join(log[:2]) + (log[2][:10] if cut == "torn-log-line" else "")
    out = tmp_path / "resumed.jsonl"
    out.write_bytes(cut_data)
    progress_path(out).write_text(cut_log)
    assert candidates_on_disk(out) == sum(len(g) for g in ref[:8])       # the two committed batches only
    with one_thread():
        resumed = generate_candidates(model, pool, out, params, seed=7)
    assert out.read_bytes() == data
    assert [[c.to_dict() for c in g] for g in resumed] == [[c.to_dict() for c in g] for g in ref]


def rsft_values(base: Path, init: Path, n: int, broken: int) -> dict:
    """A one-round RSFT config over a pool of ``n`` fixture clips in ``base`` (clip ``broken`` unreadable:
    it must not shift later batches)."""
    utts = _pool(n)
    (base / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    utts[broken].audio = str(base / "broken.wav")
    pool = base / "pool.jsonl"
    pool.write_text("".join(json.dumps(u.to_json()) + "\n" for u in utts))
    return dict(init_model=str(init), pool_manifest=str(pool), dev_manifest=str(FSC), rounds=1,
                generate={"num_samples": 3, "max_new_tokens": 40, "batch_size": 4}, rewards={"verifier": 1.0},
                accept={"rule": "statistical", "beta": 0.5},
                # 8 fine-tuning steps, a resumable checkpoint every 2: the fine-tuning kill lands between them
                finetune={"epochs": 1, "batch_size": 4, "lr": 1e-3, "save_every_steps": 2},
                seed=5)


@pytest.fixture(scope="module")
def rsft_setup(tmp_path_factory, init_model):
    """A pool of 32 utterances (the fixture clips repeated, one unreadable) and an uninterrupted reference run."""
    from assistant.config import load_config
    from assistant.rsft.loop import RSFTConfig, run_rsft

    base = tmp_path_factory.mktemp("rsft")
    values = rsft_values(base, init_model, n=32, broken=1)
    with one_thread():
        run_rsft(load_config(RSFTConfig, None, output_dir=str(base / "straight"), **values))
    return {"base": base, "values": values, "reference": base / "straight"}


def _candidates(path: Path) -> list[tuple]:
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    return [(r["utt_id"], r["index"], r["text"], tuple(r["token_ids"]), round(r["logprob"], 4)) for r in rows]


def _assert_same_rsft_result(ref: Path, out: Path) -> None:
    r1, o1 = ref / "round_1", out / "round_1"
    ref_cands, cands = _candidates(r1 / "candidates.jsonl"), _candidates(o1 / "candidates.jsonl")
    keys = [(c[0], c[1]) for c in cands]
    assert len(keys) == len(set(keys)), "a candidate was written twice"
    assert cands == ref_cands, "the resumed run sampled different candidates than an uninterrupted one"
    for name in ("decisions.jsonl", "kept.jsonl"):
        assert (o1 / name).read_text() == (r1 / name).read_text(), name
    report, ref_report = (json.loads((d / "report.json").read_text()) for d in (o1, r1))
    assert report["candidates"] == ref_report["candidates"] and report["acceptance"] == ref_report["acceptance"]
    assert report["acceptance"]["n_accepted"] > 0          # the comparison is about real decisions
    assert report["train_examples"] == ref_report["train_examples"]
    assert_same_weights(r1 / "train" / "best" / "model.safetensors", o1 / "train" / "best" / "model.safetensors")
    assert (out / "summary.json").is_file()
    assert_no_pickles(out)


def test_rsft_killed_during_generation_resumes_without_lost_or_duplicate_samples(rsft_setup):
    base, values = rsft_setup["base"], rsft_setup["values"]
    rng = rng_for("rsft-generate")
    out, log = base / "killed-generate", base / "generate.log"
    args = ["rsft", *_flags(dict(values, output_dir=str(out)))]
    cands = out / "round_1" / "candidates.jsonl"
    total = len(_candidates(rsft_setup["reference"] / "round_1" / "candidates.jsonl"))
    target = rng.randint(1, total // 2)

    kill_when(start_cli(args, log), lines_reached(cands, target), rng.uniform(0, 0.05), log)
    assert not (out / "round_1" / "decisions.jsonl").exists(), "generation had finished before the kill"
    run_cli(args, log)
    _assert_same_rsft_result(rsft_setup["reference"], out)
    # the round's speed counts only what the resumed run drew
    report, ref_report = (json.loads((d / "round_1" / "report.json").read_text()) for d in (out, rsft_setup["reference"]))
    assert ref_report["candidates_reused"] == 0 and 0 < report["candidates_reused"] < report["candidates"]
    assert report["candidates_per_second"] > 0


def test_rsft_killed_during_fine_tuning_resumes_to_the_same_result(rsft_setup):
    base, values = rsft_setup["base"], rsft_setup["values"]
    rng = rng_for("rsft-fine-tune")
    out, log = base / "killed-fine-tune", base / "fine-tune.log"
    args = ["rsft", *_flags(dict(values, output_dir=str(out)))]
    # a random point of the 8 steps after a checkpoint (a timed delay after kept.jsonl could outlast them)
    kill_when(start_cli(args, log), step_saved(out / "round_1" / "train", rng.choice([2, 4, 6])),
              rng.uniform(0, 0.05), log)
    assert not (out / "round_1" / "done.json").exists(), "the round had finished before the kill"
    lines_before = (out / "round_1" / "candidates.jsonl").read_text().count("\n")
    run_cli(args, log)
    # Generation was complete: the re-run must not have sampled anything again.
    assert (out / "round_1" / "candidates.jsonl").read_text().count("\n") == lines_before
    _assert_same_rsft_result(rsft_setup["reference"], out)
    report = json.loads((out / "round_1" / "report.json").read_text())
    assert report["candidates_reused"] == report["candidates"] and report["candidates_per_second"] is None
