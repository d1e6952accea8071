"""Knowledge distillation: losses, the training loop (also for plain supervised training and QAT), the
recipe stage, and the MiniLM text procedure.

    from pycompress.distill import DistillConfig, distill
    student = distill(student, teacher, batches, DistillConfig(steps=300))
"""

from pycompress.distill import stage  # noqa: F401  (registers DistillConfig as a recipe stage)
from pycompress.distill.loss import DistillationLoss, FeatureDistillation, attention_distillation_loss, kd_loss
from pycompress.distill.minilm import distill_minilm, minilm_batches
from pycompress.distill.trainer import (
    DistillConfig,
    Distiller,
    TrainConfig,
    distill,
    train,
    trainable_only,
    uniform_layer_map,
)

__all__ = [
    "DistillConfig",
    "DistillationLoss",
    "Distiller",
    "FeatureDistillation",
    "TrainConfig",
    "attention_distillation_loss",
    "distill",
    "distill_minilm",
    "kd_loss",
    "minilm_batches",
    "train",
    "trainable_only",
    "uniform_layer_map",
]
