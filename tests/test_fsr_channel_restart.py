"""--fsr-top-restart: usage of the top level's channels, the choice of dead and donor channels, the re-initialisation
of a dead channel (generator row, head atom, EMA copies, Adam state), and the plugin in a training run (events,
statistics, exact resume, option checks)."""
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import TINY, loop_kwargs, params_equal, run_train  # noqa: E402

from fsr_plugin import channel_restart  # noqa: E402
from fsr_plugin.heads import OutputHead  # noqa: E402
from fsr_plugin.options import FSRConfig  # noqa: E402
from fsr_plugin.plugin import FSRPlugin  # noqa: E402
from training import networks  # noqa: E402
from training import training_loop  # noqa: E402


def test_channel_usage_counts_the_winners_mass():
    s = torch.zeros([2, 3, 2, 2])
    s[0, 0, 0, 0], s[0, 1, 0, 0] = 2.0, 1.0      # channel 0 wins this site with 2
    s[0, 2, 1, 1] = 3.0                           # channel 2 wins with 3
    s[1, 1, 0, 1], s[1, 0, 0, 1] = 5.0, -1.0     # channel 1 wins with 5
    s[1, 2, 1, 0] = -4.0                          # negative: no winner
    usage = channel_restart.ChannelUsage(3, window=1)
    usage.update(s)
    np.testing.assert_allclose(usage.shares().numpy(), np.array([2.0, 5.0, 3.0]) / 10)
    usage.update(s)
    np.testing.assert_allclose(usage.mass.numpy(), [4.0, 10.0, 6.0])
    state = usage.state_dict()
    usage.reset()
    assert float(usage.mass.sum()) == 0 and float(usage.shares().sum()) == 0
    usage.load_state_dict(state)
    np.testing.assert_allclose(usage.mass.numpy(), [4.0, 10.0, 6.0])
    dense = channel_restart.ChannelUsage(3, window=0)  # no selection: absolute values
    dense.update(s)
    np.testing.assert_allclose(dense.mass.numpy(), [3.0, 6.0, 7.0])
    # A 3x3 suppression window keeps one winner per neighbourhood here (the largest, channel 1's 5 in image 1).
    nms = channel_restart.ChannelUsage(3, window=3)
    nms.update(s)
    np.testing.assert_allclose(nms.mass.numpy(), [0.0, 5.0, 3.0])
    with pytest.raises(ValueError, match=r'\[N, 3, H, W\]'):
        usage.update(torch.zeros([1, 4, 2, 2]))
    with pytest.raises(ValueError, match='4 channels'):
        channel_restart.ChannelUsage(3).load_state_dict({'mass': torch.zeros(4)})


def test_choose_restarts_pairs_least_used_with_most_used():
    shares = torch.tensor([0.30, 0.0, 0.005, 0.50, 0.0, 0.195])
    assert channel_restart.choose_restarts(shares, 0.01, 2) == [(1, 3), (4, 0)]
    assert channel_restart.choose_restarts(shares, 0.01, 10) == [(1, 3), (4, 0), (2, 5)]
    assert channel_restart.choose_restarts(shares, 0.0, 10) == []            # nothing below a share of 0
    assert channel_restart.choose_restarts(torch.zeros(4), 0.01, 2) == []    # nothing painted: no event
    # Never more restarts than used channels.
    assert channel_restart.choose_restarts(torch.tensor([1.0, 0, 0, 0]), 0.01, 3) == [(1, 0)]


def test_missing_patch_pairs_pick_the_worst_represented_patches_and_nearest_donors():
    eye = torch.eye(4).reshape(4, 1, 2, 2)                         # four orthogonal unit "atoms" of 1 x 2 x 2
    atoms = torch.stack([eye[0], eye[1], eye[2], eye[3]])         # channel c paints basis pattern c
    shares = torch.tensor([0.5, 0.5, 0.0, 0.0])                   # channels 0 and 1 are used, 2 and 3 dead
    near2 = eye[2] + 0.3 * eye[1]                                  # new pattern, nearest used atom: channel 1
    near3 = eye[3] + 0.2 * eye[0]                                  # another, nearest used atom: channel 0
    candidates = torch.stack([2 * eye[0], near3, eye[1], near2, 1.01 * near2, -eye[0]])
    pairs, patches = channel_restart.missing_patch_pairs(shares, 0.01, 5, atoms, candidates)
    # Best signed cosine with a used atom: -eye[0] 0 (its nearest is channel 1), near3 0.196, near2 0.287, the rest 1.
    # Donors: the used atom nearest to each patch.
    assert len(pairs) == 2  # only two dead channels
    torch.testing.assert_close(patches, torch.stack([-eye[0], near3]))
    assert pairs == [(2, 1), (3, 0)]
    pairs, patches = channel_restart.missing_patch_pairs(shares, 0.01, 1, atoms, candidates[1:5])
    assert pairs == [(2, 0)] and torch.equal(patches[0], near3)
    # A patch within DISTINCT_COS of one already taken is skipped: near2 and its copy -> near2, then eye[1].
    pairs, patches = channel_restart.missing_patch_pairs(shares, 0.01, 2, atoms,
                                                         torch.stack([near2, 1.01 * near2, eye[1]]))
    assert pairs == [(2, 1), (3, 1)] and torch.equal(patches[1], eye[1])
    assert torch.allclose(patches[0] / patches[0].norm(), near2 / near2.norm())
    assert channel_restart.missing_patch_pairs(torch.ones(4) / 4, 0.01, 2, atoms, candidates)[0] == []


