"""streamd.runtime.logging: every log line is redacted, including values nested in lists and dicts."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from streamd.runtime.logging import configure_logging, redact_value

SECRET = "Pa55@w/rd"
URL = f"rtsp://admin:{SECRET}@cam.local/live"


def test_nested_values_are_redacted_and_inputs_untouched() -> None:
    field = {"urls": [URL, (URL, {"deeper": URL})], URL: 1, "n": 3, "ok": True, "none": None, "set": {URL}}
    out = redact_value(field)
    assert SECRET not in json.dumps(out)
    assert out["n"] == 3 and out["ok"] is True and out["none"] is None
    assert field["urls"][0] == URL  # the caller's objects are not changed


def test_objects_whose_repr_shows_a_secret_are_replaced() -> None:
    class Source:
        def __repr__(self) -> str:
            return f"Source({URL})"

    assert SECRET not in str(redact_value(Source()))
    assert SECRET not in str(redact_value(ValueError(f"cannot open {URL}")))
    plain = object()
    assert redact_value(plain) is plain


@pytest.fixture
def reset_logging() -> Iterator[None]:
    """Back to structlog's defaults after the test: the capture's stderr it logged into closes with the test."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_log_lines_never_carry_the_secret(capsys: pytest.CaptureFixture[str], reset_logging: None) -> None:
    configure_logging("info", json=True, stage="test")  # in the test body: capsys's stream of the call phase
    log = structlog.get_logger("t")
    log.info("source_failed", url=URL, tried=[URL, f"https://h/x?api_key={SECRET}"], detail={"last": {"url": URL}})
    try:
        raise RuntimeError(f"open failed: {URL}")
    except RuntimeError:
        log.exception("crash")
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]
    assert [line["event"] for line in lines] == ["source_failed", "crash"]
    assert SECRET not in err and "w/rd" not in err, err
    assert lines[0]["tried"][0] == "rtsp://admin:***@cam.local/live"
