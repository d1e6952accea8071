"""Distilling the bundled MiniLM sentence encoder into a compressed copy of itself on the bundled corpus.

    model, tokenizer = load_minilm()
    student = copy.deepcopy(model)
    share_layers_(student, 3)
    distill_minilm(student, model, tokenizer)          # on sentences("calibration")
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from pycompress.distill.trainer import DistillConfig, distill, trainable_only


def minilm_batches(tokenizer, sentences: Sequence[str], batch_size: int = 32, max_length: int = 64, *,
                   by_length: bool = False) -> list:
    """Chunks of ``batch_size`` sentences tokenized as dicts of input_ids / attention_mask / token_type_ids
    [B, T], padded to the longest sentence of the chunk and cut at ``max_length`` tokens. The chunks are
    consecutive, or with ``by_length=True`` taken from the sentences sorted by token count (stable), which
    cuts the padding, and the time spent on it, to a few tokens per sentence."""
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences) or not sentences:
        raise ValueError("minilm_batches: sentences must be a non-empty sequence of strings")
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"minilm_batches: {name} must be an int >= 1 (got {value!r})")
    sentences = list(sentences)
    if by_length:
        lengths = [len(ids) for ids in tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]]
        sentences = [sentences[i] for i in sorted(range(len(sentences)), key=lengths.__getitem__)]
    return [dict(tokenizer(sentences[start:start + batch_size], padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt"))
            for start in range(0, len(sentences), batch_size)]


# Measured on the bundled corpus (CPU, float32): MiniLM with its 6 layers shared in 3 pairs goes from a
# held-out embedding cosine of 0.28 to 0.67 in these 100 steps (tests/distill/test_minilm_distill.py).
MINILM_CONFIG = DistillConfig(steps=100, lr=3e-4, feature_loss="cosine", checkpoint_every=None)


def distill_minilm(student: nn.Module, teacher: nn.Module, tokenizer, config: Optional[DistillConfig] = None, *,
                   sentences: Optional[Sequence[str]] = None, batch_size: int = 16, max_length: int = 64,
                   train_only: Optional[str] = "encoder.*", checkpoint_dir=None, progress: bool = True) -> nn.Module:
    """Distil ``student``, a compressed copy of the MiniLM ``teacher``, in place: its last hidden state learns
    the teacher's per token (``config``, default MINILM_CONFIG: cosine loss, 100 steps) on ``sentences``
    (default: the bundled ``sentences("calibration")``) in batches of similar length. ``train_only``: the
    modules trained (fnmatch over module names; default the encoder layers, None: all, e.g. after the
    embeddings were compressed too). Returns the student."""
    from pycompress.data import sentences as corpus

    texts = corpus("calibration") if sentences is None else sentences
    batches = minilm_batches(tokenizer, texts, batch_size, max_length, by_length=True)
    with trainable_only(student, train_only, "distill_minilm"):
        return distill(student, teacher, batches, MINILM_CONFIG if config is None else config,
                       checkpoint_dir=checkpoint_dir, progress=progress)
