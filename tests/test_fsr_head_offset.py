"""--fsr-head-offset: the heads' learned per-position offset against a direct computation, its gradient, that descent
on the mean-image loss paints a fixed border frame with it, the contrast recalibration keeping it exact, its wiring
into training and the CLI, and fine-tuning an FSR pickle that has no offsets yet."""
import glob
import os
import pickle
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, run_train  # noqa: E402

from fsr_plugin import ema_calibration  # noqa: E402
from fsr_plugin import patch_moment_loss as pml  # noqa: E402
from fsr_plugin.heads import OutputHead, OutputHeads  # noqa: E402
from fsr_plugin.plugin import make_plugin  # noqa: E402
from training import hooks as hooks_lib  # noqa: E402
from training import training_loop  # noqa: E402


def _pair(offset_gain, k=3, r=6, **kw):
    """The same head (same weights) built without and with an offset of the given gain."""
    torch.manual_seed(0)
    plain = OutputHead(4, 3, kernel_size=k, **kw)
    torch.manual_seed(0)
    with_offset = OutputHead(4, 3, kernel_size=k, resolution=r, offset_gain=offset_gain, **kw)
    return plain, with_offset


def test_offset_starts_at_zero_and_adds_gain_times_itself_per_position():
    plain, head = _pair(0.05)
    s = torch.randn([5, 4, 6, 6])
    assert head.offset.shape == (3, 6, 6) and plain.offset is None
    torch.testing.assert_close(head(s), plain(s), rtol=0, atol=0)  # starts painting what it painted without it
    with torch.no_grad():
        head.offset.copy_(torch.randn([3, 6, 6]))
    expected = plain(s) + 0.05 * head.offset.detach()[None]  # the same offset in every image
    torch.testing.assert_close(head(s), expected)
    torch.testing.assert_close(head.effective_offset(), 0.05 * head.offset.detach())
    assert plain.effective_offset() is None and 'offset_gain=0.05' in repr(head)
    # OutputHeads: only the listed levels get one.
    heads = OutputHeads({4: 4, 8: 4}, 3, kernel_size=3, offset_gains={8: 0.1})
    assert heads.head(4).offset is None and heads.head(8).offset.shape == (3, 8, 8)
    assert heads.head(8).offset_gain == 0.1
    names = {n for n, _ in heads.named_parameters()}
    assert 'h8.offset' in names and 'h4.offset' not in names


def test_offset_gradient_is_gain_times_the_summed_output_gradient():
    """The head computes in float32 (no float64 gradcheck through it): every output pixel adds gain * offset, so
    d(sum(out * w))/d(offset) = gain * sum over images of w; the atoms' gradient is unchanged by the offset."""
    plain, head = _pair(0.3, r=4)
    with torch.no_grad():
        head.offset.normal_()
    s = torch.randn([2, 4, 4, 4])
    weights = torch.randn([2, 3, 4, 4])
    (head(s) * weights).sum().backward()
    (plain(s) * weights).sum().backward()
    torch.testing.assert_close(head.offset.grad, 0.3 * weights.sum(dim=0))
    torch.testing.assert_close(head.weight.grad, plain.weight.grad)


def test_descent_on_the_mean_image_loss_paints_a_border_frame():
    """Reals = what the head paints plus a coloured frame on the outer ring: training the offset alone on the
    mean-image loss brings the loss from the frame's size to about the batch noise and learns the frame."""
    torch.manual_seed(1)
    _, head = _pair(0.05, r=8)
    frame = torch.zeros([3, 8, 8])
    frame[:, 0], frame[:, -1], frame[:, :, 0], frame[:, :, -1] = [torch.tensor([0.3, 0.0, -0.3])[:, None]] * 4
    feats = [torch.randn([64, 4, 8, 8]).relu() for _ in range(2)]
    with torch.no_grad():
        reals = [head(f) + frame for f in feats]
    start = float(pml.mean_image_loss(head(feats[1]), reals[1]).detach())
    opt = torch.optim.Adam([head.offset], lr=0.1, betas=(0.0, 0.99))
    for _ in range(300):
        opt.zero_grad()
        pml.mean_image_loss(head(feats[0]), reals[0]).backward()
        opt.step()
    end = float(pml.mean_image_loss(head(feats[1]), reals[1]).detach())
    assert end < start / 100, (start, end)
    torch.testing.assert_close(head.effective_offset().detach(), frame, atol=0.02, rtol=0)


