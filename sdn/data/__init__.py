"""Data sets, preparation into uint8 tensor files, the held-out split and device-resident loading."""

from sdn.data.datasets import (
    KNOWN_DATASETS,
    DatasetInfo,
    SyntheticSpec,
    dataset_shape,
    load_raw,
)
from sdn.data.loader import DeviceLoader
from sdn.data.prepare import PreparedData, TensorSplit, load_prepared, prepare

__all__ = [
    "KNOWN_DATASETS",
    "DatasetInfo",
    "DeviceLoader",
    "PreparedData",
    "SyntheticSpec",
    "TensorSplit",
    "dataset_shape",
    "load_prepared",
    "load_raw",
    "prepare",
]
