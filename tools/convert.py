"""Convert an official checkpoint into a folder timm loads: ``model.safetensors`` + ``config.json``.

    python tools/convert.py vim_s_midclstok_80p5acc.pth --model vim_small --out converted/vim_small

The file is read with ``torch.load(weights_only=True)``, allow-listing only ``argparse.Namespace``
(the ``args`` entry of the official training checkpoints); anything else in the pickle is refused
with an error naming it, never loaded with ``weights_only=False``. The weights are taken out of
the training-checkpoint wrapper, the model family's ``checkpoint_filter_fn(state_dict, model)``
maps them, the load into the model is strict, and timm's ``save_for_hf`` writes the folder. Load
the result with

    timm.create_model("vim_small", pretrained=True,
                      pretrained_cfg_overlay=dict(file="converted/vim_small/model.safetensors"))

``--weights ema`` (default) takes ``model_ema`` when the file has it, as timm's own loader does
for ``pretrained_cfg_overlay=dict(file=...)``; ``--weights model`` takes the raw ``model`` weights
(what the official fine-tuning recipe started from).
"""
from __future__ import annotations

import argparse
import importlib
import json
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional

import safetensors.torch
import timm
import torch

import mambazoo  # noqa: F401  (registers the models)
from mambazoo.models.vim import select_checkpoint_weights


def load_checkpoint_file(path: Path) -> Dict[str, Any]:
    """A ``.safetensors`` file, or ``torch.load`` with ``weights_only=True`` and ``argparse.Namespace`` allow-listed."""
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise RuntimeError(
            f"{path} holds Python objects outside the weights-only allow-list (tensors, containers, "
            f"argparse.Namespace), so it was not loaded; it is not an official checkpoint, or it "
            f"was saved with extra objects. torch says: {error}"
        ) from None


def convert(checkpoint_path: Path, model_name: str, out_dir: Path, use_ema: bool = True) -> Dict[str, Any]:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json``; returns a summary dict."""
    checkpoint = load_checkpoint_file(checkpoint_path)
    if not isinstance(checkpoint, dict):
        raise RuntimeError(f"{checkpoint_path} holds a {type(checkpoint).__name__}, not a (training) state dict")
    weights, state_dict = select_checkpoint_weights(checkpoint, use_ema)
    model = timm.create_model(model_name, pretrained=False)
    filter_fn = importlib.import_module(type(model).__module__).checkpoint_filter_fn
    model.load_state_dict(filter_fn(state_dict, model), strict=True)

    official_args = checkpoint.get("args")
    description = f"converted from {checkpoint_path.name} ({weights or 'state dict'} weights) by tools/convert.py"
    out_dir.mkdir(parents=True, exist_ok=True)
    timm.models.save_for_hf(
        model, out_dir, safe_serialization=True, model_config=dict(pretrained_cfg=dict(description=description)),
    )
    return dict(
        model=model_name,
        weights=weights,
        epoch=checkpoint.get("epoch"),
        official_model=getattr(official_args, "model", None),
        params=sum(p.numel() for p in model.parameters()),
        files=sorted(str(p) for p in out_dir.iterdir()),
    )


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="official checkpoint (.pth) or a state dict file")
    parser.add_argument("--model", required=True, help="mambazoo model name, e.g. vim_small")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--weights", choices=("ema", "model"), default="ema",
                        help="model_ema when present (default, as timm's loader) or the raw model weights")
    args = parser.parse_args(argv)
    summary = convert(args.checkpoint, args.model, args.out, use_ema=args.weights == "ema")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
