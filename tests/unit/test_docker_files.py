"""docker/: what can be checked without building: the compose file's references, the example config, pins."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from streamd.config.loader import load_config
from tests.conftest import REPO

DOCKER = REPO / "docker"


def test_compose_references_existing_files_and_sets_shm_healthcheck_restart() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    streamd = compose["services"]["streamd"]
    assert (DOCKER / streamd["build"]["context"] / streamd["build"]["dockerfile"]).is_file()
    assert streamd["shm_size"] and streamd["restart"] and streamd["init"] is True
    assert "/healthz" in " ".join(streamd["healthcheck"]["test"])
    for service in compose["services"].values():
        assert ":" in service["image"] and not service["image"].endswith(":latest"), "images must be pinned"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"compose mounts {source}, which is missing"


def test_dockerfiles_pin_bases_run_as_non_root_and_check_health() -> None:
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (DOCKER / name).read_text()
        bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.M)
        assert bases and all(re.search(r":\d+\.\d+\.\d+", b) for b in bases), f"{name}: base not pinned: {bases}"
        assert re.search(r"^USER streamd", text, re.M), f"{name} must not run as root"
        assert "HEALTHCHECK" in text and "/healthz" in text
    assert "onnxruntime-gpu==" in (DOCKER / "Dockerfile.gpu").read_text()


def test_dockerignore_keeps_the_build_context_to_the_package() -> None:
    lines = (REPO / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*" and "!streamd/" in lines and "!pyproject.toml" in lines


def test_example_config_validates(tmp_path: Path) -> None:
    text = (DOCKER / "config" / "streamd.yaml.example").read_text()
    model = REPO / "streamd" / "models" / "conveyor.onnx"
    text = text.replace("/models/model.onnx", str(model)).replace("/var/lib/streamd/", f"{tmp_path}/")
    (tmp_path / "streamd.yaml").write_text(text)
    token = "0123456789abcdef0123456789abcdef"
    config = load_config(tmp_path / "streamd.yaml", env={"STREAMD_API_TOKEN": token}).config
    assert {s.type for s in config.sinks} == {"jsonl", "mqtt"}
    assert config.api.host == "0.0.0.0" and config.api.token == token  # a container binds all with a token
