"""Data: sources that yield ImageSets, preparation, honest splits and relevance (paper section 2)."""

from vitdsi.data.imageset import ImageSet
from vitdsi.data.registry import DATASETS, DataProbe, list_datasets, load_dataset, probe_dataset
from vitdsi.data.relevance import Relevance
from vitdsi.data.split import Split, SplitSets, make_split, split_sizes

__all__ = [
    "DATASETS",
    "DataProbe",
    "ImageSet",
    "Relevance",
    "Split",
    "SplitSets",
    "list_datasets",
    "load_dataset",
    "make_split",
    "probe_dataset",
    "split_sizes",
]
