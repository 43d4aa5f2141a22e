"""The allocation search's time against the forwards it cannot avoid, measured in the same run.

    python benchmarks/search_cost.py --shape smollm2-135m --seqlen 2048 --generations 5
    python benchmarks/search_cost.py --shape smollm2-135m --seqlen 2048 --generations 5 --repair lsq

A search scores every candidate by one forward of the masked model per window, plus one dense forward per
batch for all the candidates of a stage. This runs a seeded search (random weights of the model's shape,
random windows, the ladder and stages of ``configs/prune_smollm2_search.yaml``) and a bare loop of the
same number of forwards over the same windows, and prints both: the ratio is what masking, the KL and
the search's own bookkeeping add. With ``--repair lsq`` the candidates compute with refitted layers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_memory import _sync, build, shape_arguments  # noqa: E402

from prunelight.calibration.reconstruct import reconstruction_named  # noqa: E402
from prunelight.calibration.search_fitness import KLFitness, LevelRepairs  # noqa: E402
from prunelight.importance.groups import structure_table  # noqa: E402
from prunelight.models import adapter_for  # noqa: E402
from prunelight.models.attention import efficient_float32_attention  # noqa: E402
from prunelight.ranking.allocation import Constraints  # noqa: E402
from prunelight.ranking.search import SearchSettings, genome_plan, group_order, ladder_for, search  # noqa: E402


def main() -> None:
    parser = shape_arguments(__doc__)
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--repair", choices=["none", "lsq"], default="none")
    args = parser.parse_args()
    windows = 24  # the pool: stages draw 4 and 16 of them
    model, ids = build(argparse.Namespace(**{**vars(args), "batch_size": windows}))
    model.eval()
    device = ids.device

    table = structure_table(model, adapter_for(model), seed=3)
    ladders = {kind: ladder_for(table, kind, 10, Constraints(max_rate=0.8)) for kind in ("attention", "mlp")}
    orders = {kind: group_order(table, kind) for kind in ladders}
    seeds = {"uniform": {kind: tuple(min(2, top) for top in ladders[kind].top) for kind in ladders}}
    targets = {kind: ladders[kind].removed(seeds["uniform"][kind]) for kind in ladders}
    settings = SearchSettings(
        levels=10, generations=args.generations, offspring=16, max_switches=3, stage_windows=(4, 16),
        survivors=(4,), holdout_windows=1, seed=0,
    )  # fmt: skip
    repairs = None
    start = time.perf_counter()
    if args.repair == "lsq":
        repairs = LevelRepairs(model, ids, reconstruction_named("lsq"), 0.01, False, args.batch_size)
    _sync(device)
    repair_seconds = time.perf_counter() - start

    forwards = 0

    def count(module, args, output) -> None:
        nonlocal forwards
        forwards += args[0].shape[0] if args else 0

    def plan_of(genome):
        return genome_plan(genome, ladders, orders, table.num_layers)

    fitness = KLFitness(model, ids, settings.stage_windows, plan_of, args.batch_size, repairs=repairs)
    handle = model.get_input_embeddings().register_forward_hook(count)
    _sync(device)
    start = time.perf_counter()
    result = search(ladders, targets, seeds, fitness, settings, lambda entry: None)
    _sync(device)
    search_seconds = time.perf_counter() - start
    handle.remove()

    start = time.perf_counter()
    with torch.no_grad(), efficient_float32_attention():
        done = 0
        while done < forwards:
            batch = ids[: min(args.batch_size, forwards - done)].to(device)
            torch.log_softmax(model(input_ids=batch, use_cache=False).logits.float(), dim=-1)
            done += len(batch)
    _sync(device)
    bare_seconds = time.perf_counter() - start

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{args.shape}: {model.config.num_hidden_layers} layers, float32, {where}, ", end="")
    print(f"windows of {args.seqlen} tokens, batch {args.batch_size}, ", end="")
    print(f"{args.generations} generations of 16 offspring, repair {args.repair}")
    print("| what | seconds | window forwards | seconds per candidate | vs bare forwards |")
    print("| --- | ---: | ---: | ---: | ---: |")
    per = search_seconds / result.evaluations
    print(
        f"| search | {search_seconds:.2f} | {forwards} | {per:.3f} | {search_seconds / bare_seconds:.2f}x |"
    )
    print(f"| bare forwards (+ log-softmax) | {bare_seconds:.2f} | {forwards} | | 1.00x |")
    if repairs is not None:
        print(f"| repair sums (one pass) | {repair_seconds:.2f} | {windows} | | |")


if __name__ == "__main__":
    main()
