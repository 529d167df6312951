"""The shipped TF Serving deployment files: models.config and the compose file."""

import os

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tests import tf_serving_emulation as emulation

SERVING = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "efficientlab_tf", "export", "serving")


def test_models_config_has_a_version_policy_and_labels():
    with open(os.path.join(SERVING, "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    shipped_model, model = config.model_config_list.config
    # The shipped model, served as it is (issue 33): its newest version.
    assert shipped_model.name == "efficientlab_realfss62"
    assert shipped_model.base_path == "/models/efficientlab_realfss62"
    assert shipped_model.model_version_policy.WhichOneof("policy_choice") is None
    assert model.name == "efficientlab"
    assert model.base_path == "/models/efficientlab"
    assert list(model.model_version_policy.specific.versions) == [1, 2]
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}


def test_compose_serves_the_config_without_server_side_batching():
    """Issue 23: the model server's --enable_batching wraps every signature
    (few_shot included), so the shipped server must not turn it on; the
    batching is in the exported graph."""
    flags, volumes = emulation.read_compose(os.path.join(SERVING, "docker-compose.yml"))
    assert "enable_batching" not in flags
    assert "batching_parameters_file" not in flags
    assert flags["model_config_file"] == "/config/models.config"
    assert volumes["/config/models.config"] == os.path.join(SERVING, "models.config")
    root = os.path.dirname(os.path.dirname(os.path.dirname(SERVING)))
    assert volumes["/models"] == os.path.join(root, "saved_models")
    assert flags["allow_version_labels_for_unavailable_models"] is True
