"""The FSDP2 strategy's contract with Lightning and the user (the sharded runs are in test_ddp/test_prune)."""

from __future__ import annotations

import pytest

from prunelight.errors import ConfigError
from prunelight.models.sharding import FullyShardedStrategy, refuse_sharding
from prunelight.trainer import PrunelightTrainer


def _trainer(strategy: object) -> PrunelightTrainer:
    return PrunelightTrainer(accelerator="cpu", devices=1, strategy=strategy, logger=False)


def test_fsdp2_is_a_strategy_name_and_evaluates_without_inference_mode():
    """FSDP2's all-gather buffers outlive a pass: made under inference mode they break the next pass."""
    trainer = _trainer("fsdp2")
    assert isinstance(trainer.strategy, FullyShardedStrategy)
    assert not trainer.test_loop.inference_mode and not trainer.validate_loop.inference_mode
    assert _trainer("auto").test_loop.inference_mode  # everything else keeps Lightning's default


def test_fsdp2_takes_no_parallel_sizes():
    with pytest.raises(ConfigError, match="set trainer.devices"):
        FullyShardedStrategy(tensor_parallel_size=2)


def test_stages_that_do_not_shard_say_so():
    refuse_sharding(_trainer("auto").strategy, "anything")  # no FSDP2, no complaint
    with pytest.raises(ConfigError, match="LoRA fine-tuning does not run under FSDP2"):
        refuse_sharding(_trainer("fsdp2").strategy, "LoRA fine-tuning")


def test_only_local_safetensors_folders_are_read_shard_by_shard(tiny_llama, tmp_path):
    """The others (GGUF files, hub ids) are loaded whole on every rank, then sharded."""
    from types import SimpleNamespace

    from prunelight.models.loader import resolve
    from prunelight.models.sharding import shard_loadable
    from prunelight.models.spec import ModelSpec

    assert shard_loadable(resolve(ModelSpec(str(tiny_llama))))
    assert not shard_loadable(SimpleNamespace(location=str(tmp_path), local=True, gguf_file=None))
    assert not shard_loadable(SimpleNamespace(location=str(tiny_llama), local=True, gguf_file="m.gguf"))
    assert not shard_loadable(SimpleNamespace(location="org/name", local=False, gguf_file=None))


def test_per_sample_taylor_under_fsdp2_needs_whole_batches():
    """One backward per window: a short last batch would leave its rank a pass behind the others."""
    from types import SimpleNamespace

    from prunelight.callbacks.importance import ImportanceCallback

    callback = ImportanceCallback("taylor", aggregation="sample")
    trainer = SimpleNamespace(
        strategy=_trainer("fsdp2").strategy, datamodule=SimpleNamespace(nsamples=5, batch_size=2)
    )
    with pytest.raises(ConfigError, match="multiple of batch_size"):
        callback.on_test_start(trainer, None)


def test_zero_shot_evaluation_refuses_fsdp2():
    from prunelight.evaluate.zeroshot import ZeroShotSettings

    with pytest.raises(ConfigError, match="zero-shot evaluation .* does not run under FSDP2"):
        _trainer("fsdp2").evaluate(None, None, ZeroShotSettings(tasks=["piqa"]))
