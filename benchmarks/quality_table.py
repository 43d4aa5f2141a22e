"""Quality of structured pruning on a real model: perplexity per criterion, ratio, allocation and correction.

    python benchmarks/quality_table.py --model smollm2-135m --ratios 0.2,0.5

Scores do not depend on the ratio or the ranking settings, so each criterion is calibrated once and every
ranking setting is applied to a fresh copy of the dense model. Calibration: WikiText-2 ``--calib-split``
windows (nsamples x seqlen); evaluation: WikiText-2 test, non-overlapping windows at ``--seqlens`` (the first
``--max-windows`` of each). Prints a markdown table and writes it, with the raw numbers, to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from prunelight.apply import LayerInputMeans, apply_plan
from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.data.windows import evaluation_windows
from prunelight.errors import ConfigError
from prunelight.evaluate.perplexity import Perplexity
from prunelight.loops import calibrate
from prunelight.models import load
from prunelight.ranking import RankingConfig, rank
from prunelight.trainer import PrunelightTrainer

SETTINGS: dict[str, dict] = {
    "uniform": dict(allocation="uniform"),
    "global raw (T=0 tau=0)": dict(allocation="global"),
    "global tau=1": dict(allocation="global", tau=1.0),
    "global tau=adaptive": dict(allocation="global", tau=None),
    "global T=1 tau=adaptive": dict(allocation="global", temperature=1.0, tau=None),
    "global T=2 tau=0.5": dict(allocation="global", temperature=2.0, tau=0.5),
}
CRITERIA = ("wanda", "fluctuation", "taylor", "magnitude")


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, batch_size: int = 8) -> float:
    """prunelight's Perplexity metric over the windows (a plain loop: no trainer per setting)."""
    metric = Perplexity()
    for i in range(0, len(ids), batch_size):
        batch = ids[i : i + batch_size]
        metric.update(model(input_ids=batch, use_cache=False).logits, batch)
    return float(metric.compute())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--settings", default=";".join(SETTINGS), help="names of SETTINGS, ;-separated")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    parser.add_argument("--calib-split", default="validation")
    parser.add_argument("--seqlens", default="128,2048")
    parser.add_argument("--max-windows", default="128,4", help="per seqlen")
    parser.add_argument("--out", default="results/quality_table.json")
    args = parser.parse_args()

    loaded = load(args.model, dtype="float32")
    dense, tokenizer = loaded.model, loaded.tokenizer
    evals = {
        int(s): evaluation_windows("wikitext2", tokenizer, int(s), "test", max_windows=int(m)).input_ids
        for s, m in zip(args.seqlens.split(","), args.max_windows.split(","), strict=True)
    }
    rows: list[dict] = []

    def record(criterion: str, ratio: float, setting: str, model, extra: dict) -> None:
        start = time.perf_counter()
        ppl = {seqlen: perplexity(model, ids) for seqlen, ids in evals.items()}
        params = sum(p.numel() for p in model.parameters())
        rows.append(dict(criterion=criterion, ratio=ratio, setting=setting, params=params, ppl=ppl,
                         eval_seconds=time.perf_counter() - start, **extra))  # fmt: skip
        print(f"{criterion:>12} {ratio:4.2f} {setting:<26} params {params / 1e6:7.2f}M  "
              + "  ".join(f"ppl@{s} {p:10.3f}" for s, p in ppl.items()), flush=True)  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))

    record("dense", 0.0, "-", dense, {})
    for criterion in args.criteria.split(","):
        module = CalibrationModule.from_model(dense, tokenizer, args.model)
        data = CalibrationDataModule([{"name": "wikitext2", "split": args.calib_split}], args.nsamples,
                                     args.calib_seqlen, batch_size=8)  # fmt: skip
        trainer = PrunelightTrainer(accelerator="cpu", devices=1, logger=False, enable_model_summary=False,
                                    enable_progress_bar=False)  # fmt: skip
        start = time.perf_counter()
        calibrated = calibrate(trainer, module, data, ImportanceCallback(criterion))
        calib_seconds = time.perf_counter() - start
        means = {i: LayerInputMeans(m["o"], m["down"]) for i, m in calibrated.input_means.items()}
        for ratio in (float(r) for r in args.ratios.split(",")):
            for setting in args.settings.split(";"):
                try:
                    result = rank(calibrated.table, RankingConfig(ratio=ratio, **SETTINGS[setting]))
                except ConfigError as err:
                    print(f"{criterion} {ratio} {setting}: {err}")
                    continue
                model = apply_plan(copy.deepcopy(dense), result.plan,
                                   means if criterion == "fluctuation" else None)  # fmt: skip
                record(criterion, ratio, setting, model, {"tau": result.tau, "calib_seconds": calib_seconds})
                del model

    seqlens = list(evals)
    print(f"\n{args.model}, WikiText-2 test ppl (first {args.max_windows} windows at seqlen {args.seqlens}); "
          f"calibration {args.nsamples} x {args.calib_seqlen} WikiText-2 {args.calib_split}")  # fmt: skip
    print("| criterion | ratio | setting | params (M) | " + " | ".join(f"ppl@{s}" for s in seqlens) + " |")
    print("| --- | ---: | --- | ---: | " + " | ".join("---:" for _ in seqlens) + " |")
    for r in rows:
        cells = " | ".join(f"{r['ppl'][s]:.2f}" for s in seqlens)
        print(f"| {r['criterion']} | {r['ratio']:.0%} | {r['setting']} | {r['params'] / 1e6:.2f} | {cells} |")


if __name__ == "__main__":
    main()
