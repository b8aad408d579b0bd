"""scopeflow's lab: simulators, benchmarks, training and dataset tools.

The runtime (:mod:`scopeflow`) never imports this package by name: the simulators reach it as
the ``sim`` device adapter and the lab's commands (``simulate``, ``train``, ``export``,
``bench``) as a command plug-in, both through entry points. Heavy dependencies (torch,
scikit-learn, bm3d, mapfost, scipy) come with the ``lab`` extra and are imported only where a
command needs them.
"""
