"""LoRA adapters (peft): the SLU task trains them, the stock ASR prompt runs the untouched pretrained weights."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from assistant.config import load_config
from assistant.model.lora import LoraConfig
from assistant.model.slu import SLUModel, cut_repeats
from assistant.rsft.generate import same_encoder
from assistant.train import TrainConfig, recipe_main

FSC = Path(__file__).parent / "fixtures" / "fsc" / "data" / "train_data.csv"
# Written by the hand-written adapters before peft (commit 6c5ec5f): adapters.safetensors of
# tiny_random(seed=0) + LoraConfig(rank=2, alpha=4.0, encoder_from=1), weights randn * 0.05 (seed 1), and
# that model's encoder states (first 8 positions) and log-probs of TEXT for the `mels` fixture.
LEGACY = Path(__file__).parent / "fixtures" / "legacy_lora"
TEXT = "turn on the lights | activate_lights_none | object=lights"


def _model(seed: int = 0) -> SLUModel:
    return SLUModel.tiny_random([TEXT], seed=seed)


def _scramble(model: SLUModel, seed: int = 1) -> None:
    """Give the adapters non-zero weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _outputs(model: SLUModel, mels: torch.Tensor):
    with torch.no_grad():
        enc = model.encode(mels)
        return enc, model.sequence_logprobs(enc, [TEXT] * mels.shape[0])


@pytest.fixture()
def mels():
    return torch.randn(2, 80, _model().n_frames, generator=torch.Generator().manual_seed(0))


def test_new_adapters_start_as_the_stock_model_and_switch_off_exactly(mels):
    model = _model()
    enc0, lp0 = _outputs(model, mels)
    model.add_adapters(LoraConfig(rank=4, encoder_from=1))
    enc1, lp1 = _outputs(model, mels)
    torch.testing.assert_close(enc1, enc0)            # B = 0 at the start
    torch.testing.assert_close(lp1, lp0)
    _scramble(model)
    enc2, lp2 = _outputs(model, mels)
    assert (enc2 - enc0).abs().max() > 1e-3 and (lp2 - lp0).abs().max() > 1e-3
    with model.stock():
        enc3, lp3 = _outputs(model, mels)
    assert torch.equal(enc3, enc0) and torch.equal(lp3, lp0)   # bit for bit the pretrained model
    enc4, _ = _outputs(model, mels)                            # and back on afterwards
    assert torch.equal(enc4, enc2)


def test_switching_the_adapters_off_nests_and_keeps_what_freeze_chose(mels):
    model = _model()
    model.add_adapters(LoraConfig(rank=2, encoder_from=0))
    _scramble(model)
    model.freeze(1)
    trainable = {n: p.requires_grad for n, p in model.adapters.named_parameters()}
    assert any(trainable.values()) and not all(trainable.values())      # encoder layer 0's adapters frozen
    with model.stock():
        stock = _outputs(model, mels)[1]
        with model.stock():
            pass
        assert torch.equal(_outputs(model, mels)[1], stock)              # still off after the inner block
    assert not torch.equal(_outputs(model, mels)[1], stock)
    assert {n: p.requires_grad for n, p in model.adapters.named_parameters()} == trainable


def test_transcribe_runs_the_stock_weights():
    wave = [torch.randn(16000, generator=torch.Generator().manual_seed(3)) * 0.1]
    model = _model()
    before = model.transcribe(wave, max_new_tokens=8)
    model.add_adapters(LoraConfig(rank=4, encoder_from=0))
    _scramble(model)
    assert model.transcribe(wave, max_new_tokens=8) == before


