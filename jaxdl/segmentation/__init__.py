"""Semantic segmentation: FCN and U-Net segmenters, per-pixel loss, joint augmentation, mIoU."""
