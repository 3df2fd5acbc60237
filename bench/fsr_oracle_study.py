"""The sparse-coding oracle of the synthetic FSR experiment at full size (FSR.md section 4b); prints figures.

For every teacher seed: the teacher's design numbers (atom coherence, measured per-level densities, image
statistics, image generation time), then for every oracle seed the recovery of the teacher's 12 atoms by
convolutional dictionary learning from random atoms (recovered at cosine >= 0.9, mean / min matched cosine,
restarts, time, recovery along the run) beside the random-init floor. The requirement checked at the end: at
least 90% of the atoms recovered at cosine 0.9 (reported per run, and how many runs pass).

    python bench/fsr_oracle_study.py                                   # 3 teachers x 2 oracle seeds, full size
    python bench/fsr_oracle_study.py --teachers=0 --oracle-seeds=0,1,2,3 --steps=600 --threads=1
"""
import os
import sys
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fsr_plugin.oracle import run_oracle  # noqa: E402
from fsr_plugin.synthetic import FSRTeacher, atom_coherence  # noqa: E402


def _int_list(text):
    return [int(v) for v in str(text).split(',') if v.strip()]


def describe_teacher(teacher, num_images):
    """Print design numbers of `teacher` and time the generation of `num_images` images."""
    info = teacher.describe()
    print(f'  resolutions {info["resolutions"]}, widths {list(info["widths"].values())}, '
          f'atom coherence {atom_coherence(teacher.atoms):.3f}, image gain {info["image_gain"]:.3f}')
    dens = teacher.measured_density(num_images=256)
    for r, d in dens.items():
        extra = f', sites per 3x3 {d["sites_per_3x3"]:.3f}' if 'sites_per_3x3' in d else ''
        print(f'  level {r:3d}: active {d["active_per_position"]:.3f} of {d["channels"]} channels per position '
              f'(fraction {d["active_fraction"]:.4f}, target {d["target"]:.4f}){extra}; '
              f'read-out R^2 {teacher.level_fit_r2[r]:.3f}')
    start = time.time()
    image = teacher.sample(num_images, seed=1000, details=False)['image']
    seconds = time.time() - start
    print(f'  {num_images} images in {seconds:.2f} s; range [{image.min():.2f}, {image.max():.2f}], '
          f'std {image.std():.3f}, |x| > 1: {100 * (image.abs() > 1).float().mean():.3f}%')


@click.command()
@click.option('--res', type=int, default=32, show_default=True, help='Teacher resolution.')
@click.option('--teachers', default='0,1,2', show_default=True, help='Teacher seeds (comma list).')
@click.option('--oracle-seeds', default='0,1', show_default=True, help='Oracle seeds (comma list).')
@click.option('--jitter', type=float, default=0.5, show_default=True, help='Teacher top-level jitter.')
@click.option('--num-images', type=int, default=2000, show_default=True, help='Training images for the oracle.')
@click.option('--atoms', type=int, default=20, show_default=True, help='Learned atoms.')
@click.option('--steps', type=int, default=1200, show_default=True, help='Dictionary-learning steps.')
@click.option('--lam', type=float, default=0.1, show_default=True, help='L1 weight of the codes.')
@click.option('--threshold', type=float, default=0.9, show_default=True, help='Recovery cosine threshold.')
@click.option('--threads', type=int, default=0, show_default=True, help='torch threads (0 = leave the default).')
def main(res, teachers, oracle_seeds, jitter, num_images, atoms, steps, lam, threshold, threads):
    if threads:
        torch.set_num_threads(threads)
    print(f'FSR oracle study: res {res}, jitter {jitter}, {num_images} images, {atoms} atoms, {steps} steps, '
          f'lam {lam}, threshold {threshold}, torch threads {torch.get_num_threads()}')
    rows = []
    for tseed in _int_list(teachers):
        start = time.time()
        teacher = FSRTeacher(resolution=res, seed=tseed, jitter=jitter)
        print(f'teacher seed {tseed} (built in {time.time() - start:.2f} s)')
        describe_teacher(teacher, num_images)
        for oseed in _int_list(oracle_seeds):
            result = run_oracle(teacher, num_images=num_images, num_atoms=atoms, steps=steps, lam=lam,
                                seed=oseed, threshold=threshold, track_every=max(steps // 12, 1))
            rec, floor = result['recovery'], result['floor']
            k = len(rec['cos'])
            track = ' '.join(f'{s}:{n}' for s, n, _c in result['track'])
            print(f'  oracle seed {oseed}: recovered {rec["recovered"]}/{k} at cos >= {threshold} '
                  f'(mean matched cos {rec["mean_matched_cos"]:.3f}, min {rec["cos"].min():.3f}); '
                  f'random floor {floor["recovered"]:.1f}/{k}, mean {floor["mean_matched_cos"]:.3f}; '
                  f'restarts {result["restarts"]}; {result["seconds"]:.1f} s')
            print(f'    recovered along the run (step:count): {track}')
            rows.append((tseed, oseed, rec['fraction'], rec['mean_matched_cos']))
    fractions = np.array([r[2] for r in rows])
    print(f'summary: {len(rows)} runs, recovered fraction mean {fractions.mean():.3f} (min {fractions.min():.3f}), '
          f'mean matched cos {np.mean([r[3] for r in rows]):.3f}; runs with >= 90% recovered: '
          f'{int(np.sum(fractions >= 0.9))}/{len(rows)}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
