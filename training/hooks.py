"""The plugin hook interface of the training loop.

A plugin is an object derived from `TrainingPlugin` that overrides the hooks it needs; every hook has a do-nothing
default, and with no plugin attached the loop behaves (and draws random numbers) exactly as without this module.
The host never imports a plugin package by name: train.py and legacy.py find plugins through `register_plugin_package`
entries (a list of importable module names that provide `cli_options()` and `make_plugin(options)`, filled from
plugins.txt and GAN_PLUGINS by `register_configured_plugins`), see `plugin_packages()`. legacy.py imports them before
it unpickles a network, so a plugin can register persistence import hooks for the pickles of its older versions.

Hooks, in the order the loop calls them:

* `extra_modules(G, D, training_set, device)` -> {name: ExtraModule}: modules trained next to G and D. Each has a side
  ('G' or 'D'); it gets its own Adam optimiser with that side's options and steps in that side's phases; G-side
  modules are EMA-averaged like G (the averaged copies are given back through `set_ema_modules`). All of them are
  saved in snapshots and restored on resume.
* `on_stage(stage, G, D, modules)`: the progressive-growing schedule entered a new stage.
* `param_lr_multipliers(side, module, modules, stage)` -> {parameter: multiplier}: learning-rate multipliers for the
  parameters of G or D (side 'G'/'D', `module` is G or D) and of that side's extra modules; 0 freezes a parameter
  (it gets no gradient at all). Asked at the start and at every stage change. The optimiser has one parameter group
  per block (G: mapping, synthesis.b4, synthesis.b8, ...; D: b32, ..., b4, mapping; extra modules: per child), so
  a multiplier must be the same for all parameters of one block; parameters not named get 1.
* `wants_generator_features()`: True if loss terms need G's per-resolution hidden features (the loop then asks the
  synthesis network for them once per generator pass; no second pass).
* `replaces_generator_image()` / `generator_image(img, features, fade_alpha, ema=False)` -> tensor or None: a plugin
  may give the main discriminator another image to judge than the synthesis network's own img [N, C, R, R], computed
  from the same pass's hidden features {r: S_r}. Asked on every training generator pass (G main, path length, D main,
  the WGAN-GP interpolates and the diversity term) when `replaces_generator_image()` is True; fade_alpha is the
  progressive fade-in of the pass (1 = none), which the plugin applies itself. The replacement is the `gen_img` of
  the loss-term context. The snapshot grids (fakes*.png) show it too, from G_ema's features (ema=True: use the
  plugin's EMA modules). At most one plugin may replace the image.
* `loss_terms(where, ctx)` -> {name: tensor}: extra loss terms at 'G' (generator main phase), 'Dfake', 'Dreal' (D main
  phase) and 'Dreg' (D regularisation phase, every D_reg_interval). ctx holds the phase's tensors (real_img, real_c,
  gen_img, gen_ws, gen_features, gen_z, gen_c, cur_nimg, gain, loss). Each term is reported as Loss/<name> and its
  mean is added to the phase's loss.
* `has_d_regularisers()`: True if 'Dreg' terms exist (so the Dreg phase runs even when r1_gamma is 0).
* `after_step(step)`: after every training iteration (all phases stepped, G_ema updated, cur_nimg advanced). step
  holds cur_nimg, batch_idx, G, D, G_ema, modules and ema_modules (this plugin's extra modules and their EMA copies,
  by the names it gave them) and optimizers ({'G': ..., 'D': ...}, each covering that side's network and extra
  modules). A plugin may change parameters here in place (e.g. re-initialise dead units), together with their EMA
  copies and optimiser state; it must not draw from the global random generators (exact resume).
* `on_tick(tick_info)` -> dict of extra statistics to report for the tick.
* `state_dict()` / `load_state_dict(state)`: plugin state saved in snapshots (for exact resume).
* `register_metrics(register_metric)`: add metrics to the host's registry.
* `snapshot_extras()` -> dict of extra picklable items to save in the snapshot.
"""

import dataclasses
import importlib
import os

import torch


@dataclasses.dataclass
class ExtraModule:
    """A module trained next to G ('G' side, EMA-averaged with it) or D ('D' side)."""
    module: torch.nn.Module
    side: str  # 'G' or 'D'
    lr_multiplier: float = 1.0

    def __post_init__(self):
        if self.side not in ('G', 'D'):
            raise ValueError(f"ExtraModule.side must be 'G' or 'D', got {self.side!r}")


class TrainingPlugin:
    """Base class of training plugins. Override what you need; defaults do nothing."""

    name = 'plugin'

    def extra_modules(self, G, D, training_set, device):
        return {}

    def set_ema_modules(self, ema_modules):
        pass

    def on_stage(self, stage, G, D, modules):
        pass

    def param_lr_multipliers(self, side, module, modules, stage):
        return {}

    def wants_generator_features(self):
        return False

    def replaces_generator_image(self):
        return False

    def generator_image(self, img, features, fade_alpha, ema=False):
        return None

    def loss_terms(self, where, ctx):
        return {}

    def has_d_regularisers(self):
        return False

    def after_step(self, step):
        pass

    def on_tick(self, tick_info):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def register_metrics(self, register_metric):
        pass

    def snapshot_extras(self):
        return {}


