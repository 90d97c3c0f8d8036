"""The push stage: a round's images, with the model's predictions as pre-annotations, go
to where annotators work (a file, Label Studio, CVAT)."""
