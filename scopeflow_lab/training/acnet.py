"""Train ACNet on AENet's readings of simulated focus series (``scopeflow train acnet``).

ACNet learns from what AENet says, so the shipped AENet (ONNX Runtime) reads every training frame.
A bank is built first: ``scenes`` random SEM scenes (the AENet trainer's families, textures,
magnifications, doses and astigmatism; see :mod:`scopeflow_lab.training.aenet`), each imaged at
``frames_per_scene`` defocus values (near focus, within the ±30 DoF start range, and out to
±65 DoF where a wrong-sign first move lands). Training examples pair frames of one scene: a
current frame and up to two earlier ones at their true WD offsets, with the astigmatism axis
given or not. That covers the cases ACNet meets: one frame, a frame after a move (either side of
focus), and a third after another.

Targets come from the simulator's truth: log(|Δz| + 0.25) (L1), the sign of Δz (cross-entropy,
weighted by min(|Δz|, 2)/2 since the sign does not matter at focus), and whether the proposed
move lands within 0.5 DoF (cross-entropy on the confidence, against the network's own proposal).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scopeflow.inference.models import acnet as model
from scopeflow.inference.models.acnet import Observation, encode
from scopeflow.inference.models.aenet import AENet, AENetResult
from scopeflow_lab.training.aenet_scenes import (
    NOISE_SEED_BASE,
    SPECIMEN_SEED_BASE,
    TRAIN_FAMILIES,
    SceneSampler,
    sample_defocus_dof,
    specimen_pool,
)

NAME = "acnet"
SUCCESS_DOF = 0.5


@dataclass(frozen=True)
class TrainConfig:
    """Sizes and schedule of one training run."""

    scenes: int
    frames_per_scene: int
    frame_size: int
    specimen_seeds: tuple[int, ...]
    specimen_samples: int
    textures: int
    examples: int
    steps: int
    batch: int
    lr: float
    eval_trials: int

    @classmethod
    def full(cls) -> TrainConfig:
        # The bank (AENet reading simulated frames) is the cost: ~5 minutes here; the MLP
        # itself trains in about a minute.
        return cls(
            scenes=2500,
            frames_per_scene=16,
            frame_size=384,
            specimen_seeds=tuple(SPECIMEN_SEED_BASE + 50 + i for i in range(2)),
            specimen_samples=2048,
            textures=12,
            examples=600_000,
            steps=12_000,
            batch=512,
            lr=2e-3,
            eval_trials=200,
        )

    @classmethod
    def quick(cls) -> TrainConfig:
        return cls(
            scenes=4,
            frames_per_scene=4,
            frame_size=128,
            specimen_seeds=(SPECIMEN_SEED_BASE + 50,),
            specimen_samples=256,
            textures=1,
            examples=256,
            steps=5,
            batch=64,
            lr=2e-3,
            eval_trials=2,
        )


@dataclass
class Bank:
    """AENet readings of every frame: (scenes, frames) arrays plus each scene's astigmatism."""

    results: list[list[AENetResult]]
    defocus_dof: np.ndarray  # (scenes, frames), signed WD − focus
    axis_deg: np.ndarray  # (scenes,)
    astigmatic: np.ndarray  # (scenes,) bool


