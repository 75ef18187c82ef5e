"""The RSFT loop wired end to end on a tiny random model and fixture audio."""

import json
import os
import shutil
from pathlib import Path

import pytest

from assistant.config import ConfigError, load_config
from assistant.rsft.loop import RSFTConfig, run_rsft

FSC = Path(__file__).parent / "fixtures" / "fsc" / "data" / "train_data.csv"


@pytest.fixture(scope="module")
def init_model(tmp_path_factory):
    from assistant.data.manifest import read_manifest
    from assistant.model.slu import SLUModel
    from assistant.train import frame_target

    folder = tmp_path_factory.mktemp("init")
    SLUModel.tiny_random([frame_target(u) for u in read_manifest(FSC)], seed=0).save_pretrained(folder)
    return folder


def _cfg(init_model, out, **kw):
    values = dict(init_model=str(init_model), pool_manifest=str(FSC), labelled_manifest=str(FSC),
                  dev_manifest=str(FSC), output_dir=str(out), rounds=1,
                  generate={"num_samples": 3, "max_new_tokens": 12},
                  rewards={"verifier": 1.0, "acoustic": {"weight": 0.1, "length_alpha": 0.5}},
                  accept={"rule": "best_of_n", "k": 1},
                  finetune={"epochs": 1, "batch_size": 4, "dev_limit": 4}, seed=0)
    values.update(kw)
    return load_config(RSFTConfig, None, **values)


def test_one_round_persists_every_step_and_reports(init_model, tmp_path):
    summary = run_rsft(_cfg(init_model, tmp_path / "r"))
    rdir = tmp_path / "r" / "round_1"
    cands = [json.loads(l) for l in (rdir / "candidates.jsonl").read_text().splitlines()]
    decisions = [json.loads(l) for l in (rdir / "decisions.jsonl").read_text().splitlines()]
    scored = [json.loads(l) for l in (rdir / "scored.jsonl").read_text().splitlines()]
    assert len(cands) == len(decisions) == len(scored) >= 4           # >= greedy per utterance
    assert {c["utt_id"] for c in cands} == {d["utt_id"] for d in decisions}
    # best_of_n with k=1 keeps exactly one candidate per utterance
    kept = [d for d in decisions if d["accepted"]]
    assert len(kept) == len({d["utt_id"] for d in decisions})
    report = json.loads((rdir / "report.json").read_text())
    assert report["acceptance"]["n_candidates"] == len(cands)
    assert set(scored[0]["rewards"]) == {"verifier", "acoustic"}
    assert (tmp_path / "r" / "rounds.png").stat().st_size > 1000
    assert Path(summary["best_dir"]).is_dir()
    assert summary["rounds"][0]["round"] == 1


def test_finished_rounds_are_skipped_on_rerun(init_model, tmp_path):
    run_rsft(_cfg(init_model, tmp_path / "r"))
    before = (tmp_path / "r" / "round_1" / "decisions.jsonl").read_text()
    mtime = (tmp_path / "r" / "round_1" / "report.json").stat().st_mtime
    run_rsft(_cfg(init_model, tmp_path / "r"))
    assert (tmp_path / "r" / "round_1" / "report.json").stat().st_mtime == mtime
    assert (tmp_path / "r" / "round_1" / "decisions.jsonl").read_text() == before
    # ... but only under the settings they were made with: another reward is refused, not passed off as this one
    with pytest.raises(ConfigError, match=r"other settings \(rewards differ"):
        run_rsft(_cfg(init_model, tmp_path / "r", rewards={"verifier": 1.0}))
    assert (tmp_path / "r" / "round_1" / "report.json").stat().st_mtime == mtime
    # a copied run folder resumes: its location is not a setting, nor is a path's spelling (relative/absolute)
    shutil.copytree(tmp_path / "r", tmp_path / "copy")
    copied = (tmp_path / "copy" / "round_1" / "report.json").stat().st_mtime
    run_rsft(_cfg(init_model, tmp_path / "copy", pool_manifest=os.path.relpath(FSC)))
    assert (tmp_path / "copy" / "round_1" / "report.json").stat().st_mtime == copied


