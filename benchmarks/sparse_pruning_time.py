"""Time of sequential sparse pruning, and the speed of 2:4 semi-structured inference, in one run.

    python benchmarks/sparse_pruning_time.py --device cpu --dtype float32 --layers 2 --hidden 256 \\
        --intermediate 688 --nsamples 4 --seqlen 128 --batch-size 2
    python benchmarks/sparse_pruning_time.py --shape llama-2-7b --dtype bfloat16 --layers 8 \\
        --nsamples 128 --seqlen 2048 --batch-size 8 --out sparse_pruning_time.json

A random-weight model of a known configuration (``--shape``, default LLaMA-2-7B, cut to ``--layers``
decoder layers; ``--hidden``/``--intermediate`` shrink it for a quick CPU check) and random token ids.

Part 1, pruning: one capture pass records the first layer's inputs (:class:`Catchers`, embeddings only),
then every method prunes the same dense weights (reloaded from a CPU copy before each), layer by layer as
:func:`prune_sequentially` runs it: magnitude (no calibration, no forward), Wanda and SparseGPT at 50%
unstructured (per-row comparison), and Wanda and SparseGPT at 2:4. Every method is first warmed up on
layer 0 with one batch (kernels, cuBLAS/cuSOLVER handles, allocator); the timed run is then a single one.
The time is split into the pruning calls (``prune_layer``, synchronised) and the rest (the layer passes
that gather statistics and feed the pruned outputs on). The capture pass is timed on its own (after one
untimed capture) and is not part of any method's time; its inputs are reused by every method.

Part 2, semi-structured 2:4 (CUDA, fp16/bf16 only): the model as the last 2:4 method left it is run on
``--forward-batch`` windows as dense weights with zeros, then after ``to_semi_structured`` as PyTorch
converts by default (cuSPARSELt; ``F.linear`` then returns a transposed, non-contiguous view), then again
with cuSPARSELt's fused transposition (``SparseSemiStructuredTensor._FUSE_TRANSPOSE``: row-major output);
median and best of ``--repeats`` timed passes after 2 warm-ups. The logits are compared with each other and
with an fp32 pass of the dense-with-zeros weights (the bf16 noise floor). A microbenchmark times single
``F.linear`` products of the 2:4 weights of layer 0 (4096x4096, 11008x4096, 4096x11008 for LLaMA-2-7B) on
``forward-batch x seqlen`` tokens: dense, and each semi-structured backend (cuSPARSELt, fused or not, and
CUTLASS), back to back and as single synchronised calls (which expose the host's time per call).

Prints one markdown table per part; ``--out`` writes the raw numbers as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_cost import model_arguments, windows_for  # noqa: E402
from diagnostics_overhead import build_model  # noqa: E402

from prunelight.apply.sparse import LayerPattern, measure_sparsity, projection_sizes, prune_layer  # noqa: E402
from prunelight.calibration.sequential import Captured, Catchers, prune_sequentially  # noqa: E402
from prunelight.importance.inputs import LayerInputs  # noqa: E402
from prunelight.measure import peak_memory, reset_peak_memory  # noqa: E402
from prunelight.models import adapter_for  # noqa: E402
from prunelight.models.projections import PROJECTIONS  # noqa: E402
from prunelight.save.semi_structured import is_two_four, to_semi_structured  # noqa: E402

METHODS = [
    ("magnitude", LayerPattern("unstructured", "magnitude", 0.5)),
    ("wanda", LayerPattern("unstructured", "wanda", 0.5)),
    ("sparsegpt", LayerPattern("unstructured", "sparsegpt", 0.5)),
    ("wanda 2:4", LayerPattern("nm", "wanda", 0.5)),
    ("sparsegpt 2:4", LayerPattern("nm", "sparsegpt", 0.5)),
]
"""In this order: the last is 2:4, and part 2 runs on what it left."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mib(value: float) -> float:
    return value / 2**20


