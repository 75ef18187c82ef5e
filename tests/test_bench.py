"""`assistant bench --quick` end to end on a tiny random model + the bench's pure helpers.

No timing assertions: speed numbers belong to the bench's output, not to tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from assistant.bench.harness import Clip, select_clips
from assistant.bench.report import GOAL_RTF_3S, evaluate_goals, format_table, int8_decision

FIXTURES = Path(__file__).parent / "fixtures"
FSC = FIXTURES / "fsc" / "data" / "train_data.csv"
SLURP = FIXTURES / "slurp" / "train.jsonl"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from assistant.bench.run import cli

    out = tmp_path_factory.mktemp("bench") / "bench.json"
    code = cli(["--quick", "--threads", "1", "--json", str(out), "--test-manifest", str(FSC),
                "--train-manifest", str(FSC), "--pool-manifest", str(SLURP)])
    return code, out


def test_quick_bench_writes_json_with_every_section(quick_run):
    code, out = quick_run
    assert code == 0
    r = json.loads(out.read_text())
    assert r["meta"]["quick"] is True and r["meta"]["context_seconds"] == 6.0
    assert set(r["clips"]) == {"1s", "3s", "8s"}
    for system in ("eager", "onnx", "onnx-int8"):
        for label in ("1s", "3s", "8s"):
            b1 = r["latency"][system][label]["batch1"]
            assert {"p50_ms", "p95_ms", "rtf_p50", "cpu_p50_ms"} <= set(b1) and b1["p50_ms"] > 0
            assert r["latency"][system][label]["batch2"]["per_utt_ms"] > 0
        assert r["accuracy"][system]["n"] == 2 and 0 <= r["accuracy"][system]["intent_accuracy"] <= 1
    # The cascade needs the cached text teacher; without one the JSON says why it was skipped.
    assert "cascade" in r["latency"] or r.get("cascade_skipped")
    mem = r["memory"]["eager"]
    assert mem["rss_delta_mb"] >= mem["load_delta_mb"] >= 0 and mem["rss_peak_mb"] > 0
    assert r["export"]["verify"]["fp32"]["greedy_equal"] == "2/2"
    assert r["training"]["utt_per_s"] > 0
    gen = r["rsft"]["generation"]
    assert gen["decoded_per_utt"] == 9 and gen["generate"]["decoded_per_s"] > 0
    assert r["rsft"]["scoring"]["verifier"]["candidates_per_s"] > 0
    assert r["profile"]["ours"]["eager"]["decoder_steps"] >= 1 and r["profile"]["ours"]["eager_top_ops"]
    assert r["profile"]["rsft"]["generate_top_ops"]
    assert any("RTF" in g["goal"] for g in r["goals"]) and all(isinstance(g["met"], bool) for g in r["goals"])
    assert "int8" in r["int8_decision"]


def test_quick_bench_prints_the_table(quick_run, capsys):
    _, out = quick_run
    table = format_table(json.loads(out.read_text()))
    assert "latency" in table and "eager" in table and "RTF" in table and "rsft gen" in table


def test_eight_second_clips_are_concatenated_to_exactly_eight_seconds():
    from assistant.data.manifest import read_manifest

    clips = select_clips(read_manifest(FSC), per_length=2)
    assert [len(clips[k]) for k in ("1s", "3s", "8s")] == [2, 2, 2]
    assert all(c.wave.numel() == 8 * 16000 for c in clips["8s"])
    # The 1 s class holds the shortest clips of the manifest.
    assert max(c.seconds for c in clips["1s"]) <= min(c.seconds for c in clips["3s"])


def _results(ours_ms: float, cascade_ms: float, ours_acc: float, cascade_acc: float, rows_per_s: float) -> dict:
    def lat(ms, seconds=3.0):
        return {"3s": {"batch1": {"p50_ms": ms, "rtf_p50": ms / 1000 / seconds}}}

    return {"latency": {"eager": lat(ours_ms), "cascade": lat(cascade_ms)},
            "accuracy": {"eager": {"intent_accuracy": ours_acc}, "cascade": {"intent_accuracy": cascade_acc}},
            "rsft": {"generation": {"generate": {"decoded_per_s": rows_per_s, "distinct_per_s": rows_per_s / 2},
                                    "generate_with_ref": {"decoded_per_s": rows_per_s / 2}}}}


def test_goals_need_speed_and_accuracy_together():
    assert [g["met"] for g in evaluate_goals(_results(100, 600, 0.9, 0.8, 250))] == [True, True, True]
    slower = evaluate_goals(_results(200, 600, 0.9, 0.8, 250))
    assert [g["met"] for g in slower] == [False, False, True]      # 3x only; RTF 0.067 > 0.05
    less_accurate = evaluate_goals(_results(100, 600, 0.7, 0.8, 150))
    assert [g["met"] for g in less_accurate] == [False, True, False]
    assert 100 / 1000 / 3.0 <= GOAL_RTF_3S


def test_int8_decision_weighs_accuracy_against_speed():
    def results(fp_ms, q_ms, fp_acc, q_acc):
        lat = lambda ms: {"3s": {"batch1": {"p50_ms": ms}}}                      # noqa: E731
        return {"latency": {"onnx": lat(fp_ms), "onnx-int8": lat(q_ms)},
                "accuracy": {"onnx": {"intent_accuracy": fp_acc}, "onnx-int8": {"intent_accuracy": q_acc}}}

    assert int8_decision(results(100, 60, 0.95, 0.95)).startswith("keep")
    assert int8_decision(results(100, 60, 0.95, 0.90)).startswith("do not use")
    assert int8_decision(results(100, 98, 0.95, 0.95)).startswith("do not use")
    assert int8_decision({}) == "int8 not measured"


def test_model_folder_must_be_a_saved_slu_model(tmp_path, capsys):
    """The bench resolves --model as every inference command does (assistant.paths.resolve_model_dir)."""
    from assistant.bench.run import cli

    assert cli(["--model", str(tmp_path), "--json", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert f"no trained model at {tmp_path}" in err and "assistant train" in err and not (tmp_path / "b.json").exists()


def _clip_manifest(tmp_path, seconds: dict[str, float], durations: dict[str, float] | None = None):
    """Utterances whose audio is a tone of the given length (each clip its own frequency)."""
    import numpy as np
    import soundfile as sf

    from assistant.data.manifest import Utterance

    utts = []
    for k, (name, sec) in enumerate(seconds.items()):
        path = tmp_path / f"{name}.wav"
        t = np.arange(int(sec * 16000)) / 16000
        sf.write(path, (0.1 * np.sin(2 * np.pi * (200 + 50 * k) * t)).astype(np.float32), 16000)
        utts.append(Utterance(audio=str(path), text=name, intent="x", id=name,
                              duration=(durations or {}).get(name)))
    return utts


def test_select_clips_picks_the_closest_distinct_readable_clips_per_length(tmp_path):
    utts = _clip_manifest(tmp_path, {"a0.2": 0.2, "b1.0": 1.0, "c1.5": 1.5, "e2.9": 2.9, "f5.0": 5.0, "g6.0": 6.0})
    # a clip whose manifest says 1.0 s but whose file is not audio: skipped, the next closest is taken
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")
    utts.insert(0, type(utts[0])(audio=str(tmp_path / "broken.wav"), text="x", intent="x", id="broken", duration=1.0))
    clips = select_clips(utts, per_length=2)
    assert [c.name for c in clips["1s"]] == ["b1.0", "c1.5"]
    assert [c.name for c in clips["3s"]] == ["e2.9", "f5.0"]            # c1.5 is nearer 3 s, but taken by 1s
    assert [c.seconds for c in clips["1s"] + clips["3s"]] == [1.0, 1.5, 2.9, 5.0]   # measured from the wave
    # 8 s clips: the 3 s then the 1 s clips, in turn, joined with 0.3 s of silence, cut to exactly 8 s
    pieces = [c.wave for c in clips["3s"] + clips["1s"]]
    gap = torch.zeros(4800)
    for k, long in enumerate(clips["8s"]):
        expected = torch.cat([x for j in range(k, k + 4) for x in (pieces[j % 4], gap)])[:8 * 16000]
        assert long.name == f"concat-{k}" and long.seconds == 8.0 and torch.equal(long.wave, expected)


def test_select_clips_reuses_clips_only_when_the_manifest_is_short(tmp_path):
    utts = _clip_manifest(tmp_path, {"one": 1.0, "three": 3.0})
    clips = select_clips(utts, per_length=2)
    assert [c.name for c in clips["1s"]] == ["one", "three"] and [c.name for c in clips["3s"]] == ["three", "one"]
    # a manifest duration, when given, is what ranks clips (the file is not opened to measure it)
    utts = _clip_manifest(tmp_path, {"p": 1.0, "q": 2.0, "r": 3.0}, durations={"p": 3.0, "r": 1.0})
    clips = select_clips(utts, per_length=1)
    assert [c.name for c in clips["1s"]] == ["r"] and [c.name for c in clips["3s"]] == ["p"]


def test_cli_names_a_missing_model_folder(tmp_path, capsys):
    from assistant.bench.run import cli

    assert cli(["--model", str(tmp_path / "nope"), "--json", str(tmp_path / "b.json")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "b.json").exists()


def test_recipe_yaml_is_a_valid_bench_config():
    from assistant.bench.run import BenchConfig
    from assistant.config import load_config

    cfg = load_config(BenchConfig, Path(__file__).parent.parent / "recipes" / "configs" / "bench.yaml")
    assert cfg.accuracy_utts == 200 and cfg.cascade and not cfg.quick


def test_cascade_accuracy_is_reused_only_for_the_same_subset_and_peer(tmp_path):
    from assistant.bench.systems import reusable_cascade_accuracy

    key = {"asr": "x", "asr_bytes": 1, "teacher": "t", "transformers": "5"}
    old = {"accuracy_subset": {"fingerprint": "abc"}, "cascade_key": key, "meta": {"time": "then"},
           "accuracy": {"cascade": {"intent_accuracy": 0.6, "n": 200}}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    reused, why = reusable_cascade_accuracy(str(path), "abc", key)
    assert reused["intent_accuracy"] == 0.6 and reused["reused_from"] == str(path) and why == "reused"
    assert reusable_cascade_accuracy(str(path), "other", key)[0] is None
    assert reusable_cascade_accuracy(str(path), "abc", {**key, "teacher": "u"})[0] is None
    assert "unreadable" in reusable_cascade_accuracy(str(tmp_path / "nope.json"), "abc", key)[1]


def test_subset_fingerprint_changes_with_the_labels():
    from assistant.bench.systems import subset_fingerprint
    from assistant.data.manifest import read_manifest

    utts = read_manifest(FSC)
    same = subset_fingerprint(utts)
    assert same == subset_fingerprint(read_manifest(FSC))
    utts[0].intent = "something_else"
    assert subset_fingerprint(utts) != same


def test_systems_take_turns_on_the_same_clips():
    from assistant.bench.harness import latency_side_by_side

    calls = []

    def system(name):
        return lambda waves: calls.append((name, len(waves), float(waves[0][0])))

    clips = {"1s": [Clip("a", torch.full((16000,), 1.0), 1.0), Clip("b", torch.full((16000,), 2.0), 1.0)],
             "3s": [Clip("c", torch.full((48000,), 3.0), 3.0)]}
    out = latency_side_by_side({"x": system("x"), "y": system("y")}, clips, reps=4, batch_reps=1, batch_size=2,
                               warmup=False, only={"y": ["3s"]})
    assert set(out["x"]) == {"1s", "3s"} and set(out["y"]) == {"3s"}
    assert out["x"]["3s"]["batch1"]["n"] == 4 and out["x"]["3s"]["batch2"]["n"] == 1
    three = [c for c in calls if c[2] == 3.0 and c[1] == 1]
    assert [c[0] for c in three] == ["x", "y", "y", "x", "x", "y", "y", "x"]   # interleaved, order rotating
    assert sorted({c[2] for c in calls if c[0] == "x" and c[1] == 1}) == [1.0, 2.0, 3.0]


def test_json_rounding_keeps_small_differences_visible():
    from assistant.bench.harness import round_significant

    assert round_significant({"diff": 1.43e-05, "ms": 1466.123, "bad": float("nan"), "n": 3}) == \
        {"diff": 1.43e-05, "ms": 1466.1, "bad": None, "n": 3}


def test_sampler_bench_prints_one_json_object(tmp_path, capsys):
    """`assistant bench --sampler --json` on a tiny random model: ours (N=2 and 16), the reference decoder
    and transformers' generate side by side, one JSON object on stdout."""
    from assistant.bench.run import cli
    from assistant.model.slu import SLUModel

    model_dir = SLUModel.tiny_random(["turn on the lights | lights_on | room=kitchen"], seed=0).save_pretrained(
        tmp_path / "tiny")
    out = tmp_path / "sampler.json"
    code = cli(["--sampler", "--json", "--model", str(model_dir), "--clips", "2", "--n", "2", "--reps", "1",
                "--max-new-tokens", "4", "--threads", "1", "--out", str(out)])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r == json.loads(out.read_text())
    assert r["ours_candidates_per_second"] > 0 and r["generate_candidates_per_second"] > 0
    assert set(r["ours"]) == {"2", "16"} and r["ours"]["16"]["draws"] == 32
    assert r["generate"]["16"]["draws"] == 32 and r["reference"]["16"]["draws"] == 32
    assert r["profile"]["decoder_steps"] >= 1 and r["profile"]["top_ops"]
    assert [g["met"] in (True, False) for g in r["goals"]] == [True, True]


def test_bench_package_sits_on_top_and_shares_no_private_names():
    """model/, nlu/, data/ and rsft/ never import the bench; bench modules import only public names."""
    import ast

    import assistant

    root = Path(assistant.__file__).parent
    for layer in ("model", "nlu", "data", "rsft"):
        for path in (root / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n.startswith("assistant.bench") for n in names), path
    for path in (root / "bench").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("assistant"):
                assert not [a.name for a in node.names if a.name.startswith("_")], (path, node.module)
