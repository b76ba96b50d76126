"""streamd: a real-time video analytics daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("streamd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
