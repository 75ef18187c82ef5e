"""`accelerate launch --num_processes 2` on CPU (gloo): sharded RSFT generation, scoring and acceptance give
byte for byte the one-process files; a 2-process DDP training step matches the 1-process step with the same
global batch; a killed 2-process run resumes to the uninterrupted 2-process result.

Real subprocesses (`accelerate launch ... -m assistant`), tiny random models, the fixture clips, one torch
thread per process (so the arithmetic of a batch is the same wherever it runs).
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_kill_resume import (FSC, ROOT, _env, _flags, _known_model, assert_no_pickles, assert_same_weights,
                              kill_when, lines_reached, one_thread, rng_for, rsft_values, run_cli)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log: Path, processes: int = 2) -> subprocess.Popen:
    """`accelerate launch` of the assistant command in its own process group (so a kill reaches every rank)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "assistant", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_launched(args: list[str], log: Path) -> str:
    return run_cli(args, log, timeout=600, start=launch)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained tiny model, a 24-utterance pool (one clip unreadable), the one-process RSFT run and the
    two-process one."""
    from assistant.config import load_config
    from assistant.rsft.loop import RSFTConfig, run_rsft

    base = tmp_path_factory.mktemp("dist")
    values = rsft_values(base, _known_model(base / "init"), n=24, broken=6)
    with one_thread():
        run_rsft(load_config(RSFTConfig, None, output_dir=str(base / "one"), **values))
    text = run_launched(["rsft", *_flags(dict(values, output_dir=str(base / "two")))], base / "two.log")
    return {"base": base, "values": values, "one": base / "one", "two": base / "two", "log": text}


ROUND_FILES = ("candidates.jsonl", "candidates.jsonl.progress", "scored.jsonl", "decisions.jsonl", "kept.jsonl")


def test_sharded_rsft_files_equal_the_one_process_files(setup):
    one, two = setup["one"] / "round_1", setup["two"] / "round_1"
    for name in ROUND_FILES:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    lines = (two / "candidates.jsonl").read_text().splitlines()
    ids = [json.loads(l)["utt_id"] for l in lines]
    assert len(set(ids)) == 23 and "pool-06" not in ids             # 24 clips, the unreadable one has none
    decisions = [json.loads(l) for l in (two / "decisions.jsonl").read_text().splitlines()]
    assert sum(d["accepted"] for d in decisions) > 0                 # real decisions, not an empty round
    assert not list(two.glob("candidates.jsonl.rank*")), "the per-process parts must be merged away"
    # both processes really generated: each wrote its own share before the merge
    assert "generate [process 1/2]: 3 of 6 batches" in setup["log"]
    assert "generate [process 2/2]: 3 of 6 batches" in setup["log"]
    report, ref = (json.loads((d / "report.json").read_text()) for d in (two, one))
    assert report["acceptance"] == ref["acceptance"] and report["train_examples"] == ref["train_examples"]
    # the dev evaluation was sharded too: same predictions, same score
    init = [json.loads((d.parent / "init_dev.json").read_text()) for d in (two, one)]
    assert init[0] == init[1]
    assert (setup["two"] / "summary.json").is_file()
    assert_no_pickles(setup["two"])


def _train_args(out: Path) -> dict:
    return dict(tiny_random=True, train_manifest=str(FSC), dev_manifest=str(FSC), batch_size=4, max_steps=1,
                save_every_steps=1, eval_every_steps=1, dev_limit=4, warmup_steps=0, lr=1e-3, freeze_encoder_layers=1,
                cache_encoder=True, threads=1, seed=3, output_dir=str(out))


def test_two_process_training_step_matches_one_process_step(tmp_path):
    from assistant.config import load_config
    from assistant.schema import load_schema
    from assistant.train import TrainConfig, build_model, examples_from_utterances, load_splits, recipe_main
    from assistant.train import vocabulary_texts

    cfg = load_config(TrainConfig, None, **_train_args(tmp_path / "one"))
    with one_thread():
        recipe_main(cfg)
        train, _ = load_splits(cfg)
        start = build_model(cfg, vocabulary_texts(load_schema(), [e.target for e in examples_from_utterances(train)]))
    start.save_pretrained(tmp_path / "start")
    w0 = load_file(str(tmp_path / "start" / "model.safetensors"))
    run_launched(["train", *_flags(_train_args(tmp_path / "two"))], tmp_path / "two.log")

    w1 = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    assert w1.keys() == w2.keys() == w0.keys()
    step = torch.cat([(w1[k] - w0[k]).flatten() for k in w1])
    gap = torch.cat([(w2[k] - w1[k]).flatten() for k in w1])
    assert step.norm() > 0                                          # the step moved the weights
    # Same global batch (4 rows: 2 per process; the loss divided by the whole batch's token count, the
    # ASR rows chosen before sharing out): the same step, up to float summation order.
    assert gap.norm() < 1e-4 * step.norm(), (gap.norm().item(), step.norm().item())
    s1, s2 = (json.loads((d / "last" / "trainer_state.json").read_text()) for d in (tmp_path / "one", tmp_path / "two"))
    assert s1["step"] == s2["step"] == 1
    assert s2["best_key"] == pytest.approx(s1["best_key"], abs=0.26)  # dev scored once, on all 4 dev clips
    assert len(s2["history"]) == 1


def test_killed_two_process_rsft_resumes_to_the_uninterrupted_result(setup):
    base, values = setup["base"], setup["values"]
    rng = rng_for("dist-rsft")
    # The tiny model's whole round can take less time than one poll of a busy 2-core machine, so a kill
    # that lands after generation is a missed kill point, not a result: try again on a fresh folder.
    for attempt in range(3):
        out, log = base / f"killed{attempt}", base / f"killed{attempt}.log"
        args = ["rsft", *_flags(dict(values, output_dir=str(out)))]
        part = out / "round_1" / "candidates.jsonl.rank0"
        kill_when(launch(args, log), lines_reached(part, rng.randint(1, 8)), rng.uniform(0, 0.05 / (1 + attempt)),
                  log, timeout=300)
        if not (out / "round_1" / "decisions.jsonl").exists():
            break
        print(f"attempt {attempt}: generation had finished before the kill")
    else:
        pytest.fail("every kill landed after generation had finished")

    run_launched(args, log)
    for name in ROUND_FILES:
        assert (out / "round_1" / name).read_bytes() == (setup["one"] / "round_1" / name).read_bytes(), name
    assert_same_weights(setup["two"] / "round_1" / "train" / "best" / "model.safetensors",
                        out / "round_1" / "train" / "best" / "model.safetensors")
    assert (out / "summary.json").is_file()
