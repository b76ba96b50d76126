"""Inference process for one model: batches frames across streams, runs ONNX Runtime, sends detections."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from streamd.errors import RingError
from streamd.infer.batcher import BatchItem, Batcher
from streamd.infer.model import load_model
from streamd.infer.postprocess import PostprocessParams, finish
from streamd.infer.preprocess import letterbox_into, to_tensor
from streamd.ipc import sockets
from streamd.ipc.messages import (Detections, FrameReady, Reconfigure, StreamCounters, StreamEnd, StreamRemoved, encoder,
                                  pipeline_decoder)
from streamd.ipc.ring import FrameRing
from streamd.runtime.histogram import BATCH_SIZE_BUCKETS, Histogram
from streamd.runtime.params import InferenceParams, expect, params_from_json
from streamd.runtime.stage import EXIT_OK, Stage


@dataclass
class _StreamState:
    ring: FrameRing
    pipeline: str
    inferred: int = 0
    overwritten: int = 0
    end_seq: int | None = None  # set when the decoder reported the end of a finite source


class InferenceStage(Stage):
    """params: InferenceParams (streamd/runtime/params.py); thresholds per pipeline can change live."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        p = self.inference_params = expect(self.spec.params, InferenceParams)
        cfg = p.inference
        self.model = load_model(p.model, p.adapter, p.input_size, p.labels, cfg.providers,
                                cfg.intra_op_threads, cfg.inter_op_threads, cfg.spin, p.preprocess)
        self.model.warm_up()
        self.batcher = Batcher(cfg.max_batch, cfg.max_wait_ms / 1000.0)
        self.frames_in = sockets.pull(self.ctx, self.spec.endpoints.inference(p.model_key), hwm=10_000)
        self.detections_out = sockets.push(self.ctx, self.spec.endpoints.analytics, hwm=1000)
        h, w = self.model.input_hw
        self._pixels = np.zeros((cfg.max_batch, h, w, 3), self.model.adapter.preprocess.pixel_dtype)
        self._tensor = np.zeros((cfg.max_batch, 3, h, w), np.float32)
        self.streams: dict[str, _StreamState] = {}
        self._retired: deque[str] = deque(maxlen=64)  # rings removed by reloads
        self.batches = 0
        self._batch_sizes: deque[int] = deque(maxlen=200)
        self._infer_ms: deque[float] = deque(maxlen=200)
        self._infer_hist = Histogram()
        self._batch_hist = Histogram(BATCH_SIZE_BUCKETS)
        self.log.info("inference_ready", model=p.model, adapter=self.model.adapter.name,
                      input=list(self.model.input_hw), providers=self.model.providers,
                      static_batch=self.model.info.static_batch, classes=len(self.model.names))
        if cfg.max_batch > 1 and self.model.info.metadata.get("streamd_precision") == "int8-dynamic":
            # Dynamic quantisation picks one activation scale per tensor, batch included: a stream's detections
            # would shift with whatever other streams share its batch.
            self.log.warning("batch_dependent_model", model=p.model, max_batch=cfg.max_batch,
                             fix="use the static INT8 (QDQ) or FP16 variant, or inference.max_batch: 1")

    def counters(self) -> dict[str, StreamCounters]:
        return {
            name: StreamCounters(frames_inferred=s.inferred, dropped_stale=self.batcher.dropped.get(name, 0),
                                 dropped_overwritten=s.overwritten)
            for name, s in self.streams.items()
        }

    def heartbeat_extra(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "mean_batch_size": float(np.mean(self._batch_sizes)) if self._batch_sizes else 0.0,
            "infer_ms_p50": float(np.median(self._infer_ms)) if self._infer_ms else 0.0,
            "infer_hist": self._infer_hist.snapshot(),
            "batch_hist": self._batch_hist.snapshot(),
        }

    def run(self) -> int:
        poller = zmq.Poller()
        poller.register(self.frames_in, zmq.POLLIN)
        while True:
            stopping = self.stop.is_set()
            wait = self.batcher.seconds_until_due(time.monotonic())
            timeout_ms = 0 if stopping else (500 if wait is None else int(wait * 1000))
            if poller.poll(timeout_ms):
                self._drain_inbox()
            now = time.monotonic()
            due = self.batcher.seconds_until_due(now)
            if due is not None and (due <= 0 or stopping):
                self._run_batch(self.batcher.take(now))
            self._forward_ends()
            self.beat()
            if stopping and self.batcher.pending_streams() == 0 and not self._inbox_has_data():
                return EXIT_OK

    def _inbox_has_data(self) -> bool:
        return bool(self.frames_in.poll(0, zmq.POLLIN))

    def _drain_inbox(self) -> None:
        now = time.monotonic()
        while True:
            try:
                raw = self.frames_in.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = pipeline_decoder.decode(raw)
            if isinstance(msg, FrameReady):
                if msg.pipeline not in self.inference_params.postprocess:
                    continue  # not ours yet: the frame stays in the ring until a Reconfigure names its pipeline
                state = self._stream(msg.stream, msg.ring, msg.pipeline)
                if state is not None:
                    # A stream new to this process starts after what the previous process released.
                    self.batcher.offer(msg.stream, msg.seq, msg.realtime, now, first_unseen=state.ring.released_seq + 1)
            elif isinstance(msg, StreamEnd):
                state = self._stream(msg.stream, msg.ring, None)
                if state is not None:
                    state.end_seq = msg.last_seq
                    self.batcher.offer(msg.stream, msg.last_seq, None, now, first_unseen=state.ring.released_seq + 1)
            elif isinstance(msg, StreamRemoved):
                self._remove(msg)
            elif isinstance(msg, Reconfigure):
                self._reconfigure(msg)

    def _reconfigure(self, msg: Reconfigure) -> None:
        params = params_from_json(InferenceParams, msg.params)
        if params.model_key != self.inference_params.model_key:
            self.log.error("reconfigure_refused", reason="parameters of another model", model_key=params.model_key)
            return
        if params != self.inference_params:
            self.params = self.inference_params = params
            self.log.info("reconfigured", pipelines=sorted(params.postprocess), config_hash=self.config_hash())

    def _remove(self, msg: StreamRemoved) -> None:
        """A reload removed or restarted the stream: let go of its ring (the supervisor unlinks it) and tell
        analytics. A newer ring of the same stream is left alone."""
        self._retired.append(msg.ring)
        state = self.streams.get(msg.stream)
        if state is not None and state.ring.name == msg.ring:
            state.ring.close()
            self.batcher.forget(msg.stream)
            del self.streams[msg.stream]
        self._send(encoder.encode(msg))

    def _stream(self, name: str, ring_name: str, pipeline: str | None) -> _StreamState | None:
        if ring_name in self._retired:
            return None  # a late message about a ring a reload already removed
        state = self.streams.get(name)
        if state is not None and state.ring.name == ring_name:
            if pipeline is not None:
                state.pipeline = pipeline
            return state
        if state is not None:  # the stream was recreated with a new ring
            state.ring.close()
            self.batcher.forget(name)
        try:
            ring = FrameRing.attach(ring_name)
        except RingError as exc:
            self.log.warning("ring_unavailable", stream=name, error=str(exc))
            return None
        state = _StreamState(ring=ring, pipeline=pipeline or "")
        self.streams[name] = state
        return state

    def _run_batch(self, batch: list[BatchItem]) -> None:
        t_batched = time.monotonic_ns()
        metas: list[Any] = []
        transforms: list[Any] = []
        items: list[BatchItem] = []
        for item in batch:
            state = self.streams[item.stream]
            found = state.ring.read(item.seq)
            if found is None:
                state.overwritten += 1
                continue
            meta, pixels = found
            i = len(items)
            transform = letterbox_into(pixels, self._pixels[i], self.model.adapter.preprocess)
            if not state.ring.still_valid(item.seq):  # overwritten while we resized it
                state.overwritten += 1
                continue
            metas.append(meta)
            transforms.append(transform)
            items.append(item)
        if not items:
            return
        n = len(items)
        tensor = to_tensor(self._pixels[:n], self.model.adapter.preprocess, self._tensor[:n])
        t0 = time.perf_counter()
        outputs = self.model.run(tensor)
        infer_ms = (time.perf_counter() - t0) * 1000
        self._infer_ms.append(infer_ms)
        self._infer_hist.observe(infer_ms)
        self.batches += 1
        self._batch_sizes.append(n)
        self._batch_hist.observe(n)
        for i, (item, meta, transform) in enumerate(zip(items, metas, transforms)):
            state = self.streams[item.stream]
            params = self.inference_params.postprocess.get(state.pipeline, PostprocessParams())
            dets = finish(self.model.adapter.decode(outputs, i, params.confidence), params, transform,
                          meta.width, meta.height)
            msg = Detections(
                stream=item.stream, pipeline=state.pipeline, seq=item.seq, frame_index=meta.frame_index,
                pts_s=meta.pts_s, wall_ts=meta.wall_ts, width=meta.width, height=meta.height,
                xyxy=dets.xyxy.astype("<f4").tobytes(), confidence=dets.confidence.astype("<f4").tobytes(),
                class_id=dets.class_id.astype("<i4").tobytes(), batch_size=n, t_decoded_ns=meta.t_decoded_ns,
                t_batched_ns=t_batched, t_inferred_ns=time.monotonic_ns(), ring=state.ring.name,
            )
            self._send(encoder.encode(msg))
            state.ring.release(item.seq)  # only once the result is on its way: a crash before replays it
            state.inferred += 1

    def _send(self, payload: bytes) -> None:
        """Blocking send (back-pressure from analytics) that keeps heartbeating while it waits."""
        while True:
            try:
                self.detections_out.send(payload, zmq.NOBLOCK)
                return
            except zmq.Again:
                self.detections_out.poll(500, zmq.POLLOUT)
                self.beat()

    def _forward_ends(self) -> None:
        for name, state in self.streams.items():
            if state.end_seq is not None and not self.batcher.has_pending(name) \
                    and self.batcher.next_seq(name) > state.end_seq:
                self._send(encoder.encode(StreamEnd(stream=name, ring=state.ring.name, last_seq=state.end_seq)))
                state.end_seq = None
