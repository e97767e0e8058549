"""Export to ONNX / int8 / ORT format: learners.onnx_export, learners.ort_int8, pf_deploy.export (pf-export)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from learners import onnx_export as ox
from learners import ort_int8 as oq
from learners.onnx_names import layer_nodes

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
    # ORT's x86-without-VNNI settings: uint8 activations, 7-bit weights
    x86 = oq.quantize_int8(prep, tmp_path / "x86.onnx", ranges, activation_type="uint8", reduce_range=True)
    acc_x86, _ = ox.accuracy(ox.session(x86), [(data[1], data[2])])
    assert abs(acc_x86 - acc32) <= 0.03, (acc32, acc_x86)


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
    before = sorted(p.name for p in prep.parent.iterdir())
    layers = layer_nodes(model, prep)
    assert list(layers) == [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sorted(layers.values()) == sorted(oq.quantizable_nodes(prep))
    keep = [layers["conv1"], layers["classifier"]]
    out = oq.quantize_int8(prep, tmp_path / "mixed.onnx", oq.CalibrationRanges.load(path), exclude_nodes=keep)
    # ORT writes "<model>-inferred.onnx" beside what it loads; quantize_int8 never lets it
    # (two processes quantizing one file collided on it)
    assert sorted(p.name for p in prep.parent.iterdir()) == before
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


# ------------------------------------------------------------------ pf_deploy.export, bundles
ENV = "ChannelPrune-ResNet20-v0"


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, cifar_root):
    """A ResNet-20 pruned to 50% MACs (uniform policy, no fine-tuning), saved as .pt + .json."""
    import gymnasium as gym
    from conftest import SMALL_ENV_KWARGS

    import pf_envs
    from baselines.uniform import equal_value_policy
    from pf_envs.compressed import save_compressed

    kwargs = {**SMALL_ENV_KWARGS, "flops_budget": 0.5}
    env = gym.make(ENV, **kwargs)
    policy, _ = equal_value_policy(env.unwrapped)
    out = pf_envs.replay(ENV, kwargs, policy, env=env)
    path = tmp_path_factory.mktemp("compressed") / "r20_half.pt"
    save_compressed(out.model, path, env_id=ENV, env_kwargs=kwargs, policy=out.policy,
                    model_fingerprint=out.model_fingerprint)
    return out.model, path


def _export(argv):
    from pf_deploy.export import main

    return main([str(a) for a in argv])


def test_cli_exports_a_compressed_model(compressed, tmp_path, capsys):
    from pf_deploy.benchmark import read_manifest
    from pf_deploy.export import normalise
    from pf_envs import zoo

    model, path = compressed
    out = tmp_path / "bundle"
    assert _export([path, "--out", out, "--int8", "--ort-format", "--test-samples", 200, "--check-samples", 100,
                    "--calib-images", 64]) == 0
    manifest = read_manifest(out)  # validates the schema and that every file is there
    assert [m["name"] for m in manifest["models"]] == ["fp32", "int8", "fp32-ort", "int8-ort"]
    assert manifest["input"] == {"name": "input", "shape": [None, 3, 32, 32], "dtype": "float32", "layout": "NCHW"}
    assert manifest["calibration_images"] == 64 and manifest["checks"]["fp32_vs_torch"]["max_abs"] < ox.FP32_ATOL
    src = manifest["source"]
    record = json.loads(path.with_suffix(".json").read_text())
    assert src["env_id"] == ENV and src["policy"] == record["policy"] and src["file"] == str(path)
    assert src["state_sha1"] == record["state_sha1"] and src["model_fingerprint"] == record["model_fingerprint"]
    assert len(src["record_sha1"]) == 16
    dense = zoo.load("resnet20")
    fp32 = manifest["models"][0]
    assert fp32["params"] == sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())
    dense_onnx = ox.export_onnx(dense, tmp_path / "dense.onnx")
    assert fp32["size_bytes"] < 0.75 * dense_onnx.stat().st_size  # a physically smaller graph
    # The benchmark's path: test.npz + the manifest's preprocessing reproduce every accuracy.
    data = np.load(out / manifest["test_data"])
    assert data["images"].dtype == np.uint8 and data["images"].shape == (200, 32, 32, 3)
    assert data["labels"].dtype == np.int64
    pre = manifest["preprocess"]
    x = normalise(data["images"], pre["mean"], pre["std"])
    for m in manifest["models"]:
        n = m["test_images"]
        assert n == (200 if m["name"] in ("fp32", "int8") else 100)  # --check-samples for the .ort files
        logits = ox.run_logits(ox.session(out / m["file"]), x[:n])
        assert (logits.argmax(1) == data["labels"][:n]).mean() == pytest.approx(m["test_accuracy"])
    int8, checks = manifest["models"][1], manifest["checks"]
    assert int8["test_images_exact"] == 100
    assert abs(int8["test_accuracy_exact"] - checks["fp32_accuracy_on_exact_images"]) <= 0.03  # int8 arithmetic
    assert checks["int8_drop_points_exact"] == pytest.approx(
        100 * (checks["fp32_accuracy_on_exact_images"] - int8["test_accuracy_exact"]))
    assert manifest["quantization"]["target"] == "arm" and manifest["quantization"]["reduce_range"] is False
    assert not list(tmp_path.glob(".*tmp*"))  # the staging folder is gone


def test_cli_bad_inputs_are_clear_errors(compressed, tmp_path, capsys):
    _, path = compressed
    out = tmp_path / "o"

    def fails(argv, match):
        assert _export([*argv, "--out", out, "--test-samples", 0]) == 2
        err = capsys.readouterr().err
        assert match in err, err
        assert not out.exists() and not list(tmp_path.glob(".*tmp*"))  # nothing half-written

    fails([tmp_path / "none.pt"], "does not exist")
    fails(["no_such_model"], "neither a compressed-model file")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:200])
    (tmp_path / "bad.json").write_text(path.with_suffix(".json").read_text())
    fails([bad], "write it again")
    (tmp_path / "junk.pt").write_bytes(path.read_bytes())
    (tmp_path / "junk.json").write_text("{ not json")
    fails([tmp_path / "junk.pt"], "not a valid JSON record")
    other = json.loads(path.with_suffix(".json").read_text())
    other["model_fingerprint"] = "0" * 16  # a record made from another base model
    (tmp_path / "other.pt").write_bytes(path.read_bytes())
    (tmp_path / "other.json").write_text(json.dumps(other))
    fails([tmp_path / "other.pt"], "fingerprint")
    fails(["resnet20", "--imagenet-twin"], "no ImageNet-shaped variant")


def test_a_checkpoint_with_nan_weights_says_they_are_not_finite(compressed, tmp_path, capsys):
    import copy

    import torch

    from pf_envs.compressed import save_compressed

    model, path = compressed
    record = json.loads(path.with_suffix(".json").read_text())
    broken = copy.deepcopy(model)
    name, weight = next((n, p) for n, p in broken.named_parameters() if p.ndim == 4)
    with torch.no_grad():
        weight[0, 0, 0, 0] = float("nan")
    nan_file = tmp_path / "nan.pt"
    save_compressed(broken, nan_file, env_id=record["env_id"], env_kwargs=record["env_kwargs"],
                    policy=record["policy"], model_fingerprint=record["model_fingerprint"])
    assert _export([nan_file, "--out", tmp_path / "o", "--test-samples", 0]) == 2
    err = capsys.readouterr().err
    assert "weights are not finite" in err and name in err and "report it" not in err, err
    assert not (tmp_path / "o").exists()


def test_manifest_schema_is_checked(tmp_path):
    from pf_deploy.benchmark import ManifestError, read_manifest, validate_manifest

    good = {
        "format": "pocketflow-gym/deploy-manifest/1",
        "models": [{"name": "fp32", "file": "model.onnx", "precision": "fp32", "macs": 1, "params": 1,
                    "size_bytes": 1, "test_accuracy": None, "test_images": None}],
        "input": {"name": "input", "shape": [None, 3, 224, 224], "dtype": "float32", "layout": "NCHW"},
        "preprocess": {"scale": 1 / 255, "mean": [0.0] * 3, "std": [1.0] * 3},
        "class_names": ["a"], "test_data": None, "source": {},
    }
    validate_manifest(good)
    for key, value, match in [("format", "x", "format"), ("models", [], "models"),
                              ("input", {**good["input"], "shape": [1, 3, 2, 2]}, "input.shape"),
                              ("preprocess", {"scale": 1}, "preprocess")]:
        with pytest.raises(ManifestError, match=match):
            validate_manifest({**good, key: value})
    with pytest.raises(ManifestError, match="precision"):
        validate_manifest({**good, "models": [{**good["models"][0], "precision": "int4"}]})
    with pytest.raises(ManifestError, match="relative"):
        validate_manifest({**good, "models": [{**good["models"][0], "file": "../x.onnx"}]})
    with pytest.raises(ManifestError, match="missing"):
        validate_manifest(good, tmp_path)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path)


def test_a_manifest_naming_a_file_outside_its_folder_is_refused(tmp_path):
    """docs/export.md: a manifest's paths are relative to its folder; '..', an absolute path, or
    a symbolic link out of the folder are refused, for the models and for test_data."""
    from pf_deploy.benchmark import ManifestError as BundleError
    from pf_deploy.benchmark import validate_manifest

    bundle, elsewhere = tmp_path / "bundle", tmp_path / "elsewhere"
    bundle.mkdir()
    elsewhere.mkdir()
    (elsewhere / "model.onnx").write_bytes(b"x")
    (elsewhere / "test.npz").write_bytes(b"x")
    (bundle / "model.onnx").symlink_to(elsewhere / "model.onnx")
    (bundle / "test.npz").symlink_to(elsewhere / "test.npz")
    good = {
        "format": "pocketflow-gym/deploy-manifest/1",
        "models": [{"name": "fp32", "file": "model.onnx", "precision": "fp32", "macs": 1, "params": 1,
                    "size_bytes": 1, "test_accuracy": None, "test_images": None}],
        "input": {"name": "input", "shape": [None, 3, 32, 32], "dtype": "float32", "layout": "NCHW"},
        "preprocess": {"scale": 1 / 255, "mean": [0.0] * 3, "std": [1.0] * 3},
        "class_names": ["a"], "test_data": None, "source": {},
    }
    for name in ("model.onnx", "../elsewhere/model.onnx", str(elsewhere / "model.onnx")):
        with pytest.raises(BundleError, match="points outside its folder"):
            validate_manifest({**good, "models": [{**good["models"][0], "file": name}]}, bundle)
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").write_bytes(b"x")
    validate_manifest(good, bundle)
    for name in ("test.npz", "../elsewhere/test.npz"):
        with pytest.raises(BundleError, match="'test_data' .* points outside its folder"):
            validate_manifest({**good, "test_data": name}, bundle)


def test_imagenet_twin_takes_the_channel_counts():
    from learners.channel_match import channel_counts, match_channels
    from learners.coupling import coupled_groups, remove_channels
    from pf_envs import zoo

    torch.manual_seed(0)
    cifar = zoo.create_model("mobilenet_v1").eval()
    groups = coupled_groups(cifar, torch.zeros(1, 3, 32, 32), ignored=["classifier"])
    remove_channels(cifar, [(g, range(g.channels // 2 + 8 * (i % 3), g.channels)) for i, g in enumerate(groups)])
    twin = match_channels(zoo.create_model("mobilenet_v1", "imagenet"), cifar, keep_outputs=("classifier",))
    ref, got = channel_counts(cifar), channel_counts(twin)
    assert {k: v for k, v in got.items() if k != "classifier"} == {k: v for k, v in ref.items() if k != "classifier"}
    assert got["classifier"] == (ref["classifier"][0], 1000)
    assert twin(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    with pytest.raises(ValueError, match="not the same architecture"):
        match_channels(zoo.create_model("mobilenet_v1", "imagenet"), zoo.create_model("resnet20"))


def test_mobilenet_v2_twin_pairs_its_differently_named_layers_in_order():
    """The zoo's CIFAR MobileNet-V2 and torchvision's ImageNet one name their modules
    differently: the twin pairs their layers in definition order (kind, kernel, depthwise
    checked) and takes a pruned model's counts; another architecture is still refused."""
    from learners.channel_match import channel_counts, match_channels, positional_counts
    from learners.coupling import coupled_groups, remove_channels
    from pf_envs import zoo
    from pf_envs.zoo.twin import imagenet_twin_of

    torch.manual_seed(0)
    cifar = zoo.create_model("mobilenet_v2").eval()
    groups = coupled_groups(cifar, torch.zeros(1, 3, 32, 32), ignored=["classifier"])
    remove_channels(cifar, [(g, range(g.channels // 2, g.channels)) for g in groups[:6]])
    twin = imagenet_twin_of(cifar, "mobilenet_v2")
    ref, got = list(channel_counts(cifar).values()), list(channel_counts(twin).values())
    assert got[:-1] == ref[:-1] and got[-1] == (ref[-1][0], 1000)
    assert twin(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    with pytest.raises(ValueError, match="not the same architecture"):
        positional_counts(zoo.create_model("mobilenet_v2", "imagenet"), zoo.create_model("mobilenet_v1"))
    with pytest.raises(ValueError, match="not the same architecture"):
        match_channels(zoo.create_model("mobilenet_v2", "imagenet"), cifar)  # by name: refused


def test_a_searched_mixed_precision_policy_is_exported_as_searched(tmp_path):
    """``int8_precisions`` (PruneQuant, QuantORT policies): the int8 model quantizes exactly the
    layers the policy made int8, with the quantizer options the search used; a policy that keeps
    every layer fp32 writes no int8 model; precisions of another architecture are refused."""
    from pf_deploy.export import BundleError, write_bundle
    from pf_envs import zoo

    model = zoo.load("resnet20").eval()
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    precisions = {name: ("int8" if i % 3 else "fp32") for i, name in enumerate(layers)}
    rng = np.random.default_rng(0)

    def calibration():
        return iter([rng.standard_normal((8, 3, 32, 32)).astype(np.float32)])

    options = {"activation_type": "uint8", "reduce_range": True, "per_channel": True}
    kw = dict(input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, class_names=[str(i) for i in range(10)], macs=1,
              calibration=calibration, log=lambda _m: None)
    manifest = write_bundle(model, tmp_path / "mixed", int8_precisions=precisions, int8_options=options, **kw)
    by_node = oq.node_precisions(tmp_path / "mixed" / "model.int8.onnx")
    node_of = layer_nodes(model, tmp_path / "mixed" / "model.onnx")
    assert {name: by_node[node_of[name]] for name in layers} == precisions  # each layer as the policy chose
    q = manifest["quantization"]
    assert q["mixed"] is True and q["precisions"] == precisions and q["target"] == "x86"
    assert q["activation_type"] == "uint8" and q["reduce_range"] is True
    assert [m["name"] for m in manifest["models"]] == ["fp32", "int8"]

    fp32_only = write_bundle(model, tmp_path / "fp32", int8_precisions=dict.fromkeys(layers, "fp32"), **kw)
    assert [m["name"] for m in fp32_only["models"]] == ["fp32"] and fp32_only["quantization"] is None
    with pytest.raises(BundleError, match="another architecture"):
        write_bundle(model, tmp_path / "bad", int8_precisions={"conv9": "int8"}, **kw)
    with pytest.raises(BundleError, match="'int8' or 'fp32'"):
        write_bundle(model, tmp_path / "bad", int8_precisions={layers[0]: "int4"}, **kw)
    with pytest.raises(BundleError, match="int8_options"):
        write_bundle(model, tmp_path / "bad", int8_options={"symmetric": True}, **kw)
    assert not (tmp_path / "bad").exists()