def test_real_patches_are_windows_of_the_images_minus_the_bias():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn([3, 3, 6, 6], generator=gen)
    bias = torch.tensor([0.1, -0.2, 0.3])
    patches = channel_restart.real_patches(images, 3, bias, 5, gen)
    assert patches.shape == (5, 3, 3, 3)
    windows = [(images[n, :, y:y + 3, x:x + 3] - bias.reshape(3, 1, 1)) for n in range(3) for y in range(4)
               for x in range(4)]
    norms = torch.stack([w.norm() for w in windows])
    for p in patches:
        hits = [i for i, w in enumerate(windows) if torch.allclose(w, p)]
        assert len(hits) == 1
        assert norms[hits[0]] >= norms.median()  # drawn from the stronger half


def _top_layer(seed=0, channels=8):
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                           mapping_kwargs=dict(num_layers=1),
                           synthesis_kwargs=dict(channel_base=channels * 8, channel_max=channels))
    head = OutputHead(channels, 3, kernel_size=3, unit_norm_atoms=True, wta=1)
    return G, head


def _features(G, seed=1, n=64):
    z = torch.randn([n, G.z_dim], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        _, feats = G.synthesis(G.mapping(z, torch.zeros([n, 0])), return_features=True, noise_mode='const')
    return feats[8].float()


def test_split_restart_shares_the_donors_sites_and_copies_state():
    G, head = _top_layer()
    G_ema, head_ema = _top_layer(seed=5)  # different values: the restart must write the new rows there
    conv = G.synthesis.b8.conv1
    opt = torch.optim.Adam(list(conv.parameters()) + list(head.parameters()), lr=1e-3, betas=(0.0, 0.99))
    (conv.weight.square().sum() + head.weight.square().sum() + conv.bias.sum()).backward()
    opt.step()
    before = channel_restart.ChannelUsage(8, window=1)
    before.update(_features(G))
    shares = before.shares()
    donor = int(shares.argmax())
    dead = int(shares.argmin())
    old_conv, old_atom = conv.weight[donor].clone(), head.weight[:, donor].clone()
    channel_restart.restart_channels([(dead, donor)], conv, head, optimizer=opt, conv_ema=G_ema.synthesis.b8.conv1,
                                     head_ema=head_ema, mode='split', generator=torch.Generator().manual_seed(0))
    # The dead row is the donor's plus a perturbation of about SPLIT_NOISE of its RMS; the donor is unchanged.
    assert torch.equal(conv.weight[donor], old_conv) and torch.equal(head.weight[:, donor], old_atom)
    rel = (conv.weight[dead].detach() - old_conv).square().mean().sqrt() / old_conv.square().mean().sqrt()
    assert 0.05 < float(rel.detach()) < 0.2
    assert torch.equal(conv.bias[dead], conv.bias[donor])
    cos = torch.nn.functional.cosine_similarity(head.weight[:, dead].flatten(), old_atom.flatten(), dim=0)
    assert 0.95 < float(cos.detach()) < 1.0
    # The EMA copies hold the same new rows.
    assert torch.equal(G_ema.synthesis.b8.conv1.weight[dead], conv.weight[dead])
    assert torch.equal(head_ema.weight[:, dead], head.weight[:, dead])
    # Adam's state rows are the donor's.
    for param, dim in ((conv.weight, 0), (head.weight, 1), (conv.bias, 0)):
        for key in ('exp_avg', 'exp_avg_sq'):
            v = opt.state[param][key]
            assert torch.equal(v.select(dim, dead), v.select(dim, donor)), key
    # The restarted channel now wins at part of the donor's sites: together they paint about what the donor did.
    after = channel_restart.ChannelUsage(8, window=1)
    after.update(_features(G))
    new = after.mass
    assert new[dead] > 0.1 * before.mass[donor]
    assert abs(float(new[dead] + new[donor]) / float(before.mass[donor]) - 1) < 0.2


def test_data_restart_paints_a_real_patch():
    G, head = _top_layer()
    conv = G.synthesis.b8.conv1
    patch = torch.randn([1, 3, 3, 3], generator=torch.Generator().manual_seed(3))
    norm = head.weight[:, 2].norm()
    channel_restart.restart_channels([(5, 2)], conv, head, mode='data', patches=patch,
                                     generator=torch.Generator().manual_seed(0))
    atom = head.effective_weight()[:, 5]
    torch.testing.assert_close(atom, patch[0] / patch[0].norm(), rtol=0, atol=1e-5)
    torch.testing.assert_close(head.weight[:, 5].norm(), norm, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match='a patch per restarted channel'):
        channel_restart.restart_channels([(5, 2)], conv, head, mode='data', patches=None)
    with pytest.raises(ValueError, match='restart mode'):
        channel_restart.restart_channels([(5, 2)], conv, head, mode='zero')


def test_restart_generator_depends_on_seed_and_step_only():
    draw = lambda seed, nimg: torch.rand(3, generator=channel_restart.restart_generator(seed, nimg))  # noqa: E731
    assert torch.equal(draw(0, 2000), draw(0, 2000))
    assert not torch.equal(draw(0, 2000), draw(0, 4000)) and not torch.equal(draw(0, 2000), draw(1, 2000))
    draw(10 ** 6, 25 * 10 ** 6)  # large seeds and image counts wrap instead of overflowing


def restart_options(**kw):
    opts = dict(fsr=True, fsr_head_kernel=3, fsr_relu=True, fsr_unit_atoms=True, fsr_top_wta=3, fsr_main_d='head',
                fsr_top_restart=0.016, fsr_top_restart_share=0.05, fsr_top_restart_max=2)
    opts.update(kw)
    return opts


def _restart_plugin(**kw):
    return FSRPlugin(FSRConfig.from_options(restart_options(**kw)), r1_gamma=1.0, seed=0)


@pytest.mark.parametrize('atom', ['split', 'data', 'missing'])
def test_training_run_restarts_dead_channels_and_resumes_exactly(tmp_path, one_thread, capsys, atom):
    a, b = tmp_path / 'a', tmp_path / 'b'
    a.mkdir(), b.mkdir()
    pa = _restart_plugin(fsr_top_restart_atom=atom)
    ra = training_loop.training_loop(**loop_kwargs(a, 0.064, plugins=[pa], ada_target=-1.0))
    log = capsys.readouterr().out
    assert log.count('top-level channels in use; restarted') == 4  # every 16 images, 64 images
    restarted = [line.split('restarted ')[1].split(', ') for line in log.splitlines() if 'restarted' in line]
    total = sum(len(r) for r in restarted)
    assert 4 <= pa._restart['total'] == total <= 8  # at most 2 per event
    stats = [json.loads(line) for line in (a / 'stats.jsonl').read_text().splitlines()]
    assert stats[-1]['Plugin/fsr/top_restarts']['mean'] == total
    assert 1 <= stats[-1]['Plugin/fsr/top_used_channels']['mean'] <= 16
    # Stopped half-way and continued from its snapshot, the run ends where the uninterrupted one did.
    training_loop.training_loop(**loop_kwargs(b, 0.032, plugins=[_restart_plugin(fsr_top_restart_atom=atom)],
                                              ada_target=-1.0))
    snap = str(b / 'network-snapshot-000000.pkl')
    with open(snap, 'rb') as f:
        state = pickle.load(f)['resume_state']['plugin_state']['fsr']['restart']
    assert state['next_nimg'] == 48 and state['total'] == sum(len(r) for r in restarted[:2])
    pb = _restart_plugin(fsr_top_restart_atom=atom)
    rb = training_loop.training_loop(**loop_kwargs(b, 0.064, plugins=[pb], resume_snapshot=snap, ada_target=-1.0))
    for key in ('G', 'D', 'G_ema'):
        assert params_equal(ra[key], rb[key]), key
    assert pb._restart == pa._restart


def test_restart_changes_training_only_through_the_restarts(tmp_path, one_thread):
    """With an interval longer than the run the option changes nothing."""
    a, b = tmp_path / 'a', tmp_path / 'b'
    a.mkdir(), b.mkdir()
    ra = training_loop.training_loop(**loop_kwargs(a, 0.032, plugins=[_restart_plugin(fsr_top_restart=0)],
                                                   network_snapshot_ticks=None))
    rb = training_loop.training_loop(**loop_kwargs(b, 0.032, plugins=[_restart_plugin(fsr_top_restart=1)],
                                                   network_snapshot_ticks=None))
    for key in ('G', 'D', 'G_ema'):
        assert params_equal(ra[key], rb[key]), key


def test_train_cli_restart_options(tmp_path):
    base = ['--outdir', str(tmp_path), '-n'] + TINY + ['--fsr=1', '--fsr-top-restart=1']
    res = run_train(base, tmp_path)
    assert res.returncode != 0 and '--fsr-top-restart needs --fsr-top-wta >= 1' in res.stderr
    res = run_train(base + ['--fsr-top-wta=3'], tmp_path)
    assert res.returncode != 0 and '--fsr-main-d=head' in res.stderr
    res = run_train(base + ['--fsr-top-wta=3', '--fsr-main-d=head', '--fsr-top-restart-atom=data'], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for key in ('"fsr_top_restart": 1.0', '"fsr_top_restart_atom": "data"', '"fsr_top_restart_max": 2',
                '"fsr_top_restart_share": 0.01'):
        assert key in res.stdout, key
