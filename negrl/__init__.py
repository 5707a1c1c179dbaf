"""negrl: can a language model produce text it only ever saw as a negative example?

Reproduces and extends Roger (2023), "Large Language Models Sometimes Generate Purely
Negatively-Reinforced Text": a three-phase recipe (NTP, DPO with a freeze, joint
training) on 16-letter passwords, measured by the log-likelihood of held-out negatives.

The parts, bottom to top (each imports only those below it; tests/test_layers.py checks it):
  core      errors, the experiment's names, DDP helpers, statistics, the metric
  model     the backbone of any causal LM, families, loading, adapters, vocabulary
  method    data (a LightningDataModule per phase), objectives, schedule, phases, reference, evaluation
  attacks   extraction, generation, membership inference, the logit lens
  run       one run's bookkeeping: config, validation, run directory, runner, callbacks, checkpoints, results
  stacked   seeds trained stacked under torch.func
  pipeline, cli, launcher (here, at the top): the entry points of `python train.py`
  tools     the benchmarks, the FLOP count, `negrl-pretrain`
  report    `negrl-report`: reads run directories, imports only core
"""

__version__ = "0.1.0"
