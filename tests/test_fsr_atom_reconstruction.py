"""fsr_plugin.atom_reconstruction: sparse coding of real images in the top head's atoms (--fsr-atom-recon)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsr_plugin import atom_anatomy as aa
from fsr_plugin import atom_reconstruction as ar
from fsr_plugin import oracle
from fsr_plugin.heads import OutputHead
from fsr_plugin.synthetic import FSRTeacher


@pytest.mark.parametrize('kernel', [1, 3, 4])
def test_paint_is_the_heads_convolution_without_bias(kernel):
    torch.manual_seed(0)
    head = OutputHead(5, 3, kernel_size=kernel)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    codes = torch.randn(2, 5, 8, 8)
    expected = head(codes) - head.bias.reshape(1, 3, 1, 1)
    assert torch.allclose(ar.paint(codes, head.effective_weight(), head.padding), expected, atol=1e-5)


@pytest.mark.parametrize('kernel, padding', [(1, [0, 0, 0, 0]), (3, [1, 1, 1, 1]), (4, [1, 2, 1, 2])])
def test_paint_adjoint_is_the_adjoint_of_paint(kernel, padding):
    torch.manual_seed(kernel)
    codes = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    images = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    weight = torch.randn(3, 5, kernel, kernel, dtype=torch.float64)
    lhs = (ar.paint(codes, weight, padding) * images).sum()
    rhs = (codes * ar.paint_adjoint(images, weight, padding)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-10)


def test_paint_places_each_atom_around_its_site_as_the_teacher_does():
    atoms = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    codes = torch.zeros(1, 4, 6, 6, dtype=torch.float64)
    codes[0, 2, 3, 1] = 2.0
    img = ar.paint(codes, atoms.transpose(0, 1), [1, 1, 1, 1])
    expected = torch.zeros(1, 3, 6, 6, dtype=torch.float64)
    expected[0, :, 2:5, 0:3] = 2.0 * atoms[2]                      # the 3x3 window centred on row 3, column 1
    assert torch.allclose(img, expected)
    assert torch.allclose(img, F.conv_transpose2d(codes, atoms, padding=1))   # the teacher's own convention


def test_sparse_codes_match_the_oracles_independent_fista():
    teacher = FSRTeacher(resolution=16, seed=0)
    images = teacher.sample(4, seed=3, details=False)['image'].double()
    atoms = teacher.atoms.double()
    ours = ar.sparse_codes(images, atoms.transpose(0, 1), [1, 1, 1, 1], lam=0.1, iters=20)
    theirs = oracle.sparse_codes(images, atoms, 0.1, iters=20)      # explicit adjoint convolution, not autograd
    assert ours.min() >= 0
    assert torch.allclose(ours, theirs, atol=1e-9)


def test_sparse_codes_reconstruct_a_sparse_painting_and_lower_the_objective():
    torch.manual_seed(1)
    atoms = F.normalize(torch.randn(6, 3, 3, 3, dtype=torch.float64).flatten(1), dim=1).reshape(6, 3, 3, 3)
    weight = atoms.transpose(0, 1)
    true = torch.zeros(3, 6, 12, 12, dtype=torch.float64)
    for n in range(3):  # a few isolated sites each
        for (k, y, x) in [(n, 2, 2), (n + 2, 6, 8), (5 - n, 9, 3)]:
            true[n, k, y, x] = 1.0 + 0.3 * n
    images = ar.paint(true, weight, [1, 1, 1, 1])
    codes = ar.sparse_codes(images, weight, [1, 1, 1, 1], lam=1e-3, iters=300)
    assert codes.min() >= 0
    residual = (images - ar.paint(codes, weight, [1, 1, 1, 1])).square().sum() / images.square().sum()
    assert residual < 1e-3

    def objective(c):
        return 0.5 * (images - ar.paint(c, weight, [1, 1, 1, 1])).square().sum() + 1e-3 * c.sum()
    assert objective(codes) < 0.01 * objective(torch.zeros_like(codes))


def test_reconstruction_error_value_and_gradcheck():
    atom = torch.zeros(1, 3, 3, 3, dtype=torch.float64)
    atom[0, 0] = 1.0                                                # a flat red square, |atom|^2 = 9
    codes = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
    codes[0, 0, 2, 2] = 1.0
    zeros = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    # Image 0 misses one painted square (0.5 * 9), image 1 nothing: averaged over the two images.
    assert float(ar.reconstruction_error(zeros, codes, atom.transpose(0, 1), [1, 1, 1, 1])) == pytest.approx(2.25)

    torch.manual_seed(2)
    images = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    codes = torch.rand(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, c, w: ar.reconstruction_error(i, c, w, [1, 1, 1, 1]),
                                    (images, codes, weight))
    w4 = torch.randn(3, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, w: ar.reconstruction_error(images.detach(), c, w, [1, 2, 1, 2]),
                                    (codes, w4))


def test_teacher_atoms_explain_the_teachers_images_and_the_loss_turns_atoms_only():
    teacher = FSRTeacher(resolution=32, seed=0)
    images = teacher.sample(8, seed=5, details=False)['image'].float()
    weight = (3.0 * teacher.atoms).transpose(0, 1).contiguous()    # scale is irrelevant: atoms are normalised
    _, stats = ar.reconstruction_loss(images, weight, None, [1, 1, 1, 1], lam=0.1)
    assert stats['explained'] > 0.97 and stats['density'] < 0.03

    torch.manual_seed(3)
    weight = torch.randn(3, 16, 3, 3, requires_grad=True)
    bias = torch.tensor([0.05, -0.02, 0.01], requires_grad=True)
    loss, stats = ar.reconstruction_loss(images, weight, bias, [1, 1, 1, 1], lam=0.1)
    assert 0 < stats['explained'] < 0.97
    loss.backward()
    assert bias.grad is None                                        # the background is not trained by this term
    radial = (weight.grad * weight.detach()).sum(dim=[0, 2, 3])     # gradient along each atom: none (scale-free)
    assert radial.abs().max() < 1e-5 * weight.grad.abs().max() * weight.detach().abs().max() * 27
    assert weight.grad.abs().max() > 0


def test_descent_on_the_reconstruction_recentres_a_shifted_flat():
    teacher = FSRTeacher(resolution=16, seed=0)  # the same atoms as at 32x32; a quarter of the coding work
    images = teacher.sample(32, seed=7, details=False)['image'].float()
    atoms = teacher.atoms.double().numpy().copy()
    shifted, names = aa.shifted_atoms(atoms)
    start = shifted[names.index((0, 1, 0))]                         # flat 0 painted one row lower, top row grey
    flat0 = atoms[0] / np.linalg.norm(atoms[0])
    atoms[0] = start / np.linalg.norm(start)
    assert float((atoms[0] * flat0).sum()) < 0.85
    weight = torch.tensor(atoms, dtype=torch.float32).transpose(0, 1).contiguous().requires_grad_(True)
    opt = torch.optim.Adam([weight], lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = images[torch.randint(32, (8,), generator=gen)]
        loss, _ = ar.reconstruction_loss(batch, weight, None, [1, 1, 1, 1], lam=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = ar.unit_atoms(weight.detach()).transpose(0, 1)[0].double().numpy()
    assert float((learned * flat0).sum()) > 0.95


def test_selected_atoms_alone_code_and_learn():
    teacher = FSRTeacher(resolution=16, seed=0)
    images = teacher.sample(4, seed=9, details=False)['image'].float()
    torch.manual_seed(4)
    weight = torch.randn(3, 10, 3, 3, requires_grad=True)
    chosen = torch.tensor([True, False, True, True, False, False, True, False, False, False])
    loss, _ = ar.reconstruction_loss(images, weight, None, [1, 1, 1, 1], lam=0.1, atoms=chosen)
    loss.backward()
    assert weight.grad[:, ~chosen].abs().max() == 0 and weight.grad[:, chosen].abs().min() >= 0
    assert weight.grad[:, chosen].abs().sum(dim=[0, 2, 3]).min() > 0     # every chosen atom is coded and turned
    alone, _ = ar.reconstruction_loss(images, weight.detach()[:, chosen], None, [1, 1, 1, 1], lam=0.1)
    assert float(loss.detach()) == pytest.approx(float(alone), rel=1e-6)
    with pytest.raises(ValueError, match='no atom selected'):
        ar.reconstruction_loss(images, weight, None, [1, 1, 1, 1], lam=0.1, atoms=torch.zeros(10, dtype=torch.bool))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match='must agree on C'):
        ar.sparse_codes(torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 3, 3), [1, 1, 1, 1], lam=0.1)
    with pytest.raises(ValueError, match='lam must be >= 0 and iters >= 1'):
        ar.sparse_codes(torch.zeros(1, 3, 8, 8), torch.ones(3, 4, 3, 3), [1, 1, 1, 1], lam=-1)
