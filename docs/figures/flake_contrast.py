"""Regenerate docs/figures/flake_contrast.png: the optical contrast the flake-chip simulator
predicts for graphene (1-3 layers) and monolayer hBN against oxide thickness, per camera channel.

Run from the repository root: ``.venv/bin/python docs/figures/flake_contrast.py``.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from scopeflow_lab.sim.optical import GRAPHENE, HBN, SpectralModel, contrast_rgb

model = SpectralModel()
oxide = np.linspace(50, 350, 151)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True, constrained_layout=True)
for channel, (ax, name) in enumerate(zip(axes, ("R", "G", "B"), strict=True)):
    for layers in (1, 2, 3):
        c = [contrast_rgb(model, GRAPHENE, layers * GRAPHENE.layer_nm, d)[channel] for d in oxide]
        ax.plot(oxide, c, label=f"graphene {layers}L")
    c = [contrast_rgb(model, HBN, HBN.layer_nm, d)[channel] for d in oxide]
    ax.plot(oxide, c, "k--", label="hBN 1L")
    for d in (90, 285, 300):
        ax.axvline(d, color="0.8", lw=0.8)
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_title(f"{name} channel (halogen 3200 K, Gaussian bands)")
    ax.set_xlabel("SiO₂ thickness (nm)")
axes[0].set_ylabel("contrast  R_flake / R_substrate − 1")
axes[0].legend(fontsize=8)
out = Path(__file__).with_suffix(".png")
fig.savefig(out, dpi=100)
print(f"wrote {out}")
