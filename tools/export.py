"""Export a Vim classifier (or its feature maps) with torch.export and to ONNX; check both against eager.

    python tools/export.py MODEL_NAME --out DIR [--img-size 224] [--batch-size 1]
        [--format export|onnx|both] [--features [--out-indices 5 11 17 23]]
        [--checkpoint PATH] [--num-classes N] [--opset 20] [--onnx-optimize] [--rtol 1e-5]

Writes ``DIR/MODEL_NAME[_features].pt2`` (``torch.export.save``) and/or ``.onnx``, reloads each
file, runs it on a fresh input (not the one the graph was traced with) and prints the max abs
difference to the eager model. Exits non-zero when a difference exceeds ``rtol`` times the
largest eager output magnitude.

- The kernels are ``torch.library`` custom ops (``mambazoo::selective_scan``,
  ``mambazoo::bidirectional_selective_scan``, ``mambazoo::causal_conv1d``): the .pt2 graph keeps
  them as single nodes, so loading it needs ``import mambazoo_kernels`` (which registers them).
  The tool traces with ``MAMBAZOO_KERNEL_BACKEND=reference``, so the nodes run the PyTorch
  reference. For ONNX the nodes are decomposed into the reference's ATen ops
  (``mambazoo_kernels.reference_decompositions()``) before conversion.
- Shapes are static: the exported graph takes exactly ``(batch, in_chans, img, img)``. The
  reference scan unrolls its chunk loop from the sequence length, and picks its chunk size
  from the batch size, so neither can be symbolic yet.
- ONNX uses torch's default dynamo exporter (``torch.onnx.export(..., dynamo=True)``), which
  needs ``onnxscript`` (and ``onnx``); the check runs it with ``onnxruntime``. Install them with
  ``pip install -e .[export]``. The legacy TorchScript exporter (``dynamo=False``) does not
  work on the reference scan (it computes a chunk size from a traced shape).
- onnxscript's graph optimizer (``--onnx-optimize``) is off by default: on Vim's graph (the
  reference scan unrolled over chunks and log-steps) its time grows faster than linearly with
  depth (vim_tiny at 224 px, one thread: +11 s at 2 blocks, +123 s at 6 blocks, unfinished
  after 15 min for all 24), while the plain conversion is linear (about 2.7 s per block) and ONNX Runtime
  optimizes the graph itself when it loads it.
- ``--features``: the timm ``features_only`` model (``forward_intermediates`` taps, NCHW maps at
  the patch stride); ``--out-indices`` picks the blocks (default: timm's, the last three).

Tolerance: torch.export runs the same ATen kernels as eager (measured difference 0). ONNX
Runtime's kernels (blocked GEMMs, vectorised exp / softplus / SiLU) round differently, and the
differences accumulate over two scans and four matmuls per block; 1e-5 relative to the output
scale (about 80 float32 ulps) covers that with margin, while a wrong graph (a dropped branch,
a shape baked in wrongly, a mis-translated op) shows up at 1e-3 or more.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import timm
import torch
import torch.nn as nn

import mambazoo  # noqa: F401  (registers the models)
from mambazoo_kernels import reference_decompositions

# mambazoo_kernels' documented backend override (reference / triton / auto).
BACKEND_ENV = "MAMBAZOO_KERNEL_BACKEND"

FORMATS = ("export", "onnx", "both")
# Single-file .onnx below this size; the protobuf limit is 2 GiB.
_EXTERNAL_DATA_BYTES = 1 << 30


@contextlib.contextmanager
def reference_kernels() -> Iterator[None]:
    """Run every kernel on its PyTorch reference (what torch.export traces), restoring the setting after."""
    previous = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = "reference"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[BACKEND_ENV]
        else:
            os.environ[BACKEND_ENV] = previous


def build_model(
    name: str,
    img_size: Optional[int] = None,
    features: bool = False,
    out_indices: Optional[Sequence[int]] = None,
    checkpoint: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> nn.Module:
    """The eval-mode timm model: the classifier, or with ``features`` its ``features_only`` form.

    ``img_size`` (default: the model's) sets the position-embedding grid the graph is built for.
    ``checkpoint`` is a local file loaded through the model's ``checkpoint_filter_fn`` (official
    hustvl/Vim files included; ``pos_embed`` is resampled to ``img_size``).
    """
    kwargs = {}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if checkpoint is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if features:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    return timm.create_model(name, **kwargs).eval()


def example_inputs(model: nn.Module, img_size: Optional[int], batch_size: int, seed: int) -> torch.Tensor:
    """Normal random images ``(batch, in_chans, img, img)``; ``img`` defaults to the model's input size."""
    chans, height, width = model.pretrained_cfg["input_size"]
    if img_size is not None:
        height = width = img_size
    return torch.randn(batch_size, chans, height, width, generator=torch.Generator().manual_seed(seed))


def as_list(outputs) -> List[torch.Tensor]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def export_program(model: nn.Module, images: torch.Tensor, path: Path) -> torch.export.ExportedProgram:
    """``torch.export.export`` the model for ``images``' shape and save it to ``path`` (.pt2)."""
    with torch.no_grad():
        program = torch.export.export(model, (images,))
    torch.export.save(program, str(path))
    return program


