"""Small models and test stage types shared by the recipe tests."""

import copy
import dataclasses
import itertools
from pathlib import Path

import torch
from torch import nn

from pycompress.recipe import register_stage


@dataclasses.dataclass(frozen=True)
class FakeTrainConfig:
    """A training stage for tests: ``steps`` of SGD pulling the model's output towards the teacher's."""

    steps: int = 3
    lr: float = 0.05

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"FakeTrainConfig: steps must be an int >= 1 (got {self.steps!r})")


# Set "interrupt" to make the next FakeTrainConfig stage raise before it changes the model; "runs" counts
# the stages that trained; "found_state" says whether the last one found its own checkpoint directory.
CONTROL = {"interrupt": False, "runs": 0, "found_state": None}


class Interrupted(RuntimeError):
    pass


def _train(model, stage, context):
    if context.checkpoint_dir is not None:
        state = Path(context.checkpoint_dir)
        CONTROL["found_state"] = state.is_dir()
        state.mkdir(parents=True, exist_ok=True)
    if CONTROL["interrupt"]:
        CONTROL["interrupt"] = False
        raise Interrupted("interrupted on purpose")
    CONTROL["runs"] += 1
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=stage.config.lr)
    losses = []
    for _, batch in zip(range(stage.config.steps), itertools.cycle(context.train_data)):
        with torch.no_grad():
            target = context.teacher(batch)
        loss = nn.functional.mse_loss(model(batch), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}


register_stage(FakeTrainConfig, _train, trains=True)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16)).eval()


def mlp_batches(n: int = 3, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 32, generator=g) for _ in range(n)]


def bert_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=32)


def tiny_bert(seed: int = 0):
    """A 4-layer BERT with hidden size 32 (random weights; its own config object each time)."""
    from transformers import BertModel

    torch.manual_seed(seed)
    return BertModel(copy.deepcopy(bert_config())).eval()


def bert_batches(n: int = 2, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 120, (2, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def snapshot(model: nn.Module) -> dict:
    """Every tensor of the state dict (cloned) and the module type under every name."""
    return {"tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "types": {name: type(m) for name, m in model.named_modules()}}


def same(a: dict, b: dict) -> bool:
    return a["types"] == b["types"] and a["tensors"].keys() == b["tensors"].keys() and all(
        torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])
