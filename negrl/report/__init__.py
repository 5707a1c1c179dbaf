"""`negrl-report`: run directories read back, grouped by seed, compared in tables, notes and the paper's
figures (also for runs read from W&B).

May import `negrl.core` only: the report reads what runs wrote and never imports training code (nor torch).
"""
