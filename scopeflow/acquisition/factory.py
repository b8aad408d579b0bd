"""Build the microscope an acquisition node serves from command-line options."""

from __future__ import annotations

import argparse

from scopeflow.acquisition.microscope import Microscope
from scopeflow.schemas.state import depth_of_field_um

SIMULATORS = ("sem", "optical", "insitu")


def microscope_from_args(args: argparse.Namespace) -> Microscope:
    """The simulator named by ``--sim``, configured from the other options."""
    if args.sim == "sem":
        return simulated_sem_from_args(args)
    if args.sim == "insitu":
        from scopeflow.acquisition.insitu import InSituConfig, SimulatedInSituCamera

        return SimulatedInSituCamera(
            InSituConfig(
                frame_shape=(args.frame_size, args.frame_size), fps=args.fps, seed=args.seed
            )
        )
    if args.sim == "optical":
        from scopeflow.acquisition.optical import OpticalConfig, SimulatedOpticalMicroscope

        return SimulatedOpticalMicroscope(OpticalConfig(seed=args.seed))
    raise ValueError(f"unknown simulator {args.sim!r}; choose one of {', '.join(SIMULATORS)}")


def simulated_sem_from_args(args: argparse.Namespace):
    """A simulated SEM whose WD starts ``--start-defocus-dof`` depths of field from focus."""
    from scopeflow.acquisition.sem import SEMConfig, SimulatedSEM

    base = SEMConfig()
    dof = depth_of_field_um(args.pixel_size_nm, args.semiangle_mrad)
    return SimulatedSEM(
        SEMConfig(
            seed=args.seed,
            family=args.family,
            frame_shape=(args.frame_size, args.frame_size),
            pixel_size_nm=args.pixel_size_nm,
            beam_semiangle_mrad=args.semiangle_mrad,
            dose_e_per_px=args.dose,
            start_wd_um=base.focus_wd_um + args.start_defocus_dof * dof,
            astigmatism_um=args.astigmatism_um,
            focus_drift_um_per_s=args.focus_drift_um_per_s,
            settle_s=args.settle_s,
        )
    )
