"""fsr_plugin.code_anatomy: the top level's codes of a generator against the synthetic teacher's."""
import numpy as np
import pytest
import torch

from fsr_plugin import code_anatomy as ca
from fsr_plugin import wta
from fsr_plugin.synthetic import FSRTeacher


def test_painted_codes_are_the_kept_features_times_their_atom_norms():
    torch.manual_seed(0)
    feats = torch.randn(2, 3, 6, 6)
    atoms = torch.randn(3, 3, 3, 3)
    norms = atoms.flatten(1).norm(dim=1).double()
    plain = ca.painted_codes(feats, atoms)
    assert torch.allclose(plain, feats.double() * norms.reshape(1, 3, 1, 1))
    kept = ca.painted_codes(feats, atoms, window=3, min_value=0.2)
    expected = wta.winner_take_all(feats, 3, min_value=0.2).double() * norms.reshape(1, 3, 1, 1)
    assert torch.allclose(kept, expected)
    assert (kept != 0).sum() < (plain != 0).sum()
    with pytest.raises(ValueError, match='3 feature channels but 2 atoms'):
        ca.painted_codes(feats, atoms[:2])


def test_code_statistics_on_hand_made_codes():
    codes = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    codes[0, 0, 1, 1] = 1.0          # isolated
    codes[0, 1, 4, 4] = 3.0          # these two touch (one pixel apart diagonally)
    codes[0, 0, 5, 5] = 2.0
    st = ca.code_statistics(codes, num_atoms=2)
    assert st['sites_per_3x3'] == pytest.approx(9 * 3 / 36)
    assert st['isolated'] == pytest.approx(1 / 3)
    assert st['codes_per_site'] == 1
    assert st['amp_mean'] == pytest.approx(2.0) and st['amp_p50'] == pytest.approx(2.0)
    assert st['amp_p10'] == pytest.approx(np.quantile([1, 2, 3], 0.1))
    assert st['share'].tolist() == pytest.approx([0.5, 0.5])
    codes[0, 1, 1, 1] = 4.0          # two channels at one site: amplitude = the norm over channels
    st = ca.code_statistics(codes)
    assert st['codes_per_site'] == pytest.approx(4 / 3)
    assert st['amp_p90'] == pytest.approx(np.quantile([np.sqrt(17), 3, 2], 0.9))
    with pytest.raises(ValueError, match='2 channels, expected 12'):
        ca.code_statistics(codes, num_atoms=12)


def test_teacher_codes_have_the_designed_statistics():
    teacher = FSRTeacher(resolution=32, seed=0)
    codes = teacher.sample(64, seed=3)['top_codes']
    st = ca.code_statistics(codes, num_atoms=teacher.top_atoms)
    assert st['isolated'] == 1 and st['codes_per_site'] == 1        # one channel per site, one site per 3x3
    assert 0.8 < st['sites_per_3x3'] < 1.0                          # about 0.9 sites per 3x3 neighbourhood
    lo, hi = teacher.amplitude_range
    assert lo <= st['amp_p10'] < st['amp_p50'] < st['amp_p90'] <= hi
    assert float(st['share'].sum()) == pytest.approx(1) and float(st['share'].min()) > 0.02


def test_as_teacher_codes_adds_channels_into_their_atoms():
    codes = torch.zeros(1, 4, 3, 3, dtype=torch.float64)
    codes[0, 0, 0, 0] = 1.0
    codes[0, 1, 0, 0] = 2.0
    codes[0, 2, 1, 1] = 5.0
    codes[0, 3, 2, 2] = 7.0
    out = ca.as_teacher_codes(codes, [1, 1, 0, -1], num_atoms=3)
    assert out.shape == (1, 3, 3, 3)
    assert out[0, 1, 0, 0] == 3.0 and out[0, 0, 1, 1] == 5.0 and float(out.abs().sum()) == 8.0
    with pytest.raises(ValueError, match='4 channels but 3 partners'):
        ca.as_teacher_codes(codes, [0, 1, 2], num_atoms=3)
    with pytest.raises(ValueError, match='partner index 3 >= num_atoms 3'):
        ca.as_teacher_codes(codes, [0, 1, 2, 3], num_atoms=3)


def test_with_amplitudes_takes_the_sources_distribution_and_keeps_the_sites():
    torch.manual_seed(5)
    codes = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    codes[0, 0, 1, 1], codes[0, 2, 3, 3], codes[1, 1, 0, 4] = 0.2, 0.1, 0.4
    codes[1, 0, 2, 2], codes[1, 2, 2, 2] = 0.3, 0.4                 # one site, two channels: norm 0.5
    source = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    source[0, 0, 0, :] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    source[0, 0, 1, 0] = 5.0
    out = ca.with_amplitudes(codes, source)
    assert torch.equal(out != 0, codes != 0)                          # same sites and channels
    amp = out.square().sum(dim=1).sqrt()
    # Ranks 0.1 < 0.2 < 0.4 < 0.5 -> quantiles 0, 1/3, 2/3, 1 of [1..5]: 1, 2.333, 3.667, 5.
    assert [float(amp[0, 3, 3]), float(amp[0, 1, 1]), float(amp[1, 0, 4]), float(amp[1, 2, 2])] == \
        pytest.approx([1, 7 / 3, 11 / 3, 5])
    assert float(out[1, 0, 2, 2] / out[1, 2, 2, 2]) == pytest.approx(0.75)   # the mix at a site is kept
    st = ca.code_statistics(ca.with_amplitudes(source, source))
    assert st['amp_mean'] == pytest.approx(3.0)
    with pytest.raises(ValueError, match='need painted sites'):
        ca.with_amplitudes(torch.zeros(1, 1, 2, 2), source)
