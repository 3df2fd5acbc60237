"""--fsr-head-offset-kimg: the heads' per-position offsets held at zero (painted, no gradient) until a kimg, then
trained: a held offset leaves training bit-identical to a run without offsets, the release happens at that kimg and
survives an exact resume, and the CLI records and refuses the option."""
import os
import pickle
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, run_train  # noqa: E402

from fsr_plugin.heads import OutputHead, OutputHeads  # noqa: E402
from fsr_plugin.plugin import make_plugin  # noqa: E402
from torch_utils import misc  # noqa: E402
from training import training_loop  # noqa: E402


def _plugin(**opts):
    return make_plugin(dict(fsr=True, fsr_pair=False, fsr_head_kernel=3, fsr_mean_image='8:2', **opts),
                       dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))


def _snapshot(run_dir):
    with open(os.path.join(run_dir, 'network-snapshot-000000.pkl'), 'rb') as f:
        return pickle.load(f)


def _tensors(snap):
    """{name: tensor} of G, D, G_ema and both copies of the heads in a snapshot."""
    out = {}
    for key in ('G', 'D', 'G_ema'):
        out.update({f'{key}.{n}': t for n, t in misc.named_params_and_buffers(snap[key])})
    for key in ('extra_modules', 'extra_modules_ema'):
        out.update({f'{key}.{n}': t for n, t in misc.named_params_and_buffers(snap[key]['fsr.heads'])})
    return out


def test_a_held_offset_is_painted_without_gradient():
    torch.manual_seed(0)
    head = OutputHead(4, 3, kernel_size=3, resolution=6, offset_gain=0.5)
    with torch.no_grad():
        head.offset.normal_()
    s = torch.randn([5, 4, 6, 6]).relu()
    free = head(s)
    head.offset_held = True
    held = head(s)
    torch.testing.assert_close(held, free, rtol=0, atol=0)
    held.sum().backward()
    assert head.offset.grad is None and head.weight.grad is not None
    heads = OutputHeads({4: 4, 8: 4}, 3, kernel_size=3, offset_gains={8: 0.1})
    heads.hold_offsets(True)
    assert heads.head(8).offset_held is True and heads.head(4).offset_held is False  # h4 has no offset to hold
    heads.hold_offsets(False)
    assert not heads.head(8).offset_held


def test_held_offsets_train_as_without_them_then_start_at_the_kimg_and_resume_exactly(tmp_path, one_thread):
    # Batches of 8, 4 steps to 0.032 kimg. A: no offsets. B: an 8x8 offset held past the end. C: released after 16
    # images (steps 3 and 4 train it). D: C stopped at 16 images and continued.
    runs = dict(A=_plugin(), B=_plugin(fsr_head_offset='8:0.05', fsr_head_offset_kimg=1.0),
                C=_plugin(fsr_head_offset='8:0.05', fsr_head_offset_kimg=0.016))
    for name, plugin in runs.items():
        os.makedirs(tmp_path / name)
        training_loop.training_loop(**loop_kwargs(tmp_path / name, 0.032, plugins=[plugin], ada_target=-1.0))
    a, b, c = (_tensors(_snapshot(tmp_path / name)) for name in 'ABC')
    offsets = sorted(n for n in b if n.endswith('offset'))
    assert offsets == ['extra_modules.h8.offset', 'extra_modules_ema.h8.offset']
    assert all(torch.equal(b[n], torch.zeros([3, 8, 8])) for n in offsets)
    assert sorted(set(b) - set(a)) == offsets
    same = [n for n in a if torch.equal(a[n], b[n])]
    assert len(same) == len(a), sorted(set(a) - set(same))[:5]
    # Released half-way: the offset trains and the run departs from A.
    assert float(c['extra_modules.h8.offset'].abs().max()) > 0
    assert float(c['extra_modules_ema.h8.offset'].abs().max()) > 0
    assert not torch.equal(c['G.synthesis.b8.conv1.weight'], a['G.synthesis.b8.conv1.weight'])
    # An exact resume across the release: the plugin state carries the images shown, so the continued run holds
    # and releases at the same steps as the uninterrupted one.
    d = _plugin(fsr_head_offset='8:0.05', fsr_head_offset_kimg=0.016)
    os.makedirs(tmp_path / 'D')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'D', 0.016, plugins=[d], ada_target=-1.0))
    first = _snapshot(tmp_path / 'D')
    assert first['resume_state']['plugin_state']['fsr'] == {'cur_nimg': 16}
    assert torch.equal(first['extra_modules']['fsr.heads'].head(8).offset, torch.zeros([3, 8, 8]))
    snap = str(tmp_path / 'D' / 'network-snapshot-000000.pkl')
    d2 = _plugin(fsr_head_offset='8:0.05', fsr_head_offset_kimg=0.016)
    training_loop.training_loop(**loop_kwargs(tmp_path / 'D', 0.032, plugins=[d2], ada_target=-1.0,
                                              resume_snapshot=snap))
    resumed = _tensors(_snapshot(tmp_path / 'D'))
    differ = [n for n in c if not torch.equal(c[n], resumed[n])]
    assert not differ, differ[:5]


def test_head_offset_kimg_cli(tmp_path):
    res = run_train(['--outdir', str(tmp_path / 'cli'), '-n'] + TINY + [
        '--fsr=1', '--fsr-head-offset=16:0.2', '--fsr-head-offset-kimg=80'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"fsr_head_offset_kimg": 80.0' in res.stdout
    for extra, message in ((['--fsr-head-offset-kimg=80'], 'give the offsets it starts with --fsr-head-offset'),
                           (['--fsr-head-offset=16:0.2', '--fsr-head-offset-kimg=-1'], '--fsr-head-offset-kimg')):
        res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1'] + extra, tmp_path)
        assert res.returncode != 0 and message in res.stderr, (extra, res.stderr[-2000:])
