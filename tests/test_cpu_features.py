"""torch_utils.cpu_features: the native-bfloat16 query and the --precision=mixed warning of train.py."""

import os
import subprocess
import sys

import pytest
import torch

from torch_utils import cpu_features

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_native_bf16_follows_onednn_and_capability_is_a_name():
    expected = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert cpu_features.native_bf16() is expected
    assert cpu_features.capability() == str(torch.backends.cpu.get_cpu_capability())


@pytest.mark.parametrize('native, precision, device, warns', [
    (False, 'mixed', 'cpu', True),
    (True, 'mixed', 'cpu', False),
    (None, 'mixed', 'cpu', False),   # cannot tell: say nothing
    (False, 'fp32', 'cpu', False),
    (False, 'mixed', 'cuda', False),  # CUDA runs float16 blocks
])
def test_mixed_precision_warning_only_where_bf16_is_emulated(monkeypatch, native, precision, device, warns):
    monkeypatch.setattr(cpu_features, 'native_bf16', lambda: native)
    message = cpu_features.mixed_precision_warning(precision, device)
    assert (message is not None) == warns
    if warns:
        assert '--precision=mixed' in message and 'emulates' in message and '--precision=fp32' in message


def test_train_dry_run_prints_the_warning_exactly_on_cpus_without_native_bf16(tmp_path):
    base = [sys.executable, os.path.join(REPO, 'train.py'), '--outdir', str(tmp_path), '-n',
            '--data=toy-shapes:res=16,num=64', '--cfg=cpu-tiny', '--workers=0']
    emulated = cpu_features.native_bf16() is False
    for precision, warns in (('mixed', emulated), ('fp32', False)):
        res = subprocess.run(base + [f'--precision={precision}'], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert ('no native arithmetic' in res.stderr) == warns, (precision, res.stderr[-2000:])
    assert not os.listdir(tmp_path)


def test_experiment_runner_warns_for_jobs_asking_for_emulated_bf16(monkeypatch, tmp_path):
    from fsr_plugin import train_runs
    monkeypatch.setattr(cpu_features, 'native_bf16', lambda: False)

    def job(*extra):
        return train_runs.make_job(str(tmp_path), 'joint', 0, 'fsr-synthetic', 'cpu', 4, 1, 1, list(extra))
    assert train_runs.precision_warning([job('--precision=fp32')]) is None
    assert train_runs.precision_warning([job('--precision', 'mixed', '--device=cuda')]) is None
    assert train_runs.precision_warning([job()]) is None  # auto: fp32 on CPU
    message = train_runs.precision_warning([job('--precision=fp32'), job('--precision', 'mixed')])
    assert message is not None and 'emulates' in message
    assert train_runs.precision_warning([job('--precision=mixed', '--precision=fp32')]) is None  # the last one counts
    monkeypatch.setattr(cpu_features, 'native_bf16', lambda: True)
    assert train_runs.precision_warning([job('--precision=mixed')]) is None


def test_inception_bf16_convolutions_avoid_the_fused_onednn_op_without_native_bf16(monkeypatch):
    """oneDNN's fused bf16 convolution raises on CPUs without native bf16 (it did on an AVX2 EPYC): FoldedConv must
    take F.conv2d there, and give the same result as its float32 twin up to bf16 rounding."""
    import torch.nn.functional as F
    from metrics import inception
    monkeypatch.setattr(cpu_features, 'native_bf16', lambda: False)
    torch.manual_seed(0)
    w, b = torch.randn(8, 4, 3, 3) * 0.2, torch.randn(8)
    conv16 = inception.FoldedConv(w, b, padding=(1, 1), dtype=torch.bfloat16)
    conv32 = inception.FoldedConv(w, b, padding=(1, 1))
    assert not conv16.use_fused and conv32.use_fused == inception._fused_conv_available()
    x = torch.randn(2, 4, 6, 6)
    expected = F.relu(F.conv2d(x, w, b, padding=1))
    torch.testing.assert_close(conv32(x), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv16(x.bfloat16()).float(), expected, rtol=0.05, atol=0.05)
