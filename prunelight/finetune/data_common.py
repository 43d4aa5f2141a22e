"""What both fine-tuning datamodules share: argument checks, the held-out split, the seeded order (the
ignore label, ``IGNORE_INDEX``, is the evaluation batches' one: :mod:`prunelight.data.batches`)."""

from __future__ import annotations

import math

import torch

from prunelight.errors import ConfigError


def check_common(
    batch_size: int, val_fraction: float, max_train_samples: int | None, max_val_samples: int | None
) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 < val_fraction < 1:
        raise ConfigError(
            f"val_fraction must be strictly between 0 and 1, got {val_fraction}; e.g. 0.1 holds out a tenth"
        )
    for name, value in (("max_train_samples", max_train_samples), ("max_val_samples", max_val_samples)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1 (or None for all), got {value}")


def held_out_count(val_fraction: float, total: int) -> int:
    """ceil(val_fraction * total), rounded first: 0.1 * 30 is 3.0000000000000004 and must give 3, not 4."""
    return math.ceil(round(val_fraction * total, 9))


def seeded_generator(seed: int) -> torch.Generator:
    # A generator of its own makes the order depend on ``seed`` only, not on what else drew random numbers.
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------
# Language modelling
