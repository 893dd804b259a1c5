"""The sentence generator's training pass: several calls packed into one, padding skipped when not scored.

Both are speed measures (docs/training.md, "Where the time goes") that must not change the maths:
a call's loss and gradients equal those of the call run alone with its padding computed.
"""

from __future__ import annotations

import pytest
import torch

from chexcli.train.generation import GenerationCall, generation_losses, teacher_forcing_loss
from chexcli.train.losses import generation_loss

SENTENCES = ["The lungs are clear.", "No pleural effusion.", "Heart size is normal.",
             "There is a small left pleural effusion with adjacent atelectasis in the lower lobe."]
PHRASES = ["clear", "left lower lobe atelectasis and small effusion", "normal heart size", "no pneumothorax",
           "stable mild cardiomegaly"]


@pytest.fixture()
def model(tiny_model):
    was = tiny_model.training
    tiny_model.eval()  # no dropout: the passes must agree exactly, not in distribution
    yield tiny_model
    tiny_model.train(was)


def _calls(model, seed: int = 0) -> list[GenerationCall]:
    g = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    return [GenerationCall(torch.randn(len(SENTENCES), d, generator=g).requires_grad_(), SENTENCES),
            GenerationCall(torch.randn(len(PHRASES), d, generator=g).requires_grad_(), PHRASES)]


def _alone_with_padding(model, call: GenerationCall, include_padding: bool) -> torch.Tensor:
    """The plain computation: one call, padded rows, logits of every position."""
    from chexcli.train.generation import encode_targets

    cfg = model.txt_decoder.cfg
    ids, mask = encode_targets(model.gpt2_tokenizer, call.texts, cfg.bos_token_id, cfg.eos_token_id,
                               cfg.pad_token_id, cfg.max_length)
    hidden, = model.txt_decoder.teacher_forcing_hidden([(call.features, ids, mask)], drop_padding=False)
    return generation_loss(model.txt_decoder.language_model.logits(hidden), ids, mask, include_padding)


@pytest.mark.parametrize("include_padding", [False, True])
def test_packed_calls_equal_each_call_alone(model, include_padding):
    packed = _calls(model)
    alone = _calls(model)
    losses = generation_losses(model, packed, include_padding=include_padding)
    expected = [_alone_with_padding(model, c, include_padding) for c in alone]
    for got, want in zip(losses, expected):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got, want)
    sum(losses).backward()
    sum(expected).backward()
    for a, b in zip(packed, alone):
        assert torch.allclose(a.features.grad, b.features.grad, rtol=1e-4, atol=1e-6)


def test_unscored_padding_is_not_computed_but_the_loss_is_the_same(model):
    call = _calls(model)[1]
    from chexcli.train.generation import encode_targets

    cfg = model.txt_decoder.cfg
    ids, mask = encode_targets(model.gpt2_tokenizer, call.texts, cfg.bos_token_id, cfg.eos_token_id,
                               cfg.pad_token_id, cfg.max_length)
    dropped, = model.txt_decoder.teacher_forcing_hidden([(call.features, ids, mask)], drop_padding=True)
    full, = model.txt_decoder.teacher_forcing_hidden([(call.features, ids, mask)], drop_padding=False)
    scored = torch.zeros_like(mask)
    scored[:, :-1] = mask[:, 1:]  # positions whose next token is real
    assert bool((dropped[~scored] == 0).all())  # padding and each row's last real position: never computed
    assert torch.allclose(dropped[scored], full[scored], rtol=1e-4, atol=1e-5)
    lm = model.txt_decoder.language_model
    assert torch.allclose(teacher_forcing_loss(lm, dropped, ids, mask, False),
                          generation_loss(lm.logits(full), ids, mask, False), rtol=1e-5)


def test_dropping_unscored_positions_keeps_every_gradient(model):
    call = _calls(model)[1]
    from chexcli.train.generation import encode_targets

    cfg = model.txt_decoder.cfg
    ids, mask = encode_targets(model.gpt2_tokenizer, call.texts, cfg.bos_token_id, cfg.eos_token_id,
                               cfg.pad_token_id, cfg.max_length)
    lm = model.txt_decoder.language_model
    grads = []
    for drop in (True, False):
        model.zero_grad(set_to_none=True)
        features = call.features.detach().clone().requires_grad_(True)
        hidden, = model.txt_decoder.teacher_forcing_hidden([(features, ids, mask)], drop_padding=drop)
        loss = (teacher_forcing_loss(lm, hidden, ids, mask, False) if drop
                else generation_loss(lm.logits(hidden), ids, mask, False))
        loss.backward()
        grads.append([features.grad.clone(), lm.transformer.wte.weight.grad.clone(),
                      model.txt_decoder.prefix_proj.layers[3].weight.grad.clone()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