def capture(
    model, adapter, ids: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[Captured, float]:
    """The first layer's inputs and every layer's keyword arguments, per batch; and the seconds it took."""
    sync(device)
    start = time.perf_counter()
    with Catchers(model, adapter) as catchers, torch.no_grad():
        for i in range(0, len(ids), batch_size):
            model.base_model(input_ids=ids[i : i + batch_size].to(device), use_cache=False)
    sync(device)
    return catchers.captured, time.perf_counter() - start


def warm_up(model, adapter, captured: Captured, pattern: LayerPattern) -> None:
    """One batch through layer 0, then ``prune_layer`` on it (changes layer 0: reload the weights after)."""
    layer = adapter.decoder_layers(model)[0]
    inputs = LayerInputs(adapter.modules(layer), pattern.criterion == "sparsegpt").attach()
    try:
        with torch.no_grad():
            layer(captured.hidden[0], **captured.kwargs[0][0])
    finally:
        inputs.detach()
    prune_layer(inputs.modules, inputs, pattern, 0)


def run_method(model, adapter, captured: Captured, pattern: LayerPattern, device: torch.device) -> dict:
    """Prune every layer once with ``pattern``; seconds in all and in ``prune_layer``, and peak memory."""
    prune_seconds = []

    def prune(index: int, modules: Any, inputs: LayerInputs | None) -> None:
        sync(device)
        start = time.perf_counter()
        prune_layer(modules, inputs, pattern, index)
        sync(device)
        prune_seconds.append(time.perf_counter() - start)

    layers = adapter.decoder_layers(model)
    reset_peak_memory(device)
    sync(device)
    start = time.perf_counter()
    if pattern.criterion == "magnitude":  # scores from the weights alone: no layer passes
        for index, layer in enumerate(layers):
            prune(index, adapter.modules(layer), None)
    else:
        hessian = pattern.criterion == "sparsegpt"
        prune_sequentially(model, adapter, captured, prune, hessian=hessian, progress=False)
    sync(device)
    seconds = time.perf_counter() - start
    peak = peak_memory(device)
    return {
        "seconds": seconds,
        "seconds_per_layer": seconds / len(layers),
        "prune_seconds": sum(prune_seconds),
        "prune_seconds_per_layer": prune_seconds,
        "pass_seconds": seconds - sum(prune_seconds),
        "peak_memory": peak,
    }


def check_weights(model, adapter, dense_sizes) -> dict:
    """Sparsity reached, and whether every projection is 2:4."""
    measured = measure_sparsity(model, adapter, dense_sizes)
    two_four = all(
        is_two_four(getattr(adapter.modules(layer), name).weight.detach())
        for layer in adapter.decoder_layers(model)
        for name in PROJECTIONS
    )
    return {"sparsity": measured["overall"]["sparsity"], "two_four": two_four}


def time_forward(model, ids: torch.Tensor, repeats: int, device: torch.device) -> tuple[list[float], Any]:
    """Seconds of ``repeats`` forward passes after 2 warm-ups, and the last logits."""
    times = []
    with torch.no_grad():
        for _ in range(2):
            logits = model(input_ids=ids, use_cache=False).logits
        for _ in range(repeats):
            del logits
            sync(device)
            start = time.perf_counter()
            logits = model(input_ids=ids, use_cache=False).logits
            sync(device)
            times.append(time.perf_counter() - start)
    return times, logits


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Max abs difference, relative to b's largest magnitude, and allclose at bf16's default tolerances."""
    diff = (a.float() - b.float()).abs()
    scale = float(b.float().abs().max())
    rtol, atol = 1.6e-2, 1e-5  # torch.testing.assert_close's defaults for bfloat16
    outside = diff > atol + rtol * b.float().abs()
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_value": scale,
        "relative_max_diff": float(diff.max()) / scale if scale else 0.0,
        "allclose_bf16": not bool(outside.any()),
        "fraction_outside_bf16_tol": float(outside.float().mean()),
        "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
    }


def cuda_time(fn, repeats: int) -> dict[str, float]:
    """Milliseconds per call (CUDA events) after 5 warm-ups: ``throughput``, the median of 5 loops of
    ``repeats`` back-to-back calls (host work overlaps the GPU's, as in a model), and ``latency``, the
    median of ``repeats`` single calls each waited for (host work per call is exposed)."""
    for _ in range(5):
        fn()
    loops, singles = [], []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        loops.append(start.elapsed_time(end) / repeats)
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        singles.append(start.elapsed_time(end))
    return {"throughput": statistics.median(loops), "latency": statistics.median(singles)}


class FusedTranspose:
    """Context: cuSPARSELt tensors made inside write their product transposed, so that ``F.linear``
    returns a row-major (contiguous) output rather than a transposed view.

    Sets ``SparseSemiStructuredTensor._FUSE_TRANSPOSE``, which a tensor reads when it is made.
    """

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        from torch.sparse import SparseSemiStructuredTensor

        self.before = SparseSemiStructuredTensor._FUSE_TRANSPOSE
        SparseSemiStructuredTensor._FUSE_TRANSPOSE = self.on

    def __exit__(self, *exc: object) -> None:
        from torch.sparse import SparseSemiStructuredTensor

        SparseSemiStructuredTensor._FUSE_TRANSPOSE = self.before


VARIANTS = {"semi-structured": False, "semi-structured, fused transpose": True}
"""Whole-model variants of part 2: as ``to_semi_structured`` converts (PyTorch's defaults), and with
cuSPARSELt's fused transposition of the product."""


def semi_structured_backends() -> dict[str, tuple[Any, bool]]:
    """Name -> (``from_dense`` of a semi-structured subclass this PyTorch exposes, fused transpose).

    ``to_sparse_semi_structured`` (and so ``to_semi_structured``) takes cuSPARSELt unless
    ``SparseSemiStructuredTensor._FORCE_CUTLASS`` is set.
    """
    from torch import sparse

    backends = {}
    for name, attr, fuse in (("cusparselt", "SparseSemiStructuredTensorCUSPARSELT", False),
                             ("cusparselt fused-T", "SparseSemiStructuredTensorCUSPARSELT", True),
                             ("cutlass", "SparseSemiStructuredTensorCUTLASS", False)):  # fmt: skip
        cls = getattr(sparse, attr, None)
        if cls is not None:
            backends[name] = (cls.from_dense, fuse)
    return backends


def microbenchmark(weights: dict[str, torch.Tensor], tokens: int, repeats: int) -> list[dict]:
    """``F.linear`` of ``tokens`` rows by each 2:4 weight: dense with zeros, then each sparse backend."""
    rows = []
    for name, weight in weights.items():
        out_features, in_features = weight.shape
        x = torch.randn(tokens, in_features, dtype=weight.dtype, device=weight.device)
        flops = 2 * tokens * in_features * out_features
        with torch.no_grad():
            reference = F.linear(x, weight)
            dense = cuda_time(lambda x=x, w=weight: F.linear(x, w), repeats)
            row: dict[str, Any] = {
                "projection": name,
                "weight": [out_features, in_features],
                "tokens": tokens,
                "dense_ms": dense,
                "dense_tflops": flops / dense["throughput"] / 1e9,
                "sparse": {},
            }
            for backend, (from_dense, fuse) in semi_structured_backends().items():
                try:
                    with FusedTranspose(fuse):
                        sparse = from_dense(weight)
                    out = F.linear(x, sparse)
                    ms = cuda_time(lambda x=x, w=sparse: F.linear(x, w), repeats)
                except Exception as err:  # a backend this build or GPU lacks: report it, go on
                    row["sparse"][backend] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
                    continue
                row["sparse"][backend] = {
                    "class": type(sparse).__name__,
                    "ms": ms,
                    "speedup": dense["throughput"] / ms["throughput"],
                    "speedup_latency": dense["latency"] / ms["latency"],
                    "output_contiguous": out.is_contiguous(),
                    "max_abs_diff": float((out.float() - reference.float()).abs().max()),
                    "max_abs_value": float(reference.float().abs().max()),
                }
                del sparse, out
        rows.append(row)
    return rows


def semi_structured_part(model, adapter, ids: torch.Tensor, args, device: torch.device) -> dict:
    """Forward of dense-with-zeros vs semi-structured 2:4 weights, logits compared, and the microbenchmark."""
    result: dict[str, Any] = {"tokens": list(ids.shape), "runs": {}}
    layers = adapter.decoder_layers(model)
    modules = adapter.modules(layers[0])
    weights = {f"{name}_proj": getattr(modules, name).weight.detach().clone() for name in ("q", "up", "down")}
    try:
        result["linear"] = microbenchmark(weights, ids.numel(), args.repeats * 5)
    except Exception as err:  # keep the whole-model numbers below
        result["linear"] = {"error": f"{type(err).__name__}: {err}"}
    del weights
    torch.cuda.empty_cache()
    dense_weights = [
        {name: getattr(adapter.modules(layer), name).weight.detach().cpu() for name in PROJECTIONS}
        for layer in layers
    ]

    reset_peak_memory(device)
    times, dense_logits = time_forward(model, ids, args.repeats, device)
    result["runs"]["dense with zeros"] = {"ms": [t * 1e3 for t in times], **peak_memory(device)}

    # bf16 noise floor: the same dense-with-zeros weights in fp32 (parameters only: the buffers, rotary
    # frequencies included, stay as they are; bf16 -> fp32 -> bf16 is exact)
    for p in model.parameters():
        p.data = p.data.float()
    with torch.no_grad():
        fp32_logits = model(input_ids=ids, use_cache=False).logits.float().cpu()
    for p in model.parameters():
        p.data = p.data.to(dense_logits.dtype)
    logits = {"dense with zeros": dense_logits.cpu()}  # off the GPU, so that every peak holds the same
    del dense_logits
    allocated = torch.cuda.memory_allocated(device)  # the dense-with-zeros model alone

    for variant, fuse in VARIANTS.items():
        for layer, saved in zip(layers, dense_weights, strict=True):
            for name, weight in saved.items():
                linear = getattr(adapter.modules(layer), name)
                linear.weight = torch.nn.Parameter(weight.to(device), requires_grad=False)
        torch.cuda.empty_cache()
        run: dict[str, Any] = {}
        try:
            sync(device)
            start = time.perf_counter()
            with FusedTranspose(fuse):
                conversion = to_semi_structured(model, adapter)
            sync(device)
            run["conversion"] = {
                "seconds": time.perf_counter() - start,
                "converted": conversion["converted"],
                "skipped": conversion["skipped"],
                "allocated_mib_before": mib(allocated),
                "allocated_mib_after": mib(torch.cuda.memory_allocated(device)),
                "weight_class": type(modules.q.weight).__name__,
            }
            with torch.no_grad():
                x = torch.randn(2, 64, modules.q.in_features, dtype=getattr(torch, args.dtype), device=device)
                probe = modules.q(x)
            reset_peak_memory(device)
            times, out = time_forward(model, ids, args.repeats, device)
        except Exception as err:  # report it, go on with the other variant
            result["runs"][variant] = {"error": f"{type(err).__name__}: {err}"}
            continue
        run.update(ms=[t * 1e3 for t in times], **peak_memory(device))
        run["linear_output_contiguous"] = probe.is_contiguous()
        result["runs"][variant] = run
        logits[variant] = out.cpu()
        del out, probe

    dense_median = statistics.median(result["runs"]["dense with zeros"]["ms"])
    for run in result["runs"].values():
        if "ms" in run:
            run["speedup_median"] = dense_median / statistics.median(run["ms"])
    reference = {"dense with zeros": logits["dense with zeros"].to(device), "fp32": fp32_logits.to(device)}
    del fp32_logits
    result["logits"] = {"dense with zeros vs fp32": compare(reference["dense with zeros"], reference["fp32"])}
    for variant in VARIANTS:
        if variant in logits:
            out = logits.pop(variant).to(device)
            for name, ref in reference.items():
                result["logits"][f"{variant} vs {name}"] = compare(out, ref)
            del out
    return result


def print_part1(args, model_name: str, where: str, capture_seconds: float, rows: dict, peak_key: str) -> None:
    print(f"\n## Part 1: sequential pruning, {model_name}, {args.dtype}, {where}")
    print(
        f"{args.nsamples} x {args.seqlen} calibration tokens, batch {args.batch_size}; capture pass "
        f"(embeddings, Catchers) {capture_seconds:.3f} s, not included below. Single timed run per method "
        "after a one-layer, one-batch warm-up; each method starts from the same dense weights.\n"
    )
    print(
        f"| method | total s | s / layer | layer passes s | prune_layer s | {peak_key} | sparsity | 2:4 | "
        "/ wanda |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for label, row in rows.items():
        base = "wanda 2:4" if label.endswith("2:4") else "wanda"
        ratio = f"{row['seconds'] / rows[base]['seconds']:.2f}x" if base in rows else ""
        print(
            f"| {label} | {row['seconds']:.2f} | {row['seconds_per_layer']:.3f} | "
            f"{row['pass_seconds']:.2f} | "
            f"{row['prune_seconds']:.2f} | {row['peak_memory'][peak_key]:.0f} | {row['sparsity']:.4f} | "
            f"{'yes' if row['two_four'] else 'no'} | {ratio} |"
        )


def print_part2(part: dict, where: str) -> None:
    runs = part["runs"]
    batch, seqlen = part["tokens"]
    repeats = len(runs["dense with zeros"]["ms"])
    print(f"\n## Part 2: semi-structured 2:4 inference, {where}")
    print(
        f"Forward of the whole model on {batch} x {seqlen} tokens (logits included), median / best of "
        f"{repeats} after 2 warm-ups; the weights are the last 2:4 method's.\n"
    )
    print("| weights | median ms | best ms | speedup (median) | peak GPU MiB | linear output contiguous |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for label, run in runs.items():
        if "error" in run:
            print(f"| {label} | failed: {run['error']} | | | | |")
            continue
        med, best = statistics.median(run["ms"]), min(run["ms"])
        contiguous = run.get("linear_output_contiguous", True)
        print(
            f"| {label} | {med:.1f} | {best:.1f} | {run['speedup_median']:.3f}x | "
            f"{run['peak_gpu_memory_mb']:.0f} | {contiguous} |"
        )
    for label, run in runs.items():
        conv = run.get("conversion")
        if conv:
            print(
                f"\n{label}: to_semi_structured converted {conv['converted']} projections to "
                f"{conv['weight_class']} in {conv['seconds']:.2f} s, {len(conv['skipped'])} left dense; "
                f"allocated {conv['allocated_mib_before']:.0f} -> {conv['allocated_mib_after']:.0f} MiB."
            )
            for layer, why in conv["skipped"].items():
                print(f"- left dense: {layer}: {why}")
    print(
        "\n| logits | max abs diff | mean abs diff | max abs diff / max abs | allclose (bf16 tol) "
        "| argmax agree |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for label, c in part["logits"].items():
        print(
            f"| {label} | {c['max_abs_diff']:.3g} | {c['mean_abs_diff']:.3g} | "
            f"{c['relative_max_diff']:.3g} | {c['allclose_bf16']} "
            f"({c['fraction_outside_bf16_tol']:.2%} out) | "
            f"{c['argmax_agreement']:.2%} |"
        )
    if isinstance(part["linear"], dict):
        print(f"\nF.linear microbenchmark failed: {part['linear']['error']}")
    else:
        print_linear(part["linear"], batch * seqlen)


def print_linear(rows: list[dict], tokens: int) -> None:
    print(
        f"\nOne F.linear, {tokens} tokens, 2:4 weights of layer 0. ms per call (CUDA events): back-to-back "
        "(median of 5 loops) / single synchronised call (median); speedup on back-to-back.\n"
    )
    print(
        "| weight (out x in) | dense ms | dense TFLOP/s | backend | sparse ms | speedup | output contiguous "
        "| max abs diff |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | --- | ---: |")
    for row in rows:
        shape = "x".join(map(str, row["weight"]))
        dense = row["dense_ms"]
        for backend, entry in row["sparse"].items():
            head = (
                f"| {row['projection']} {shape} | {dense['throughput']:.3f} / {dense['latency']:.3f} | "
                f"{row['dense_tflops']:.0f} | {backend}"
            )
            if "error" in entry:
                print(f"{head} | failed: {entry['error']} | | | |")
            else:
                ms = entry["ms"]
                print(
                    f"{head} | {ms['throughput']:.3f} / {ms['latency']:.3f} | {entry['speedup']:.3f}x | "
                    f"{entry['output_contiguous']} | {entry['max_abs_diff']:.3g} |"
                )


def main() -> None:
    parser = model_arguments(__doc__, nsamples=128, batch_size=8)
    parser.add_argument("--hidden", type=int, default=None, help="--shape only: hidden size (CPU checks)")
    parser.add_argument("--intermediate", type=int, default=None, help="--shape only: MLP width")
    parser.add_argument("--forward-batch", type=int, default=8, help="part 2: windows per forward pass")
    parser.add_argument("--repeats", type=int, default=10, help="part 2: timed forward passes")
    parser.add_argument("--out", type=Path, default=None, help="write the raw numbers as JSON here")
    parser.set_defaults(shape="llama-2-7b", layers=8, dtype="bfloat16", seqlen=2048)
    args = parser.parse_args()

    device = torch.device(args.device)
    model, tokenizer = build_model(args)
    model.eval()
    adapter = adapter_for(model)
    windows = windows_for(args, model, tokenizer)
    ids = windows.input_ids
    params = sum(p.numel() for p in model.parameters())
    weights_mb = mib(sum(p.numel() * p.element_size() for p in model.parameters()))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    model_name = (
        f"{args.shape or args.model} ({len(adapter.decoder_layers(model))} layers, {params / 1e6:.0f}M)"
    )
    print(f"{model_name}, {weights_mb:.0f} MiB of weights, {where}, torch {torch.__version__}", flush=True)

    dense_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    dense_sizes = projection_sizes(model, adapter)
    capture(model, adapter, ids, args.batch_size, device)  # warm-up
    captured, capture_seconds = capture(model, adapter, ids, args.batch_size, device)
    for _, pattern in METHODS:
        warm_up(model, adapter, captured, pattern)
        model.load_state_dict(dense_state)

    rows: dict[str, dict] = {}
    for label, pattern in METHODS:
        model.load_state_dict(dense_state)
        row = run_method(model, adapter, captured, pattern, device)
        row.update(
            check_weights(model, adapter, dense_sizes), pattern=pattern.pattern, criterion=pattern.criterion
        )
        rows[label] = row
        print(f"{label}: {row['seconds']:.2f} s (prune_layer {row['prune_seconds']:.2f} s)", flush=True)
    del captured
    peak_key = next(iter(rows["wanda"]["peak_memory"]))
    ratios = {
        "sparsegpt/wanda": rows["sparsegpt"]["seconds"] / rows["wanda"]["seconds"],
        "sparsegpt/wanda 2:4": rows["sparsegpt 2:4"]["seconds"] / rows["wanda 2:4"]["seconds"],
    }
    report: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device_name": where,
        "torch": torch.__version__,
        "parameters": params,
        "weights_mib": weights_mb,
        "capture_seconds": capture_seconds,
        "methods": rows,
        "ratios": ratios,
    }
    print_part1(args, model_name, where, capture_seconds, rows, peak_key)
    print(f"\nsparsegpt / wanda: {ratios['sparsegpt/wanda']:.1f}x unstructured, "
          f"{ratios['sparsegpt/wanda 2:4']:.1f}x 2:4")  # fmt: skip

    if device.type != "cuda" or args.dtype not in ("float16", "bfloat16"):
        print("\n## Part 2: skipped (semi-structured 2:4 needs a CUDA GPU and --dtype float16/bfloat16)")
        report["semi_structured"] = None
    else:
        torch.cuda.empty_cache()
        forward_ids = ids[: args.forward_batch].to(device)
        try:
            report["semi_structured"] = semi_structured_part(model, adapter, forward_ids, args, device)
        except Exception as err:  # report it with part 1's numbers rather than lose them
            report["semi_structured"] = {"error": f"{type(err).__name__}: {err}"}
            print(f"\n## Part 2 failed: {type(err).__name__}: {err}")
        else:
            print_part2(report["semi_structured"], where)

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
