"""StyleGAN2 generator and discriminator.

Parameter and buffer names/shapes follow the StyleGAN2-ADA convention (HOST_CONTRACT.md section 1.9), so weights of
NVIDIA's network pickles copy into these classes one-to-one (see legacy.py). The maths is the StyleGAN2 one: mapping
network with 2nd-moment normalisation and equalised learning rate, weight-modulated/demodulated convolutions with
per-pixel noise, orig/skip/resnet synthesis and discriminator architectures, minibatch standard deviation.

This file deliberately imports only numpy, torch and the public torch_utils API of the contract (section 1.7), so the
source that travels inside our pickles can also be executed against NVIDIA's torch_utils.

Differences from NVIDIA's code that do not change results:
* the demodulation coefficients are computed from squared styles times squared weight norms ([N, I] @ [I, O]) instead
  of materialising per-sample weights;
* the default modulated-convolution path on CPU scales activations (no grouped convolution);
* "fp16" blocks (use_fp16) run in bfloat16 when the device is not CUDA (CPU half convolutions are slow or missing),
  with float32 master weights; `force_fp32=True` disables reduced precision;
* `SynthesisNetwork.forward(..., return_features=True)` also returns every block's hidden activations, and
  `max_res` stops synthesis at a lower resolution (used by progressive growing and plugins).
"""

import numpy as np
import torch

from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import bias_act
from torch_utils.ops import conv2d_resample
from torch_utils.ops import fma
from torch_utils.ops import upfirdn2d

# ----------------------------------------------------------------------------------------------------------------------
# Helpers.


def _reduced_dtype(device):
    """Dtype of "fp16" blocks on `device`: float16 on CUDA, bfloat16 elsewhere (fast on CPUs with AVX-512 BF16)."""
    return torch.float16 if device.type == 'cuda' else torch.bfloat16


def _block_dtype(use_fp16, force_fp32, device):
    if use_fp16 and not force_fp32:
        return _reduced_dtype(device)
    return torch.float32


def spectral_normalize(weight, u, update):
    """weight / sigma_max(weight.reshape(out, -1)) with one power iteration from the stored vector u [out].

    update=True (training) writes the new u in place; sigma carries gradient w.r.t. weight (Miyato et al. 2018)."""
    w = weight.reshape(weight.shape[0], -1)
    with torch.no_grad():
        v = torch.nn.functional.normalize(w.t().float() @ u, dim=0, eps=1e-12)
        u_new = torch.nn.functional.normalize(w.float() @ v, dim=0, eps=1e-12)
        if update:
            u.copy_(u_new)
    sigma = torch.dot(u_new.to(w.dtype), w @ v.to(w.dtype))
    return weight / sigma


@misc.profiled_function
def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """Scale x so that the mean of its squares along `dim` is 1."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


@misc.profiled_function
def modulated_conv2d(
    x,                      # Input activations: [N, I, H, W].
    weight,                 # Convolution weights: [O, I, k, k].
    styles,                 # Per-sample modulation of the input channels: [N, I].
    noise=None,             # Optional noise added after the convolution: broadcastable to [N, O, H', W'].
    up=1,                   # Integer upsampling factor.
    down=1,                 # Integer downsampling factor.
    padding=0,              # Padding relative to the upsampled image.
    resample_filter=None,   # Low-pass filter for resampling (from upfirdn2d.setup_filter).
    demodulate=True,        # Normalise each output channel's effective weights to unit norm?
    flip_weight=True,       # False = true convolution (faster for up > 1), True = correlation.
    fused_modconv=True,     # Grouped convolution with per-sample weights (True) or activation scaling (False).
):
    """Weight-modulated convolution of StyleGAN2. Returns [N, O, H', W'] in x's dtype.

    Mathematically: w'_{n,o,i} = w_{o,i} * s_{n,i}; with demodulation w'' = w' / sqrt(sum_{i,k} w'^2 + 1e-8); then a
    convolution of x[n] with w''_n, plus noise.
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(weight, [out_channels, in_channels, kh, kw])
    misc.assert_shape(x, [batch_size, in_channels, None, None])
    misc.assert_shape(styles, [batch_size, in_channels])

    # Keep magnitudes in range for reduced precision. Scale-invariant under demodulation, so exact in exact arithmetic.
    if x.dtype in (torch.float16, torch.bfloat16) and demodulate:
        weight = weight * (1 / np.sqrt(in_channels * kh * kw) / weight.norm(float('inf'), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float('inf'), dim=1, keepdim=True)

    dcoefs = None
    if demodulate:
        # sum_{i,k} (w_{o,i,k} s_{n,i})^2 = sum_i s_{n,i}^2 * |w_{o,i}|^2  -> [N, O], no per-sample weight tensor.
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
        x = conv2d_resample.conv2d_resample(x=x, w=weight.to(x.dtype), f=resample_filter, up=up, down=down,
                                            padding=padding, flip_weight=flip_weight)
        if demodulate and noise is not None:
            x = fma.fma(x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1), noise.to(x.dtype))
        elif demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        elif noise is not None:
            x = x.add_(noise.to(x.dtype))
        return x

    # Fused path: one grouped convolution with per-sample weights.
    w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)
    with misc.suppress_tracer_warnings():
        batch_size = int(batch_size)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                                        groups=batch_size, flip_weight=flip_weight)
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise)
    return x


