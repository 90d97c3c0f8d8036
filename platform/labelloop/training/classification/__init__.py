"""Classification as a model kind: one label per image, or one label per annotated cell.

A timm backbone with a linear head, trained from a frozen manifest either on whole
images (one Tag each, e.g. infected vs uninfected cell images) or on crops cut around
every box / outline of a detection-style manifest (RBC vs WBC vs platelets).
"""

from labelloop.training.classification.recipe import ClassificationRecipe

__all__ = ["ClassificationRecipe"]
