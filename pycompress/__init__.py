"""pycompress: model compression for PyTorch that ends in real speed.

    import pycompress
    model = pycompress.compress_(model, pycompress.Int8Config())
    pycompress.save(model, "model-int8")
"""

__version__ = "0.1.0"

from pycompress import ops  # noqa: E402  (registers the ops and their backends)
from pycompress.api import compress_, load, register_handler, report, save  # noqa: E402
from pycompress.nn import (  # noqa: E402
    BinaryConv2d,
    BinaryLinear,
    CodebookLinear,
    Int8Conv2d,
    Int8Linear,
    Int8StaticLinear,
    LowRankLinear,
    SeparableConv2d,
    Sparse24Linear,
    SparseLinear,
    TernaryLinear,
    WeightOnlyInt8Linear,
)
from pycompress.lowrank import LowRankConfig, SeparableConvConfig, separable_  # noqa: E402
from pycompress.share import (  # noqa: E402
    ClusterConfig,
    FactorizedEmbedding,
    FactorizedEmbeddingConfig,
    ShareLayersConfig,
    share_layers_,
)
from pycompress.prune.configs import Sparse24Config, SparseConfig, StructuredPruneConfig  # noqa: E402
from pycompress.quant import Quantizer  # noqa: E402
from pycompress.quant.configs import (  # noqa: E402
    BinaryConfig,
    Int8Config,
    Int8StaticConfig,
    Int8WeightOnlyConfig,
    TernaryConfig,
)
from pycompress.quant.mixed import MixedPrecisionConfig  # noqa: E402
from pycompress.quant.qat import QATConfig, convert, prepare_qat  # noqa: E402
from pycompress.registry import BackendUnavailableError, use_backend  # noqa: E402
from pycompress.info import info  # noqa: E402
from pycompress.distill import DistillConfig, Distiller, distill  # noqa: E402
from pycompress.recipe import (  # noqa: E402
    PruneLayersConfig,
    Recipe,
    RecipeError,
    Stage,
    apply_recipe,
    check_recipe,
    load_compressed,
    load_recipe,
    save_compressed,
)

__all__ = [
    "DistillConfig",
    "Distiller",
    "distill",
    "PruneLayersConfig",
    "Recipe",
    "RecipeError",
    "Stage",
    "apply_recipe",
    "check_recipe",
    "load_compressed",
    "load_recipe",
    "save_compressed",
    "share_layers_",
    "separable_",
    "ShareLayersConfig",
    "SeparableConvConfig",
    "SeparableConv2d",
    "FactorizedEmbeddingConfig",
    "FactorizedEmbedding",
    "CodebookLinear",
    "ClusterConfig",
    "BackendUnavailableError",
    "BinaryConfig",
    "BinaryConv2d",
    "Int8Conv2d",
    "BinaryLinear",
    "Int8Config",
    "Int8Linear",
    "Int8StaticConfig",
    "Int8StaticLinear",
    "Int8WeightOnlyConfig",
    "LowRankConfig",
    "LowRankLinear",
    "MixedPrecisionConfig",
    "QATConfig",
    "Sparse24Config",
    "Sparse24Linear",
    "SparseConfig",
    "SparseLinear",
    "StructuredPruneConfig",
    "convert",
    "prepare_qat",
    "Quantizer",
    "TernaryConfig",
    "TernaryLinear",
    "WeightOnlyInt8Linear",
    "compress_",
    "info",
    "load",
    "ops",
    "register_handler",
    "report",
    "save",
    "use_backend",
]
