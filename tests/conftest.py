import pytest
import torch

# One intra-op thread: the tiny tensors of the test suite gain nothing from more, and on a loaded
# 2-core machine extra threads made the suite 20-40x slower (measured while developing).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
