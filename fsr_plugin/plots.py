"""PNG figures of the FSR diagnostics (FSR.md section 4; Figs. 5, 6, 7, 10 analogues).

* `plot_sparsity`: active channel fractions (and Hoyer sparsity) per resolution, as violins with the means marked.
* `plot_moment_gaps`: a run's metric-fsr_moment_gap.jsonl as gap vs kimg per level, the noise floor dashed.
* `plot_matched_filters`: matched D-filter / G-atom pairs side by side, sorted by cosine.
* `save_pyramid_grid`: samples at every resolution, one row per resolution, nearest-upscaled to the top one
  (written with Pillow, pixel exact).

matplotlib (>= 3.5) is imported lazily, figures are drawn on the Agg canvas without pyplot (no global backend
state). Every function returns the path it wrote.
"""

import json
import os
import re

import numpy as np
import torch
from PIL import Image


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, format='png')
    return path


def _values(entry, key):
    """Per-patch values from a layer_sparsity result dict, or the array itself."""
    if isinstance(entry, dict):
        if key not in entry:
            raise ValueError(f'plot_sparsity: result dict has no {key!r} (expected a diagnostics.layer_sparsity '
                             f'result)')
        entry = entry[key]
    v = np.asarray(torch.as_tensor(entry).detach().cpu().numpy() if isinstance(entry, torch.Tensor) else entry,
                   dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def plot_sparsity(sparsity_by_res, path, title='Hidden-layer sparsity'):
    """Violins of the per-position (per-patch) active channel fractions and Hoyer sparsity per resolution.

    sparsity_by_res: {resolution: diagnostics.layer_sparsity result} or {resolution: 1-D array of active fractions}
    (then only the active-fraction panel is drawn). Means are marked with a black dot and printed above.
    """
    if not sparsity_by_res:
        raise ValueError('plot_sparsity: no layers given')
    res = sorted(sparsity_by_res)
    with_hoyer = all(isinstance(sparsity_by_res[r], dict) for r in res)
    panels = [('active_fraction', 'active channel fraction')] + ([('hoyer', 'Hoyer sparsity')] if with_hoyer else [])
    fig = _figure(max(4.0, 1.2 * len(res) + 2), 3.2 * len(panels))
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        data = [_values(sparsity_by_res[r], key) for r in res]
        pos = np.arange(len(res))
        drawable = [j for j, d in enumerate(data) if d.size > 1 and np.ptp(d) > 0]
        if drawable:
            ax.violinplot([data[j] for j in drawable], positions=pos[drawable], showextrema=False)
        means = [d.mean() if d.size else np.nan for d in data]
        ax.plot(pos, means, 'ko', markersize=4, label='mean')
        for x, m in zip(pos, means):
            if np.isfinite(m):
                ax.annotate(f'{m:.2f}', (x, m), textcoords='offset points', xytext=(6, 4), fontsize=8)
        ax.set_xticks(pos)
        ax.set_xticklabels([str(r) for r in res])
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(label)
        ax.grid(axis='y', alpha=0.3)
        if i == 0:
            ax.set_title(title)
            ax.legend(loc='upper right', fontsize=8)
    ax.set_xlabel('resolution')
    fig.tight_layout()
    return _save(fig, path)


_SNAPSHOT_KIMG = re.compile(r'network-snapshot-(\d+)\.pkl$')
_GAP_KEY = re.compile(r'^fsr_moment_(gap|floor)([12])_res(\d+)$')


def read_moment_gaps(jsonl_path):
    """Parse metric-fsr_moment_gap.jsonl -> (kimg [T] float array, {(kind, k, r): [T] array}) with kind 'gap' or
    'floor', k in (1, 2), r the resolution. kimg comes from the snapshot name (network-snapshot-<kimg>.pkl), else the
    line index. Lines of other metrics are skipped; missing values are NaN."""
    records = []
    with open(jsonl_path, 'rt') as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{jsonl_path}:{line_no}: not a JSON line ({e.msg})') from None
            if isinstance(rec, dict) and isinstance(rec.get('results'), dict):
                records.append(rec)
    if not records:
        raise ValueError(f'{jsonl_path}: no metric records')
    kimg = []
    for i, rec in enumerate(records):
        m = _SNAPSHOT_KIMG.search(str(rec.get('snapshot_pkl') or ''))
        kimg.append(float(m.group(1)) if m else float(i))
    series = {}
    for i, rec in enumerate(records):
        for key, value in rec['results'].items():
            m = _GAP_KEY.match(key)
            if m:
                arr = series.setdefault((m.group(1), int(m.group(2)), int(m.group(3))), np.full(len(records), np.nan))
                arr[i] = float(value)
    if not series:
        raise ValueError(f'{jsonl_path}: no fsr_moment_gap results (keys fsr_moment_gap<k>_res<r>)')
    return np.asarray(kimg), series


def plot_moment_gaps(jsonl_path, path, title='Patch-moment gaps'):
    """Gap vs kimg per level for the mean (gap_1) and covariance (gap_2), log scale; the noise floor of each level
    is the dashed line of the same colour. Reads a run's metric-fsr_moment_gap.jsonl."""
    kimg, series = read_moment_gaps(jsonl_path)
    order = np.argsort(kimg, kind='stable')
    res = sorted({r for (_, _, r) in series})
    fig = _figure(10, 4)
    colours = [f'C{i % 10}' for i in range(len(res))]
    for k in (1, 2):
        ax = fig.add_subplot(1, 2, k)
        for r, colour in zip(res, colours):
            for kind, style in (('gap', '-o'), ('floor', '--')):
                y = series.get((kind, k, r))
                if y is None:
                    continue
                y = y[order]
                label = f'{r}x{r}' if kind == 'gap' else None
                ax.plot(kimg[order], np.where(y > 0, y, np.nan), style, color=colour, markersize=3, label=label)
        ax.set_yscale('log')
        ax.set_xlabel('kimg')
        ax.set_ylabel(f'gap_{k} ({"mean" if k == 1 else "covariance"})')
        ax.grid(alpha=0.3, which='both')
        ax.set_title(f'{title}: {"|dm|/|m|" if k == 1 else "|dC|_F/|C|_F"} (dashed: floor)', fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _filter_to_rgb(f):
    """[C, k, k] filter -> [k, k, 3] image in [0, 1] with 0 at grey (0.5), scaled by its own max |value|."""
    f = np.asarray(f, dtype=np.float64)
    scale = np.abs(f).max()
    f = 0.5 + 0.5 * f / scale if scale > 0 else np.full_like(f, 0.5)
    if f.shape[0] == 3:
        return f.transpose(1, 2, 0)
    return np.repeat(f[:1].transpose(1, 2, 0), 3, axis=2)  # 1 channel (or other counts: the first one) as grey


def plot_matched_filters(d_filters, g_atoms, path, similarity=None, max_pairs=32, cols=8):
    """Grid of matched pairs (G atom | D filter), sorted by cosine (best first), at most max_pairs.

    d_filters [F, C, k, k], g_atoms [A, C, k, k]; similarity: a diagnostics.feature_similarity result for these
    two sets (computed here when None). Each filter is shown with 0 at grey, scaled by its own max |value|; RGB
    for 3 channels, else the first channel in grey. The pair's cosine is the caption.
    """
    from fsr_plugin import diagnostics
    d = torch.as_tensor(d_filters).detach().cpu().to(torch.float64).numpy()
    g = torch.as_tensor(g_atoms).detach().cpu().to(torch.float64).numpy()
    if similarity is None:
        similarity = diagnostics.feature_similarity(d, g)
    rows_idx, cols_idx = np.asarray(similarity['rows']), np.asarray(similarity['cols'])
    cos = np.asarray(similarity['matched_cos'])
    order = np.argsort(-cos, kind='stable')[:max(1, int(max_pairs))]
    n = len(order)
    cols = max(1, min(int(cols), n))
    nrows = (n + cols - 1) // cols
    fig = _figure(1.5 * cols, 1.0 * nrows + 0.6)
    fig.suptitle(f'matched G atoms (left) | D filters (right), mean cos {float(cos.mean()):.2f}', fontsize=9)
    for i, j in enumerate(order):
        ax = fig.add_subplot(nrows, cols, i + 1)
        pair = np.concatenate([_filter_to_rgb(g[rows_idx[j]]), np.ones([g.shape[2], 1, 3]),
                               _filter_to_rgb(d[cols_idx[j]])], axis=1)
        ax.imshow(pair, interpolation='nearest')
        ax.set_title(f'{cos[j]:.2f}', fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def _to_uint8_hwc(images):
    """[N, C, r, r] float in [-1, 1] (or uint8) -> uint8 numpy [N, r, r, 3]."""
    x = torch.as_tensor(images).detach().cpu()
    if x.ndim != 4:
        raise ValueError(f'save_pyramid_grid: expected [N, C, r, r] images, got {list(x.shape)}')
    if x.dtype != torch.uint8:
        x = (x.to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        raise ValueError(f'save_pyramid_grid: images must have 1 or 3 channels, got {x.shape[1]}')
    return x.permute(0, 2, 3, 1).numpy()


def save_pyramid_grid(images_by_res, path, max_images=8, gap=2):
    """One PNG with a row per resolution (smallest on top) and a column per sample (the first max_images);
    every image is nearest-upscaled to the largest resolution. images_by_res: {r: [N, C, r, r]} float in [-1, 1]
    (converted like the host: (x * 127.5 + 128).clamp(0, 255)) or uint8, 1 or 3 channels. `gap` white pixels
    separate the cells."""
    if not images_by_res:
        raise ValueError('save_pyramid_grid: no images given')
    res = sorted(int(r) for r in images_by_res)
    top = res[-1]
    levels = {int(r): _to_uint8_hwc(v) for r, v in images_by_res.items()}
    n = min(int(max_images), min(v.shape[0] for v in levels.values()))
    if n < 1:
        raise ValueError('save_pyramid_grid: need at least one image per resolution')
    for r in res:
        if levels[r].shape[1] != r or top % r:
            raise ValueError(f'save_pyramid_grid: level {r} has {levels[r].shape[1]}x{levels[r].shape[2]} images, '
                             f'expected {r}x{r} dividing {top}')
    canvas = np.full([len(res) * (top + gap) - gap, n * (top + gap) - gap, 3], 255, dtype=np.uint8)
    for i, r in enumerate(res):
        f = top // r
        for j in range(n):
            img = levels[r][j].repeat(f, axis=0).repeat(f, axis=1)
            canvas[i * (top + gap):i * (top + gap) + top, j * (top + gap):j * (top + gap) + top] = img
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(canvas, 'RGB').save(path, format='PNG')
    return path
