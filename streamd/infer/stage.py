"""Inference process for one model: batches frames across streams, runs ONNX Runtime, sends detections.

The decoders prepare the model's input (FrameRing.request_model_input), so this process only stacks
tensors, runs the model and decodes its outputs. On the CPU up to two batches run at once in worker
threads (one intra-op thread each, see model.runner_plan); results leave in submission order. The batch
size is chosen at start from the model's measured cost per image (batcher.choose_batch)."""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import zmq

from streamd.errors import RingError
from streamd.infer.batcher import BatchItem, Batcher, choose_batch
from streamd.infer.model import image_ms, load_model, runner_plan
from streamd.infer.postprocess import PostprocessParams, finish
from streamd.infer.preprocess import (Transform, crop_into, model_input_request, prepares_in_decoder,
                                      to_tensor)
from streamd.ipc import sockets
from streamd.ipc.messages import (Detections, FrameReady, Reconfigure, StreamCounters, StreamEnd, StreamRemoved, encoder,
                                  pipeline_decoder)
from streamd.ipc.ring import FrameMeta, FrameRing
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
    model_gen: int = 0  # our model-input request in its ring (0: the decoder prepares nothing for us)


@dataclass
class _Batch:
    """A batch on its way through the model: which frames, which tensor buffer, when."""

    buffer: int
    t_batched_ns: int
    items: list[tuple[BatchItem, FrameMeta, Transform, str]] = field(default_factory=list)  # ..., ring name
    future: Future[tuple[list[np.ndarray], float]] | None = None
    outputs: list[np.ndarray] | None = None
    t0: float = 0.0
    t1: float = 0.0


