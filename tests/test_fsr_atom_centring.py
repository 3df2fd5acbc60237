"""fsr_plugin.atom_centring: the energy centroid of atoms and the centring prior (--fsr-atom-centre)."""
import pytest
import torch

from fsr_plugin import atom_centring as ac
from fsr_plugin.synthetic import structured_atoms


def test_teacher_atoms_are_centred_and_a_shifted_flat_is_half_a_pixel_off():
    teacher = structured_atoms(12)
    torch.testing.assert_close(ac.energy_centroids(teacher), torch.zeros([12, 2], dtype=torch.float64))
    assert float(ac.centring_penalty(teacher)) == pytest.approx(0.0, abs=1e-12)
    shifted = torch.zeros([1, 3, 3, 3], dtype=torch.float64)
    shifted[0, :, 1:, :] = teacher[0, :, :2, :]            # the flat moved down one row: rows 1 and 2 painted
    torch.testing.assert_close(ac.energy_centroids(shifted), torch.tensor([[0.5, 0.0]], dtype=torch.float64))
    assert float(ac.centring_penalty(shifted)) == pytest.approx(0.25)


def test_centroids_of_hand_made_atoms_and_scale_invariance():
    a = torch.zeros([2, 1, 4, 4], dtype=torch.float64)
    a[0, 0, 0, 3] = 2.0                                     # one tap in the top-right corner of a 4x4 window
    a[1, 0, 1, 1] = 1.0                                     # two equal taps: centroid between them
    a[1, 0, 1, 3] = -1.0
    expected = torch.tensor([[-1.5, 1.5], [-0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(ac.energy_centroids(a), expected)
    torch.testing.assert_close(ac.energy_centroids(5 * a), expected)
    assert float(ac.centring_penalty(a)) == pytest.approx(1.5 ** 2 * 2 + 0.5 ** 2 * 2)
    torch.testing.assert_close(ac.energy_centroids(torch.zeros([1, 3, 3, 3])), torch.zeros([1, 2]))
    with pytest.raises(ValueError, match=r'\[A, C, k, k\]'):
        ac.energy_centroids(torch.zeros([3, 3, 3]))


def test_centring_penalty_gradient_and_descent_centres_an_atom():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand([2, 3, 3, 3], generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ac.centring_penalty, (a,), eps=1e-6)
    b = a.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([b], lr=0.5)
    start = float(ac.centring_penalty(b.detach()))
    for _ in range(200):
        opt.zero_grad()
        ac.centring_penalty(b).backward()
        opt.step()
    assert float(ac.centring_penalty(b.detach())) < 1e-3 * start
