"""tools/export.py: torch.export (.pt2) and ONNX (onnxruntime) parity with eager, for test_vim (and test_vim2).

Each test runs the tool's ``main`` in process: export, save, reload the file, run it on a fresh
input (not the traced one) and compare with eager. Tolerances (as in the tool's docstring):
torch.export runs the same ATen kernels as eager, so it must match to float32 rounding of the
same ops (measured 0); ONNX Runtime's kernels round differently, and the difference
accumulates over the blocks, so 1e-5 of the output scale (~80 float32 ulps); a wrong graph
shows up at 1e-3 or more. Measured: classifier 2.7e-7 at scale 0.55, features 2.5e-6 at 3.8.
"""
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxscript", reason="the export extra is not installed (pip install -e .[export])")
pytest.importorskip("onnxruntime", reason="the export extra is not installed (pip install -e .[export])")

TOOL = Path(__file__).resolve().parents[2] / "tools" / "export.py"
RTOL = 1e-5


@pytest.fixture(scope="module")
def export_tool():
    spec = importlib.util.spec_from_file_location("mambazoo_export_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eager_scale(export_tool, argv, features):
    """max |eager output| for the tool's check input, rebuilt independently of ``main``."""
    args = export_tool.parse_args(argv)
    torch.manual_seed(args.seed)
    model = export_tool.build_model(args.model, args.img_size, features, args.out_indices)
    images = export_tool.example_inputs(model, args.img_size, args.batch_size, seed=args.seed + 1)
    with torch.no_grad():
        return max(t.abs().max().item() for t in export_tool.as_list(model(images)))


@pytest.mark.parametrize("model_name", ["test_vim", "test_vim2"])  # Mamba-1 and Mamba-2 (SSD) mixers
def test_classifier_export_and_onnx(export_tool, tmp_path, capsys, model_name):
    argv = [model_name, "--out", str(tmp_path), "--batch-size", "2", "--format", "both"]
    results = export_tool.main(argv)
    printed = capsys.readouterr().out
    assert (tmp_path / f"{model_name}.pt2").is_file() and (tmp_path / f"{model_name}.onnx").is_file()
    assert "max abs diff vs eager" in printed
    scale = _eager_scale(export_tool, argv, features=False)
    assert results["torch.export"] <= RTOL * scale, results
    assert results["onnx"] <= RTOL * scale, results

    # The saved program is the classifier: (2, 3, 32, 32) -> (2, 1000) logits.
    program = torch.export.load(str(tmp_path / f"{model_name}.pt2"))
    assert program.module()(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)


def test_features_export_and_onnx(export_tool, tmp_path):
    """The features_only model at a size other than the model's 32 px, two taps."""
    argv = ["test_vim", "--out", str(tmp_path), "--features", "--out-indices", "0", "2", "--img-size", "48"]
    results = export_tool.main(argv)
    scale = _eager_scale(export_tool, argv, features=True)
    assert results["torch.export"] <= RTOL * scale, results
    assert results["onnx"] <= RTOL * scale, results

    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "test_vim_features.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["features_0", "features_1"]
    assert [o.shape for o in session.get_outputs()] == [[1, 64, 6, 6]] * 2


def test_tolerance_failure_exits_nonzero(export_tool, tmp_path):
    with pytest.raises(SystemExit) as failure:
        export_tool.main(["test_vim", "--out", str(tmp_path), "--format", "export", "--rtol", "-1"])
    assert failure.value.code == 1
