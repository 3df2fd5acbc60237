"""Where an FSR snapshot's patch-covariance gap comes from, per level; prints figures.

For every pyramid level of the snapshot's heads (G_ema with the EMA heads, and with --raw also the training copies),
over the 3x3 patches of N generated and N real images: the covariance gap gap_2 = |C_real - C_fake|_F / |C_real|_F
beside its floor (two disjoint real samples), the trace ratio trace(C_fake) / trace(C_real) (overall contrast), the
gap after the fakes' covariance is rescaled to the reals' trace (shape alone), and the top eigenvalues of both
covariances (a smooth sample puts its variance in a few directions; a white one spreads it evenly).

--batch-terms B prints, per level, what the `--fsr-moments` covariance term measures on batches of B images as in
training: the plain term, the split-half term (`--fsr-moments-unbiased`, an estimate of the population gap^2), their
difference (the variance of the batch estimates, which the plain loss also minimises), and the plain term between two
real batches (that variance for reals alone). Means over the disjoint batches of the N images.

G's noise inputs are drawn at random (`--noise-mode`, default random: as G samples and as `fsr_moment_gap` measures).

For a top head with winner-take-all (`--fsr-top-wta`), it also prints the head's site density: sites per 3x3
neighbourhood, as `FSRTeacher.measured_density` counts them, beside the teacher's when the data is fsr-synthetic.

--fit-steps N asks whether the snapshot's architecture can reach the reals' patch moments at --fit-levels: it trains
the synthesis network and heads of G_ema on the `--fsr-moments` loss alone (Adam, lr 2e-3, batches of 32 from 2048
real images), optionally plus --fit-adv times the non-saturating loss against the snapshot's (frozen) D, and prints
the loss terms every 50 steps.

    python bench/fsr_patch_covariance.py runs/.../network-snapshot-000040.pkl --num=300 --raw=1
    python bench/fsr_patch_covariance.py runs/.../network-snapshot-000040.pkl --num=640 --batch-terms=32
    python bench/fsr_patch_covariance.py runs/.../network-snapshot-000012.pkl --fit-steps=200 --fit-levels=16
"""
import os
import sys

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
import legacy  # noqa: E402
from fsr_plugin import diagnostics  # noqa: E402
from fsr_plugin import patch_moment_loss  # noqa: E402
from fsr_plugin.wta import wta_mask  # noqa: E402
from fsr_plugin import snapshot_eval as se  # noqa: E402


def covariance_report(real, real_b, fake, q=3, top=5):
    """real, real_b (disjoint, as large as fake), fake: images [N, C, r, r] -> dict of the figures above."""
    mr = diagnostics.PatchMoments(q).update(real)
    _, c_real = mr.mean_cov()
    _, c_fake = diagnostics.PatchMoments(q).update(fake).mean_cov()
    _, c_b = diagnostics.PatchMoments(q).update(real_b).mean_cov()
    norm = np.linalg.norm(c_real)
    scale = np.trace(c_real) / max(np.trace(c_fake), 1e-30)
    return dict(gap_2=np.linalg.norm(c_real - c_fake) / norm, floor_2=np.linalg.norm(c_real - c_b) / norm,
                trace_ratio=1 / scale, gap_2_shape=np.linalg.norm(c_real - scale * c_fake) / norm,
                eig_real=np.linalg.eigvalsh(c_real)[::-1][:top], eig_fake=np.linalg.eigvalsh(c_fake)[::-1][:top])


