"""HTTP API of the supervisor: health, readiness, stream status, counts, config, reload, metrics, live preview."""