def test_greedy_only_pseudo_labelling_keeps_the_argmax(init_model, tmp_path):
    run_rsft(_cfg(init_model, tmp_path / "p", generate={"num_samples": 0}, rewards={"acoustic": 1.0}))
    cands = [json.loads(l) for l in (tmp_path / "p" / "round_1" / "candidates.jsonl").read_text().splitlines()]
    assert cands and all(c["greedy"] for c in cands)


def test_bad_rsft_config_is_a_clear_error(init_model, tmp_path):
    with pytest.raises(ConfigError, match="rule"):
        _cfg(init_model, tmp_path, accept={"rule": "most_likely"})
    with pytest.raises(ConfigError, match="beta"):
        _cfg(init_model, tmp_path, accept={"rule": "statistical", "beta": 0})
    with pytest.raises(ConfigError, match="tau"):
        _cfg(init_model, tmp_path, accept={"rule": "threshold"})           # the rule's required parameter
    with pytest.raises(ConfigError, match=r"rewards\.acoustic.*length_alpah"):
        _cfg(init_model, tmp_path, rewards={"acoustic": {"weight": 1.0, "length_alpah": 0.5}})
    with pytest.raises(ConfigError, match=r"rewards\.verifier.*weight"):
        _cfg(init_model, tmp_path, rewards={"verifier": {"length_alpha": 0.5}})
    with pytest.raises(ConfigError, match="pool_limit"):
        _cfg(init_model, tmp_path, pool_limit=0)
    with pytest.raises(ConfigError, match="init_model"):
        run_rsft(_cfg(tmp_path / "missing", tmp_path / "x"))


def test_none_means_none_in_rsft_configs(init_model, tmp_path):
    """cap / bound / top_k / limits are None when absent (not a magic 0), and "none" / null spell it on
    the CLI / in YAML; each rule reads only its own parameters."""
    from assistant.config import from_dict
    from assistant.rsft.loop import RSFTConfig

    default = RSFTConfig()
    assert default.accept.rule_params()["cap"] is None and default.accept.rule_params()["bound"] is None
    assert (default.generate.top_k, default.pool_limit, default.labelled_limit, default.ref_model) == (None,) * 4
    cfg = from_dict(RSFTConfig, {"accept": {"cap": "none", "bound": "null", "rule": "threshold", "tau": 0.5}})
    assert cfg.accept.cap is None and cfg.accept.rule_params() == {"tau": 0.5, "cap": None}
    assert from_dict(RSFTConfig, {"accept": {"cap": "2"}}).accept.rule_params()["cap"] == 2
    assert from_dict(RSFTConfig, {"accept": {"rule": "best_of_n", "k": 2}}).accept.rule_params() == {"k": 2}
    with pytest.raises(ConfigError, match="cap"):
        from_dict(RSFTConfig, {"accept": {"cap": "two"}})


