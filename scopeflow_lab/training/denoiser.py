"""Train the denoiser on simulated (noisy, clean) pairs: SEM fast scans and in-situ TEM frames.

Supervised: the target is the simulator's noise-free expectation of the very frame the detector
produced (SEM: ``acquire_with_clean``; in-situ: the Beer–Lambert counts rendered noise-free,
passed through the same detector MTF as the noisy frame — the MTF acts after the Poisson noise,
so the noisy frame's expectation is the MTF-filtered counts). Both go through the runner's own
normalisation (:func:`scopeflow.inference.models.denoiser.normalise`, from the noisy frame
alone). The loss is the mean over frames of log(frame MSE) in those units, the twin of the mean
PSNR over frames (the loss curve shows the plain normalised MSE).

Data (``SEMPairs``, ``insitu_pair``): 128² frames drawn from the simulators into a pool of which
one frame is renewed every step; random flips and 90° turns. One model serves both
modalities: the normalisation removes the detectors' scales, and the network tells SEM and
in-situ frames apart by their content and noise texture (no modality flag to get wrong).

- SEM (55 % of frames): five of the six specimen families (``fibres`` is held out), specimens
  with seeds from ``TRAIN_SEED``; dose log-uniform 8–60 e⁻/px for 70 % of the frames and
  5–600 e⁻/px for the rest; pixel size 3–20 nm; defocus within ±1.5 DoF; uint16 and (a
  quarter) uint8 output with automatic gain; a third of the frames with another detector offset
  or scan-line jitter.
- In-situ (45 %): shapes sphere/rod/prism (``cube`` is held out); dose log-uniform
  400–2500 e⁻/px for 70 % of the frames and 300–5000 e⁻/px for the rest; pixel size 0.3–1 nm;
  particle density, size, λ and water thickness varied; the detector MTF varied (and off for
  15 % of frames), and a third of the frames with another camera gain, offset and read noise.

Schedule: Adam, linear warm-up then cosine decay, over ``steps`` or the loop's wall-clock
``budget_s``, whichever comes first (so a run on a busy machine still ends annealed, within
the 15-minute budget; ``metrics.json`` records which limit ended it and the load average).

Held-out evaluation (``heldout_sem``/``heldout_insitu``, also used by ``scopeflow bench
models``) draws specimens and scenes from ``TEST_SEED`` onwards, never used in training, and
includes the held-out family and shape. ``CALIBRATION_SEED`` is a third disjoint range, on
which the benchmark tunes its baselines' parameters.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.inference.models import denoiser as model
from scopeflow.schemas.state import depth_of_field_um
from scopeflow_lab.sim.insitu import Imager, InSituConfig, InSituScene
from scopeflow_lab.sim.sem import SPECIMEN_FAMILIES, SEMConfig, SimulatedSEM, make_specimen
from scopeflow_lab.training.common import TrainLog, save_loss_curve, seed_everything, write_json

HELDOUT_FAMILY = "fibres"
TRAIN_FAMILIES = tuple(f for f in SPECIMEN_FAMILIES if f != HELDOUT_FAMILY)
HELDOUT_SHAPE = "cube"
TRAIN_SHAPES = (("sphere", 0.4), ("rod", 0.3), ("prism", 0.3))
TRAIN_SEED = 1_000  # specimen/scene seeds of the training data start here …
CALIBRATION_SEED = 8_000  # … those the benchmark tunes baselines on here …
TEST_SEED = 9_000  # … and the held-out test data's here: the three ranges never meet.

SEM_DOSES = (5.0, 600.0)  # training range, e⁻/px, log-uniform …
SEM_FOCUS_DOSES = (8.0, 60.0)  # … with 70 % of the SEM frames drawn from the fast-scan range
INSITU_DOSES = (300.0, 5000.0)
INSITU_FOCUS_DOSES = (400.0, 2500.0)  # 70 % of the in-situ frames: the low-dose range
FOCUS_FRACTION = 0.7
SIZE = 128  # training frames, pixels per side
_IDEAL_DOSE = 20_000.0  # in-situ clean frames are rendered bright, then scaled (no rounding)


@dataclass(frozen=True)
class Pair:
    """A noisy frame as the detector gives it and its noise-free expectation (float32 DN)."""

    noisy: np.ndarray
    clean: np.ndarray
    modality: str  # "sem" or "insitu"
    dose_e_per_px: float
    family: str  # SEM specimen family, or "insitu"


# -- SEM ----------------------------------------------------------------------------------------
class SEMPairs:
    """SEM frame pairs from a fixed set of specimens (``families`` × ``specimen_seeds``)."""

    def __init__(
        self,
        families: tuple[str, ...],
        specimen_seeds: tuple[int, ...],
        size: int,
        seed: int,
        samples: int = 2048,
    ) -> None:
        self.size = size
        self.period_um = samples * 4.0e-3  # the specimen repeats after samples × 4 nm
        self.specimens = [
            (f, s, make_specimen(f, s, samples)) for f in families for s in specimen_seeds
        ]
        self._seed = seed
        self._sims: dict[tuple[int, str, int], SimulatedSEM] = {}

    def _sim(self, index: int, dtype: str, variant: int) -> SimulatedSEM:
        key = (index, dtype, variant)
        if key not in self._sims:  # building one costs ~40 ms: keep them
            family, spec_seed, specimen = self.specimens[index]
            extra: dict[str, Any] = {}
            full = 65535.0 if dtype == "uint16" else 255.0
            if variant == 1:  # another brightness/contrast setting
                extra = {"offset_dn": 0.1 * full, "line_jitter_px": 0.0}
            elif variant == 2:  # a slow scan with visible line jitter, a low offset
                extra = {"offset_dn": 0.005 * full, "line_jitter_px": 0.3}
            cfg = SEMConfig(
                frame_shape=(self.size, self.size),
                dtype=dtype,
                settle_s=0.0,
                family=family,
                seed=(
                    self._seed * 7919 + spec_seed * 31 + index + 1000 * variant + (dtype == "uint8")
                )
                % 2**31,
                **extra,
            )
            self._sims[key] = SimulatedSEM(cfg, specimen=specimen)
        return self._sims[key]

    def pair(
        self,
        rng: np.random.Generator,
        dose: float,
        *,
        index: int | None = None,
        dtype: str | None = None,
        variant: int | None = None,
    ) -> Pair:
        """One frame at ``dose`` at a random place, magnification and (small) defocus."""
        i = int(rng.integers(len(self.specimens))) if index is None else index
        dt = dtype or ("uint8" if rng.random() < 0.25 else "uint16")
        var = (
            (0 if rng.random() < 2 / 3 else int(rng.integers(1, 3))) if variant is None else variant
        )
        sim = self._sim(i, dt, var)
        pixel_nm = float(math.exp(rng.uniform(math.log(3.0), math.log(20.0))))
        sim.set_pixel_size_nm(pixel_nm)
        sim.move_stage(float(rng.uniform(0, self.period_um)), float(rng.uniform(0, self.period_um)))
        dof = depth_of_field_um(pixel_nm, sim.config.beam_semiangle_mrad)
        sim.set_wd(sim.true_focus_wd_um() + float(rng.uniform(-1.5, 1.5)) * dof)
        sim.set_dose_e_per_px(float(dose))
        frame, clean = sim.acquire_with_clean()
        return Pair(frame.pixels, clean, "sem", float(dose), self.specimens[i][0])


# -- in-situ TEM --------------------------------------------------------------------------------
def insitu_pair(config: InSituConfig, dose: float) -> Pair:
    """One in-situ frame at ``dose`` (in focus) and its expectation, for a scene ``config``."""
    scene = InSituScene(replace(config, dose_e_per_px=float(dose)))
    cam = config.camera_model()
    ideal_dose = min(_IDEAL_DOSE, 30_000.0 / cam.gain_dn_per_e)  # bright, yet never clipped
    ideal = scene.render(
        (config.start_stage_x_um, config.start_stage_y_um),
        dose_e_per_px=ideal_dose,
        ideal=True,
        truth=False,
    ).image
    noisy = scene.render((config.start_stage_x_um, config.start_stage_y_um), truth=False).image
    offset = np.float32(cam.offset_dn)
    clean = (ideal.astype(np.float32) - offset) * np.float32(dose / ideal_dose) + offset
    if config.transfer:  # the MTF acts on the noisy counts, so the expectation carries it too
        clean = Imager(
            config.frame_shape, config.pixel_size_nm, config.optics(), cam, transfer=True
        ).mtf.apply(clean)
    return Pair(noisy, clean.astype(np.float32), "insitu", float(dose), "insitu")


def random_insitu_config(
    rng: np.random.Generator,
    size: int,
    seed: int,
    shapes: tuple[tuple[str, float], ...] = TRAIN_SHAPES,
) -> InSituConfig:
    """A training scene: cell, particles, MTF and camera varied around the simulator's defaults."""
    camera: dict[str, float] = {}
    if rng.random() < 1 / 3:
        camera = {
            "gain_dn_per_e": float(rng.uniform(0.5, 4.0)),
            "offset_dn": float(rng.uniform(0.0, 300.0)),
            "read_noise_e": float(rng.uniform(0.0, 3.0)),
        }
    return InSituConfig(
        frame_shape=(size, size),
        seed=seed,
        shape_weights=shapes,
        pixel_size_nm=float(rng.uniform(0.3, 1.0)),
        particle_density_per_um2=float(math.exp(rng.uniform(math.log(100), math.log(1500)))),
        particle_size_nm=float(rng.uniform(4.0, 16.0)),
        lambda_particle_nm=float(rng.uniform(20.0, 80.0)),
        water_thickness_nm=float(rng.uniform(50.0, 300.0)),
        transfer=bool(rng.random() < 0.85),
        mtf_half_cycles_per_px=float(rng.uniform(0.15, 0.5)),
        mtf_floor=float(rng.uniform(0.05, 0.3)),
        **camera,
    )


