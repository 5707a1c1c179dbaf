"""The paper's method: the seeded password draw and each phase's data (a LightningDataModule per phase),
the objectives, the warm-up/cosine schedule, the three phases as LightningModules, the frozen reference, and the
evaluation of the three sets.

May import `negrl.core` and `negrl.model`; never the bookkeeping of a run (`negrl.run`).
"""