def export_onnx(
    model_or_program, images: torch.Tensor, path: Path, num_outputs: int, opset: Optional[int], optimize: bool = False,
) -> Path:
    """Export to ONNX with the dynamo exporter, from the model or its ExportedProgram.

    The ``mambazoo::`` kernel ops are first decomposed into their PyTorch references (ONNX has
    no counterpart for them).

    ``optimize`` runs onnxscript's graph optimizer; off by default: its time grows faster than
    linearly with Vim's unrolled scan graph (see the module docstring), and ONNX Runtime applies
    its own graph optimizations when a session loads the file.
    """
    parameter_bytes = sum(
        t.numel() * t.element_size()
        for t in (model_or_program.state_dict.values() if isinstance(model_or_program, torch.export.ExportedProgram)
                  else model_or_program.state_dict().values())
    )
    output_names = ["output"] if num_outputs == 1 else [f"features_{i}" for i in range(num_outputs)]
    with torch.no_grad():
        program = model_or_program
        if not isinstance(program, torch.export.ExportedProgram):
            program = torch.export.export(program, (images,))
        table = torch.export.default_decompositions()
        table.update(reference_decompositions())
        program = program.run_decompositions(table)
        torch.onnx.export(
            program, (images,), str(path), dynamo=True, opset_version=opset,
            input_names=["images"], output_names=output_names, optimize=optimize,
            external_data=parameter_bytes > _EXTERNAL_DATA_BYTES, verbose=False,
        )
    return path


def run_program_file(path: Path, images: torch.Tensor) -> List[torch.Tensor]:
    """Load a saved ExportedProgram and run it."""
    program = torch.export.load(str(path))
    with torch.no_grad():
        return as_list(program.module()(images))


def run_onnx_file(path: Path, images: torch.Tensor) -> List[torch.Tensor]:
    """Run an .onnx file with ONNX Runtime's CPU provider."""
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    return [torch.from_numpy(output) for output in outputs]


def max_abs_diff(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    if len(outputs) != len(reference):
        raise ValueError(f"exported model returned {len(outputs)} outputs, eager {len(reference)}")
    for output, expected in zip(outputs, reference):
        if output.shape != expected.shape:
            raise ValueError(f"exported output shape {tuple(output.shape)} != eager {tuple(expected.shape)}")
    return max((output.float() - expected.float()).abs().max().item() for output, expected in zip(outputs, reference))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="registered model name, e.g. vim_tiny or test_vim")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--img-size", type=int, default=None, help="square input size (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--format", choices=FORMATS, default="both")
    parser.add_argument("--features", action="store_true", help="export the features_only model (NCHW block taps)")
    parser.add_argument("--out-indices", type=int, nargs="+", default=None, help="blocks to tap with --features")
    parser.add_argument("--checkpoint", default=None, help="local weights file (official Vim checkpoints work)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    parser.add_argument("--onnx-optimize", action="store_true",
                        help="run onnxscript's graph optimizer (slow past a few blocks, see above)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="max abs diff allowed, relative to max |eager output|")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Run the export; returns ``{format: max abs diff}``. Raises ``SystemExit(1)`` past the tolerance."""
    args = parse_args(argv)
    if args.out_indices is not None and not args.features:
        raise SystemExit("--out-indices needs --features")
    with reference_kernels():
        return _export_and_check(args)


def _export_and_check(args: argparse.Namespace) -> Dict[str, float]:
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.img_size, args.features, args.out_indices, args.checkpoint, args.num_classes)
    trace_images = example_inputs(model, args.img_size, args.batch_size, seed=args.seed)
    check_images = example_inputs(model, args.img_size, args.batch_size, seed=args.seed + 1)
    with torch.no_grad():
        reference = as_list(model(check_images))
    scale = max(expected.abs().max().item() for expected in reference)
    tolerance = args.rtol * scale
    stem = args.model + ("_features" if args.features else "")
    print(f"{args.model}: input {tuple(trace_images.shape)}, outputs {[tuple(t.shape) for t in reference]}, "
          f"tolerance {tolerance:.3g} (rtol {args.rtol:g} x max |eager| {scale:.3g})")

    results: Dict[str, float] = {}
    program = None
    if args.format in ("export", "both"):
        path = args.out / f"{stem}.pt2"
        program = export_program(model, trace_images, path)
        results["torch.export"] = max_abs_diff(run_program_file(path, check_images), reference)
        print(f"torch.export -> {path}: max abs diff vs eager {results['torch.export']:.3g}")
    if args.format in ("onnx", "both"):
        path = args.out / f"{stem}.onnx"
        export_onnx(
            program if program is not None else model, trace_images, path, len(reference), args.opset,
            optimize=args.onnx_optimize,
        )
        results["onnx"] = max_abs_diff(run_onnx_file(path, check_images), reference)
        print(f"onnx (onnxruntime) -> {path}: max abs diff vs eager {results['onnx']:.3g}")

    failed = {name: diff for name, diff in results.items() if not diff <= tolerance}
    if failed:
        print(f"FAILED: {failed} above tolerance {tolerance:.3g}", file=sys.stderr)
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