def heldout_insitu_config(size: int, seed: int) -> InSituConfig:
    """A test scene: the simulator's defaults (all four shapes, counting camera, MTF on) at
    0.5 nm/px, with a particle density that puts a few particles in a small field."""
    return InSituConfig(frame_shape=(size, size), seed=seed, particle_density_per_um2=300.0)


# -- held-out sets ------------------------------------------------------------------------------
def heldout_sem(
    doses: tuple[float, ...],
    per_dose: int,
    size: int = 256,
    seed: int = TEST_SEED,
    samples: int = 2048,
) -> list[Pair]:
    """SEM test frames: every family in turn (``fibres`` held out of training), specimens from
    ``seed``, uint16, ``per_dose`` frames per dose."""
    families = tuple(SPECIMEN_FAMILIES)
    source = SEMPairs(families, (seed,), size, seed, samples)
    rng = np.random.default_rng(seed)
    pairs = []
    for j, dose in enumerate(doses):
        for k in range(per_dose):
            index = (j * per_dose + k) % len(families)  # every family in turn
            pairs.append(source.pair(rng, dose, index=index, dtype="uint16", variant=0))
    return pairs


def heldout_insitu(
    doses: tuple[float, ...], per_dose: int, size: int = 256, seed: int = TEST_SEED
) -> list[Pair]:
    """In-situ test frames: default scenes (cubes included) from seeds ``seed`` onwards."""
    pairs = []
    for j, dose in enumerate(doses):
        for k in range(per_dose):
            pairs.append(insitu_pair(heldout_insitu_config(size, seed + 100 * j + k), dose))
    return pairs


