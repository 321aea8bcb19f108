"""Object detection: box coding and anchors, the SSD detector, its loss, NMS and mAP."""
from jaxdl.detection import boxes, loss, metrics, nms, ssd

__all__ = ["boxes", "loss", "metrics", "nms", "ssd"]