def test_reference_reuses_the_encoder_only_when_it_is_identical(init_model, tmp_path):
    import torch

    from assistant.data.manifest import read_manifest
    from assistant.model.slu import SLUModel
    from assistant.rsft.generate import GenerateConfig, generate_candidates, same_encoder

    from assistant.audio import load_audio
    from assistant.train import frame_target

    pool = read_manifest(FSC)[:3]
    model = SLUModel.from_pretrained(init_model)
    waves = [load_audio(u.audio, max_seconds=model.context_seconds) for u in pool]
    mels = model.features(waves)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)   # overfit so that candidates end (get ref scores)
    model.train()
    for _ in range(120):
        loss = model.loss(mels, [frame_target(u) for u in pool])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ref = SLUModel.from_pretrained(init_model)
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():                                  # a reference that differs in the decoder only
        for p in ref.whisper.model.decoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert same_encoder(model, ref) and same_encoder(model, model) and same_encoder(model, None)
    params = GenerateConfig(num_samples=2, max_new_tokens=40, temperature=0.5, batch_size=3)
    shared = generate_candidates(model, pool, tmp_path / "shared.jsonl", params, ref_model=ref, seed=1)
    with torch.no_grad():
        ref.whisper.model.encoder.layers[0].fc1.weight.add_(0.05)
    assert not same_encoder(model, ref)
    own = generate_candidates(model, pool, tmp_path / "own.jsonl", params, ref_model=ref, seed=1)
    flat = lambda groups: [c for g in groups for c in g]   # noqa: E731
    assert [c.text for c in flat(shared)] == [c.text for c in flat(own)]
    # Shared-encoder reference scores equal scoring with the reference's own (identical) encoder...
    assert sum(c.ref_logprob is not None for c in flat(shared)) >= 3
    with torch.no_grad():
        ref.whisper.model.encoder.layers[0].fc1.weight.sub_(0.05)
        enc = ref.encode(ref.features(waves))
        rows = [i for i, g in enumerate(shared) for _ in g]
        direct = ref.sequence_logprobs(enc, [c.token_ids for c in flat(shared)], expand=rows).tolist()
    for c, d in zip(flat(shared), direct):
        if c.ref_logprob is not None:
            assert c.ref_logprob == pytest.approx(d, rel=1e-4, abs=1e-4)
    # ... and a changed encoder changes them.
    assert any(a.ref_logprob != b.ref_logprob for a, b in zip(flat(shared), flat(own)) if a.ref_logprob is not None)


def test_each_round_fine_tunes_with_the_nested_supervised_recipe(init_model, tmp_path, monkeypatch):
    """No hand-built copy: the round's TrainConfig is the config's own ``train`` with only data, output and
    seed filled in by the round (LoRA, caching, lr scale, SpecAugment all travel)."""
    import assistant.rsft.loop as loop_mod

    seen = []
    real = loop_mod.fine_tune

    def spy(model, examples, dev, cfg, out_dir, **kw):
        seen.append(cfg)
        return real(model, examples, dev, cfg, out_dir, **kw)

    monkeypatch.setattr(loop_mod, "fine_tune", spy)
    cfg = _cfg(init_model, tmp_path / "r", finetune={"epochs": 1, "batch_size": 4, "dev_limit": 4, "lr": 2e-3,
                                                  "encoder_lr_scale": 0.5, "spec_augment": True, "warmup_steps": 1})
    run_rsft(cfg)
    (used,) = seen
    assert (used.lr, used.encoder_lr_scale, used.spec_augment, used.batch_size) == (2e-3, 0.5, True, 4)
    assert used.seed == cfg.seed + 1 and used.output_dir.endswith("round_1/train")


def test_round_owned_train_keys_are_refused(init_model, tmp_path):
    with pytest.raises(ConfigError, match="train_manifest"):
        _cfg(init_model, tmp_path / "x", finetune={"train_manifest": str(FSC)})


