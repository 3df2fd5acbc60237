"""A network's image as its snapshot records it.

A plugin may have trained the main discriminator on another image than G's own ToRGB output (the
`generator_image` hook; e.g. the FSR plugin's top output head with --fsr-main-d=head). Its snapshots then name
that image's module under the key 'image_source': an EMA extra module that maps hidden features to
per-resolution images (forward({r: S_r}, img=G's image) -> {r: X_r}, attribute `resolutions`). The network's
image is that module's top level, computed from G's hidden features at the top resolution.

`network_generator(data)` returns a drop-in generator for such a file: it has G's attributes and its `mapping`,
and its `forward` and `synthesis` return the named module's image, so every host metric, generate.py and
calc_metrics.py score the image the run was trained to output. The host knows nothing of the plugin here: the
module comes pickled in the file.
"""

import torch


class ImageSourceError(ValueError):
    """The network file names an image source it does not hold."""


def find_image_source(data):
    """(name, module) of the network file's image source (dict key 'image_source', the name of one of its
    'extra_modules_ema'); None when the file names none, i.e. G's own image is the network's image."""
    name = data.get('image_source')
    if name is None:
        return None
    module = (data.get('extra_modules_ema') or {}).get(name)
    if module is None or not hasattr(module, 'resolutions') or not callable(module):
        raise ImageSourceError(f'the network file names image_source {name!r}, but has no such per-resolution '
                               f'module among its extra modules ({sorted(data.get("extra_modules_ema") or {})})')
    return name, module


class SourcedSynthesis(torch.nn.Module):
    """G.synthesis whose image is `source`'s top level. forward(ws [N, num_ws, w_dim], **kwargs) -> [N, C, R, R].
    A call with return_features=True returns G's own (image, features) unchanged: a caller that reads the hidden
    features builds its own outputs from them. Other attributes (block_resolutions, num_ws, ...) are G's."""

    def __init__(self, synthesis, source):
        super().__init__()
        self.synthesis = synthesis
        self.source = source
        self.top = int(max(source.resolutions))
        if self.top != int(synthesis.img_resolution):
            raise ImageSourceError(f'image source levels {list(source.resolutions)} do not reach the generator '
                                   f'resolution {synthesis.img_resolution}')

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__('synthesis'), name)

    def forward(self, ws, return_features=False, **kwargs):
        if return_features:
            return self.synthesis(ws, return_features=True, **kwargs)
        img, feats = self.synthesis(ws, return_features=True, **kwargs)
        out = self.source({self.top: feats[self.top].float()}, img=img)[self.top]
        return out.to(img.dtype)


class SourcedGenerator(torch.nn.Module):
    """A generator with G's mapping and attributes whose image is `source`'s top level (see SourcedSynthesis).
    forward(z [N, z_dim], c [N, c_dim], truncation_psi, truncation_cutoff, update_emas, **synthesis_kwargs)
    -> [N, img_channels, img_resolution, img_resolution], like G."""

    def __init__(self, G, source, source_name=None):
        super().__init__()
        self.mapping = G.mapping
        self.synthesis = SourcedSynthesis(G.synthesis, source)
        self.source_name = source_name
        for key in ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels', 'num_ws', 'init_kwargs'):
            if hasattr(G, key):
                setattr(self, key, getattr(G, key))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, **synthesis_kwargs)


def network_generator(data, key='G_ema', own_image=False):
    """The generator whose images a network file's metrics and samples should use: data[key] itself, or a
    SourcedGenerator around it when the file names an image source (and own_image is False).
    Returns (generator, source name or None)."""
    G = data[key]
    found = None if own_image else find_image_source(data)
    if found is None:
        return G, None
    return SourcedGenerator(G, found[1], source_name=found[0]), found[0]
