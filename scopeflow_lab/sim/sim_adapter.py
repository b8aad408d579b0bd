"""The ``sim`` device adapter: scopeflow's simulators, named by a spec or by CLI options.

``sim:KIND[,KEY=VALUE...]`` with KIND ``sem``, ``optical`` or ``insitu`` and the keys of
:class:`SimOptions`, e.g. ``sim:sem,seed=3,start_defocus_dof=12``. The acquisition node's
``--sim`` options build the same :class:`SimOptions`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from scopeflow.errors import UsageError
from scopeflow.schemas.state import depth_of_field_um

SIMULATORS = ("sem", "optical", "insitu")


@dataclass(frozen=True)
class SimOptions:
    """What a user may set on a simulator from a spec or the command line."""

    seed: int = 0
    family: str = "nanoparticles"  # sem: specimen family
    frame_size: int = 512  # sem, insitu: square frame side, px
    pixel_size_nm: float = 10.0  # sem
    semiangle_mrad: float = 3.0  # sem: beam convergence α
    dose: float = 50.0  # sem: electrons per pixel
    start_defocus_dof: float = 0.0  # sem, optical: start focus − true focus, DoF units
    astigmatism_um: float = 0.0  # sem
    focus_drift_um_per_s: float = 0.0  # sem
    settle_s: float | None = None  # focus (and stage) settle time; None: the simulator's
    max_step_um: float | None = None  # largest single focus move; None: the simulator's
    fps: float = 10.0  # insitu: camera frame rate
    particle_density: float = 0.0  # insitu: particles per µm² (0: the simulator's default)
    motion: str = ""  # insitu: every particle brownian, subdiffusive or confined ("": a mix)
    confinement_nm: float = 0.0  # insitu: confined particles' range (0: the simulator's, 10)
    drift_x: float = 0.0  # insitu: specimen drift, nm/s
    drift_y: float = 0.0
    beam_shift_range: float = 0.0  # insitu: the image shift's range, µm (0: the simulator's, 2)
    pool: int = 0  # insitu: replay this many frames rendered once (any fps); 0: render each


def parse_sim_spec(arg: str) -> tuple[str, SimOptions]:
    """``KIND[,KEY=VALUE...]`` → (kind, options); a UsageError names what is wrong."""
    kind, *pairs = [p.strip() for p in arg.split(",")]
    if kind not in SIMULATORS:
        raise UsageError(f"unknown simulator {kind!r}; choose one of {', '.join(SIMULATORS)}")
    types = {f.name: f.type for f in fields(SimOptions)}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise UsageError(
                f"sim option {pair!r} is not KEY=VALUE with KEY one of {', '.join(types)}"
            )
        values[key] = _convert(key, text.strip(), types[key])
    return kind, SimOptions(**values)


def _convert(key: str, text: str, type_name: Any) -> Any:
    converter = {"int": int, "str": str}.get(str(type_name), float)
    try:
        return converter(text)
    except ValueError:
        raise UsageError(f"sim option {key}={text!r} is not a valid {type_name}") from None


def open_simulator(arg: str) -> Any:
    """Entry point of the ``sim`` adapter: the simulator ``arg`` describes."""
    kind, options = parse_sim_spec(arg)
    return simulator(kind, options)


def microscope_from_args(args: argparse.Namespace) -> Any:
    """The simulator named by ``--sim``, configured from the other options."""
    names = {f.name for f in fields(SimOptions)}
    return simulator(args.sim, SimOptions(**{k: v for k, v in vars(args).items() if k in names}))


def simulator(kind: str, options: SimOptions) -> Any:
    """A simulated SEM, optical flake-chip microscope or in-situ TEM camera."""
    if options.pool and kind != "insitu":
        raise UsageError("pool applies to the insitu camera only")
    if options.beam_shift_range and kind != "insitu":
        raise UsageError("beam_shift_range applies to the insitu camera only")
    if kind == "sem":
        return _sem(options)
    if kind == "optical":
        return _optical(options)
    if kind == "insitu":
        from scopeflow_lab.sim.insitu import InSituConfig, SimulatedInSituCamera

        if options.start_defocus_dof:
            raise UsageError("start_defocus_dof does not apply to the insitu camera")
        size = (options.frame_size, options.frame_size)
        extra: dict[str, Any] = {}
        if options.particle_density > 0:
            extra["particle_density_per_um2"] = options.particle_density
        if options.motion:
            extra["motion_weights"] = ((options.motion, 1.0),)
        if options.confinement_nm > 0:
            extra["confinement_nm"] = options.confinement_nm
        if options.beam_shift_range > 0:
            extra["beam_shift_range_um"] = options.beam_shift_range
        config = InSituConfig(
            frame_shape=size,
            fps=options.fps,
            seed=options.seed,
            max_wd_step_um=options.max_step_um,
            drift_x_nm_per_s=options.drift_x,
            drift_y_nm_per_s=options.drift_y,
            **extra,
        )
        camera = SimulatedInSituCamera(config)
        if options.pool > 0:
            from scopeflow_lab.sim.pooled_camera import PooledCamera

            return PooledCamera(camera, options.pool)
        return camera
    raise UsageError(f"unknown simulator {kind!r}; choose one of {', '.join(SIMULATORS)}")


def _sem(o: SimOptions) -> Any:
    """A simulated SEM whose WD starts ``start_defocus_dof`` depths of field from focus."""
    from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM

    base = SEMConfig()
    dof = depth_of_field_um(o.pixel_size_nm, o.semiangle_mrad)
    return SimulatedSEM(
        SEMConfig(
            seed=o.seed,
            family=o.family,
            frame_shape=(o.frame_size, o.frame_size),
            pixel_size_nm=o.pixel_size_nm,
            beam_semiangle_mrad=o.semiangle_mrad,
            dose_e_per_px=o.dose,
            start_wd_um=base.focus_wd_um + o.start_defocus_dof * dof,
            astigmatism_um=o.astigmatism_um,
            focus_drift_um_per_s=o.focus_drift_um_per_s,
            settle_s=base.settle_s if o.settle_s is None else o.settle_s,
            max_wd_step_um=base.max_wd_step_um if o.max_step_um is None else o.max_step_um,
        )
    )


def _optical(o: SimOptions) -> Any:
    """A simulated optical microscope over a flake chip, ``start_defocus_dof`` out of focus."""
    from scopeflow_lab.sim.optical import OpticalConfig, SimulatedOpticalMicroscope

    cfg = OpticalConfig(seed=o.seed)
    if o.settle_s is not None:
        cfg = dataclasses.replace(cfg, z_settle_s=o.settle_s, stage_settle_s=o.settle_s)
    if o.max_step_um is not None:
        cfg = dataclasses.replace(cfg, max_z_step_um=o.max_step_um)
    sim = SimulatedOpticalMicroscope(cfg)
    if not o.start_defocus_dof:
        return sim
    dof = sim.state().depth_of_field_um() or 0.0
    start_z = cfg.focus_z_at(cfg.start_x_um, cfg.start_y_um) + o.start_defocus_dof * dof
    cfg = dataclasses.replace(cfg, start_z_um=start_z)
    return SimulatedOpticalMicroscope(cfg, chip=sim.chip)
