from streamd.config.loader import LoadedConfig, load_config
from streamd.config.models import DaemonConfig, PipelineConfig, StreamConfig

__all__ = ["DaemonConfig", "LoadedConfig", "PipelineConfig", "StreamConfig", "load_config"]
