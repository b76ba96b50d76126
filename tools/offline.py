"""Make ultralytics work with no network: no weight, font or package downloads, settings in the project."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def prepare_offline_ultralytics(config_dir: Path | None = None) -> Path:
    """Set the environment ultralytics reads at import; place a local font where it would fetch Arial.

    Call before importing ultralytics.
    """
    config_dir = config_dir or PROJECT / ".yolo"
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    fonts = config_dir / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    import matplotlib

    local_font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copyfile(local_font, fonts / name)
    return config_dir
