"""Train AENet on simulated SEM frames (``scopeflow train aenet``).

Data, generated on the fly (nothing is downloaded, nothing is reused between steps): frames of the
simulated SEM (:mod:`scopeflow_lab.sim.sem`) from every specimen family except
``HELDOUT_FAMILIES``, several specimens per family, pixel sizes 4–25 nm (magnification), α 2–10
mrad, doses 8–600 e⁻/px, astigmatism (0.5–3 DoF, any axis) in half the frames, uint16 and uint8,
some scan-line jitter, and defocus up to ±65 DoF (wrong-sign moves of a controller reach twice
the ±30 DoF start range). Training seeds (specimens from ``SPECIMEN_SEED_BASE``, noise from
``NOISE_SEED_BASE``) never meet the evaluation's (:mod:`scopeflow_lab.bench.models_focus`).
The scenes are generated in :mod:`.aenet_scenes`.

Loss per patch: the Laplace negative log-likelihood of ``log_u`` (so ``log_scale`` learns how
much each patch can be trusted) plus the squared error of the blur-ellipse ``orientation``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.inference.models import aenet as model
from scopeflow_lab.training.aenet_scenes import (
    HELDOUT_FAMILIES,
    NOISE_SEED_BASE,
    SPECIMEN_SEED_BASE,
    TRAIN_FAMILIES,
    SceneRanges,
    SceneSampler,
    sample_defocus_dof,
    specimen_pool,
)

NAME = "aenet"
# The blur ellipse's orientation (the astigmatism cue for the sign of Δz) is a weak signal in the
# frames, present only near focus in astigmatic scenes; at weight 1 the head collapsed to zero
# (first shipped run), so its squared error counts ten times.
ORIENTATION_WEIGHT = 10.0


@dataclass(frozen=True)
class TrainConfig:
    """Sizes and schedule of one training run."""

    steps: int
    frames_per_step: int
    patches_per_frame: int
    frame_size: int
    specimen_seeds: tuple[int, ...]
    specimen_samples: int
    textures: int
    lr: float
    eval_frames: int

    @classmethod
    def full(cls) -> TrainConfig:
        return cls(
            steps=2000,
            frames_per_step=32,
            patches_per_frame=8,
            frame_size=256,
            specimen_seeds=tuple(SPECIMEN_SEED_BASE + i for i in range(3)),
            specimen_samples=2048,
            textures=40,
            lr=3e-3,
            eval_frames=200,
        )

    @classmethod
    def quick(cls) -> TrainConfig:
        return cls(
            steps=4,
            frames_per_step=4,
            patches_per_frame=4,
            frame_size=256,
            specimen_seeds=(SPECIMEN_SEED_BASE,),
            specimen_samples=256,
            textures=2,
            lr=3e-3,
            eval_frames=3,
        )


@dataclass(frozen=True)
class Batch:
    """Patches of ``frames_per_step`` frames and their targets.

    ``frame``: which frame each patch comes from; ``scale``: its pixels relative to the frame's;
    ``frame_target``: the frame's log effective defocus (per patch, repeated).
    """

    patches: np.ndarray
    target: np.ndarray
    orientation: np.ndarray
    frame: np.ndarray
    scale: np.ndarray
    frame_target: np.ndarray


def make_batch(sampler: SceneSampler, rng: np.random.Generator, cfg: TrainConfig) -> Batch:
    """From each frame: random full-resolution patches among the ones the runner would pick, and
    every coarse patch, each with the target in its own pixels."""
    xs, ts, os_, fs, ss, fts = [], [], [], [], [], []
    for k in range(cfg.frames_per_step):
        scene = sampler.sample(rng)
        dz = sample_defocus_dof(rng)
        lum = model.to_luminance(scene.frame(dz, cfg.frame_size))
        patches, scales = model.extract_patches(lum)
        fine = np.flatnonzero(scales == 1)
        coarse = np.flatnonzero(scales != 1)
        n_fine = max(1, cfg.patches_per_frame - len(coarse))
        pick = np.concatenate(
            [rng.choice(fine, size=min(n_fine, len(fine)), replace=False), coarse]
        )
        xs.append(patches[pick])
        ts.append(np.array([model.log_u_target(abs(dz) / scales[i]) for i in pick], np.float32))
        os_.append(np.stack([scene.orientation(dz, float(scales[i])) for i in pick]))
        fs.append(np.full(len(pick), k))
        ss.append(scales[pick].astype(np.float32))
        fts.append(np.full(len(pick), model.log_u_target(abs(dz)), np.float32))
    return Batch(
        np.concatenate(xs),
        np.concatenate(ts),
        np.concatenate(os_),
        np.concatenate(fs),
        np.concatenate(ss),
        np.concatenate(fts),
    )


class Prefetcher:
    """Renders batches in a background thread (OpenCV and numpy release the GIL) while the
    network trains on the previous one. Deterministic: one producer, one random stream."""

    def __init__(self, make: Callable[[], Batch], count: int, depth: int = 2) -> None:
        self._queue: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

        def produce() -> None:
            try:
                for _ in range(count):
                    batch = make()
                    while not self._stop.is_set():
                        try:
                            self._queue.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self._stop.is_set():
                        return
            except BaseException as exc:  # surfaced in the training loop, with its cause
                self._queue.put(exc)

        self._thread = threading.Thread(target=produce, name="aenet-batches", daemon=True)
        self._thread.start()

    def next(self) -> Batch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError("rendering a training batch failed") from item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def losses(outputs: tuple[Any, Any, Any], batch: Batch) -> dict[str, Any]:
    """Per-patch Laplace NLL of ``log_u``, the frame-level error of the runner's aggregate
    (inverse-variance weighted mean at frame scale) and the orientation's squared error."""
    import torch

    log_u, log_scale, orient = outputs
    target = torch.from_numpy(batch.target)
    nll = (torch.abs(log_u - target) * torch.exp(-log_scale) + log_scale).mean()
    # The frame aggregate, as the runner computes it (to_frame_scale + weighted mean).
    u2 = torch.relu(torch.exp(2 * log_u) - model.U0_DOF**2)
    scale = torch.from_numpy(batch.scale)
    frame_log_u = 0.5 * torch.log(scale**2 * u2 + model.U0_DOF**2)
    frame = torch.from_numpy(batch.frame)
    n_frames = int(batch.frame.max()) + 1
    logits = -2.0 * torch.clamp(log_scale, -6.0, 6.0)
    peak = torch.zeros(n_frames).scatter_reduce(0, frame, logits, "amax", include_self=False)
    w = torch.exp(logits - peak[frame])
    total = torch.zeros(n_frames).index_add(0, frame, w)
    agg = torch.zeros(n_frames).index_add(0, frame, w * frame_log_u) / total
    frame_target = torch.zeros(n_frames).index_copy(0, frame, torch.from_numpy(batch.frame_target))
    frame_loss = torch.abs(agg - frame_target).mean()
    orient_loss = ((orient - torch.from_numpy(batch.orientation)) ** 2).sum(dim=1).mean()
    return {
        "nll": nll,
        "frame": frame_loss,
        "orientation": orient_loss,
        "total": nll + frame_loss + ORIENTATION_WEIGHT * orient_loss,
        "patch_mae": torch.abs(log_u - target).mean().detach(),
    }