def batch_terms(real, real_b, fake, batch=32, q=3):
    """real, real_b, fake: images [N, C, r, r] -> dict: the mean over the N // batch disjoint batches of the
    `--fsr-moments` covariance term (plain, split-half) between fake and real batches, and of the plain term
    between batches of real and real_b."""
    plain, split, reals = [], [], []
    for b in range(fake.shape[0] // batch):
        sel = slice(b * batch, (b + 1) * batch)
        f, x, y = fake[sel].double(), real[sel].double(), real_b[sel].double()
        r = f.shape[-1]
        plain.append(float(patch_moment_loss.level_moment_losses({r: f}, {r: x}, {r: 1.0}, patch_size=q)[r][2]))
        split.append(float(patch_moment_loss.level_moment_losses({r: f}, {r: x}, {r: 1.0}, patch_size=q,
                                                                 unbiased=True)[r][2]))
        reals.append(float(patch_moment_loss.level_moment_losses({r: y}, {r: x}, {r: 1.0}, patch_size=q)[r][2]))
    if not plain:
        raise click.UsageError(f'--batch-terms {batch}: needs --num >= {batch}')
    split = np.array(split)
    return dict(plain=float(np.mean(plain)), split=float(split.mean()),
                split_se=float(split.std() / len(split) ** 0.5), variance=float(np.mean(plain) - split.mean()),
                reals=float(np.mean(reals)), batches=len(plain))


def _print(tag, reports):
    for r, rep in reports.items():
        print(f'{tag:5s} r={r:3d}  gap_2 {rep["gap_2"]:.3f} (floor {rep["floor_2"]:.4f})  trace fake/real '
              f'{rep["trace_ratio"]:.3f}  gap_2 at equal trace {rep["gap_2_shape"]:.3f}  top eigenvalues real '
              f'{np.array2string(rep["eig_real"], precision=3)} fake {np.array2string(rep["eig_fake"], precision=3)}')


def top_sites_per_3x3(snap, num, seed=0):
    """Mean number of winner-take-all sites per 3x3 neighbourhood (9 x the fraction of sites) of the top head of
    snapshot `snap` (snapshot_eval.Snapshot) over `num` samples (z seed `seed`, constant noise, the head's jitter
    drawn from a generator seeded with seed + 1); None when the top head has no winner-take-all."""
    head = snap.heads.head(snap.heads.resolutions[-1])
    if not getattr(head, 'wta', 0):
        return None
    G = snap.G
    z = torch.randn([num, G.z_dim], generator=torch.Generator().manual_seed(seed))
    ws = G.mapping(z, torch.zeros([num, G.c_dim]))
    _, feats = G.synthesis(ws, return_features=True, noise_mode='const', force_fp32=True)
    mask = wta_mask(feats[snap.heads.resolutions[-1]].float(), head.wta, getattr(head, 'wta_jitter', 0.0),
                    torch.Generator().manual_seed(seed + 1))
    return 9 * float(mask.any(dim=1).double().mean())


def teacher_sites_per_3x3(dataset_kwargs):
    """The synthetic teacher's sites per 3x3 neighbourhood, or None when the data is not fsr-synthetic."""
    dataset = dnnlib.util.construct_class_by_name(**dict(dataset_kwargs))
    teacher = getattr(dataset, 'teacher', None)
    if teacher is None:
        return None
    return teacher.measured_density()[teacher.resolution]['sites_per_3x3']


def fit_moments(snapshot, levels, steps, adv=0.0, lr=2e-3, batch=32, num_real=2048, seed=0):
    """Train G_ema's synthesis network and the EMA heads of `snapshot` on the patch-moment loss at `levels` (plus
    adv x softplus(-D(G image)) with the snapshot's D frozen). Returns [(step, {r: (mean term, cov term)})]."""
    data = legacy.load_network(snapshot)
    heads = data.get('extra_modules_ema', {}).get('fsr.heads')
    if heads is None:
        raise click.UsageError(f'{snapshot} has no FSR heads (extra_modules_ema["fsr.heads"])')
    G, D = data['G_ema'].train(), data['D'].eval().requires_grad_(False)
    heads.train()
    opts = se.read_training_options(os.path.dirname(snapshot))
    real = se.real_pyramid_images(opts['training_set_kwargs'], heads.resolutions, num_real, seed=5)
    G.requires_grad_(False)
    params = list(G.synthesis.parameters()) + list(heads.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99))
    gen = torch.Generator().manual_seed(seed)
    c = torch.zeros([batch, G.c_dim])
    history = []
    for step in range(steps + 1):
        z = torch.randn([batch, G.z_dim], generator=gen)
        idx = torch.randint(0, num_real, [batch], generator=gen)
        img, feats = G.synthesis(G.mapping(z, c), return_features=True, force_fp32=True)
        fake = heads({r: f.float() for r, f in feats.items()}, img=img)
        out = patch_moment_loss.level_moment_losses(fake, {r: x[idx] for r, x in real.items()},
                                                    {r: 1.0 for r in levels})
        loss = sum(v[0] for v in out.values())
        if adv:
            loss = loss + adv * torch.nn.functional.softplus(-D(img, c)).mean()
        if step % 50 == 0:
            history.append((step, {r: (float(v[1]), float(v[2])) for r, v in out.items()}))
            print(f'step {step:4d}  ' + '  '.join(f'r{r}: mean {m:.3f} cov {cv:.3f}'
                                                  for r, (m, cv) in history[-1][1].items()), flush=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return history


@click.command()
@click.argument('snapshot')
@click.option('--num', help='Images per sample', type=click.IntRange(min=2), default=300, show_default=True)
@click.option('--raw', help='Also the training copies of G and the heads', type=bool, default=False)
@click.option('--threads', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--fit-steps', help='Instead: fit G_ema and the heads to the patch moments for this many steps',
              type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--fit-levels', help='Levels of the fit (comma list)', default='16', show_default=True)
@click.option('--fit-adv', help='Weight of the adversarial term against the frozen D in the fit', type=float,
              default=0.0, show_default=True)
@click.option('--noise-mode', help='G\'s noise inputs', type=click.Choice(['random', 'const']), default='random',
              show_default=True)
@click.option('--batch-terms', 'terms_batch',
              help='Also the --fsr-moments covariance terms on batches of this many images (0 = off)',
              type=click.IntRange(min=0), default=0, show_default=True)
def main(snapshot, num, raw, threads, fit_steps, fit_levels, fit_adv, noise_mode, terms_batch):
    torch.set_num_threads(threads)
    torch.manual_seed(0)  # the random noise inputs
    if fit_steps:
        fit_moments(snapshot, [int(r) for r in fit_levels.split(',')], fit_steps, adv=fit_adv)
        return
    snap = se.Snapshot(snapshot)
    opts = se.read_training_options(os.path.dirname(snapshot))
    real = se.real_pyramid_images(opts['training_set_kwargs'], snap.resolutions, 2 * num, seed=1)
    real_a = {r: x[:num] for r, x in real.items()}
    real_b = {r: x[num:] for r, x in real.items()}
    models = [('EMA', None)]
    if raw:
        data = legacy.load_network(snapshot)
        heads = data.get('extra_modules', {}).get('fsr.heads')
        if heads is None:
            raise click.UsageError(f'{snapshot} has no FSR heads (extra_modules["fsr.heads"])')
        models.append(('G', (data['G'].eval().requires_grad_(False), heads.eval())))
    for tag, parts in models:
        if parts is not None:
            snap.G, snap.heads = parts
        with torch.no_grad():
            fake = se.pyramid_images(snap, num, seed=0, noise_mode=noise_mode)
        _print(tag, {r: covariance_report(real_a[r], real_b[r], fake[r]) for r in sorted(fake) if r >= 3})
        for r in (sorted(fake) if terms_batch else []):
            if r < 3:
                continue
            t = batch_terms(real_a[r], real_b[r], fake[r], batch=terms_batch)
            print(f'{tag:5s} r={r:3d}  --fsr-moments covariance term on {t["batches"]} batches of {terms_batch}: plain '
                  f'{t["plain"]:.4f}  split-half {t["split"]:.4f} (se {t["split_se"]:.4f})  variance part '
                  f'{t["variance"]:.4f}  two real batches {t["reals"]:.4f}')
        with torch.no_grad():
            sites = top_sites_per_3x3(snap, min(num, 64))
        if sites is not None:
            teacher = teacher_sites_per_3x3(opts['training_set_kwargs'])
            print(f'{tag:5s} top head: {sites:.2f} winner-take-all sites per 3x3 neighbourhood' +
                  (f' (teacher: {teacher:.2f})' if teacher is not None else ''))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
