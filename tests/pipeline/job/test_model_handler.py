"""pipeline.job.model_handler: the model config, weights staging, and the RunInference adapter."""

from __future__ import annotations

import inspect

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import ModelHandler

from pipeline import ConfigError
from pipeline.job.model_handler import BEAM_HANDLER_TAKES_SHARING, ModelConfig, VGG16ModelHandler
from pipeline.job.options import job_parser
from pipeline.storage import InputError, stage_weights
from tests.pipeline.faults import faulty


def test_config_is_validated_where_it_is_made():
    with pytest.raises(ConfigError, match="--precision must be one of .*Received: 'float64'"):
        ModelConfig("w.npz", precision="float64")
    with pytest.raises(ConfigError, match="Received: min_batch_size=9, max_batch_size=8"):
        ModelConfig("w.npz", min_batch_size=9, max_batch_size=8)
    with pytest.raises(
        ConfigError, match=r"^--batch_size \(max_batch_size\) must be at least 1.*Received: 0$"
    ):
        ModelConfig("w.npz", min_batch_size=1, max_batch_size=0)
    with pytest.raises(ConfigError, match="^no weights: pass --weights FILE"):
        ModelConfig("")
    with pytest.raises(ConfigError, match=r"^--conv_batch must be at least 1.*Received: 0$"):
        ModelConfig("w.npz", conv_batch=0)
    with pytest.raises(ConfigError, match=r"^--conv_batch cannot be combined with --jit"):
        ModelConfig("w.npz", conv_batch=2, jit=True)
    assert issubclass(ConfigError, ValueError)  # what a Python caller may catch


def test_config_from_args_fills_in_full_batches():
    args = job_parser().parse_known_args(
        ["--weights", "w.npz", "--batch_size", "8", "--precision", "float16"]
    )[0]
    assert args.min_batch_size is None  # not given: full batches of --batch_size
    assert ModelConfig.from_args(args, sha256="ab" * 32) == ModelConfig(
        "w.npz", sha256="ab" * 32, precision="float16", min_batch_size=8, max_batch_size=8
    )
    args.min_batch_size = 2
    assert ModelConfig.from_args(args).min_batch_size == 2
    assert ModelConfig.from_args(args).conv_batch is None  # the device's default
    args.conv_batch = 4
    assert ModelConfig.from_args(args).conv_batch == 4
    args.batch_size = 0
    with pytest.raises(ConfigError, match="--batch_size"):
        ModelConfig.from_args(args)


@pytest.mark.parametrize(("conv_batch", "want"), [(None, "auto"), (3, 3)])
def test_the_loaded_model_gets_the_config(monkeypatch, tmp_path, conv_batch, want):
    import vgg.inference

    made = {}

    def fake_predictor(weights, **kwargs):
        made.update(kwargs, weights=weights)
        return "model"

    monkeypatch.setattr(vgg.inference, "Predictor", fake_predictor)
    weights = tmp_path / "w.npz"
    weights.write_bytes(b"")
    config = ModelConfig(str(weights), precision="bfloat16", max_batch_size=8, conv_batch=conv_batch)
    assert VGG16ModelHandler(config).load_model() == "model"
    assert made["conv_batch"] == want
    assert (made["precision"], made["max_batch_size"]) == ("bfloat16", 8)


@pytest.mark.beam_version
def test_batching_and_sharing_reach_beam():
    handler = VGG16ModelHandler(ModelConfig("w.npz", min_batch_size=16, max_batch_size=16, share_model=True))
    assert dict(handler.batch_elements_kwargs()) == {"min_batch_size": 16, "max_batch_size": 16}
    assert handler.share_model_across_processes()  # Beam's large_model: one copy per machine
    assert handler.model_copies() == 1
    alone = VGG16ModelHandler(ModelConfig("w.npz"))
    assert not alone.share_model_across_processes()  # one copy per SDK process
    assert alone.model_copies() == 1
    assert handler.get_metrics_namespace() == "vgg16"


