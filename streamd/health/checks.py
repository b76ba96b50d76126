"""Camera health checks: plain classes fed one downscaled grey sample at a time (``update(sample, t)``).

Each check turns a sample into a *level* (0 ok, 1 warning, 2 failed) and passes it through its own
:class:`Hysteresis`: a level must hold for the check's ``after_s`` before the state rises to it, and the
condition must be gone for ``clear_s`` before the state falls back. ``t`` is in seconds of any one clock (the
frame's decode time in the daemon, the presentation time offline).

Baselines (brightness, sharpness) and the reference view (camera moved) are learned over ``learn_s`` at start
or after :meth:`CameraHealth.reset`; baselines then follow slow changes (dusk) while their check is ok.
A black or uniform picture holds the other checks (they have nothing to measure), so one fault raises one alarm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from streamd.config.models import (BlackoutCheckConfig, BlurCheckConfig, FrozenCheckConfig, HealthConfig,
                                   MovedCheckConfig, StarvationCheckConfig)

STATES = ("ok", "warning", "failed")
CHECKS = ("frozen", "blackout", "blur", "moved", "starvation")
ANALYSIS_WIDTH = 320  # pixels of the grey sample's width (height keeps the aspect ratio)
BASELINE_ADAPT_S = 600.0  # time constant of the baselines' slow drift while healthy


@dataclass(frozen=True)
class Sample:
    """One downscaled frame: ``grey`` uint8 (about 320 wide) and what every check reads of it."""

    grey: np.ndarray
    mean: float
    std: float

    @classmethod
    def of(cls, grey: np.ndarray) -> Sample:
        mean, std = cv2.meanStdDev(grey)
        return cls(grey=grey, mean=float(mean[0, 0]), std=float(std[0, 0]))


def downscale(frame: np.ndarray, width: int = ANALYSIS_WIDTH) -> np.ndarray:
    """A grey copy about ``width`` pixels wide of a BGR (or grey) frame; area-averaged, so noise shrinks too."""
    height, full_width = frame.shape[:2]
    step = max(1, full_width // (2 * width))  # cheap pre-decimation: never below twice the target width
    if step > 1:
        frame = frame[::step, ::step]
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    h = max(8, round(width * height / full_width))
    return cv2.resize(grey, (width, h), interpolation=cv2.INTER_AREA)


def sample_of(frame: np.ndarray, width: int = ANALYSIS_WIDTH) -> Sample:
    return Sample.of(downscale(frame, width))


class Hysteresis:
    """ok/warning/failed with time hysteresis: rise to a level once it held ``after_s``; fall once the condition
    stayed below the state for ``clear_s`` (to the highest level seen meanwhile)."""

    def __init__(self, after_s: float, clear_s: float):
        self.after_s = after_s
        self.clear_s = clear_s
        self.state = 0
        self.since: list[float | None] = [None, None, None]  # level -> start of its unbroken run (index 1, 2)
        self.below_since: float | None = None
        self.below_max = 0
        self.changed_at: float | None = None

    def update(self, level: int, t: float) -> int:
        for lv in (1, 2):
            if level >= lv:
                if self.since[lv] is None:
                    self.since[lv] = t
            else:
                self.since[lv] = None
        target = 0
        for lv in (1, 2):
            start = self.since[lv]
            if start is not None and t - start >= self.after_s:
                target = lv
        if target > self.state:
            self._set(target, t)
        elif level < self.state:
            if self.below_since is None:
                self.below_since, self.below_max = t, level
            self.below_max = max(self.below_max, level)
            if t - self.below_since >= self.clear_s:
                self._set(max(self.below_max, target), t)
        else:
            self.below_since = None
        return self.state

    def interrupt(self) -> None:
        """The check could not measure this sample: a rising condition must start its run again (the state and
        a pending clear stay as they are)."""
        self.since = [None, None, None]

    def _set(self, state: int, t: float) -> None:
        self.state, self.changed_at = state, t
        self.below_since = None

    def reset(self) -> None:
        self.__init__(self.after_s, self.clear_s)  # type: ignore[misc]


class Baseline:
    """Median of the values seen while learning, then an exponential average with a long time constant."""

    def __init__(self) -> None:
        self.learning: list[float] = []
        self.value: float | None = None
        self._last_t: float | None = None

    def learn(self, value: float) -> None:
        self.learning.append(value)

    def settle(self) -> None:
        if self.learning:
            self.value = float(np.median(self.learning))
        self.learning = []

    def follow(self, value: float, t: float) -> None:
        if self.value is None:
            return
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        alpha = 1.0 - math.exp(-dt / BASELINE_ADAPT_S)
        self.value += alpha * (value - self.value)


@dataclass
class Reading:
    """What a check measured on its latest sample (for logs, events and the evaluation tool)."""

    level: int = 0
    value: float | None = None
    detail: dict[str, float] = field(default_factory=dict)


class FrozenCheck:
    name = "frozen"

    def __init__(self, config: FrozenCheckConfig, clear_s: float):
        self.config = config
        self.hysteresis = Hysteresis(config.after_s, clear_s)
        self._previous: np.ndarray | None = None

    def update(self, sample: Sample, t: float) -> Reading:
        previous, self._previous = self._previous, sample.grey
        if previous is None or previous.shape != sample.grey.shape:
            return Reading()
        diff = cv2.absdiff(sample.grey, previous)
        changed = cv2.countNonZero(cv2.threshold(diff, self.config.pixel_noise, 255, cv2.THRESH_BINARY)[1])
        fraction = changed / diff.size
        return Reading(level=2 if fraction < self.config.max_changed else 0, value=round(fraction, 5))

    def reset(self) -> None:
        self._previous = None


class BlackoutCheck:
    name = "blackout"

    def __init__(self, config: BlackoutCheckConfig, clear_s: float):
        self.config = config
        self.hysteresis = Hysteresis(config.after_s, clear_s)
        self.brightness = Baseline()

    def dark(self, sample: Sample) -> bool:
        """Black or uniform: nothing for the other checks to measure."""
        return sample.mean < self.config.dark_level or sample.std < self.config.min_contrast

    def update(self, sample: Sample, t: float, learning: bool) -> Reading:
        detail = {"mean": round(sample.mean, 1), "std": round(sample.std, 1)}
        if self.dark(sample):
            return Reading(level=2, value=sample.mean, detail=detail)
        if learning:
            self.brightness.learn(sample.mean)
            return Reading(value=sample.mean, detail=detail)
        base = self.brightness.value
        level = 1 if base is not None and sample.mean < base * self.config.drop_ratio else 0
        if base is not None:
            detail["baseline"] = round(base, 1)
        if level == 0 and self.hysteresis.state == 0:
            self.brightness.follow(sample.mean, t)
        return Reading(level=level, value=sample.mean, detail=detail)


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian over the picture's variance: high-frequency energy, independent of exposure."""
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=3)
    _, lap_std = cv2.meanStdDev(lap)
    _, std = cv2.meanStdDev(grey)
    return float(lap_std[0, 0] ** 2 / max(float(std[0, 0]) ** 2, 1.0))


