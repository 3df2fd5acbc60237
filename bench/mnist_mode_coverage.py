"""Mode coverage of MNIST generators: which digit classes do the fakes fall into? (prints figures, asserts nothing)

A small CNN is trained on the labelled training zip (dataset_tool.py's MNIST output, labels in dataset.json), then
classifies N fakes of each network pickle. Printed per pickle:

* `hist`: share of fakes per class 0-9 (percent);
* `covered`: classes that at least 2% of the fakes fall into with probability >= 0.9 (10 = every digit drawn
  recognisably; a malformed template spread thinly over several classes counts for none);
* `sure`: share of fakes classified with probability >= 0.9;
* `H`: entropy of the class histogram in bits (log2 10 = 3.32 for a uniform histogram);
* `conf`: mean top-class probability (low = the classifier cannot tell which digit it is);
* for conditional generators, `agree`: share of fakes classified as the label they were generated for.

The same figures for N reals are printed first as the reference.

    python bench/mnist_mode_coverage.py train --data=datasets/mnist32.zip --classifier=mnist_cls.pt
    python bench/mnist_mode_coverage.py score --data=datasets/mnist32.zip --classifier=mnist_cls.pt \\
        runs/00005-*/network-snapshot-000200.pkl runs/00006-*        # pickles, or run folders (every snapshot)
"""

import glob
import os
import re
import sys
import time

import click
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import legacy  # noqa: E402
from training.dataset import ImageFolderDataset  # noqa: E402

NUM_CLASSES = 10
COVER_SHARE = 0.02
SURE_PROB = 0.9


class DigitClassifier(torch.nn.Module):
    """image [N, 1, 32, 32] in [-1, 1] -> logits [N, 10]."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),   # 16x16
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 8x8
            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 4x4
            torch.nn.Flatten(), torch.nn.Linear(64 * 16, 128), torch.nn.ReLU(), torch.nn.Linear(128, NUM_CLASSES))

    def forward(self, x):
        return self.net(x)


def load_classifier(path):
    """-> DigitClassifier in eval mode with the weights `train` wrote to `path`."""
    model = DigitClassifier()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def classify_fakes(model, G, z, c, **G_kwargs):
    """z [N, z_dim], c [N, c_dim] -> class probabilities [N, 10] of G's images (clamped to [-1, 1])."""
    return model(G(z, c, **G_kwargs).clamp(-1, 1)).softmax(1)


def load_labelled(data, num=None, seed=0):
    """-> images float32 [N, 1, 32, 32] in [-1, 1], labels int64 [N]: the whole set, or `num` images drawn with `seed`
    (only those are decoded)."""
    dataset = ImageFolderDataset(data, use_labels=True)
    if dataset.num_channels != 1 or dataset.resolution != 32:
        raise click.ClickException(f'{data}: expected 32x32 greyscale images, got {dataset.resolution}x'
                                   f'{dataset.resolution}x{dataset.num_channels}')
    if not dataset.has_labels:
        raise click.ClickException(f'{data}: no labels in dataset.json (convert MNIST with dataset_tool.py)')
    indices = range(len(dataset)) if num is None else \
        torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num].tolist()
    images = torch.from_numpy(np.stack([dataset[i][0] for i in indices])).float() / 127.5 - 1
    labels = torch.as_tensor([int(np.argmax(dataset.get_label(i))) for i in indices])
    return images, labels


def class_figures(probs):
    """probs [N, 10] -> dict(hist [10] shares of argmax, covered, sure, entropy bits, conf); see the module doc."""
    top, pred = probs.max(1)
    hist = torch.bincount(pred, minlength=NUM_CLASSES).double() / len(probs)
    sure = top >= SURE_PROB
    sure_hist = torch.bincount(pred[sure], minlength=NUM_CLASSES).double() / len(probs)
    nz = hist[hist > 0]
    return dict(hist=hist, covered=int((sure_hist >= COVER_SHARE).sum()), sure=float(sure.double().mean()),
                entropy=float(-(nz * nz.log2()).sum()), conf=float(top.mean()))