# -- training -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """Steps, batch, pool and learning rate of one run."""

    steps: int
    budget_s: float  # wall-clock cap of the training loop (the cosine schedule follows it)
    batch: int
    pool: int  # pairs kept in memory
    renew: int  # pairs replaced by fresh ones every step
    lr: float
    specimen_seeds: int  # specimens per SEM family
    specimen_samples: int
    eval_per_dose: int


FULL = Schedule(
    steps=6000,
    budget_s=780.0,
    batch=16,
    pool=512,
    renew=1,
    lr=2e-3,
    specimen_seeds=2,
    specimen_samples=2048,
    eval_per_dose=4,
)
QUICK = Schedule(
    steps=6,
    budget_s=60.0,
    batch=4,
    pool=8,
    renew=1,
    lr=1e-3,
    specimen_seeds=1,
    specimen_samples=256,
    eval_per_dose=1,
)


class PairPool:
    """Training frames as the network sees them — (normalised noisy frame, noise plane) and the
    normalised clean frame — partly renewed from the simulators."""

    def __init__(
        self, sem: SEMPairs, rng: np.random.Generator, size: int, capacity: int, seed: int
    ) -> None:
        self._sem, self._rng, self._size, self._seed = sem, rng, size, seed
        self._scenes = 0
        self.noisy = np.zeros((capacity, 2, size, size), np.float32)
        self.clean = np.zeros((capacity, 1, size, size), np.float32)
        for k in range(capacity):
            self.renew(k)

    def _dose(self, wide: tuple[float, float], focus: tuple[float, float]) -> float:
        lo, hi = focus if self._rng.random() < FOCUS_FRACTION else wide
        return math.exp(self._rng.uniform(math.log(lo), math.log(hi)))

    def _fresh(self) -> Pair:
        rng = self._rng
        if rng.random() < 0.55:  # SEM is the harder, more varied half
            return self._sem.pair(rng, self._dose(SEM_DOSES, SEM_FOCUS_DOSES))
        dose = self._dose(INSITU_DOSES, INSITU_FOCUS_DOSES)
        self._scenes += 1
        seed = TRAIN_SEED + self._seed * 1_000_003 + self._scenes
        return insitu_pair(random_insitu_config(rng, self._size, seed), dose)

    def renew(self, k: int) -> None:
        pair = self._fresh()
        planes, lo, scale = model.network_input(pair.noisy)  # exactly what the runner does
        self.noisy[k] = planes
        self.clean[k, 0] = (pair.clean - np.float32(lo)) / np.float32(scale)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` frames, each flipped/turned at random (the physics has no preferred axis
        except SEM scan lines, which a transpose moves; a quarter of turns is harmless). The
        noise plane is constant, so only the frames turn."""
        idx = self._rng.choice(len(self.noisy), n, replace=False)
        xs, ys = self.noisy[idx].copy(), self.clean[idx].copy()
        for j in range(n):
            k = int(self._rng.integers(4))
            flip = bool(self._rng.integers(2))
            for arr in (xs, ys):
                a = np.rot90(arr[j, 0], k)
                arr[j, 0] = a[:, ::-1] if flip else a
        return xs, ys


def psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    """PSNR (dB) against ``clean``, with the clean frame's own range as the peak."""
    peak = float(clean.max() - clean.min()) or 1.0
    mse = float(np.mean((np.asarray(estimate, np.float64) - clean) ** 2))
    return 10.0 * math.log10(peak * peak / max(mse, 1e-30))


def evaluate(net: Any, pairs: list[Pair]) -> dict[str, float]:
    """Mean PSNR of the noisy frames and of the network's output over ``pairs`` (torch)."""
    import torch

    from scopeflow.inference.backends.base import check_inputs

    class _Eager:  # the runner over the in-memory torch module
        input_names = model.INPUT_NAMES
        output_names = model.OUTPUT_NAMES

        def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            check_inputs(self.input_names, inputs)
            with torch.inference_mode():
                out = net(torch.from_numpy(inputs[self.input_names[0]]))
            return {self.output_names[0]: out.numpy()}

    runner = model.Denoiser(_Eager())  # type: ignore[arg-type]
    before = [psnr(p.noisy.astype(np.float32), p.clean) for p in pairs]
    after = [psnr(runner.denoise(p.noisy), p.clean) for p in pairs]
    return {"psnr_noisy": float(np.mean(before)), "psnr_denoised": float(np.mean(after))}


def learning_rate(done: float, peak: float, warmup: float = 0.03) -> float:
    """Linear warm-up over the first ``warmup`` of the run, then a cosine down to zero."""
    if done < warmup:
        return peak * (done + 1e-3) / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (done - warmup) / (1.0 - warmup)))


def frame_mse(output: Any, target: Any) -> Any:
    """Mean squared error of each frame of a batch, (N,)."""
    return ((output - target) ** 2).flatten(1).mean(dim=1)


def log_mse_loss(mse: Any) -> Any:
    """Mean over frames of log(frame MSE): the training twin of the mean PSNR over frames.
    A plain MSE would let the noisiest frames (lowest dose, largest errors) dominate and teach
    the network to over-smooth the cleaner ones."""
    import torch

    return torch.log(mse + 1e-8).mean()


def train(
    out_dir: Path, seed: int = 0, quick: bool = False, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train, write ``denoiser.pt``, ``loss_curve.png`` and ``metrics.json``; return metrics."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sched = QUICK if quick else FULL
    load_at_start = os.getloadavg()[0]
    seed_everything(seed)
    t0 = time.monotonic()
    rng = np.random.default_rng([seed, 0xD1])
    spec_seeds = tuple(TRAIN_SEED + seed * 100 + k for k in range(sched.specimen_seeds))
    progress(
        f"denoiser: {len(TRAIN_FAMILIES) * len(spec_seeds)} SEM specimens, a pool of "
        f"{sched.pool} frames of {SIZE}², {sched.steps} steps of {sched.batch}"
    )
    sem = SEMPairs(TRAIN_FAMILIES, spec_seeds, SIZE, seed, sched.specimen_samples)
    pool = PairPool(sem, rng, SIZE, sched.pool, seed)
    data_s = time.monotonic() - t0

    net = model.build()
    opt = torch.optim.Adam(net.parameters(), lr=sched.lr)
    # bfloat16 autocast where the CPU computes it natively (AVX-512 BF16/AMX): ~1.7× more steps
    # in the budget. The weights, the residual sum and the loss stay float32.
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    log = TrainLog(sched.steps, progress)
    net.train()
    loop_t0 = time.monotonic()
    steps_done, stopped_by = 0, "steps"
    for step in range(sched.steps):
        # Progress is the larger of the step and wall-clock fractions: on a busy machine the
        # run ends within its budget with the learning rate still annealed to zero.
        done = max(step / sched.steps, (time.monotonic() - loop_t0) / sched.budget_s)
        if done >= 1.0:
            stopped_by = "time budget"
            break
        for group in opt.param_groups:
            group["lr"] = learning_rate(done, sched.lr)
        xs, ys = pool.batch(sched.batch)
        x, y = torch.from_numpy(xs), torch.from_numpy(ys)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        mse = frame_mse(out.float(), y)
        loss = log_mse_loss(mse)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for _ in range(sched.renew):
            pool.renew(int(rng.integers(sched.pool)))
        log.log(step, mse=float(mse.detach().mean()))
        steps_done = step + 1
    if stopped_by != "steps":
        progress(
            f"  stopped at step {steps_done}/{sched.steps}: the {sched.budget_s:.0f} s "
            "budget of the training loop is spent (a busy machine)"
        )
    train_s = time.monotonic() - t0
    net.eval()
    torch.save(net.state_dict(), out_dir / "denoiser.pt")
    save_loss_curve(log.history, out_dir / "loss_curve.png", "denoiser (normalised MSE)")

    n = sched.eval_per_dose
    samples = sched.specimen_samples
    heldout = {
        "sem_10_50": heldout_sem((10.0, 20.0, 50.0), n, samples=samples),
        "sem_500": heldout_sem((500.0,), n, samples=samples),
        "insitu_500_2000": heldout_insitu((500.0, 1000.0, 2000.0), n),
    }
    metrics: dict[str, Any] = {
        "seed": seed,
        "quick": quick,
        "steps_planned": sched.steps,
        "steps": steps_done,
        "stopped_by": stopped_by,
        "loop_budget_s": sched.budget_s,
        "batch": sched.batch,
        "frame_size": SIZE,
        "pool": sched.pool,
        "renew_per_step": sched.renew,
        "lr_max": sched.lr,
        "torch_threads": torch.get_num_threads(),
        "bf16_autocast": bf16,
        "data_setup_s": round(data_s, 1),
        "train_s": round(train_s, 1),
        "final_mse": float(np.mean([v for _, v in log.history["mse"][-50:]])),
        "train_families": list(TRAIN_FAMILIES),
        "heldout_family": HELDOUT_FAMILY,
        "train_shapes": [s for s, _ in TRAIN_SHAPES],
        "heldout_shape": HELDOUT_SHAPE,
        "sem_doses_e_per_px": list(SEM_DOSES),
        "insitu_doses_e_per_px": list(INSITU_DOSES),
        "focus_doses": {
            "sem": list(SEM_FOCUS_DOSES),
            "insitu": list(INSITU_FOCUS_DOSES),
            "fraction": FOCUS_FRACTION,
        },
        "load_average_1min_at_start": round(load_at_start, 2),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "heldout": {k: {"frames": len(v), **evaluate(net, v)} for k, v in heldout.items()},
    }
    metrics["total_s"] = round(time.monotonic() - t0, 1)
    write_json(out_dir / "metrics.json", metrics)
    for name, res in metrics["heldout"].items():
        progress(
            f"  held-out {name}: PSNR {res['psnr_noisy']:.2f} → "
            f"{res['psnr_denoised']:.2f} dB ({res['frames']} frames)"
        )
    return metrics


def metadata(metrics: dict[str, Any]) -> dict[str, Any]:
    """The shipped ``denoiser.json``: normalisation, tiling, size constraint, training summary
    and the TensorRT optimisation profile of the dynamic input."""
    return {
        "model": model.NAME,
        "input": {
            "name": model.INPUT_NAMES[0],
            "shape": ["batch", 2, "height", "width"],
            "channels": ["normalised frame", "noise plane"],
            "dtype": "float32",
            "multiple": model.MULTIPLE,
        },
        "output": {"name": model.OUTPUT_NAMES[0], "shape": ["batch", 1, "height", "width"]},
        "normalisation": {
            "method": "per frame: (x - lo) / scale, lo = P0.5, scale = P99.5 - P0.5 "
            "(of a strided subsample of ~65k pixels); inverted on output",
            "percentiles": list(model.PERCENTILES),
            "stats_pixels": model.STATS_PIXELS,
        },
        "tiling": {
            "tile": model.TILE,
            "overlap": model.OVERLAP,
            "one_pass": "both sides (padded to the multiple) at most the tile",
        },
        "noise_channel": {
            "method": "constant plane log10(sigma / scale) + offset, sigma = median |finest "
            "diagonal Haar detail| / 0.6745 of the frame (DN), floored",
            "offset": model.NOISE_OFFSET,
            "floor": model.NOISE_FLOOR,
        },
        "architecture": {
            "channels": list(model.CHANNELS),
            "space_to_depth": model.SHUFFLE,
            "residual": True,
        },
        "training": metrics,
        # min: the smallest padded frame; max: the tile, so every pass fits the engine.
        "tensorrt_profile": {
            model.INPUT_NAMES[0]: [
                [1, 2, model.MULTIPLE, model.MULTIPLE],
                [1, 2, 512, 512],
                [1, 2, model.TILE, model.TILE],
            ]
        },
    }
