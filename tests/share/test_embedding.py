"""FactorizedEmbedding: truncated-SVD initialisation (exact at full rank, optimal below), padding rows,
E by energy, FactorizedEmbeddingConfig through compress_, bad input and torch.compile. MiniLM's word
embeddings at E = 128: tests/share/test_minilm_share.py."""

import copy

import pytest
import torch
from torch import nn

import pycompress
from pycompress.lowrank.factorize import rank_for_energy
from pycompress.prune.physical import count_params
from pycompress.share.embedding import FactorizedEmbedding, FactorizedEmbeddingConfig, dim_for_energy


def _low_rank_embedding(V=40, H=24, rank=5, dtype=torch.float64, padding_idx=None):
    g = torch.Generator().manual_seed(0)
    embedding = nn.Embedding(V, H, padding_idx=padding_idx, dtype=dtype)
    with torch.no_grad():
        embedding.weight.copy_(torch.randn(V, rank, generator=g, dtype=dtype)
                               @ torch.randn(rank, H, generator=g, dtype=dtype))
        if padding_idx is not None:
            embedding.weight[padding_idx].zero_()
    return embedding


@pytest.mark.parametrize("dim", [5, 7])
def test_exact_when_dim_reaches_the_rank(dim):
    embedding = _low_rank_embedding(rank=5)
    factorized = FactorizedEmbedding.from_embedding(embedding, dim)
    assert factorized.table.shape == (40, dim) and factorized.projection.shape == (dim, 24)
    assert count_params(factorized) == dim * (40 + 24)
    torch.testing.assert_close(factorized.dense_weight(), embedding.weight, rtol=0, atol=1e-12)
    ids = torch.tensor([[0, 3, 39], [7, 7, 1]])
    torch.testing.assert_close(factorized(ids), embedding(ids), rtol=0, atol=1e-12)


def test_truncation_is_the_best_rank_dim_table():
    torch.manual_seed(0)
    embedding = nn.Embedding(50, 20, dtype=torch.float64)
    factorized = FactorizedEmbedding.from_embedding(embedding, 6)
    s = torch.linalg.svdvals(embedding.weight.detach())
    error = torch.linalg.norm(factorized.dense_weight() - embedding.weight).item()
    assert error == pytest.approx(s[6:].norm().item(), rel=1e-9)


def test_energy_picks_the_dim():
    torch.manual_seed(0)
    embedding = nn.Embedding(60, 32)
    s = torch.linalg.svdvals(embedding.weight.detach().double())
    expected = rank_for_energy(s, 0.6)
    assert 1 < expected < 32 and dim_for_energy(embedding.weight, 0.6) == expected
    assert FactorizedEmbedding.from_embedding(embedding, energy=0.6).dim == expected


def test_padding_row_stays_zero():
    embedding = _low_rank_embedding(V=30, H=16, rank=16, dtype=torch.float32, padding_idx=-2)
    assert embedding.padding_idx == 28
    factorized = FactorizedEmbedding.from_embedding(embedding, 4)
    assert factorized.padding_idx == 28
    assert torch.equal(factorized.table[28], torch.zeros(4))
    ids = torch.tensor([28, 3, 28, 5])
    out = factorized(ids)
    assert torch.equal(out[0], torch.zeros(16)) and out[1].abs().max() > 0
    out.square().sum().backward()
    assert torch.equal(factorized.table.grad[28], torch.zeros(4)) and factorized.table.grad[3].abs().max() > 0
    # A padding row that was not zero is approximated like any other row.
    torch.manual_seed(0)
    dense = nn.Embedding(30, 16, padding_idx=0)
    with torch.no_grad():
        dense.weight[0].normal_()
    assert FactorizedEmbedding.from_embedding(dense, 4).table[0].abs().max() > 0
    fresh = FactorizedEmbedding(30, 16, 4, padding_idx=2)
    assert torch.equal(fresh.table[2], torch.zeros(4))