class HookManager:
    """Dispatches the hooks to a list of plugins. With an empty list every call is a no-op."""

    def __init__(self, plugins=()):
        self.plugins = list(plugins)
        names = [p.name for p in self.plugins]
        if len(set(names)) != len(names):
            raise ValueError(f'plugin names must be unique, got {names}')

    def __bool__(self):
        return bool(self.plugins)

    def extra_modules(self, G, D, training_set, device):
        out = {}
        for p in self.plugins:
            for name, mod in p.extra_modules(G, D, training_set, device).items():
                if not isinstance(mod, ExtraModule):
                    raise TypeError(f'plugin {p.name}: extra_modules()[{name!r}] must be an ExtraModule')
                key = f'{p.name}.{name}'
                out[key] = mod
        return out

    def set_ema_modules(self, ema_modules):
        for p in self.plugins:
            prefix = p.name + '.'
            p.set_ema_modules({k[len(prefix):]: v for k, v in ema_modules.items() if k.startswith(prefix)})

    def on_stage(self, stage, G, D, modules):
        for p in self.plugins:
            prefix = p.name + '.'
            p.on_stage(stage, G, D, {k[len(prefix):]: v for k, v in modules.items() if k.startswith(prefix)})

    def param_lr_multipliers(self, side, module, modules, stage):
        """Merged multipliers of all plugins (multiplied when several plugins name the same parameter)."""
        out = {}
        for p in self.plugins:
            prefix = p.name + '.'
            mine = {k[len(prefix):]: v for k, v in modules.items() if k.startswith(prefix)}
            for param, mult in p.param_lr_multipliers(side, module, mine, stage).items():
                out[param] = out.get(param, 1.0) * float(mult)
        return out

    def wants_generator_features(self):
        return any(p.wants_generator_features() for p in self.plugins)

    def replaces_generator_image(self):
        return any(p.replaces_generator_image() for p in self.plugins)

    def generator_image(self, img, features, fade_alpha, ema=False):
        """The image the main discriminator judges: the one plugin replacement, or img when no plugin gives one."""
        out = None
        for p in self.plugins:
            if not p.replaces_generator_image():
                continue
            x = p.generator_image(img, features, fade_alpha, ema=ema)
            if x is None:
                continue
            if out is not None:
                raise RuntimeError(f'plugin {p.name}: another plugin already replaced the generator image')
            if x.shape != img.shape:
                raise ValueError(f'plugin {p.name}: generator_image must have shape {list(img.shape)}, '
                                 f'got {list(x.shape)}')
            out = x
        return img if out is None else out

    def loss_terms(self, where, ctx):
        out = {}
        for p in self.plugins:
            for name, value in p.loss_terms(where, ctx).items():
                out[f'{p.name}/{name}'] = value
        return out

    def has_d_regularisers(self):
        return any(p.has_d_regularisers() for p in self.plugins)

    def after_step(self, step):
        """step: dict (see the module docstring) with modules / ema_modules of all plugins by their full names
        (plugin.name); each plugin gets its own, without the prefix."""
        for p in self.plugins:
            prefix = p.name + '.'
            mine = dict(step)
            for key in ('modules', 'ema_modules'):
                mine[key] = {k[len(prefix):]: v for k, v in step.get(key, {}).items() if k.startswith(prefix)}
            p.after_step(mine)

    def on_tick(self, tick_info):
        out = {}
        for p in self.plugins:
            for name, value in p.on_tick(tick_info).items():
                out[f'{p.name}/{name}'] = value
        return out

    def state_dict(self):
        return {p.name: p.state_dict() for p in self.plugins}

    def load_state_dict(self, state):
        missing = [p.name for p in self.plugins if p.name not in state]
        if missing:
            raise ValueError(f'snapshot has no state for plugin(s) {missing}')
        for p in self.plugins:
            p.load_state_dict(state[p.name])

    def register_metrics(self, register_metric):
        for p in self.plugins:
            p.register_metrics(register_metric)

    def snapshot_extras(self):
        out = {}
        for p in self.plugins:
            out.update(p.snapshot_extras())
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Discovery: plugin packages listed by name, imported by train.py (the host never names a plugin in its code).

_PLUGIN_PACKAGES = []


def register_plugin_package(module_name):
    """Add an importable module name that provides `cli_options()` (list of click options) and
    `make_plugin(options: dict, training_options) -> TrainingPlugin or None` (optionally
    `update_training_options(c, options)` and `register_metrics(register_metric)`)."""
    if module_name not in _PLUGIN_PACKAGES:
        _PLUGIN_PACKAGES.append(module_name)


PLUGINS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'plugins.txt')


def register_configured_plugins(path=PLUGINS_FILE):
    """Register the plugin packages named in `path` (plugins.txt: one module name per line, '#' starts a comment)
    and in the GAN_PLUGINS environment variable (comma list). Returns the names, in that order."""
    names = []
    if os.path.isfile(path):
        with open(path) as f:
            names += [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]
    names += [n.strip() for n in os.environ.get('GAN_PLUGINS', '').split(',') if n.strip()]
    for name in names:
        register_plugin_package(name)
    return names


def plugin_packages():
    """Import and return the registered plugin modules (missing ones are skipped: deleting a plugin is allowed)."""
    modules = []
    for name in _PLUGIN_PACKAGES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if e.name != name and not name.startswith(str(e.name)):
                raise
    return modules
