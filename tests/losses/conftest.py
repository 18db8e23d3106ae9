"""A one-process gloo group, to run the losses' ``gather`` path without a launcher."""

import pytest
import torch.distributed as dist


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
