"""The measuring helpers of bench/ scripts that README figures rely on."""

import math

import pytest
import torch

from bench.collapse_bisect import PackedDiscriminator
from bench.fsr_d_contrast import contrast_scores
from bench.mnist_mode_coverage import DigitClassifier, class_figures, classify_fakes


def test_class_figures_hand_computed():
    # 4 samples: classes 3, 3, 7 and 0; top probabilities 0.9, 0.5, 0.7, 0.6.
    probs = torch.full([4, 10], 0.0)
    for row, (cls, top) in enumerate([(3, 0.9), (3, 0.5), (7, 0.7), (0, 0.6)]):
        probs[row] = (1 - top) / 9
        probs[row, cls] = top
    fig = class_figures(probs)
    assert fig['hist'].tolist() == pytest.approx([0.25, 0, 0, 0.5, 0, 0, 0, 0.25, 0, 0])
    assert fig['covered'] == 1  # only class 3's 0.9 sample is sure (p >= 0.9): 25% of the fakes
    assert fig['sure'] == pytest.approx(0.25)
    assert fig['entropy'] == pytest.approx(1.5)  # -(2 * 0.25 log2 0.25 + 0.5 log2 0.5)
    assert fig['conf'] == pytest.approx((0.9 + 0.5 + 0.7 + 0.6) / 4)


def test_class_figures_uniform_and_single_class():
    uniform = torch.eye(10).repeat(5, 1)
    assert class_figures(uniform)['entropy'] == pytest.approx(math.log2(10))
    assert class_figures(uniform)['covered'] == 10
    one = torch.zeros([100, 10])
    one[:, 4] = 1
    one[0] = torch.eye(10)[2]  # 1% of the samples: below the 2% coverage share
    one[1] = 0.1  # a sample the classifier cannot place: counted in hist, never in covered
    fig = class_figures(one)
    assert fig['covered'] == 1
    assert fig['sure'] == pytest.approx(0.99)
    assert fig['hist'][2] == pytest.approx(0.01) and fig['hist'][0] == pytest.approx(0.01)
    assert fig['conf'] == pytest.approx(0.991)


def test_digit_classifier_shape():
    assert DigitClassifier()(torch.zeros([3, 1, 32, 32])).shape == (3, 10)


def test_packed_discriminator_scores_packs():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, img, c):
            seen.append((img.clone(), c.clone()))
            return img.flatten(1).sum(1, keepdim=True)

    img = torch.arange(6 * 2 * 2 * 2, dtype=torch.float32).reshape(6, 2, 2, 2)
    scores = PackedDiscriminator(Recorder(), 3)(img, torch.zeros([6, 0]))
    packed, c = seen[0]
    assert packed.shape == (2, 6, 2, 2) and c.shape == (2, 0)
    assert torch.equal(packed[1], torch.cat([img[3], img[4], img[5]]))  # consecutive samples form a pack
    expected = torch.stack([img[:3].sum(), img[3:].sum()]).repeat_interleave(3)[:, None]
    assert torch.equal(scores, expected)


def test_classify_fakes_clamps_and_normalises():
    torch.manual_seed(0)
    model = DigitClassifier().eval()
    z = torch.randn([4, 8])

    def G(z, c, scale=1.0):  # stand-in generator: images far outside [-1, 1]
        return z.mean(1).reshape(-1, 1, 1, 1).expand(-1, 1, 32, 32) * 100 * scale

    probs = classify_fakes(model, G, z, torch.zeros([4, 0]), scale=2.0)
    expected = model(G(z, None, scale=2.0).clamp(-1, 1)).softmax(1)
    assert torch.allclose(probs, expected)
    assert torch.allclose(probs.sum(1), torch.ones(4))


def test_d_contrast_scores_against_a_hand_discriminator():
    """A 'discriminator' scoring minus the mean absolute deviation from 0.5: the images' mean is 0.5 per channel, so
    the score at gain g is -g x (mean absolute deviation) exactly, falling with the contrast."""
    images = torch.zeros(4, 3, 2, 2)
    images[:, :, 0, 0], images[:, :, 1, 1] = 1.0, 0.0
    images[:, :, 0, 1], images[:, :, 1, 0] = 0.75, 0.25          # per-channel mean 0.5, mean |x - 0.5| = 0.375

    def D(x, c):
        assert c.shape == (4, 0)
        return -(x - 0.5).abs().mean(dim=(1, 2, 3))
    scores = contrast_scores(D, images, gains=(0.5, 1.0, 2.0))
    assert scores.tolist() == pytest.approx([-0.1875, -0.375, -0.75])
