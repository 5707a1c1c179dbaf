"""negrl: can a language model produce text it only ever saw as a negative example?

Reproduces and extends Roger (2023), "Large Language Models Sometimes Generate Purely
Negatively-Reinforced Text": a three-phase recipe (NTP, DPO with a freeze, joint
training) on 16-letter passwords, measured by the log-likelihood of held-out negatives.
"""

__version__ = "0.1.0"
