"""The segmentation kind: U-Net family (smp) for semantic, binary and instance masks."""
