"""What an inference node does with a frame, per model: the result messages it publishes.

A processor maps one decoded ``image`` message to result messages (header + buffers):
``focus`` for focus evaluators (classical metrics, AENet), ``denoised`` for the denoiser,
``detections`` for the detectors. Learned models run on a backend session (ONNX Runtime by
default); the numpy-level runners live beside each model definition.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from scopeflow.inference import backends
from scopeflow.inference.evaluators import get_evaluator, signal_check
from scopeflow.inference.sharpness import METRICS
from scopeflow.schemas.codec import Message
from scopeflow.schemas.results import DetectionsResult, FocusEstimate
from scopeflow.schemas.series import DenoisedHeader, ImageHeader

log = logging.getLogger(__name__)

Result = tuple[BaseModel, tuple[np.ndarray, ...]]
LEARNED = ("aenet", "denoiser", "flake_detector", "particle_detector")


class Processor(Protocol):
    """Turns an image message into result messages; raises ValueError for unusable frames.

    ``backend``: what runs it (``numpy`` for classical metrics, else the session's backend).
    """

    name: str
    backend: str
    kind: str  # the result kind it publishes: focus, denoised or detections

    def process(self, msg: Message) -> list[Result]: ...


def _focus(
    header: ImageHeader, evaluator: str, score: float, signal: str, **extra: Any
) -> FocusEstimate:
    return FocusEstimate(
        series_unique_id=header.series_unique_id,
        image_id=header.image_id,
        command_seq=header.command_seq,
        evaluator=evaluator,
        score=score,
        signal=signal,
        monotonic_ns=header.monotonic_ns,
        computed_monotonic_ns=time.monotonic_ns(),
        state=header.state,
        truth=header.truth,
        **extra,
    )


class ClassicalFocus:
    """A classical sharpness metric (the baseline)."""

    backend = "numpy"
    kind = "focus"

    def __init__(self, metric: str) -> None:
        self.name = metric
        self._evaluate = get_evaluator(metric)

    def process(self, msg: Message) -> list[Result]:
        pixels = msg.array()
        signal = signal_check(pixels, msg.header.state.dose_e_per_px)
        score = self._evaluate(pixels) if signal == "ok" else 0.0
        return [(_focus(msg.header, self.name, score, signal), ())]


class AENetFocus:
    """AENet: focus quality 0–9 and |Δz| in depth-of-field units; then ACNet's proposal for the
    next move (:mod:`scopeflow.inference.acnet_stage`) when ACNet is shipped and wanted."""

    name = "aenet"
    kind = "focus"

    def __init__(self, backend: str, acnet: bool = True) -> None:
        from scopeflow.inference.acnet_stage import ACNetStage
        from scopeflow.inference.models.aenet import AENet

        self._net = AENet(backends.load("aenet", backend))
        self.backend = self._net.session.backend
        self._sharpness = get_evaluator("normalized_variance")
        self._acnet: ACNetStage | None = None
        if acnet:
            try:
                self._acnet = ACNetStage(backend)
            except (FileNotFoundError, RuntimeError, ValueError) as exc:
                log.warning("ACNet unavailable (%s); focus results carry no proposal", exc)

    def process(self, msg: Message) -> list[Result]:
        pixels = msg.array()
        res = self._net.evaluate(pixels)  # ValueError for a frame AENet cannot read
        signal = signal_check(pixels, msg.header.state.dose_e_per_px)
        if signal != "ok":
            return [(_focus(msg.header, self.name, 0.0, signal), ())]
        proposal = self._acnet.propose(msg.header, res) if self._acnet is not None else None
        acnet = {}
        if proposal is not None:
            acnet = {"acnet_correction_dof": proposal[0], "acnet_confidence": proposal[1]}
        return [
            (
                _focus(
                    msg.header,
                    self.name,
                    float(res.score),
                    signal,
                    quality_level=int(res.level),
                    abs_defocus_dof=float(res.abs_defocus_dof),
                    aenet_features=tuple(float(v) for v in res.features),
                    sharpness=float(self._sharpness(pixels)),
                    **acnet,
                ),
                (),
            )
        ]


class Denoise:
    """The denoiser: publishes the denoised frame (float32, the input's DN scale).

    ``max_side``: frames larger than this on a side are first binned by the smallest integer
    factor that brings them within it (pixel means; the header's pixel size and magnification
    follow), for a display path where a quarter of the pixels costs a quarter of the time."""

    name = "denoiser"
    kind = "denoised"

    def __init__(self, backend: str, max_side: int | None = None) -> None:
        from scopeflow.inference.models.denoiser import Denoiser
        from scopeflow.inference.models.flake_detector import downsample

        if max_side is not None and max_side < 16:
            raise ValueError(f"--max-side must be at least 16 px, got {max_side}")
        self.max_side = max_side
        self._downsample = downsample  # block means (imported with the model, not per frame)
        self._net = Denoiser(backends.load("denoiser", backend))
        self.backend = self._net.session.backend

    def process(self, msg: Message) -> list[Result]:
        pixels = msg.array()
        fields = msg.header.model_dump(exclude={"shape", "dtype", "protocol_version"})
        k = 1
        if self.max_side is not None and max(pixels.shape[:2]) > self.max_side:
            k = -(-max(pixels.shape[:2]) // self.max_side)  # ceil: the side fits max_side
        if k > 1 and pixels.ndim == 2:
            h, w = pixels.shape[0] // k, pixels.shape[1] // k
            pixels = self._downsample(pixels[: h * k, : w * k].astype(np.float32), k)
            state = fields["state"]
            state["pixel_size_nm"] *= k
            state["magnification"] /= k
        out = np.ascontiguousarray(self._net.denoise(pixels), dtype=np.float32)
        header = DenoisedHeader(**fields, shape=out.shape, dtype="float32", model=self.name)
        return [(header, (out,))]


#: The flake detector's ``--oxide-nm`` when neither it nor a calibration is given: the physics
#: prior estimates the oxide from the chip's own flakes (``"none"``: the network alone).
DEFAULT_OXIDE = "auto"


class Detect:
    """A detector: publishes the objects found in the frame."""

    kind = "detections"
    #: trained on raw frames: in a chain it reads the camera's counts, not a denoised frame
    reads_counts = True

    def __init__(
        self,
        model: str,
        backend: str,
        calibration: str | None = None,
        materials: tuple[str, ...] | None = None,
        oxide: str | None = None,
        detect_pixel_nm: float | None = None,
    ) -> None:
        self.name = model
        if detect_pixel_nm is not None and model != "particle_detector":
            raise ValueError(f"--detect-pixel-nm applies to the particle_detector, not to {model}")
        flake_only = calibration is not None or materials is not None or oxide is not None
        if flake_only and model != "flake_detector":
            raise ValueError(
                "--calibration, --materials and --oxide-nm apply to the flake_detector, "
                f"not to {model}"
            )
        if calibration is not None and oxide is not None:
            raise ValueError("give --calibration or --oxide-nm, not both")
        if oxide is None and calibration is None:
            oxide = DEFAULT_OXIDE  # the physics prior, unless a calibration says otherwise
        self._series: str | None = None
        session = backends.load(model, backend)
        self.backend = session.backend
        if model == "flake_detector":
            from scopeflow.inference.models.flake_calibration import FlakeCalibration
            from scopeflow.inference.models.flake_detector import FlakeDetector
            from scopeflow.inference.models.flake_physics import parse_oxide

            cal = FlakeCalibration.load(calibration) if calibration is not None else None
            self._net = FlakeDetector(
                session,
                calibration=cal,
                materials=materials,
                oxide=None if oxide in (None, "none") else parse_oxide(oxide),
            )
        else:
            from scopeflow.inference.models.particle_detector import WORK_PIXEL_NM, ParticleDetector

            work = WORK_PIXEL_NM if detect_pixel_nm is None else float(detect_pixel_nm)
            self._net = ParticleDetector(session, work_pixel_nm=work)

    def process(self, msg: Message) -> list[Result]:
        h = msg.header
        pixel_nm = h.state.pixel_size_nm if h.state is not None else None
        # Both detectors set their input scale from the pixel size.
        if self.name == "flake_detector" and h.series_unique_id != self._series:
            self._series = h.series_unique_id  # a new chip: its own oxide estimate
            self._net.restart_self_calibration()
        found = self._net.detect(rgb(msg), pixel_size_nm=pixel_nm)
        return [(detections_result(h, self.name, found), ())]


def detections_result(header: ImageHeader, model: str, found: list[Any]) -> DetectionsResult:
    """The result message for the detections ``model`` found in the frame of ``header``."""
    return DetectionsResult(
        series_unique_id=header.series_unique_id,
        image_id=header.image_id,
        command_seq=header.command_seq,
        model=model,
        monotonic_ns=header.monotonic_ns,
        computed_monotonic_ns=time.monotonic_ns(),
        state=header.state,
        detections=found,
        frame_shape=(int(header.shape[0]), int(header.shape[1])),
    )


def rgb(msg: Message) -> np.ndarray:
    """The frame with its colour channels in RGB order, as the models expect: a frame the
    microscope declares BGR (protocol 1.3 ``channel_order``) is reordered; one that declares
    nothing is RGB by the protocol's rule."""
    pixels = msg.array()
    if getattr(msg.header, "channel_order", None) == "BGR" and pixels.ndim == 3:
        return np.ascontiguousarray(pixels[..., ::-1])
    return pixels


def make_processor(
    model: str,
    backend: str = "auto",
    acnet: bool = True,
    calibration: str | None = None,
    materials: tuple[str, ...] | None = None,
    oxide: str | None = None,
    detect_pixel_nm: float | None = None,
    max_side: int | None = None,
) -> Processor:
    """The processor serving ``model`` (a classical metric name or a shipped model); ``acnet``:
    run ACNet after AENet; ``calibration``: the flake detector's setup calibration (a folder
    written by ``scopeflow calibrate flake-detector``); ``materials``: the flake materials on
    the chip (the flake detector reports no other); ``oxide``: the chip's SiO₂ thickness in nm,
    a range ``LO-HI``, ``auto`` (the flake detector's physics prior calibrates its colours
    from the chip's own flakes; the default unless a calibration is given) or ``none``;
    ``detect_pixel_nm``: the particle detector analyses finer frames binned to about this;
    ``max_side``: the denoiser bins larger frames to fit this side (a display path).
    ``model`` may name several, comma-separated (``denoiser,particle_detector``): a
    :class:`~scopeflow.inference.chain.Chain` that runs them in sequence on each frame."""
    if max_side is not None and model != "denoiser":
        raise ValueError(f"--max-side applies to the denoiser alone, not to {model}")
    if "," in model:
        from scopeflow.inference.chain import Chain

        names = [m.strip() for m in model.split(",")]
        return Chain(
            [
                make_processor(m, backend, acnet, calibration, materials, oxide, detect_pixel_nm)
                for m in names
            ]
        )
    if model in METRICS:
        return ClassicalFocus(model)
    if model == "aenet":
        return AENetFocus(backend, acnet)
    if model == "denoiser":
        return Denoise(backend, max_side)
    if model in ("flake_detector", "particle_detector"):
        return Detect(model, backend, calibration, materials, oxide, detect_pixel_nm)
    known = ", ".join([*METRICS, *LEARNED])
    raise ValueError(f"unknown model {model!r}; the inference node serves: {known}")
