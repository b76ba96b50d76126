"""Evidence for every count: snapshots, crops and clips of line crossings and zone events.

Consumers of frames and events beside analytics, never on its hot path:

* :mod:`streamd.evidence.writer` is a sink in the sinks process (a broken disk degrades only evidence, through
  the sink guard): it copies the event's frame out of the shared-memory ring and writes files in a worker thread.
* :mod:`streamd.evidence.segments` is the decoder's packet hook: rolling MP4 segments of encoded packets, from
  which the writer remuxes each event's clip (no re-encoding).
* :mod:`streamd.evidence.index` is the SQLite index of what was written (event id -> files).
* :mod:`streamd.evidence.query` serves the API and the export from the count store joined with the index.
"""