# ----------------------------------------------------------------------------------------------------------------------
# Layers.


@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalised learning rate: y = act(x @ (W * gain)^T + b * lr_multiplier)."""

    def __init__(self,
                 in_features,               # Number of input features.
                 out_features,              # Number of output features.
                 bias=True,                 # Apply additive bias before the activation function?
                 activation='linear',       # Activation function name (see bias_act.activation_funcs).
                 lr_multiplier=1,           # Learning rate multiplier.
                 bias_init=0,               # Initial value of the bias.
                 spectral_norm=False,       # Divide the weight by its largest singular value (buffer sn_u)?
                 ):
        super().__init__()
        if activation not in bias_act.activation_funcs:
            raise ValueError(f'Unknown activation {activation!r}; valid: {sorted(bias_act.activation_funcs)}')
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = float(lr_multiplier / np.sqrt(in_features))
        self.bias_gain = float(lr_multiplier)
        self.spectral_norm = spectral_norm
        if spectral_norm:
            self.register_buffer('sn_u', torch.nn.functional.normalize(torch.randn([out_features]), dim=0))

    def forward(self, x):
        if self.spectral_norm:
            w = spectral_normalize(self.weight, self.sn_u, update=self.training).to(x.dtype)
        else:
            w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == 'linear' and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return bias_act.bias_act(x, b, act=self.activation)

    def extra_repr(self):
        return f'in_features={self.in_features:d}, out_features={self.out_features:d}, activation={self.activation:s}'


@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    """Convolution with equalised learning rate, optional up/downsampling, bias, activation and clamping."""

    def __init__(self,
                 in_channels,                   # Number of input channels.
                 out_channels,                  # Number of output channels.
                 kernel_size,                   # Width and height of the convolution kernel.
                 bias=True,                     # Apply additive bias before the activation function?
                 activation='linear',           # Activation function name.
                 up=1,                          # Integer upsampling factor.
                 down=1,                        # Integer downsampling factor.
                 resample_filter=[1, 3, 3, 1],  # Low-pass filter to apply when resampling activations.
                 conv_clamp=None,               # Clamp the output to +-X, None = disable clamping.
                 channels_last=False,           # Expect the input to have memory_format=channels_last?
                 trainable=True,                # Update the weights of this layer during training?
                 spectral_norm=False,           # Divide the weight by its largest singular value (buffer sn_u)?
                 ):
        super().__init__()
        if activation not in bias_act.activation_funcs:
            raise ValueError(f'Unknown activation {activation!r}; valid: {sorted(bias_act.activation_funcs)}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = float(1 / np.sqrt(in_channels * (kernel_size ** 2)))
        self.act_gain = float(bias_act.activation_funcs[activation].def_gain)

        self.spectral_norm = spectral_norm
        if spectral_norm:
            self.register_buffer('sn_u', torch.nn.functional.normalize(torch.randn([out_channels]), dim=0))
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias) if bias is not None else None
        else:
            # Frozen layers keep their tensors as buffers under the same names (Freeze-D convention).
            self.register_buffer('weight', weight)
            if bias is not None:
                self.register_buffer('bias', bias)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        if self.spectral_norm:
            w = spectral_normalize(self.weight, self.sn_u, update=self.training and self.weight.requires_grad)
        else:
            w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        flip_weight = (self.up == 1)  # Transposed convolution (up > 1) uses the true-convolution orientation.
        x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                                            padding=self.padding, flip_weight=flip_weight)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self):
        return (f'in_channels={self.in_channels:d}, out_channels={self.out_channels:d}, activation={self.activation:s},'
                f' up={self.up}, down={self.down}')


@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    """z (and label c) -> intermediate latent w, broadcast to num_ws copies; tracks the running mean w_avg."""

    def __init__(self,
                 z_dim,                      # Input latent (Z) dimensionality, 0 = no latent.
                 c_dim,                      # Conditioning label (C) dimensionality, 0 = no label.
                 w_dim,                      # Intermediate latent (W) dimensionality.
                 num_ws,                     # Number of intermediate latents to output, None = do not broadcast.
                 num_layers=8,               # Number of mapping layers.
                 embed_features=None,        # Label embedding dimensionality, None = same as w_dim.
                 layer_features=None,        # Number of intermediate features in the mapping layers, None = w_dim.
                 activation='lrelu',         # Activation function.
                 lr_multiplier=0.01,         # Learning rate multiplier for the mapping layers.
                 w_avg_beta=0.995,           # Decay for tracking the moving average of W during training, None = off.
                 ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features_list = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features_list[idx], features_list[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f'fc{idx}', layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, skip_w_avg_update=None):
        """z: [N, z_dim], c: [N, c_dim] -> ws: [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None).

        w_avg is updated only when update_emas=True (skip_w_avg_update is accepted for StyleGAN2-ADA callers and
        only ever suppresses the update).
        """
        x = None
        with torch.autograd.profiler.record_function('input'):
            if self.z_dim > 0:
                misc.assert_shape(z, [None, self.z_dim])
                x = normalize_2nd_moment(z.to(torch.float32))
            if self.c_dim > 0:
                misc.assert_shape(c, [None, self.c_dim])
                y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
                x = torch.cat([x, y], dim=1) if x is not None else y

        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)

        if update_emas and not skip_w_avg_update and self.w_avg_beta is not None and self.num_ws is not None:
            with torch.autograd.profiler.record_function('update_w_avg'):
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            with torch.autograd.profiler.record_function('broadcast'):
                x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            with torch.autograd.profiler.record_function('truncate'):
                if self.w_avg_beta is None or self.num_ws is None:
                    raise ValueError('truncation needs a mapping network that tracks w_avg')
                if truncation_cutoff is None:
                    x = self.w_avg.lerp(x, truncation_psi)
                else:
                    x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self):
        return f'z_dim={self.z_dim:d}, c_dim={self.c_dim:d}, w_dim={self.w_dim:d}, num_ws={self.num_ws}'


@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution + noise + bias + activation; optional 2x upsampling."""

    def __init__(self,
                 in_channels,                   # Number of input channels.
                 out_channels,                  # Number of output channels.
                 w_dim,                         # Intermediate latent (W) dimensionality.
                 resolution,                    # Resolution of this layer.
                 kernel_size=3,                 # Convolution kernel size.
                 up=1,                          # Integer upsampling factor.
                 use_noise=True,                # Enable noise input?
                 activation='lrelu',            # Activation function.
                 resample_filter=[1, 3, 3, 1],  # Low-pass filter to apply when resampling activations.
                 conv_clamp=None,               # Clamp the output of convolution layers to +-X, None = disable.
                 channels_last=False,           # Use channels_last format for the weights?
                 ):
        super().__init__()
        if activation not in bias_act.activation_funcs:
            raise ValueError(f'Unknown activation {activation!r}; valid: {sorted(bias_act.activation_funcs)}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = float(bias_act.activation_funcs[activation].def_gain)

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode='random', fused_modconv=True, gain=1):
        """x: [N, in_channels, r/up, r/up], w: [N, w_dim] -> [N, out_channels, r, r]."""
        if noise_mode not in ('random', 'const', 'none'):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', not {noise_mode!r}")
        in_resolution = self.resolution // self.up
        misc.assert_shape(x, [None, self.in_channels, in_resolution, in_resolution])
        styles = self.affine(w)

        noise = None
        if self.use_noise and noise_mode == 'random':
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        if self.use_noise and noise_mode == 'const':
            noise = self.noise_const * self.noise_strength

        flip_weight = (self.up == 1)
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=flip_weight,
                             fused_modconv=fused_modconv)

        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self):
        return (f'in_channels={self.in_channels:d}, out_channels={self.out_channels:d}, w_dim={self.w_dim:d},'
                f' resolution={self.resolution:d}, up={self.up}, activation={self.activation:s}')


