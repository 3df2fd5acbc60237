"""Loading, converting and exporting network files.

* `load_network_pkl(f, force_fp16=False)`: a StyleGAN2-ADA / StyleGAN3 style network pickle (ours or NVIDIA's) ->
  dict with G, D, G_ema, augment_pipe, training_set_kwargs (missing keys filled with None). TensorFlow-era pickles
  are refused with a clear message.
* `rebuild_module(module)`: rebuild a loaded StyleGAN2-architecture generator/discriminator (e.g. NVIDIA's, whose code
  travels inside the pickle) as this project's class, inferring options from `init_kwargs`, copying every tensor and
  refusing partial copies (every unmatched tensor is named).
* Weights files: `save_weights(data, path)` / `load_weights(path)`: state dicts + JSON options in a torch.save
  archive that loads with `torch.load(weights_only=True)` (no code is executed when reading it).
* `load_network(path_or_url)`: either format, chosen by content.

CLI:
    python legacy.py convert --source=IN.pkl --dest=OUT.pkl [--force-fp16] [--rebuild]
    python legacy.py export-weights --source=IN.pkl --dest=OUT.pt
    python legacy.py import-weights --source=IN.pt --dest=OUT.pkl
"""

import copy
import inspect
import io
import json
import os
import pickle
import sys

import click
import torch

import dnnlib
from torch_utils import misc
from torch_utils import persistence
from training import hooks

WEIGHTS_FORMAT = 'stylegan-toolkit-weights'
WEIGHTS_VERSION = 1
NETWORK_KEYS = ('G', 'D', 'G_ema', 'augment_pipe')


