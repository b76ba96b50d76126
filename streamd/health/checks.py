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
from collections import deque
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


def structure(grey: np.ndarray) -> np.ndarray:
    """Gradient magnitude of a half-size copy, over its mean: edges and texture, the same at any exposure."""
    small = cv2.GaussianBlur(cv2.pyrDown(grey).astype(np.float32), (0, 0), 0.8)
    magnitude = cv2.magnitude(cv2.Sobel(small, cv2.CV_32F, 1, 0), cv2.Sobel(small, cv2.CV_32F, 0, 1))
    return magnitude / max(float(np.mean(magnitude)), 1e-3)


@dataclass(frozen=True)
class _Tile:
    """One cell of the reference's static structure: its patch, centre (from the picture centre) and how well
    it pins a displacement in each direction (its structure tensor, trace 1: a straight edge pins only across)."""

    box: tuple[int, int, int, int]  # x0, x1, y0, y1 in the structure image
    patch: np.ndarray
    x: float
    y: float
    tensor: np.ndarray


class MovedCheck:
    """Global shift and rotation against the reference view's *static structure*.

    While learning, the check keeps the per-pixel minimum of the structure image (:func:`structure`): an edge
    that is there in every sample (kerb, marking, wall, belt rail) stays, whatever moved through the picture
    (cars, hands, products on a belt) drops out. That reference is cut into a grid of tiles; each tile with
    structure is found again in the current sample by normalised cross-correlation within ``MARGIN`` pixels.
    The tiles' displacements, each weighted by its structure tensor (an edge tells only the displacement
    across it), are fitted by least squares with one shift and one rotation about the centre; a tile that does
    not fit (a moving object, a bottle taken away) is dropped and the fit repeated. Only directions that the
    kept tiles pin down are reported (a conveyor with two straight rails: up/down and rotation, not sideways).
    Gradients, not intensities, and normalised correlation, so exposure changes and dusk do not look like a move.
    """

    name = "moved"
    GRID = (4, 3)  # tiles across, down
    MARGIN = 12  # search radius in structure pixels (half the sample: 7.5 % of the width)
    MIN_TILE_STD = 0.05  # a reference tile needs this much static structure (the match score decides the rest)
    MIN_STEADY = 0.5  # a reference tile's minimum must look like its mean over the learning samples
    MIN_SCORE = 0.5  # normalised correlation of a tile found again
    MIN_TILES = 3  # agreeing tiles for an estimate
    MIN_PINNED = 0.2  # share of a tile's structure tensor for a direction to be pinned by it
    MAX_RESIDUAL = 2.0  # squared pixels, along the directions a tile pins, for a tile to agree with the fit
    VOTES = 3  # the level is the median of this many latest measured samples
    VOTE_WINDOW_S = 1.2  # older ones do not vote (after a gap, the first samples decide afresh)
    HOLD_S = 1.5  # an unmeasurable sample keeps the level this long after the last measured one
    MIN_INFORMATION = 0.3  # eigenvalue of the fit's normal matrix for a direction to count as measured

    def __init__(self, config: MovedCheckConfig, clear_s: float):
        self.config = config
        self.hysteresis = Hysteresis(config.after_s, clear_s)
        self._static: np.ndarray | None = None  # running minimum of the structure while learning
        self._sum: np.ndarray | None = None  # and its running sum
        self._learned = 0
        self._tiles: list[_Tile] | None = None
        self.last_estimate: dict[str, float] = {}
        self._votes: deque[tuple[float, int]] = deque(maxlen=self.VOTES)
        self._reading: Reading | None = None
        self._full: np.ndarray | None = None  # the fit's normal matrix with every reference tile

    @property
    def has_reference(self) -> bool:
        return self._static is not None

    def learn(self, sample: Sample) -> None:
        """Add ``sample`` to the reference view (its static structure: what every learning sample shares)."""
        current = structure(sample.grey)
        if self._static is None or self._sum is None or self._static.shape != current.shape:
            self._static, self._sum, self._learned = current, current.copy(), 0
        else:
            np.minimum(self._static, current, out=self._static)
            self._sum += current
        self._learned += 1
        self._tiles = self._full = None

    def reset(self) -> None:
        self._static = self._sum = self._tiles = self._reading = self._full = None
        self._learned = 0
        self._votes.clear()

    def _reference_tiles(self, static: np.ndarray, mean: np.ndarray) -> list[_Tile]:
        h, w = static.shape
        m = self.MARGIN
        gx, gy = cv2.Sobel(static, cv2.CV_32F, 1, 0), cv2.Sobel(static, cv2.CV_32F, 0, 1)
        xs = np.linspace(m, w - m, self.GRID[0] + 1).astype(int)
        ys = np.linspace(m, h - m, self.GRID[1] + 1).astype(int)
        tiles = []
        for x0, x1 in zip(xs[:-1], xs[1:]):
            for y0, y1 in zip(ys[:-1], ys[1:]):
                patch = static[y0:y1, x0:x1]
                if float(np.std(patch)) < self.MIN_TILE_STD:
                    continue
                steady = float(cv2.matchTemplate(mean[y0:y1, x0:x1], patch, cv2.TM_CCOEFF_NORMED)[0, 0])
                if steady < self.MIN_STEADY:
                    continue  # the minimum of a texture going by (a belt), not structure that stays
                tx, ty = gx[y0:y1, x0:x1], gy[y0:y1, x0:x1]
                tensor = np.array([[float(np.sum(tx * tx)), float(np.sum(tx * ty))],
                                   [float(np.sum(tx * ty)), float(np.sum(ty * ty))]])
                trace = float(np.trace(tensor))
                if trace <= 0:
                    continue
                values, vectors = np.linalg.eigh(tensor / trace)
                values[values < self.MIN_PINNED] = 0.0  # along an edge: the tile's match there is chance
                tiles.append(_Tile((int(x0), int(x1), int(y0), int(y1)), patch.copy(), (x0 + x1) / 2 - w / 2,
                                   (y0 + y1) / 2 - h / 2, vectors @ np.diag(values) @ vectors.T))
        return tiles

    def _find(self, tile: _Tile, current: np.ndarray) -> tuple[float, float, float]:
        """(dx, dy, score): where the tile's patch is in ``current``, to a sub-pixel."""
        x0, x1, y0, y1 = tile.box
        m = self.MARGIN
        scores = cv2.matchTemplate(current[y0 - m:y1 + m, x0 - m:x1 + m], tile.patch, cv2.TM_CCOEFF_NORMED)
        _, score, _, (px, py) = cv2.minMaxLoc(scores)

        def offset(a: float, b: float, c: float) -> float:
            curvature = a - 2 * b + c
            return 0.0 if curvature >= 0 else 0.5 * (a - c) / curvature

        dx = px - m + (offset(scores[py, px - 1], scores[py, px], scores[py, px + 1])
                       if 0 < px < scores.shape[1] - 1 else 0.0)
        dy = py - m + (offset(scores[py - 1, px], scores[py, px], scores[py + 1, px])
                       if 0 < py < scores.shape[0] - 1 else 0.0)
        return float(dx), float(dy), float(score)

    def estimate(self, sample: Sample) -> tuple[float, float, float, str] | None:
        """(x and y shift of the picture centre as fractions of the width, rotation in degrees, method), or None
        when it cannot tell (too few reference tiles found again: another scene, everything covered)."""
        if self._static is None or self._sum is None:
            return None
        current = structure(sample.grey)
        if current.shape != self._static.shape:
            return None
        if self._tiles is None:
            self._tiles = self._reference_tiles(self._static, self._sum / max(self._learned, 1))
        w = current.shape[1]
        radius = w / 2  # rotation is fitted as the displacement it causes at the picture's side
        rows, tensors, moves = [], [], []
        for tile in self._tiles:
            dx, dy, score = self._find(tile, current)
            if score >= self.MIN_SCORE:
                rows.append([[1.0, 0.0, -tile.y / radius], [0.0, 1.0, tile.x / radius]])
                tensors.append(tile.tensor)
                moves.append([dx, dy])
        self.last_estimate = {"tiles": float(len(self._tiles)), "found": float(len(rows))}
        if len(rows) < self.MIN_TILES:
            return None
        a, j, d = np.array(rows), np.array(tensors), np.array(moves)
        normal = np.einsum("nki,nkl,nlm->nim", a, j, a)  # each tile's share of the fit's normal equations
        right = np.einsum("nki,nkl,nl->ni", a, j, d)
        # consensus: every pair of tiles proposes a motion; the one most tiles agree with wins (RANSAC, exhaustive)
        first, second = np.triu_indices(len(rows), 1)
        proposals = np.einsum("nij,nj->ni", np.linalg.pinv(normal[first] + normal[second], rcond=1e-3),
                              right[first] + right[second])
        agree = self._residuals(a, j, d, proposals) <= self.MAX_RESIDUAL
        inliers = agree[int(np.argmax(agree.sum(axis=1)))]
        params = np.zeros(3)
        information = 0.0
        for _ in range(2):  # refit on the consensus, then take the tiles that agree with the refit
            if inliers.sum() < self.MIN_TILES:
                return None
            values, vectors = np.linalg.eigh(normal[inliers].sum(axis=0))
            measured = values >= self.MIN_INFORMATION  # a direction no kept tile pins stays unmeasured (0)
            params = vectors[:, measured] @ ((vectors[:, measured].T @ right[inliers].sum(axis=0)) / values[measured])
            information = float(values[0])
            inliers = self._residuals(a, j, d, params[None])[0] <= self.MAX_RESIDUAL
        self.last_estimate.update(agree=float(inliers.sum()), information=round(information, 2))
        if inliers.sum() < self.MIN_TILES or int(measured.sum()) < self._measurable():
            return None  # fewer tiles than needed for a direction the reference pins: unmeasured is not 0
        return float(params[0]) / w, float(params[1]) / w, math.degrees(float(params[2]) / radius), "tiles"

    def _measurable(self) -> int:
        """How many of (x, y, rotation) the reference's tiles pin when all are found (a conveyor's rails: 2)."""
        if self._full is None:
            self._full = sum((self._tile_normal(tile) for tile in self._tiles or []), np.zeros((3, 3)))
        values = np.linalg.eigvalsh(self._full)
        return int((values >= self.MIN_INFORMATION).sum())

    def _tile_normal(self, tile: _Tile) -> np.ndarray:
        radius = self._static.shape[1] / 2 if self._static is not None else 1.0
        a = np.array([[1.0, 0.0, -tile.y / radius], [0.0, 1.0, tile.x / radius]])
        return a.T @ tile.tensor @ a

    @staticmethod
    def _residuals(a: np.ndarray, j: np.ndarray, d: np.ndarray, proposals: np.ndarray) -> np.ndarray:
        """(proposal, tile) squared misfit in pixels, along the directions each tile pins."""
        misfit = d[None] - np.einsum("nki,pi->pnk", a, proposals)
        return np.einsum("pnk,nkl,pnl->pn", misfit, j, misfit)

    def update(self, sample: Sample, t: float) -> Reading | None:
        """The median level of the last ``VOTES`` measured samples (one stray estimate neither raises nor breaks
        an alarm); a sample that cannot be measured keeps that level for ``HOLD_S`` (a truck over the kerb)."""
        found = self.estimate(sample)
        while self._votes and t - self._votes[0][0] > self.VOTE_WINDOW_S:
            self._votes.popleft()
        if found is None:
            if self._reading is None or not self._votes or t - self._votes[-1][0] > self.HOLD_S:
                return None
            return self._reading
        dx, dy, angle, _ = found
        shift = math.hypot(dx, dy)
        c = self.config
        rotation = abs(angle)
        measured = 2 if shift >= c.failed_shift or rotation >= c.failed_deg else \
            1 if shift >= c.warning_shift or rotation >= c.warning_deg else 0
        self._votes.append((t, measured))
        levels = sorted(level for _, level in self._votes)
        level = levels[(len(levels) - 1) // 2]  # the median, the lower one of an even count
        self._reading = Reading(level=level, value=round(shift, 4),
                                detail={"shift": round(shift, 4), "rotation_deg": round(angle, 2),
                                        "measured_level": float(measured), **self.last_estimate})
        return self._reading


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
