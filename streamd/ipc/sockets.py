"""ZeroMQ endpoints and socket construction in one place (one zmq.Context per process)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import zmq

LINGER_MS = 2000  # on close, give queued messages this long to reach a live peer


@dataclass(frozen=True)
class Endpoints:
    """ipc:// endpoints of one daemon instance, all under its runtime directory."""

    runtime_dir: Path

    @property
    def control(self) -> str:
        return f"ipc://{self.runtime_dir}/control"

    def inference(self, model_key: str) -> str:
        return f"ipc://{self.runtime_dir}/infer-{model_key}"

    @property
    def analytics(self) -> str:
        return f"ipc://{self.runtime_dir}/analytics"

    @property
    def sinks(self) -> str:
        return f"ipc://{self.runtime_dir}/sinks"

    @property
    def health(self) -> str:
        """supervisor -> health stage: Reconfigure and HealthReset messages."""
        return f"ipc://{self.runtime_dir}/health"

    @property
    def preview(self) -> str:
        """analytics PUB -> API SUB: tracked frames for the live preview (dropped when nobody subscribes)."""
        return f"ipc://{self.runtime_dir}/preview"


def model_key(model_path: str) -> str:
    """Short stable id of a model file path, used to name its inference stage and endpoint."""
    return hashlib.sha1(model_path.encode()).hexdigest()[:10]


def pull(ctx: zmq.Context, endpoint: str, hwm: int) -> zmq.Socket:
    sock = ctx.socket(zmq.PULL)
    sock.set_hwm(hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock


def push(ctx: zmq.Context, endpoint: str, hwm: int) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.set_hwm(hwm)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.connect(endpoint)
    return sock


def publisher(ctx: zmq.Context, endpoint: str, hwm: int) -> zmq.Socket:
    sock = ctx.socket(zmq.PUB)
    sock.set_hwm(hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock
