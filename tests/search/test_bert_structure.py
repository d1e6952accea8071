"""Structure options (heads, FFN, block removal) on a small randomly initialised BERT encoder."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pycompress.lowrank.configs import LowRankConfig  # noqa: E402
from pycompress.quant.configs import Int8Config  # noqa: E402
from pycompress.search import Budget, SearchSpace, Structure, apply_searched, search  # noqa: E402
from pycompress.search.latency import resolve_cache_dir  # noqa: E402
from pycompress.search.space import analyze, module_bytes  # noqa: E402

SPACE = SearchSpace(options=(Int8Config(), LowRankConfig(rank=0.25, method="activation_scaled")),
                    head_amounts=(0.25, 0.5), ffn_amounts=(0.5,), max_removed_blocks=0.5)


def _bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=500, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=512, max_position_embeddings=64)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def _batch(seed, batch=8, seq=32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    model = _bert()
    calibration = [_batch(1), _batch(2)]
    result = search(model, calibration=calibration, example_inputs=_batch(3, 16, 64), budget=Budget(latency=0.8),
                    space=SPACE, cache_dir=tmp_path_factory.mktemp("latency"), progress=False)
    return model, calibration, result


def test_space_of_a_bert_encoder():
    ms = analyze(_bert(), _batch(3), SPACE)
    assert [s.role for s in ms.sites[:6]] == ["qkv", "qkv", "qkv", "attn_out", "ffn_up", "ffn_down"]
    assert ms.stack.count == 4 and ms.stack.heads == 4 and ms.stack.intermediate == 512
    # 3 head levels (4, 3, 2 heads kept) x 2 FFN levels x 0..2 blocks removed.
    assert len(ms.structures) == 18 and ms.structures[0] == Structure()
    shrunk = Structure(heads=0.5, ffn=0.5)
    assert [ms.shape(s, shrunk) for s in ms.sites[:6]] == [(64, 128)] * 3 + [(128, 64), (256, 128), (128, 256)]
    assert all(site.tokens == 8 * 32 for site in ms.sites)


def test_structured_candidates_apply_with_exact_size(searched):
    model, calibration, result = searched
    # Which structures the search explores depends on measured speed; every kind must be among them, and
    # the candidates that combine the most kinds must apply with exactly their predicted size.
    kinds = {"heads": lambda a: bool(a.structure.heads), "ffn": lambda a: bool(a.structure.ffn),
             "block removal": lambda a: bool(a.removed_blocks)}
    chosen = []
    for kind, has in kinds.items():
        with_kind = [c for c in result.candidates if has(c.assignment)]
        assert with_kind, f"the search evaluated no candidate with {kind}"
        chosen.append(max(with_kind, key=lambda c: (sum(h(c.assignment) for h in kinds.values()),
                                                    len(c.assignment.options))))
    for candidate in [*chosen, *(c for c in result.candidates if c.assignment == result.assignment)]:
        compressed = apply_searched(model, candidate.recipe, calibration)
        assert module_bytes(compressed) == candidate.size_bytes, candidate.assignment.describe()
        kept = 4 - len(candidate.assignment.removed_blocks)
        assert len(compressed.encoder.layer) == kept
        with torch.no_grad():
            out = compressed(**_batch(4)).last_hidden_state
        assert out.shape == (8, 32, 128) and torch.isfinite(out).all()


def test_removed_blocks_are_the_least_influential(searched):
    _, _, result = searched
    removals = {c.assignment.structure.removed: c.assignment.removed_blocks for c in result.candidates}
    assert removals[0] == ()
    assert len(removals[1]) == 1 and set(removals[1]) < set(removals[2])


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("PYCOMPRESS_CACHE_DIR", str(tmp_path))
    assert resolve_cache_dir() == tmp_path / "latency"
    assert resolve_cache_dir(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.delenv("PYCOMPRESS_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "pycompress" / "latency"
