"""The generation attack decodes with the model's key-value cache: the same candidates as re-running each sequence,
for every decoder, with and without a prefix or a BOS, over several families."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg_dict

from negrl.attacks import generation
from negrl.model.backbone import Backbone
from negrl.model.vocab import PasswordVocab

VOCAB = PasswordVocab.builtin()
LETTERS = torch.tensor(VOCAB.letter_ids)


def random_model(name: str, seed: int = 0, bos: int | None = None) -> Backbone:
    """model=NAME's architecture, random init, its weights scaled up so that its letters are far from uniform."""
    model = make_cfg_dict(f"model={name}")["model"]
    backbone = Backbone.random_init(dict(model["architecture"]), seed, model["model_type"])
    with torch.no_grad():
        for p in backbone.parameters():
            p.mul_(4.0)
    backbone.bos_id = bos
    return backbone.eval()


def decode_all(backbone: Backbone, start: torch.Tensor, cache: bool, chunk: int) -> dict[str, torch.Tensor]:
    model = generation.decoder(backbone, LETTERS, chunk, cache=cache)
    return {
        "greedy": generation.greedy(model, start, LETTERS, 16),
        "beam": generation.beam(model, start, LETTERS, 16, 32),
        "sampled": generation.sample(model, start, LETTERS, 16, 32, torch.Generator().manual_seed(3)),
    }


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2", "tiny-llama-3.2"])
@pytest.mark.parametrize("prefix,bos", [(True, None), (False, None), (True, 27)])
def test_cached_decoding_gives_the_candidates_of_rerunning_each_sequence(name, prefix, bos):
    backbone = random_model(name, bos=bos)
    start = torch.tensor([VOCAB.reverse_id]) if prefix else torch.empty(0, dtype=torch.long)
    rerun = decode_all(backbone, start, cache=False, chunk=512)
    cached = decode_all(backbone, start, cache=True, chunk=7)  # chunks that cut the beams and the samples
    for decoder in rerun:
        assert torch.equal(cached[decoder], rerun[decoder]), decoder
    assert len({tuple(r) for r in rerun["beam"].tolist()}) == 32  # distinct beams, not a degenerate model
    assert len({tuple(r) for r in rerun["sampled"].tolist()}) > 24


FAMILY_TWINS = ["tiny", "tiny-gpt2", "tiny-llama-3.2", "tiny-qwen2.5", "tiny-olmo-2", "tiny-smollm2", "tiny-gemma-3"]


@pytest.mark.parametrize("name", FAMILY_TWINS)
def test_the_decoder_each_family_gets_gives_the_candidates_of_rerunning(name):
    """The decoder a run picks for each family (`cache=None`): re-running where the cache would not serve, as for
    tiny-gemma-3, whose local layers' cache keeps only its 8-token window (a cache rebuilt from it put the next
    token at the wrong position)."""
    backbone = random_model(name)
    start = torch.tensor([VOCAB.reverse_id])
    model = generation.decoder(backbone, LETTERS, 7)
    assert isinstance(model, generation.Rerun if name == "tiny-gemma-3" else generation.Cached)
    picked = {
        "greedy": generation.greedy(model, start, LETTERS, 16),
        "beam": generation.beam(model, start, LETTERS, 16, 16),
    }
    rerun = generation.decoder(backbone, LETTERS, 512, cache=False)
    assert torch.equal(picked["greedy"], generation.greedy(rerun, start, LETTERS, 16))
    assert torch.equal(picked["beam"], generation.beam(rerun, start, LETTERS, 16, 16))


def test_a_cache_rebuilt_under_a_sliding_window_would_misplace_the_next_token():
    """Why tiny-gemma-3 re-runs: forced through the cache, its log-probs leave the re-run's once the sequence is
    longer than the window."""
    backbone = random_model("tiny-gemma-3")
    assert generation.has_sliding_window(backbone.model.config)
    assert not generation.has_sliding_window(random_model("tiny-qwen2.5").model.config)
    cached, rerun = (generation.decoder(backbone, LETTERS, 5, cache=c) for c in (True, False))
    tokens = torch.tensor([[VOCAB.regular_id]])
    gaps = [float((cached.start(tokens) - rerun.start(tokens)).abs().max())]
    for letter in range(12):
        step, row = torch.tensor([letter]), torch.tensor([0])
        gaps.append(float((cached.advance(row, step) - rerun.advance(row, step)).abs().max()))
    assert max(gaps[:7]) < 1e-5 and max(gaps) > 1e-2


def test_cached_log_probs_match_rerunning_at_every_step():
    backbone = random_model("tiny-gpt2", seed=1)
    cached, rerun = (generation.decoder(backbone, LETTERS, 5, cache=c) for c in (True, False))
    tokens = torch.tensor([[VOCAB.regular_id, 3], [VOCAB.regular_id, 4], [VOCAB.regular_id, 5]])
    torch.testing.assert_close(cached.start(tokens), rerun.start(tokens), rtol=1e-5, atol=1e-5)
    rows = torch.tensor([2, 2, 0, 1])  # beams reordered, one repeated
    for letter in range(6):
        step = torch.full((4,), letter)
        torch.testing.assert_close(cached.advance(rows, step), rerun.advance(rows, step), rtol=1e-5, atol=1e-5)
        rows = torch.arange(4)
    assert cached.kv[0][0].shape[0] == 4 and cached.kv[0][0].shape[2] == 2 + 6  # the cache: 4 rows, 8 positions


def test_a_module_without_a_cache_is_decoded_by_rerunning():
    from types import SimpleNamespace

    class NoCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, logits_to_keep=0):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 28) + self.w)

        def set_attn_implementation(self, attention):
            pass

    assert isinstance(generation.decoder(Backbone(NoCache()), LETTERS, 8), generation.Rerun)
    assert isinstance(generation.decoder(random_model("tiny"), LETTERS, 8), generation.Cached)


def test_an_untrained_models_near_ties_give_the_same_candidates_and_hits():
    """Untrained, the tiny model's 256 most likely passwords are nearly tied: float rounding (cache or not) may
    order tied beams differently, never change which passwords are found or how many hits they make."""
    model = make_cfg_dict("model=tiny")["model"]
    backbone = Backbone.random_init(dict(model["architecture"]), 0, model["model_type"]).eval()
    start = torch.tensor([VOCAB.reverse_id])
    found = {}
    for cache in (True, False):
        d = generation.decoder(backbone, LETTERS, 512, cache=cache)
        found[cache] = (generation.beam(d, start, LETTERS, 16, 256),
                        generation.sample(d, start, LETTERS, 16, 256, torch.Generator().manual_seed(0)))  # fmt: skip
    (beam_c, sampled_c), (beam_r, sampled_r) = found[True], found[False]
    assert {tuple(r) for r in beam_c.tolist()} == {tuple(r) for r in beam_r.tolist()}
    assert torch.equal(sampled_c, sampled_r)
    secrets = torch.cat([beam_r[::7], sampled_r[::5]])
    assert generation.hits(beam_c, secrets) == generation.hits(beam_r, secrets) == len(beam_r[::7])