class BlurCheck:
    name = "blur"

    def __init__(self, config: BlurCheckConfig, clear_s: float):
        self.config = config
        self.hysteresis = Hysteresis(config.after_s, clear_s)
        self.baseline = Baseline()

    def update(self, sample: Sample, t: float, learning: bool) -> Reading:
        value = sharpness(sample.grey)
        if learning:
            self.baseline.learn(value)
            return Reading(value=round(value, 4))
        base = self.baseline.value
        if base is None or base <= 0:
            return Reading(value=round(value, 4))
        ratio = value / base
        level = 2 if ratio < self.config.failed_ratio else 1 if ratio < self.config.warning_ratio else 0
        if level == 0 and self.hysteresis.state == 0:
            self.baseline.follow(value, t)
        return Reading(level=level, value=round(ratio, 3), detail={"sharpness": round(value, 4),
                                                                   "baseline": round(base, 4)})


def _normalised(grey: np.ndarray) -> np.ndarray:
    """Contrast-stretched copy, so features are found the same at a lower exposure."""
    return cv2.normalize(grey, None, 0, 255, cv2.NORM_MINMAX)  # type: ignore[call-overload]


class MovedCheck:
    """Global shift and rotation against a reference view: ORB features matched
    with RANSAC (``estimateAffinePartial2D``: moving objects are outliers); a camera move moves features all over
    the picture, so a consensus of features packed in one place (a large moving object) does not count. Phase
    correlation (``cv2.phaseCorrelate``) stands in for a picture with too few features, when its peak is clear."""

    name = "moved"
    MIN_INLIERS = 15
    MIN_SPREAD = 0.35  # inliers must span this fraction of the width or of the height
    MIN_PHASE_RESPONSE = 0.25
    STEADY_SHIFT = 0.012  # a moved view must agree with the previous sample's within this (fraction of width)
    STEADY_DEG = 0.75

    def __init__(self, config: MovedCheckConfig, clear_s: float):
        self.config = config
        self.hysteresis = Hysteresis(config.after_s, clear_s)
        self._orb = cv2.ORB.create(nfeatures=250, fastThreshold=10)
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        self._reference: tuple[np.ndarray, np.ndarray | None, list[cv2.KeyPoint]] | None = None
        self._window: np.ndarray | None = None
        self.last_estimate: dict[str, float] = {}
        self._previous: tuple[float, float, float, str] | None = None

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    def learn(self, sample: Sample) -> None:
        """Take ``sample`` as the reference view."""
        grey = _normalised(sample.grey)
        keypoints, descriptors = self._orb.detectAndCompute(grey, None)
        self._reference = (grey.astype(np.float32), descriptors, list(keypoints))

    def reset(self) -> None:
        self._reference = self._previous = None

    def estimate(self, sample: Sample) -> tuple[float, float, float, str] | None:
        """(x and y shift of the picture centre as fractions of the width, rotation in degrees, method), or None
        when it cannot tell (another scene, too little texture)."""
        if self._reference is None:
            return None
        ref_grey, ref_desc, ref_kp = self._reference
        grey = _normalised(sample.grey)
        if grey.shape != ref_grey.shape:
            return None
        h, w = grey.shape
        self.last_estimate = {}
        keypoints, descriptors = self._orb.detectAndCompute(grey, None)
        if ref_desc is not None and descriptors is not None and len(ref_kp) >= self.MIN_INLIERS:
            matches = self._matcher.match(ref_desc, descriptors)
            if len(matches) >= self.MIN_INLIERS:
                src = np.array([ref_kp[m.queryIdx].pt for m in matches], np.float32)
                dst = np.array([keypoints[m.trainIdx].pt for m in matches], np.float32)
                matrix, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                              ransacReprojThreshold=2.0, maxIters=500)
                if matrix is not None and inliers is not None:
                    kept = src[inliers.ravel() > 0]
                    spread = max(float(np.ptp(kept[:, 0])) / w, float(np.ptp(kept[:, 1])) / h) if len(kept) else 0.0
                    self.last_estimate = {"matches": len(matches), "inliers": len(kept), "spread": round(spread, 2)}
                    if len(kept) >= self.MIN_INLIERS and spread >= self.MIN_SPREAD:
                        centre = np.array([w / 2, h / 2, 1.0])
                        moved = matrix @ centre - centre[:2]
                        angle = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
                        return float(moved[0]) / w, float(moved[1]) / w, angle, "features"
                    if len(kept) >= self.MIN_INLIERS:
                        return None  # features agree, but only in one place: a moving object, not the camera
        if self._window is None or self._window.shape != grey.shape:
            self._window = cv2.createHanningWindow((w, h), cv2.CV_32F)
        (dx, dy), response = cv2.phaseCorrelate(ref_grey, grey.astype(np.float32), self._window)
        self.last_estimate["phase_response"] = round(float(response), 3)
        if response < self.MIN_PHASE_RESPONSE:
            return None
        return dx / w, dy / w, 0.0, "phase"

    def update(self, sample: Sample, t: float) -> Reading | None:
        found = self.estimate(sample)
        previous, self._previous = self._previous, found
        if found is None:
            return None
        dx, dy, angle, method = found
        shift = math.hypot(dx, dy)
        if shift >= self.config.warning_shift or abs(angle) >= self.config.warning_deg:
            # a bumped camera stays where it went; a consensus that wanders from sample to sample is a moving
            # thing (a conveyor belt, a large vehicle), not the camera
            if previous is None or math.hypot(dx - previous[0], dy - previous[1]) > self.STEADY_SHIFT \
                    or abs(angle - previous[2]) > self.STEADY_DEG:
                return None
        c = self.config
        rotation = abs(angle)
        level = 2 if shift >= c.failed_shift or rotation >= c.failed_deg else \
            1 if shift >= c.warning_shift or rotation >= c.warning_deg else 0
        return Reading(level=level, value=round(shift, 4), detail={"shift": round(shift, 4),
                                                                   "rotation_deg": round(angle, 2),
                                                                   "features": 1.0 if method == "features" else 0.0})


