"""Weight sharing: k-means weight clustering into codebooks (Deep Compression), ALBERT-style
cross-layer parameter sharing and factorized embeddings."""

from pycompress.nn.codebook import CodebookLinear
from pycompress.share.cluster import ClusterConfig, kmeans_weights
from pycompress.share.embedding import FactorizedEmbedding, FactorizedEmbeddingConfig, dim_for_energy
from pycompress.share.layers import ShareLayersConfig, SharingPlan, consecutive_groups, share_layers_

__all__ = [
    "ClusterConfig",
    "CodebookLinear",
    "FactorizedEmbedding",
    "FactorizedEmbeddingConfig",
    "ShareLayersConfig",
    "SharingPlan",
    "consecutive_groups",
    "dim_for_energy",
    "kmeans_weights",
    "share_layers_",
]