class NetworkFileError(IOError):
    """A network file could not be used; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------------------------------
# Pickles.


class _NetworkUnpickler(pickle.Unpickler):
    """Unpickler that refuses TensorFlow-era files and names any symbol the pickle needs that we lack."""

    def __init__(self, f, source_name):
        super().__init__(f)
        self._source_name = source_name

    def find_class(self, module, name):
        if module.startswith('dnnlib.tflib'):
            raise NetworkFileError(
                f'{self._source_name}: this is a TensorFlow-era StyleGAN pickle ({module}.{name}); it is not supported. '
                f'Convert it to a PyTorch pickle with a StyleGAN2-ADA PyTorch installation first.')
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as e:
            raise NetworkFileError(
                f'{self._source_name}: the pickle needs the symbol {module}.{name}, which this installation does not '
                f'provide ({type(e).__name__}: {e})') from None


def _source_name(f):
    name = getattr(f, 'name', None)
    return str(name) if name is not None else '<network pickle>'


def _unpickle(f, source_name):
    try:
        return _NetworkUnpickler(f, source_name).load()
    except NetworkFileError:
        raise
    except (EOFError, pickle.UnpicklingError) as e:
        raise NetworkFileError(f'{source_name}: not a network pickle, or the file is truncated ({e})') from None
    except (ImportError, AttributeError, NameError, SyntaxError, persistence.PersistenceError) as e:
        # Raised while executing the network source embedded in the pickle (see torch_utils.persistence).
        raise NetworkFileError(f'{source_name}: the network code inside the pickle failed to load: '
                               f'{type(e).__name__}: {e}') from None


def _check_network_dict(data, source_name):
    if not isinstance(data, dict):
        raise NetworkFileError(f'{source_name}: not a network pickle (it holds a {type(data).__name__}, '
                               f'expected a dict with G, D, G_ema)')
    missing = [key for key in ('G', 'D', 'G_ema') if key not in data]
    if missing:
        raise NetworkFileError(f'{source_name}: not a network pickle (missing {", ".join(missing)}; '
                               f'keys are {sorted(map(str, data))})')
    data.setdefault('training_set_kwargs', None)
    data.setdefault('augment_pipe', None)
    for key in ('G', 'D', 'G_ema'):
        if not isinstance(data[key], torch.nn.Module):
            raise NetworkFileError(f'{source_name}: {key} is a {type(data[key]).__name__}, not a torch.nn.Module')
    if not isinstance(data['training_set_kwargs'], (dict, type(None))):
        raise NetworkFileError(f'{source_name}: training_set_kwargs must be a dict or None')
    if not isinstance(data['augment_pipe'], (torch.nn.Module, type(None))):
        raise NetworkFileError(f'{source_name}: augment_pipe must be a torch.nn.Module or None')
    return data


def _import_plugins():
    """Import the configured plugin packages (plugins.txt, GAN_PLUGINS; Python imports each once, later calls only
    re-read the list), so that the persistence import hooks they register (e.g. rewriting an import in the source of
    their older pickles) apply to what is unpickled."""
    hooks.register_configured_plugins()
    hooks.plugin_packages()


def load_network_pkl(f, force_fp16=False):
    """Load a network pickle from an open binary file. Returns a dict (G, D, G_ema, augment_pipe,
    training_set_kwargs, plus any extra keys the file holds). force_fp16: rebuild G, D, G_ema with
    num_fp16_res=4 and conv_clamp=256 (as NVIDIA's loader does)."""
    source_name = _source_name(f)
    _import_plugins()
    data = _check_network_dict(_unpickle(f, source_name), source_name)
    if force_fp16:
        for key in ('G', 'D', 'G_ema'):
            data[key] = _with_fp16(data[key], source_name, key)
    return data


def _with_fp16(module, source_name, key):
    kwargs = copy.deepcopy(module.init_kwargs) if persistence.is_persistent(module) else None
    if kwargs is None:
        raise NetworkFileError(f'{source_name}: {key} is not a persistent module; cannot rebuild it with fp16')
    target = kwargs.synthesis_kwargs if 'synthesis_kwargs' in kwargs else kwargs
    target = dnnlib.EasyDict(target)
    old = (target.get('num_fp16_res', None), target.get('conv_clamp', None))
    target.num_fp16_res = 4
    target.conv_clamp = 256
    if 'synthesis_kwargs' in kwargs:
        kwargs.synthesis_kwargs = target
    else:
        kwargs = target
    if old == (4, 256):
        return module
    new = type(module)(*module.init_args, **kwargs).eval().requires_grad_(False)
    misc.copy_params_and_buffers(module, new, require_all=True)
    return new


# ----------------------------------------------------------------------------------------------------------------------
# Rebuilding NVIDIA StyleGAN2 modules as ours.

_REBUILDABLE = ('Generator', 'Discriminator')


def _our_class(class_name):
    from training import networks
    return getattr(networks, class_name)


def generator_kwargs_from_module(module, source_name='<network>'):
    """Our Generator kwargs from a StyleGAN2-ADA or StyleGAN3 (networks_stylegan2) generator's init_kwargs."""
    init = copy.deepcopy(dict(module.init_kwargs))
    args = list(module.init_args)
    names = ['z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels']
    for name, value in zip(names, args):
        init[name] = value
    kwargs = {name: init.pop(name) for name in names if name in init}
    missing = [name for name in names if name not in kwargs]
    if missing:
        raise NetworkFileError(f'{source_name}: cannot rebuild the generator: init_kwargs lack {missing}')
    mapping_kwargs = dict(init.pop('mapping_kwargs', {}) or {})
    synthesis_kwargs = dict(init.pop('synthesis_kwargs', {}) or {})
    synthesis_kwargs.update(init)  # StyleGAN3's copy of the StyleGAN2 generator takes synthesis options at top level.

    if 'input' in dict(module.synthesis.named_children()):
        raise NetworkFileError(f'{source_name}: this is a StyleGAN3 (alias-free) generator; it runs as loaded, but '
                               f'cannot be rebuilt as this project\'s StyleGAN2 class')
    sg3_flavour = 'update_emas' in inspect.signature(module.mapping.forward).parameters
    if sg3_flavour and 'w_avg_beta' not in mapping_kwargs:
        mapping_kwargs['w_avg_beta'] = 0.998  # StyleGAN3's default differs from StyleGAN2-ADA's 0.995.
    synthesis_kwargs.pop('fused_modconv_default', None)  # A call-time default only; results are identical.
    _check_known_kwargs(synthesis_kwargs, _SYNTHESIS_KWARGS, 'synthesis', source_name)
    _check_known_kwargs(mapping_kwargs, _MAPPING_KWARGS, 'mapping', source_name)
    kwargs['mapping_kwargs'] = mapping_kwargs
    kwargs['synthesis_kwargs'] = synthesis_kwargs
    return kwargs


def discriminator_kwargs_from_module(module, source_name='<network>'):
    """Our Discriminator kwargs from a StyleGAN2-ADA or StyleGAN3 discriminator's init_args/init_kwargs."""
    init = copy.deepcopy(dict(module.init_kwargs))
    names = ['c_dim', 'img_resolution', 'img_channels']
    for name, value in zip(names, list(module.init_args)):
        init[name] = value
    _check_known_kwargs(init, _DISCRIMINATOR_KWARGS, 'discriminator', source_name)
    _check_known_kwargs(dict(init.get('block_kwargs', {}) or {}), _D_BLOCK_KWARGS, 'discriminator block',
                        source_name)
    _check_known_kwargs(dict(init.get('epilogue_kwargs', {}) or {}), _D_EPILOGUE_KWARGS, 'discriminator epilogue',
                        source_name)
    _check_known_kwargs(dict(init.get('mapping_kwargs', {}) or {}), _MAPPING_KWARGS, 'discriminator mapping',
                        source_name)
    return init


_SYNTHESIS_KWARGS = {'channel_base', 'channel_max', 'num_fp16_res', 'architecture', 'resample_filter', 'conv_clamp',
                     'fp16_channels_last', 'kernel_size', 'use_noise', 'activation',
                     'channel_overrides', 'noise_resolutions',   # Ours: --g-channels, --g-noise-res,
                     'input_noise_channels'}                     # and --g-input-noise.
_MAPPING_KWARGS = {'num_layers', 'embed_features', 'layer_features', 'activation', 'lr_multiplier', 'w_avg_beta'}
_DISCRIMINATOR_KWARGS = {'c_dim', 'img_resolution', 'img_channels', 'architecture', 'channel_base', 'channel_max',
                         'num_fp16_res', 'conv_clamp', 'cmap_dim', 'block_kwargs', 'mapping_kwargs',
                         'epilogue_kwargs', 'spectral_norm'}
_D_BLOCK_KWARGS = {'activation', 'resample_filter', 'fp16_channels_last', 'freeze_layers'}
_D_EPILOGUE_KWARGS = {'mbstd_group_size', 'mbstd_num_channels', 'activation'}


def _check_known_kwargs(kwargs, known, what, source_name):
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise NetworkFileError(f'{source_name}: cannot rebuild the {what}: unsupported option(s) {unknown}')


def copy_all_tensors(src, dst, source_name='<network>', what='module', allow_missing=False):
    """Copy every parameter and buffer of src into dst (matched by name). Raises NetworkFileError naming every
    missing, unused or shape-mismatched tensor instead of copying partially. allow_missing=True: dst tensors that src
    lacks keep their values (report.missing names them); unused and mismatched tensors still raise."""
    report = misc.match_params_and_buffers(src, dst)
    problems = []
    if report.missing and not allow_missing:
        problems.append(f'missing in source: {", ".join(report.missing)}')
    if report.unused:
        problems.append(f'not used by destination: {", ".join(report.unused)}')
    if report.shape_mismatch:
        problems.append('shape mismatch: ' + ', '.join(f'{name} {list(a)} vs {list(b)}'
                                                       for name, a, b in report.shape_mismatch))
    if problems:
        raise NetworkFileError(f'{source_name}: cannot copy the {what} tensor by tensor; ' + '; '.join(problems))
    misc.copy_params_and_buffers(src, dst, require_all=not allow_missing)
    return report


def rebuild_module(module, source_name='<network>'):
    """Rebuild a loaded StyleGAN2-architecture Generator or Discriminator (any origin) as training.networks' class
    with identical tensors. Returns the new module (eval mode, requires_grad False)."""
    class_name = type(module).__name__
    if class_name not in _REBUILDABLE:
        raise NetworkFileError(f'{source_name}: cannot rebuild a {class_name}; only {list(_REBUILDABLE)} are supported')
    if not persistence.is_persistent(module):
        raise NetworkFileError(f'{source_name}: the {class_name} is not a persistent module (no init_kwargs)')
    kwargs = generator_kwargs_from_module(module, source_name) if class_name == 'Generator' else \
        discriminator_kwargs_from_module(module, source_name)
    try:
        new = _our_class(class_name)(**kwargs)
    except (TypeError, ValueError) as e:
        raise NetworkFileError(f'{source_name}: cannot rebuild the {class_name} from its options: {e}') from None
    new.eval().requires_grad_(False)
    copy_all_tensors(module, new, source_name, class_name)
    return new


# ----------------------------------------------------------------------------------------------------------------------
# Weights files (no code execution on load).


def _json_default(obj):
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, 'tolist'):
        return obj.tolist()
    raise TypeError(f'cannot store a {type(obj).__name__} in the options JSON')


