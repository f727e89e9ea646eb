"""Shared test settings (torch kept to the machine's cores) and fixtures."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """The folder of a finished 1-epoch run (tiny model, 64 px, built-in shapes data: 16 train, 8 val images),
    for the commands that read checkpoints (val, predict)."""
    from detector.data.shapes import ensure_shapes_dataset
    from detector.train import run
    from tests.helpers import compose_train

    root = tmp_path_factory.mktemp("trained")
    data = ensure_shapes_dataset(root / "shapes", n_train=16, n_val=8)
    run_dir = root / "run"
    run(compose_train([f"data={data}", f"run_dir={run_dir}", "trainer=cpu", "logger=csv", "imgsz=64", "batch_size=8",
                       "workers=0", "callbacks.autoanchor.gen=50", "epochs=1", "val.coco=never"]))  # fmt: skip
    return run_dir
