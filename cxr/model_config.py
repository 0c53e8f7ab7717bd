"""``config.pbtxt`` text <-> tritonclient's ModelConfig protobuf (written by :mod:`export.pbtxt`, read by the
in-process pipeline and the release tools). Not imported by the python models inside Triton."""
from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc


def render(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str) -> mc.ModelConfig:
    """Parse ``config.pbtxt`` text (raises ``text_format.ParseError`` on an invalid config)."""
    return text_format.Parse(text, mc.ModelConfig())
