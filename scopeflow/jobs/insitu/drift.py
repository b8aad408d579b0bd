"""Specimen drift from the live frames (cross-correlation), and stage moves that cancel it.

:class:`DriftEstimator` registers each sampled frame on a reference frame with scikit-image's
``phase_cross_correlation`` (sub-pixel, upsampled 10×) and reports the specimen's drift in nm
since the start. Unnormalised: the phase normalisation whitens the spectrum, and on shot-noise
limited in-situ frames the noise then outweighs the structure (on the simulator's frames the
normalised form gave shifts that were wrong by tens of pixels; unnormalised, within about
10 %, low: the overlap shrinks with the shift and pulls the peak towards zero, which is why the
reference is renewed every eighth of the field: offsets accumulate, so slow drift over a long
run is followed; a jump of more than 30 % of the field between two samples is not believed and
counted as lost). Drift is stated as the motion
of the *field of view over the specimen* in stage coordinates (what a stage move of the
opposite sign cancels): the image content moves the other way.

:class:`DriftCorrector` turns the estimate into stage moves through the acquisition node's
command channel (its limits apply there, in one place): when the uncorrected drift exceeds
``threshold_nm`` it moves the stage by ``-gain ×`` that drift, never more than ``max_step_nm``
at once, and counts what it did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REREFERENCE_FRACTION = 0.125  # of the field side: past it, the newest frame becomes the reference
#: a shift larger than this fraction of the side between two samples is not believed (too little
#: overlap to register): the estimate is lost there, counted, and restarts from that frame
MAX_SHIFT_FRACTION = 0.3


@dataclass
class DriftEstimator:
    """Field drift since the first frame, from frames in time order."""

    pixel_size_nm: float
    rows: list[tuple[int, float, float, float, float]] = field(default_factory=list)
    _ref: np.ndarray | None = None
    _offset_px: tuple[float, float] = (0.0, 0.0)  # field motion up to the reference, px
    _stage_at_start_nm: tuple[float, float] = (0.0, 0.0)
    lost: int = 0  # samples too far from the reference to register

    def update(
        self, image_id: int, time_s: float, frame: np.ndarray, stage_nm: tuple[float, float]
    ) -> tuple[float, float] | None:
        """The specimen drift (x, y) in nm at this frame, or None when the frame does not
        match the reference (too little structure). ``stage_nm``: where the stage stood for
        this frame (moves of our own are not drift)."""
        from skimage.registration import phase_cross_correlation

        img = np.asarray(frame, np.float32)
        if img.ndim == 3:
            img = img.mean(axis=2)
        if self._ref is None:
            self._ref, self._stage_at_start_nm = img, stage_nm
            self.rows.append((image_id, time_s, 0.0, 0.0, 0.0))
            return 0.0, 0.0
        (row, col), error, _ = phase_cross_correlation(
            self._ref, img, upsample_factor=10, normalization=None
        )
        side = min(img.shape)
        if max(abs(row), abs(col)) > MAX_SHIFT_FRACTION * side:
            self.lost += 1  # the offset from here on misses this step; said in the table
            self._ref = img
            return None
        px = self.pixel_size_nm
        # (row, col) moves this frame onto the reference: its content moved by minus that, so
        # the field moved by plus that; the part our own stage moves made is not drift (both
        # counted from the first frame).
        field_px = (self._offset_px[0] + col, self._offset_px[1] + row)
        start = self._stage_at_start_nm
        moved = (stage_nm[0] - start[0], stage_nm[1] - start[1])
        drift = (field_px[0] * px - moved[0], field_px[1] * px - moved[1])
        self.rows.append((image_id, time_s, drift[0], drift[1], float(error)))
        if max(abs(row), abs(col)) > REREFERENCE_FRACTION * side:
            self._ref, self._offset_px = img, field_px
        return drift

    def table(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            self.rows, columns=["image_id", "time_s", "drift_x_nm", "drift_y_nm", "error"]
        )


@dataclass
class DriftCorrector:
    """Stage moves that cancel drift: ``move(dx_nm, dy_nm)`` moves the stage relative."""

    move: Any  # callable (dx_nm, dy_nm) -> None; raises on a refused move
    threshold_nm: float = 5.0
    gain: float = 0.8
    max_step_nm: float = 200.0
    corrected_nm: list[float] = field(default_factory=lambda: [0.0, 0.0])
    moves: int = 0
    refused: int = 0

    def update(self, drift_nm: tuple[float, float]) -> tuple[float, float] | None:
        """Given the total drift so far, move the stage if what is left exceeds the
        threshold; returns the move made (nm) or None."""
        left = (drift_nm[0] + self.corrected_nm[0], drift_nm[1] + self.corrected_nm[1])
        if math.hypot(*left) < self.threshold_nm:
            return None
        step = [-self.gain * v for v in left]
        norm = math.hypot(*step)
        if norm > self.max_step_nm:
            step = [v * self.max_step_nm / norm for v in step]
        try:
            self.move(step[0], step[1])
        except Exception:  # a refused or failed move is counted; the run goes on
            self.refused += 1
            return None
        self.corrected_nm[0] += step[0]
        self.corrected_nm[1] += step[1]
        self.moves += 1
        return step[0], step[1]


@dataclass
class FieldMover:
    """Relative field moves for the drift corrector, by beam (image) shift or by the stage.

    With ``actuator="beam"`` the field is moved electronically (no backlash, no stage settling)
    until the shift would pass ``handoff_fraction`` of its range; then the stage takes the
    whole shift and the beam goes back to zero (two commands; a frame between them shows the
    field off by the shift, and the drift estimator, which reads both from each frame's
    header, does not count it as drift). ``client`` is a
    :class:`~scopeflow.devices.remote.MicroscopeClient`: every move goes through the
    acquisition node's command server and its limits.
    """

    client: Any
    actuator: str  # "beam" or "stage"
    stage_um: tuple[float, float] = (0.0, 0.0)
    beam_um: tuple[float, float] = (0.0, 0.0)
    range_um: float | None = None
    handoff_fraction: float = 0.8
    handoffs: int = 0

    @classmethod
    def open(cls, client: Any, actuator: str) -> FieldMover:
        """Read the microscope's state and limits; ``actuator`` auto, beam or stage (auto:
        beam where the microscope reports a beam-shift range). ValueError for beam without
        one."""
        reply = client.get_state()
        range_um = reply.limits.beam_shift_range_um
        if actuator == "auto":
            actuator = "beam" if range_um else "stage"
        if actuator == "beam" and not range_um:
            raise ValueError(
                "--drift-actuator beam: the microscope reports no beam shift (protocol 1.4 "
                "beam_shift_range_um); use stage"
            )
        mover = cls(client, actuator, range_um=range_um)
        mover._read(reply)
        return mover

    def _read(self, reply: Any) -> None:
        s = reply.state
        self.stage_um = (float(s.stage_x_um), float(s.stage_y_um))
        self.beam_um = (float(s.beam_shift_x_um or 0.0), float(s.beam_shift_y_um or 0.0))

    def move_by(self, dx_nm: float, dy_nm: float) -> None:
        """Move the field by (dx, dy) nm from where it last was; raises on a refused move."""
        dx, dy = dx_nm / 1e3, dy_nm / 1e3
        if self.actuator == "stage":
            self._read(self.client.move_stage(self.stage_um[0] + dx, self.stage_um[1] + dy))
            return
        bx, by = self.beam_um[0] + dx, self.beam_um[1] + dy
        assert self.range_um is not None
        if max(abs(bx), abs(by)) <= self.handoff_fraction * self.range_um:
            self._read(self.client.set_beam_shift(bx, by))
            return
        self._read(self.client.move_stage(self.stage_um[0] + bx, self.stage_um[1] + by))
        self._read(self.client.set_beam_shift(0.0, 0.0))
        self.handoffs += 1