def test_stock_reading_is_the_pretrained_model_over_whisper_s_window():
    """The deployed stock reading (stock_encode + stock_greedy, our loop) is transformers' own greedy
    generate of the pretrained weights on a 30 s window, adapters on or off."""
    g = torch.Generator().manual_seed(4)
    waves = [torch.randn(n, generator=g) * 0.1 for n in (16000, 40000)]
    model = _model()
    reference = [cut_repeats(t) for t in model.transcribe(waves, max_new_tokens=12, context_seconds=30.0)]
    model.add_adapters(LoraConfig(rank=4, encoder_from=0))
    _scramble(model)
    assert model.has_stock_path
    assert model.stock_greedy(model.stock_encode(waves), max_new_tokens=12) == reference
    assert model.context_seconds == 6.0                       # the SLU context is untouched


def test_cut_repeats_cuts_a_phrase_repeated_to_the_token_limit():
    assert cut_repeats("Make sure I'm awake. Make sure I'm awake. Make sure I") == "Make sure I'm awake."
    assert cut_repeats("Turn on the lights.") == "Turn on the lights."
    assert cut_repeats("play it again play it again pl") == "play it again"
    assert cut_repeats("play it again play it") == "play it again play it"     # no full repeat: kept
    assert cut_repeats("set a timer for ten minutes") == "set a timer for ten minutes"
    assert cut_repeats("") == ""


