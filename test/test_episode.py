"""Actor episode logic and the episode recorder, without ROS."""
import json

import numpy as np
import pytest

from hilserl.bags import MessageFactory, read_episode
from hilserl.config import ObservationConfig, TaskConfig, TrainConfig
from hilserl.conventions import Topics
from hilserl.recording import EpisodeRecorder
from hilserl_policy.episode import EpisodeRunner, ObservationAssembler, StaleObservation

CFG = TrainConfig(task=TaskConfig(episode_time_s=0.5))  # 5 steps


def obs(i):
    return np.full((3, 4, 4), i, np.uint8), np.full(18, i, np.float32)


def run(runner, steps, success_at=None, label_at=None, intervene=False):
    results = []
    for i in range(steps):
        image, state = obs(i)
        results.append(runner.step(image, state, success=(i == success_at),
                                   human_action=np.array([1, 0, 0, -1], np.float32),
                                   intervention=intervene,
                                   label=('failure' if i == label_at else None)))
        if results[-1].ended:
            break
    return results


def test_time_limit_truncates_and_transitions_chain():
    runner = EpisodeRunner(CFG, lambda image, state: np.zeros(4, np.float32))
    assert json.loads(runner.start())['event'] == 'start'
    results = run(runner, 10)
    transitions = [r.transition for r in results if r.transition is not None]
    assert len(transitions) == 5 and results[-1].ended
    assert transitions[-1].truncated and not transitions[-1].terminated
    assert not any(t.truncated or t.terminated for t in transitions[:-1])
    for a, b in zip(transitions, transitions[1:]):
        assert np.array_equal(a.next_image, b.image)
    end = json.loads(results[-1].events[0])
    assert end['outcome'] == 'timeout' and end['steps'] == 5 and not end['success']
    with pytest.raises(RuntimeError):
        runner.step(*obs(0), False, None, False)


def test_success_terminates_and_interventions_execute_the_human_action():
    runner = EpisodeRunner(CFG, lambda image, state: np.full(4, 0.5, np.float32))
    runner.start()
    results = run(runner, 10, success_at=2, intervene=True)
    assert np.array_equal(results[0].executed_action, [1, 0, 0, -1])
    assert np.array_equal(results[0].policy_action, [0.5] * 4)
    last = results[-1]
    assert last.transition.terminated and last.transition.intervention
    assert last.reward == CFG.task.success_reward
    assert runner.stats.success and runner.stats.interventions == 2


def test_failure_key_ends_with_truncation():
    runner = EpisodeRunner(CFG, lambda image, state: np.zeros(4, np.float32))
    runner.start()
    results = run(runner, 10, label_at=1)
    assert results[-1].ended and results[-1].transition.truncated
    assert runner.stats.outcome == 'failure'


def test_stale_or_missing_observations_pause_the_policy():
    assembler = ObservationAssembler(TrainConfig(
        observation=ObservationConfig(n_obs_steps=2, max_staleness_s=0.2)))
    with pytest.raises(StaleObservation, match='first'):
        assembler.observe(0.0)
    assembler.set_image(np.zeros((128, 128, 3), np.uint8), 1.0)
    assembler.set_joints(np.zeros(6), np.zeros(6), 1.0)
    image, state = assembler.observe(1.1)
    assert image.shape == (6, 128, 128) and state.shape == (18,)
    with pytest.raises(StaleObservation, match='image'):
        assembler.observe(1.5)
    with pytest.raises(ValueError, match='expected'):
        assembler.set_image(np.zeros((64, 64, 3), np.uint8), 2.0)


def test_recorder_keeps_episodes_and_an_interrupted_bag_is_readable(tmp_path):
    factory = MessageFactory()
    store = factory.store
    wall_ns = [0]
    recorder = EpisodeRecorder(tmp_path, close_delay_ns=100, wall_clock_ns=lambda: wall_ns[0])
    cdr = lambda msg, t: store.serialize_cdr(msg, t)  # noqa: E731
    recorder.on_message(Topics.REWARD, cdr(factory.float32(1.0), 'std_msgs/msg/Float32'), 1)
    recorder.on_message(Topics.REWARD, cdr(factory.float32(2.0), 'std_msgs/msg/Float32'),
                        10 ** 9)
    assert recorder.dropped == 1  # outside an episode and older than the pre-roll
    # an episode's first message handled just before its start event is kept (pre-roll)
    recorder.on_message(Topics.REWARD, cdr(factory.float32(-0.05), 'std_msgs/msg/Float32'),
                        2 * 10 ** 9)
    recorder.on_event(json.dumps({'event': 'start', 'episode': 0}), 2 * 10 ** 9 + 10)
    recorder.on_message(Topics.REWARD, cdr(factory.float32(-0.05), 'std_msgs/msg/Float32'),
                        2 * 10 ** 9 + 20)
    recorder.on_event(json.dumps({'event': 'end', 'episode': 0, 'success': True,
                                  'outcome': 'success'}), 2 * 10 ** 9 + 30)
    recorder.poll()
    assert recorder.writer is not None  # the close delay (wall time) has not passed yet
    wall_ns[0] = 200
    recorder.poll()
    recorder.on_event(json.dumps({'event': 'start', 'episode': 1}), 4 * 10 ** 9)
    recorder.on_message(Topics.REWARD, cdr(factory.float32(-0.05), 'std_msgs/msg/Float32'),
                        4 * 10 ** 9 + 10)
    recorder.finish()  # Ctrl-C mid-episode
    first = read_episode(tmp_path / 'episodes' / 'episode_000000')
    assert first.metadata['outcome'] == 'success' and len(first.messages[Topics.REWARD]) == 2
    second = read_episode(tmp_path / 'episodes' / 'episode_000001')
    assert second.metadata['outcome'] == 'interrupted'
    assert len(second.messages[Topics.REWARD]) == 1
    recorder.on_event(json.dumps({'event': 'start', 'episode': 0}), 5 * 10 ** 9)  # resumed run
    assert recorder.writer.dir.name == 'episode_000000_1'
    recorder.finish()
