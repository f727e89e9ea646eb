"""Shared test settings: keep torch to the machine's cores and the tests deterministic."""

import torch

torch.set_num_threads(2)