@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    """Modulated (not demodulated) 1x1 convolution from features to image channels."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = float(1 / np.sqrt(in_channels * (kernel_size ** 2)))

    def forward(self, x, w, fused_modconv=True):
        """x: [N, in_channels, H, W], w: [N, w_dim] -> [N, out_channels, H, W]."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self):
        return f'in_channels={self.in_channels:d}, out_channels={self.out_channels:d}, w_dim={self.w_dim:d}'


# ----------------------------------------------------------------------------------------------------------------------
# Synthesis network.


def _default_fused_modconv(training, dtype, x):
    """Grouped (fused) modulated convolution only pays off on CUDA for inference; elsewhere scale activations."""
    if x is None or x.device.type != 'cuda' or training:
        return False
    return dtype == torch.float32 or int(x.shape[0]) == 1


@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: [upsampling conv0] + conv1 (+ ToRGB), orig/skip/resnet."""

    def __init__(self,
                 in_channels,                   # Number of input channels, 0 = first block.
                 out_channels,                  # Number of output channels.
                 w_dim,                         # Intermediate latent (W) dimensionality.
                 resolution,                    # Resolution of this block.
                 img_channels,                  # Number of output color channels.
                 is_last,                       # Is this the last block?
                 architecture='skip',           # Architecture: 'orig', 'skip', 'resnet'.
                 resample_filter=[1, 3, 3, 1],  # Low-pass filter to apply when resampling activations.
                 conv_clamp=None,               # Clamp the output of convolution layers to +-X, None = disable.
                 use_fp16=False,                # Use reduced precision for this block?
                 fp16_channels_last=False,      # Use channels-last memory format with reduced precision?
                 input_noise_channels=0,        # First block only: channels of a random input map (0 = none).
                 **layer_kwargs,                # Arguments for SynthesisLayer.
                 ):
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', not {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        self.input_noise_channels = int(input_noise_channels)
        if self.input_noise_channels < 0 or (self.input_noise_channels and in_channels != 0):
            raise ValueError(f'input_noise_channels must be >= 0 and only given to the first block, got '
                             f'{input_noise_channels} at resolution {resolution}')
        if self.input_noise_channels:
            # A spatial latent: a unit-Gaussian [k, r, r] map per sample, projected to the constant input's channels
            # by a learned [out_channels, k] matrix (zero at init: the block starts as without it). It follows
            # noise_mode like the layers' noise: fresh per call, a fixed map ('const'), or left out ('none').
            self.input_noise_weight = torch.nn.Parameter(torch.zeros([out_channels, self.input_noise_channels]))
            self.register_buffer('input_noise_const', torch.randn([self.input_noise_channels, resolution, resolution]))
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == 'skip':
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == 'resnet':
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, update_emas=False, return_features=False,
                **layer_kwargs):
        """ws: [N, num_conv + num_torgb, w_dim]. Returns (x, img) or (x, img, features) where features is the block's
        hidden activation after its convolutions ([N, out_channels, r, r], same tensor as x)."""
        del update_emas  # Accepted for StyleGAN3-style callers; this block tracks no running statistics.
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        device = ws.device
        dtype = _block_dtype(self.use_fp16, force_fp32, device)
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        if fused_modconv is None:
            with misc.suppress_tracer_warnings():
                fused_modconv = _default_fused_modconv(self.training, dtype, x if x is not None else ws)

        # Input.
        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            if self.input_noise_channels:
                x = self._add_input_noise(x, layer_kwargs.get('noise_mode', 'random'))
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            x = x.to(dtype=dtype, memory_format=memory_format)

        # Main layers.
        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        elif self.architecture == 'resnet':
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=np.sqrt(0.5), **layer_kwargs)
            x = y.add_(x)
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

        # ToRGB.
        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == 'skip':
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img.add_(y) if img is not None else y

        assert x.dtype == dtype
        assert img is None or img.dtype == torch.float32
        if return_features:
            return x, img, x
        return x, img

    def _add_input_noise(self, x, noise_mode):
        """x [N, C, r, r] plus the projected input map: fresh ('random'), the fixed buffer ('const'), none ('none')."""
        if noise_mode not in ('random', 'const', 'none'):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', not {noise_mode!r}")
        if noise_mode == 'none':
            return x
        if noise_mode == 'random':
            maps = torch.randn([x.shape[0], self.input_noise_channels, self.resolution, self.resolution],
                               device=x.device)
        else:
            maps = self.input_noise_const.unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        return x + torch.einsum('ck,nkhw->nchw', self.input_noise_weight.to(torch.float32), maps).to(x.dtype)

    def extra_repr(self):
        return f'resolution={self.resolution:d}, architecture={self.architecture:s}'


@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, img_resolution, img_resolution] (float32, about [-1, 1])."""

    def __init__(self,
                 w_dim,                      # Intermediate latent (W) dimensionality.
                 img_resolution,             # Output image resolution (power of two >= 4).
                 img_channels,               # Number of color channels.
                 channel_base=32768,         # Overall multiplier for the number of channels.
                 channel_max=512,            # Maximum number of channels in any layer.
                 num_fp16_res=0,             # Use reduced precision for the N highest resolutions.
                 channel_overrides=None,     # {resolution: channels}: these blocks' widths instead of base/max.
                 noise_resolutions=None,     # Block resolutions whose layers take noise inputs, None = all.
                 input_noise_channels=0,     # Channels of a random map added to the 4x4 constant input, 0 = none.
                 **block_kwargs,             # Arguments for SynthesisBlock.
                 ):
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}')
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        for res, channels in (channel_overrides or {}).items():
            if int(res) not in channels_dict or int(channels) < 1:
                raise ValueError(f'channel_overrides: {res}: {channels} must name a block resolution '
                                 f'{self.block_resolutions} and a width >= 1')
            channels_dict[int(res)] = int(channels)
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if noise_resolutions is not None:
            noise_resolutions = sorted({int(r) for r in noise_resolutions})
            unknown = [r for r in noise_resolutions if r not in self.block_resolutions]
            if unknown:
                raise ValueError(f'noise_resolutions: {unknown} name no block resolution {self.block_resolutions}')
            if block_kwargs.get('use_noise', True) is False:
                raise ValueError('noise_resolutions needs use_noise=True (it picks the blocks that keep their noise)')
        self.noise_resolutions = noise_resolutions

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res // 2] if res > 4 else 0
            out_channels = channels_dict[res]
            use_fp16 = (res >= fp16_resolution)
            is_last = (res == self.img_resolution)
            kwargs = dict(block_kwargs)
            if noise_resolutions is not None:
                kwargs['use_noise'] = res in noise_resolutions
            if input_noise_channels and res == 4:
                kwargs['input_noise_channels'] = input_noise_channels
            block = SynthesisBlock(in_channels, out_channels, w_dim=w_dim, resolution=res, img_channels=img_channels,
                                   is_last=is_last, use_fp16=use_fp16, **kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f'b{res}', block)

    def block_ws(self, ws):
        """Split ws [N, num_ws, w_dim] into the per-block slices (consecutive blocks share the ToRGB latent)."""
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32)
        out = []
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f'b{res}')
            out.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv
        return out

    def forward(self, ws, return_features=False, max_res=None, return_prev_img=False, **block_kwargs):
        """Returns the image, or a tuple (image, features if return_features, prev_img if return_prev_img).

        features = {resolution: hidden activations [N, C_r, r, r]}.
        max_res: stop after the block of that resolution (the image is then at max_res; needs the 'skip'
        architecture for a meaningful image at intermediate resolutions).
        return_prev_img: also return the image of the block below the last one run ([N, C, r/2, r/2], the same
        pass and noise; the 'skip' architecture): what a progressive fade-in blends with, at no extra cost.
        """
        if max_res is not None and max_res not in self.block_resolutions:
            raise ValueError(f'max_res must be one of {self.block_resolutions}, got {max_res}')
        with torch.autograd.profiler.record_function('split_ws'):
            block_ws = self.block_ws(ws)
        x = img = prev_img = None
        features = {}
        for res, cur_ws in zip(self.block_resolutions, block_ws):
            block = getattr(self, f'b{res}')
            prev_img = img
            if return_features:
                x, img, features[res] = block(x, img, cur_ws, return_features=True, **block_kwargs)
            else:
                x, img = block(x, img, cur_ws, **block_kwargs)
            if max_res is not None and res == max_res:
                if img is None:
                    raise ValueError(f'max_res={max_res} yields no image with architecture '
                                     f'{block.architecture!r}; use architecture="skip"')
                break
        if return_prev_img and prev_img is None:
            raise ValueError('return_prev_img needs a block below the last one run and the "skip" architecture')
        out = (img,) + ((features,) if return_features else ()) + ((prev_img,) if return_prev_img else ())
        return out[0] if len(out) == 1 else out

    def extra_repr(self):
        return (f'w_dim={self.w_dim:d}, num_ws={self.num_ws:d}, img_resolution={self.img_resolution:d},'
                f' img_channels={self.img_channels:d}, num_fp16_res={self.num_fp16_res:d}')


