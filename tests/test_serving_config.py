"""The TF Serving deployment files: models.config, batching, compose."""

import os
import re

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

SERVING = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "efficientlab_tf", "export", "serving")
# BatchingParameters fields (tensorflow_serving/servables/tensorflow/
# session_bundle_config.proto); the wrapped ones are written `{ value: N }`.
WRAPPED = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
           "num_batch_threads", "thread_pool_name"}
PLAIN = {"allowed_batch_sizes", "pad_variable_length_inputs",
         "enable_large_batch_splitting"}


def test_models_config_has_a_version_policy_and_labels():
    with open(os.path.join(SERVING, "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "efficientlab"
    assert model.base_path == "/models/efficientlab"
    assert list(model.model_version_policy.specific.versions) == [1, 2]
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}


def test_batching_parameters_are_valid_and_consistent():
    fields = {}
    with open(os.path.join(SERVING, "batching_parameters.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if not line:
                continue
            wrapped = re.fullmatch(r"(\w+) \{ value: (\d+) \}", line)
            plain = re.fullmatch(r"(\w+): (\w+)", line)
            assert wrapped or plain, line
            if wrapped:
                assert wrapped.group(1) in WRAPPED, line
                fields[wrapped.group(1)] = int(wrapped.group(2))
            else:
                assert plain.group(1) in PLAIN, line
                fields.setdefault(plain.group(1), []).append(plain.group(2))
    sizes = [int(s) for s in fields["allowed_batch_sizes"]]
    assert sizes == sorted(sizes) and sizes[-1] == fields["max_batch_size"]
    assert fields["batch_timeout_micros"] > 0 and fields["num_batch_threads"] > 0


def test_compose_wires_batching_and_the_config():
    with open(os.path.join(SERVING, "docker-compose.yml")) as f:
        compose = f.read()
    for needed in ("--enable_batching",
                   "--batching_parameters_file=/config/batching_parameters.txt",
                   "./batching_parameters.txt:/config/batching_parameters.txt",
                   "--model_config_file=/config/models.config"):
        assert needed in compose, needed
