"""Shared-memory frame ring: one per stream, written by its decoder, read by the inference stage.

Layout of the /dev/shm file: a ring header, then ``n_slots`` slots of (slot header + pixels).
A writer publishes frame ``seq`` in slot ``seq % n_slots`` seqlock-style: it stamps ``seq_begin``,
copies pixels and metadata, then stamps ``seq_end`` and advances ``write_seq``. A reader that used a
slot confirms afterwards that ``seq_begin`` still holds its seq; otherwise the slot was overwritten
under it. ``released_seq`` is written by the consumer and gives the writer back-pressure when it must
not drop frames. The supervisor creates and unlinks rings, so a crashed stage never leaks one.

Pixels of a slot, in its data area of ``max_width x max_height x 3`` bytes:

- a full-resolution frame at the start: BGR (``PIXELS_BGR``), or, for the usual 4:2:0 sources, the decoder's
  planar I420 (``PIXELS_I420``, half the bytes, copied from the decoded planes without any conversion);
  :meth:`FrameRing.read` always returns full-resolution BGR, converting I420 when asked (the preview,
  camera-health checks and evidence snapshots read frames at their own, low rate);
- "model-ready" pixels in the second half (I420 frames only, when they fit): the inference stage asks for
  them with :meth:`FrameRing.request_model_input` (size, letterbox, channel order: its model's input), and
  the decoder converts and letterboxes each frame once into that size before publishing it, so the
  single inference process of a model only stacks tensors (pre-processing runs in the decoders, in
  parallel, and no full-resolution frame crosses a process boundary on the hot path).
  :meth:`FrameRing.read_model` returns them with the source -> model transform.

A ring's memory is reserved when it is created (free space checked, then ``posix_fallocate``): a full
/dev/shm refuses the ring with a :class:`RingError` that says how to enlarge it, instead of killing the
decoder with SIGBUS on a later frame write. The ring therefore uses ``ring_slots x max_width x max_height x 3``
bytes of memory from the start, whatever size the frames have.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamd.errors import RingError

SHM_DIR = Path("/dev/shm")
SHM_HINT = ("enlarge /dev/shm (Docker: `docker run --shm-size=1g` or compose `shm_size: 1gb`; Kubernetes: mount "
            "an emptyDir with `medium: Memory` and a `sizeLimit` at /dev/shm) or lower the streams' ring_slots, "
            "max_width or max_height")
PREFIX = "streamd-"
_MAGIC = 0x53545244  # "STRD"
_VERSION = 3
_ALIGN = 64
PIXELS_BGR = 0
PIXELS_I420 = 1

_RING_HEADER = np.dtype(
    [
        ("magic", "<u4"), ("version", "<u4"), ("n_slots", "<u4"), ("channels", "<u4"),
        ("max_height", "<u4"), ("max_width", "<u4"), ("slot_stride", "<u8"),
        ("write_seq", "<u8"), ("released_seq", "<u8"), ("eof_seq", "<u8"),
        # model-input request of the consumer (see request_model_input); req_gen 0: none
        ("req_gen", "<u4"), ("req_width", "<u4"), ("req_height", "<u4"), ("req_letterbox", "<u4"),
        ("req_top_left", "<u4"), ("req_pad_value", "<u4"), ("req_rgb", "<u4"), ("req_area", "<u4"),
        ("req_crop_x1", "<u4"), ("req_crop_y1", "<u4"), ("req_crop_x2", "<u4"), ("req_crop_y2", "<u4"),  # x2 0: none
    ],
    align=True,
)
_SLOT_HEADER = np.dtype(
    [
        ("seq_begin", "<u8"), ("seq_end", "<u8"), ("height", "<u4"), ("width", "<u4"),
        ("frame_index", "<u8"), ("pts_s", "<f8"), ("wall_ts", "<f8"), ("t_decoded_ns", "<u8"),
        ("pixel_format", "<u4"), ("model_gen", "<u4"), ("model_height", "<u4"), ("model_width", "<u4"),
        ("model_scale_x", "<f8"), ("model_scale_y", "<f8"), ("model_pad_x", "<f8"), ("model_pad_y", "<f8"),
    ],
    align=True,
)


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


_RING_HEADER_BYTES = _aligned(_RING_HEADER.itemsize)
_SLOT_HEADER_BYTES = _aligned(_SLOT_HEADER.itemsize)


@dataclass(frozen=True)
class FrameMeta:
    seq: int
    frame_index: int
    pts_s: float
    wall_ts: float
    t_decoded_ns: int
    height: int
    width: int


@dataclass(frozen=True)
class ModelInputRequest:
    """Model-ready pixels the consumer asks the decoder for: ``height x width x 3`` uint8, letterboxed (or
    stretched), channel order RGB or BGR, resized bilinearly (or with area averaging)."""

    width: int
    height: int
    letterbox: bool = True
    top_left: bool = False  # pad position: centre unless set
    pad_value: int = 114
    rgb: bool = True
    area: bool = False
    crop: tuple[int, int, int, int] | None = None  # only this box of the frame (x1, y1, x2, y2; even), its pipeline's roi
    gen: int = 0  # set by the ring: which request a slot's model pixels answer


# source -> model input of one frame: x_in = x_src * scale_x + pad_x (likewise y)
ModelTransform = tuple[float, float, float, float]
# the decoder's converter: (request, I420 frame [h*3/2, w], width, height, destination view) -> transform
ModelWriter = Callable[[ModelInputRequest, np.ndarray, int, int, np.ndarray], ModelTransform]


class FrameTooLarge(RingError):
    """A frame does not fit the ring's slots: a restart cannot fix it, only a larger ring (config)."""

    def __init__(self, message: str, width: int, height: int, max_width: int, max_height: int):
        super().__init__(message)
        self.width, self.height = width, height
        self.max_width, self.max_height = max_width, max_height


