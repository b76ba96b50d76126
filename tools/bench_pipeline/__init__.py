"""Pipeline benchmark: streamd beside ultralytics' streaming API, a plain OpenCV/ORT/ByteTrack loop and the limits."""