def format_figures(name, fig, agree=None):
    hist = ' '.join(f'{100 * v:4.1f}' for v in fig['hist'].tolist())
    line = (f'{name:<44s} covered {fig["covered"]:2d}  sure {fig["sure"]:.2f}  H {fig["entropy"]:.2f}  '
            f'conf {fig["conf"]:.2f}  hist [{hist}]')
    return line + (f'  agree {agree:.2f}' if agree is not None else '')


@click.group()
def cli():
    pass


@cli.command()
@click.option('--data', help='Labelled MNIST zip (dataset_tool.py)', required=True)
@click.option('--classifier', help='Where to write the classifier weights', required=True)
@click.option('--epochs', type=int, default=2, show_default=True)
@click.option('--holdout', help='Images held out for the accuracy check', type=int, default=5000, show_default=True)
@click.option('--threads', type=int, default=1, show_default=True)
@click.option('--seed', type=int, default=0, show_default=True)
def train(data, classifier, epochs, holdout, threads, seed):
    """Train the digit classifier on --data and report its held-out accuracy."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, labels = load_labelled(data)
    perm = torch.randperm(len(images))
    val, tr = perm[:holdout], perm[holdout:]
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        for idx in tr[torch.randperm(len(tr))].split(128):
            x = images[idx]
            x = torch.roll(x, shifts=tuple(torch.randint(-2, 3, [2]).tolist()), dims=(2, 3))  # small shifts
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(images[i]).argmax(1) for i in val.split(1000)])
        accuracy = (pred == labels[val]).float().mean()
        print(f'epoch {epoch + 1}  {time.time() - start:5.0f} s  held-out accuracy {accuracy:.4f}', flush=True)
    torch.save(model.state_dict(), classifier)
    print(f'wrote {classifier}')


def _expand(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            snaps = sorted(glob.glob(os.path.join(p, 'network-snapshot-*.pkl')))
            if not snaps:
                raise click.ClickException(f'{p}: no network-snapshot-*.pkl in this folder')
            out += snaps
        else:
            out.append(p)
    return out


@cli.command()
@click.argument('networks', nargs=-1, required=True)
@click.option('--data', help='Labelled MNIST zip: reals for the reference line', required=True)
@click.option('--classifier', help='Classifier weights written by `train`', required=True)
@click.option('--num', help='Fakes per network', type=int, default=1000, show_default=True)
@click.option('--seed', type=int, default=0, show_default=True)
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='random', show_default=True)
@click.option('--threads', type=int, default=1, show_default=True)
def score(networks, data, classifier, num, seed, noise_mode, threads):
    """Classify --num fakes of each G_ema in NETWORKS (pickles or run folders)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # the noise inputs draw from the global generator
    model = load_classifier(classifier)
    images, _labels = load_labelled(data, num, seed)
    with torch.no_grad():
        real_probs = torch.cat([model(x).softmax(1) for x in images.split(500)])
        print(format_figures(f'reals ({len(images)})', class_figures(real_probs)))
        for path in _expand(networks):
            with open(path, 'rb') as f:
                G = legacy.load_network_pkl(f)['G_ema'].eval()
            gen = torch.Generator().manual_seed(seed)
            probs, agree = [], []
            for start in range(0, num, 100):
                n = min(100, num - start)
                z = torch.randn([n, G.z_dim], generator=gen)
                c = torch.zeros([n, G.c_dim])
                if G.c_dim:
                    cls = torch.randint(G.c_dim, [n], generator=gen)
                    c[torch.arange(n), cls] = 1
                p = classify_fakes(model, G, z, c, noise_mode=noise_mode, force_fp32=True)
                probs.append(p)
                if G.c_dim:
                    agree.append((p.argmax(1) == cls).float())
            m = re.search(r'(\d+)\.pkl$', path)
            name = os.path.basename(os.path.dirname(path))[:30] + (f' @{int(m.group(1))} kimg' if m else '')
            print(format_figures(name, class_figures(torch.cat(probs)),
                                 float(torch.cat(agree).mean()) if agree else None), flush=True)


if __name__ == '__main__':
    cli()
