"""A user's mistake on the command line ends with a message naming the key or the file, a non-zero exit status and
no Python traceback (HYDRA_FULL_ERROR=1 keeps the trace)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("epochs=abc", "full_key: epochs"),  # a wrong type: the structured-config schema (detector/schema.py)
        ("hyp.lr_0=1", "full_key: hyp.lr_0"),  # a misspelt key
        ("data=missing.yaml", "dataset yaml 'missing.yaml' not found"),  # a missing file
        ("weights=missing.pt", "missing.pt: no such file"),  # a missing checkpoint
    ],
)
def test_a_mistake_is_one_clear_message(override, named, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-m", "detector.train", override, "trainer=cpu"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and named in out, out[-2000:]
    assert "Traceback" not in out
