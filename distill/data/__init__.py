"""Datasets for distill: official CIFAR-10 and CIFAR-100 batches, image folders or archives, decoded once to cached
uint8 tensors, plus seeded class-balanced splits.

Public API (other modules import only these names from distill.data):
    Dataset, Splits, default_cache_dir, default_data_dir, load_dataset, make_splits, select_classes,
    balanced_subset, channel_stats
"""

from .dataset import Dataset, Splits, default_cache_dir, default_data_dir
from .load import load_dataset
from .splits import balanced_subset, channel_stats, make_splits, select_classes

__all__ = ["Dataset", "Splits", "default_cache_dir", "default_data_dir", "load_dataset", "make_splits",
           "select_classes", "balanced_subset", "channel_stats"]
