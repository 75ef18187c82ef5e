"""The fast sampler (assistant.model.sampler) against the reference decoder (transformers' WhisperDecoder).

On a tiny random model, with and without LoRA adapters, fixed seeds:

* greedy output is identical to the reference decoder's (tokens, texts, finished flags);
* teacher-forced per-token log-probs through the fast decoder equal ``SLUModel.token_logprobs`` (1e-5
  + float32 resolution);
* every candidate's ``logprob`` equals ``sequence_logprobs`` of its token ids (1e-4), whatever the
  sampler settings;
* sampled sequence frequencies pass a chi-square test against the exact sequence probabilities
  (teacher forcing, max_new_tokens=2), as the reference sampler's do; a temperature-2 sampler fails it.

The random model is made "lively": a sharpened output (final layer norm x10) and an <|endoftext|> logit
that depends on the state, so rows finish at different steps and the row-dropping paths run.
"""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import chisquare

from assistant.model.lora import LoraConfig
from assistant.model.sampler import FastDecoder, supported
from assistant.model.slu import SLUModel

TARGETS = [
    "turn on the lights in the kitchen | activate_lights_kitchen | location=kitchen ; object=lights",
    "set an alarm for seven thirty a m | alarm_set | time=seven thirty a m",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def lively(model: SLUModel) -> SLUModel:
    ln = model.whisper.model.decoder.layer_norm
    direction = torch.randn(ln.bias.shape, generator=torch.Generator().manual_seed(0))
    ln.weight.mul_(10.0)
    ln.bias.copy_(direction)
    # <|endoftext|> is the padding row of the tied embedding (all zeros in a random model): give it a logit.
    model.whisper.proj_out.weight[model.eot_id] = 5.0 * direction / direction.square().sum()
    return model


@pytest.fixture(scope="module")
def plain() -> SLUModel:
    return lively(SLUModel.tiny_random(TARGETS, seed=0))


@pytest.fixture(scope="module")
def with_lora(plain) -> SLUModel:
    model = copy.deepcopy(plain)
    model.add_adapters(LoraConfig(rank=4, alpha=8.0, encoder_from=0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(params=["plain", "lora"])
def model(request, plain, with_lora) -> SLUModel:
    return plain if request.param == "plain" else with_lora


def encoded(model: SLUModel, seconds=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    waves = [0.1 * torch.randn(int(s * 16000), generator=g) for s in seconds]
    with torch.no_grad():
        return model.encode(model.features(waves))


def run(model: SLUModel, sampler: str, *args, **kwargs):
    saved, model.sampler = model.sampler, sampler
    try:
        return model.generate(*args, **kwargs)
    finally:
        model.sampler = saved


def test_fast_path_is_used_and_adapters_change_the_output(plain, with_lora):
    assert supported(plain) and supported(with_lora)
    enc = encoded(plain)
    a = run(plain, "fast", enc, max_new_tokens=12)
    b = run(with_lora, "fast", enc, max_new_tokens=12)
    assert [u[0].token_ids for u in a] != [u[0].token_ids for u in b]      # the adapters are on
    with with_lora.stock():                                                # ... and gated like the hooks
        c = run(with_lora, "fast", enc, max_new_tokens=12)
    assert [u[0].token_ids for u in c] == [u[0].token_ids for u in a]


def test_a_lora_layer_it_cannot_fold_sends_generate_to_the_reference(with_lora):
    model = copy.deepcopy(with_lora)
    model.whisper.model.decoder.layers[0].fc1.base_layer.register_forward_hook(lambda module, inputs, out: out)
    assert not supported(model)


@pytest.mark.parametrize("max_new_tokens", [30, 12])
def test_greedy_identical_to_reference(model, max_new_tokens):
    enc = encoded(model)
    ref = run(model, "reference", enc, max_new_tokens=max_new_tokens)
    fast = run(model, "fast", enc, max_new_tokens=max_new_tokens, max_rows=4)   # several groups
    assert [[c.token_ids for c in u] for u in fast] == [[c.token_ids for c in u] for u in ref]
    assert [[(c.text, c.finished, c.greedy, c.count) for c in u] for u in fast] == \
        [[(c.text, c.finished, c.greedy, c.count) for c in u] for u in ref]
    for u, v in zip(fast, ref):
        assert abs(u[0].logprob - v[0].logprob) < 1e-4
    if max_new_tokens == 30 and model.adapters is None:
        assert all(u[0].finished for u in fast)         # (the adapted model's greedy rows never end)
    # The greedy row decoded among sampled rows (dropped rows, uneven utterances) is the same greedy row.
    mixed = run(model, "fast", enc, num_samples=7, seed=3, max_new_tokens=max_new_tokens)
    assert [u[0].token_ids for u in mixed] == [u[0].token_ids for u in ref]
    assert all(u[0].greedy for u in mixed)


def test_teacher_forced_logprobs_equal_reference(model):
    enc = encoded(model)
    cands = run(model, "fast", enc, num_samples=6, seed=0, max_new_tokens=30)
    seqs = [c.token_ids for u in cands for c in u] + model.tokenize(TARGETS)
    rows = [i for i, u in enumerate(cands) for _ in u] + [0, 5]
    lengths = {len(s) for s in seqs}
    assert len(lengths) >= 4                # rows of several lengths
    with torch.no_grad():
        fast, mask = FastDecoder(model).token_logprobs(enc, seqs, rows)
        ref, ref_mask = model.token_logprobs(enc.index_select(0, torch.tensor(rows)), seqs)
    assert torch.equal(mask, ref_mask)
    # 1e-5, plus float32's own resolution (~1e-6 relative) for the sharpened model's log-probs below -10
    assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-6), (fast - ref).abs().max()


@pytest.mark.parametrize("settings", [dict(), dict(temperature=1.4, top_p=0.9), dict(top_k=5, temperature=0.7)])
def test_candidate_logprobs_equal_sequence_logprobs(model, settings):
    enc = encoded(model)
    cands = run(model, "fast", enc, num_samples=12, seed=0, max_new_tokens=30, **settings)
    for u in cands:
        assert u[0].greedy and not any(c.greedy for c in u[1:])
        assert len({c.text for c in u}) == len(u)
        assert sum(c.count for c in u) == 12
    finished = [(i, c) for i, u in enumerate(cands) for c in u if c.finished]
    assert len(finished) > 12
    with torch.no_grad():
        scores = model.sequence_logprobs(enc, [c.token_ids for _, c in finished], expand=[i for i, _ in finished])
    assert torch.allclose(scores.double(), torch.tensor([c.logprob for _, c in finished], dtype=torch.float64),
                          atol=1e-4, rtol=0)
    # Unfinished candidates (cut at max_new_tokens) carry the log-prob of their tokens without an end.
    cut = [(i, c) for i, u in enumerate(cands) for c in u if not c.finished]
    if cut:
        with torch.no_grad():
            per_token, _ = model.token_logprobs(enc.index_select(0, torch.tensor([i for i, _ in cut])),
                                                 [c.token_ids for _, c in cut])
        expected = [per_token[k, :len(c.token_ids)].sum().item() for k, (_, c) in enumerate(cut)]
        assert max(abs(e - c.logprob) for e, (_, c) in zip(expected, cut)) < 1e-4
    again = run(model, "fast", enc, num_samples=12, seed=0, max_new_tokens=30, **settings)
    assert [[(c.text, c.count) for c in u] for u in again] == [[(c.text, c.count) for c in u] for u in cands]


@torch.no_grad()
def exact_two_token_distribution(model: SLUModel, enc: torch.Tensor) -> dict[str, float]:
    """P(text) of every output of max_new_tokens=2, by teacher forcing through transformers' decoder."""
    dec = model.whisper.model.decoder
    ids, eot = model.vocab_ids, model.vocab.eot_index
    n_vocab = ids.numel()
    prefix = torch.tensor(model.slu_prefix)
    first = dec(input_ids=prefix[None], encoder_hidden_states=enc).last_hidden_state[:, -1]
    lp1 = torch.log_softmax(model.restricted_logits(first).double(), dim=-1)[0]
    inputs = torch.cat([prefix.expand(n_vocab, -1), ids[:, None]], dim=1)
    second = dec(input_ids=inputs, encoder_hidden_states=enc.expand(n_vocab, -1, -1)).last_hidden_state[:, -1]
    lp2 = torch.log_softmax(model.restricted_logits(second).double(), dim=-1)
    joint = (lp1[:, None] + lp2).exp()                  # P(a, b)
    total = lp1[eot].exp() + joint.sum() - joint[eot].sum()
    assert abs(total.item() - 1.0) < 1e-9
    seqs, probs = [[]], [lp1[eot].exp().item()]         # <|endoftext|> first
    for a in range(n_vocab):                            # a, <|endoftext|>
        if a != eot:
            seqs.append([int(ids[a])])
            probs.append(joint[a, eot].item())
    joint[eot] = 0
    joint[:, eot] = 0
    # a, b (cut at max_new_tokens). Pairs below 1e-6 are left out: their mass lands in the pooled bin
    # (1 - the kept bins), which is exact unless one decodes to a kept bin's text (< 1e-6 each).
    pairs = torch.nonzero(joint > 1e-6)
    seqs += ids[pairs].tolist()
    probs += joint[pairs[:, 0], pairs[:, 1]].tolist()
    out: dict[str, float] = {}
    for text, p in zip(model.tokenizer.batch_decode(seqs, skip_special_tokens=True), probs):
        out[text.strip()] = out.get(text.strip(), 0.0) + p     # candidates are distinct texts
    return out


def chi_square_pvalue(cands, probs: dict[str, float], n: int) -> float:
    observed = {c.text: c.count for c in cands}
    bins = sorted(t for t, p in probs.items() if p * n >= 5)
    expected = [probs[t] * n for t in bins]
    counts = [observed.get(t, 0) for t in bins]
    expected.append(n - sum(expected))                  # everything else, pooled
    counts.append(n - sum(counts))
    assert len(bins) >= 5 and expected[-1] >= 5
    return float(chisquare(counts, expected).pvalue)


def test_sampled_frequencies_match_exact_distribution(plain):
    model, n = plain, 3000
    enc = encoded(model, seconds=(2.0,))
    probs = exact_two_token_distribution(model, enc)
    assert 0.9 < sum(probs.values()) <= 1.0 + 1e-9

    def pvalue(sampler, seed, temperature=1.0):
        (cands,) = run(model, sampler, enc, num_samples=n, greedy=False, seed=seed, temperature=temperature,
                       max_new_tokens=2)
        assert sum(c.count for c in cands) == n
        return chi_square_pvalue(cands, probs, n)

    assert pvalue("fast", 1) > 1e-3
    assert pvalue("fast", 2) > 1e-3
    assert pvalue("reference", 3) > 1e-3        # the reference sampler passes the same test
    assert pvalue("fast", 1, temperature=2.0) < 1e-9     # a wrong sampler fails it
    assert pvalue("fast", 1, temperature=1.25) < 1e-3


def test_unknown_hooks_fall_back_to_reference(plain):
    model = copy.deepcopy(plain)
    enc = encoded(model, seconds=(1.0, 2.0))
    expected = run(model, "reference", enc, max_new_tokens=10)
    handle = model.whisper.model.decoder.layers[0].fc1.register_forward_hook(lambda m, i, o: o * 1.5)
    try:
        assert not supported(model)
        hooked = run(model, "fast", enc, max_new_tokens=10)
        assert hooked == run(model, "reference", enc, max_new_tokens=10)
        assert abs(hooked[0][0].logprob - expected[0][0].logprob) > 1e-3     # the hook ran
    finally:
        handle.remove()
    assert supported(model)
