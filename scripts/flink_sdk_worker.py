"""Beam's PROCESS-environment boot for the local Flink cluster: one Python SDK harness per call.

A TaskManager runs `scripts/flink_sdk_worker.sh --id=ID --provision_endpoint=HOST:PORT`
(through `--environment_type=PROCESS`) when it needs an SDK harness, as it would start the
SDK container under `DOCKER`. Like the container's boot program, this asks the provision
service for the job's options and the control and logging endpoints, then becomes
`python -m apache_beam.runners.worker.sdk_worker_main`, so the harness is the
TaskManager's child and its log lines go to that TaskManager's log. Nothing is installed:
the Python that runs this already has the project and Beam (docs/flink.md).
"""

from __future__ import annotations

import os
import sys
import tempfile

import grpc
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc
from google.protobuf import json_format, text_format


def _flag(argv: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"--{name}=")]
    if not values:
        sys.exit(f"error: {os.path.basename(sys.argv[0])} needs --{name}=...; received: {' '.join(argv)}")
    return values[-1]


def main(argv: list[str]) -> None:
    worker_id, endpoint = _flag(argv, "id"), _flag(argv, "provision_endpoint")
    with grpc.insecure_channel(endpoint) as channel:
        info = (
            beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
            .GetProvisionInfo(
                beam_provision_api_pb2.GetProvisionInfoRequest(),
                metadata=[("worker_id", worker_id)],  # the provision service requires it
                timeout=60,
            )
            .info
        )
    env = dict(
        os.environ,
        WORKER_ID=worker_id,
        PIPELINE_OPTIONS=json_format.MessageToJson(info.pipeline_options),
        CONTROL_API_SERVICE_DESCRIPTOR=text_format.MessageToString(info.control_endpoint),
        LOGGING_API_SERVICE_DESCRIPTOR=text_format.MessageToString(info.logging_endpoint),
        RUNNER_CAPABILITIES=" ".join(info.runner_capabilities),
        SEMI_PERSISTENT_DIRECTORY=tempfile.gettempdir(),
    )
    if info.HasField("status_endpoint"):
        env["STATUS_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(info.status_endpoint)
    command = [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"]
    os.execve(sys.executable, command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