@persistence.persistent_class
class Generator(torch.nn.Module):
    """StyleGAN2 generator: G(z, c) = synthesis(mapping(z, c))."""

    def __init__(self,
                 z_dim,                      # Input latent (Z) dimensionality.
                 c_dim,                      # Conditioning label (C) dimensionality.
                 w_dim,                      # Intermediate latent (W) dimensionality.
                 img_resolution,             # Output resolution.
                 img_channels,               # Number of output color channels.
                 mapping_kwargs={},          # Arguments for MappingNetwork.
                 synthesis_kwargs={},        # Arguments for SynthesisNetwork.
                 ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        """z: [N, z_dim], c: [N, c_dim] -> image [N, img_channels, img_resolution, img_resolution]."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, **synthesis_kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Discriminator.


@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    """One resolution of the discriminator: [FromRGB] + conv0 + downsampling conv1, orig/skip/resnet."""

    def __init__(self,
                 in_channels,                   # Number of input channels, 0 = first block.
                 tmp_channels,                  # Number of intermediate channels.
                 out_channels,                  # Number of output channels.
                 resolution,                    # Resolution of this block.
                 img_channels,                  # Number of input color channels.
                 first_layer_idx,               # Index of the first layer (for freezing).
                 architecture='resnet',         # Architecture: 'orig', 'skip', 'resnet'.
                 activation='lrelu',            # Activation function.
                 resample_filter=[1, 3, 3, 1],  # Low-pass filter to apply when resampling activations.
                 conv_clamp=None,               # Clamp the output of convolution layers to +-X, None = disable.
                 use_fp16=False,                # Use reduced precision for this block?
                 fp16_channels_last=False,      # Use channels-last memory format with reduced precision?
                 freeze_layers=0,               # Freeze-D: number of layers to freeze.
                 spectral_norm=False,           # Spectral normalisation of every layer's weight?
                 ):
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', not {architecture!r}")
        if in_channels not in (0, tmp_channels):
            raise ValueError(f'in_channels must be 0 or tmp_channels ({tmp_channels}), got {in_channels}')
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))

        self.num_layers = 0

        def trainable_gen():
            while True:
                layer_idx = self.first_layer_idx + self.num_layers
                trainable = (layer_idx >= freeze_layers)
                self.num_layers += 1
                yield trainable
        trainable_iter = trainable_gen()

        if in_channels == 0 or architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=next(trainable_iter), spectral_norm=spectral_norm, conv_clamp=conv_clamp,
                                       channels_last=self.channels_last)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=next(trainable_iter), spectral_norm=spectral_norm, conv_clamp=conv_clamp,
                                 channels_last=self.channels_last)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=next(trainable_iter), spectral_norm=spectral_norm, resample_filter=resample_filter,
                                 conv_clamp=conv_clamp, channels_last=self.channels_last)
        if architecture == 'resnet':
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=next(trainable_iter), spectral_norm=spectral_norm, resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False, update_emas=False):
        """x: [N, in_channels, r, r] or None, img: [N, img_channels, r, r] or None -> (x at r/2, img at r/2 or None)."""
        del update_emas
        ref = x if x is not None else img
        dtype = _block_dtype(self.use_fp16, force_fp32, ref.device)
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format

        # Input.
        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype=dtype, memory_format=memory_format)

        # FromRGB.
        if self.in_channels == 0 or self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == 'skip' else None

        # Main layers.
        if self.architecture == 'resnet':
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y.add_(x)
        else:
            x = self.conv0(x)
            x = self.conv1(x)

        assert x.dtype == dtype
        return x, img

    def extra_repr(self):
        return f'resolution={self.resolution:d}, architecture={self.architecture:s}'


@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    """Appends the standard deviation across groups of samples as extra feature maps.

    Sample n belongs to group n % (N // G) (groups are strided across the batch); N must be divisible by the group
    size G = min(group_size, N).
    """

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        N, C, H, W = x.shape
        with misc.suppress_tracer_warnings():
            G = min(torch.as_tensor(self.group_size), torch.as_tensor(N)) if self.group_size is not None else N
        G = int(G)
        if N % G != 0:
            raise ValueError(f'minibatch-std: batch size {N} is not divisible by the group size {G}')
        F = self.num_channels
        c = C // F
        y = x.reshape(G, -1, F, c, H, W)    # [G, n, F, c, H, W]: group members along dim 0.
        y = y - y.mean(dim=0)               # Center each group.
        y = y.square().mean(dim=0)          # Variance over the group.
        y = (y + 1e-8).sqrt()               # Standard deviation.
        y = y.mean(dim=[2, 3, 4])           # Average over channels and pixels: [n, F].
        y = y.reshape(-1, F, 1, 1)
        y = y.repeat(G, 1, H, W)            # [N, F, H, W].
        return torch.cat([x, y], dim=1)

    def extra_repr(self):
        return f'group_size={self.group_size}, num_channels={self.num_channels:d}'


@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    """Final 4x4 block: [FromRGB] + minibatch-std + conv + fc + output (projected onto the label embedding)."""

    def __init__(self,
                 in_channels,                # Number of input channels.
                 cmap_dim,                   # Dimensionality of mapped conditioning label, 0 = no label.
                 resolution,                 # Resolution of this block.
                 img_channels,               # Number of input color channels.
                 architecture='resnet',      # Architecture: 'orig', 'skip', 'resnet'.
                 mbstd_group_size=4,         # Group size for the minibatch standard deviation layer, None = all.
                 mbstd_num_channels=1,       # Number of features for the minibatch standard deviation layer, 0 = off.
                 activation='lrelu',         # Activation function.
                 conv_clamp=None,            # Clamp the output of convolution layers to +-X, None = disable.
                 spectral_norm=False,        # Spectral normalisation of every layer's weight?
                 ):
        if architecture not in ('orig', 'skip', 'resnet'):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', not {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture

        sn = dict(spectral_norm=True) if spectral_norm else {}
        if architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation, **sn)
        self.mbstd = MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels) \
            if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp, **sn)
        self.fc = FullyConnectedLayer(in_channels * (resolution ** 2), in_channels, activation=activation, **sn)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim, **sn)

    def forward(self, x, img, cmap, force_fp32=False):
        """x: [N, in_channels, 4, 4] -> scores [N, 1]."""
        del force_fp32  # The epilogue always runs in float32.
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        dtype = torch.float32
        memory_format = torch.contiguous_format
        x = x.to(dtype=dtype, memory_format=memory_format)
        if self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=dtype, memory_format=memory_format)
            x = x + self.fromrgb(img)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        assert x.dtype == dtype
        return x

    def extra_repr(self):
        return f'resolution={self.resolution:d}, architecture={self.architecture:s}'


@persistence.persistent_class
class Discriminator(torch.nn.Module):
    """StyleGAN2 discriminator: image [N, C, R, R] (+ label [N, c_dim]) -> realness score [N, 1]."""

    def __init__(self,
                 c_dim,                      # Conditioning label (C) dimensionality.
                 img_resolution,             # Input resolution.
                 img_channels,               # Number of input color channels.
                 architecture='resnet',      # Architecture: 'orig', 'skip', 'resnet'.
                 channel_base=32768,         # Overall multiplier for the number of channels.
                 channel_max=512,            # Maximum number of channels in any layer.
                 num_fp16_res=0,             # Use reduced precision for the N highest resolutions.
                 conv_clamp=None,            # Clamp the output of convolution layers to +-X, None = disable.
                 cmap_dim=None,              # Dimensionality of mapped conditioning label, None = default.
                 block_kwargs={},            # Arguments for DiscriminatorBlock.
                 mapping_kwargs={},          # Arguments for MappingNetwork.
                 epilogue_kwargs={},         # Arguments for DiscriminatorEpilogue.
                 spectral_norm=False,        # Spectral normalisation of all conv/fc weights (not the label mapping).
                 ):
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}')
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        if cmap_dim is None:
            cmap_dim = channels_dict[4]
        if c_dim == 0:
            cmap_dim = 0

        common_kwargs = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        if spectral_norm:
            common_kwargs['spectral_norm'] = True  # Only passed when on: default init_kwargs stay NVIDIA-like.
        cur_layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res] if res < img_resolution else 0
            tmp_channels = channels_dict[res]
            out_channels = channels_dict[res // 2]
            use_fp16 = (res >= fp16_resolution)
            block = DiscriminatorBlock(in_channels, tmp_channels, out_channels, resolution=res,
                                       first_layer_idx=cur_layer_idx, use_fp16=use_fp16, **block_kwargs,
                                       **common_kwargs)
            setattr(self, f'b{res}', block)
            cur_layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels_dict[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs,
                                        **common_kwargs)

    def forward(self, img, c, update_emas=False, **block_kwargs):
        """img: [N, img_channels, R, R] float, c: [N, c_dim] -> scores [N, 1] (float32)."""
        del update_emas
        in_res = img.shape[-1]
        if in_res != self.img_resolution:
            # Progressive growing: a lower-resolution image enters at its own block's FromRGB (skip architecture).
            if self.b4.architecture != 'skip' or in_res not in self.block_resolutions:
                raise ValueError(f'D got {in_res}x{in_res} images but was built for {self.img_resolution}; lower '
                                 f'resolutions need architecture="skip" and a power of two >= 8')
        misc.assert_shape(img, [None, self.img_channels, in_res, in_res])
        x = None
        for res in self.block_resolutions:
            if res > in_res:
                continue
            block = getattr(self, f'b{res}')
            x, img = block(x, img, **block_kwargs)

        cmap = None
        if self.c_dim > 0:
            cmap = self.mapping(None, c)
        x = self.b4(x, img, cmap)
        return x

    def extra_repr(self):
        return f'c_dim={self.c_dim:d}, img_resolution={self.img_resolution:d}, img_channels={self.img_channels:d}'
