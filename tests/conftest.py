"""Shared test setup."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """Test shapes are tiny: intra-op threads gain nothing, and on a busy 2-core machine OpenMP's
    spin-waiting turned a 0.05 s forward into 20 s. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
