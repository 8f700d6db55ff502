"""Datasets (folder pairs), paired train/test transforms and the synthetic shapes generator."""

from seglab.data.datasets import (
    DATASETS,
    DatasetError,
    DatasetSpec,
    DatasetWarning,
    FolderPairs,
    SplitIndex,
    build_dataset,
    collate,
    collate_list,
    index_split,
    list_datasets,
    read_dataset_meta,
    read_image,
    read_mask,
    read_split_file,
)
from seglab.data.synthetic import SHAPES_CLASSES, SHAPES_PALETTE, ShapesOptions, generate_shapes, render_shapes
from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TestTransform, TrainTransform

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES_CLASSES",
    "SHAPES_PALETTE",
    "DatasetError",
    "DatasetSpec",
    "DatasetWarning",
    "FolderPairs",
    "ShapesOptions",
    "SplitIndex",
    "TestTransform",
    "TrainTransform",
    "build_dataset",
    "collate",
    "collate_list",
    "generate_shapes",
    "index_split",
    "list_datasets",
    "read_dataset_meta",
    "read_image",
    "read_mask",
    "read_split_file",
    "render_shapes",
]
