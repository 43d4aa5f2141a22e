"""Which attention kernel a gradient calibration runs in float32, and what it costs in memory and time.

    python benchmarks/attention_memory.py --shape qwen2.5-0.5b --batch-size 8 --seqlen 2048
    python benchmarks/attention_memory.py --shape smollm2-135m --batch-size 8 --seqlen 2048

A Taylor calibration runs forward and backward in float32 with no attention mask. transformers' ``sdpa``
then passes grouped key/value heads to ``scaled_dot_product_attention`` with ``enable_gqa=True``; flash
and cuDNN attention take no float32, and if the memory-efficient kernel refuses grouped heads too, torch
falls back to the math kernel, which keeps a ``batch x heads x seq x seq`` matrix per layer for the
backward. This prints what torch says about the efficient kernel for those inputs, then one calibration
batch (forward and backward of the window loss, random weights of the model's shape) for each attention
path: ``sdpa`` as transformers calls it, ``sdpa`` with the key/value heads expanded first (so the
efficient kernel sees equal head counts), and ``eager``, with peak memory, seconds and the largest
difference of the gradients from the ``sdpa`` path. On a CPU the peak is the process's highest resident
memory so far, which only grows from row to row: read memory on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_cost import SHAPES  # noqa: E402

from prunelight.calibration.module import window_losses  # noqa: E402
from prunelight.measure import peak_memory, reset_peak_memory  # noqa: E402

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


def sdpa_expanded(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa after repeating the key/value heads to the query heads."""
    groups = query.shape[1] // key.shape[1]
    return sdpa_attention_forward(
        module, query, repeat_kv(key, groups), repeat_kv(value, groups), attention_mask, **kwargs
    )


AttentionInterface.register("sdpa_expanded", sdpa_expanded)


def efficient_kernel_verdict(config, batch: int, seqlen: int, device: torch.device) -> str:
    """Whether torch's memory-efficient kernel takes the calibration's float32 q/k/v, grouped and expanded."""
    if device.type != "cuda":
        return "no CUDA device: the efficient kernel is CUDA's"
    dim = config.hidden_size // config.num_attention_heads
    q = torch.empty(batch, config.num_attention_heads, seqlen, dim, device=device, requires_grad=True)
    grouped = torch.empty(batch, config.num_key_value_heads, seqlen, dim, device=device, requires_grad=True)
    expanded = torch.empty_like(q, requires_grad=True)
    answers = []
    for name, kv in (("grouped (enable_gqa)", grouped), ("expanded", expanded)):
        params = torch.backends.cuda.SDPAParams(q, kv, kv, None, 0.0, True, True)
        answers.append(f"{name}: {torch.backends.cuda.can_use_efficient_attention(params, True)}")
    return "; ".join(answers)


def one_batch(model, ids: torch.Tensor) -> tuple[float, dict[str, float], list[torch.Tensor]]:
    device = ids.device
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    window_losses(model(input_ids=ids, use_cache=False).logits, ids).mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    return seconds, peak_memory(device), grads


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(MODEL_SHAPES), default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--paths", default="sdpa,sdpa_expanded,eager")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    shape = dict(MODEL_SHAPES[args.shape])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    device = torch.device(args.device)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seqlen), device=device)
    verdict = efficient_kernel_verdict(config, args.batch_size, args.seqlen, device)
    print(f"efficient kernel for float32 q/k/v: {verdict}")
    rows, reference = [], None
    for path in args.paths.split(","):
        model.set_attn_implementation(path)
        one_batch(model, ids)  # warm-up
        seconds, peak, grads = one_batch(model, ids)
        if reference is None:
            reference = grads
        difference = max(float((a - b).abs().max()) for a, b in zip(grads, reference, strict=True))
        rows.append((path, seconds, next(iter(peak.values())) / 1024, difference))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{args.shape}: {config.num_hidden_layers} layers, float32, {where}, one batch of "
          f"{args.batch_size} x {args.seqlen} tokens, forward and backward")  # fmt: skip
    print("| attention | seconds | peak GiB | peak vs sdpa | max grad difference vs sdpa |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for path, seconds, gib, difference in rows:
        print(f"| {path} | {seconds:.3f} | {gib:.2f} | {gib / rows[0][2]:.2f}x | {difference:.2e} |")


if __name__ == "__main__":
    main()
