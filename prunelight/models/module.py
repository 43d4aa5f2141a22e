"""The LightningModule base every prunelight stage shares: one Hugging Face causal LM and its tokenizer."""

from __future__ import annotations

from typing import Any

import lightning as L
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunelight.models.adapters import FamilyAdapter, adapter_for
from prunelight.models.loader import check_checkpoint, load_config, load_tokenizer, load_weights, resolve
from prunelight.models.sharding import is_fully_sharded, load_shards, shard, shard_loadable
from prunelight.models.spec import DType, ModelSpec


class CausalLMModule(L.LightningModule):
    """Holds a causal LM described by a :class:`ModelSpec`.

    The config and tokenizer are read at construction, so a wrong path or an unsupported family fails
    before any trainer starts; the weights are read in ``configure_model``, inside the strategy's
    initialisation context (the place FSDP needs them).

    Args:
        path: a zoo name, a local Hugging Face folder or ``.gguf`` file, or a hub id.
        gguf_file: a GGUF file inside ``path``.
        dtype: ``auto`` (the checkpoint's), ``float32``, ``bfloat16`` or ``float16``.
        device_map: passed to ``from_pretrained``; leave None to let Lightning place the model.
        trust_remote_code: run code shipped with a hub checkpoint (off by default).
        revision: hub branch, tag or commit.
    """

    def __init__(
        self,
        path: str = "smollm2-135m",
        gguf_file: str | None = None,
        dtype: DType = "auto",
        device_map: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = ModelSpec(path, gguf_file, dtype, device_map, trust_remote_code, revision)
        self._source = resolve(self.spec)
        self.config = load_config(self.spec, self._source)
        self.adapter: FamilyAdapter = adapter_for(self.config)
        check_checkpoint(self._source, self.config)  # the weight files are there and whole, none read yet
        self.tokenizer: PreTrainedTokenizerBase = load_tokenizer(self.spec, self._source)
        self.model: PreTrainedModel | None = None

    @classmethod
    def from_model(
        cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "model"
    ) -> Any:
        """Wrap a model already in memory (a pruned one, say) without saving and reloading it."""
        module = cls.__new__(cls)
        L.LightningModule.__init__(module)
        module.spec = ModelSpec(path=name)
        module._source = None
        module.config = model.config
        module.adapter = adapter_for(model.config)
        module.tokenizer = tokenizer
        module.model = model
        return module

    @property
    def run_name(self) -> str:
        """The ``<model>`` part of ``results/<model>/<experiment>/``."""
        return self.spec.name

    @property
    def max_context(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    def configure_model(self) -> None:
        strategy = self._trainer.strategy if self._trainer is not None else None
        if self.model is None:
            if is_fully_sharded(strategy) and shard_loadable(self._source):
                self.model = load_shards(
                    self.config,
                    self.spec.torch_dtype(),
                    self._source.location,
                    self.adapter,
                    strategy,
                    self.spec.trust_remote_code,
                )
            else:
                self.model = load_weights(self.spec, self._source)
        if strategy is not None:  # under FSDP2 each decoder layer becomes a shard unit (once)
            shard(self.model, self.adapter, strategy)
