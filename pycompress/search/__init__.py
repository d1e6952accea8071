"""Hardware-aware compression search: which compression, for which layer and how much structure, to
meet a latency or size budget on this device with the least loss.

    from pycompress.search import Budget, search
    result = search(model, calibration=batches, example_inputs=batch, budget=Budget(latency=0.5))
    result.recipe          # a pycompress.recipe.Recipe
"""

from pycompress.search.latency import LatencyTable, LayerCost, resolve_cache_dir, time_interleaved
from pycompress.search.quality import QualityModel, relative_error
from pycompress.search.search import (Assignment, Budget, Candidate, SearchResult, apply_searched, search)
from pycompress.search.space import SearchSpace, Site, Structure, default_options, option_label

__all__ = [
    "Assignment", "Budget", "Candidate", "LatencyTable", "LayerCost", "QualityModel",
    "SearchResult", "SearchSpace", "Site", "Structure", "apply_searched", "default_options", "option_label",
    "relative_error", "resolve_cache_dir", "search", "time_interleaved",
]
