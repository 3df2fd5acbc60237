"""What the atoms that an FSR snapshot paints with are, and how much of its top-level covariance gap they explain.

For a snapshot trained on fsr-synthetic data with a top head (`--fsr-head-kernel=3`), it prints one line per used
channel (at least --min-usage of what the top level paints, `snapshot_eval.top_channel_usage`, G_ema with random
noise): its share, the nearest teacher atom, the nearest one-pixel shift of a teacher atom and the nearest
non-negative blend of two teacher atoms, with their cosines (`fsr_plugin.atom_anatomy`), and which teacher atoms no
used channel reaches at cosine 0.9.

Then a counterfactual: the teacher draws new images with its own codes, but paints every teacher atom with the used
learned atom that the Hungarian matching pairs it with (unit norm, as the teacher's atoms). The 3x3 patch-covariance
gap of those images against the teacher's own images, over its floor (two disjoint teacher samples), is the part of
the top level's covariance gap that the atoms alone would cause if the codes were perfect.

And the converse (`fsr_plugin.code_anatomy`): the generator's own top-level codes (the winners of the head's
selection, each times its atom's norm), every channel mapped to its nearest teacher atom, painted with the teacher's
atoms: the part of the gap that the codes alone cause; beside the statistics of those codes and of the teacher's
(painted sites per 3x3 neighbourhood, isolated sites, amplitude quantiles, and the total-variation distance between
the two atom-frequency distributions); and the same gap with the amplitude distributions swapped in rank order
(the generator's codes with the teacher's amplitudes; the teacher's codes with the generator's): how much of the gap
is the amplitudes.

    python bench/fsr_used_atoms.py runs/.../network-snapshot-000040.pkl
"""
import os
import sys

import click
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402
from fsr_plugin import atom_anatomy, code_anatomy, diagnostics, matching  # noqa: E402
from fsr_plugin import snapshot_eval as se  # noqa: E402
from fsr_plugin.synthetic import _PATTERN_NAMES  # noqa: E402


def atom_names(num):
    """Names of the synthetic teacher's atoms: pattern and colour direction, e.g. 'flat0', 'vstep2'."""
    short = {'flat': 'flat', 'vertical-step': 'vstep', 'horizontal-step': 'hstep'}
    return [f'{short[_PATTERN_NAMES[k % 3]]}{k // 3}' for k in range(num)]


def painted_with(teacher, atoms, codes):
    """Teacher codes [N, K, R, R] painted with `atoms` [K, 3, 3, 3] (None: the teacher's own) -> images [N, 3, R, R]
    (float64), as the teacher paints its top level."""
    atoms = teacher.atoms.double() if atoms is None else torch.as_tensor(atoms, dtype=torch.float64)
    return F.conv_transpose2d(codes.double(), atoms, padding=1) * teacher.image_gain


def teacher_streams(teacher, num):
    """The teacher's samples that both counterfactuals compare with: (reference images of stream 0, floor images of
    stream 1, both [num, 3, R, R] float64; top codes of stream 2 [num, K, R, R] float64, the fakes' codes)."""
    ref, other, fake = (teacher.sample(num, seed=s)['top_codes'].double() for s in (0, 1, 2))
    return painted_with(teacher, None, ref), painted_with(teacher, None, other), fake


def counterfactual_gap(teacher, learned_atoms, num=500, streams=None):
    """Covariance gap ratio (gap_2 / floor_2 at the top level) of the teacher painted with `learned_atoms` [K, 3, 3, 3]
    (row k replaces teacher atom k), against its own images; and the same for the teacher itself (about 1). Both
    fakes use the codes of image stream 2, the reference stream 0 and the floor stream 1 (`teacher_streams`, or
    `streams` as it returns them)."""
    ref, other, fake = streams if streams is not None else teacher_streams(teacher, num)
    own = diagnostics.moment_gap_with_floor(ref, other, painted_with(teacher, None, fake))
    swapped = diagnostics.moment_gap_with_floor(ref, other, painted_with(teacher, learned_atoms, fake))
    return swapped['ratio_2'], own['ratio_2']


def code_counterfactual(teacher, snap, learned, num=500, seed=0, streams=None):
    """The snapshot's top-level codes for `num` samples mapped to teacher atoms (each channel to its nearest atom by
    signed cosine) and painted with the teacher's atoms. Returns (dict of gap_2 / floor against the teacher's images
    (`teacher_streams`, or `streams` as it returns them): 'codes' those codes, 'teacher_amplitudes' those codes
    with the teacher's amplitude distribution, 'generator_amplitudes' the teacher's codes (stream 2) with the
    generator's; statistics of the generator's codes; statistics of the teacher's)."""
    R = int(snap.G.img_resolution)
    head = snap.heads.head(R)
    feats = se.top_features(snap, num, seed=seed)
    gen = torch.Generator(device=feats.device).manual_seed(int(seed) + 1)
    codes = code_anatomy.painted_codes(feats.cpu(), learned, getattr(head, 'wta', 0), getattr(head, 'wta_jitter', 0.0),
                                       gen, min_value=getattr(head, 'wta_min', 0.0))
    nearest = matching.cosine_matrix(learned, teacher.atoms).argmax(axis=1)
    mapped = code_anatomy.as_teacher_codes(codes, nearest, teacher.top_atoms)
    mapped = mapped / teacher.image_gain                    # the teacher paints code x unit atom x image_gain
    ref, other, own = streams if streams is not None else teacher_streams(teacher, num)

    def ratio(codes):
        return diagnostics.moment_gap_with_floor(ref, other, painted_with(teacher, None, codes))['ratio_2']
    swapped = dict(codes=ratio(mapped), teacher_amplitudes=ratio(code_anatomy.with_amplitudes(mapped, own)),
                   generator_amplitudes=ratio(code_anatomy.with_amplitudes(own, mapped)))
    return (swapped, code_anatomy.code_statistics(mapped, teacher.top_atoms),
            code_anatomy.code_statistics(own, teacher.top_atoms))