def train(
    out_dir: Path, seed: int = 0, quick: bool = False, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train AENet; write ``aenet.pt``, ``loss_curve.png`` and ``metrics.json`` in ``out_dir``.

    Returns the summary written to ``metrics.json`` (held-out metrics and training facts).
    ``quick``: a smoke run of a few seconds on tiny data.
    """
    import torch

    from scopeflow_lab.training.common import TrainLog, save_loss_curve, seed_everything, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.quick() if quick else TrainConfig.full()
    seed_everything(seed)
    t0, cpu0 = time.monotonic(), time.process_time()
    progress("aenet: building the training specimens")
    pool = specimen_pool(
        TRAIN_FAMILIES, cfg.specimen_seeds, cfg.textures, cfg.specimen_samples, progress
    )
    sampler = SceneSampler(pool, noise_seed=NOISE_SEED_BASE + 100_000 * seed)
    rng = np.random.default_rng([seed, 0xAE])
    net = model.build()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1
    )
    log = TrainLog(cfg.steps, progress)
    batches = Prefetcher(lambda: make_batch(sampler, rng, cfg), cfg.steps)
    net.train()
    try:
        for step in range(cfg.steps):
            batch = batches.next()
            parts = losses(net(torch.from_numpy(batch.patches)), batch)
            opt.zero_grad()
            parts["total"].backward()
            opt.step()
            sched.step()
            log.log(
                step,
                nll=parts["nll"].item() + 2.0,
                frame_l1=parts["frame"].item(),
                patch_l1=parts["patch_mae"].item(),
                orientation=parts["orientation"].item(),
            )
    finally:
        batches.close()
    train_s = log.seconds
    net.eval()
    weights = out_dir / f"{NAME}.pt"
    torch.save(net.state_dict(), weights)
    save_loss_curve(
        log.history,
        out_dir / "loss_curve.png",
        "AENet training (nll shifted by +2 to plot on a log scale)",
    )

    from scopeflow_lab.training.focus_eval import EVAL_SEEDS, TorchNetSession, aenet_metrics

    progress("aenet: held-out evaluation")
    metrics = aenet_metrics(
        model.AENet(TorchNetSession(net, model)),
        n_frames=cfg.eval_frames,
        frame_size=256 if quick else 512,
        n_gain_frames=2 if quick else 40,
        seeds=EVAL_SEEDS[:1] if quick else EVAL_SEEDS,
        progress=progress,
    )
    summary = {
        "model": NAME,
        "seed": seed,
        "quick": quick,
        "steps": cfg.steps,
        "frames_seen": cfg.steps * cfg.frames_per_step,
        "patches_seen": cfg.steps * cfg.frames_per_step * cfg.patches_per_frame,
        "train_families": list(TRAIN_FAMILIES),
        "heldout_families": list(HELDOUT_FAMILIES),
        "specimen_seeds": list(cfg.specimen_seeds),
        "frame_size": cfg.frame_size,
        "ranges": vars(SceneRanges()) | {"defocus_dof": "mixture, up to ±65"},
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "orientation_weight": ORIENTATION_WEIGHT,
        "heldout_metrics": metrics,
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    write_json(out_dir / "metrics.json", summary)
    return summary
