"""One run's bookkeeping: the config schema and its validation, the run directory, the record, results.json
and the verdict, the PhaseRunner (a Trainer per phase) and its callbacks, checkpoints, the metrics stream and
progress lines.

May import `negrl.core`, `negrl.model`, `negrl.method` and `negrl.attacks`.
"""