def test_the_nested_recipe_is_yaml_and_dotted_flags(tmp_path):
    import argparse

    from assistant.config import add_dataclass_arguments, parse_config

    path = tmp_path / "r.yaml"
    path.write_text("rounds: 1\nfinetune:\n  lr: 0.002\n  epochs: 3\naccept:\n  rule: statistical\n  k: 2\n"
                    "rewards:\n  verifier: 1.0\n  agreement: {weight: 0.5, text_weight: 3.0}\n")
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, RSFTConfig)
    cfg = parse_config(RSFTConfig, parser.parse_args(["--config", str(path), "--finetune.epochs", "5",
                                                      "--accept.beta", "0.5", "--generate.num-samples", "16",
                                                      "--generate.top-k", "50"]))
    assert (cfg.rounds, cfg.accept.beta, cfg.accept.k, cfg.finetune.lr, cfg.finetune.epochs) == (1, 0.5, 2, 0.002, 5)
    assert (cfg.generate.num_samples, cfg.generate.top_k, cfg.generate.temperature) == (16, 50, 1.0)
    assert cfg.rewards["agreement"] == {"weight": 0.5, "text_weight": 3.0}
    assert cfg.finetune.warmup_steps == 10       # the round recipe's default, not TrainConfig's own 30
    path.write_text("finetune:\n  nope: 1\n")
    with pytest.raises(ConfigError, match="nope"):
        parse_config(RSFTConfig, parser.parse_args(["--config", str(path)]))
    path.write_text("finetune: 3\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(RSFTConfig, parser.parse_args(["--config", str(path)]))


def test_kept_frame_gets_the_transcript_most_draws_agree_on():
    """A sampled transcript becomes a target only when the sampler agrees on it: the kept frame keeps its
    intent and slots, its transcript is the most-drawn one among candidates with that intent and slots."""
    from assistant.data.manifest import Utterance
    from assistant.frames import parse_frame
    from assistant.rsft.loop import kept_examples, majority_transcript
    from assistant.rsft.types import Candidate, Decision, Scored

    u = Utterance(audio="a.flac", text="", intent="", id="u1")
    rows = [("stop the timer | timer_remove |", 4, True), ("stop a timer | timer_remove |", 1, False),
            ("stop the time | timer_remove |", 5, False), ("set a timer | timer_set |", 6, False)]
    cands = [Candidate("u1", i, t, [1], greedy=g, count=c) for i, (t, c, g) in enumerate(rows)]
    assert majority_transcript(cands, cands[1]) == "stop the time"        # 5 draws beat the greedy's 4
    assert majority_transcript(cands, cands[3]) == "set a timer"
    tie = [Candidate("u1", 0, rows[1][0], [1], count=2), Candidate("u1", 1, rows[0][0], [1], greedy=True, count=2)]
    assert majority_transcript(tie, tie[0]) == "stop the timer"            # ties: the greedy row's
    scored = [[Scored(c, {}, 0.0) for c in cands]]
    decisions = [[Decision("u1", i, i == 1, "statistical: test") for i in range(4)]]
    (majority,) = kept_examples([u], scored, decisions)
    (sampled,) = kept_examples([u], scored, decisions, transcript_target="sampled")
    assert parse_frame(majority.target).frame.transcript == "stop the time"
    assert parse_frame(sampled.target).frame.transcript == "stop a timer"
    assert parse_frame(majority.target).frame.intent == "timer_remove" and majority.id == sampled.id == "u1#1"
    assert majority.weight == 1.0
    soft = [[Decision("u1", i, i == 1, "abstain (kept at weight 0.3): test", 0.3) for i in range(4)]]
    assert [e.weight for e in kept_examples([u], scored, soft)] == [0.3]        # the loss weight travels along


def test_the_teacher_reads_the_hold_out_file_beside_the_pool(tmp_path):
    from assistant.rsft.loop import holdout_path

    pool = tmp_path / "pool.jsonl"
    pool.write_text("")
    assert holdout_path(RSFTConfig(pool_manifest=str(pool))) is None       # none there: the default corpus's
    (tmp_path / "holdout.json").write_text("{}")
    assert holdout_path(RSFTConfig(pool_manifest=str(pool))) == tmp_path / "holdout.json"
    assert holdout_path(RSFTConfig(pool_manifest=str(pool), holdout_file="/x/h.json")) == Path("/x/h.json")


def test_pseudo_label_quality_is_reported_per_phrasing_part():
    from assistant.data.manifest import Utterance
    from assistant.rsft.loop import pseudo_label_quality
    from assistant.train import Example

    pool = [Utterance(audio=f"{i}.flac", text="", intent="timer_remove", id=f"p{i}", meta={"part": part})
            for i, part in enumerate(["seen", "seen", "field", "field"])]
    kept = [Example("0.flac", "stop the timer | timer_remove |", "p0#1"),
            Example("2.flac", "stop the timer | timer_remove |", "p2#0"),
            Example("3.flac", "set a timer | timer_set |", "p3#2")]
    q = pseudo_label_quality(pool, kept)
    assert q["kept"] == 3 and q["kept_frame_precision"] == pytest.approx(2 / 3) and q["pool_coverage"] == 0.75
    assert q["per_part"]["seen"] == {"pool": 2, "kept": 1, "coverage": 0.5, "kept_frame_precision": 1.0}
    assert q["per_part"]["field"] == {"pool": 2, "kept": 2, "coverage": 1.0, "kept_frame_precision": 0.5}
