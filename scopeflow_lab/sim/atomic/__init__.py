"""Atomic-resolution frames of nanoparticles on a support: HRTEM phase contrast and STEM HAADF.

Two independent image models of the same specimens, kept apart on purpose:

- :mod:`.parametric` (training): each particle is a continuum — a projected-thickness map times
  a mean inner potential, modulated by a few lattice-fringe cosines — on an amorphous support
  drawn as band-limited noise; a phase object through the objective lens's transfer function
  (HRTEM) or a Z-contrast map blurred by the probe (HAADF).
- :mod:`.multislice` (held out, never trained on): the specimen built atom by atom (FCC Au, Pt,
  Pd cut to spheres in random or zone-axis orientations on amorphous carbon of random atoms),
  slice potentials from per-atom form factors, Fresnel propagation between slices, its own lens
  and detector models; HAADF as a sum of atoms' Z^1.64 signals through a probe with a tail and
  scan distortions.

Both hand out :class:`~scopeflow_lab.sim.truth.AnnotatedImage` frames with a ``"particle"``
object per particle (its projected footprint) and ``pixel_size_nm``, ``modality`` and
``dose_e_per_A2`` among the image attributes.
"""
