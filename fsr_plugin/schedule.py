"""Layer-wise / progressive FSR schedule (FSR.md section 2, step 4; Fig. 10 of the paper).

Stages r_1 < ... < r_L (doubling). Stage 0 trains every block of resolution <= r_1 (all blocks up to `start_res`,
since a 4x4 block alone is trivial); stage l > 0 adds the blocks of resolution in (r_{l-1}, r_l] (one block).
At stage l, for a synthesis block b<r> (all its parameters: convs, their affines and noise strengths, its ToRGB, the
constant input of b4) and the output head of the same resolution, the learning-rate multiplier is:

* r in the current stage's range (r_{l-1}, r_l]  -> 1 (the layer being learned);
* r <= r_{l-1} (earlier stages)                  -> policy: 'frozen' 0, 'finetune' finetune_lr_mult, 'joint' 1
                                                    (joint = backward feature correction);
* r > r_l (later stages)                         -> 0 (not used yet: the host runs synthesis only up to r_l).

The mapping network is shared by all layers: every block's styles come from w. `mapping='follow'` (default) treats it
as part of the first stage (multiplier 1 at stage 0, the policy's multiplier afterwards), so under 'frozen' the
features of the lower blocks stay exactly fixed functions of z, as in layer-wise training of the paper's model (the
new blocks still learn their own styles through their affine layers). `mapping='train'` keeps it at 1 throughout
(lower layers then drift with w even when "frozen").

Stage boundaries and the fade-in are the host's training.growing.GrowingSchedule over the stage resolutions;
`growing_kwargs()` gives its constructor arguments, so the host's progressive growing and this schedule agree.
"""

from training.growing import GrowingSchedule

FSR_POLICIES = ('frozen', 'finetune', 'joint')
MAPPING_MODES = ('follow', 'train')


