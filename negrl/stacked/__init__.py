"""Stacked seeds: K seeds of one config trained in one process through torch.func (the phases under vmap,
the stacked weights and each seed's view of them).

May import every training part below it: `negrl.core`, `negrl.model`, `negrl.method`, `negrl.attacks`,
`negrl.run`. The entry points (`negrl.pipeline`, `negrl.cli`, `negrl.launcher`) sit above it.
"""