@click.command()
@click.argument('snapshot')
@click.option('--num', help='Generated images for the channel usage', type=click.IntRange(min=1), default=256,
              show_default=True)
@click.option('--min-usage', help='A channel is used from this share of the top level on', type=float, default=0.01,
              show_default=True)
@click.option('--images', help='Teacher images per sample in the counterfactual', type=click.IntRange(min=10),
              default=500, show_default=True)
def main(snapshot, num, min_usage, images):
    """Print the used atoms of SNAPSHOT in terms of the synthetic teacher's atoms."""
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    try:
        snap = se.Snapshot(snapshot)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    R = int(snap.G.img_resolution)
    learned = snap.head_atoms(R)
    if learned is None or learned.shape[-1] != 3:
        raise click.UsageError(f'{snapshot}: needs a 3x3 top head (--fsr-head-kernel=3)')
    kwargs = snap.training_set_kwargs or {}
    teacher = getattr(dnnlib.util.construct_class_by_name(**dict(kwargs)), 'teacher', None) if kwargs else None
    if teacher is None:
        raise click.UsageError(f'{snapshot}: not trained on fsr-synthetic data (no teacher to compare with)')
    names = atom_names(teacher.top_atoms)
    usage = se.top_channel_usage(snap, num, seed=0).numpy()
    rows = atom_anatomy.explain_atoms(learned, teacher.atoms, usage=usage, min_usage=min_usage)
    print(f'{snapshot}: {len(rows)} used channels (>= {min_usage:.0%} of the top level)')
    print('channel  share  nearest atom     nearest shift          nearest blend of two                 kind')
    for row in rows:
        k, c = row['nearest']
        s_k, dy, dx, s_c = row['shifted']
        b_c, i, j, w_i, w_j = row['blend']
        blend = f'{w_i:.2f} {names[i]} + {w_j:.2f} {names[j]}' if i >= 0 else '-'
        print(f'{row["index"]:7d} {row["usage"]:6.1%}  {names[k]:7s} {c:.3f}  {names[s_k]:6s} ({dy:+d},{dx:+d})'
              f' {s_c:.3f}   {blend:28s} {b_c:.3f}   {row["kind"]}')
    covered = sorted({r['nearest'][0] for r in rows if r['nearest'][1] >= 0.9})
    print('teacher atoms reached at cos >= 0.9:', ' '.join(names[k] for k in covered) or '-')
    print('missed:', ' '.join(names[k] for k in range(len(names)) if k not in covered) or '-')
    used = np.array([r['index'] for r in rows], dtype=np.int64)
    streams = teacher_streams(teacher, images)
    if len(used):
        match = matching.atom_recovery(teacher.atoms, learned[torch.from_numpy(used)])
        swap = np.zeros(tuple(teacher.atoms.shape))  # a teacher atom with no used partner is not painted
        for k, j in enumerate(match['partner']):
            if j >= 0:
                a = learned[used[j]].numpy()
                swap[k] = a / max(np.linalg.norm(a), 1e-12)
        ratio, own = counterfactual_gap(teacher, swap, streams=streams)
        print(f'teacher painted with the matched used atoms: top-level gap_2 / floor {ratio:.2f} '
              f'(the teacher itself: {own:.2f}; {images} images per sample)')
    ratios, ours, theirs = code_counterfactual(teacher, snap, learned, num=images, streams=streams)
    print(f'the generator\'s codes painted with the teacher\'s atoms: top-level gap_2 / floor {ratios["codes"]:.2f}; '
          f'with the teacher\'s amplitudes {ratios["teacher_amplitudes"]:.2f}; the teacher\'s codes with the '
          f'generator\'s amplitudes {ratios["generator_amplitudes"]:.2f}')
    print('codes      sites/3x3  isolated  codes/site  amp p10   p50    p90    mean')
    for name, st in (('teacher', theirs), ('generator', ours)):
        print(f'{name:10s} {st["sites_per_3x3"]:8.3f}  {st["isolated"]:7.3f}  {st["codes_per_site"]:9.3f}  '
              f'{st["amp_p10"]:6.3f} {st["amp_p50"]:6.3f} {st["amp_p90"]:6.3f} {st["amp_mean"]:6.3f}')
    tv = 0.5 * float((ours['share'] - theirs['share']).abs().sum())
    print('atom shares (teacher / generator): ' + ' '.join(
        f'{n} {a:.2f}/{b:.2f}' for n, a, b in zip(names, theirs['share'].tolist(), ours['share'].tolist())) +
        f'; total-variation distance {tv:.3f}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
