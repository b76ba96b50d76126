"""Camera health: cheap checks on a downscaled grey copy of a stream's frames (frozen, blackout, blur, moved,
detection starvation), each a plain class testable frame by frame (checks.py); the stage around them only reads
rings and sends events (stage.py); unhealthy intervals are recorded beside the counts (store.py)."""
