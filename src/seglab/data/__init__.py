"""Datasets (folder pairs), paired train/test transforms and the synthetic shapes generator."""

from seglab.data.datasets import (
    DatasetError,
    FolderPairs,
    build_dataset,
    collate,
    collate_list,
    read_dataset_meta,
    read_image,
    read_mask,
)
from seglab.data.synthetic import SHAPES_CLASSES, SHAPES_PALETTE, ShapesOptions, generate_shapes, render_shapes
from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TestTransform, TrainTransform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES_CLASSES",
    "SHAPES_PALETTE",
    "DatasetError",
    "FolderPairs",
    "ShapesOptions",
    "TestTransform",
    "TrainTransform",
    "build_dataset",
    "collate",
    "collate_list",
    "generate_shapes",
    "read_dataset_meta",
    "read_image",
    "read_mask",
    "render_shapes",
]
