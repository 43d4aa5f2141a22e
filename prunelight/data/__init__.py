"""Data: the corpus registry, local readers, the token windows for calibration and evaluation, and their
batches sharded across ranks."""

from prunelight.data.corpora import Corpus, CorpusSpec, as_spec, known_corpora, load_corpus
from prunelight.data.root import data_root
from prunelight.data.windows import WindowSet, calibration_windows, evaluation_windows

__all__ = [
    "Corpus",
    "CorpusSpec",
    "WindowSet",
    "as_spec",
    "calibration_windows",
    "data_root",
    "evaluation_windows",
    "known_corpora",
    "load_corpus",
]
