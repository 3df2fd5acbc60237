"""Where an FSR snapshot's patch-covariance gap comes from, per level; prints figures.

For every pyramid level of the snapshot's heads (G_ema with the EMA heads, and with --raw also the training copies),
over the 3x3 patches of N generated and N real images: the covariance gap gap_2 = |C_real - C_fake|_F / |C_real|_F
beside its floor (two disjoint real samples), the trace ratio trace(C_fake) / trace(C_real) (overall contrast), the
gap after the fakes' covariance is rescaled to the reals' trace (shape alone), and the top eigenvalues of both
covariances (a smooth sample puts its variance in a few directions; a white one spreads it evenly).

    python bench/fsr_patch_covariance.py runs/.../network-snapshot-000040.pkl --num=300 --raw=1
"""
import os
import sys

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import legacy  # noqa: E402
from fsr_plugin import diagnostics  # noqa: E402
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


def _print(tag, reports):
    for r, rep in reports.items():
        print(f'{tag:5s} r={r:3d}  gap_2 {rep["gap_2"]:.3f} (floor {rep["floor_2"]:.4f})  trace fake/real '
              f'{rep["trace_ratio"]:.3f}  gap_2 at equal trace {rep["gap_2_shape"]:.3f}  top eigenvalues real '
              f'{np.array2string(rep["eig_real"], precision=3)} fake {np.array2string(rep["eig_fake"], precision=3)}')


@click.command()
@click.argument('snapshot')
@click.option('--num', help='Images per sample', type=click.IntRange(min=2), default=300, show_default=True)
@click.option('--raw', help='Also the training copies of G and the heads', type=bool, default=False)
@click.option('--threads', type=click.IntRange(min=1), default=1, show_default=True)
def main(snapshot, num, raw, threads):
    torch.set_num_threads(threads)
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
        fake = se.pyramid_images(snap, num, seed=0)
        _print(tag, {r: covariance_report(real_a[r], real_b[r], fake[r]) for r in sorted(fake) if r >= 3})


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
