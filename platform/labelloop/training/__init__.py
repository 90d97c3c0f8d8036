"""The model side of the loop: one subpackage per model kind (segmentation, detection,
classification) on a shared recipe base, data helpers, harness and kind interface.

Nothing here touches the database: inputs are a frozen manifest and a `fetch(blob_key)`
callable, outputs are files in a work directory and plain dicts. Importing this package
or a recipe module loads no deep-learning library; the kinds' other modules do.
"""

from labelloop.training.recipe import Augment, BaseRecipe, parse_recipe

__all__ = ["Augment", "BaseRecipe", "parse_recipe"]