def test_bad_arguments():
    embedding = nn.Embedding(30, 16)
    for dim in (0, 16, 17, 2.5, True):
        with pytest.raises(ValueError, match=r"dim E must be an int in \[1, min\(V, H\)\) = \[1, 16\) for a "
                                             rf"\[30, 16\] embedding table \(got E={dim!r}\)"):
            FactorizedEmbedding.from_embedding(embedding, dim)
    with pytest.raises(ValueError, match=r"FactorizedEmbedding: dim E must be an int in \[1, min\(V, H\)\) = "
                                         r"\[1, 8\).*got E=8"):
        FactorizedEmbedding(8, 30, 8)
    with pytest.raises(ValueError, match=r"FactorizedEmbedding: padding_idx must be an int in \[-8, 8\)"):
        FactorizedEmbedding(8, 30, 4, padding_idx=8)
    with pytest.raises(ValueError, match="give exactly one of dim or energy"):
        FactorizedEmbedding.from_embedding(embedding, 4, energy=0.5)
    with pytest.raises(ValueError, match=r"max_norm set is not supported"):
        FactorizedEmbedding.from_embedding(nn.Embedding(30, 16, max_norm=1.0), 4)
    with pytest.raises(TypeError, match="embedding must be an nn.Embedding"):
        FactorizedEmbedding.from_embedding(nn.Linear(16, 30), 4)
    with pytest.raises(ValueError, match=r"FactorizedEmbeddingConfig: dim E must be an int >= 1 \(got E=0\)"):
        FactorizedEmbeddingConfig(dim=0)
    with pytest.raises(ValueError, match="FactorizedEmbeddingConfig: give exactly one of dim or energy"):
        FactorizedEmbeddingConfig()
    with pytest.raises(ValueError, match=r"energy must be a number in \(0, 1\]"):
        FactorizedEmbeddingConfig(energy=1.5)


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.words = nn.Embedding(200, 32, padding_idx=0)
        self.kinds = nn.Embedding(3, 32)
        self.positions = nn.Embedding(40, 32)
        self.out = nn.Linear(32, 5)

    def forward(self, ids):
        positions = torch.arange(ids.shape[-1])
        return self.out(self.words(ids) + self.kinds(ids % 3) + self.positions(positions))


def test_compress_reports_the_reduction():
    torch.manual_seed(0)
    model = _Tagger()
    before = count_params(model)
    with pytest.warns(UserWarning, match=r"left dense: kinds: E=8 is not below min\(V, H\) = 3"):
        pycompress.compress_(model, FactorizedEmbeddingConfig(dim=8))
    report = pycompress.report(model)
    assert report.replaced == {
        "words": "[200, 32] -> [200, 8] @ [8, 32]: 6,400 -> 1,856 parameters (29.0%)",
        "positions": "[40, 32] -> [40, 8] @ [8, 32]: 1,280 -> 576 parameters (45.0%)",
    }
    assert isinstance(model.words, FactorizedEmbedding) and type(model.kinds) is nn.Embedding
    assert model.words.padding_idx == 0
    assert count_params(model) == before - (6400 - 1856) - (1280 - 576)
    assert model(torch.randint(0, 200, (2, 7))).shape == (2, 7, 5)

    filtered = _Tagger()
    with pytest.warns(UserWarning, match=r"left dense: words: E=28 factors \(6,496 parameters\) are not smaller"):
        pycompress.compress_(filtered, FactorizedEmbeddingConfig(dim=28), filter_fn=lambda m, name: name == "words")
    assert pycompress.report(filtered).replaced == {}

    tied = _Tagger()
    tied.out = nn.Linear(32, 200, bias=False)
    tied.out.weight = tied.words.weight
    with pytest.warns(UserWarning, match=r"left dense: words: its weight is tied to out.weight"):
        pycompress.compress_(tied, FactorizedEmbeddingConfig(dim=8), filter_fn=lambda m, name: name == "words")
    assert tied.out.weight is tied.words.weight

    bare = pycompress.compress_(nn.Embedding(50, 20), FactorizedEmbeddingConfig(energy=0.5))
    assert isinstance(bare, FactorizedEmbedding)
    assert pycompress.report(bare).replaced == {"<model>": "factorized_embedding"}


def test_manifest_entry_rebuilds_the_module():
    factorized = FactorizedEmbedding.from_embedding(_low_rank_embedding(padding_idx=3, dtype=torch.float16), 4)
    entry = factorized.manifest_entry()
    assert entry == {"format": "factorized_embedding", "num_embeddings": 40, "embedding_dim": 24, "dim": 4,
                     "padding_idx": 3, "dtype": "float16"}
    rebuilt = FactorizedEmbedding.from_manifest_entry(entry)
    rebuilt.load_state_dict(factorized.state_dict())
    ids = torch.tensor([3, 0, 17])
    assert rebuilt.table.dtype == torch.float16 and torch.equal(rebuilt(ids), factorized(ids))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _Tagger()
    with pytest.warns(UserWarning, match=r"left dense: kinds"):
        pycompress.compress_(model, FactorizedEmbeddingConfig(dim=8))
    pycompress.save(model, tmp_path / "m")
    loaded = pycompress.load(tmp_path / "m", _Tagger())
    assert isinstance(loaded.words, FactorizedEmbedding) and loaded.words.dim == 8
    ids = torch.randint(0, 200, (2, 7))
    assert torch.equal(loaded(ids), model(ids))


def test_torch_compile_and_fine_tuning():
    torch.manual_seed(0)
    model = _Tagger()
    pycompress.compress_(model, FactorizedEmbeddingConfig(dim=8), filter_fn=lambda m, name: name == "words")
    ids = torch.randint(0, 200, (3, 6))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(ids), model(ids))
    factorized = model.words
    torch.testing.assert_close(torch.compile(factorized, fullgraph=True, backend="aot_eager")(ids), factorized(ids))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = copy.deepcopy(factorized)
    compiled(ids).sum().backward()
    optimizer.step()
    assert not torch.equal(factorized.projection, before.projection)
    assert torch.equal(factorized.table[0], before.table[0])

