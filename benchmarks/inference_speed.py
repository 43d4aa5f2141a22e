"""Inference speed of pruned models against the dense model, in the same run, with plain transformers.

    python benchmarks/inference_speed.py --shape llama-2-7b --dtype bfloat16
    python benchmarks/inference_speed.py --shape llama-2-7b --layers 4 --variants dense,uniform-0.5

For each variant the dense model is copied and pruned the way a user prunes it (magnitude scores, because
speed does not depend on which groups go; a structured plan through :func:`prunelight.ranking.rank` and
:func:`prunelight.apply.apply_plan`, or 2:4 masks converted to PyTorch's semi-structured kernels), then
timed (``global-0.2@64`` keeps each layer's MLP width a multiple of 64: ``ranking.mlp_multiple``):
prefill tokens/s (one forward over ``--prompt`` tokens) and decode tokens/s (``generate`` of
``--new`` tokens with the KV cache, prefill time subtracted) at each batch size. Prints one table with the
speedups against dense next to the parameter reduction they could reach at best. ``--graph`` adds the
decode tokens/s of :class:`prunelight.evaluate.decode.GraphDecoder` (a static KV cache and one CUDA graph
replay per token; generate(new) minus generate(1), so prefill is out) and whether its tokens equal the
same decoder's eager steps (``all``, or the first new token that differs).
"""

from __future__ import annotations

import copy
import gc
import tempfile
import time

import torch

from benchmarks.calibration_cost import build, model_arguments
from prunelight.apply import apply_plan
from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.data.windows import WindowSet
from prunelight.evaluate.decode import GraphDecoder
from prunelight.loops import calibrate
from prunelight.models import adapter_for
from prunelight.models.projections import PROJECTIONS
from prunelight.ranking import RankingConfig, rank
from prunelight.ranking.patterns import nm_mask
from prunelight.trainer import PrunelightTrainer

VARIANTS = ("dense", "uniform-0.2", "global-0.2", "uniform-0.5", "global-0.5", "2:4")


def magnitude_table(model):
    """Group scores for the structured variants: one magnitude calibration pass (no gradients)."""
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    windows = WindowSet(ids, torch.zeros(1, dtype=torch.long), ["random"], [1.0], 16)
    module = CalibrationModule.from_model(model, None, "bench")
    data = CalibrationDataModule(nsamples=1, seqlen=16, batch_size=1)
    data.windows = windows
    trainer = PrunelightTrainer(
        accelerator="gpu" if next(model.parameters()).is_cuda else "cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tempfile.gettempdir(),
    )
    return calibrate(trainer, module, data, ImportanceCallback("magnitude")).table


@torch.no_grad()
def two_four(model) -> None:
    from prunelight.save.semi_structured import to_semi_structured

    adapter = adapter_for(model)
    for layer in adapter.decoder_layers(model):
        modules = adapter.modules(layer)
        for name in PROJECTIONS:
            weight = getattr(modules, name).weight
            weight.mul_(nm_mask(weight.abs().float(), 2, 4).to(weight.dtype))
    to_semi_structured(model, adapter)


def variant(dense, table, name: str):
    model = copy.deepcopy(dense)
    if name == "2:4":
        two_four(model)
    elif name != "dense":
        name, _, multiple = name.partition("@")
        allocation, ratio = name.split("-")
        config = RankingConfig(ratio=float(ratio), allocation=allocation, mlp_multiple=int(multiple or 1))
        apply_plan(model, rank(table, config).plan)
    return model


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def timed(model, batch: int, prompt: int, new: int, rounds: int, static: bool = False) -> tuple[float, float]:
    """Best-of-``rounds`` prefill and decode tokens/s; ``static``: decode with transformers' static KV
    cache, which compiles the decoding step (torch.compile, CUDA graphs) on the first, untimed call."""
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device=device)
    options = {"cache_implementation": "static"} if static else {}
    best_prefill = best_total = float("inf")
    model(input_ids=ids[:, :16])  # warm-up
    if static:
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **options)
    for _ in range(rounds):
        _sync()
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        _sync()
        best_prefill = min(best_prefill, time.perf_counter() - start)
        start = time.perf_counter()
        model.generate(
            ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, **options
        )
        _sync()
        best_total = min(best_total, time.perf_counter() - start)
    decode = max(best_total - best_prefill, 1e-9)
    return batch * prompt / best_prefill, batch * new / decode


