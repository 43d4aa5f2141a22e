"""Calibration cost against a bare forward(+backward) loop over the same windows, in the same run.

    python benchmarks/calibration_cost.py --model smollm2-135m --nsamples 32 --seqlen 128 --batch-size 8
    python benchmarks/calibration_cost.py --shape llama-2-7b --dtype bfloat16 --nsamples 128 --seqlen 2048

``--model`` loads a real model (zoo name, folder); ``--shape`` builds one with random weights from a known
configuration (speed does not depend on the weights' values), with ``--layers`` to cut its depth. Windows
are real WikiText-2 tokens for ``--model`` and random ids for ``--shape``. Prints one table: seconds,
ratio to the bare loop, tokens/s and peak memory against the weights' own size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from prunelight.apply import apply_plan
from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.calibration.losses import window_losses
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.data.windows import WindowSet, calibration_windows
from prunelight.loops import calibrate
from prunelight.measure import peak_memory, reset_peak_memory
from prunelight.models import adapter_for, load
from prunelight.ranking import RankingConfig, rank
from prunelight.trainer import PrunelightTrainer

SHAPES = {
    "llama-2-7b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
        num_key_value_heads=32, num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096,
    ),
    "llama-3-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8, num_hidden_layers=32, vocab_size=128256, max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    "llama-2-70b": dict(
        model_type="llama", hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
        num_key_value_heads=8, num_hidden_layers=80, vocab_size=32000, max_position_embeddings=4096,
    ),
    "llama-3-70b": dict(
        model_type="llama", hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
        num_key_value_heads=8, num_hidden_layers=80, vocab_size=128256, max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    "tiny": dict(  # a smoke run on a CPU: seconds, not a measurement
        model_type="llama", hidden_size=64, intermediate_size=176, num_attention_heads=4,
        num_key_value_heads=4, num_hidden_layers=4, vocab_size=1000, max_position_embeddings=512,
    ),
}  # fmt: skip


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, object]:
    dtype = getattr(torch, args.dtype)
    if args.shape:
        shape = dict(SHAPES[args.shape])
        if args.layers:
            shape["num_hidden_layers"] = args.layers
        config = AutoConfig.for_model(shape.pop("model_type"), **shape)
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model, None
    loaded = load(args.model, dtype=args.dtype)
    return loaded.model.to(args.device), loaded.tokenizer


def windows_for(args: argparse.Namespace, model, tokenizer) -> WindowSet:
    if tokenizer is None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (args.nsamples, args.seqlen), generator=g)
        return WindowSet(ids, torch.zeros(args.nsamples, dtype=torch.long), ["random"], [1.0], args.seqlen)
    wiki = {"name": "wikitext2", "split": "validation"}
    return calibration_windows([wiki], tokenizer, args.nsamples, args.seqlen)


def bare_loop(model, windows: WindowSet, batch_size: int, backward: bool) -> float:
    """The reference: the same passes with nothing but the passes (grads only for the prunable weights)."""
    adapter = adapter_for(model)
    params = [
        getattr(adapter.modules(layer), name).weight
        for layer in adapter.decoder_layers(model)
        for name in ("q", "k", "v", "o", "gate", "up", "down")
    ]
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(backward)
    device = next(model.parameters()).device
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(windows), batch_size):
        ids = windows.input_ids[i : i + batch_size].to(device)
        if backward:
            logits = model(input_ids=ids, use_cache=False).logits
            window_losses(logits, ids).mean().backward()
            for p in params:
                p.grad = None
        else:
            with torch.no_grad():
                model.base_model(input_ids=ids, use_cache=False)
    _sync(device)
    for p, flag in flags.items():
        p.requires_grad_(flag)
    return time.perf_counter() - start


def prunelight_calibration(
    model, tokenizer, windows: WindowSet, args, criterion: str, callback: ImportanceCallback | None = None
) -> tuple[float, Any]:
    """Seconds and result of one ``prunelight.loops.calibrate`` (``callback`` overrides the criterion's)."""
    module = CalibrationModule.from_model(model, tokenizer, "bench")
    data = CalibrationDataModule(nsamples=len(windows), seqlen=windows.seqlen, batch_size=args.batch_size)
    data.windows = windows
    trainer = PrunelightTrainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tempfile.gettempdir(),
    )
    device = torch.device(args.device)
    _sync(device)
    start = time.perf_counter()
    result = calibrate(trainer, module, data, callback or ImportanceCallback(criterion))
    _sync(device)
    seconds = time.perf_counter() - start
    return seconds, result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_arguments(doc: str | None, nsamples: int, batch_size: int) -> argparse.ArgumentParser:
    """The options every calibration benchmark shares: which model, where, and which windows."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--shape", choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nsamples", type=int, default=nsamples)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    return parser


def main() -> None:
    parser = model_arguments(__doc__, nsamples=32, batch_size=8)
    parser.add_argument("--criteria", default="taylor,wanda")
    parser.add_argument("--rounds", type=int, default=2, help="repeat and keep the fastest of each")
    args = parser.parse_args()

    model, tokenizer = build(args)
    windows = windows_for(args, model, tokenizer)
    device = torch.device(args.device)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    tokens = windows.input_ids.numel()
    params = sum(p.numel() for p in model.parameters())
    rows = []
    bare_loop(model, windows, args.batch_size, True)  # warm-up: kernels, allocator, page cache
    for criterion in args.criteria.split(","):
        backward = criterion in ("taylor", "taylor2")
        best_bare = best_ours = float("inf")
        peak_bare = peak_ours = None
        for _ in range(args.rounds):
            reset_peak_memory(device)
            best_bare = min(best_bare, bare_loop(model, windows, args.batch_size, backward))
            peak_bare = peak_memory(device)
            reset_peak_memory(device)
            seconds, calibrated = prunelight_calibration(model, tokenizer, windows, args, criterion)
            best_ours = min(best_ours, seconds)
            peak_ours = peak_memory(device)
        flops = (6 if backward else 2) * params * tokens
        rows.append((criterion, best_bare, best_ours, tokens, flops, peak_bare, peak_ours))

    start = time.perf_counter()
    plan = rank(calibrated.table, RankingConfig(ratio=0.2, temperature=1.0, tau=None)).plan
    rank_seconds = time.perf_counter() - start
    model.cpu()
    start = time.perf_counter()
    apply_plan(model, plan)
    apply_seconds = time.perf_counter() - start
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    name = args.shape or args.model
    print(
        f"\nmodel {name} ({params / 1e6:.1f}M params, {args.dtype}, {weights_mb:.0f} MiB), {where}, ", end=""
    )
    print(f"{len(windows)} x {windows.seqlen} tokens, batch {args.batch_size}, best of {args.rounds}")
    print("| criterion | bare loop s | prunelight s | ratio | tokens/s | TFLOP/s | peak MiB (bare / ours) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for criterion, bare, ours, tok, flops, pb, po in rows:
        key = next(iter(po))
        print(
            f"| {criterion} | {bare:.2f} | {ours:.2f} | {ours / bare:.3f} | {tok / ours:,.0f} | "
            f"{flops / ours / 1e12:.2f} | {pb[key]:.0f} / {po[key]:.0f} ({key}) |"
        )
    print(
        f"\nranking (20% global, T=1, adaptive tau) {rank_seconds:.2f} s; apply on CPU {apply_seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
