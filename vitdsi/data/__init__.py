"""Data: sources that yield ImageSets, preparation, honest splits and relevance (paper section 2)."""

from vitdsi.data.imageset import ImageSet
from vitdsi.data.registry import DATASETS, list_datasets, load_dataset
from vitdsi.data.relevance import Relevance
from vitdsi.data.split import Split, SplitSets, make_split

__all__ = ["DATASETS", "ImageSet", "Relevance", "Split", "SplitSets", "list_datasets", "load_dataset", "make_split"]
