"""Datasets: offline TFDS builders and the input pipeline."""
from jaxdl.data.builders import OFFLINE_BUILDERS, Digits, Mnist1d
from jaxdl.data.pipeline import (
    ArrayDataset,
    batch_indices,
    data_dir,
    data_source,
    epoch_permutations,
    is_offline,
    load,
    offline_names,
)

__all__ = ["ArrayDataset", "Digits", "Mnist1d", "OFFLINE_BUILDERS", "batch_indices", "data_dir",
           "data_source", "epoch_permutations", "is_offline", "load", "offline_names"]