def test_recalibration_gain_keeps_a_head_with_offset_exact():
    _, head = _pair(0.05, r=6, unit_norm_atoms=True, gain=True)
    with torch.no_grad():
        head.offset.normal_()
        head.bias.normal_()
    s = torch.randn([7, 4, 6, 6]).relu()
    x = head(s).detach()
    mean = x.double().mean(dim=[0, 2, 3]).float()
    ema_calibration.apply_gain(head, 1.3, mean)
    torch.testing.assert_close(head(s), mean.reshape(1, 3, 1, 1) + 1.3 * (x - mean.reshape(1, 3, 1, 1)),
                               atol=1e-5, rtol=1e-5)


def test_refusals():
    with pytest.raises(ValueError, match='offset_gain must be >= 0'):
        OutputHead(4, 3, resolution=4, offset_gain=-1.0)
    with pytest.raises(ValueError, match='needs the resolution'):
        OutputHead(4, 3, offset_gain=0.1)
    with pytest.raises(ValueError, match='offset gain for resolution 32'):
        OutputHeads({4: 4, 8: 4}, 3, offset_gains={32: 0.1})
    _, head = _pair(0.1, r=6)
    with pytest.raises(ValueError, match='per-position offset is'):
        head(torch.zeros([1, 4, 5, 5]))


def test_fsr_head_offset_trains_and_cli(tmp_path, one_thread):
    plugin = make_plugin(dict(fsr=True, fsr_pair=False, fsr_head_kernel=3, fsr_head_offset='8:0.05',
                              fsr_mean_image='8:2'),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    assert plugin.cfg.head_offset == {8: 0.05}
    os.makedirs(tmp_path / 'run')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'run', 0.032, plugins=[plugin]))
    assert plugin.heads.head(16).offset is None and plugin.heads.head(4).offset is None
    assert float(plugin.heads.head(8).offset.detach().abs().max()) > 0  # trained away from its zero start
    with open(tmp_path / 'run' / 'network-snapshot-000000.pkl', 'rb') as f:
        snap = pickle.load(f)
    ema = snap['extra_modules_ema']['fsr.heads']
    assert ema.head(8).offset.shape == (3, 8, 8) and ema.head(8).offset_gain == 0.05
    res = run_train(['--outdir', str(tmp_path / 'cli'), '-n'] + TINY + ['--fsr=1', '--fsr-head-offset=16:0.05'],
                    tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"fsr_head_offset": "16:0.05"' in res.stdout
    for value, message in (('64:0.1', '64 is not a synthesis res'), ('-0.1', 'gains must be >= 0'),
                           ('16:x', 'expected a number')):
        res = run_train(['--outdir', str(tmp_path / 'bad'), '-n'] + TINY + ['--fsr=1', f'--fsr-head-offset={value}'],
                        tmp_path)
        assert res.returncode != 0 and message in res.stderr, (value, res.stderr[-2000:])


def test_fine_tuning_an_fsr_pickle_without_offsets_adds_them_at_zero(tmp_path, one_thread, capsys):
    """--resume of an FSR network trained without offsets, with --fsr-head-offset on: its heads are loaded, the new
    offset starts at 0 (so the start images are the pickle's), and the log names it."""
    def plugin(**extra):
        return make_plugin(dict(fsr=True, fsr_pair=False, fsr_head_kernel=3, **extra),
                           dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))

    os.makedirs(tmp_path / 'a')
    training_loop.training_loop(**loop_kwargs(tmp_path / 'a', 0.032, plugins=[plugin()]))
    (pkl,) = glob.glob(str(tmp_path / 'a' / 'network-snapshot-*.pkl'))
    with open(pkl, 'rb') as f:
        saved = {n: t.detach() for n, t in pickle.load(f)['extra_modules']['fsr.heads'].named_parameters()}
    second = plugin(fsr_head_offset='16:0.05')
    seen = {}

    class StartProbe(hooks_lib.TrainingPlugin):
        name = 'probe'

        def param_lr_multipliers(self, side, module, modules, stage):
            if side == 'G' and not seen:
                seen.update({n: t.detach().clone() for n, t in second.heads.named_parameters()})
            return {}

    os.makedirs(tmp_path / 'b')
    capsys.readouterr()
    training_loop.training_loop(**loop_kwargs(tmp_path / 'b', 0.016, plugins=[second, StartProbe()], resume_pkl=pkl,
                                              network_snapshot_ticks=None))
    assert ("fsr.heads: copied from the pickle (its EMA copy from the pickle's EMA copy); kept as initialised (not "
            "in the pickle): h16.offset") in capsys.readouterr().out
    assert sorted(set(seen) - set(saved)) == ['h16.offset']
    for n, t in saved.items():
        assert torch.equal(seen[n], t), n
    assert torch.equal(seen['h16.offset'], torch.zeros([3, 16, 16]))
    # A tensor of the pickle that the new heads do not have is still refused (no silent partial copy).
    os.makedirs(tmp_path / 'c')
    with pytest.raises(Exception, match='not used by destination: h8.offset'):
        training_loop.training_loop(**loop_kwargs(tmp_path / 'c', 0.016, plugins=[plugin()],
                                                  resume_pkl=_with_offset_pickle(tmp_path, second),
                                                  network_snapshot_ticks=None))


