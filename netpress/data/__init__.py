"""Datasets netpress can evaluate and calibrate on.

Real data only, read from files a package manager installed or a user's own .safetensors data file;
nothing is downloaded.
Calibration and preservation subsets are always drawn from the *training* split.
"""

from netpress.data.datasets import (
    DATASETS,
    Subset,
    batches,
    calibration_subset,
    check_dataset,
    check_labelled,
    check_not_test,
    class_indices,
    dataset_sha256,
    load_dataset,
    load_preservation_set,
    sample_digests,
    stacked_examples,
)

__all__ = [
    "DATASETS",
    "Subset",
    "batches",
    "calibration_subset",
    "check_dataset",
    "check_labelled",
    "check_not_test",
    "class_indices",
    "dataset_sha256",
    "load_dataset",
    "load_preservation_set",
    "sample_digests",
    "stacked_examples",
]