def _module_record(module, key, source_name):
    class_name = type(module).__name__
    base = type(module).__mro__[1] if persistence.is_persistent(module) else type(module)
    module_name = base.__module__
    if module_name.startswith('_imported_module_') or module_name not in sys.modules:
        # Code that came inside a pickle: only our own StyleGAN2 classes can be represented by name.
        if class_name in _REBUILDABLE:
            module = rebuild_module(module, source_name)
            module_name = 'training.networks'
        elif class_name == 'AugmentPipe':
            module_name = 'training.augment'
        else:
            raise NetworkFileError(f'{source_name}: {key} ({class_name}) comes from code inside the pickle and has no '
                                   f'counterpart here; it cannot be exported as weights')
    if not persistence.is_persistent(module):
        raise NetworkFileError(f'{source_name}: {key} is not a persistent module (no init_kwargs to record)')
    options = {'args': list(module.init_args), 'kwargs': dict(module.init_kwargs)}
    state = {name: tensor.detach().cpu().clone() for name, tensor in misc.named_params_and_buffers(module)}
    return {'class_name': f'{module_name}.{class_name}', 'options_json': json.dumps(options, default=_json_default),
            'tensors': state}


def save_weights(data, path, source_name='<network>'):
    """Write G, D, G_ema, augment_pipe (and other persistent modules of `data`) plus training_set_kwargs to `path`
    as a torch.save archive of plain tensors and JSON strings."""
    record = {'format': WEIGHTS_FORMAT, 'version': WEIGHTS_VERSION, 'modules': {}}
    for key, value in data.items():
        if isinstance(value, torch.nn.Module):
            record['modules'][key] = _module_record(value, key, source_name)
    record['training_set_kwargs_json'] = json.dumps(data.get('training_set_kwargs'), default=_json_default)
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        torch.save(record, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _build_from_record(rec, key, source_name):
    class_name = rec.get('class_name', '')
    if not (class_name.startswith('training.') or class_name.startswith('fsr_plugin.')):
        raise NetworkFileError(f'{source_name}: {key} names class {class_name!r}, which is not one of this '
                               f'project\'s classes')
    try:
        options = json.loads(rec['options_json'])
        module = dnnlib.util.construct_class_by_name(*options['args'], class_name=class_name, **options['kwargs'])
    except (ImportError, AttributeError, TypeError, ValueError, KeyError) as e:
        raise NetworkFileError(f'{source_name}: cannot build {key} ({class_name}): {type(e).__name__}: {e}') from None
    tensors = dict(rec['tensors'])
    own = dict(misc.named_params_and_buffers(module))
    missing = sorted(set(own) - set(tensors))
    unused = sorted(set(tensors) - set(own))
    shape = [f'{n} {list(tensors[n].shape)} vs {list(own[n].shape)}' for n in own
             if n in tensors and tensors[n].shape != own[n].shape]
    if missing or unused or shape:
        raise NetworkFileError(f'{source_name}: {key} tensors do not match {class_name}: missing {missing}, '
                               f'unused {unused}, shape mismatch {shape}')
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(tensors[name])
    return module.eval().requires_grad_(False)


def load_weights(f):
    """Load a weights file (path or open binary file) written by save_weights. Uses torch.load(weights_only=True)."""
    source_name = f if isinstance(f, str) else _source_name(f)
    try:
        record = torch.load(f, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises a variety of errors for corrupt archives.
        raise NetworkFileError(f'{source_name}: not a readable weights file ({type(e).__name__}: {e})') from None
    if not isinstance(record, dict) or record.get('format') != WEIGHTS_FORMAT:
        raise NetworkFileError(f'{source_name}: not a {WEIGHTS_FORMAT} file')
    if record.get('version') != WEIGHTS_VERSION:
        raise NetworkFileError(f'{source_name}: weights format version {record.get("version")} is not supported '
                               f'(expected {WEIGHTS_VERSION})')
    data = {key: _build_from_record(rec, key, source_name) for key, rec in record['modules'].items()}
    data['training_set_kwargs'] = json.loads(record.get('training_set_kwargs_json', 'null'))
    return _check_network_dict(data, source_name)


def is_weights_file(head):
    """True if the first bytes of a file look like a torch.save zip archive (weights file), not a pickle."""
    return head[:4] == b'PK\x03\x04'


def load_network(path_or_url, force_fp16=False):
    """Load a network pickle or weights file from a path or URL (downloads are cached). Returns the network dict."""
    with dnnlib.util.open_url(path_or_url) as f:
        raw = f.read()
    buf = io.BytesIO(raw)
    buf.name = str(path_or_url)
    if is_weights_file(raw[:4]):
        if force_fp16:
            raise NetworkFileError(f'{path_or_url}: force_fp16 applies to pickles only')
        return load_weights(buf)
    return load_network_pkl(buf, force_fp16=force_fp16)


def save_network_pkl(data, path):
    """Pickle a network dict like a training snapshot (modules deep-copied to CPU, eval, no grad), atomically."""
    out = {}
    for key, value in data.items():
        if isinstance(value, torch.nn.Module):
            value = copy.deepcopy(value).eval().requires_grad_(False).cpu()
        out[key] = value
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            pickle.dump(out, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------------------------------------------------
# CLI.


def _fail(message):
    click.echo(f'legacy.py: error: {message}', err=True)
    sys.exit(1)


@click.group()
def cli():
    """Convert, export and import network files."""


@cli.command('convert')
@click.option('--source', required=True, help='Input network pickle (path or URL).')
@click.option('--dest', required=True, help='Output network pickle.')
@click.option('--force-fp16', is_flag=True, help='Rebuild with num_fp16_res=4, conv_clamp=256.')
@click.option('--rebuild', is_flag=True, help='Rebuild StyleGAN2 G/D/G_ema as this project\'s classes.')
def convert_cmd(source, dest, force_fp16, rebuild):
    """Load a network pickle and write it again (optionally rebuilt as our own classes)."""
    try:
        data = load_network(source, force_fp16=force_fp16)
        if rebuild:
            for key in ('G', 'D', 'G_ema'):
                data[key] = rebuild_module(data[key], source)
        save_network_pkl(data, dest)
    except (NetworkFileError, IOError) as e:
        _fail(str(e))
    click.echo(f'Wrote {dest}')


@cli.command('export-weights')
@click.option('--source', required=True, help='Input network pickle or weights file (path or URL).')
@click.option('--dest', required=True, help='Output weights file (.pt).')
def export_weights_cmd(source, dest):
    """Export state dicts + JSON options, loadable with torch.load(weights_only=True)."""
    try:
        save_weights(load_network(source), dest, source)
    except (NetworkFileError, IOError) as e:
        _fail(str(e))
    click.echo(f'Wrote {dest}')


@cli.command('import-weights')
@click.option('--source', required=True, help='Input weights file (path or URL).')
@click.option('--dest', required=True, help='Output network pickle.')
def import_weights_cmd(source, dest):
    """Build the networks of a weights file and pickle them."""
    try:
        save_network_pkl(load_network(source), dest)
    except (NetworkFileError, IOError) as e:
        _fail(str(e))
    click.echo(f'Wrote {dest}')


if __name__ == '__main__':
    cli()  # pylint: disable=no-value-for-parameter
