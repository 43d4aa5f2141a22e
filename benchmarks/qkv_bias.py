"""What Qwen2's q/k/v biases are worth after structured pruning, and proof that removing them is exact.

    python benchmarks/qkv_bias.py --model qwen2.5-coder-0.5b --run RUN_FOLDER [--max-windows N]

RUN_FOLDER is a finished ``prune`` run of that model (its ``analysis/plan.json``; with ``save_model`` its
pruned model too). Every row applies the run's plan to the dense model and measures WikiText-2 test
perplexity at seqlen 2048 (all windows unless ``--max-windows``), plus the largest logit difference from
the default removal on the first 4 windows:

- removed (default): the groups' q/k/v rows go with their bias entries, their o columns with them;
- zeroed in place: the dense model with the removed groups' q/k/v rows, their biases and their o columns set
  to zero (the same function, so the logits must agree to float32 rounding);
- weights zeroed, biases kept: what a pruner that forgets the biases leaves: a removed head still attends
  (uniformly, its q and k being constant) and adds ``W_o b_v`` to every token;
- kept biases zeroed: the pruned model without any q/k/v bias: what the biases that stay are worth;
- the dense model with and without its q/k/v biases, and the run's saved (repaired) model, if any.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prunelight.apply import apply_plan
from prunelight.data.windows import evaluation_windows
from prunelight.evaluate.perplexity import Perplexity
from prunelight.models import adapter_for, load
from prunelight.ranking import PruningPlan

PROBE_WINDOWS = 4


@torch.no_grad()
def run_windows(model: nn.Module, ids: torch.Tensor, batch_size: int) -> tuple[float, torch.Tensor]:
    """Perplexity over all windows, and the logits of the first PROBE_WINDOWS (on the host)."""
    metric, probe = Perplexity().to(ids.device), []
    for i in range(0, len(ids), batch_size):
        batch = ids[i : i + batch_size]
        logits = model(input_ids=batch, use_cache=False).logits
        metric.update(logits, batch)
        if i < PROBE_WINDOWS:
            probe.append(logits[: PROBE_WINDOWS - i].float().cpu())
    return float(metric.compute()), torch.cat(probe)


def zero_in_place(dense: nn.Module, plan: PruningPlan, keep_biases: bool) -> nn.Module:
    """The dense model with the plan's units set to zero instead of removed (``keep_biases``: only the
    q/k/v weight rows, as a bias-unaware pruner would)."""
    model = copy.deepcopy(dense)
    adapter = adapter_for(model)
    layout = adapter.layout(model.config)
    per_group, width = layout.num_key_value_groups, layout.head_dim
    with torch.no_grad():
        for layer_plan in plan.layers:
            m = adapter.modules(adapter.decoder_layers(model)[layer_plan.layer])
            for g in layer_plan.attention_groups:
                queries = slice(g * per_group * width, (g + 1) * per_group * width)
                for linear, rows in ((m.q, queries), (m.k, slice(g * width, (g + 1) * width))):
                    _zero_rows(linear, rows, keep_biases)
                _zero_rows(m.v, slice(g * width, (g + 1) * width), keep_biases)
                if not keep_biases:
                    m.o.weight[:, queries] = 0
            for linear in (m.gate, m.up):
                _zero_rows(linear, layer_plan.mlp_channels, keep_biases=False)
            m.down.weight[:, layer_plan.mlp_channels] = 0
    return model


def _zero_rows(linear: nn.Linear, rows: slice | list[int], keep_biases: bool) -> None:
    linear.weight[rows] = 0
    if linear.bias is not None and not keep_biases:
        linear.bias[rows] = 0


def without_qkv_biases(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    adapter = adapter_for(model)
    with torch.no_grad():
        for layer in adapter.decoder_layers(model):
            m = adapter.modules(layer)
            for linear in (m.q, m.k, m.v):
                if linear.bias is not None:
                    linear.bias.zero_()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="qwen2.5-coder-0.5b", help="zoo name or folder of the dense model")
    parser.add_argument("--run", type=Path, required=True, help="a finished prune run of that model")
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the table (default: RUN/analysis)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load(args.model, dtype="float32")
    dense, tokenizer = loaded.model.to(device).eval(), loaded.tokenizer
    if not any(adapter_for(dense).has_bias(dense.config, p) for p in "qkv"):
        raise SystemExit(f"{args.model} has no q/k/v biases: nothing to measure (Qwen2/2.5 have them)")
    plan = PruningPlan.from_dict(json.loads((args.run / "analysis" / "plan.json").read_text())["plan"])
    windows = evaluation_windows("wikitext2", tokenizer, 2048, "test", max_windows=args.max_windows)
    ids = windows.input_ids.to(device)
    removed = apply_plan(copy.deepcopy(dense), plan)
    saved = args.run / "pruned_model"
    rows: list[tuple[str, Callable[[], nn.Module]]] = [
        ("dense", lambda: dense),
        ("dense, q/k/v biases zeroed", lambda: without_qkv_biases(dense)),
        ("removed (default)", lambda: removed),
        ("zeroed in place", lambda: zero_in_place(dense, plan, keep_biases=False)),
        ("weights zeroed, biases kept", lambda: zero_in_place(dense, plan, keep_biases=True)),
        ("removed, kept q/k/v biases zeroed", lambda: without_qkv_biases(removed)),
    ]
    if (saved / "config.json").is_file():
        repaired = load(str(saved), dtype="float32").model.to(device).eval()
        rows += [
            ("saved run model", lambda: repaired),
            ("saved run model, q/k/v biases zeroed", lambda: without_qkv_biases(repaired)),
        ]

    table, reference = [], None
    for name, build in rows:  # one extra copy at a time: 8 copies of a 0.5B model do not fit a small host
        model = build()
        ppl, probe = run_windows(model, ids, args.batch_size)
        if name == "removed (default)":
            reference = probe
        diff = None if reference is None else float((probe - reference).abs().max())
        params = sum(p.numel() for p in model.parameters())
        table.append({"model": name, "perplexity": ppl, "params": params, "max_logit_diff": diff})
        del model
        print(f"{name:<40} ppl {ppl:10.3f}  params {params / 1e6:8.2f}M  "
              f"max |logit - removed| {'' if diff is None else f'{diff:.3g}'}", flush=True)  # fmt: skip

    tokens = len(ids) * (ids.shape[1] - 1)
    print(f"\n{args.model}, WikiText-2 test, seqlen 2048: {len(ids)} windows, {tokens} scored tokens;"
          f" logit differences on the first {PROBE_WINDOWS} windows; plan of {args.run}")  # fmt: skip
    print("| model | perplexity | parameters (M) | max abs logit difference from removed |")
    print("| --- | ---: | ---: | ---: |")
    for row in table:
        diff = "" if row["max_logit_diff"] is None else f"{row['max_logit_diff']:.2e}"
        print(f"| {row['model']} | {row['perplexity']:.3f} | {row['params'] / 1e6:.2f} | {diff} |")
    out = args.out or args.run / "analysis" / "qkv_bias.json"
    out.write_text(json.dumps({"windows": len(ids), "scored_tokens": tokens, "rows": table}, indent=1))


if __name__ == "__main__":
    main()
