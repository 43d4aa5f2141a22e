"""Greedy decoding whose per-token step is one CUDA graph replay: batch-1 decode without Python per kernel.

Why: at batch 1 a decode step of a 7B model is a few hundred short kernels launched from Python, and the
GPU waits for the launches (38 tokens/s on an H100, about a tenth of what its memory bandwidth allows), so
removing weights barely moves the speed (docs/performance.md). transformers' compiled static-cache path
(``torch.compile``) failed inside Dynamo on the GPU machine's versions. A CUDA graph needs no compiler: the
step is captured once with fixed addresses (a static KV cache, a one-token input, a position tensor) and
replayed for every token, so a token costs one launch. A pruned model's layers may keep different numbers
of key/value heads; transformers' static cache sizes each layer from its first keys, so that works as is.

On a CPU (or with ``graph=False``) the same step runs eagerly: the tests check the tokens there against
``model.generate``, and the benchmark checks the graph's tokens against the eager ones on the GPU.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelight.errors import ConfigError


class GraphDecoder:
    """Greedy decoding of up to ``max_length`` tokens (prompt and new) at a fixed batch size.

    Args:
        model: a causal LM in eval mode.
        max_length: the static KV cache's length; a prompt plus its new tokens must fit.
        graph: capture the decode step as a CUDA graph; None: when the model is on a CUDA device.
        warmup: eager steps on a side stream before the capture (cuBLAS and the allocator settle there).
    """

    def __init__(self, model: nn.Module, max_length: int, graph: bool | None = None, warmup: int = 3) -> None:
        self.model, self.max_length, self.warmup = model, max_length, warmup
        self.device = next(model.parameters()).device
        self.graph = self.device.type == "cuda" if graph is None else graph
        if self.graph and self.device.type != "cuda":
            raise ConfigError("a CUDA graph needs the model on a CUDA device; pass graph=False on a CPU")
        self._batch: int | None = None

    def _build(self, batch: int) -> None:
        """The cache and the step's fixed tensors for ``batch`` rows, and the graph when asked."""
        from transformers import StaticCache

        self.cache = StaticCache(config=self.model.config, max_cache_len=self.max_length)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(1, dtype=torch.long, device=self.device)
        self._prefill(self.token)  # sizes every layer's cache from its first keys
        self._batch, self._captured = batch, None
        if self.graph:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):
                    self._step()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._captured = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._captured):
                self.logits = self._step()
        self.cache.reset()

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            past_key_values=self.cache,
            cache_position=positions,
            position_ids=positions[None].expand(ids.shape[0], -1),
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1]

    def _prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self._forward(ids, torch.arange(ids.shape[1], device=self.device))

    def _step(self) -> torch.Tensor:
        """One token for every row, at ``self.position``: what the graph holds."""
        return self._forward(self.token, self.position)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, new_tokens: int, return_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The prompt followed by ``new_tokens`` greedy tokens (``[batch, prompt + new_tokens]``); with
        ``return_logits``, also the logits each token was chosen from (``[batch, new_tokens, vocab]``)."""
        batch, prompt = input_ids.shape
        if prompt + new_tokens > self.max_length:
            raise ConfigError(
                f"a {prompt}-token prompt and {new_tokens} new tokens do not fit the decoder's max_length "
                f"{self.max_length}; build the GraphDecoder with max_length >= {prompt + new_tokens}"
            )
        if self._batch != batch:
            self._build(batch)
        self.cache.reset()  # in place: the graph's addresses stay valid
        logits = self._prefill(input_ids.to(self.device))
        kept = [logits.clone()] if return_logits else []
        tokens = [logits.argmax(-1, keepdim=True)]
        for offset in range(new_tokens - 1):
            self.token.copy_(tokens[-1])
            self.position.fill_(prompt + offset)
            if self._captured is not None:
                self._captured.replay()
                logits = self.logits
            else:
                logits = self._step()
            if return_logits:
                kept.append(logits.clone())
            tokens.append(logits.argmax(-1, keepdim=True))
        out = torch.cat([input_ids.to(self.device), *tokens], dim=1)
        return (out, torch.stack(kept, dim=1)) if return_logits else out