class FSRSchedule:
    """resolutions: the synthesis block resolutions the schedule covers (ascending, doubling, e.g. [4, 8, 16, 32]).
    stage_kimg: length of every stage but the last, in thousands of real images (number or list). fade_kimg: fade-in
    at the start of stages 2..L. policy: 'frozen', 'finetune' or 'joint' for the blocks of earlier stages.
    finetune_lr_mult: their multiplier under 'finetune'. start_res: resolution of the first stage (default
    resolutions[0]; blocks below it train with it). mapping: 'follow' or 'train' (see the module docstring)."""

    def __init__(self, resolutions, stage_kimg, fade_kimg=0, policy='frozen', finetune_lr_mult=0.1, start_res=None,
                 mapping='follow'):
        resolutions = [int(r) for r in resolutions]
        if not resolutions:
            raise ValueError('FSRSchedule: need at least one resolution')
        for lo, hi in zip(resolutions, resolutions[1:]):
            if hi != 2 * lo:
                raise ValueError(f'FSRSchedule: resolutions must double at every step, got {resolutions}')
        if policy not in FSR_POLICIES:
            raise ValueError(f'FSRSchedule: policy must be one of {FSR_POLICIES}, got {policy!r}')
        if mapping not in MAPPING_MODES:
            raise ValueError(f'FSRSchedule: mapping must be one of {MAPPING_MODES}, got {mapping!r}')
        if not 0 <= float(finetune_lr_mult) <= 1:
            raise ValueError(f'FSRSchedule: finetune_lr_mult must be in [0, 1], got {finetune_lr_mult}')
        start_res = resolutions[0] if start_res is None else int(start_res)
        if start_res not in resolutions:
            raise ValueError(f'FSRSchedule: start_res {start_res} is not one of {resolutions}')
        self.resolutions = resolutions
        self.stage_resolutions = [r for r in resolutions if r >= start_res]
        self.start_res = start_res
        self.policy = policy
        self.finetune_lr_mult = float(finetune_lr_mult)
        self.mapping = mapping
        self.growing = GrowingSchedule(self.stage_resolutions, stage_kimg, fade_kimg)

    @property
    def num_stages(self):
        return len(self.stage_resolutions)

    def to_dict(self):
        """Constructor arguments (plain values), for options files and snapshots."""
        g = self.growing.to_dict()
        return dict(resolutions=list(self.resolutions), stage_kimg=g['stage_kimg'], fade_kimg=g['fade_kimg'],
                    policy=self.policy, finetune_lr_mult=self.finetune_lr_mult, start_res=self.start_res,
                    mapping=self.mapping)

    def growing_kwargs(self):
        """dict(resolutions, stage_kimg, fade_kimg) for training.growing.GrowingSchedule (the host's growing_kwargs)."""
        return self.growing.to_dict()

    def stage_at(self, cur_nimg):
        """(index, resolution, alpha) in force after cur_nimg real images; alpha in [0, 1] is the fade-in."""
        stage = self.growing.at(cur_nimg)
        return stage.index, stage.resolution, stage.alpha

    def stage_index(self, stage):
        """Index of `stage`: an int index, or an object with .resolution (e.g. the host's growing Stage)."""
        if hasattr(stage, 'resolution'):
            r = int(stage.resolution)
            if r not in self.stage_resolutions:
                raise ValueError(f'FSRSchedule: stage resolution {r} is not one of {self.stage_resolutions}')
            return self.stage_resolutions.index(r)
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < self.num_stages:
            raise ValueError(f'FSRSchedule: stage must be an index in [0, {self.num_stages}) or have .resolution, '
                             f'got {stage!r}')
        return stage

    def block_multipliers(self, stage):
        """{block resolution: lr multiplier} at `stage` (see the module docstring). stage None: all 1."""
        if stage is None:
            return {r: 1.0 for r in self.resolutions}
        l = self.stage_index(stage)
        hi = self.stage_resolutions[l]
        lo = self.stage_resolutions[l - 1] if l > 0 else 0
        earlier = {'frozen': 0.0, 'finetune': self.finetune_lr_mult, 'joint': 1.0}[self.policy]
        return {r: (earlier if r <= lo else 1.0 if r <= hi else 0.0) for r in self.resolutions}

    def mapping_multiplier(self, stage):
        """lr multiplier of the mapping network at `stage`."""
        if stage is None or self.mapping == 'train':
            return 1.0
        return self.block_multipliers(stage)[self.resolutions[0]]

    def lr_multipliers(self, G, heads=None, stage=None):
        """{parameter: multiplier} for every parameter of G (mapping.*, synthesis.b<r>.*) and of `heads` (an
        OutputHeads, or None). Multiplier 0 = frozen. stage: index, Stage-like object with .resolution, or None (all
        1). Raises ValueError for a parameter that belongs to no block or a block the schedule does not cover."""
        blocks = self.block_multipliers(stage)
        mapping = self.mapping_multiplier(stage)
        out = {}
        for name, param in G.named_parameters():
            parts = name.split('.')
            if parts[0] == 'mapping':
                out[param] = mapping
                continue
            r = _block_resolution(parts)
            if r is None:
                raise ValueError(f'FSRSchedule: cannot assign generator parameter {name!r} to a block')
            if r not in blocks:
                raise ValueError(f'FSRSchedule: generator block b{r} is not covered by the schedule {self.resolutions}')
            out[param] = blocks[r]
        if heads is not None:
            for r in heads.resolutions:
                if r not in blocks:
                    raise ValueError(f'FSRSchedule: output head {r} is not covered by the schedule {self.resolutions}')
                for param in heads.head(r).parameters():
                    out[param] = blocks[r]
        return out


def _block_resolution(parts):
    """'synthesis.b16.conv0.weight'.split('.') -> 16; None if the name is not inside a synthesis block."""
    if len(parts) < 3 or parts[0] != 'synthesis' or not parts[1].startswith('b') or not parts[1][1:].isdigit():
        return None
    return int(parts[1][1:])
