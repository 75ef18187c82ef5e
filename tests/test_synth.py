"""assistant.data.augment + assistant.data.synth: augmentation maths and a real `smoke` corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from assistant.audio import load_audio
from assistant.config import ConfigError, load_config
from assistant.data import augment as A
from assistant.data import synth, tts
from assistant.data.manifest import read_jsonl

SR = A.SAMPLE_RATE


def harmonic(freq: float, seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(4 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(wave: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    voice = next(v for v in tts.list_voices(["espeak"]) if v.params["voice"] == "en-us+m3")
    return tts.synthesize(voice, "set an alarm for seven thirty a m")


# ============================================================================ augmentation


def test_time_stretch_changes_length_not_pitch():
    tone = harmonic(200.0, 2.0)
    for speed in (0.8, 1.25):
        out = A.time_stretch(tone, SR, speed)
        assert abs(len(out) - len(tone) / speed) <= 1
        assert abs(dominant_hz(out) - 200.0) < 3.0


def test_pitch_tempo_shifts_pitch_and_keeps_requested_tempo():
    tone = harmonic(200.0, 2.0, sr=22050)
    out, done = A.pitch_tempo(tone, 22050, 12.0, 1.0)
    assert abs(done - 12.0) < 0.1
    assert abs(dominant_hz(out) - 400.0) < 6.0
    assert abs(len(out) / SR - 2.0) < 0.03
    out, done = A.pitch_tempo(tone, 22050, -2.0, 1.2)
    assert abs(dominant_hz(out) - 200.0 * 2 ** (done / 12)) < 4.0
    assert abs(len(out) / SR - 2.0 / 1.2) < 0.03


def test_noise_colours_have_their_slopes():
    rng = np.random.default_rng(0)

    def low_to_high(x: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / SR)
        return power[(f > 50) & (f < 500)].mean() / power[(f > 4000) & (f < 7000)].mean()

    ratios = {k: low_to_high(A.colored_noise(rng, SR * 2, k)) for k in ("white", "pink", "brown")}
    assert 0.5 < ratios["white"] < 2
    assert ratios["pink"] > 5 * ratios["white"]
    assert ratios["brown"] > 5 * ratios["pink"]
    for kind in ("white", "pink", "brown"):
        assert abs(np.sqrt(np.mean(A.colored_noise(rng, 4000, kind) ** 2)) - 1) < 1e-3


def test_augment_is_deterministic_per_seed_and_sane(speech):
    wave, sr = speech
    cfg = A.AugmentConfig(room_share=0.5, noise_share=0.8)
    bank = [A.resample(wave, sr)]
    seen = set()
    for seed in range(12):
        a, pa = A.augment(wave, sr, np.random.default_rng(seed), cfg, bank, max_seconds=6.0)
        b, pb = A.augment(wave, sr, np.random.default_rng(seed), cfg, bank, max_seconds=6.0)
        assert np.array_equal(a, b) and pa == pb
        assert a.dtype == np.float32 and np.isfinite(a).all() and np.abs(a).max() <= 1.0
        speech_s = pa["speech_s"] / pa["tempo"]
        assert speech_s + sum(pa["pad_s"]) - 0.05 <= len(a) / SR <= 6.0
        assert abs(20 * np.log10(np.abs(a).max()) - pa["level_dbfs"]) < 0.1
        json.dumps(pa)                                   # params go into manifests
        seen.add(a.tobytes())
    assert len(seen) == 12


def test_augment_mixes_noise_at_the_drawn_snr(speech):
    wave, sr = speech
    cfg = A.AugmentConfig(pitch_tempo_share=0.0, room_share=0.0, noise_share=1.0, noise_snr_range=[10.0, 10.0],
                          noise_kinds=["white"], pad_range=[0.0, 0.0])
    out, params = A.augment(wave, sr, np.random.default_rng(3), cfg)
    clean = A.resample(A.trim_silence(wave, sr), sr)
    assert len(out) == len(clean)
    gain = float(out @ clean / (clean @ clean))         # least squares: out = gain * (clean + noise)
    noise = out / gain - clean
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean(noise ** 2))
    assert params["noise"] == {"kind": "white", "snr_db": 10.0}
    assert abs(snr - 10.0) < 0.5


def test_rooms_add_reverb_tails(speech):
    wave, sr = speech
    cfg = A.AugmentConfig(pitch_tempo_share=0.0, room_share=1.0, noise_share=0.0, pad_range=[0.0, 0.0],
                          rt60_range=[0.5, 0.6])
    out, params = A.augment(wave, sr, np.random.default_rng(5), cfg)
    room = params["room"]
    assert 0.5 <= room["rt60"] <= 0.6 and len(room["dims"]) == 3
    for k in range(3):
        assert 0 < room["source"][k] < room["dims"][k] and 0 < room["mic"][k] < room["dims"][k]
    dry = A.resample(A.trim_silence(wave, sr), sr)
    assert len(dry) + 0.2 * SR < len(out) <= len(dry) + 0.5 * SR + 1


def test_long_speech_is_sped_up_or_refused(speech):
    wave, sr = speech                                    # ~2 s of speech
    cfg = A.AugmentConfig(pitch_tempo_share=0.0, room_share=0.0, max_speedup=1.4)
    speech_s = len(A.trim_silence(wave, sr)) / sr
    out, params = A.augment(wave, sr, np.random.default_rng(0), cfg, max_seconds=speech_s / 1.2 + 0.1)
    assert params["sped_up"] and params["tempo"] > 1.15
    assert len(out) <= int((speech_s / 1.2 + 0.1) * SR)
    with pytest.raises(A.ClipTooLong):
        A.augment(wave, sr, np.random.default_rng(0), cfg, max_seconds=speech_s / 2)


def test_bad_augment_values_are_config_errors():
    with pytest.raises(ConfigError, match="tempo_range"):
        load_config(synth.SynthConfig, profile="smoke", tempo_range=[1.2, 0.8])
    with pytest.raises(ConfigError, match="noise_kinds"):
        load_config(synth.SynthConfig, profile="smoke", noise_kinds=["traffic"])
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config(synth.SynthConfig, profile="huge")
    with pytest.raises(ConfigError, match="unknown engine"):
        load_config(synth.SynthConfig, profile="smoke", engines=["sam"])


def test_profiles_fill_only_what_is_not_given(tmp_path):
    smoke = load_config(synth.SynthConfig, None, profile="smoke", seed=3)      # as the main job calls it
    assert (smoke.train_size, smoke.dev_size, smoke.seed) == (16, 8, 3)
    assert smoke.intents == synth.PROFILES["smoke"]["intents"]
    assert load_config(synth.SynthConfig, profile="smoke", train_size=20, intents=[]).train_size == 20
    default = load_config(synth.SynthConfig)
    assert default.sizes() == {"train": 3000, "pool": 1500, "dev": 400, "test": 600} and default.intents == []
    yaml_file = tmp_path / "synth.yaml"
    yaml_file.write_text("profile: large\ndev_size: 123\n")
    large = load_config(synth.SynthConfig, yaml_file)
    assert (large.train_size, large.dev_size) == (8000, 123)
    assert large.output_dir().name == "large"


# ============================================================================ the plan


def test_templates_held_out_for_dev_test_on_the_real_grammar():
    from assistant.data.grammar import load_grammar
    from assistant.schema import load_schema

    grammar, schema = load_grammar(), load_schema()
    intents = [i for i in schema.intents if grammar.template_ids(i)]
    cfg = load_config(synth.SynthConfig)
    seen, unseen, shared = synth.hold_out_templates(grammar, intents, cfg)
    assert not shared
    for intent in intents:
        assert len(seen[intent]) >= 3 and unseen[intent]
        assert not set(seen[intent]) & set(unseen[intent])
        assert set(seen[intent]) | set(unseen[intent]) == set(grammar.template_ids(intent))


@pytest.mark.parametrize("seed", [0, 3])
def test_field_pool_shares_phrasings_with_test_not_sentences_and_leaves_train_alone(seed):
    """The default corpus: half the pool says field phrasings (held-out templates that dev/test say too),
    the novel ones are in no pool or train clip, and train is the same as without a field pool."""
    cfg = load_config(synth.SynthConfig, None, seed=seed)
    plan = synth.make_plan(cfg)
    items = {s: [i for i in plan.items if i.split == s] for s in synth.SPLITS}
    field_t = {t for ts in plan.field_templates.values() for t in ts}
    novel_t = {t for ts in plan.novel_templates.values() for t in ts}
    assert field_t and novel_t and not field_t & novel_t
    assert field_t | novel_t == {t for ts in plan.unseen_templates.values() for t in ts}
    parts = {s: {p: sum(i.part == p for i in its) for p in ("seen", "field", "novel")} for s, its in items.items()}
    assert parts["train"] == {"seen": len(items["train"]), "field": 0, "novel": 0}
    assert parts["pool"]["novel"] == 0 and parts["pool"]["field"] == round(cfg.pool_size * cfg.pool_field_share)
    assert parts["test"]["field"] > 0 and parts["test"]["novel"] > 0 and parts["test"]["seen"] == 0
    for s, its in items.items():
        for i in its:
            assert i.part == ("field" if i.template in field_t else "novel" if i.template in novel_t else "seen")
    held_texts = {i.text for s in ("dev", "test") for i in items[s]}
    assert not {i.text for i in items["pool"]} & held_texts
    assert not {i.template for s in ("train", "pool") for i in items[s]} & novel_t
    # the pool's speakers are its own, and it sounds like the field: Kokoro as often as in test
    assert not {i.voice.person for i in items["pool"]} & {i.voice.person for i in items["test"]}
    kokoro = {s: sum(i.voice.engine == "kokoro" for i in its) / len(its) for s, its in items.items()}
    assert abs(kokoro["pool"] - kokoro["test"]) < 0.03 and kokoro["train"] < kokoro["pool"]
    without = synth.make_plan(load_config(synth.SynthConfig, None, seed=seed, pool_field_share=0.0))
    assert [(i.text, i.voice.id, i.seed) for i in without.items if i.split == "train"] == \
        [(i.text, i.voice.id, i.seed) for i in items["train"]]
    assert {i.part for i in without.items if i.split == "pool"} == {"seen"}


def test_voices_are_dealt_to_splits_by_person_and_timbre():
    cfg = load_config(synth.SynthConfig, espeak_accents_per_variant=3)
    by_split = synth.assign_voices(synth.select_voices(cfg), cfg)
    persons = {s: {v.person for v in vs} for s, vs in by_split.items()}
    timbres = {s: {synth.speaker_group(v) for v in vs} for s, vs in by_split.items()}
    for i, a in enumerate(synth.SPLITS):
        for b in synth.SPLITS[i + 1:]:
            assert not persons[a] & persons[b]
            assert not timbres[a] & timbres[b]
    assert sum(len(p) for p in persons.values()) >= 20
    assert all(len(vs) >= 2 for vs in by_split.values())


def test_allocate_is_exact_and_fair():
    assert synth._allocate(10, [1, 1, 1]) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert sum(synth._allocate(1500, [0.4, 0.3, 0.12, 0.18])) == 1500
    assert synth._allocate(5, [0.9, 0.05, 0.03, 0.02], at_least_one=True) == [2, 1, 1, 1]


# ============================================================================ a real smoke corpus


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("smoke")
    code = synth.cli(["--profile", "smoke", "--out-dir", str(out), "--progress", "false"])
    assert code == 0
    return out, json.loads((out / "summary.json").read_text())


def test_smoke_corpus_has_four_readable_manifests(smoke):
    out, summary = smoke
    manifests = {s: read_jsonl(out / f"{s}.jsonl") for s in synth.SPLITS}
    sizes = synth.PROFILES["smoke"]
    for split, utts in manifests.items():
        assert len(utts) == sizes[f"{split}_size"]          # nothing dropped for these short sentences
        for u in utts:
            assert Path(u.audio).is_file() and Path(u.audio).parent.name == split
            info = sf.info(u.audio)
            assert info.samplerate == SR and info.channels == 1
            assert abs(info.duration - u.duration) < 1e-3 and u.duration <= 6.0
            wave = load_audio(u.audio, max_seconds=6.0)   # the project's own checked loader
            assert wave.numel() == info.frames
            assert u.meta["engine"] in tts.ENGINES and u.meta["voice"].startswith(u.meta["engine"] + ":")
            assert u.meta["template"].startswith(u.intent + "/")
            assert "augment" in u.meta
            assert u.meta.get("labels_hidden", False) == (split == "pool")
            assert all(v in u.text for k, v in u.slots.items() if k not in ("object", "location"))
    assert len({u.id for us in manifests.values() for u in us}) == summary["utterances"] == 40
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert first["audio"].startswith("train/")              # relative to the manifest folder
    # the corpus is also a Hugging Face audiofolder (train / validation / test); the field pool's carries no labels
    from assistant.data.hf import read_dataset

    again = read_dataset(str(out), "test")
    assert [(u.id, u.text, u.intent, u.slots) for u in again] == \
        [(u.id, u.text, u.intent, u.slots) for u in manifests["test"]]
    pool_rows = [json.loads(line) for line in (out / "pool" / "metadata.jsonl").read_text().splitlines()]
    assert len(pool_rows) == len(manifests["pool"]) and not any("intent" in r for r in pool_rows)


def test_smoke_splits_disjoint_by_speaker_and_phrasing(smoke):
    out, summary = smoke
    manifests = {s: read_jsonl(out / f"{s}.jsonl") for s in synth.SPLITS}
    speakers = {s: {u.speaker for u in us} for s, us in manifests.items()}
    for i, a in enumerate(synth.SPLITS):
        for b in synth.SPLITS[i + 1:]:
            assert not speakers[a] & speakers[b], (a, b)
    seen = {u.meta["template"] for u in manifests["train"]}
    unseen = {u.meta["template"] for s in ("dev", "test") for u in manifests[s]}
    assert seen and unseen and not seen & unseen
    # the pool is field audio: it shares phrasings (templates) with dev/test, never a sentence
    field_said = {u.meta["template"] for u in manifests["pool"]} & unseen
    assert field_said and {u.meta["part"] for u in manifests["pool"] if u.meta["template"] in field_said} == {"field"}
    assert not {u.text for u in manifests["pool"]} & {u.text for s in ("dev", "test") for u in manifests[s]}
    intents = set(synth.PROFILES["smoke"]["intents"])
    for split, utts in manifests.items():
        assert {u.intent for u in utts} == intents, split
        assert summary["splits"][split]["intents_missing"] == []


def test_rerun_skips_existing_clips_and_remakes_a_missing_one(smoke):
    out, _ = smoke
    clips = sorted(out.glob("*/*.flac"))
    stamps = {p: p.stat().st_mtime_ns for p in clips}
    victim = clips[5]
    before = sf.read(str(victim), dtype="int16")[0]
    victim.unlink()
    (out / "dev" / "dev-99999.flac.tmp").write_bytes(b"half a clip")       # left by a crash
    synth.cli(["--profile", "smoke", "--out-dir", str(out), "--progress", "false"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips_made"] == 1 and summary["clips_reused"] == 39
    assert np.array_equal(sf.read(str(victim), dtype="int16")[0], before)  # same seed, same clip
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != victim)
    assert not list(out.glob("*/*.tmp"))


def test_corpus_is_identical_with_one_worker(smoke, tmp_path):
    out, _ = smoke
    synth.cli(["--profile", "smoke", "--out-dir", str(tmp_path), "--workers", "1", "--progress", "false"])
    for split in synth.SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_text() == (out / f"{split}.jsonl").read_text()
    for clip in sorted(out.glob("*/*.flac")):
        twin = tmp_path / clip.parent.name / clip.name
        assert np.array_equal(sf.read(str(clip), dtype="int16")[0], sf.read(str(twin), dtype="int16")[0])


def test_changed_config_remakes_clips(smoke):
    out, _ = smoke
    cfg = load_config(synth.SynthConfig, profile="smoke", out_dir=str(out))
    plan = synth.make_plan(cfg)
    item = plan.items[0]
    assert synth.existing_record(item, out)["status"] == "ok"
    louder = synth.make_plan(load_config(synth.SynthConfig, profile="smoke", out_dir=str(out),
                                         level_range=[-3.0, -1.0]))
    assert louder.items[0].key != item.key
    assert synth.existing_record(louder.items[0], out) is None


def test_a_failing_voice_is_skipped_not_fatal(tmp_path):
    cfg = load_config(synth.SynthConfig, profile="smoke", out_dir=str(tmp_path))
    (tmp_path / "train").mkdir()
    synth._init_worker(cfg.augment_config(), cfg.max_seconds, str(tmp_path), {})
    broken = tts.Voice("espeak:xx", "espeak", "xx", {"voice": "xx-nowhere"})
    item = synth.PlanItem("train-00000", "train", "turn on the lights", "activate_lights_none", {}, "t/x",
                          broken, seed=1)
    record = synth.render(item)
    assert record["status"] == "error" and "xx-nowhere" in record["reason"]
    assert not (tmp_path / "train" / "train-00000.flac").exists()
    long_text = " ".join(["set an alarm for seven thirty a m tomorrow"] * 6)
    good = tts.list_voices(["espeak"])[0]
    record = synth.render(synth.PlanItem("train-00001", "train", long_text, "alarm_set", {}, "t/y", good, seed=1))
    assert record["status"] == "too_long"


def test_list_voices_command(capsys):
    assert synth.cli(["--list-voices"]) == 0
    text = capsys.readouterr().out
    assert "espeak:" in text and "piper:" in text and "piper:joe" in text
