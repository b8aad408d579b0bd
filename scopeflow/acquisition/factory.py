"""Build microscopes from command-line options."""

from __future__ import annotations

import argparse

from scopeflow.acquisition.sem import SEMConfig, SimulatedSEM
from scopeflow.schemas.state import depth_of_field_um


def simulated_sem_from_args(args: argparse.Namespace) -> SimulatedSEM:
    """A simulated SEM whose WD starts ``--start-defocus-dof`` depths of field from focus."""
    base = SEMConfig()
    dof = depth_of_field_um(args.pixel_size_nm, args.semiangle_mrad)
    return SimulatedSEM(SEMConfig(
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
    ))
