"""Training and export of the learned models (needs torch: ``pip install -e '.[train]'``)."""
