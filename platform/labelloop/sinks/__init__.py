"""Where a round's images go for labeling (Label Studio, ...)."""
