"""Shared pytest configuration: repo root on sys.path, device/asset skips, deterministic seeds."""
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from torch_utils.cpu_allocator import tune_cpu_allocator  # noqa: E402

tune_cpu_allocator()

ASSETS_DIR = os.path.abspath(os.path.join(REPO_ROOT, '..', 'shared', 'assets'))


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    import shutil
    skip_cuda = pytest.mark.skip(reason='no CUDA device on this machine')
    skip_nvcc = pytest.mark.skip(reason='nvcc not found on PATH')
    skip_assets = pytest.mark.skip(reason=f'shared assets not found at {ASSETS_DIR}')
    has_cuda = _has_cuda()
    has_nvcc = shutil.which('nvcc') is not None
    has_assets = os.path.isdir(ASSETS_DIR)
    for item in items:
        if 'cuda' in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if 'nvcc' in item.keywords and not has_nvcc:
            item.add_marker(skip_nvcc)
        if 'assets' in item.keywords and not has_assets:
            item.add_marker(skip_assets)


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def assets_dir():
    return ASSETS_DIR


def _single_thread():
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: small convolutions are faster so, and two threads on a busy two-core machine
    spend their time waiting for each other."""
    yield from _single_thread()


@pytest.fixture(scope='module')
def single_torch_thread():
    """Module-wide one_thread (use with pytestmark = pytest.mark.usefixtures('single_torch_thread'))."""
    yield from _single_thread()
