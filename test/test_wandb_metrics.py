"""--wandb: a real learner's metrics go to an offline Weights & Biases run under the run
directory, the same values TensorBoard gets, read back from the run's own record file; an
evaluation with its episode videos; a missing wandb package is refused in one line."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('wandb')


def wandb_records(run_dir: Path):
    """The records of an offline run's `run-<id>.wandb` file: W&B's LevelDB-style log (a 7-byte
    file header, 32 KiB blocks, each chunk a 7-byte header of checksum, length and type) of
    protobuf `Record`s. Read here rather than through W&B, which ships no reader."""
    from wandb.proto import wandb_internal_pb2
    data = next(run_dir.glob('run-*.wandb')).read_bytes()
    assert data[:4] == b':W&B'
    position, pending, records = 7, b'', []
    while position + 7 <= len(data):
        left_in_block = 32768 - position % 32768
        if left_in_block < 7:  # block trailer: zero padding
            position += left_in_block
            continue
        length = int.from_bytes(data[position + 4:position + 6], 'little')
        kind = data[position + 6]  # 1 whole, 2 first, 3 middle, 4 last chunk of a record
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b''
    return records


def wandb_history(run_dir: Path):
    """Every logged row as {key: value}, W&B's own bookkeeping (_step, _runtime ...) left out."""
    rows = []
    for record in wandb_records(run_dir):
        if record.WhichOneof('record_type') == 'history':
            row = {item.key or '/'.join(item.nested_key): json.loads(item.value_json)
                   for item in record.history.item}
            rows.append({key: value for key, value in row.items() if not key.startswith('_')})
    return rows


def by_axis(rows, axis: str):
    """{tag: [(axis value, value)]} of the rows plotted against `axis` (as TensorBoard holds
    them: tag -> (step, value))."""
    series = {}
    for row in rows:
        if axis in row:
            for key, value in row.items():
                if key != axis and isinstance(value, (int, float)):
                    series.setdefault(key, []).append((row[axis], float(value)))
    return series


def tensorboard_series(log_dir: Path, prefix: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()['scalars'] if tag.startswith(prefix)}


def offline_runs(directory: Path):
    return sorted((directory / 'wandb').glob('offline-run-*'))


def write_mp4(path: Path, frames: int = 8) -> Path:
    import av
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('libx264', rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = 'yuv420p'
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 20 * i, np.uint8), 'rgb24')
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_learner_metrics_reach_an_offline_wandb_run_as_tensorboard(tmp_path, monkeypatch):
    import torch

    from hilserl.configuration.config import load_train_config
    from hilserl_policy.learner import Learner
    from test_learner_ingestion import CONFIG, _transition
    monkeypatch.delenv('WANDB_MODE', raising=False)  # offline by default: no account here
    config = tmp_path / 'tiny.yaml'
    config.write_text(CONFIG)
    cfg = load_train_config(config)
    threads = torch.get_num_threads()
    run_dir = tmp_path / 'run'
    learner = Learner(cfg, run_dir, wandb=True)
    try:
        assert learner.training_metrics.wandb_location.parent == run_dir / 'wandb'
        learner.add_many(_transition(i) for i in range(40))
        learner.episode_ended({'episode': 0, 'success': True, 'steps': 20, 'return': 9.5,
                               'interventions': 5})
        learner.episode_ended({'episode': 1, 'success': False, 'steps': 20, 'return': -2.0,
                               'interventions': 0})
        for _ in range(3):
            learner.train_step()
    finally:
        learner.training_metrics.close()
        torch.set_num_threads(threads)
    [run] = offline_runs(run_dir)
    rows = wandb_history(run)
    # every scalar TensorBoard got, W&B got with the same axis and value; and nothing else
    for prefix, axis in (('train/', 'train/step'), ('episode/', 'episode/number')):
        tensorboard = tensorboard_series(run_dir / 'tensorboard', prefix)
        wandb = by_axis(rows, axis)
        assert tensorboard and sorted(wandb) == sorted(tensorboard), prefix
        for tag, points in tensorboard.items():  # event files hold float32
            assert [s for s, _ in wandb[tag]] == [s for s, _ in points], tag
            assert [v for _, v in wandb[tag]] == pytest.approx([v for _, v in points],
                                                               rel=1e-6), tag
    assert by_axis(rows, 'episode/number')['episode/success'] == [(0, 1.0), (1, 0.0)]
    assert [s for s, _ in by_axis(rows, 'train/step')['train/critic_loss']] == [1, 2, 3]
    # the training configuration goes with the run
    configs = [r.run.config if r.WhichOneof('record_type') == 'run' else r.config
               for r in wandb_records(run) if r.WhichOneof('record_type') in ('run', 'config')]
    logged = {item.key: json.loads(item.value_json) for c in configs for item in c.update}
    assert logged['algorithm']['utd_ratio'] == 4 and logged['seed'] == 0
    # a resumed training run goes on in the same W&B run (one id; `wandb sync` joins them)
    resumed = Learner(cfg, run_dir, wandb=True)
    resumed.training_metrics.close()
    torch.set_num_threads(threads)
    first, second = offline_runs(run_dir)
    assert first.name.split('-')[-1] == second.name.split('-')[-1]


