"""The RLHF trainer: job API models, algorithms, roles, the RL loop and the `rlhf` CLI.

Importing this package (and `rlhf_trainer.api`) pulls in nothing heavy; torch and friends are
imported by the modules that need them.
"""

__version__ = "0.1.0"