class InferenceStage(Stage):
    """params: InferenceParams (streamd/runtime/params.py); thresholds per pipeline can change live."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        p = self.inference_params = expect(self.spec.params, InferenceParams)
        cfg = p.inference
        plan = runner_plan(cfg.providers, cfg.intra_op_threads, os.cpu_count())
        self.model = load_model(p.model, p.adapter, p.input_size, p.labels, cfg.providers,
                                plan.intra_op_threads, cfg.inter_op_threads, cfg.spin, p.preprocess)
        self.model.warm_up()
        self.workers = plan.workers if not self.model.uses_io_binding else 1
        self.image_ms = self._measure_batches(cfg.max_batch)
        self.max_batch = choose_batch(self.image_ms) if self.image_ms else cfg.max_batch
        self.batcher = Batcher(self.max_batch, cfg.max_wait_ms / 1000.0)
        self.frames_in = sockets.pull(self.ctx, self.spec.endpoints.inference(p.model_key), hwm=10_000)
        self.detections_out = sockets.push(self.ctx, self.spec.endpoints.analytics, hwm=1000)
        h, w = self.model.input_hw
        spec = self.model.adapter.preprocess
        self._request = model_input_request(spec, (h, w)) if prepares_in_decoder(spec) else None
        self._pixels = np.zeros((1, h, w, 3), spec.pixel_dtype)  # frames the decoder did not prepare
        self._tensors = [np.zeros((self.max_batch, 3, h, w), self.model.input_dtype) for _ in range(self.workers)]
        self._free = list(range(self.workers))  # tensor buffers not in flight
        self._inflight: deque[_Batch] = deque()  # submitted batches, oldest first: results leave in this order
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ort") if self.workers > 1 else None
        self._wake_r, self._wake_w = os.pipe()  # a worker finished a batch
        os.set_blocking(self._wake_r, False)
        self.prepared_by_decoder = 0
        self.prepared_here = 0
        self.streams: dict[str, _StreamState] = {}
        self._retired: deque[str] = deque(maxlen=64)  # rings removed by reloads
        self.batches = 0
        self._batch_sizes: deque[int] = deque(maxlen=200)
        self._infer_ms: deque[float] = deque(maxlen=200)
        self._infer_hist = Histogram()
        self._batch_hist = Histogram(BATCH_SIZE_BUCKETS)
        self.log.info("inference_ready", model=p.model, adapter=self.model.adapter.name,
                      input=list(self.model.input_hw), providers=self.model.providers,
                      static_batch=self.model.info.static_batch, classes=len(self.model.names),
                      intra_op_threads=plan.intra_op_threads, workers=self.workers, max_batch=self.max_batch,
                      image_ms={str(b): round(ms, 2) for b, ms in self.image_ms.items()},
                      decoder_prepares=self._request is not None)
        if cfg.max_batch > 1 and self.model.info.metadata.get("streamd_precision") == "int8-dynamic":
            # Dynamic quantisation picks one activation scale per tensor, batch included: a stream's detections
            # would shift with whatever other streams share its batch.
            self.log.warning("batch_dependent_model", model=p.model, max_batch=cfg.max_batch,
                             fix="use the static INT8 (QDQ) or FP16 variant, or inference.max_batch: 1")

    def _measure_batches(self, max_batch: int) -> dict[int, float]:
        """Milliseconds per image at batch 1, 2, 4, ... up to ``max_batch`` (a second of start-up at most), so
        the batcher batches only where batching pays on this machine and provider. A model with a fixed batch
        axis is not measured (it runs its own batch size)."""
        if max_batch <= 1 or self.model.info.static_batch is not None or self.model.info.unbatched:
            return {}
        sizes = sorted({b for b in (1, 2, 4, 8, 16, 32, 64) if b < max_batch} | {max_batch})
        costs: dict[int, float] = {}
        budget_end = time.monotonic() + 2.0
        for b in sizes:
            costs[b] = image_ms(self.model, b, runs=3)
            if time.monotonic() > budget_end:
                break
        return costs

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
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while True:
                stopping = self.stop.is_set()
                wait = self.batcher.seconds_until_due(time.monotonic()) if self._free else None
                timeout_ms = 0 if stopping and not self._inflight else (500 if wait is None else int(wait * 1000))
                if poller.poll(timeout_ms):
                    self._drain_inbox()
                self._complete_finished()
                now = time.monotonic()
                due = self.batcher.seconds_until_due(now)
                # a batch is taken only when a worker can run it: until then frames wait in the batcher, where a
                # live stream keeps only its newest frame (counted drops), never a queue in front of the model
                if self._free and due is not None and (due <= 0 or stopping):
                    self._submit(self.batcher.take(now))
                    self._complete_finished()
                self._forward_ends()
                self.beat()
                if stopping and not self._inflight and self.batcher.pending_streams() == 0 \
                        and not self._inbox_has_data():
                    return EXIT_OK
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

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
            self.beat(force=True)  # the supervisor starts the reload's new streams once it sees the new hash

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
        if self._request is not None and ring.model_input_fits(self._request.width, self._request.height):
            crop = self.inference_params.rois.get(state.pipeline)
            state.model_gen = ring.request_model_input(replace(self._request, crop=crop))
        self.streams[name] = state
        return state

    def _submit(self, batch: list[BatchItem]) -> None:
        """Copy the batch's frames into a free tensor buffer (the decoder's model-ready pixels, or letterboxed
        here when it had none) and start the model on it: in a worker thread, or inline with one worker."""
        t_batched = time.monotonic_ns()
        buffer = self._free[-1]
        tensor = self._tensors[buffer]
        spec = self.model.adapter.preprocess
        work = _Batch(buffer=buffer, t_batched_ns=t_batched)
        for item in batch:
            state = self.streams[item.stream]
            i = len(work.items)
            prepared = state.ring.read_model(item.seq, state.model_gen) if state.model_gen else None
            if prepared is not None:
                meta, view, (sx, sy, px, py) = prepared
                transform = Transform(sx, sy, px, py)
                to_tensor(view[None], spec, tensor[i : i + 1])
            else:
                found = state.ring.read(item.seq)
                if found is None:
                    state.overwritten += 1
                    continue
                meta, pixels = found
                transform = crop_into(pixels, self.inference_params.rois.get(state.pipeline), self._pixels[0], spec)
                to_tensor(self._pixels, spec, tensor[i : i + 1])
            if not state.ring.still_valid(item.seq):  # overwritten while we copied it
                state.overwritten += 1
                continue
            if prepared is not None:
                self.prepared_by_decoder += 1
            else:
                self.prepared_here += 1
            work.items.append((item, meta, transform, state.ring.name))
        if not work.items:
            return
        self._free.pop()
        for item, *_ in work.items:
            if self.batcher.is_realtime(item.stream):
                self.batcher.hold(item.stream)
        n = len(work.items)
        work.t0 = time.perf_counter()
        if self._pool is None:
            work.outputs = self.model.run(tensor[:n])
            work.t1 = time.perf_counter()
        else:
            work.future = self._pool.submit(self._run_model, tensor[:n])
            # wake the loop once the future is done (not merely once run() returned: the loop checks done())
            work.future.add_done_callback(lambda _: os.write(self._wake_w, b"x"))
        self._inflight.append(work)

    def _run_model(self, tensor: np.ndarray) -> tuple[list[np.ndarray], float]:
        return self.model.run(tensor), time.perf_counter()

    def _complete_finished(self) -> None:
        """Publish finished batches in the order they were submitted (per-stream frame order for tracking)."""
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass
        while self._inflight:
            work = self._inflight[0]
            if work.future is not None:
                if not work.future.done():
                    if not self.stop.is_set() or self._free:
                        return
                    work.future.result()  # stopping with every buffer in flight: wait for the oldest
                work.outputs, work.t1 = work.future.result()
            self._inflight.popleft()
            self._free.append(work.buffer)
            for item, *_ in work.items:
                self.batcher.unhold(item.stream)
            self._publish(work)

    def _publish(self, work: _Batch) -> None:
        outputs = work.outputs
        assert outputs is not None
        infer_ms = (work.t1 - work.t0) * 1000
        n = len(work.items)
        self._infer_ms.append(infer_ms)
        self._infer_hist.observe(infer_ms)
        self.batches += 1
        self._batch_sizes.append(n)
        self._batch_hist.observe(n)
        for i, (item, meta, transform, ring_name) in enumerate(work.items):
            state = self.streams.get(item.stream)
            if state is None or state.ring.name != ring_name:
                continue  # removed or recreated by a reload while its frame was in flight
            params = self.inference_params.postprocess.get(state.pipeline, PostprocessParams())
            dets = finish(self.model.adapter.decode(outputs, i, params.confidence), params, transform,
                          meta.width, meta.height)
            msg = Detections(
                stream=item.stream, pipeline=state.pipeline, seq=item.seq, frame_index=meta.frame_index,
                pts_s=meta.pts_s, wall_ts=meta.wall_ts, width=meta.width, height=meta.height,
                xyxy=dets.xyxy.astype("<f4").tobytes(), confidence=dets.confidence.astype("<f4").tobytes(),
                class_id=dets.class_id.astype("<i4").tobytes(), batch_size=n, t_decoded_ns=meta.t_decoded_ns,
                t_batched_ns=work.t_batched_ns, t_inferred_ns=time.monotonic_ns(), ring=state.ring.name,
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

    def _in_flight(self, stream: str) -> bool:
        return any(item.stream == stream for work in self._inflight for item, *_ in work.items)

    def _forward_ends(self) -> None:
        """A stream's end goes after its last frame's detections: taken by the batcher is not enough while that
        batch is still in the model (analytics would finish the stream, then reopen it for the late frame)."""
        for name, state in self.streams.items():
            if state.end_seq is not None and not self.batcher.has_pending(name) \
                    and self.batcher.next_seq(name) > state.end_seq and not self._in_flight(name):
                self._send(encoder.encode(StreamEnd(stream=name, ring=state.ring.name, last_seq=state.end_seq)))
                state.end_seq = None
