"""SLUModel: restricted-vocabulary loss/scoring/generation, context truncation, save/load, freezing.

Most tests use ``SLUModel.tiny_random`` (2 layers, d_model 64, real tokenizer, same code paths);
the ones marked slow load the real converted Whisper tiny.en and real TTS speech.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from assistant.model.slu import Candidate, SLUModel
from assistant.model.vocab import OutputVocab, text_token_ids

TARGETS = [
    "turn on the lights in the kitchen | activate_lights_kitchen | location=kitchen ; object=lights",
    "set an alarm for seven thirty a m | alarm_set | time=seven thirty a m",
]


def noise_waves(seconds=(2.0, 3.0), seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(s * 16000), generator=g) for s in seconds]


def words(text: str) -> list[str]:
    return "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower()).split()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def tiny() -> SLUModel:
    return SLUModel.tiny_random(TARGETS, seed=0)


def fit(model: SLUModel, mels: torch.Tensor, targets: list[str], steps: int, lr: float = 3e-3) -> list[float]:
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(mels, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.fixture(scope="module")
def trained():
    """A tiny model overfitted on two (noise clip -> frame) pairs, so it finishes its outputs with EOT."""
    model = SLUModel.tiny_random(TARGETS, seed=0)
    mels = model.features(noise_waves())
    fit(model, mels, TARGETS, steps=150)
    return model, mels


# ------------------------------------------------------------------------------------ construction


def test_tiny_random_is_deterministic_and_small():
    a, b = SLUModel.tiny_random(TARGETS, seed=3), SLUModel.tiny_random(TARGETS, seed=3)
    c = SLUModel.tiny_random(TARGETS, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.d_model == 64 and a.config.encoder_layers == a.config.decoder_layers == 2


def test_context_truncates_encoder_positions(tiny):
    assert tiny.context_seconds == 6.0 and tiny.n_frames == 600
    assert tiny.whisper.model.encoder.embed_positions.num_embeddings == 300
    assert tiny.config.max_source_positions == 300
    enc = tiny.encode(tiny.features(noise_waves()))
    assert enc.shape == (2, 300, 64)
    first_rows = tiny.whisper.model.encoder.embed_positions.weight[:100].clone()
    tiny.set_context(30.0)  # grows back with Whisper's sinusoids
    from transformers.models.whisper.modeling_whisper import sinusoids
    assert torch.allclose(tiny.whisper.model.encoder.embed_positions.weight, sinusoids(1500, 64), atol=1e-5)
    tiny.set_context(2.0)
    assert torch.equal(tiny.whisper.model.encoder.embed_positions.weight, first_rows)
    with pytest.raises(ValueError, match="multiple of 0.02"):
        tiny.set_context(1.01)


def test_prefixes_keep_stock_asr_prompt_separate(tiny):
    tok = tiny.tokenizer.convert_ids_to_tokens
    assert tok(tiny.slu_prefix) == ["<|startoftranscript|>", "<|translate|>", "<|notimestamps|>"]
    assert tok(tiny.asr_prefix) == ["<|startoftranscript|>", "<|notimestamps|>"]


def test_output_vocab_covers_targets_and_is_small(tiny):
    for text in TARGETS:
        assert not tiny.vocab.missing(text_token_ids(tiny.tokenizer, text))
    assert tiny.vocab.eot_id == 50256 and 50256 in tiny.vocab
    assert 50257 not in tiny.vocab  # prefix tokens are inputs, never outputs
    assert 300 < len(tiny.vocab) < 2000
    assert torch.equal(tiny.vocab.ids, torch.sort(tiny.vocab.ids).values)


# ------------------------------------------------------------------------------------ audio in


def test_features_and_encode_shapes_and_errors(tiny):
    mels = tiny.features(noise_waves((1.0, 6.0)))
    assert mels.shape == (2, 80, 600)
    with pytest.warns(UserWarning, match="longer than the model's 6 s context"):
        cut = tiny.features(noise_waves((7.5,)))
    assert cut.shape == (1, 80, 600)
    with pytest.raises(ValueError, match="1-D mono"):
        tiny.features([torch.zeros(2, 16000)])
    with pytest.raises(ValueError, match="log-mels"):
        tiny.encode(torch.zeros(1, 80, 3000))


# ------------------------------------------------------------------------------------ loss / scoring


def test_restricted_loss_equals_full_vocab_loss_with_masking(tiny):
    mels = tiny.features(noise_waves())
    enc = tiny.encode(mels)
    loss = tiny.loss(enc, TARGETS)
    # Reference: the stock full-vocabulary head, logits outside the subset set to -inf.
    seqs = [text_token_ids(tiny.tokenizer, t) + [tiny.eot_id] for t in TARGETS]
    total, count = 0.0, 0
    for row, seq in enumerate(seqs):
        inputs = torch.tensor([tiny.slu_prefix + seq[:-1]])
        logits = tiny.whisper(encoder_outputs=(enc[row:row + 1],), decoder_input_ids=inputs).logits[0]
        logits = logits[len(tiny.slu_prefix) - 1:]
        outside = torch.ones(logits.shape[-1], dtype=torch.bool)
        outside[tiny.vocab.ids] = False
        logits = logits.masked_fill(outside, -math.inf)
        total = total + F.cross_entropy(logits, torch.tensor(seq), reduction="sum")
        count += len(seq)
    assert torch.allclose(loss, total / count, atol=1e-5)
    assert torch.allclose(tiny.loss(mels, TARGETS), loss, atol=1e-6)  # mels are accepted too
    per_text = tiny.sequence_logprobs(enc, TARGETS)
    assert torch.allclose(-per_text.sum() / count, loss, atol=1e-5)


def test_asr_loss_is_full_vocab_cross_entropy_behind_the_stock_prompt(tiny):
    from assistant.model.slu import stock_style

    assert stock_style("turn up the heat") == "Turn up the heat."
    assert stock_style("what time is it?") == "What time is it?"
    mels = tiny.features(noise_waves())
    enc = tiny.encode(mels)
    texts = ["turn up the heat", "zebra quantum xylophone"]   # the ASR loss is not limited to the SLU vocab
    loss = tiny.asr_loss(enc, texts)
    total, count = 0.0, 0
    for row, text in enumerate(texts):
        seq = text_token_ids(tiny.tokenizer, stock_style(text)) + [tiny.eot_id]
        inputs = torch.tensor([tiny.asr_prefix + seq[:-1]])
        logits = tiny.whisper(encoder_outputs=(enc[row:row + 1],), decoder_input_ids=inputs).logits[0]
        total = total + F.cross_entropy(logits[len(tiny.asr_prefix) - 1:], torch.tensor(seq), reduction="sum")
        count += len(seq)
    assert torch.allclose(loss, total / count, atol=1e-5)
    assert not torch.allclose(loss, tiny.loss(enc, TARGETS))
    with pytest.raises(ValueError, match="2 encoder rows but 1"):
        tiny.asr_loss(enc, texts[:1])


def test_training_the_asr_loss_lowers_it(tiny):
    mels = tiny.features(noise_waves())
    texts = ["turn up the heat", "what time is it"]
    with torch.no_grad():
        before = tiny.asr_loss(mels, texts).item()
    opt = torch.optim.Adam([p for p in tiny.parameters() if p.requires_grad], lr=3e-3)
    tiny.train()
    for _ in range(30):
        loss = tiny.asr_loss(mels, texts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tiny.eval()
    assert tiny.asr_loss(mels, texts).item() < 0.5 * before


def test_target_outside_output_vocab_is_an_error(tiny):
    enc = tiny.encode(tiny.features(noise_waves((1.0,))))
    with pytest.raises(ValueError, match="outside the output vocabulary.*output_vocab"):
        tiny.loss(enc, ["zebra | xylophone_quantum |"])


def test_sequence_logprobs_of_impossible_text_is_minus_inf(tiny):
    enc = tiny.encode(tiny.features(noise_waves()))
    scores = tiny.sequence_logprobs(enc, ["zebra | xylophone_quantum |", TARGETS[1]])
    assert scores[0] == -math.inf and torch.isfinite(scores[1])
    ids = text_token_ids(tiny.tokenizer, TARGETS[0])
    with_eot = tiny.sequence_logprobs(enc, [ids + [tiny.eot_id], ids], expand=[0, 0])
    assert with_eot[0] == with_eot[1]  # a trailing EOT in token ids is optional


def test_sequence_logprobs_expand_several_texts_per_row(tiny):
    enc = tiny.encode(tiny.features(noise_waves()))
    texts = [TARGETS[0], TARGETS[1], TARGETS[1], TARGETS[0]]
    scores = tiny.sequence_logprobs(enc, texts, expand=torch.tensor([0, 0, 1, 1]))
    direct = tiny.sequence_logprobs(enc, TARGETS)
    swapped = tiny.sequence_logprobs(enc.flip(0), TARGETS)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    assert torch.allclose(scores[0], direct[0], atol=1e-4) and torch.allclose(scores[2], direct[1], atol=1e-4)
    assert torch.allclose(scores[1], swapped[1], atol=1e-4) and torch.allclose(scores[3], swapped[0], atol=1e-4)
    with pytest.raises(ValueError, match="expand"):
        tiny.sequence_logprobs(enc, texts)


def test_optimizer_steps_reduce_loss(tiny):
    mels = tiny.features(noise_waves())
    before = tiny.loss(mels, TARGETS).item()
    fit(tiny, mels, TARGETS, steps=10)
    after = tiny.loss(mels, TARGETS).item()
    assert after < before - 1.0, (before, after)


# ------------------------------------------------------------------------------------ generation


def test_generate_greedy_plus_distinct_samples(trained):
    model, mels = trained
    enc = model.encode(mels)
    cands = model.generate(enc, num_samples=8, temperature=1.5, seed=0, max_new_tokens=48)
    assert len(cands) == 2
    for utt, target in zip(cands, TARGETS):
        assert utt[0].greedy and not any(c.greedy for c in utt[1:])
        assert utt[0].text == target  # overfitted: greedy reproduces the target exactly
        assert 2 <= len(utt) <= 9
        assert len({c.text for c in utt}) == len(utt)
        assert all(isinstance(c, Candidate) and math.isfinite(c.logprob) and c.logprob <= 0 for c in utt)
        assert utt[0].logprob == max(c.logprob for c in utt)
        # The vote survives deduplication: every sampled draw is counted once; the greedy row is no draw.
        assert sum(c.count for c in utt) == 8 and all(c.count >= 1 for c in utt[1:])
    again = model.generate(enc, num_samples=8, temperature=1.5, seed=0, max_new_tokens=48)
    assert [[c.text for c in u] for u in again] == [[c.text for c in u] for u in cands]


def test_generated_logprobs_equal_teacher_forced_scores(trained):
    """KV-cached incremental decoding and full teacher forcing agree on every candidate."""
    model, mels = trained
    enc = model.encode(mels)
    cands = model.generate(enc, num_samples=6, temperature=1.3, top_p=0.95, seed=1, max_new_tokens=48)
    flat = [(u, c) for u, utt in enumerate(cands) for c in utt if c.finished]
    assert len(flat) >= 4
    rows = torch.tensor([u for u, _ in flat])
    by_ids = model.sequence_logprobs(enc, [c.token_ids for _, c in flat], expand=rows)
    assert torch.allclose(by_ids, torch.tensor([c.logprob for _, c in flat]), atol=1e-3)
    # Texts re-tokenise canonically; where that gives the same tokens the scores agree too.
    canonical = [(u, c) for u, c in flat if text_token_ids(model.tokenizer, c.text) == c.token_ids]
    assert any(c.greedy for _, c in canonical)
    by_text = model.sequence_logprobs(enc, [c.text for _, c in canonical],
                                      expand=torch.tensor([u for u, _ in canonical]))
    assert torch.allclose(by_text, torch.tensor([c.logprob for _, c in canonical]), atol=1e-3)


def test_generate_top_k_one_equals_greedy(trained):
    model, mels = trained
    enc = model.encode(mels)
    sampled = model.generate(enc, num_samples=3, greedy=False, top_k=1, seed=0)
    greedy = model.generate(enc, num_samples=0, greedy=True)
    assert [u[0].text for u in sampled] == [u[0].text for u in greedy]
    assert all(len(u) == 1 for u in sampled)  # identical samples collapse into one ...
    assert all(u[0].count == 3 for u in sampled)   # ... that keeps their number
    assert all(u[0].count == 0 for u in greedy)    # the greedy row alone is not a sample
    with pytest.raises(ValueError):
        model.generate(enc, num_samples=0, greedy=False)


def test_generate_stops_at_max_new_tokens(tiny):
    enc = tiny.encode(tiny.features(noise_waves((1.0,))))
    (utt,) = tiny.generate(enc, num_samples=2, seed=0, max_new_tokens=5)
    assert all(len(c.token_ids) <= 5 for c in utt)
    assert all(c.finished == (len(c.token_ids) < 5) for c in utt)


# ------------------------------------------------------------------------------------ persistence


def test_save_load_roundtrip(trained, tmp_path):
    model, mels = trained
    out = model.save_pretrained(tmp_path / "slu")
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "vocab.json", "slu_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    assert json.loads((out / "slu_config.json").read_text())["context_seconds"] == 6.0
    from transformers import WhisperProcessor
    processor = WhisperProcessor.from_pretrained(out)  # outside users get features of the right length
    feats = processor(torch.zeros(16000).numpy(), sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape == (1, 80, 600)
    loaded = SLUModel.from_pretrained(out)
    assert loaded.context_seconds == 6.0 and loaded.slu_prefix == model.slu_prefix
    assert torch.equal(loaded.vocab.ids, model.vocab.ids)
    enc = model.encode(mels)
    assert torch.allclose(loaded.encode(mels), enc, atol=1e-6)
    assert torch.allclose(loaded.loss(mels, TARGETS), model.loss(mels, TARGETS), atol=1e-6)
    assert [u[0].text for u in loaded.generate(enc)] == TARGETS
    # Extra texts extend (never shrink) the saved vocabulary.
    extended = SLUModel.from_pretrained(out, output_vocab=["zebra crossing"])
    assert set(model.vocab.ids.tolist()) < set(extended.vocab.ids.tolist())


def test_saved_task_prefixes_are_used_on_load(tmp_path):
    """A folder decodes behind the prefixes it was trained with (slu_config.json), so the default
    multilingual SLU prefix can change without breaking saved checkpoints."""
    model = SLUModel.tiny_random(TARGETS, packaged="base")
    out = model.save_pretrained(tmp_path / "multi")
    saved = json.loads((out / "slu_config.json").read_text())
    assert saved["slu_prefix"] == ["<|startoftranscript|>", "<|haw|>", "<|transcribe|>", "<|notimestamps|>"]
    assert SLUModel.from_pretrained(out).slu_prefix == model.slu_prefix
    saved["slu_prefix"] = ["<|startoftranscript|>", "<|la|>", "<|transcribe|>", "<|notimestamps|>"]
    (out / "slu_config.json").write_text(json.dumps(saved))
    loaded = SLUModel.from_pretrained(out)
    assert loaded.slu_prefix == model.tokenizer.convert_tokens_to_ids(saved["slu_prefix"])
    assert loaded.asr_prefix == model.asr_prefix
    saved["slu_prefix"][1] = "<|nonsense|>"
    (out / "slu_config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="lacks"):
        SLUModel.from_pretrained(out)


def test_from_pretrained_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        SLUModel.from_pretrained(tmp_path / "nope")


def test_vocab_json_roundtrip_and_errors(tiny, tmp_path):
    tiny.vocab.save(tmp_path)
    back = OutputVocab.load(tmp_path)
    assert torch.equal(back.ids, tiny.vocab.ids) and back.eot_id == tiny.vocab.eot_id
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(ValueError, match="re-save"):
        OutputVocab.load(tmp_path)


def test_freeze(tiny):
    enc = tiny.whisper.model.encoder
    tiny.freeze(2)
    assert not any(p.requires_grad for p in enc.conv1.parameters())
    assert not any(p.requires_grad for layer in enc.layers[:2] for p in layer.parameters())
    assert all(p.requires_grad for p in tiny.whisper.model.decoder.parameters())
    tiny.freeze(0)
    assert not enc.conv1.weight.requires_grad and enc.layers[0].fc1.weight.requires_grad
    tiny.freeze("all")
    assert not any(p.requires_grad for p in enc.parameters())
    tiny.freeze(None)
    assert enc.conv1.weight.requires_grad and not enc.embed_positions.weight.requires_grad
    with pytest.raises(ValueError):
        tiny.freeze(5)


def test_the_model_layer_imports_nothing_above_it():
    """assistant.model is the bottom of the model stack: the text pass (assistant.nlu), the corpus
    (assistant.data), training and RSFT sit above it and are never imported from it."""
    code = ("import sys, assistant.model.slu, assistant.model.vocab, assistant.model.sampler, assistant.model.lora, "
            "assistant.model.packaged, assistant.model.convert, assistant.model.interface, assistant.model.candidate, "
            "assistant.model.io, assistant.model.losses, assistant.model.decoding, assistant.model.stock, "
            "assistant.model.encoder; print(sorted(m for m in sys.modules if m.startswith("
            "('assistant.nlu', 'assistant.rsft', 'assistant.data', 'assistant.train', 'assistant.evaluate', "
            "'assistant.inference'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"


def test_slu_model_is_a_speech_model_whose_candidates_rsft_keeps(tiny):
    """One interface (SpeechModel) and one Candidate: what generate returns is what RSFT records."""
    from assistant.model.interface import SpeechModel
    from assistant.rsft import types

    assert isinstance(tiny, SpeechModel) and not tiny.has_stock_path
    assert types.Candidate is Candidate
    (utt,) = tiny.generate(tiny.encode(tiny.features(noise_waves((1.0,)))), num_samples=3, seed=0, max_new_tokens=5)
    assert [c.index for c in utt] == list(range(len(utt)))
    assert all(c.utt_id == "" and c.source == "sample" and c.ref_logprob is None for c in utt)
    assert Candidate.from_dict(utt[0].to_dict()) == utt[0]


# ------------------------------------------------------------------------------------ real weights


@pytest.fixture(scope="module")
def pretrained():
    return SLUModel.from_pretrained(None, context_seconds=6.0, output_vocab=TARGETS)


@pytest.mark.slow
def test_a_stock_checkpoint_reads_the_vocabulary_its_caller_gives(pretrained):
    """Without output_vocab a stock checkpoint gets ``default_vocab()`` (the project passes the domain
    grammar's frames, assistant.data.grammar.domain_vocab_texts), or else the full vocabulary."""
    given = SLUModel.from_pretrained(None, default_vocab=lambda: TARGETS)
    assert torch.equal(given.vocab.ids, pretrained.vocab.ids) and not given.vocab.is_full
    assert SLUModel.from_pretrained(None).vocab.is_full


@pytest.mark.slow
def test_pretrained_short_context_recognises_short_clip(pretrained, tmp_path, speak):
    """6 s context vs Whisper's 30 s on a short command: same transcript at 30 s via the stock path,
    and the 6 s encoder still recognises the words (see transcribe() for the known looping caveat)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from assistant.model.convert import default_pretrained_dir

    wave = speak("turn on the lights in the kitchen", tmp_path / "kitchen.wav")
    stock_dir = default_pretrained_dir()
    stock = WhisperForConditionalGeneration.from_pretrained(stock_dir).eval()
    processor = WhisperProcessor.from_pretrained(stock_dir)
    feats = processor(wave.numpy(), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        reference = processor.batch_decode(stock.generate(feats), skip_special_tokens=True)[0].strip()
    assert words(reference) == words("turn on the lights in the kitchen")
    assert pretrained.transcribe([wave], context_seconds=30.0) == [reference]
    assert pretrained.context_seconds == 6.0  # restored after the 30 s call
    short = pretrained.transcribe([wave], max_new_tokens=24)[0]
    ref_words = words(reference)
    assert words(short)[:len(ref_words)] == ref_words, (short, reference)


@pytest.mark.slow
def test_pretrained_slu_path_scores_and_generates(pretrained, tmp_path, speak):
    wave = speak("turn on the lights in the kitchen", tmp_path / "kitchen.wav")
    enc = pretrained.encode(pretrained.features([wave]))
    (utt,) = pretrained.generate(enc, num_samples=2, seed=0, max_new_tokens=24)
    assert utt[0].greedy and all(math.isfinite(c.logprob) for c in utt)
    good, bad = pretrained.sequence_logprobs(enc, [TARGETS[0], TARGETS[1]], expand=[0, 0])
    assert good > bad  # the acoustics already favour the matching transcript
