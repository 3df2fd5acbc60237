"""metrics/metric_main.py: registry, calc_metric / report_metric (jsonl record), metrics evaluated end to end with
a generator that replays the dataset (so exact answers are known), per-resolution metrics, PPL, and a two-process
(gloo) run of the gather / broadcast paths."""

import glob
import json
import os

import numpy as np
import pytest
import scipy.linalg
import torch

import dnnlib
from metrics import frechet_inception_distance, inception_score, kernel_inception_distance, metric_main
from metrics import metric_utils, precision_recall, sliced_wasserstein
from metrics.metric_utils import FeatureStats
from test_metrics_fakes import FakeDetector, MemoryDataset, TinyGenerator, memory_dataset_kwargs

NUM_REAL = 50


class ReplayGenerator(torch.nn.Module):
    """Returns the given uint8 images in order, cyclically (z only sets the batch size); values chosen so that
    the metric pipeline's uint8 conversion gives back exactly the stored images."""

    def __init__(self, images_uint8):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = 4, 0, 4
        self.img_channels, self.img_resolution = int(images_uint8.shape[1]), int(images_uint8.shape[2])
        self.register_buffer('images', (images_uint8.to(torch.float32) - 127.75) / 127.5)
        self.next_index = 0

    def forward(self, z, c, **kwargs):
        idx = (self.next_index + torch.arange(z.shape[0])) % self.images.shape[0]
        self.next_index += z.shape[0]
        return self.images[idx.to(self.images.device)]


def dataset_images(shift=0, **kwargs):
    ds = MemoryDataset(num_images=NUM_REAL, resolution=16, shift=shift, **kwargs)
    return torch.tensor(np.stack([ds[i][0] for i in range(len(ds))]))


def dataset_kwargs():
    return memory_dataset_kwargs(num_images=NUM_REAL, resolution=16)


@pytest.fixture(autouse=True)
def fake_detectors(monkeypatch, tmp_path):
    """Every detector is the FakeDetector; the dnnlib cache lives in tmp_path."""
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setattr(metric_utils, 'get_feature_detector',
                        lambda url, device=torch.device('cpu'), **kwargs: FakeDetector().to(device))


# Small metrics built from the same compute functions as the standard ones (registered once, at import).

@metric_main.register_metric
def tiny_fid1k(opts):
    return dict(tiny_fid1k=frechet_inception_distance.compute_fid(opts, max_real=None, num_gen=1000))


@metric_main.register_metric
def tiny_kid(opts):
    return dict(tiny_kid=kernel_inception_distance.compute_kid(opts, max_real=None, num_gen=500, num_subsets=20,
                                                               max_subset_size=40))


@metric_main.register_metric
def tiny_pr(opts):
    p, r = precision_recall.compute_pr(opts, max_real=None, num_gen=NUM_REAL, nhood_size=3, row_batch_size=16,
                                       col_batch_size=16)
    return dict(tiny_pr_precision=p, tiny_pr_recall=r)


@metric_main.register_metric
def tiny_is(opts):
    mean, std = inception_score.compute_is(opts, num_gen=NUM_REAL * 10, num_splits=10)
    return dict(tiny_is_mean=mean, tiny_is_std=std)


@metric_main.register_metric
def tiny_swd(opts):
    per_level, mean = sliced_wasserstein.compute_swd(opts, num_images=NUM_REAL, patches_per_image=8,
                                                     dirs_per_repeat=32)
    return metric_main.swd_results('tiny_swd', per_level, mean)


metric_main.register_per_resolution_metric('tiny_swd')
metric_main.register_per_resolution_metric('tiny_fid1k', name='tiny_fid1k_pyr', resolutions=[8, 16])

# ---------------------------------------------------------------------------------------------------------------
# Registry


def test_standard_names_registered():
    names = metric_main.list_valid_metrics()
    for name in ['fid50k_full', 'kid50k_full', 'pr50k3_full', 'is50k', 'ppl2_wend', 'fid50k', 'kid50k', 'pr50k3',
                 'ppl_zfull', 'ppl_wfull', 'ppl_zend', 'ppl_wend', 'fid10k_full', 'kid10k_full', 'pr10k3_full',
                 'is10k', 'ppl2k_wend', 'swd', 'swd2k', 'swd_multires', 'fid10k_full_multires']:
        assert name in names and metric_main.is_valid_metric(name)
    assert not metric_main.is_valid_metric('fid51k')