def test_adapters_round_trip_through_save_pretrained(tmp_path, mels):
    model = _model()
    model.add_adapters(LoraConfig(rank=4, alpha=8.0, encoder_from=1))
    _scramble(model)
    folder = model.save_pretrained(tmp_path / "m")
    assert json.loads((folder / "slu_config.json").read_text())["lora"]["rank"] == 4
    stock = load_file(str(folder / "model.safetensors"))
    plain = load_file(str(_model().save_pretrained(tmp_path / "plain") / "model.safetensors"))
    assert stock.keys() == plain.keys()                        # the Whisper folder stays plain HF
    assert all(torch.equal(stock[k], plain[k]) for k in plain)
    assert not (folder / "README.md").exists()
    peft_config = json.loads((folder / "lora" / "adapter_config.json").read_text())
    assert (peft_config["r"], peft_config["lora_alpha"], peft_config["peft_type"]) == (4, 8.0, "LORA")
    loaded = SLUModel.from_pretrained(folder)
    assert loaded.lora.alpha == 8.0
    for a, b in zip(_outputs(model, mels), _outputs(loaded, mels)):
        torch.testing.assert_close(a, b)
    (folder / "lora" / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        SLUModel.from_pretrained(folder)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")   # inside peft
def test_saved_adapters_load_with_peft_itself(tmp_path, mels):
    """The folder is a plain Whisper checkpoint (transformers loads the stock model from it) + peft's
    standard adapter folder lora/."""
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    model = _model()
    model.add_adapters(LoraConfig(rank=4, alpha=8.0, encoder_from=1))
    _scramble(model)
    folder = model.save_pretrained(tmp_path / "m")
    whisper = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    ids = torch.tensor([model.slu_prefix])
    with torch.no_grad(), model.stock():
        stock = model.whisper(input_features=mels[:1], decoder_input_ids=ids).logits
        assert torch.equal(whisper(input_features=mels[:1], decoder_input_ids=ids).logits, stock)
    outside = PeftModel.from_pretrained(whisper, folder / "lora").eval()
    with torch.no_grad():
        ours = model.whisper(input_features=mels[:1], decoder_input_ids=ids).logits
        theirs = outside(input_features=mels[:1], decoder_input_ids=ids).logits
        with outside.disable_adapter():
            assert torch.equal(outside(input_features=mels[:1], decoder_input_ids=ids).logits, stock)
    torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(ours, stock, atol=1e-3)


def test_folders_of_the_hand_written_adapters_still_load(tmp_path, mels):
    """adapters.safetensors (before peft) is converted on load: the same outputs as the old code gave,
    and the next save writes peft's files instead."""
    model = _model()
    model.add_adapters(LoraConfig(rank=2, alpha=4.0, encoder_from=1))
    folder = model.save_pretrained(tmp_path / "old")
    shutil.rmtree(folder / "lora")
    shutil.copy(LEGACY / "adapters.safetensors", folder)
    loaded = SLUModel.from_pretrained(folder)
    expected = load_file(str(LEGACY / "expected.safetensors"))
    enc, lp = _outputs(loaded, mels)
    torch.testing.assert_close(enc[:, :8], expected["enc_head"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp, expected["logprobs"], rtol=1e-5, atol=1e-4)
    resaved = loaded.save_pretrained(tmp_path / "new")
    assert (resaved / "lora" / "adapter_model.safetensors").is_file()
    assert not (resaved / "adapters.safetensors").exists()
    torch.testing.assert_close(_outputs(SLUModel.from_pretrained(resaved), mels)[1], lp)
    wrong = _model()                                           # adapters of another shape: a clear error
    wrong.add_adapters(LoraConfig(rank=2, alpha=4.0, encoder_from=0))
    with pytest.raises(ValueError, match="do not match"):
        wrong.adapters.load_state_dict(wrong.adapters.from_legacy(load_file(str(LEGACY / "adapters.safetensors"))))


def test_merged_copy_gives_the_same_slu_outputs_without_hooks(mels):
    model = _model()
    model.add_adapters(LoraConfig(rank=4, encoder_from=0))
    _scramble(model)
    merged = model.merged_copy()
    assert merged.adapters is None and model.adapters is not None
    for a, b in zip(_outputs(model, mels), _outputs(merged, mels)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with merged.stock():                                       # no adapters left to switch off
        torch.testing.assert_close(_outputs(merged, mels)[1], _outputs(model, mels)[1], rtol=1e-4, atol=1e-4)
    with model.stock():                                        # the original still has its stock path
        assert not torch.allclose(_outputs(model, mels)[1], _outputs(merged, mels)[1], atol=1e-3)


def test_same_encoder_sees_encoder_adapters():
    a, b = _model(), _model()
    for m in (a, b):
        m.add_adapters(LoraConfig(rank=4, encoder_from=0))
    b.adapters.load_state_dict(a.adapters.state_dict())
    assert same_encoder(a, b)
    with torch.no_grad():
        b.whisper.model.decoder.layers[0].fc1.lora_B["default"].weight.add_(1.0)
    assert same_encoder(a, b)                                  # decoder adapters do not matter
    with torch.no_grad():
        b.whisper.model.encoder.layers[1].fc1.lora_B["default"].weight.add_(1.0)
    assert not same_encoder(a, b)


def test_lora_training_changes_only_adapters(tmp_path):
    cfg = load_config(TrainConfig, None, tiny_random=True, train_manifest=str(FSC), dev_manifest=str(FSC),
                      output_dir=str(tmp_path / "run"), batch_size=2, max_steps=2, save_every_steps=1,
                      dev_limit=2, warmup_steps=1, lr=1e-2, lora_rank=4, freeze_encoder_layers=1,
                      asr_weight=1.0)
    recipe_main(cfg)
    last = tmp_path / "run" / "last"
    whisper = load_file(str(last / "model.safetensors"))
    fresh = SLUModel.tiny_random([TEXT], seed=0).whisper.state_dict()
    for k, v in whisper.items():                               # Whisper itself never moved
        assert torch.equal(v, fresh[k].to(v.dtype)), k
    adapters = load_file(str(last / "lora" / "adapter_model.safetensors"))
    assert any(".encoder.layers.1." in k for k in adapters) and not any(".encoder.layers.0." in k for k in adapters)
    assert any(v.abs().max() > 0 for k, v in adapters.items() if ".lora_B." in k)    # they learned


def test_bad_lora_settings_are_clear_errors():
    with pytest.raises(ValueError, match="rank"):
        LoraConfig(rank=0).validate()
    with pytest.raises(ValueError, match="modules"):
        LoraConfig(modules=["conv1"]).validate()
    model = _model()
    model.add_adapters(LoraConfig(rank=2))
    with pytest.raises(ValueError, match="already has adapters"):
        model.add_adapters(LoraConfig(rank=2))
