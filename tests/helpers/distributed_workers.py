"""Worker functions run in child processes (torch.multiprocessing.spawn) by the multi-process tests."""

import json
import os

import torch


def _init_gloo(rank, world_size, init_file):
    torch.distributed.init_process_group(backend='gloo', init_method='file://' + os.path.abspath(init_file),
                                         rank=rank, world_size=world_size)


def training_stats_worker(rank, world_size, init_file, out_dir):
    """Each rank reports its own values; rank 0 also uses report0; write the collected stats as JSON."""
    from torch_utils import training_stats  # pylint: disable=import-outside-toplevel
    _init_gloo(rank, world_size, init_file)
    try:
        training_stats.init_multiprocessing(rank=rank, sync_device=torch.device('cpu'))
        collector = training_stats.Collector(regex='Loss/.*')
        values = torch.arange(5, dtype=torch.float32) * (rank + 1) + rank   # rank0: 0..4, rank1: 1,3,5,7,9
        training_stats.report('Loss/a', values)
        training_stats.report0('Loss/only0', torch.tensor([2.0, 4.0]) + rank * 100)
        if rank == 1:
            training_stats.report('Loss/only1', 7.0)   # a name the other rank never reports
        training_stats.report('Other/x', 1.0)
        collector.update()
        result = {name: dict(stats) for name, stats in collector.as_dict().items()}
        with open(os.path.join(out_dir, f'stats{rank}.json'), 'w', encoding='utf-8') as f:
            json.dump(result, f)
    finally:
        torch.distributed.destroy_process_group()


def ddp_consistency_worker(rank, world_size, init_file, out_dir):
    """Check a module that agrees across ranks, then one whose 'bad' buffer differs; record outcomes."""
    from torch_utils import misc  # pylint: disable=import-outside-toplevel
    _init_gloo(rank, world_size, init_file)
    try:
        torch.manual_seed(0)
        module = torch.nn.Linear(3, 2)
        module.register_buffer('bad', torch.full([2], float(rank)))
        module.register_buffer('nan', torch.full([2], float('nan')))
        outcome = {}
        try:
            misc.check_ddp_consistency(module, ignore_regex=r'.*\.bad')
            outcome['ignored'] = 'ok'
        except AssertionError as err:
            outcome['ignored'] = 'error: ' + str(err)
        try:
            misc.check_ddp_consistency(module)
            outcome['checked'] = 'ok'
        except AssertionError as err:
            outcome['checked'] = 'error: ' + str(err)
        with open(os.path.join(out_dir, f'ddp{rank}.json'), 'w', encoding='utf-8') as f:
            json.dump(outcome, f)
    finally:
        torch.distributed.destroy_process_group()
