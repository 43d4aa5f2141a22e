"""Evaluation speed: prunelight's `evaluate` against a bare transformers forward loop, same windows, same run.

    python benchmarks/eval_throughput.py --model smollm2-135m --seqlen 2048 --windows 16

Both paths score the same windows of the same corpus with the same model object; the bare loop is
``model(ids, labels=ids).loss`` under ``torch.no_grad``. Rounds alternate (bare, prunelight, bare, ...)
so drift on a shared machine hits both; the table reports the best round of each and the ratio
(prunelight tokens/s over bare tokens/s; the goal is >= 0.95).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from prunelight.data import evaluation_windows
from prunelight.data.datamodule import PerplexityDataModule
from prunelight.evaluate import PerplexityModule
from prunelight.models import load
from prunelight.trainer import PrunelightTrainer


def bare_loop(model, windows: torch.Tensor, batch_size: int) -> tuple[float, float]:
    start, nll = time.perf_counter(), 0.0
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            ids = windows[i : i + batch_size].to(model.device)
            nll += model(input_ids=ids, labels=ids, use_cache=False).loss.item() * ids.shape[0]
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, math.exp(nll / len(windows))


def prunelight_loop(loaded, args) -> tuple[float, float]:
    module = PerplexityModule.from_model(loaded.model, loaded.tokenizer, name=args.model)
    data = PerplexityDataModule(
        corpora=[args.corpus], seqlen=args.seqlen, max_windows=args.windows, batch_size=args.batch_size
    )
    trainer = PrunelightTrainer(
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir="/tmp/prunelight-bench",
    )
    report = trainer.evaluate(module, data)
    return report["seconds"], report["corpora"][args.corpus]["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="wikitext2")
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()

    loaded = load(args.model, dtype=args.dtype)
    if args.accelerator == "gpu":
        loaded.model.cuda()
    windows = evaluation_windows(
        args.corpus, loaded.tokenizer, args.seqlen, max_windows=args.windows
    ).input_ids
    bare_loop(loaded.model, windows[:1], 1)  # warm-up: first-call allocations and kernel selection
    times: dict[str, list[float]] = {"bare transformers loop": [], "prunelight evaluate": []}
    ppl: dict[str, float] = {}
    for _ in range(args.rounds):
        t, ppl["bare transformers loop"] = bare_loop(loaded.model, windows, args.batch_size)
        times["bare transformers loop"].append(t)
        t, ppl["prunelight evaluate"] = prunelight_loop(loaded, args)
        times["prunelight evaluate"].append(t)

    tokens = windows.numel()
    device = (
        torch.cuda.get_device_name()
        if args.accelerator == "gpu"
        else f"cpu x{torch.get_num_threads()} threads"
    )
    print(
        f"\nmodel {args.model} ({args.dtype}), {args.corpus} test, {len(windows)} windows"
        f" x seqlen {args.seqlen}"
        f" = {tokens} tokens, batch {args.batch_size}, {device}, best of {args.rounds} rounds\n"
    )
    print("| path | seconds | tokens/s | perplexity | ratio |")
    print("| --- | --- | --- | --- | --- |")
    base = tokens / min(times["bare transformers loop"])
    for name, ts in times.items():
        rate = tokens / min(ts)
        print(f"| {name} | {min(ts):.2f} | {rate:.1f} | {ppl[name]:.4f} | {rate / base:.3f}x |")


if __name__ == "__main__":
    main()