@torch.no_grad()
def graph_decode(model, batch: int, prompt: int, new: int, rounds: int) -> tuple[float, str]:
    """Best-of-``rounds`` decode tokens/s through the CUDA-graph decoder, and how many of its tokens equal
    the eager steps' (the same static cache and kernels, launched one by one): "all", or the first new
    token that differs (bf16 logits of random weights tie exactly, so a last-bit difference flips one)."""
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device=device)
    decoder = GraphDecoder(model, max_length=prompt + new)
    tokens = decoder.generate(ids, new)  # builds the cache and captures the step: untimed
    best = float("inf")
    for _ in range(rounds):
        seconds = []
        for count in (1, new):  # prefill alone, then prefill and the decode steps
            _sync()
            start = time.perf_counter()
            decoder.generate(ids, count)
            _sync()
            seconds.append(time.perf_counter() - start)
        best = min(best, max(seconds[1] - seconds[0], 1e-9))
    eager = GraphDecoder(model, max_length=prompt + new, graph=False).generate(ids, new)
    differ = (tokens != eager)[:, prompt:].any(dim=0).nonzero()
    return batch * (new - 1) / best, "all" if len(differ) == 0 else f"first {int(differ[0])}"


def main() -> None:
    parser = model_arguments(__doc__, nsamples=1, batch_size=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--static-cache", action="store_true", help="decode with a static KV cache (compiled, CUDA graphs)"
    )
    parser.add_argument("--graph", action="store_true", help="also decode with GraphDecoder (CUDA graph)")
    args = parser.parse_args()

    dense, _ = build(args)
    dense.eval()
    dense.generation_config.pad_token_id = 0
    table = magnitude_table(dense)
    dense_params = sum(p.numel() for p in dense.parameters())
    batches = [int(b) for b in args.batches.split(",")]
    rows, reference = [], {}
    for name in args.variants.split(","):
        model = dense if name == "dense" else variant(dense, table, name)
        params = sum(p.numel() for p in model.parameters())
        speeds = {b: timed(model, b, args.prompt, args.new, args.rounds, args.static_cache) for b in batches}
        if args.graph:
            for b in batches:
                speeds[b] = (*speeds[b], *graph_decode(model, b, args.prompt, args.new, args.rounds))
        if name == "dense":
            reference = speeds
        rows.append((name, params, speeds))
        if model is not dense:
            del model
            gc.collect()
            torch.cuda.empty_cache() if torch.cuda.is_available() else None

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"\n{args.shape or args.model}, {args.dtype}, {where}; prompt {args.prompt}, {args.new} new tokens, ",
        end="",
    )
    cache = "static KV cache (compiled decode)" if args.static_cache else "dynamic KV cache (eager)"
    print(f"best of {args.rounds}, {cache}; speedup = variant tokens/s / dense tokens/s in this run")
    graph = " | graph decode b{b} tok/s (x) | tokens = eager" if args.graph else ""
    head = " | ".join(f"prefill b{b} tok/s (x) | decode b{b} tok/s (x)" + graph.format(b=b) for b in batches)
    print(f"| variant | parameters | dense / params | {head} |")
    print(
        "| --- | ---: | ---: |" + (" ---: | ---: |" + (" ---: | --- |" if args.graph else "")) * len(batches)
    )
    for name, params, speeds in rows:
        cells = []
        for b in batches:
            (prefill, decode, *rest), (p0, d0, *rest0) = speeds[b], reference[b]
            cells.append(f"{prefill:,.0f} ({prefill / p0:.2f}x) | {decode:,.0f} ({decode / d0:.2f}x)")
            if rest:
                cells.append(f"{rest[0]:,.0f} ({rest[0] / rest0[0]:.2f}x) | {rest[1]}")
        print(f"| {name} | {params / 1e9:.2f}B | {dense_params / params:.2f}x | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
