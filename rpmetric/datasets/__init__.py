"""Readers for the human-judgement benchmarks (NIGHTS, BAPPS, THINGS, triplet CSV files, full-reference IQA, pair files) and torch datasets that decode them.

Readers return records with file paths (cheap, checked); :class:`TripletImages` and
:class:`PairImages` decode the pixels, in DataLoader workers.
"""

from .bapps import (BAPPS_2AFC_CATEGORIES, BAPPS_2AFC_TRAIN_CATEGORIES, BAPPS_JND_CATEGORIES, BAPPS_SUBSETS,
                    bapps_2afc_categories, read_bapps_2afc, read_bapps_jnd)
from .iqa import IQA_DATASETS, read_iqa, read_pieapp_pairs
from .loading import PairImages, ScoredPairImages, TripletImages, collate_images
from .nights import NIGHTS_SPLITS, read_nights
from .records import BadItem, JNDPair, ScoredPair, Triplet
from .records import ODD_POSITIONS, OddOneOut
from .loading import OddOneOutImages
from .things import THINGS_ODD_POSITION, THINGS_TRIPLETS, read_things
from .triplets import TRIPLET_COLUMNS, read_triplets_csv
from .pairs import read_pairs

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
    "OddOneOut",
    "ODD_POSITIONS",
    "OddOneOutImages",
    "read_things",
    "THINGS_TRIPLETS",
    "THINGS_ODD_POSITION",
    "read_triplets_csv",
    "TRIPLET_COLUMNS",
    "ScoredPair",
    "ScoredPairImages",
    "IQA_DATASETS",
    "read_iqa",
    "read_pieapp_pairs",
    "read_pairs",
]
