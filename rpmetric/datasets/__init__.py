"""Readers for the human-judgement benchmarks (NIGHTS, BAPPS, full-reference IQA, pair files) and torch datasets that decode them.

Readers return records with file paths (cheap, checked); :class:`TripletImages` and
:class:`PairImages` decode the pixels, in DataLoader workers.
"""

from .bapps import (BAPPS_2AFC_CATEGORIES, BAPPS_2AFC_TRAIN_CATEGORIES, BAPPS_JND_CATEGORIES, BAPPS_SUBSETS,
                    bapps_2afc_categories, read_bapps_2afc, read_bapps_jnd)
from .iqa import IQA_DATASETS, read_iqa, read_pieapp_pairs
from .loading import PairImages, ScoredPairImages, TripletImages, collate_images
from .nights import NIGHTS_SPLITS, read_nights
from .pairs import read_pairs
from .records import BadItem, JNDPair, ScoredPair, Triplet

__all__ = [
    "Triplet",
    "JNDPair",
    "BadItem",
    "read_nights",
    "read_bapps_2afc",
    "read_bapps_jnd",
    "TripletImages",
    "PairImages",
    "collate_images",
    "NIGHTS_SPLITS",
    "BAPPS_2AFC_CATEGORIES",
    "BAPPS_2AFC_TRAIN_CATEGORIES",
    "bapps_2afc_categories",
    "BAPPS_JND_CATEGORIES",
    "BAPPS_SUBSETS",
    "ScoredPair",
    "ScoredPairImages",
    "IQA_DATASETS",
    "read_iqa",
    "read_pieapp_pairs",
    "read_pairs",
]
