"""Tools around the experiment: the step and sweep benchmarks (`make bench`), the FLOP count they use, the docs'
figures (`make figures`) and `negrl-pretrain`.

May import anything of negrl but the report.
"""
