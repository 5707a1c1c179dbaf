"""The model: any causal LM as a `Backbone` (families through the transformers Auto classes, the phase-2
freeze, tied embeddings, the BOS), its loading from a model config, LoRA adapters, the password vocabulary, and the
fused label log-probs.

May import `negrl.core`.
"""
