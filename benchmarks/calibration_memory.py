"""Peak memory of one gradient-calibration batch: the loss over the logits, and the attention kernel.

    python benchmarks/calibration_memory.py --shape qwen2.5-0.5b --batch-size 8 --seqlen 2048
    python benchmarks/calibration_memory.py --shape smollm2-135m --batch-size 8 --seqlen 2048

One batch of a Taylor calibration (forward and backward of the windows' loss, float32, random weights of
the model's shape) per row, each row in a fresh process so that every peak is its own:

- **loss**: ``cross_entropy`` on the shifted, flattened logits (what the calibration did before) against
  :class:`prunelight.calibration.losses.WindowNLL` (what it does now), which keeps one gradient buffer of
  the logits' size instead of a copy, the log-softmax and two gradients.
- **attention**: with no mask, transformers' ``sdpa`` passes grouped key/value heads with
  ``enable_gqa=True``; flash and cuDNN attention take no float32, and if the memory-efficient kernel refuses
  grouped heads too, torch runs the math kernel, which keeps a ``batch x heads x seq x seq`` matrix per
  layer for the backward. The rows compare transformers' ``sdpa``, the same under the calibration's
  :func:`prunelight.models.attention.efficient_float32_attention` (heads expanded where that buys the
  efficient kernel) and ``eager``; the first line says what torch answers about the efficient kernel for
  those inputs.

Each row prints seconds, peak memory (CUDA's allocator peak; on a CPU the process's peak resident memory),
its ratio to the first row, and the largest relative difference of the per-parameter gradient norms from
the first row's (the rows compute the same gradient).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_cost import SHAPES  # noqa: E402

from prunelight.calibration.losses import window_losses  # noqa: E402
from prunelight.measure import peak_memory, reset_peak_memory  # noqa: E402
from prunelight.models.attention import efficient_float32_attention, efficient_kernel_answers  # noqa: E402

MODEL_SHAPES = {
    **SHAPES,
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_attention_heads=9,
        num_key_value_heads=3, num_hidden_layers=30, vocab_size=49152, max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_attention_heads=14,
        num_key_value_heads=2, num_hidden_layers=24, vocab_size=151936, max_position_embeddings=32768,
        tie_word_embeddings=True,
    ),
}  # fmt: skip


def efficient_kernel_verdict(config, batch: int, seqlen: int, device: torch.device) -> str:
    """Whether torch's memory-efficient kernel takes the calibration's float32 q/k/v, grouped and expanded."""
    if device.type != "cuda":
        return "no CUDA device: the efficient kernel is CUDA's"
    dim = config.hidden_size // config.num_attention_heads
    q = torch.empty(batch, config.num_attention_heads, seqlen, dim, device=device, requires_grad=True)
    kv = torch.empty(batch, config.num_key_value_heads, seqlen, dim, device=device, requires_grad=True)
    grouped, expanded = efficient_kernel_answers(q, kv, debug=True)
    return f"grouped (enable_gqa): {grouped}; expanded: {expanded}"


ROWS = {
    "before": ("sdpa", False, "cross_entropy", "sdpa + cross_entropy (before)"),
    "loss": ("sdpa", False, "window_nll", "sdpa + WindowNLL"),
    "today": ("sdpa", True, "window_nll", "sdpa, float32 heads expanded + WindowNLL (today)"),
    "eager": ("eager", False, "window_nll", "eager + WindowNLL"),
}
"""Row name: (attention, efficient_float32_attention or not, loss, label)."""


def cross_entropy_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The calibration's loss before WindowNLL."""
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    return nll.view(ids.shape[0], -1).mean(dim=1)


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    shape = dict(MODEL_SHAPES[args.shape])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seqlen), device=args.device)
    return model, ids


def run_row(args: argparse.Namespace) -> dict:
    """One row in this process: a warm-up batch, then the measured one."""
    attention, expand, loss, _ = ROWS[args.row]
    model, ids = build(args)
    model.set_attn_implementation(attention)
    loss_fn = window_losses if loss == "window_nll" else cross_entropy_losses
    device = ids.device
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        _sync(device)
        reset_peak_memory(device)
        start = time.perf_counter()
        with efficient_float32_attention() if expand else nullcontext():
            loss_fn(model(input_ids=ids, use_cache=False).logits, ids).mean().backward()
        _sync(device)
        seconds = time.perf_counter() - start
    norms = [float(p.grad.norm()) for p in model.parameters() if p.grad is not None]
    return {"seconds": seconds, "peak_mib": next(iter(peak_memory(device).values())), "norms": norms}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shape_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options of a benchmark on random weights of a model's shape: which shape, how deep, which
    windows, where."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(MODEL_SHAPES), default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main() -> None:
    parser = shape_arguments(__doc__)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    parser.add_argument("--row", choices=sorted(ROWS), help=argparse.SUPPRESS)  # one row, in a child process
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args)))
        return

    model, ids = build(args)
    config, device = model.config, ids.device
    del model
    print(f"efficient kernel for float32 q/k/v: {efficient_kernel_verdict(config, *ids.shape, device)}")
    results = {}
    for row in args.rows.split(","):
        child = [sys.executable, __file__, "--row", row, "--shape", args.shape, "--device", args.device]
        child += ["--batch-size", str(args.batch_size), "--seqlen", str(args.seqlen)]
        child += ["--layers", str(args.layers)] if args.layers else []
        done = subprocess.run(child, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {ROWS[row][3]} | failed: {done.stderr.strip().splitlines()[-1]} |")
            continue
        results[row] = json.loads(done.stdout.strip().splitlines()[-1])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"\n{args.shape}: {config.num_hidden_layers} layers, vocab {config.vocab_size}, float32, {where}, ",
        end="",
    )
    print(
        f"one batch of {args.batch_size} x {args.seqlen} tokens, forward and backward, a fresh process a row"
    )
    print("| row | seconds | peak GiB | peak vs first | gradient norms vs first (max rel. diff) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    first = next(iter(results.values()), None)
    for row, r in results.items():
        diff = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(r["norms"], first["norms"], strict=True))
        gib, ratio = r["peak_mib"] / 1024, r["peak_mib"] / first["peak_mib"]
        print(f"| {ROWS[row][3]} | {r['seconds']:.3f} | {gib:.2f} | {ratio:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
