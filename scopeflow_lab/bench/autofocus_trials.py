"""Seeded autofocus trials on the simulated SEM, and the in-process loop that runs a controller.

Every method of ``scopeflow bench autofocus`` meets the same trials: trial ``i`` of seed ``s``
draws its specimen family (trained and held-out families in turn), magnification (pixel 5, 10 or
20 nm), beam semi-angle (2, 3 or 5 mrad), dose (10–500 e⁻/px, log-uniform), astigmatism (half
the trials, 0.5–3 DoF at a random axis) and start (uniform within ±30 DoF of focus) from
``default_rng([s, i])``; each method gets a fresh simulator built from the same config, so the
frames it would see at a WD are the same.

The loop drives a controller's ask/tell state machine directly against the simulator (no
sockets: the closed-loop tests cover the transport), reading each frame with AENet and a
classical metric. Timing counts the controller's own work (inference and decisions), not the
simulator's rendering; the simulated WD actuator settles instantly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from scopeflow.control.learned_autofocus import FrameReading
from scopeflow.devices.frames import frame_message
from scopeflow.devices.protocols import Frame
from scopeflow.jobs.autofocus import reading_from_estimate
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM, make_specimen

FOCUS_WD_UM = 5000.0
BENCH_SEED = 31  # the benchmark's trials; tuning used other seeds (docs/autofocus.md)
SPECIMEN_SEED = 7_000
START_RANGE_DOF = 30.0


@dataclass(frozen=True)
class Trial:
    """One seeded autofocus trial."""

    index: int
    family: str
    heldout: bool
    pixel_nm: float
    alpha_mrad: float
    dose: float
    astigmatism_dof: float
    astigmatism_angle_deg: float
    start_dof: float
    config: SEMConfig = field(repr=False)

    @property
    def dof_um(self) -> float:
        return self.pixel_nm / self.alpha_mrad


def families() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(families AENet trained on, families held out of its training)."""
    from scopeflow_lab.training.aenet_scenes import TRAIN_FAMILIES
    from scopeflow_lab.training.focus_eval import heldout_families

    held = heldout_families()
    return tuple(f for f in TRAIN_FAMILIES if f not in held), held


def make_trials(
    n: int, seed: int = BENCH_SEED, frame_size: int = 512, start_range_dof: float = START_RANGE_DOF
) -> list[Trial]:
    """``n`` trials; every third trial uses a held-out family."""
    trained, held = families()
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        heldout = i % 3 == 2
        pool = held if heldout else trained
        family = pool[int(rng.integers(len(pool)))]
        pixel_nm = float(rng.choice([5.0, 10.0, 20.0]))
        alpha = float(rng.choice([2.0, 3.0, 5.0]))
        dof = pixel_nm / alpha
        dose = float(np.exp(rng.uniform(np.log(10.0), np.log(500.0))))
        astig = float(rng.uniform(0.5, 3.0)) if rng.random() < 0.5 else 0.0
        angle = float(rng.uniform(0.0, 180.0))
        start = float(rng.uniform(-start_range_dof, start_range_dof))
        cfg = replace(
            SEMConfig(),
            frame_shape=(frame_size, frame_size),
            pixel_size_nm=pixel_nm,
            beam_semiangle_mrad=alpha,
            dose_e_per_px=dose,
            family=family,
            seed=seed * 100_000 + i,
            astigmatism_um=astig * dof,
            astigmatism_angle_deg=angle,
            focus_wd_um=FOCUS_WD_UM,
            start_wd_um=FOCUS_WD_UM + start * dof,
            settle_s=0.0,
            start_stage_x_um=float(rng.uniform(-20, 20)),
            start_stage_y_um=float(rng.uniform(-20, 20)),
        )
        out.append(Trial(i, family, heldout, pixel_nm, alpha, dose, astig, angle, start, cfg))
    return out


class SpecimenCache:
    """One procedural specimen per family, shared by every trial (generating one takes ~1 s)."""

    def __init__(self) -> None:
        self._specimens: dict[str, Any] = {}

    def microscope(self, trial: Trial, **kwargs: Any) -> SimulatedSEM:
        if trial.family not in self._specimens:
            self._specimens[trial.family] = make_specimen(trial.family, SPECIMEN_SEED)
        return SimulatedSEM(trial.config, specimen=self._specimens[trial.family], **kwargs)


