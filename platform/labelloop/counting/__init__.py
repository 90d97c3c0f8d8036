"""The `count` stage: a model version counts cells per class in images, with overlays and
tables (`stage`). The counting primitives themselves live in `labelloop.objects`."""
