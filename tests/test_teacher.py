"""The text model (assistant.nlu.model / spans / training): real MiniLM weights, trained briefly on the real
grammar, scored on held-out templates; its RSFT reward (assistant.rsft.rewards.TeacherReward)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from assistant.data.grammar import load_grammar
from assistant.frames import Frame
from assistant.nlu import training as training_mod
from assistant.nlu.model import LOGP_FLOOR, MISSING_SLOT_LOGP, TeacherError, TextTeacher, minilm_dir
from assistant.nlu.spans import bio_tags, locate_slots, spans_from_tags
from assistant.nlu.training import augment_words, default_sentences, train_teacher, training_fingerprint
from assistant.rsft.rewards import UNPARSEABLE_SCORE, TeacherReward
from assistant.schema import load_schema

# A quick recipe (~1200 sentences, top 3 layers trained): about a minute on two cores.
TRAIN = dict(epochs=3, lr=2e-4, freeze_layers=3)
TRAIN_PER_TEMPLATE = 4


# ------------------------------------------------------------------------------------------ pure helpers

def test_locate_slots_places_longest_values_first_and_reports_missing():
    words = "set an alarm for seven thirty a m and seven".split()
    spans, missing = locate_slots(words, {"time": "seven thirty a m", "number": "seven", "date": "tomorrow"})
    assert spans == {"time": (4, 8), "number": (9, 10)}
    assert missing == ["date"]
    assert bio_tags(len(words), spans)[3:10] == ["O", "B-time", "I-time", "I-time", "I-time", "O", "B-number"]


def test_spans_from_tags_repairs_stray_inside_tags():
    assert spans_from_tags(["O", "B-a", "I-a", "I-b", "O", "I-a"]) == [("a", 1, 3), ("b", 3, 4), ("a", 5, 6)]


def test_augment_words_keeps_tags_aligned_and_slot_words_in_place():
    rng = random.Random(0)
    words = "please set a timer for twenty minutes".split()
    tags = ["O", "O", "O", "O", "O", "B-duration", "I-duration"]
    changed = 0
    for _ in range(200):
        new_words, new_tags = augment_words(words, tags, rng, vocab=["lights", "kitchen"], rate=0.3)
        assert len(new_words) == len(new_tags)
        assert [t for t in new_tags if t != "O"] == ["B-duration", "I-duration"]
        changed += new_words != words
    assert changed > 100


# ------------------------------------------------------------------------------------------ real weights

@pytest.mark.slow
def test_minilm_loads_offline_and_is_really_pretrained():
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tokenizer(["turn on the kitchen lights", "switch the lights on in the kitchen",
                       "what is the weather in paris"], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    same, different = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert same > different + 0.3        # random weights would not separate paraphrases from other topics


@pytest.fixture(scope="module")
def schema():
    return load_schema()


@pytest.fixture(scope="module")
def split(schema):
    """Grammar sentences split by template: one template per intent (with >= 2) never seen in training."""
    grammar = load_grammar()
    train_ids, held_ids = [], []
    for intent in schema.intents:
        ids = list(grammar.template_ids(intent))
        if len(ids) >= 2:
            held_ids.append(ids[-1])
            ids = ids[:-1]
        train_ids += ids
    train = grammar.expand(schema, template_ids=train_ids, per_template=TRAIN_PER_TEMPLATE, seed=0)
    held = grammar.expand(schema, template_ids=held_ids, per_template=2, seed=1)
    return train, held


@pytest.fixture(scope="module")
def trained(schema, split):
    return train_teacher(split[0], schema, seed=0, progress=False, **TRAIN)


@pytest.mark.slow
def test_predict_gets_the_intent_of_held_out_templates(trained, split):
    held = split[1]
    assert len(held) >= 40
    predictions = trained.predict([s.text for s in held])
    accuracy = np.mean([p[0] == s.intent for p, s in zip(predictions, held)])
    assert accuracy >= 0.9, f"held-out-template intent accuracy {accuracy:.2%}"
    assert all(0.0 <= p[2] <= 1.0 for p in predictions)


@pytest.mark.slow
def test_predict_fills_slots_with_words_from_the_transcript(trained, split, schema):
    with_slots = [s for s in split[1] if s.slots][:60]
    predictions = trained.predict([s.text for s in with_slots])
    exact = np.mean([p[1] == s.slots for p, s in zip(predictions, with_slots)])
    assert exact >= 0.6, f"exact slot match on held-out templates {exact:.2%}"
    for (intent, slots, _), s in zip(predictions, with_slots):
        assert set(slots) <= set(schema.intents[intent].slots)


@pytest.mark.slow
def test_log_likelihood_prefers_the_true_frame(trained, split, schema):
    rng = random.Random(0)
    held = [s for s in split[1] if s.slots][:40]
    other_intents = [i for i in schema.intents]
    wrong_intent = [rng.choice([i for i in other_intents if i != s.intent]) for s in held]
    absent = [{**s.slots, next(iter(s.slots)): "purple elephant"} for s in held]
    texts = [s.text for s in held]
    true = trained.log_likelihood(texts, [s.intent for s in held], [s.slots for s in held])
    vs_intent = trained.log_likelihood(texts, wrong_intent, [s.slots for s in held])
    vs_absent = trained.log_likelihood(texts, [s.intent for s in held], absent)
    assert np.all(true <= 0)
    assert np.mean(true > vs_intent) >= 0.95
    assert np.all(true > vs_absent)
    assert np.all(vs_absent <= MISSING_SLOT_LOGP)    # the floor for the absent value is always paid


@pytest.mark.slow
def test_log_likelihood_on_hand_written_asr_style_transcripts(trained):
    text = "Set an alarm for 7:30 a.m. tomorrow"
    scores = trained.log_likelihood(
        [text] * 4,
        ["alarm_set", "timer_set", "alarm_set", "alarm_set"],
        [{"time": "seven thirty a m", "date": "tomorrow"}, {"duration": "seven thirty a m"},
         {"time": "eight a m", "date": "tomorrow"}, {"time": "7:30 am", "date": "tomorrow"}])
    assert scores[0] == pytest.approx(scores[3])     # digits in the frame are normalised like the text
    assert scores[0] > scores[1] and scores[0] > scores[2]
    # FSC intents fix their object: "temperature" -> object=heat is not a missing value.
    heat = trained.log_likelihood(["turn the temperature up"] * 2, ["increase_heat_none"] * 2,
                                  [{"object": "heat"}, {"object": "lamp"}])
    assert heat[0] > MISSING_SLOT_LOGP and heat[0] > heat[1]
    assert trained.log_likelihood(["hello"], ["no_such_intent"], [{}])[0] <= LOGP_FLOOR


@pytest.mark.slow
def test_log_likelihood_rejects_mismatched_lengths(trained):
    with pytest.raises(TeacherError, match="one intent and one slot dict per transcript"):
        trained.log_likelihood(["a", "b"], ["alarm_set"], [{}, {}])


@pytest.mark.slow
def test_save_load_roundtrip_gives_identical_scores(trained, split, tmp_path):
    trained.save(tmp_path / "teacher")
    files = sorted(p.name for p in (tmp_path / "teacher").iterdir())
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    loaded = TextTeacher.load(tmp_path / "teacher")
    sample = split[1][:20]
    args = ([s.text for s in sample], [s.intent for s in sample], [s.slots for s in sample])
    np.testing.assert_array_equal(trained.log_likelihood(*args), loaded.log_likelihood(*args))
    assert loaded.predict(args[0]) == trained.predict(args[0])


def test_load_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(TeacherError, match=r"teacher\.json not found.*train it again"):
        TextTeacher.load(tmp_path)
    (tmp_path / "teacher.json").write_text("{not json")
    with pytest.raises(TeacherError, match=str(tmp_path)):
        TextTeacher.load(tmp_path)


@dataclass
class _Candidate:
    frame: Frame | None


@pytest.mark.slow
def test_teacher_reward_scores_each_candidate(trained):
    reward = TeacherReward(trained)
    good = Frame("timer_set", {"duration": "twenty minutes"}, "set a timer for twenty minutes")
    bad = Frame("timer_set", {"duration": "ten minutes"}, "set a timer for twenty minutes")
    scores = reward([object(), object()], [[_Candidate(good), _Candidate(None), _Candidate(bad)], []])
    assert len(scores) == 2 and scores[1] == []
    assert scores[0][1] == UNPARSEABLE_SCORE
    assert scores[0][0] > scores[0][2] >= UNPARSEABLE_SCORE + 1    # parsed frames always outrank junk
    # "utterance" mode reads the utterance's transcript instead of the candidate's own.
    @dataclass
    class _Utt:
        text: str
    by_utterance = TeacherReward(trained, transcript="utterance")
    flipped = by_utterance([_Utt("set a timer for ten minutes")], [[_Candidate(good), _Candidate(bad)]])
    assert flipped[0][1] > flipped[0][0]


@pytest.mark.slow
def test_default_teacher_loads_a_current_cache_and_ignores_a_stale_one(trained, schema, tmp_path, monkeypatch):
    monkeypatch.setenv("ASSISTANT_CACHE", str(tmp_path))
    assert training_mod.default_teacher(schema, train_if_missing=False) is None     # empty cache, no training
    fingerprint = training_fingerprint(default_sentences(schema), schema, training_mod.DEFAULT_EPOCHS, 0)
    trained.info["fingerprint"] = fingerprint
    try:
        training_mod._save_atomically(trained, tmp_path / training_mod.CACHE_NAME)
    finally:
        trained.info.pop("fingerprint")
    assert [p.name for p in tmp_path.iterdir()] == [training_mod.CACHE_NAME]    # no temp folders left
    cached = training_mod.default_teacher(schema, progress=False)          # loads: no training here
    text = ["turn on the kitchen lights"]
    assert cached.log_likelihood(text, ["activate_lights_kitchen"], [{}]) == \
        pytest.approx(trained.log_likelihood(text, ["activate_lights_kitchen"], [{}]))
    assert training_mod._load_if_current(tmp_path / training_mod.CACHE_NAME, "stale") is None


@pytest.mark.parametrize("seed", [0, 1])
def test_no_dev_or_test_sentence_reaches_the_teacher_whatever_the_corpus_seed(seed, tmp_path):
    """The teacher reads the corpus's own hold-out file: with another seed the held-out phrasings move,
    and the teacher's training text follows them."""
    from assistant.config import load_config
    from assistant.data import synth

    cfg = load_config(synth.SynthConfig, None, seed=seed, out_dir=str(tmp_path), engines=["espeak"])
    plan = synth.make_plan(cfg)
    holdout = synth.write_holdout(plan, cfg, tmp_path)
    sentences = default_sentences(load_schema(), holdout)
    shared = set(plan.shared_template_intents)
    dev_test = [i for i in plan.items if i.split in ("dev", "test") and i.intent not in shared]
    taught_templates = {s.template_id for s in sentences}
    assert dev_test and not {i.template for i in dev_test} & taught_templates
    assert not {i.text for i in dev_test} & {s.text for s in sentences}
    # the field pool's phrasings are the users': no text of them reaches the teacher either
    field_pool = [i for i in plan.items if i.split == "pool" and i.part == "field"]
    assert field_pool and not {i.template for i in field_pool} & taught_templates
    if seed:   # the old rule (default seed) would have let this corpus's held-out phrasings in
        assert {i.template for i in dev_test} & {s.template_id for s in default_sentences(load_schema())}


