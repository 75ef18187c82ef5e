"""Readings as RSFT candidates (assistant.rsft.readings): the text model's frame for each decoded transcript
and for the stock transcript join the samples, scored by the speech model, never counted as draws.

The teacher is the real MiniLM network with fresh (untrained, seeded) heads, as in test_nlu: its readings
are arbitrary but real, which is all the plumbing needs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from assistant.frames import Frame, format_frame, parse_frame
from assistant.model.slu import SLUModel
from assistant.nlu import TextTeacher
from assistant.rsft.generate import GenerateConfig, generate_candidates, read_done
from assistant.rsft.readings import Reader, ReadingError
from assistant.schema import load_schema

FSC = Path(__file__).parent / "fixtures" / "fsc" / "data" / "train_data.csv"
LIGHTS = Frame("activate_lights_kitchen", {"object": "lights", "location": "kitchen"}, "turn on the lights in the kitchen")
ALARM = Frame("alarm_set", {"time": "seven thirty a m"}, "set an alarm for seven thirty a m")


@pytest.fixture(scope="module")
def teacher():
    schema = load_schema()
    torch.manual_seed(0)
    return TextTeacher.fresh(list(schema.intents), sorted(schema.slots), implied_slots={}, intent_slots={})


HEARD = ["turn on the lights in the kitchen", "", "set an alarm for seven thirty a m"]


@pytest.fixture(scope="module")
def model():
    # an output vocabulary that can spell any frame the teacher may read from HEARD
    schema = load_schema()
    texts = [t for t in HEARD if t] + [f"| {i} | " + "; ".join(f"{s}=x" for s in schema.slots) for i in schema.intents]
    return SLUModel.tiny_random(texts + ["| |"], seed=0)


def decoded(*texts, finished=True):
    return [SimpleNamespace(text=t, finished=finished) for t in texts]


class StockHeard(Reader):
    """The stock transcript given (the stock decode itself is tested in test_nlu / test_model)."""

    def __init__(self, teacher, heard, sources=("text", "stock")):
        super().__init__(teacher, sources)
        self.heard = heard

    def stock_transcripts(self, model, waves):
        return list(self.heard)


def test_text_readings_are_the_teachers_frames_of_each_distinct_transcript(model, teacher):
    lights2 = Frame("deactivate_lights_kitchen", dict(LIGHTS.slots), LIGHTS.transcript)   # same transcript
    out = Reader(teacher, ["text"])(model, [], [decoded(format_frame(LIGHTS), format_frame(lights2), "no frame here"),
                                                decoded(format_frame(ALARM), finished=False)])
    want = teacher.predict([LIGHTS.transcript])[0]
    expected = format_frame(Frame(want[0], dict(want[1]), LIGHTS.transcript))
    # one reading per distinct transcript (two frames share one), none of an unparsable or cut-off output,
    # and none that repeats a decoded text
    if expected in (format_frame(LIGHTS), format_frame(lights2)):
        assert out == [[], []]
    else:
        assert out == [[(expected, "text")], []]


def test_stock_readings_read_stock_whispers_transcript(model, teacher):
    reader = StockHeard(teacher, ["", "set an alarm for seven thirty a m"], sources=["stock"])
    out = reader(model, [None, None], [decoded(format_frame(LIGHTS)), decoded()])
    intent, slots, _ = teacher.predict([ALARM.transcript])[0]
    assert out[0] == []                                          # stock heard nothing: no reading
    assert out[1] == [(format_frame(Frame(intent, dict(slots), ALARM.transcript)), "stock")]
    # a model without adapters has no stock path (the stock prompt would not be the pretrained model)
    assert Reader(teacher, ["stock"]).stock_transcripts(model, [None, None]) == ["", ""]


def test_stock_transcripts_are_decoded_once_per_utterance(teacher):
    """Every round's model has the same stock path (pretrained, adapters off): a round after the first
    reads the stock transcripts it decoded before instead of decoding them again."""
    class Counting(Reader):
        def __init__(self):
            super().__init__(teacher, ["stock"])
            self.decoded = []

        def stock_transcripts(self, model, waves):
            self.decoded.append(list(waves))
            return [HEARD[w] for w in waves]

    class WithStockPath:
        has_stock_path = True

    reader, model = Counting(), WithStockPath()
    first = reader(model, [0, 2], [decoded(), decoded()], ["u0", "u2"])
    again = reader(model, [1, 2, 0], [decoded(), decoded(), decoded()], ["u1", "u2", "u0"])
    assert reader.decoded == [[0, 2], [1]]                      # u0 and u2 were not decoded again
    assert again[1:] == [first[1], first[0]] and again[0] == []  # u1 heard nothing: no reading
    assert first[1] == [(format_frame(Frame(*teacher.predict([HEARD[2]])[0][:2], HEARD[2])), "stock")]
    reader(model, [0], [decoded()])                             # no ids: decoded now, nothing kept
    assert reader.decoded[-1] == [0] and set(reader.stock_by_id) == {"u0", "u1", "u2"}


def test_reader_set_up_errors(teacher):
    with pytest.raises(ReadingError, match="unknown"):
        Reader(teacher, ["text", "oracle"])
    with pytest.raises(ReadingError, match="text model"):
        Reader(None, ["text"])


def test_readings_join_the_candidates_scored_and_not_counted_as_draws(model, teacher, tmp_path):
    from assistant.data.manifest import read_manifest

    pool = read_manifest(FSC)[:3]
    reader = StockHeard(teacher, HEARD)
    params = GenerateConfig(num_samples=3, max_new_tokens=8, batch_size=3)
    path = tmp_path / "candidates.jsonl"
    groups = generate_candidates(model, pool, path, params, ref_model=model, seed=1, reader=reader)
    plain = generate_candidates(model, pool, tmp_path / "plain.jsonl", params, ref_model=model, seed=1)
    readings = [c for cs in groups for c in cs if c.source != "sample"]
    assert {c.source for c in readings} == {"stock"}            # random decoder output parses as no frame
    assert [len(cs) - len(p) for cs, p in zip(groups, plain)] == [1, 0, 1]
    for cs, p in zip(groups, plain):                              # the draws themselves are unchanged
        assert [(c.text, c.count, c.logprob) for c in cs[:len(p)]] == [(c.text, c.count, c.logprob) for c in p]
    from assistant.audio import load_audio

    for c in readings:
        assert c.count == 0 and not c.greedy and c.finished and c.frame is not None
        u = next(u for u in pool if u.id == c.utt_id)
        with torch.no_grad():
            enc = model.encode(model.features([load_audio(u.audio, max_seconds=model.context_seconds)]))
            want = float(model.sequence_logprobs(enc, [c.text])[0])
        assert c.logprob == pytest.approx(want, abs=1e-4) and c.ref_logprob == pytest.approx(want, abs=1e-4)
        assert c.token_ids == model.tokenize([c.text])[0]
    # persisted with their source: a resumed round reads them back as readings
    back = read_done(path)
    assert sorted((c.utt_id, c.index, c.source) for cs in back.values() for c in cs) == \
        sorted((c.utt_id, c.index, c.source) for cs in groups for c in cs)
    assert all("source" in json.loads(line) for line in path.read_text().splitlines())


def test_rsft_config_refuses_readings_with_the_exact_rule_and_vouching_without_the_teacher():
    from assistant.rsft.loop import RSFTConfig

    from assistant.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="statistical"):
        from_dict(RSFTConfig, {"generate": {"readings": ["text"]}, "accept": {"rule": "statistical"}})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(RSFTConfig, {"generate": {"readings": ["guess"]}, "accept": {"rule": "best_of_n"}})
    with pytest.raises(ConfigError, match="teacher: 0.0"):
        from_dict(RSFTConfig, {"accept": {"min_text_confidence": 0.9}, "rewards": {"verifier": 1.0}})
    from_dict(RSFTConfig, {"generate": {"readings": ["text", "stock"]}, "rewards": {"agreement": 1.0, "teacher": 0.0},
                           "accept": {"rule": "best_of_n", "min_vote": 0.5, "min_text_confidence": 0.9}})


def test_the_main_job_gives_rsft_the_supervised_text_pass():
    from assistant.main_job import with_text_pass
    from assistant.rsft.loop import RSFTConfig

    from assistant.config import from_dict

    cfg = from_dict(RSFTConfig, {"generate": {"readings": ["text", "stock"]}, "accept": {"rule": "best_of_n"},
                                 "rewards": {"verifier": 1.0, "agreement": {"weight": 0.5, "text_weight": 1.0}}})
    with_stock = with_text_pass(cfg, weight=4.0, stock_bonus=-8.0)
    assert with_stock.rewards["agreement"] == {"weight": 0.5, "text_weight": 4.0, "stock_bonus": -8.0}
    assert with_stock.generate.readings == ["text", "stock"] and with_stock.rewards["verifier"] == 1.0
    never = with_text_pass(cfg, weight=2.0, stock_bonus=-math.inf)   # a pass that never reads stock
    assert (never.rewards["agreement"]["text_weight"], never.generate.readings) == (2.0, ["text"])
    assert with_text_pass(cfg, 1.0, math.inf).rewards["agreement"]["stock_bonus"] == 1e3
    assert cfg.generate.readings == ["text", "stock"]                  # the given config is left alone


def test_the_readings_recipe_loads_and_validates():
    from assistant.config import load_config
    from assistant.rsft.loop import RSFTConfig

    cfg = load_config(RSFTConfig, Path(__file__).parent.parent / "recipes" / "configs" / "rsft_readings.yaml")
    cfg.validate()
    assert cfg.generate.readings == ["text", "stock"] and cfg.accept.rule == "best_of_n"
    assert cfg.accept.min_text_confidence == 0.9 and cfg.rewards["agreement"]["text_weight"] == 4.0
