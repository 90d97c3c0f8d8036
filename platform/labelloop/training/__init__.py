"""Model side of the loop for segmentation: recipe, network, data, training, evaluation.

Nothing here touches the database: inputs are a frozen manifest and a `fetch(blob_key)`
callable, outputs are files in a work directory and plain dicts.
"""

from labelloop.training.recipe import Augment, Recipe

__all__ = ["Augment", "Recipe"]
