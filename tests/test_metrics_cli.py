"""calc_metrics.py end to end: a tiny network pickle in a run folder, an in-memory / image-folder / built-in
dataset, a TorchScript stand-in detector loaded from disk; jsonl records, defaults and error messages."""

import json
import os
import pickle

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import calc_metrics
from metrics import frechet_inception_distance, metric_main
from test_metrics_fakes import (TinyDiscriminator, TinyGenerator, memory_dataset_kwargs, save_scripted_detector)


@metric_main.register_metric
def cli_fid200(opts):
    return dict(cli_fid200=frechet_inception_distance.compute_fid(opts, max_real=None, num_gen=200))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.delenv('GAN_INCEPTION_URL', raising=False)
    monkeypatch.delenv('GAN_VGG16_URL', raising=False)


def write_network(folder, training_options=True, img_resolution=16, training_set_kwargs='default'):
    os.makedirs(folder, exist_ok=True)
    G = TinyGenerator(img_resolution=img_resolution).eval().requires_grad_(False)
    if training_set_kwargs == 'default':
        training_set_kwargs = memory_dataset_kwargs(num_images=40, resolution=img_resolution, use_labels=True)
    data = dict(G=G, D=TinyDiscriminator(), G_ema=G, augment_pipe=None, training_set_kwargs=training_set_kwargs)
    path = os.path.join(folder, 'network-snapshot-000000.pkl')
    with open(path, 'wb') as f:
        pickle.dump(data, f)
    if training_options:
        with open(os.path.join(folder, 'training_options.json'), 'w') as f:
            json.dump(dict(batch_size=4), f)
    return path


def run_cli(args):
    result = CliRunner().invoke(calc_metrics.calc_metrics, args)
    return result


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith('{')]


def test_end_to_end_writes_jsonl_in_run_folder(tmp_path):
    pkl = write_network(tmp_path / 'run')
    det = save_scripted_detector(tmp_path / 'fake-inception.pt')
    result = run_cli(['--network', pkl, '--metrics', 'cli_fid200,fake_swd64', '--detector', det, '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    printed = json_lines(result.output)
    assert [r['metric'] for r in printed] == ['cli_fid200', 'fake_swd64']
    for name in ['cli_fid200', 'fake_swd64']:
        (record,) = [json.loads(line) for line in (tmp_path / 'run' / f'metric-{name}.jsonl').read_text().splitlines()]
        assert record['snapshot_pkl'] == 'network-snapshot-000000.pkl' and record['num_gpus'] == 1
        assert set(record) == {'results', 'metric', 'total_time', 'total_time_str', 'num_gpus', 'snapshot_pkl',
                               'timestamp'}
    fid = printed[0]['results']['cli_fid200']
    assert np.isfinite(fid) and fid > 0
    assert set(printed[1]['results']) == {'fake_swd64', 'fake_swd64_lvl16'} and printed[1]['results']['fake_swd64'] > 0
    assert 'Calculating cli_fid200' in result.output and 'generator features  items 200' in result.output


def test_no_run_folder_prints_only(tmp_path):
    pkl = write_network(tmp_path / 'loose', training_options=False)
    result = run_cli(['--network', pkl, '--metrics', 'fake_swd64', '--device', 'cpu', '--verbose', 'false'])
    assert result.exit_code == 0, result.output
    assert [r['metric'] for r in json_lines(result.output)] == ['fake_swd64']
    assert not any(name.endswith('.jsonl') for name in os.listdir(tmp_path / 'loose'))


def test_data_override_image_folder_and_builtin(tmp_path):
    pkl = write_network(tmp_path / 'run', training_set_kwargs=None)
    folder = tmp_path / 'images'
    folder.mkdir()
    rng = np.random.RandomState(0)
    for i in range(20):
        PIL.Image.fromarray(rng.randint(0, 256, [16, 16, 3], dtype=np.uint8)).save(folder / f'{i:03d}.png')
    for data in [str(folder), 'toy-shapes:res=16,num=30']:
        result = run_cli(['--network', pkl, '--metrics', 'fake_swd64', '--data', data, '--device', 'cpu',
                          '--mirror', 'true'])
        assert result.exit_code == 0, result.output
        assert json_lines(result.output)[0]['results']['fake_swd64'] > 0


def test_errors_are_one_line(tmp_path):
    pkl = write_network(tmp_path / 'run', training_set_kwargs=None)
    result = run_cli(['--network', pkl, '--metrics', 'fid50k_full,nonsense'])
    assert result.exit_code == 2 and 'nonsense' in result.output and 'fid50k_full, kid50k_full' in result.output
    result = run_cli(['--network', str(tmp_path / 'missing.pkl'), '--metrics', 'none'])
    assert result.exit_code == 1 and 'missing.pkl' in result.output and 'Traceback' not in result.output
    result = run_cli(['--network', pkl, '--metrics', 'fake_swd64', '--data', str(tmp_path / 'nowhere'),
                      '--device', 'cpu'])
    assert result.exit_code == 1 and '--data' in result.output and 'nowhere' in result.output
    # No dataset recorded and none given: a metric that needs real images fails with a clear message.
    result = run_cli(['--network', pkl, '--metrics', 'fake_swd64', '--device', 'cpu'])
    assert result.exit_code == 1 and 'dataset_kwargs is empty' in result.output
    # Missing detector file: one line naming it.
    result = run_cli(['--network', pkl, '--metrics', 'cli_fid200', '--device', 'cpu', '--data', 'toy-shapes:res=16',
                      '--detector', str(tmp_path / 'no-detector.pt')])
    assert result.exit_code == 1 and 'no-detector.pt' in result.output and 'Traceback' not in result.output


def test_metrics_none_only_loads(tmp_path):
    pkl = write_network(tmp_path / 'run')
    result = run_cli(['--network', pkl, '--metrics', 'none', '--device', 'cpu'])
    assert result.exit_code == 0 and json_lines(result.output) == []
    assert 'Metrics: none' in result.output


def test_default_metrics_choice(monkeypatch):
    assert calc_metrics.default_metrics(None) == ['swd']
    assert calc_metrics.default_metrics('/x/inception.pt') == ['fid50k_full']
    monkeypatch.setenv('GAN_INCEPTION_URL', '/y/inception.pt')
    assert calc_metrics.default_metrics(None) == ['fid50k_full']
    assert calc_metrics.parse_metric_list('none') == []
    assert calc_metrics.parse_metric_list('swd, swd2k') == ['swd', 'swd2k']
    with pytest.raises(ValueError, match='--metrics can only contain'):
        calc_metrics.parse_metric_list('')


@pytest.mark.slow
def test_two_cpu_processes(tmp_path):
    pkl = write_network(tmp_path / 'run')
    result = run_cli(['--network', pkl, '--metrics', 'fake_swd64', '--device', 'cpu', '--gpus', '2'])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (tmp_path / 'run' / 'metric-fake_swd64.jsonl').read_text().splitlines()]
    assert record['num_gpus'] == 2 and record['results']['fake_swd64'] > 0