def test_register_plugin_metric_and_errors():
    @metric_main.register_metric
    def plugin_answer(opts):
        return dict(plugin_answer=42, plugin_batch=opts.batch_size)

    @metric_main.register_metric(name='plugin_renamed')
    def some_function(opts):
        return dict(x=np.float32(1.5))

    try:
        result = metric_main.calc_metric('plugin_answer', device='cpu', batch_size=7)
        assert result.results == dict(plugin_answer=42.0, plugin_batch=7.0)
        assert isinstance(result.results, dnnlib.EasyDict) and result.metric == 'plugin_answer'
        assert result.num_gpus == 1 and result.total_time >= 0 and isinstance(result.total_time_str, str)
        assert type(metric_main.calc_metric('plugin_renamed', device='cpu').results.x) is float
    finally:
        metric_main.unregister_metric('plugin_answer')
        metric_main.unregister_metric('plugin_renamed')
    assert not metric_main.is_valid_metric('plugin_answer')
    with pytest.raises(ValueError, match='valid metrics: fid50k_full, kid50k_full'):
        metric_main.calc_metric('plugin_answer')
    with pytest.raises(ValueError, match='invalid metric name'):
        metric_main.register_metric(lambda opts: {}, name='bad name')
    with pytest.raises(ValueError, match='unknown base metric'):
        metric_main.register_per_resolution_metric('no_such_metric')


def test_report_metric_jsonl_record(tmp_path, capsys):
    result = dnnlib.EasyDict(results=dnnlib.EasyDict(fid50k_full=12.34), metric='fid50k_full', total_time=789.0,
                             total_time_str='13m 09s', num_gpus=1)
    snapshot = os.path.join(str(tmp_path), 'network-snapshot-000200.pkl')
    metric_main.report_metric(result, run_dir=str(tmp_path), snapshot_pkl=snapshot)
    metric_main.report_metric(result, run_dir=str(tmp_path), snapshot_pkl=snapshot)
    lines = (tmp_path / 'metric-fid50k_full.jsonl').read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert list(record) == ['results', 'metric', 'total_time', 'total_time_str', 'num_gpus', 'snapshot_pkl',
                            'timestamp']
    assert record['results'] == {'fid50k_full': 12.34} and record['metric'] == 'fid50k_full'
    assert record['snapshot_pkl'] == 'network-snapshot-000200.pkl' and record['total_time_str'] == '13m 09s'
    assert abs(record['timestamp'] - __import__('time').time()) < 60
    assert capsys.readouterr().out.splitlines()[0] == lines[0]
    # Without a run folder: printed only, snapshot path kept as given.
    line = metric_main.report_metric(result, run_dir=None, snapshot_pkl='/x/y.pkl')
    assert json.loads(line)['snapshot_pkl'] == '/x/y.pkl'
    assert len((tmp_path / 'metric-fid50k_full.jsonl').read_text().splitlines()) == 2


# ---------------------------------------------------------------------------------------------------------------
# Metrics end to end (replayed dataset images as "generated" images)


def _calc(metric, G, **kwargs):
    kwargs.setdefault('dataset_kwargs', dataset_kwargs())
    kwargs.setdefault('batch_gen', 16)
    return metric_main.calc_metric(metric, G=G, device='cpu', **kwargs).results


def _fake_features(images, **kwargs):
    return FakeDetector()(images, **kwargs).double().numpy()


def test_fid_end_to_end_zero_for_replay_and_matches_direct_formula():
    fid_same = _calc('tiny_fid1k', ReplayGenerator(dataset_images()))['tiny_fid1k']
    assert abs(fid_same) < 1e-9

    shifted = dataset_images(shift=25)
    fid_shift = _calc('tiny_fid1k', ReplayGenerator(shifted))['tiny_fid1k']
    real, fake = _fake_features(dataset_images(), return_features=True), _fake_features(shifted, return_features=True)
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = np.cov(real, rowvar=False, bias=True), np.cov(fake, rowvar=False, bias=True)
    direct = np.sum((mu_r - mu_f) ** 2) + np.trace(s_r + s_f - 2 * scipy.linalg.sqrtm(s_r @ s_f).real)
    assert fid_shift == pytest.approx(direct, rel=1e-5) and fid_shift > 1e-3


