"""Throughput of the StyleGAN2 networks at the benchmark configuration (prints figures, asserts nothing).

Configuration (issue "host core"): 32x32 RGB, channel_base 4096, channel_max 128, mapping 2 layers, batch 32,
minibatch-std group 4, D resnet / G skip. Two measurements per precision mode:

* fwd_bwd: G forward + D forward + backward of D's score to both networks (img/s);
* step:    a full optimisation step as the StyleGAN2 loss does it: G step (non-saturating loss), D step (fakes and
           reals), and lazy R1 on reals every 16 iterations (gamma 0.01, loss x16); Adam on both (img/s counts the
           batch once per iteration).

Modes: fp32, and bf16 = the networks' reduced-precision blocks (num_fp16_res=4: blocks at 8..32 px run in bfloat16 on
CPU with float32 master weights; conv_clamp 256). Every mode runs in its own subprocess so peak RSS is per mode.

    python bench/bench_networks.py                      # fp32 and bf16, 2 warm-up + 8 timed iterations
    python bench/bench_networks.py --modes fp32 --iters 16
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.bench_child import emit_result, run_child  # noqa: E402

BATCH = 32
RES = 32


def build(mode, device):
    from training import networks
    fp16 = 4 if mode == 'bf16' else 0
    clamp = 256 if mode == 'bf16' else None
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=RES, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=4096, channel_max=128, num_fp16_res=fp16,
                                                 conv_clamp=clamp)).to(device).train()
    D = networks.Discriminator(c_dim=0, img_resolution=RES, img_channels=3, channel_base=4096, channel_max=128,
                               num_fp16_res=fp16, conv_clamp=clamp,
                               epilogue_kwargs=dict(mbstd_group_size=4)).to(device).train()
    return G, D


def run_fwd_bwd(G, D, device, iters, warmup):
    c = torch.zeros([BATCH, 0], device=device)
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        z = torch.randn([BATCH, G.z_dim], device=device)
        img = G(z, c)
        D(img, c).sum().backward()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def run_step(G, D, device, iters, warmup, r1_gamma=0.01, r1_interval=16):
    F = torch.nn.functional
    c = torch.zeros([BATCH, 0], device=device)
    opt_G = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99), eps=1e-8)
    ratio = r1_interval / (r1_interval + 1)
    opt_D = torch.optim.Adam(D.parameters(), lr=0.0025 * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)
    reals = torch.randn([BATCH, 3, RES, RES], device=device).clamp(-1, 1)
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        # G step.
        G.requires_grad_(True)
        D.requires_grad_(False)
        opt_G.zero_grad(set_to_none=True)
        z = torch.randn([BATCH, G.z_dim], device=device)
        F.softplus(-D(G(z, c), c)).mean().backward()
        opt_G.step()
        # D step: fakes + reals.
        G.requires_grad_(False)
        D.requires_grad_(True)
        opt_D.zero_grad(set_to_none=True)
        z = torch.randn([BATCH, G.z_dim], device=device)
        with torch.no_grad():
            fake = G(z, c)
        loss = F.softplus(D(fake, c)).mean() + F.softplus(-D(reals, c)).mean()
        loss.backward()
        # Lazy R1.
        if i % r1_interval == 0:
            x = reals.detach().requires_grad_(True)
            score = D(x, c)
            (grad,) = torch.autograd.grad(score.sum(), x, create_graph=True)
            (grad.square().sum([1, 2, 3]) * (r1_gamma / 2) * r1_interval).mean().backward()
        opt_D.step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def child(args):
    from torch_utils.cpu_allocator import tune_cpu_allocator
    tune_cpu_allocator()
    device = torch.device(args.device)
    torch.manual_seed(0)
    G, D = build(args.mode, device)
    out = {'mode': args.mode, 'device': str(device), 'threads': torch.get_num_threads()}
    # R1 every 16 iterations: time whole cycles of 16 so the average includes it exactly once per 16.
    step_iters = max(16, (args.iters // 16) * 16) if args.what in ('step', 'all') else 0
    if args.what in ('fwd_bwd', 'all'):
        t = run_fwd_bwd(G, D, device, args.iters, args.warmup)
        out['fwd_bwd_img_s'] = BATCH * len(t) / sum(t)
    if args.what in ('step', 'all'):
        t = run_step(G, D, device, step_iters, args.warmup)
        out['step_img_s'] = BATCH * len(t) / sum(t)
        out['step_iters'] = step_iters
    if device.type == 'cuda':
        out['peak_mb'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        out['peak_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit_result(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--modes', default='fp32,bf16')
    parser.add_argument('--what', default='all', choices=['fwd_bwd', 'step', 'all'])
    parser.add_argument('--iters', type=int, default=16)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--mode', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        return child(args)

    results = []
    for mode in args.modes.split(','):
        cmd = [sys.executable, __file__, '--mode', mode, '--what', args.what, '--iters', str(args.iters),
               '--warmup', str(args.warmup), '--device', args.device]
        result = run_child(cmd, mode)
        if result is not None:
            results.append(result)

    base = next((r for r in results if r['mode'] == 'fp32'), None)
    print(f'StyleGAN2 32x32, channel_base 4096, channel_max 128, batch {BATCH}, device {args.device}, '
          f'torch {torch.__version__}, threads {torch.get_num_threads()}')
    if args.device == 'cpu':
        from torch_utils import cpu_features
        print(f'CPU: torch capability {cpu_features.capability()}, native bfloat16 in oneDNN: '
              f'{cpu_features.native_bf16()} (bf16 is emulated, and slow, where this is False)')
    print(f'{"mode":6s} {"G+D fwd/bwd img/s":>18s} {"full step img/s":>16s} {"vs fp32":>8s} {"peak MB":>9s}'
          f'  (vs fp32: the full step, else fwd/bwd)')
    for r in results:
        key = 'step_img_s' if base and base.get('step_img_s') else 'fwd_bwd_img_s'  # the last measured column
        ratio = r.get(key, float('nan')) / base[key] if base and base.get(key) else float('nan')
        print(f'{r["mode"]:6s} {r.get("fwd_bwd_img_s", float("nan")):18.1f} {r.get("step_img_s", float("nan")):16.1f}'
              f' {ratio:8.2f} {r["peak_mb"]:9.0f}')


if __name__ == '__main__':
    main()