def test_another_encoder_folder_trains_and_is_scored_on_gold_text(schema, split, tmp_path):
    """`python -m assistant.nlu.encoders`: the recipe runs on any transformers encoder folder (here the
    MiniLM folder itself, passed as a folder) and the gold-text score is per part."""
    from assistant.data.manifest import Utterance
    from assistant.nlu.encoders import gold_text_accuracy, main

    teacher = train_teacher(split[0][:64], schema, epochs=1, seed=0, progress=False, encoder=minilm_dir())
    assert teacher.info["encoder"] == str(minilm_dir())
    held = split[1][:6]
    utts = [Utterance(audio="x.wav", text=s.text, intent=s.intent, id=str(i), meta={"part": ("field", "novel")[i % 2]})
            for i, s in enumerate(held)]
    read = [p[0] == s.intent for p, s in zip(teacher.predict([s.text for s in held]), held)]
    scores = gold_text_accuracy(teacher, utts)
    assert scores == {"all": round(sum(read) / 6, 4), "field": round(sum(read[0::2]) / 3, 4),
                      "novel": round(sum(read[1::2]) / 3, 4)}
    assert gold_text_accuracy([teacher, teacher], utts) == scores      # an ensemble of one model twice
    other = TextTeacher.fresh(["a", "b"], [], encoder=minilm_dir())
    with pytest.raises(ValueError, match="one label space"):
        gold_text_accuracy([teacher, other], utts)
    with pytest.raises(TeacherError, match="config.json not found"):
        TextTeacher.fresh(["a"], [], encoder=tmp_path)
    assert main([str(tmp_path)]) == 2                 # not an encoder folder: one clear error