class FrameReader:
    """Reads a frame exactly as the inference node and the jobs do: the node's focus processor
    (AENet with the classical sharpness, or a classical metric alone) on the frame's ``image``
    message, then :func:`~scopeflow.jobs.autofocus.reading_from_estimate`."""

    def __init__(self, model: str = "aenet", backend: str = "onnxruntime") -> None:
        from scopeflow.inference.processors import make_processor

        self.processor = make_processor(model, backend)

    def __call__(self, frame: Frame) -> FrameReading:
        msg = frame_message(frame, series_id=0, series_unique_id="bench", image_id=0, command_seq=0)
        ((estimate, _),) = self.processor.process(msg)
        return reading_from_estimate(estimate)


@dataclass
class LoopResult:
    """What one controller run did."""

    frames: int
    stop_reason: str
    final_wd_um: float
    final_error_dof: float
    start_error_dof: float
    seconds: float
    trace: list[dict[str, float]] = field(default_factory=list)


def run_loop(
    sim: SimulatedSEM,
    machine: Any,
    reader: FrameReader,
    tell: Callable[[Any, FrameReading], None] | None = None,
) -> LoopResult:
    """Drive an ask/tell autofocus ``machine`` against ``sim``; every frame counts.

    ``tell``: how to hand a reading to the machine (default ``machine.tell(reading)``).
    """
    tell = tell or (lambda m, r: m.tell(r))
    dof = sim.config.pixel_size_nm / sim.config.beam_semiangle_mrad
    start_err = (sim.state().wd_um - sim.true_focus_wd_um()) / dof
    work = 0.0
    trace = []
    while True:
        t0 = time.perf_counter()
        wd = machine.next_wd()
        work += time.perf_counter() - t0
        if wd is None:
            break
        if wd != sim.state().wd_target_um:
            sim.set_wd(wd)
        frame = sim.acquire()
        t0 = time.perf_counter()
        reading = reader(frame)
        tell(machine, reading)
        work += time.perf_counter() - t0
        trace.append(
            {
                "wd_um": frame.state.wd_um,
                "defocus_dof": frame.truth.defocus_um / dof if frame.truth else None,
            }
        )
    final = machine.final_wd_um
    sim.set_wd(final)
    err = (final - sim.true_focus_wd_um()) / dof
    return LoopResult(
        len(trace), machine.stop_reason or "timeout", final, abs(err), abs(start_err), work, trace
    )


def run_autofocus_job(sim: SimulatedSEM, reader: FrameReader, use_acnet: bool = True):
    """The ``autofocus`` job itself on a local scope around ``sim``, as ``scopeflow run``
    runs it. ``seconds`` counts the job's decisions and the inference, not the simulator."""
    from scopeflow.control.learned_autofocus import LearnedAutofocusConfig
    from scopeflow.jobs.autofocus import AutofocusJob, AutofocusJobConfig
    from scopeflow.jobs.runner import run_job
    from scopeflow.scopes.local import LocalScope

    dof = sim.config.pixel_size_nm / sim.config.beam_semiangle_mrad
    start_err = (sim.state().wd_um - sim.true_focus_wd_um()) / dof
    scope = LocalScope(sim, processors={"focus": reader.processor})
    config = AutofocusJobConfig(learned=LearnedAutofocusConfig(use_acnet=use_acnet))
    outcome, stats = run_job(AutofocusJob(config), scope)
    final = outcome.details.get("final_wd_um")
    final = sim.state().wd_target_um if final is None else final
    trace = [
        {"wd_um": r["wd_um"], "defocus_dof": r["true_defocus_um"] / dof}
        for r in outcome.details.get("records", [])
    ]
    return LoopResult(
        frames=stats.frames,
        stop_reason=outcome.reason,
        final_wd_um=final,
        final_error_dof=abs(final - sim.true_focus_wd_um()) / dof,
        start_error_dof=abs(start_err),
        seconds=stats.job_seconds + scope.inference_seconds,
        trace=trace,
    )
