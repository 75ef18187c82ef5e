"""Supervised recipe on a tiny random Whisper (same code paths as the real one) and the FSC fixture."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from assistant.config import ConfigError, load_config
from assistant.train import TrainConfig, recipe_main

FSC = Path(__file__).parent / "fixtures" / "fsc" / "data" / "train_data.csv"


def _cfg(out, **kw):
    base = dict(tiny_random=True, train_manifest=str(FSC), dev_manifest=str(FSC), output_dir=str(out),
                batch_size=2, epochs=1, save_every_steps=1, dev_limit=2, warmup_steps=1, lr=1e-3)
    base.update(kw)
    return load_config(TrainConfig, None, **base)


def test_two_steps_write_a_self_contained_checkpoint(tmp_path):
    result = recipe_main(_cfg(tmp_path / "run", max_steps=2))
    assert result["steps"] == 2
    best = Path(result["best_dir"])
    for name in ("model.safetensors", "slu_config.json", "vocab.json", "tokenizer.json", "config.json"):
        assert (best / name).is_file(), name
    assert not list(best.glob("*.bin")) and not list(best.glob("*.pt"))  # safetensors only
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 2 and len(state["history"]) >= 1


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_resume_matches_an_uninterrupted_run(tmp_path, lora_rank):
    recipe_main(_cfg(tmp_path / "straight", max_steps=4, lora_rank=lora_rank))
    recipe_main(_cfg(tmp_path / "split", max_steps=2, lora_rank=lora_rank))
    recipe_main(_cfg(tmp_path / "split", max_steps=4, lora_rank=lora_rank))        # picks up last/ at step 2
    for name in ("model.safetensors", *(["lora/adapter_model.safetensors"] if lora_rank else [])):
        a = load_file(str(tmp_path / "straight" / "last" / name))
        b = load_file(str(tmp_path / "split" / "last" / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_the_same_seed_trains_the_same_adapters_whatever_torch_held_before(tmp_path):
    """A run repeats: the adapters' random start comes from the config's seed, not from torch's global RNG
    (torch 2.11 seeds it from entropy at import), so a from-scratch rerun gives the same model."""
    def adapters(name, rng, seed=0):
        torch.manual_seed(rng)                      # whatever ran before in this process
        recipe_main(_cfg(tmp_path / name, max_steps=2, lora_rank=4, seed=seed))
        return load_file(str(tmp_path / name / "last" / "lora" / "adapter_model.safetensors"))

    first, again, other_seed = adapters("a", rng=1), adapters("b", rng=2), adapters("c", rng=1, seed=1)
    assert first.keys() == again.keys() == other_seed.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)


def test_training_reduces_loss_on_the_fixture(tmp_path):
    from assistant.model.slu import SLUModel
    from assistant.train import frame_target
    from assistant.data.manifest import read_manifest
    from assistant.audio import load_audio

    utts = read_manifest(FSC)
    cfg = _cfg(tmp_path / "fit", max_steps=20, spec_augment=False, lr=3e-3, freeze_encoder_layers=0,
               cache_encoder=False, train_embeddings=True)
    recipe_main(cfg)
    from assistant.schema import load_schema
    from assistant.train import vocabulary_texts

    # Same output vocabulary as the recipe built, so both losses are over the same softmax.
    before = SLUModel.tiny_random(vocabulary_texts(load_schema(), [frame_target(u) for u in utts]), seed=0)
    after = SLUModel.from_pretrained(tmp_path / "fit" / "last")
    waves = [load_audio(u.audio) for u in utts]
    targets = [frame_target(u) for u in utts]
    with torch.no_grad():
        l0 = before.loss(before.encode(before.features(waves)), targets).item()
        l1 = after.loss(after.encode(after.features(waves)), targets).item()
    assert l1 < l0 * 0.8


def test_asr_weight_changes_training_and_zero_turns_it_off(tmp_path):
    runs = {}
    for name, weight in (("off", 0.0), ("on", 1.0)):
        recipe_main(_cfg(tmp_path / name, max_steps=2, asr_weight=weight))
        runs[name] = load_file(str(tmp_path / name / "last" / "model.safetensors"))
    decoder = [k for k in runs["off"] if "decoder.layers.0.self_attn.q_proj.weight" in k]
    assert decoder and not torch.allclose(runs["off"][decoder[0]], runs["on"][decoder[0]])
    with pytest.raises(ConfigError, match="asr_weight"):
        load_config(TrainConfig, None, asr_weight=-1)


def test_bad_config_values_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(TrainConfig, None, batch_size=0)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TrainConfig, None, batch_sise=4)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [oops\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, bad)
    bad.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="epochs"):
        load_config(TrainConfig, bad)


def test_spec_augment_with_a_cached_encoder_trains_on_masked_copies(tmp_path):
    from assistant.audio import load_audio
    from assistant.data.manifest import read_manifest
    from assistant.features import SpecAugment
    from assistant.model.slu import SLUModel
    from assistant.train import compute_inputs

    model = SLUModel.tiny_random(seed=0).eval()
    waves = [load_audio(u.audio) for u in read_manifest(FSC)[:2]]
    plain = compute_inputs(model, waves, trunk_layers=1)
    torch.manual_seed(0)
    masked = compute_inputs(model, waves, trunk_layers=1, augment=SpecAugment(15, 15).train())
    assert masked.shape == plain.shape and not torch.allclose(masked, plain)

    def weights(name, **kw):
        recipe_main(_cfg(tmp_path / name, max_steps=4, freeze_encoder_layers=1, **kw))
        return load_file(str(tmp_path / name / "last" / "model.safetensors"))

    base = weights("plain")
    aug = weights("masked", spec_augment=True, augment_copies=2)
    again = weights("masked_again", spec_augment=True, augment_copies=2)
    layer = [k for k in base if "decoder.layers.0.self_attn.q_proj.weight" in k][0]
    assert not torch.allclose(base[layer], aug[layer])              # the masks reached training
    torch.testing.assert_close(aug[layer], again[layer])            # seeded: a rerun sees the same copies
    with pytest.raises(ConfigError, match="augment_copies"):
        load_config(TrainConfig, None, augment_copies=0)


def test_token_nll_weights_scale_each_target_and_keep_the_token_count():
    from assistant.model.slu import SLUModel
    from assistant.train import frame_target
    from assistant.data.manifest import read_manifest
    from assistant.audio import load_audio

    utts = read_manifest(FSC)[:2]
    targets = [frame_target(u) for u in utts]
    model = SLUModel.tiny_random(targets, seed=0).eval()
    with torch.no_grad():
        enc = model.encode(model.features([load_audio(u.audio) for u in utts]))
        total, count = model.token_nll(enc, targets)
        ones, count_ones = model.token_nll(enc, targets, weights=[1.0, 1.0])
        first, count_first = model.token_nll(enc, targets, weights=[1.0, 0.0])
        alone, _ = model.token_nll(enc[:1], targets[:1])
        half, _ = model.token_nll(enc, targets, weights=[0.5, 0.5])
    torch.testing.assert_close(ones, total)
    torch.testing.assert_close(first, alone)
    torch.testing.assert_close(half, total / 2)
    assert count_ones == count == count_first
    with pytest.raises(ValueError, match="weights"):
        model.token_nll(enc, targets, weights=[1.0])


def test_token_nll_intent_scope_counts_only_the_intent_tokens():
    """A text scoped "intent" contributes exactly the log-probs of its intent's tokens (the transcript
    before them is context, the slots and end after them are not targets), to the NLL and the count."""
    from assistant.model.slu import SLUModel
    from assistant.train import frame_target
    from assistant.data.manifest import read_manifest
    from assistant.audio import load_audio

    utts = read_manifest(FSC)[:2]
    targets = [frame_target(u) for u in utts]
    model = SLUModel.tiny_random(targets, seed=0).eval()
    seqs = model.tokenize(targets)
    span = model.intent_span(targets[0], seqs[0])
    intent_tokens = model.tokenize([" " + utts[0].intent.lower()])[0]
    assert span is not None and seqs[0][span[0]:span[1]] == intent_tokens
    assert model.intent_span("no bars here", model.tokenize(["no bars here"])[0]) is None
    with torch.no_grad():
        enc = model.encode(model.features([load_audio(u.audio) for u in utts]))
        per_token, mask = model.token_logprobs(enc, seqs, targets)
        full, count = model.token_nll(enc, targets, scopes=["frame", "frame"])
        scoped, scoped_count = model.token_nll(enc, targets, scopes=["intent", "frame"])
    torch.testing.assert_close(full, -per_token.sum())
    expected = -(per_token[0, span[0]:span[1]].sum() + per_token[1].sum())
    torch.testing.assert_close(scoped, expected)
    assert scoped_count == count - (int(mask[0].sum()) - (span[1] - span[0]))
    with pytest.raises(ValueError, match="scope"):
        model.token_nll(enc, targets, scopes=["slots", "frame"])


def test_fine_tune_reads_each_example_weight_and_weight_zero_teaches_nothing(tmp_path):
    """With no weight decay, targets all at loss weight 0 give zero gradients: the weights stay put; at
    weight 1 the same steps move them (the per-example weights reach the loss)."""
    from dataclasses import replace as dc_replace

    from assistant.data.manifest import read_manifest
    from assistant.model.slu import SLUModel
    from assistant.train import examples_from_utterances, fine_tune, frame_target

    utts = read_manifest(FSC)
    moved = {}
    for weight in (0.0, 1.0):
        model = SLUModel.tiny_random([frame_target(u) for u in utts], seed=0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        examples = [dc_replace(ex, weight=weight) for ex in examples_from_utterances(utts)]
        cfg = _cfg(tmp_path / f"w{weight}", max_steps=2, weight_decay=0.0, freeze_encoder_layers=0,
                   cache_encoder=False, asr_weight=0.0)
        fine_tune(model, examples, utts[:2], cfg, tmp_path / f"w{weight}")
        after = model.state_dict()
        moved[weight] = max((after[k].float() - before[k].float()).abs().max().item() for k in before)
    assert moved[0.0] == 0.0 and moved[1.0] > 1e-4


def test_fine_tune_reads_each_example_scope(tmp_path):
    """Targets scoped "intent" reach the loss: the same steps end at other weights than whole targets."""
    from dataclasses import replace as dc_replace

    from assistant.data.manifest import read_manifest
    from assistant.model.slu import SLUModel
    from assistant.train import examples_from_utterances, fine_tune, frame_target

    utts = read_manifest(FSC)
    ends = {}
    for scope in ("frame", "intent"):
        model = SLUModel.tiny_random([frame_target(u) for u in utts], seed=0)
        examples = [dc_replace(ex, scope=scope) for ex in examples_from_utterances(utts)]
        cfg = _cfg(tmp_path / scope, max_steps=2, freeze_encoder_layers=0, cache_encoder=False, asr_weight=0.0)
        fine_tune(model, examples, utts[:2], cfg, tmp_path / scope)
        ends[scope] = {k: v.clone() for k, v in model.state_dict().items()}
    assert max((ends["frame"][k].float() - ends["intent"][k].float()).abs().max().item() for k in ends["frame"]) > 1e-5
