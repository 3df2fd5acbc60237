"""Markdown reports of the FSR experiments: number formatting, spread over seeds, tables, and the report file.

Numbers are printed with 4 significant digits (`fmt`); a cell with a spread over seeds reads
`mean ± std (min–max, n=N)` (population std, i.e. numpy's default ddof=0), so the first number of every cell is the
value itself (or the mean) and can be parsed back with `first_number`. A missing value prints as `n/a`.
"""

import math
import os
import re
import shlex

import numpy as np

__all__ = ['fmt', 'spread', 'fmt_spread', 'first_number', 'markdown_table', 'command_line', 'Report']

_NUMBER = re.compile(r'[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|inf|nan)')


def fmt(x, digits=4):
    """A number as text with `digits` significant digits ('n/a' for None / NaN, 'inf' / '-inf')."""
    if x is None:
        return 'n/a'
    if isinstance(x, (bool, np.bool_)):
        return 'yes' if x else 'no'
    x = float(x)
    if math.isnan(x):
        return 'n/a'
    if math.isinf(x):
        return 'inf' if x > 0 else '-inf'
    if x == int(x) and abs(x) < 10 ** digits:
        return str(int(x))
    return f'{x:.{digits}g}'


def spread(values):
    """dict(mean, std (ddof=0), min, max, n) of the finite values in `values` (all NaN when there are none)."""
    v = np.asarray([float(x) for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return dict(mean=float('nan'), std=float('nan'), min=float('nan'), max=float('nan'), n=0)
    return dict(mean=float(v.mean()), std=float(v.std()), min=float(v.min()), max=float(v.max()), n=int(v.size))


def fmt_spread(values, digits=4):
    """'mean ± std (min–max, n=N)' over seeds; a single value prints alone; no finite value prints 'n/a'."""
    s = spread(values)
    if s['n'] == 0:
        return 'n/a'
    if s['n'] == 1:
        return fmt(s['mean'], digits)
    return (f'{fmt(s["mean"], digits)} ± {fmt(s["std"], digits)} ({fmt(s["min"], digits)}–{fmt(s["max"], digits)}, '
            f'n={s["n"]})')


def first_number(cell):
    """The first number in a table cell as a float (the value, or the mean of a spread cell); None if there is none
    ('n/a')."""
    m = _NUMBER.search(str(cell))
    return float(m.group()) if m else None


def _cell(value):
    text = fmt(value) if isinstance(value, (int, float, np.floating, np.integer)) else str(value)
    return text.replace('|', '\\|').replace('\n', ' ')


def markdown_table(headers, rows):
    """A GitHub markdown table. headers: list of str; rows: lists of cells (numbers are formatted with `fmt`)."""
    if not headers:
        raise ValueError('markdown_table: no headers')
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f'markdown_table: row {i} has {len(row)} cells, expected {len(headers)}')
    lines = ['| ' + ' | '.join(_cell(h) for h in headers) + ' |',
             '| ' + ' | '.join('---' for _ in headers) + ' |']
    lines += ['| ' + ' | '.join(_cell(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def command_line(argv, env=None):
    """A shell command line for argv (list of str), prefixed by VAR=value for the entries of `env`."""
    prefix = ' '.join(f'{k}={shlex.quote(str(v))}' for k, v in (env or {}).items())
    text = shlex.join([str(a) for a in argv])
    return f'{prefix} {text}' if prefix else text


class Report:
    """A markdown document built section by section and written to <folder>/report.md (images are referenced by
    paths relative to the folder)."""

    def __init__(self, folder, title):
        self.folder = os.path.abspath(folder)
        self.parts = [f'# {title}', '']

    def heading(self, text, level=2):
        self.parts += [f'{"#" * level} {text}', '']

    def text(self, text):
        self.parts += [str(text).rstrip(), '']

    def bullets(self, items):
        self.parts += [f'* {item}' for item in items] + ['']

    def code(self, lines, lang='bash'):
        self.parts += [f'```{lang}'] + [str(line) for line in lines] + ['```', '']

    def table(self, headers, rows, caption=None):
        if caption:
            self.parts += [f'*{caption}*', '']
        self.parts += [markdown_table(headers, rows), '']

    def image(self, path, caption):
        rel = os.path.relpath(os.path.abspath(path), self.folder)
        self.parts += [f'![{caption}]({rel})', '', f'*{caption}*', '']

    def options(self, params):
        """Table of every option of the experiment (name -> value)."""
        rows = [[f'--{name.replace("_", "-")}', '' if value is None else str(value)]
                for name, value in sorted(params.items())]
        self.table(['option', 'value'], rows)

    def write(self, name='report.md'):
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, name)
        with open(path, 'wt', encoding='utf-8') as f:
            f.write('\n'.join(self.parts).rstrip() + '\n')
        return path