def _with_offset_pickle(tmp_path, fsr):
    """A pickle like the run's snapshots whose heads have an 8x8 offset."""
    import copy
    (pkl,) = glob.glob(str(tmp_path / 'a' / 'network-snapshot-*.pkl'))
    with open(pkl, 'rb') as f:
        data = pickle.load(f)
    heads = OutputHeads({r: fsr.heads.head(r).in_channels for r in fsr.heads.resolutions}, 3, kernel_size=3,
                        offset_gains={8: 0.05})
    data['extra_modules'] = dict(data['extra_modules'], **{'fsr.heads': copy.deepcopy(heads)})
    path = str(tmp_path / 'with-offset.pkl')
    with open(path, 'wb') as f:
        pickle.dump(data, f)
    return path


def test_atom_reconstruction_codes_the_reals_minus_the_top_offset():
    """--fsr-atom-recon with an offset on the top head: the head paints conv(codes) + bias + offset, so the term
    sparse-codes the real images minus the offset (as it already removes the bias)."""
    from fsr_plugin import atom_reconstruction
    from training import networks
    torch.manual_seed(3)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=64, channel_max=8))
    plugin = make_plugin(dict(fsr=True, fsr_pair=False, fsr_head_kernel=3, fsr_head_offset='16:0.5',
                              fsr_atom_recon=2.0, fsr_atom_recon_images=4, fsr_atom_recon_iters=5),
                         dict(loss_kwargs=dict(r1_gamma=1.0), training_set_kwargs=dict(resolution=16)))
    plugin.extra_modules(G, None, None, torch.device('cpu'))
    head = plugin.heads.head(16)
    with torch.no_grad():
        head.offset.normal_()
    real = torch.randn([6, 3, 16, 16])
    terms = plugin._atom_recon_terms(dict(real_img=real), {})
    cfg = plugin.cfg
    expected, _ = atom_reconstruction.reconstruction_loss(real[:4] - head.effective_offset().detach(),
                                                          head.effective_weight(), head.bias, head.padding,
                                                          cfg.atom_recon_lam, iters=cfg.atom_recon_iters)
    torch.testing.assert_close(terms['atom_recon'], 2.0 * expected)
    without, _ = atom_reconstruction.reconstruction_loss(real[:4], head.effective_weight(), head.bias, head.padding,
                                                         cfg.atom_recon_lam, iters=cfg.atom_recon_iters)
    assert not torch.allclose(terms['atom_recon'], 2.0 * without)
