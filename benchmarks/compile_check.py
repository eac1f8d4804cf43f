"""``torch.compile(fullgraph=True)`` of a whole Vim model: no graph breaks, same outputs as eager.

Run from the repository root on the GPU::

    PYTHONUNBUFFERED=1 PYTHONPATH=kernels:. python benchmarks/compile_check.py [--model vim_small]
        [--batch-size 8] [--img-size 224] [--backend inductor] [--no-train]

Steps, each printed as it finishes:

1. ``torch._dynamo.explain``: graph count and graph-break count (with the reasons) of the
   model's forward under bf16 autocast. The scan and the conv must be single ``mambazoo`` ops.
2. Inference: ``torch.compile(model, fullgraph=True)`` forward under ``inference_mode`` and bf16
   autocast; compile time (first call), then eager vs compiled medians over ``--iters`` calls,
   and the relative L2 error of the logits against eager.
3. Training (unless ``--no-train``): a fresh compile, forward+backward under bf16 autocast;
   compile time, relative error of the logits and of all parameter gradients (concatenated)
   against eager.

Tolerances: both sides run the same kernels in bf16 autocast, but inductor fuses and reorders
the elementwise and norm ops, so activations round differently in bf16 (2^-9 relative per
rounding) and the differences grow through the blocks: 2e-2 for the logits, 5e-2 for the
gradients (relative L2). Exits 1 on a graph break or a tolerance failure.

``--device cpu --model test_vim --img-size 32 --backend aot_eager`` runs the same code on the
CPU (reference kernels) as a quick dry run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import timm
import torch

import mambazoo  # noqa: F401  (registers the models)

LOGIT_RTOL = 2e-2
GRAD_RTOL = 5e-2


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vim_small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--iters", type=int, default=10, help="timed calls per variant (median)")
    parser.add_argument("--no-train", action="store_true", help="skip the forward+backward check")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, img_size=args.img_size).to(device)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    failures = []
    print(f"{args.model} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"batch {args.batch_size}, {args.img_size} px, torch {torch.__version__}, backend {args.backend}")

    model.eval()
    with torch.inference_mode(), autocast(device):
        explanation = torch._dynamo.explain(model)(images)
    print(f"explain: {explanation.graph_count} graph(s), {explanation.graph_break_count} graph break(s)")
    for reason in explanation.break_reasons:
        print(f"  break: {reason.reason}")
    ops = {str(node.target) for graph in explanation.graphs for node in graph.graph.nodes
           if "mambazoo" in str(node.target)}
    print(f"  mambazoo ops in the graph: {sorted(ops)}")
    if explanation.graph_break_count:
        failures.append(f"{explanation.graph_break_count} graph breaks")
    torch._dynamo.reset()

    compiled = torch.compile(model, backend=args.backend, fullgraph=True)
    with torch.inference_mode(), autocast(device):
        out, seconds = timed(lambda: compiled(images), device)
        print(f"inference: compile + first call {seconds:.1f} s")
        expected = model(images)
        err = rel_err(out, expected)
        eager = [timed(lambda: model(images), device)[1] for _ in range(args.iters)]
        fast = [timed(lambda: compiled(images), device)[1] for _ in range(args.iters)]
    print(f"inference: logits rel err {err:.2e} (tol {LOGIT_RTOL:g}); "
          f"median eager {statistics.median(eager) * 1e3:.2f} ms, compiled {statistics.median(fast) * 1e3:.2f} ms")
    if not err <= LOGIT_RTOL:
        failures.append(f"inference logits rel err {err:.2e}")

    if not args.no_train:
        torch._dynamo.reset()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]

        def step(fn):
            model.zero_grad(set_to_none=True)
            with autocast(device):
                logits = fn(images)
            logits.float().square().mean().backward()
            return logits.detach().float(), torch.cat([p.grad.flatten().float() for p in params])

        # No random op runs in train mode (the models' dropout and drop-path rates default to 0),
        # so compiled and eager see the same computation.
        compiled = torch.compile(model, backend=args.backend, fullgraph=True)
        (logits, grads), seconds = timed(lambda: step(compiled), device)
        print(f"training: compile + first forward+backward {seconds:.1f} s")
        ref_logits, ref_grads = step(model)
        logit_err, grad_err = rel_err(logits, ref_logits), rel_err(grads, ref_grads)
        print(f"training: logits rel err {logit_err:.2e} (tol {LOGIT_RTOL:g}), "
              f"gradients rel err {grad_err:.2e} (tol {GRAD_RTOL:g})")
        if not logit_err <= LOGIT_RTOL:
            failures.append(f"training logits rel err {logit_err:.2e}")
        if not grad_err <= GRAD_RTOL:
            failures.append(f"gradients rel err {grad_err:.2e}")

    print("FAILED: " + "; ".join(failures) if failures else "OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