def build_bank(
    aenet: AENet,
    sampler: SceneSampler,
    cfg: TrainConfig,
    rng: np.random.Generator,
    progress: Callable[[str], None],
) -> Bank:
    """Image every scene at random defocus and read each frame with AENet."""
    results, dz, axis, astig = [], np.zeros((cfg.scenes, cfg.frames_per_scene)), [], []
    t0 = time.monotonic()
    for s in range(cfg.scenes):
        scene = sampler.sample(rng)
        row = []
        for j in range(cfg.frames_per_scene):
            dz[s, j] = sample_defocus_dof(rng)
            row.append(aenet.evaluate(scene.frame(float(dz[s, j]), cfg.frame_size)))
        results.append(row)
        axis.append(scene.astigmatism_angle_deg)
        astig.append(scene.astigmatism_dof > 0)
        if (s + 1) % max(1, cfg.scenes // 10) == 0:
            elapsed = time.monotonic() - t0
            progress(
                f"  bank: {s + 1}/{cfg.scenes} scenes, eta "
                f"{elapsed * (cfg.scenes - s - 1) / (s + 1):.0f} s"
            )
    return Bank(results, dz, np.array(axis), np.array(astig, bool))


def make_examples(bank: Bank, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (n, INPUT_SIZE), current Δz (n,)) from random frame groups of one scene."""
    scenes, frames = bank.defocus_dof.shape
    x = np.zeros((n, model.INPUT_SIZE), np.float32)
    y = np.zeros(n, np.float32)
    for i in range(n):
        s = int(rng.integers(scenes))
        prev = int(rng.choice(3, p=(0.3, 0.4, 0.3)))
        picks = rng.choice(frames, size=min(prev + 1, frames), replace=False)
        current = int(picks[0])
        wd_cur = bank.defocus_dof[s, current]  # WD offsets are differences of Δz
        obs = [
            Observation(bank.results[s][j], float(bank.defocus_dof[s, j] - wd_cur))
            for j in picks[1:]
        ]
        obs.append(Observation(bank.results[s][current], 0.0))
        axis = float(bank.axis_deg[s]) if rng.random() < 0.5 else None
        x[i] = encode(obs, axis)
        y[i] = wd_cur
    return x, y


def _load_aenet(weights_dir: Path | None) -> AENet:
    from scopeflow.inference import backends

    try:
        return AENet(backends.load("aenet", "onnxruntime", weights_dir))
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"ACNet learns from AENet's outputs, and AENet is not shipped "
            f"({exc}); train and export AENet first"
        ) from exc


def train(
    out_dir: Path,
    seed: int = 0,
    quick: bool = False,
    progress: Callable[[str], None] = print,
    aenet_weights_dir: Path | None = None,
) -> dict[str, Any]:
    """Train ACNet; write ``acnet.pt``, ``loss_curve.png`` and ``metrics.json`` in ``out_dir``.

    ``aenet_weights_dir``: where ``aenet.onnx`` is (default: the shipped weights). Returns the
    summary written to ``metrics.json``. ``quick``: a smoke run of a few seconds.
    """
    import torch
    import torch.nn.functional as F

    from scopeflow_lab.training.common import TrainLog, save_loss_curve, seed_everything, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.quick() if quick else TrainConfig.full()
    seed_everything(seed)
    t0, cpu0 = time.monotonic(), time.process_time()
    aenet = _load_aenet(aenet_weights_dir)
    pool = specimen_pool(
        TRAIN_FAMILIES, cfg.specimen_seeds, cfg.textures, cfg.specimen_samples, progress
    )
    sampler = SceneSampler(pool, noise_seed=NOISE_SEED_BASE + 500_000 + 100_000 * seed)
    rng = np.random.default_rng([seed, 0xAC])
    progress(f"acnet: imaging {cfg.scenes} scenes × {cfg.frames_per_scene} frames for the bank")
    bank = build_bank(aenet, sampler, cfg, rng, progress)
    bank_s = time.monotonic() - t0
    x_all, dz_all = make_examples(bank, cfg.examples, rng)
    x_all, dz_all = torch.from_numpy(x_all), torch.from_numpy(dz_all)

    net = model.build()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1
    )
    log = TrainLog(cfg.steps, progress)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(x_all), (cfg.batch,), generator=gen)
        x, dz = x_all[idx], dz_all[idx]
        raw = net.raw(x)
        mag_loss = torch.abs(raw[:, 0] - torch.log(dz.abs() + model.MAG_FLOOR_DOF)).mean()
        weight = torch.clamp(dz.abs(), max=2.0) / 2.0
        sign_loss = (
            F.binary_cross_entropy_with_logits(raw[:, 1], (dz > 0).float(), reduction="none")
            * weight
        ).mean()
        with torch.no_grad():
            magnitude = torch.relu(torch.exp(raw[:, 0]) - model.MAG_FLOOR_DOF)
            correction = torch.where(raw[:, 1] >= 0, -magnitude, magnitude)
            hit = ((dz + correction).abs() <= SUCCESS_DOF).float()
        conf_loss = F.binary_cross_entropy_with_logits(raw[:, 2], hit)
        loss = mag_loss + sign_loss + conf_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        log.log(step, magnitude=mag_loss.item(), sign=sign_loss.item(), confidence=conf_loss.item())
    net.eval()
    weights = out_dir / f"{NAME}.pt"
    torch.save(net.state_dict(), weights)
    save_loss_curve(log.history, out_dir / "loss_curve.png", "ACNet training")

    from scopeflow_lab.training.focus_eval import TorchNetSession, acnet_metrics

    progress("acnet: held-out closed loops")
    metrics = acnet_metrics(
        aenet,
        model.ACNet(TorchNetSession(net, model)),
        n_trials=cfg.eval_trials,
        frame_size=256 if quick else 512,
        progress=progress,
    )
    summary = {
        "model": NAME,
        "seed": seed,
        "quick": quick,
        "steps": cfg.steps,
        "batch": cfg.batch,
        "bank_scenes": cfg.scenes,
        "bank_frames_per_scene": cfg.frames_per_scene,
        "bank_frame_size": cfg.frame_size,
        "examples": cfg.examples,
        "train_families": list(TRAIN_FAMILIES),
        "specimen_seeds": list(cfg.specimen_seeds),
        "textures": cfg.textures,
        "bank_seconds": round(bank_s, 1),
        "train_seconds": round(log.seconds, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "heldout_metrics": metrics,
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "bank_astigmatic_fraction": float(bank.astigmatic.mean()),
        "bank_defocus_abs_median_dof": float(np.median(np.abs(bank.defocus_dof))),
        "log_mag_floor_dof": model.MAG_FLOOR_DOF,
        "success_dof": SUCCESS_DOF,
        "sign_weight": "min(|Δz|, 2) / 2",
        "seconds_per_step": log.seconds / cfg.steps,
    }
    write_json(out_dir / "metrics.json", summary)
    return summary