def test_calc_metric_draws_from_its_own_seed_and_restores_the_callers_rng():
    import random

    @metric_main.register_metric
    def rng_draws(opts):
        del opts
        return dict(t=torch.rand([]).item(), n=np.random.rand(), p=random.random())

    def caller_draws():
        return torch.rand([]).item(), np.random.rand(), random.random()
    try:
        torch.manual_seed(5), np.random.seed(5), random.seed(5)
        expected_next = caller_draws()
        torch.manual_seed(5), np.random.seed(5), random.seed(5)
        first = metric_main.calc_metric('rng_draws', device='cpu').results
        assert caller_draws() == expected_next  # the caller's streams are where they were
        torch.manual_seed(123), np.random.seed(123), random.seed(123)
        assert metric_main.calc_metric('rng_draws', device='cpu').results == first  # independent of the caller
        other = metric_main.calc_metric('rng_draws', device='cpu', seed=1).results
        assert other['t'] != first['t'] and other['n'] != first['n'] and other['p'] != first['p']
        torch.manual_seed(0)
        assert first['t'] == torch.rand([]).item()  # seed 0 + rank 0 is the metric's stream
    finally:
        metric_main.unregister_metric('rng_draws')


def test_metric_value_does_not_depend_on_the_dataset_cache(tmp_path, monkeypatch):
    """The real-image pass runs only on a cache miss; the fakes must be the same either way."""
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    torch.manual_seed(1)
    G = TinyGenerator(noise_strength=0.5)
    kw = dict(G=G, dataset_kwargs=memory_dataset_kwargs(num_images=64, resolution=16, channels=3, seed=2),
              device='cpu', data_loader_kwargs=dict(num_workers=0))
    miss = metric_main.calc_metric('fake_swd64', **kw).results
    assert glob.glob(str(tmp_path / 'cache' / 'gan-metrics' / '*.pkl'))
    hit = metric_main.calc_metric('fake_swd64', **kw).results
    assert hit == miss
    assert metric_main.calc_metric('fake_swd64', seed=3, **kw).results != miss


@pytest.mark.cuda
def test_fid_and_swd_end_to_end_on_cuda_match_cpu():
    shifted = dataset_images(shift=25)
    fid_cpu = _calc('tiny_fid1k', ReplayGenerator(shifted))['tiny_fid1k']
    fid_gpu = metric_main.calc_metric('tiny_fid1k', G=ReplayGenerator(shifted), dataset_kwargs=dataset_kwargs(),
                                      device='cuda').results['tiny_fid1k']
    assert fid_gpu == pytest.approx(fid_cpu, rel=1e-4)
    kw = dict(batch_size=NUM_REAL, batch_gen=5, dataset_kwargs=dataset_kwargs())
    swd_cpu = metric_main.calc_metric('tiny_swd', G=ReplayGenerator(shifted), device='cpu', **kw).results
    swd_gpu = metric_main.calc_metric('tiny_swd', G=ReplayGenerator(shifted), device='cuda', **kw).results
    assert swd_gpu['tiny_swd'] == pytest.approx(swd_cpu['tiny_swd'], rel=1e-4)


def test_kid_end_to_end_small_for_replay_large_for_shift():
    kid_same = _calc('tiny_kid', ReplayGenerator(dataset_images()))['tiny_kid']
    kid_shift = _calc('tiny_kid', ReplayGenerator(dataset_images(shift=40)))['tiny_kid']
    assert kid_shift > 0 and abs(kid_same) < 0.05 * kid_shift


def test_precision_recall_end_to_end():
    res = _calc('tiny_pr', ReplayGenerator(dataset_images()))
    assert res == dict(tiny_pr_precision=1.0, tiny_pr_recall=1.0)
    far = ReplayGenerator(torch.full([NUM_REAL, 3, 16, 16], 255, dtype=torch.uint8))  # one far-away white image
    res = _calc('tiny_pr', far)
    assert res['tiny_pr_precision'] == 0.0 and res['tiny_pr_recall'] == 0.0


