"""The attacks on a trained model: extraction (greedy recovery, logit difference, exposure), generation of
candidates, membership inference, and the logit lens.

May import `negrl.core`, `negrl.model` and `negrl.method`.
"""
