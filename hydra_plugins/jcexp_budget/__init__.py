"""jcexp's budget-race sweeper (``hydra/sweeper=jcexp_budget``, selected by ``experiment=budget``).

In the ``hydra_plugins`` namespace because Hydra instantiates sweepers only from there.
"""
