"""Recovery fine-tuning: LoRA through peft on a (pruned) causal LM, and its datamodules."""

from prunelight.finetune.data import InstructionDataModule, LanguageModelingDataModule
from prunelight.finetune.lora import LoraSettings
from prunelight.finetune.module import FinetuneModule, TrainingSettings

__all__ = [
    "FinetuneModule",
    "InstructionDataModule",
    "LanguageModelingDataModule",
    "LoraSettings",
    "TrainingSettings",
]