@pytest.mark.beam_version
def test_model_copies_are_shared_copies_per_machine():
    handler = VGG16ModelHandler(ModelConfig("w.npz", model_copies=3))
    # Beam loads this many copies per machine, each in a shared process the SDK processes
    # send their batches to (with or without --share_model).
    assert (handler.share_model_across_processes(), handler.model_copies()) == (True, 3)
    both = VGG16ModelHandler(ModelConfig("w.npz", share_model=True, model_copies=2))
    assert (both.share_model_across_processes(), both.model_copies()) == (True, 2)
    with pytest.raises(ConfigError, match=r"^--model_copies must be at least 1.*Received: 0$"):
        ModelConfig("w.npz", model_copies=0)


@pytest.mark.beam_version
def test_newer_beam_gets_the_sharing_as_arguments_and_2_62_from_the_methods():
    # Where Beam's ModelHandler takes large_model/model_copies, Beam's own methods answer
    # (the handler overrides none of them); only 2.62 needs the handler's overrides.
    takes = "model_copies" in inspect.signature(ModelHandler.__init__).parameters
    assert BEAM_HANDLER_TAKES_SHARING is takes
    # The two ends of setup.py's range, both run by ./run_tests.sh (.venv and .venv-flink).
    if beam.__version__ == "2.62.0":
        assert not takes
    if int(beam.__version__.split(".")[1]) >= 77:
        assert takes
    asked = {"batch_elements_kwargs", "share_model_across_processes", "model_copies"}
    assert asked & set(vars(VGG16ModelHandler)) == (set() if takes else asked)


def test_run_inference_is_the_predictor_per_image(predictor, photo_batch):
    handler = VGG16ModelHandler(ModelConfig("unused.npz"))
    results = handler.run_inference(list(photo_batch), predictor)
    probs, fc7 = predictor(photo_batch)
    assert len(results) == len(photo_batch)
    for i, result in enumerate(results):
        assert result.example is None  # the pixels are not kept in the result
        np.testing.assert_array_equal(result.inference[0], probs[i])
        np.testing.assert_array_equal(result.inference[1], fc7[i])
    assert handler.get_num_bytes(list(photo_batch)) == photo_batch.nbytes


def test_remote_weights_are_staged_once_per_process(tmp_path):
    weights = tmp_path / "w.npz"
    weights.write_bytes(b"weights")
    assert stage_weights(str(weights)) == str(weights)  # local: used in place
    assert stage_weights("file://" + str(weights)) == str(weights)
    assert stage_weights("imagenet") == "imagenet"
    local = stage_weights(faulty(weights))  # any other scheme is copied to a temp dir once
    assert local != str(weights) and open(local, "rb").read() == b"weights"
    assert stage_weights(faulty(weights)) == local
    with pytest.raises(InputError, match="--weights 'faulty://.*missing.npz' cannot be read"):
        stage_weights(faulty(tmp_path / "missing.npz"))


def test_beam_keeps_its_memory_metric_without_torch():
    # pipeline.job.model_handler restores the stdlib `resource` that Beam drops when torch
    # is missing, so RunInference reports the model's memory instead of a bogus warning.
    import resource

    from apache_beam.ml.inference import base

    import pipeline.job.model_handler  # noqa: F401

    assert base.resource is resource


def test_a_worker_warns_when_its_device_lacks_the_precision(monkeypatch, caplog):
    import vgg.inference

    def fake_predictor(weights, **kwargs):
        loaded.append(kwargs["precision"])
        return "model"

    def fake_warning(precision):
        return None if precision == "float32" else f"--precision {precision} is emulated on this CPU"

    loaded = []
    monkeypatch.setattr(vgg.inference, "Predictor", fake_predictor)
    monkeypatch.setattr("pipeline.job.model_handler.precision_warning", fake_warning)
    with caplog.at_level("WARNING", logger="pipeline.job.model_handler"):
        assert VGG16ModelHandler(ModelConfig("w.npz", precision="bfloat16")).load_model() == "model"
        VGG16ModelHandler(ModelConfig("w.npz")).load_model()
    assert [r.getMessage() for r in caplog.records] == ["--precision bfloat16 is emulated on this CPU"]
    assert loaded == ["bfloat16", "float32"]
