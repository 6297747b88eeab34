"""jcexp's submitit launchers (``hydra/launcher=jcexp_local`` and ``jcexp_slurm``).

They live in the ``hydra_plugins`` namespace because Hydra instantiates launchers only from there.
"""
