"""Tools around the experiment: the step and sweep benchmarks (`make bench`), the FLOP count they use, and
`negrl-pretrain`.

May import anything of negrl but the report.
"""
