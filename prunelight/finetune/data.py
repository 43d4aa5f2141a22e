"""LightningDataModules for recovery fine-tuning: language-modelling blocks and SQuAD-style instruction QA.

Both keep training and validation disjoint when they come from the same data (offline, WikiText-2 and SQuAD
have no local train split; a local file has no splits at all): the LM module holds out the last blocks of
the running text, the QA module the last articles, so a validation number never measures memorised text.
Whether that happened is decided by where the two splits were read from (``Corpus.origin``), which also
catches ``spec.split`` overrides and splits that are aliases of each other (SQuAD/C4 ``test`` means
``validation``).
"""

from prunelight.data.batches import IGNORE_INDEX
from prunelight.finetune.data_common import held_out_count
from prunelight.finetune.instruction_data import (
    InstructionDataModule,
    PadCollator,
    QAEncoder,
    QAExample,
    load_qa_examples,
)
from prunelight.finetune.lm_data import LanguageModelingDataModule

__all__ = [
    "IGNORE_INDEX",
    "InstructionDataModule",
    "LanguageModelingDataModule",
    "PadCollator",
    "QAEncoder",
    "QAExample",
    "held_out_count",
    "load_qa_examples",
]
