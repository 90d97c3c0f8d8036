"""Object detection (boxes per cell): a one-stage anchor-free detector in the YOLO style.

A timm backbone (strides 8/16/32), a PAN neck, a decoupled head predicting class scores
and per-point box distances, trained with task-aligned assignment. Each module owns one
part: recipe, network, assigner, loss, data, system, evaluate, predict, views, kind.
"""