def test_an_evaluation_goes_to_wandb_with_its_episode_videos(tmp_path, monkeypatch):
    from hilserl_policy.metrics import log_evaluation
    monkeypatch.delenv('WANDB_MODE', raising=False)
    eval_dir = tmp_path / 'run' / 'eval'
    (eval_dir / 'videos').mkdir(parents=True)
    videos = [write_mp4(eval_dir / 'videos' / f'episode_00000{n}.mp4', frames=4 + n)
              for n in (0, 1)]
    # as `hilserl eval --video` leaves eval_summary.json: each row names its episode's video
    summary = {'episodes': 3, 'successes': 1, 'success_rate': 1 / 3, 'mean_steps': 30.0,
               'mean_return': 1.5,
               'rows': [{'episode': 1, 'steps': 20, 'reward': 9.0, 'result': 'SUCCESS',
                         'video': str(videos[0])},
                        {'episode': 2, 'steps': 40, 'reward': -2.0, 'result': 'FAIL',
                         'video': str(eval_dir / 'videos' / 'gone.mp4')},
                        {'episode': 3, 'steps': 30, 'reward': -2.5, 'result': 'FAIL',
                         'video': str(videos[1])}]}
    location, logged_videos = log_evaluation(eval_dir, summary)
    assert location.parent == eval_dir / 'wandb' and location.name.startswith('offline-run-')
    rows = wandb_history(location)
    episodes = by_axis(rows, 'eval/episode')
    assert episodes['eval/success'] == [(1, 1.0), (2, 0.0), (3, 0.0)]
    assert episodes['eval/return'] == [(1, 9.0), (2, -2.0), (3, -2.5)]
    assert by_axis(rows, 'eval_summary/episodes')['eval_summary/success_rate'] == \
        [(3, pytest.approx(1 / 3))]
    logged = [(row['eval/episode'], row['eval/video/path']) for row in rows
              if 'eval/video/path' in row]
    assert logged_videos == 2 and [episode for episode, _ in logged] == [1, 3]  # gone: skipped
    for (_, path), video in zip(logged, videos):  # each MP4 is copied into the run
        assert (location / 'files' / path).read_bytes() == video.read_bytes()


def test_a_missing_wandb_package_is_one_line_naming_the_flag(tmp_path, monkeypatch, capsys):
    from hilserl.common.optional_packages import OptionalPackageMissing
    from hilserl_policy.metrics import TrainingMetrics
    from hilserl_tools import cli
    monkeypatch.setitem(sys.modules, 'wandb', None)  # `import wandb` fails as when missing
    with pytest.raises(OptionalPackageMissing, match='pip install wandb'):
        TrainingMetrics.for_run(tmp_path, 2, wandb=True)
    assert cli.main(['eval', '--checkpoint', str(tmp_path / 'nothing'), '--wandb',
                     '--run-dir', str(tmp_path / 'run')]) == 2
    error = capsys.readouterr().err.strip()
    assert error == ('hilserl eval: --wandb needs the wandb package: pip install wandb '
                     '(offline runs need no account)')
    assert not (tmp_path / 'wandb').exists()


def test_wandb_stays_off_unless_asked_for(tmp_path):
    from hilserl.ros.graph import GraphArgs, build_graph
    from hilserl_policy.metrics import TrainingMetrics
    from hilserl_tools.cli import build_parser
    metrics = TrainingMetrics.for_run(tmp_path, 2)
    metrics.close()
    assert metrics.wandb_location is None and not (tmp_path / 'wandb').exists()
    learner = {n.name: n for n in build_graph(GraphArgs())}['sac_learner']
    assert learner.parameters['wandb'] is False
    learner = {n.name: n for n in build_graph(GraphArgs(wandb=True))}['sac_learner']
    assert learner.parameters['wandb'] is True
    parser = build_parser()
    assert parser.parse_args(['train']).wandb is False
    assert parser.parse_args(['train', '--wandb']).wandb is True
    assert parser.parse_args(['eval', '--checkpoint', 'c', '--wandb']).wandb is True
    # ros2 launch ... wandb:=true reaches the learner's parameter the same way
    launch = pytest.importorskip('launch')
    from hilserl.ros.graph import LAUNCH_ARGUMENTS
    from hilserl.ros.launch_support import graph_args_from_context
    for text, wanted in (('false', False), ('true', True)):
        context = launch.LaunchContext()
        context.launch_configurations.update({name: default for name, default, _ in
                                              LAUNCH_ARGUMENTS})
        context.launch_configurations.update(mode='train', wandb=text)
        assert graph_args_from_context(context).wandb is wanted