class StarvationCheck:
    """No detections for ``after_s`` on a stream whose own history (busy minutes) says there should be some."""

    name = "starvation"
    HISTORY_MIN = 60  # minutes of history kept

    def __init__(self, config: StarvationCheckConfig, clear_s: float):
        self.config = config
        self.hysteresis = Hysteresis(config.after_s, clear_s)
        self.last_detection: float | None = None
        self._minutes: dict[int, bool] = {}
        self._start: float | None = None

    def update(self, detections: int, t: float) -> Reading:
        if self._start is None:
            self._start = t
        minute = int(t // 60)
        self._minutes[minute] = self._minutes.get(minute, False) or detections > 0
        for old in [m for m in self._minutes if m < minute - self.HISTORY_MIN]:
            del self._minutes[old]
        if detections > 0:
            self.last_detection = t
        past = [busy for m, busy in self._minutes.items() if m < minute]
        busy = sum(past) / len(past) if len(past) >= 5 else 0.0
        idle = t - (self.last_detection if self.last_detection is not None else self._start)
        starved = busy >= self.config.min_busy_fraction and idle >= 0
        return Reading(level=1 if starved and detections == 0 and self.last_detection is not None else 0,
                       value=round(idle, 1), detail={"busy_fraction": round(busy, 2)})


@dataclass(frozen=True)
class Change:
    """A check's state changed."""

    check: str
    state: str
    previous: str
    t: float
    reading: Reading


class CameraHealth:
    """Every check of one stream. ``update`` takes one sample and returns the state changes it caused."""

    def __init__(self, config: HealthConfig):
        self.config = config
        self.frozen = FrozenCheck(config.frozen, config.clear_s)
        self.blackout = BlackoutCheck(config.blackout, config.clear_s)
        self.blur = BlurCheck(config.blur, config.clear_s)
        self.moved = MovedCheck(config.moved, config.clear_s)
        self.starvation = StarvationCheck(config.starvation, config.clear_s)
        self.readings: dict[str, Reading] = {}
        self._learn_until: float | None = None
        self._settled = False

    @property
    def enabled_checks(self) -> list[str]:
        c = self.config
        return [name for name, on in (("frozen", c.frozen.enabled), ("blackout", c.blackout.enabled),
                                      ("blur", c.blur.enabled), ("moved", c.moved.enabled),
                                      ("starvation", c.starvation.enabled)) if on]

    def states(self) -> dict[str, str]:
        return {name: STATES[self._hysteresis(name).state] for name in self.enabled_checks}

    def unhealthy(self) -> list[str]:
        return [name for name, state in self.states().items() if state != "ok"]

    def _hysteresis(self, name: str) -> Hysteresis:
        check: FrozenCheck | BlackoutCheck | BlurCheck | MovedCheck | StarvationCheck = getattr(self, name)
        return check.hysteresis

    def learning(self, t: float) -> bool:
        return self._learn_until is not None and t < self._learn_until

    def reset(self) -> list[Change]:
        """Learn the baselines and the reference view again (after a deliberate camera move); every check is ok."""
        changes = [Change(name, "ok", state, self._hysteresis(name).changed_at or 0.0, Reading())
                   for name, state in self.states().items() if state != "ok"]
        self.__init__(self.config)  # type: ignore[misc]
        return changes

    def update(self, sample: Sample, t: float) -> list[Change]:
        before = self.states()
        if self._learn_until is None:
            self._learn_until = t + self.config.learn_s
        learning = self.learning(t)
        if not learning and not self._settled:
            self.blackout.brightness.settle()
            self.blur.baseline.settle()
            self._settled = True
        c = self.config
        readings: dict[str, Reading | None] = {}
        dark = self.blackout.dark(sample)
        if c.blackout.enabled:
            readings["blackout"] = self.blackout.update(sample, t, learning)
        if dark:
            self.frozen.reset()  # a black picture neither moves nor freezes: hold the picture checks
        else:
            if c.frozen.enabled:
                readings["frozen"] = self.frozen.update(sample, t)
            if c.blur.enabled:
                readings["blur"] = self.blur.update(sample, t, learning)
            if c.moved.enabled:
                if learning or not self.moved.has_reference:
                    self.moved.learn(sample)  # the reference is the last clear sample of the learning time
                else:
                    readings["moved"] = self.moved.update(sample, t)
        for name, reading in readings.items():
            if reading is None:
                self._hysteresis(name).interrupt()
            else:
                self.readings[name] = reading
                self._hysteresis(name).update(reading.level, t)
        return self._changes(before, t)

    def update_detections(self, detections: int, t: float) -> list[Change]:
        if not self.config.starvation.enabled:
            return []
        before = self.states()
        reading = self.starvation.update(detections, t)
        self.readings["starvation"] = reading
        self.starvation.hysteresis.update(reading.level, t)
        return self._changes(before, t)

    def _changes(self, before: dict[str, str], t: float) -> list[Change]:
        return [Change(name, state, before.get(name, "ok"), t, self.readings.get(name) or Reading())
                for name, state in self.states().items() if state != before.get(name, "ok")]