def ring_bytes(n_slots: int, max_width: int, max_height: int, channels: int = 3) -> int:
    """Bytes of shared memory a ring of these dimensions takes (all of it reserved at creation)."""
    return _RING_HEADER_BYTES + n_slots * (_SLOT_HEADER_BYTES + _aligned(max_width * max_height * channels))


def shm_free_bytes(directory: Path = SHM_DIR) -> int:
    """Bytes an unprivileged process may still allocate in ``directory`` (a tmpfs such as /dev/shm)."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def ring_name(owner_pid: int, stream: str, generation: int = 0) -> str:
    """Name of a stream's ring; a stream restarted by a reload gets the next generation, a new ring."""
    return f"{PREFIX}{owner_pid}-{stream}" + (f".{generation}" if generation else "")


def ring_generation(name: str) -> int:
    """The generation :func:`ring_name` put in ``name`` (stream names have no dots)."""
    head, dot, tail = name.rpartition(".")
    return int(tail) if dot and tail.isdigit() else 0


class FrameRing:
    """A mapped ring. Use :meth:`create` in the owner and :meth:`attach` in every other process."""

    def __init__(self, name: str, fd: int, size: int):
        self.name = name
        self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fd)
        self._header = np.ndarray((), _RING_HEADER, buffer=self._mm, offset=0)
        if int(self._header["magic"]) != _MAGIC or int(self._header["version"]) != _VERSION:
            self._mm.close()
            raise RingError(f"shared memory {name} is not a streamd frame ring of version {_VERSION}")
        self.n_slots = int(self._header["n_slots"])
        self.channels = int(self._header["channels"])
        self.max_height = int(self._header["max_height"])
        self.max_width = int(self._header["max_width"])
        stride = int(self._header["slot_stride"])
        self._slots = [
            np.ndarray((), _SLOT_HEADER, buffer=self._mm, offset=_RING_HEADER_BYTES + i * stride)
            for i in range(self.n_slots)
        ]
        self._data_offsets = [_RING_HEADER_BYTES + i * stride + _SLOT_HEADER_BYTES for i in range(self.n_slots)]
        self._data_bytes = self.max_width * self.max_height * self.channels
        # model-ready pixels go behind the largest I420 frame
        self._model_offset = _aligned((self.max_width * self.max_height * 3 + 1) // 2)
        self._request: ModelInputRequest | None = None

    @classmethod
    def create(cls, name: str, n_slots: int, max_width: int, max_height: int, channels: int = 3,
               directory: Path = SHM_DIR) -> FrameRing:
        """Create and map a new ring in ``directory`` (a tmpfs; /dev/shm unless a test says otherwise), with
        all of its memory reserved; a RingError says what to do when there is not enough."""
        if n_slots < 3:
            raise RingError(f"ring {name}: needs at least 3 slots, got {n_slots}")
        stride = _SLOT_HEADER_BYTES + _aligned(max_width * max_height * channels)
        size = ring_bytes(n_slots, max_width, max_height, channels)
        try:
            free = shm_free_bytes(directory)
        except OSError as exc:
            raise RingError(f"ring {name}: shared memory {directory} is not usable ({exc.strerror or exc}); "
                            f"frame rings need a writable tmpfs at /dev/shm") from exc
        if free < size:
            raise RingError(cls._no_space(name, directory, size, free, n_slots, max_width, max_height, channels))
        path = directory / name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            try:
                # Reserve every page now: on tmpfs a page first touched by a frame write when the filesystem
                # is full raises SIGBUS in the writer, which no Python code can catch.
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
                    raise RingError(f"ring {name}: cannot reserve {_mib(size)} in {directory}: "
                                    f"{exc.strerror or exc}") from exc
                raise RingError(cls._no_space(name, directory, size, shm_free_bytes(directory), n_slots,
                                              max_width, max_height, channels)) from exc
            header = np.zeros((), _RING_HEADER)
            header["magic"], header["version"], header["n_slots"] = _MAGIC, _VERSION, n_slots
            header["channels"], header["max_height"], header["max_width"] = channels, max_height, max_width
            header["slot_stride"] = stride
            os.pwrite(fd, header.tobytes(), 0)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(name, fd, size)

    @staticmethod
    def _no_space(name: str, directory: Path, size: int, free: int, n_slots: int, max_width: int,
                  max_height: int, channels: int) -> str:
        return (f"ring {name}: not enough shared memory in {directory}: the ring needs {size} bytes "
                f"({_mib(size)}: ring_slots {n_slots} x max_width {max_width} x max_height {max_height} x {channels}"
                f" + headers), {free} bytes ({_mib(free)}) are free; {SHM_HINT}")

    @classmethod
    def attach(cls, name: str, directory: Path = SHM_DIR) -> FrameRing:
        path = directory / name
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise RingError(f"frame ring {name} does not exist (its stream was stopped or never started)") from None
        return cls(name, fd, os.fstat(fd).st_size)

    # --- writer side -------------------------------------------------------------------------------

    @property
    def write_seq(self) -> int:
        return int(self._header["write_seq"])

    @property
    def released_seq(self) -> int:
        return int(self._header["released_seq"])

    @property
    def eof_seq(self) -> int:
        """Last seq of a finished finite source, 0 while it is still running."""
        return int(self._header["eof_seq"])

    def mark_eof(self) -> None:
        self._header["eof_seq"] = self.write_seq

    def can_write_without_drop(self) -> bool:
        """True when the next write overwrites no unreleased frame (one slot stays spare for late readers)."""
        return self.write_seq - self.released_seq < self.n_slots - 1

    def check_fits(self, frame: np.ndarray) -> None:
        """Raise FrameTooLarge unless ``frame`` (H x W x C) fits the ring's slots."""
        height, width = frame.shape[:2]
        self.check_size(width, height, frame.shape[2] if frame.ndim == 3 else 1)

    def check_size(self, width: int, height: int, channels: int = 3) -> None:
        """Raise FrameTooLarge unless a ``width x height x channels`` frame fits the ring's slots."""
        if height > self.max_height or width > self.max_width or channels != self.channels:
            raise FrameTooLarge(
                f"ring {self.name}: frame {width}x{height}x{channels} does not fit "
                f"slots of {self.max_width}x{self.max_height}x{self.channels}; raise the stream's max_width/max_height",
                width, height, self.max_width, self.max_height,
            )

    def write(self, frame: np.ndarray, frame_index: int, pts_s: float, wall_ts: float, t_decoded_ns: int) -> int:
        """Copy ``frame`` (H x W x C uint8) into the next slot and publish it. Returns its seq."""
        self.check_fits(frame)
        height, width = frame.shape[:2]
        seq, index, slot = self._begin()
        pixels = np.ndarray((height, width, self.channels), np.uint8, buffer=self._mm, offset=self._data_offsets[index])
        pixels[...] = frame
        slot["pixel_format"], slot["model_gen"] = PIXELS_BGR, 0
        return self._publish(seq, slot, width, height, frame_index, pts_s, wall_ts, t_decoded_ns)

    def fits_i420(self, width: int, height: int) -> bool:
        """True when frames of this size can be stored as I420 (even sides, 3 channels, within the slots)."""
        return (self.channels == 3 and width % 2 == 0 and height % 2 == 0 and width <= self.max_width
                and height <= self.max_height)

    def write_i420(self, yuv: np.ndarray, width: int, height: int, frame_index: int, pts_s: float, wall_ts: float,
                   t_decoded_ns: int, model_writer: ModelWriter | None = None) -> int:
        """Publish a 4:2:0 frame given as one I420 array (``height * 3 / 2`` rows of ``width``: Y, then U, then V),
        and, when the consumer asked for model-ready pixels that fit, ``model_writer``'s conversion of it into
        the slot's model area. Returns its seq. Check :meth:`fits_i420` first."""
        if not self.fits_i420(width, height) or yuv.shape != (height * 3 // 2, width):
            raise RingError(f"ring {self.name}: I420 frame {width}x{height} (array {yuv.shape}) does not fit slots "
                            f"of {self.max_width}x{self.max_height}")
        seq, index, slot = self._begin()
        offset = self._data_offsets[index]
        np.ndarray(yuv.shape, np.uint8, buffer=self._mm, offset=offset)[...] = yuv
        slot["pixel_format"], slot["model_gen"] = PIXELS_I420, 0
        request = self.model_request() if model_writer is not None else None
        if model_writer is not None and request is not None and self._model_fits(request):
            dst = np.ndarray((request.height, request.width, 3), np.uint8, buffer=self._mm,
                             offset=offset + self._model_offset)
            sx, sy, px, py = model_writer(request, yuv, width, height, dst)
            slot["model_height"], slot["model_width"] = request.height, request.width
            slot["model_scale_x"], slot["model_scale_y"], slot["model_pad_x"], slot["model_pad_y"] = sx, sy, px, py
            slot["model_gen"] = request.gen
        return self._publish(seq, slot, width, height, frame_index, pts_s, wall_ts, t_decoded_ns)

    def _begin(self) -> tuple[int, int, np.ndarray]:
        seq = self.write_seq + 1
        index = seq % self.n_slots
        slot = self._slots[index]
        slot["seq_begin"] = seq  # from here on readers of the old frame see it as overwritten
        return seq, index, slot

    def _publish(self, seq: int, slot: np.ndarray, width: int, height: int, frame_index: int, pts_s: float,
                 wall_ts: float, t_decoded_ns: int) -> int:
        slot["height"], slot["width"], slot["frame_index"] = height, width, frame_index
        slot["pts_s"], slot["wall_ts"], slot["t_decoded_ns"] = pts_s, wall_ts, t_decoded_ns
        slot["seq_end"] = seq
        self._header["write_seq"] = seq
        return seq

    def _model_fits(self, request: ModelInputRequest) -> bool:
        return self._model_offset + request.width * request.height * 3 <= _aligned(self._data_bytes)

    def model_input_fits(self, width: int, height: int) -> bool:
        """True when model-ready pixels of this size fit beside an I420 frame in this ring's slots."""
        return self.channels == 3 and self._model_fits(ModelInputRequest(width, height))

    # --- model-input request (consumer writes, decoder reads) ----------------------------------------

    def request_model_input(self, request: ModelInputRequest) -> int:
        """Consumer: ask the writer for model-ready pixels of every following I420 frame; returns the request's
        generation, which :meth:`read_model` is given back (a slot made for an older request is not used)."""
        h = self._header
        gen = int(h["req_gen"]) + 1
        h["req_gen"] = 0  # the writer ignores the fields while they change
        h["req_width"], h["req_height"], h["req_letterbox"] = request.width, request.height, int(request.letterbox)
        h["req_top_left"], h["req_pad_value"] = int(request.top_left), request.pad_value
        h["req_rgb"], h["req_area"] = int(request.rgb), int(request.area)
        h["req_crop_x1"], h["req_crop_y1"], h["req_crop_x2"], h["req_crop_y2"] = request.crop or (0, 0, 0, 0)
        h["req_gen"] = gen
        return gen

    def model_request(self) -> ModelInputRequest | None:
        """Writer: the consumer's current request, or None (read once per frame; parsed once per change)."""
        h = self._header
        gen = int(h["req_gen"])
        if gen == 0:
            return None
        cached = self._request
        if cached is not None and cached.gen == gen:
            return cached
        request = ModelInputRequest(
            width=int(h["req_width"]), height=int(h["req_height"]), letterbox=bool(h["req_letterbox"]),
            top_left=bool(h["req_top_left"]), pad_value=int(h["req_pad_value"]), rgb=bool(h["req_rgb"]),
            area=bool(h["req_area"]), gen=gen,
            crop=(int(h["req_crop_x1"]), int(h["req_crop_y1"]), int(h["req_crop_x2"]), int(h["req_crop_y2"]))
            if int(h["req_crop_x2"]) else None)
        if int(h["req_gen"]) != gen or request.width <= 0 or request.height <= 0:
            return None  # changed while read: the next frame reads it again
        self._request = request
        return request

    # --- reader side -------------------------------------------------------------------------------

    def read(self, seq: int) -> tuple[FrameMeta, np.ndarray] | None:
        """Frame ``seq`` as full-resolution BGR (H x W x 3), or None when it is not (or no longer) in the ring.

        A BGR slot is returned as a zero-copy view of shared memory; an I420 slot is converted into a new
        array. Either way, after using it call :meth:`still_valid` to learn whether the writer overwrote the
        slot meanwhile (a view, or a conversion that read a half-overwritten slot).
        """
        meta = self.meta(seq)
        if meta is None:
            return None
        offset = self._data_offsets[seq % self.n_slots]
        if int(self._slots[seq % self.n_slots]["pixel_format"]) == PIXELS_I420:
            yuv = np.ndarray((meta.height * 3 // 2, meta.width), np.uint8, buffer=self._mm, offset=offset)
            return meta, cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
        pixels = np.ndarray((meta.height, meta.width, self.channels), np.uint8, buffer=self._mm, offset=offset)
        return meta, pixels

    def meta(self, seq: int) -> FrameMeta | None:
        """Metadata of frame ``seq``, or None when it is not (or no longer) in the ring."""
        if seq <= 0:
            return None
        slot = self._slots[seq % self.n_slots]
        if int(slot["seq_end"]) != seq or int(slot["seq_begin"]) != seq:
            return None
        return FrameMeta(
            seq=seq, frame_index=int(slot["frame_index"]), pts_s=float(slot["pts_s"]), wall_ts=float(slot["wall_ts"]),
            t_decoded_ns=int(slot["t_decoded_ns"]), height=int(slot["height"]), width=int(slot["width"]),
        )

    def read_model(self, seq: int, gen: int) -> tuple[FrameMeta, np.ndarray, ModelTransform] | None:
        """Zero-copy view of frame ``seq``'s model-ready pixels made for request ``gen`` (see
        :meth:`request_model_input`) and its transform, or None when the slot has none (the frame was stored
        as BGR, the request changed, or the frame is gone): then use :meth:`read`. Check :meth:`still_valid`
        after using the view."""
        meta = self.meta(seq)
        if meta is None or gen <= 0:
            return None
        index = seq % self.n_slots
        slot = self._slots[index]
        if int(slot["model_gen"]) != gen:
            return None
        view = np.ndarray((int(slot["model_height"]), int(slot["model_width"]), 3), np.uint8, buffer=self._mm,
                          offset=self._data_offsets[index] + self._model_offset)
        transform = (float(slot["model_scale_x"]), float(slot["model_scale_y"]), float(slot["model_pad_x"]),
                     float(slot["model_pad_y"]))
        return meta, view, transform

    def still_valid(self, seq: int) -> bool:
        return int(self._slots[seq % self.n_slots]["seq_begin"]) == seq

    def release(self, seq: int) -> None:
        """Consumer: every frame up to ``seq`` is done with; the writer may reuse their slots."""
        if seq > self.released_seq:
            self._header["released_seq"] = seq

    def close(self) -> None:
        # Views handed out keep the mmap alive; drop ours and let the GC unmap it when they go.
        self._slots = []
        self._header = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:
            pass


def unlink_ring(name: str, directory: Path = SHM_DIR) -> bool:
    try:
        (directory / name).unlink()
        return True
    except FileNotFoundError:
        return False


_OWNED = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


def remove_orphaned_rings() -> list[str]:
    """Unlink rings whose owning daemon process is gone (after a kill -9 of the supervisor)."""
    removed = []
    for path in SHM_DIR.glob(f"{PREFIX}*"):
        match = _OWNED.match(path.name)
        if match and not _pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
