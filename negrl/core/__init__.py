"""The base layer: the one user-facing error type, the experiment's fixed names (phases, evaluation sets,
prefixes), the DDP helpers, the machine's CPU facts, the across-seed statistics and the paper's metric.

Used by every other part of negrl. May import nothing else of negrl. Only `distributed` imports torch (and `machine`,
inside its bf16 check), so that the report can use the rest without it.
"""
