"""Progressive-growing schedule: which resolution the networks run at, and the fade-in of the newest block.

A schedule is a list of stages r_1 < r_2 < ... < r_L (each twice the previous). Stage l lasts `kimg[l]` thousand real
images (the last stage lasts until the end of training); stages after the first start with a linear fade-in over
`fade_kimg` during which images are blended between the upsampled r_{l-1} output and the r_l output (alpha 0 -> 1).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int          # 0-based stage number.
    resolution: int     # Resolution the networks run at.
    alpha: float        # Fade-in of the newest block, in [0, 1]; 1 = no blending.
    start_kimg: float   # Where this stage began.


class GrowingSchedule:
    """Stages of progressive growing. `resolutions` ascending powers of two; `stage_kimg` one length per stage except
    the last (a number applies to all); `fade_kimg` length of the fade-in at the start of stages 2..L."""

    def __init__(self, resolutions, stage_kimg, fade_kimg=0.0):
        resolutions = [int(r) for r in resolutions]
        if not resolutions:
            raise ValueError('a growing schedule needs at least one resolution')
        for lo, hi in zip(resolutions, resolutions[1:]):
            if hi != 2 * lo:
                raise ValueError(f'growing resolutions must double at every stage, got {resolutions}')
        if resolutions[0] < 4 or resolutions[0] & (resolutions[0] - 1):
            raise ValueError(f'growing resolutions must be powers of two >= 4, got {resolutions}')
        if isinstance(stage_kimg, (int, float)):
            stage_kimg = [float(stage_kimg)] * (len(resolutions) - 1)
        stage_kimg = [float(k) for k in stage_kimg]
        if len(stage_kimg) != len(resolutions) - 1:
            raise ValueError(f'need {len(resolutions) - 1} stage lengths for {len(resolutions)} stages, '
                             f'got {len(stage_kimg)}')
        if any(k <= 0 for k in stage_kimg):
            raise ValueError(f'stage lengths must be positive, got {stage_kimg}')
        if fade_kimg < 0 or any(fade_kimg > k for k in stage_kimg[1:]):
            raise ValueError(f'fade_kimg must be >= 0 and at most every stage length, got {fade_kimg}')
        self.resolutions = resolutions
        self.stage_kimg = stage_kimg
        self.fade_kimg = float(fade_kimg)
        self.starts = [0.0]
        for k in stage_kimg:
            self.starts.append(self.starts[-1] + k)

    @classmethod
    def from_range(cls, start_res, final_res, stage_kimg, fade_kimg=0.0):
        """Stages start_res, 2*start_res, ..., final_res."""
        resolutions = []
        r = int(start_res)
        while r <= final_res:
            resolutions.append(r)
            r *= 2
        if not resolutions or resolutions[-1] != final_res:
            raise ValueError(f'cannot grow from {start_res} to {final_res} by doubling')
        return cls(resolutions, stage_kimg, fade_kimg)

    @property
    def final_resolution(self):
        return self.resolutions[-1]

    def at(self, cur_nimg):
        """Stage in force after `cur_nimg` real images."""
        kimg = cur_nimg / 1000
        index = 0
        for i, start in enumerate(self.starts):
            if kimg >= start:
                index = i
        alpha = 1.0
        if index > 0 and self.fade_kimg > 0:
            alpha = min(max((kimg - self.starts[index]) / self.fade_kimg, 0.0), 1.0)
        return Stage(index=index, resolution=self.resolutions[index], alpha=alpha, start_kimg=self.starts[index])

    def to_dict(self):
        return dict(resolutions=list(self.resolutions), stage_kimg=list(self.stage_kimg), fade_kimg=self.fade_kimg)

    @classmethod
    def from_dict(cls, d):
        return cls(d['resolutions'], d['stage_kimg'], d.get('fade_kimg', 0.0))