def test_inception_score_end_to_end_matches_direct():
    res = _calc('tiny_is', ReplayGenerator(dataset_images()))
    probs = _fake_features(dataset_images(), no_output_bias=True)
    py = probs.mean(0)
    expected = np.exp(np.mean(np.sum(probs * np.log(probs / py), axis=1)))  # every split is the whole dataset
    assert res['tiny_is_mean'] == pytest.approx(expected, rel=1e-5)
    assert res['tiny_is_std'] == pytest.approx(0, abs=1e-5)


def test_swd_end_to_end_zero_for_replay_and_monotone():
    kw = dict(batch_size=NUM_REAL, batch_gen=5)  # same batches for real and fake: same patch positions
    same = _calc('tiny_swd', ReplayGenerator(dataset_images()), **kw)
    assert same == dict(tiny_swd=0.0, tiny_swd_lvl16=0.0)
    values = [_calc('tiny_swd', ReplayGenerator(dataset_images(shift=s)), **kw)['tiny_swd'] for s in (5, 15, 30)]
    assert 0 < values[0] < values[1] < values[2]


def test_swd_end_to_end_grayscale_keeps_one_channel():
    kw = dict(batch_size=NUM_REAL, batch_gen=5, dataset_kwargs=memory_dataset_kwargs(num_images=NUM_REAL,
                                                                                     resolution=16, channels=1))
    gray = dataset_images(channels=1)
    assert _calc('tiny_swd', ReplayGenerator(gray), **kw)['tiny_swd'] == 0.0
    assert _calc('tiny_swd', ReplayGenerator(gray // 2), **kw)['tiny_swd'] > 0


def test_standard_swd2k_runs_with_tiny_generator():
    res = _calc('swd2k', TinyGenerator(img_resolution=32), dataset_kwargs=memory_dataset_kwargs(num_images=64,
                                                                                           resolution=32))
    assert set(res) == {'swd2k', 'swd2k_lvl32', 'swd2k_lvl16'}
    assert res['swd2k'] == pytest.approx((res['swd2k_lvl32'] + res['swd2k_lvl16']) / 2) and res['swd2k'] > 0


def test_per_resolution_swd_with_and_without_pyramid_fn():
    kw = dict(batch_size=NUM_REAL, batch_gen=5)
    G = ReplayGenerator(dataset_images())
    res = _calc('tiny_swd_multires', G, **kw)
    assert set(res) == {f'tiny_swd_res{r}' for r in (4, 8, 16)} | {f'tiny_swd_lvl{r}_res{r}' for r in (4, 8, 16)}
    assert all(v == 0.0 for v in res.values())  # fakes downscaled exactly like the reals

    def brighter_low_res(G, z, c, **kwargs):  # a pyramid whose 4 and 8 px levels are too bright
        img = G(z, c, **kwargs)
        pool = torch.nn.functional.avg_pool2d
        return {16: img, 8: pool(img, 2) + 0.1, 4: pool(img, 4) + 0.2}

    res = _calc('tiny_swd_multires', G, G_pyramid_fn=brighter_low_res, **kw)
    assert res['tiny_swd_res16'] == 0.0 and res['tiny_swd_res8'] > 0 and res['tiny_swd_res4'] > 0


def test_per_resolution_metric_with_registered_pyramid_fn():
    def darker_8px(G, z, c, **kwargs):
        img = G(z, c, **kwargs)
        return [img, torch.nn.functional.avg_pool2d(img, 2) - 0.2]

    fn = metric_main.make_per_resolution_metric('tiny_swd', name='plugin_swd', G_pyramid_fn=darker_8px)
    assert not metric_main.is_valid_metric('plugin_swd')
    metric_main.register_metric(fn)  # what a training hook given only register_metric does
    try:
        res = _calc('plugin_swd', ReplayGenerator(dataset_images()), batch_size=NUM_REAL, batch_gen=5)
    finally:
        metric_main.unregister_metric('plugin_swd')
    assert set(res) == {'tiny_swd_res8', 'tiny_swd_lvl8_res8', 'tiny_swd_res16', 'tiny_swd_lvl16_res16'}
    assert res['tiny_swd_res16'] == 0.0 and res['tiny_swd_res8'] > 0
    with pytest.raises(ValueError, match='pyramid_filter'):
        metric_main.register_per_resolution_metric('tiny_swd', name='x', pyramid_filter='bicubic')


def test_per_resolution_fid_fixed_resolutions():
    res = _calc('tiny_fid1k_pyr', ReplayGenerator(dataset_images()))
    assert set(res) == {'tiny_fid1k_res8', 'tiny_fid1k_res16'} and max(abs(v) for v in res.values()) < 1e-9


def test_pyramid_resolutions_defaults():
    opts = metric_utils.MetricOptions(G=TinyGenerator(img_resolution=32), device='cpu')
    assert metric_main.pyramid_resolutions(opts) == [4, 8, 16, 32]
    assert metric_main.pyramid_resolutions(opts.replace(pyramid_resolutions=[8, 16])) == [8, 16]
    from test_metrics_fakes import tiny_pyramid_fn
    assert metric_main.pyramid_resolutions(opts.replace(G_pyramid_fn=tiny_pyramid_fn)) == [8, 16, 32]


def test_ppl2k_wend_matches_closed_form_for_linear_generator():
    # Linear G: img = z A B; the stand-in LPIPS stack is (img + 1) / 2, so d = |(z1 - z0) A B|^2 / 4 and
    # E[d] = |A B|_F^2 / 2 (before the 1%..99% trimming, which lowers it slightly).
    torch.manual_seed(0)
    G = TinyGenerator(z_dim=8, w_dim=8, img_resolution=8, use_tanh=False)
    res = _calc('ppl2k_wend', G, dataset_kwargs={})
    AB = (G.mapping.weight @ G.synthesis.weight).detach().double()
    expected = float(AB.square().sum()) / 2
    assert 0.85 * expected < res['ppl2k_wend'] < 1.02 * expected
    with pytest.raises(ValueError, match='per-resolution'):
        metric_main.calc_metric('ppl2k_wend', G=G, device='cpu', eval_resolution=4)


def test_dataset_metric_without_dataset_fails_clearly():
    with pytest.raises(ValueError, match='dataset_kwargs is empty'):
        metric_main.calc_metric('tiny_fid1k', G=TinyGenerator(), device='cpu')


# ---------------------------------------------------------------------------------------------------------------
# Two processes joined with gloo: gather, distance broadcast, result broadcast.


def _two_rank_worker(rank, init_file, out_dir, real, gen):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        metric_utils.get_feature_detector = lambda url, **kwargs: FakeDetector()
        os.environ['DNNLIB_CACHE_DIR'] = os.path.join(out_dir, 'cache')
        stats = FeatureStats(capture_all=True)
        stats.append_torch(torch.tensor([[rank * 100.0 + i] for i in range(3)]), num_gpus=2, rank=rank)
        gathered = stats.get_all()[:, 0].tolist()
        pr = precision_recall.precision_recall(real, gen, nhood_size=3, row_batch_size=9, col_batch_size=7,
                                               num_gpus=2, rank=rank)
        fid = metric_main.calc_metric('tiny_fid1k', G=ReplayGenerator(dataset_images(shift=25)),
                                      dataset_kwargs=dataset_kwargs(), num_gpus=2, rank=rank, device='cpu')
        with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(dict(gathered=gathered, pr=pr, fid=fid.results.tiny_fid1k), f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
    rng = np.random.RandomState(0)
    real, gen = torch.tensor(rng.randn(40, 4)), torch.tensor(rng.randn(30, 4) + 0.5)
    torch.multiprocessing.spawn(_two_rank_worker, args=(str(tmp_path / 'init'), str(tmp_path), real, gen), nprocs=2)
    single_pr = precision_recall.precision_recall(real, gen, nhood_size=3)
    single_fid = _calc('tiny_fid1k', ReplayGenerator(dataset_images(shift=25)))['tiny_fid1k']
    for rank in range(2):
        out = json.loads((tmp_path / f'rank{rank}.json').read_text())
        assert out['gathered'] == [0.0, 100.0, 1.0, 101.0, 2.0, 102.0]  # rows interleaved by rank
        if rank == 0:
            assert out['pr'] == pytest.approx(list(single_pr))
        assert out['fid'] == pytest.approx(single_fid, rel=1e-6)  # broadcast from rank 0 to every rank
