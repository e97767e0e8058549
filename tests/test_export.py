"""Export to ONNX / int8 / ORT format: learners.onnx_export, learners.ort_quant, scripts/export.py."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from learners import onnx_export as ox
from learners import ort_quant as oq

CALIB_IMAGES = 128
TEST_IMAGES = 256


@pytest.fixture(scope="module")
def data(cifar):
    calib = torch.cat([x for x, _ in cifar.train.subset(CALIB_IMAGES, seed=0).batches(64)])
    xs, ys = zip(*cifar.test.subset(TEST_IMAGES, seed=0).batches(TEST_IMAGES))
    return calib, xs[0], ys[0]


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory, data):
    """ResNet-20 exported, pre-processed and calibrated once for the module."""
    from pf_envs import zoo

    model = zoo.load("resnet20")
    folder = tmp_path_factory.mktemp("r20")
    fp32 = ox.export_onnx(model, folder / "model.onnx")
    prep = oq.preprocess(fp32, folder / "model.prep.onnx")
    ranges = oq.calibrate(prep, data[0].split(64))
    return model, fp32, prep, ranges


def test_fp32_onnx_matches_pytorch_in_a_fresh_session(resnet20, data):
    model, fp32, _, _ = resnet20
    agree = ox.compare_with_torch(model, fp32, data[1])
    assert agree.within_tolerance, agree
    assert agree.max_abs < ox.FP32_ATOL and agree.top1_agreement == 1.0
    sess = ox.session(fp32)
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and inp.shape[1:] == [3, 32, 32] and not isinstance(inp.shape[0], int)
    for n in (1, 3):  # dynamic batch axis
        assert ox.run_logits(sess, data[1][:n]).shape == (n, 10)


def test_int8_stays_close_to_fp32(resnet20, data, tmp_path):
    _, fp32, prep, ranges = resnet20
    int8 = oq.quantize_int8(prep, tmp_path / "int8.onnx", ranges)
    assert set(oq.node_precisions(int8).values()) == {"int8"}
    assert {n.op_type for n in oq.load_onnx(int8).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    acc32, _ = ox.accuracy(ox.session(fp32), [(data[1], data[2])])
    acc8, n = ox.accuracy(ox.session(int8), [(data[1], data[2])])
    assert n == TEST_IMAGES and abs(acc8 - acc32) <= 0.03, (acc32, acc8)
    logits32 = ox.run_logits(ox.session(fp32), data[1])
    logits8 = ox.run_logits(ox.session(int8), data[1])
    assert (logits8.argmax(1) == logits32.argmax(1)).mean() > 0.95
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size


def test_ranges_are_computed_once_and_reused(resnet20, tmp_path, monkeypatch):
    model, _, prep, ranges = resnet20
    assert ranges.images == CALIB_IMAGES and ranges.method == "MinMax" and ranges.ranges
    # JSON and pickle round trips give the same ranges.
    path = ranges.save(tmp_path / "ranges.json")
    assert oq.CalibrationRanges.load(path) == ranges
    assert pickle.loads(pickle.dumps(ranges)) == ranges

    # Quantizing must not run any calibrator: make every way into one fail.
    import sys

    import onnxruntime.quantization.calibrate as cal

    qz = sys.modules["onnxruntime.quantization.quantize"]  # the package exports a function of that name

    def boom(*a, **k):
        raise AssertionError("the calibrator ran again")

    monkeypatch.setattr(qz, "create_calibrator", boom)
    monkeypatch.setattr(cal, "create_calibrator", boom)
    monkeypatch.setattr(cal.CalibraterBase, "collect_data", boom)
    layers = oq.layer_nodes(model, prep)
    assert list(layers) == [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sorted(layers.values()) == sorted(oq.quantizable_nodes(prep))
    keep = [layers["conv1"], layers["classifier"]]
    out = oq.quantize_int8(prep, tmp_path / "mixed.onnx", oq.CalibrationRanges.load(path), exclude_nodes=keep)
    prec = oq.node_precisions(out)
    assert all(prec[n] == "fp32" for n in keep)
    assert all(prec[n] == "int8" for n in layers.values() if n not in keep)
    assert ox.run_logits(ox.session(out), np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)


def test_quantization_bad_inputs_are_clear_errors(resnet20, tmp_path):
    _, fp32, prep, ranges = resnet20
    with pytest.raises(oq.QuantizationError, match="pre-processing"):
        oq.quantize_int8(fp32, tmp_path / "x.onnx", ranges)
    with pytest.raises(oq.QuantizationError, match="pre-processing"):
        oq.calibrate(fp32, [np.zeros((1, 3, 32, 32), np.float32)])
    import onnx

    graph = onnx.load(str(prep))
    graph.doc_string = "another file"  # same graph, other bytes: ranges are tied to the file
    other = tmp_path / "other.prep.onnx"
    onnx.save(graph, str(other))
    with pytest.raises(oq.QuantizationError, match="another model"):
        oq.quantize_int8(other, tmp_path / "x.onnx", ranges)
    with pytest.raises(oq.QuantizationError, match="not nodes of"):
        oq.quantize_int8(prep, tmp_path / "x.onnx", ranges, exclude_nodes=["/no/such/Conv"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(oq.QuantizationError, match="not an ONNX model"):
        oq.preprocess(junk, tmp_path / "p.onnx")
    with pytest.raises(oq.QuantizationError, match="does not exist"):
        ox.session(tmp_path / "none.onnx")
    with pytest.raises(oq.QuantizationError, match="no batches"):
        oq.calibrate(prep, [])
    with pytest.raises(oq.QuantizationError, match="NaN"):
        oq.calibrate(prep, [np.full((1, 3, 32, 32), np.nan, np.float32)])
    bad = ranges.to_dict()
    bad["format"] = "x"
    with pytest.raises(oq.QuantizationError, match="format"):
        oq.CalibrationRanges.from_dict(bad)
    (tmp_path / "r.json").write_text("{")
    with pytest.raises(oq.QuantizationError, match="not valid JSON"):
        oq.CalibrationRanges.load(tmp_path / "r.json")
    assert not list(tmp_path.glob("*.tmp*"))  # nothing half-written left behind
    json.dumps(ranges.to_dict())
