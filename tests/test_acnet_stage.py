"""ACNet as a stage of the inference node: its proposal rides in the focus result, from the
last frames of the same field, and the node can be told not to run it."""

from __future__ import annotations

import numpy as np
import pytest

from scopeflow.devices.frames import frame_message
from scopeflow.inference.processors import make_processor
from scopeflow.schemas.state import depth_of_field_um
from scopeflow_lab.sim.sem import SEMConfig, SimulatedSEM

DOF = depth_of_field_um(10.0, 3.0)


def _reads(processor, sim, moves, series="s1"):
    out = []
    for i, (wd, xy) in enumerate(moves):
        sim.set_wd(wd)
        sim.move_stage(*xy)
        msg = frame_message(
            sim.acquire(), series_id=0, series_unique_id=series, image_id=i, command_seq=i
        )
        ((est, _),) = processor.process(msg)
        out.append(est)
    return out


def test_the_proposal_points_towards_focus_and_uses_the_frames_before():
    sim = SimulatedSEM(SEMConfig(frame_shape=(256, 256), settle_s=0.0, seed=2, family="grains"))
    focus = sim.true_focus_wd_um()
    processor = make_processor("aenet", "onnxruntime")
    # Two frames above focus, the second closer: the pair says which way focus lies.
    _, second = _reads(processor, sim, [(focus + 12 * DOF, (0, 0)), (focus + 8 * DOF, (0, 0))])
    assert second.acnet_correction_dof is not None and 0 <= second.acnet_confidence <= 1
    assert second.acnet_correction_dof < 0  # back down towards focus
    assert abs(second.acnet_correction_dof) == pytest.approx(8, rel=0.5)
    # The same frame with no history (a new series) gives ACNet one frame only: another input.
    (alone,) = _reads(make_processor("aenet", "onnxruntime"), sim, [(focus + 8 * DOF, (0, 0))])
    assert alone.acnet_correction_dof != second.acnet_correction_dof


def test_a_new_field_starts_a_new_history():
    sim = SimulatedSEM(SEMConfig(frame_shape=(256, 256), settle_s=0.0, seed=2, family="grains"))
    focus = sim.true_focus_wd_um()
    frames = []
    for i, (wd, x) in enumerate([(focus + 12 * DOF, 0.0), (focus + 8 * DOF, 5.0)]):
        sim.set_wd(wd)
        sim.move_stage(x, 0.0)  # the second frame is of another field
        frames.append(
            frame_message(
                sim.acquire(), series_id=0, series_unique_id="s", image_id=i, command_seq=i
            )
        )
    shared, fresh = make_processor("aenet", "onnxruntime"), make_processor("aenet", "onnxruntime")
    shared.process(frames[0])
    ((moved, _),) = shared.process(frames[1])
    ((alone, _),) = fresh.process(frames[1])
    assert moved.acnet_correction_dof == alone.acnet_correction_dof  # the first frame forgotten


def test_without_acnet_the_focus_result_carries_no_proposal():
    sim = SimulatedSEM(SEMConfig(frame_shape=(128, 128), settle_s=0.0))
    (est,) = _reads(make_processor("aenet", "onnxruntime", acnet=False), sim, [(5010.0, (0, 0))])
    assert est.abs_defocus_dof is not None and np.isfinite(est.score)
    assert est.acnet_correction_dof is None and est.acnet_confidence is None
