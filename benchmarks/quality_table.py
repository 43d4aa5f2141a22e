"""Quality of structured pruning on a real model: perplexity per criterion, ratio, allocation and correction.

    python benchmarks/quality_table.py --model smollm2-135m --ratios 0.2,0.5
    # the T x tau grid of a prune config's ranking, on a GPU, whole WikiText-2 test split at seqlen 2048:
    python benchmarks/quality_table.py --model PATH --config configs/prune_smollm2_taylor.yaml \
        --criteria taylor --temperatures 0,0.5,1,2 --taus 0,0.5,1,adaptive --nsamples 128 \
        --calib-seqlen 2048 --seqlens 2048 --max-windows all --heatmaps docs/images/tt

Scores do not depend on the ratio or the ranking settings, so each criterion is calibrated once and every
ranking setting is applied to a fresh copy of the dense model: a grid over ranking knobs costs one
calibration and one evaluation per cell. Calibration: WikiText-2 ``--calib-split`` windows (nsamples x
seqlen); evaluation: WikiText-2 test, non-overlapping windows at ``--seqlens`` (the first ``--max-windows``
of each, ``all`` for the whole split). Every row carries the gradient diagnosis the prune stage would write
for it (status, issue ids, the largest layer-to-layer spread of gradient norms and of scores). Prints a
markdown table and writes it, with the raw numbers, to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import yaml

from prunelight.apply import LayerInputMeans, apply_plan
from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.data.windows import evaluation_windows
from prunelight.diagnostics.diagnosis import diagnose
from prunelight.diagnostics.layers import layer_report
from prunelight.diagnostics.statistics import gradient_statistics, series
from prunelight.errors import ConfigError
from prunelight.evaluate.perplexity import Perplexity
from prunelight.loops import calibrate
from prunelight.models import load
from prunelight.ranking import RankingConfig, rank
from prunelight.reports.plots import heatmap
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
    metric = Perplexity().to(ids.device)
    for i in range(0, len(ids), batch_size):
        batch = ids[i : i + batch_size]
        metric.update(model(input_ids=batch, use_cache=False).logits, batch)
    return float(metric.compute())


def grid_settings(temperatures: str, taus: str) -> dict[str, dict]:
    """``global T=t tau=x`` for every pair (tau ``adaptive`` is None, the per-kind choice)."""
    grid = {}
    for t in (float(v) for v in temperatures.split(",")):
        for tau in taus.split(","):
            value = None if tau == "adaptive" else float(tau)
            grid[f"global T={t:g} tau={tau}"] = dict(allocation="global", temperature=t, tau=value)
    return grid


def diagnosis_of(criterion: str, calibrated, result) -> dict:
    """What ``analysis/gradient_diagnosis.json`` of a prune run with this plan would say, in short."""
    report = layer_report(calibrated.table, result)
    statistics = gradient_statistics(
        criterion, calibrated.table, result, calibrated.gradients, calibrated.mean_loss
    )
    found = diagnose(statistics, report)

    def spread(kind: str, source: str) -> float | None:
        values = [v for v in series(statistics, kind, source, "mean" if source == "importance" else "norm")
                  if v is not None and v > 0]  # fmt: skip
        return max(values) / min(values) if values else None

    return {
        "status": found["status"],
        "issues": sorted({f"{i['id']}:{i['severity']}" for i in found["issues"]}),
        "spread": {
            f"{kind}_{source}": spread(kind, source)
            for kind in ("attention", "mlp")
            for source in ("gradient", "importance")
        },  # fmt: skip
        "early_rates": {
            kind: [e[kind]["rate"] for e in report["layers"][:4] if kind in e]
            for kind in ("attention", "mlp")
        },  # fmt: skip
    }


def heatmaps(rows: list[dict], grid: dict[str, dict], folder: Path, seqlen: int, title: str) -> None:
    """One T (rows) x tau (columns) perplexity heatmap per criterion and ratio."""
    temperatures = list(dict.fromkeys(v["temperature"] for v in grid.values()))
    taus = list(dict.fromkeys("adaptive" if v["tau"] is None else f"{v['tau']:g}" for v in grid.values()))
    folder.mkdir(parents=True, exist_ok=True)
    for criterion, ratio in dict.fromkeys((r["criterion"], r["ratio"]) for r in rows if r["setting"] in grid):
        found = {r["setting"]: r["ppl"][seqlen] for r in rows
                 if (r["criterion"], r["ratio"]) == (criterion, ratio) and r["setting"] in grid}  # fmt: skip
        values = [[found.get(f"global T={t:g} tau={tau}") for tau in taus] for t in temperatures]
        heatmap([f"T={t:g}" for t in temperatures], [f"tau={tau}" for tau in taus], values,
                folder / f"{criterion}_{ratio:g}.png", f"{title}, {criterion} {ratio:.0%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="zoo name or model folder")
    parser.add_argument("--config", help="a prune config whose ranking section is the base of every setting")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument(
        "--kinds", default=None, help="kinds to prune, e.g. mlp (Gemma-3: one group per layer)"
    )
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--settings", default=None, help="names of SETTINGS, ;-separated (default: all of "
                        "them, or none when --temperatures/--taus give a grid)")  # fmt: skip
    parser.add_argument("--temperatures", default=None, help="T values of a grid, e.g. 0,0.5,1,2")
    parser.add_argument("--taus", default="0,adaptive", help="tau values of the grid (adaptive: per kind)")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    parser.add_argument("--calib-split", default="validation")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="windows per step, calibration and evaluation"
    )
    parser.add_argument("--seqlens", default="128,2048")
    parser.add_argument("--max-windows", default="128,4", help="per seqlen; 'all' for the whole split")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--heatmaps", type=Path, default=None, help="folder for the T x tau heatmaps")
    parser.add_argument("--out", default="results/quality_table.json")
    args = parser.parse_args()

    base = yaml.safe_load(Path(args.config).read_text()).get("ranking", {}) if args.config else {}
    if args.kinds:
        base["kinds"] = args.kinds.split(",")
    grid = grid_settings(args.temperatures, args.taus) if args.temperatures else {}
    names = args.settings.split(";") if args.settings else ([] if grid else list(SETTINGS))
    settings = {**{name: SETTINGS[name] for name in names}, **grid}
    loaded = load(args.model, dtype="float32")
    dense, tokenizer = loaded.model.to(args.device), loaded.tokenizer
    evals = {
        int(s): evaluation_windows(
            "wikitext2", tokenizer, int(s), "test", max_windows=None if m == "all" else int(m)
        ).input_ids.to(args.device)
        for s, m in zip(args.seqlens.split(","), args.max_windows.split(","), strict=True)
    }
    rows: list[dict] = []

    def record(criterion: str, ratio: float, setting: str, model, extra: dict) -> None:
        start = time.perf_counter()
        ppl = {seqlen: perplexity(model, ids, args.batch_size) for seqlen, ids in evals.items()}
        params = sum(p.numel() for p in model.parameters())
        rows.append(dict(criterion=criterion, ratio=ratio, setting=setting, params=params, ppl=ppl,
                         eval_seconds=time.perf_counter() - start, **extra))  # fmt: skip
        diagnosis = extra.get("diagnosis", {})
        found = " ".join([diagnosis.get("status", ""), *diagnosis.get("issues", [])])
        values = "  ".join(f"ppl@{s} {p:10.3f}" for s, p in ppl.items())
        print(f"{criterion:>12} {ratio:4.2f} {setting:<26} params {params / 1e6:7.2f}M  {values}  {found}",
              flush=True)  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))

    record("dense", 0.0, "-", dense, {})
    accelerator = "gpu" if str(args.device).startswith("cuda") else "cpu"
    for criterion in args.criteria.split(","):
        module = CalibrationModule.from_model(dense, tokenizer, args.model)
        data = CalibrationDataModule([{"name": "wikitext2", "split": args.calib_split}], args.nsamples,
                                     args.calib_seqlen, batch_size=args.batch_size)  # fmt: skip
        trainer = PrunelightTrainer(accelerator=accelerator, devices=1, logger=False,
                                    enable_model_summary=False, enable_progress_bar=False)  # fmt: skip
        start = time.perf_counter()
        calibrated = calibrate(trainer, module, data, ImportanceCallback(criterion))
        calib_seconds = time.perf_counter() - start
        dense = module.model.to(args.device)
        means = {i: LayerInputMeans(m["o"], m["down"]) for i, m in calibrated.input_means.items()}
        for ratio in (float(r) for r in args.ratios.split(",")):
            for setting, knobs in settings.items():
                try:
                    result = rank(calibrated.table, RankingConfig(**{**base, "ratio": ratio, **knobs}))
                except ConfigError as err:
                    print(f"{criterion} {ratio} {setting}: {err}")
                    continue
                model = apply_plan(copy.deepcopy(dense), result.plan,
                                   means if criterion == "fluctuation" else None)  # fmt: skip
                extra = {"tau": result.tau, "calib_seconds": calib_seconds,
                         "diagnosis": diagnosis_of(criterion, calibrated, result)}  # fmt: skip
                record(criterion, ratio, setting, model, extra)
                del model

    seqlens = list(evals)
    windows = {s: len(ids) for s, ids in evals.items()}
    sizes = ", ".join(f"{n} windows at seqlen {s}" for s, n in windows.items())
    title = (f"{args.model}, WikiText-2 test ppl ({sizes}); "
             f"calibration {args.nsamples} x {args.calib_seqlen} WikiText-2 {args.calib_split}")  # fmt: skip
    print(f"\n{title}")
    print("| criterion | ratio | setting | tau used | params (M) | " + " | ".join(f"ppl@{s}" for s in seqlens)
          + " | diagnosis |")  # fmt: skip
    print("| --- | ---: | --- | --- | ---: | " + " | ".join("---:" for _ in seqlens) + " | --- |")
    for r in rows:
        cells = " | ".join(f"{r['ppl'][s]:.2f}" for s in seqlens)
        tau = r.get("tau") or {}
        used = "/".join(f"{tau[k]:.2f}" for k in ("attention", "mlp") if tau.get(k) is not None)
        diagnosis = r.get("diagnosis") or {}
        status = " ".join([diagnosis.get("status", "")] + diagnosis.get("issues", []))
        print(f"| {r['criterion']} | {r['ratio']:.0%} | {r['setting']} | {used} | {r['params'] / 1e6:.2f} "
              f"| {cells} | {status} |")  # fmt: skip
    if args.heatmaps and grid:
        heatmaps(rows, grid, args.heatmaps, seqlens[-1], Path(args.model).name)


if __name__ == "__main__":
    main()
