"""Physics-based simulators (SEM, optical flake chip, in-situ TEM) and the ``sim`` adapter."""
