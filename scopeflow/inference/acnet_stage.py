"""ACNet as a stage of the inference node, after AENet.

For each frame AENet reads, ACNet proposes the next signed WD correction (DoF units) and its
confidence from the last frames of the same field: the same series, stage position and pixel
size, the current frame last, each with its WD offset from the current one. The proposal
travels in the ``focus`` result (protocol 1.3), so the autofocus job reads a number and runs no
model: ACNet has one owner, the node that runs AENet.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from scopeflow.inference import backends
from scopeflow.schemas.series import ImageHeader

HISTORY_FRAMES = 3  # what ACNet was trained on: the current frame and the two before it
MAX_SERIES = 8  # series kept (a node outlives acquisition restarts; old series are dropped)


class ACNetStage:
    """Keeps the recent AENet readings per field and asks ACNet for a proposal."""

    def __init__(self, backend: str) -> None:
        from scopeflow.inference.models.acnet import ACNet

        self._net = ACNet(backends.load("acnet", backend))
        self._history: OrderedDict[str, deque[tuple[Any, float, Any]]] = OrderedDict()

    def propose(self, header: ImageHeader, result: Any) -> tuple[float, float] | None:
        """(correction in DoF, confidence) for the frame of ``header`` that AENet read as
        ``result``; None when the depth of field is unknown."""
        from scopeflow.inference.models.acnet import Observation

        state = header.state
        dof = state.depth_of_field_um()
        if not dof:
            return None
        field = (state.stage_x_um, state.stage_y_um, state.pixel_size_nm)
        history = self._history.setdefault(header.series_unique_id, deque(maxlen=HISTORY_FRAMES))
        self._history.move_to_end(header.series_unique_id)
        while len(self._history) > MAX_SERIES:
            self._history.popitem(last=False)
        if history and history[-1][0] != field:  # another field: earlier frames say nothing
            history.clear()
        history.append((field, state.wd_um, result))
        here = state.wd_um
        proposal = self._net.propose([Observation(r, (wd - here) / dof) for _, wd, r in history])
        return proposal.correction_dof, proposal.confidence
