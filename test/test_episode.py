"""Actor episode logic and the episode recorder, without ROS."""
import json

import numpy as np
import pytest

from hilserl.data.bags import MessageFactory, read_episode
from hilserl.configuration.config import ObservationConfig, TaskConfig, TrainConfig
from hilserl.messages.conventions import Topics
from hilserl.data.recording import EpisodeRecorder
from hilserl_policy.episode import EpisodeRunner, ObservationAssembler, StaleObservation

CFG = TrainConfig(task=TaskConfig(episode_time_s=0.5))  # 5 steps


def obs(i):
    return np.full((3, 4, 4), i, np.uint8), np.full(18, i, np.float32)


def run(runner, steps, success_at=None, label_at=None, intervene=False, label='failure'):
    results = []
    for i in range(steps):
        image, state = obs(i)
        results.append(runner.step(image, state, success=(i == success_at),
                                   human_action=np.array([1, 0, 0, -1], np.float32),
                                   intervention=intervene,
                                   label=(label if i == label_at else None)))
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
    assert not last.transition.truncated
    assert last.reward == CFG.task.success_reward
    assert runner.stats.success and runner.stats.interventions == 2


def test_failure_key_ends_with_truncation():
    runner = EpisodeRunner(CFG, lambda image, state: np.zeros(4, np.float32))
    runner.start()
    results = run(runner, 10, label_at=1)
    assert results[-1].ended and results[-1].transition.truncated
    assert not results[-1].transition.terminated
    assert runner.stats.outcome == 'failure' and not runner.stats.success


def test_success_key_terminates_at_once_with_the_success_reward():
    """A person's success key is final: the episode ends on that step, terminated (no bootstrap
    past a success), not truncated, with the success reward, before any minimum step count."""
    cfg = TrainConfig(task=TaskConfig(episode_time_s=2.0, min_steps_before_success=3,
                                      success_frames_to_end=10))
    runner = EpisodeRunner(cfg, lambda image, state: np.zeros(4, np.float32))
    runner.start()
    results = run(runner, 10, label_at=1, label='success')
    assert len(results) == 2 and results[-1].ended
    last = results[-1].transition
    assert last.terminated and not last.truncated
    assert last.reward == cfg.task.success_reward
    assert runner.stats.success and runner.stats.outcome == 'success'


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


def _stamped_transition_cdr(store, stamp_ns: int, payload: bytes = b'x' * 64) -> bytes:
    msg_type = store.types['std_msgs/msg/UInt8MultiArray']
    dim = store.types['std_msgs/msg/MultiArrayDimension'](label=f'stamp_ns={stamp_ns}', size=1,
                                                          stride=1)
    layout = store.types['std_msgs/msg/MultiArrayLayout'](dim=[dim], data_offset=0)
    msg = msg_type(layout=layout, data=np.frombuffer(payload, np.uint8))
    return bytes(store.serialize_cdr(msg, 'std_msgs/msg/UInt8MultiArray'))


def test_layout_stamp_is_read_from_raw_bytes():
    from hilserl.data.bags import layout_stamp_ns, message_stamp_ns
    store = MessageFactory().store
    cdr = _stamped_transition_cdr(store, 1_234_567_890_123)
    assert message_stamp_ns('std_msgs/msg/UInt8MultiArray', cdr) == 1_234_567_890_123
    for cut in range(0, len(cdr) - 64, 3):  # truncated bytes: None, never an exception
        assert layout_stamp_ns(cdr[:cut]) in (None, 1_234_567_890_123)
    plain = store.types['std_msgs/msg/Float32MultiArray'](
        layout=store.types['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0),
        data=np.zeros(4, np.float32))
    assert layout_stamp_ns(store.serialize_cdr(plain, 'std_msgs/msg/Float32MultiArray')) is None
    assert message_stamp_ns('std_msgs/msg/Float32', b'\x00\x01\x00\x00\x00\x00\x80\x3f') is None


def test_layout_stamp_of_an_rclpy_action_message():
    pytest.importorskip('rclpy')
    from rclpy.serialization import serialize_message
    from hilserl.data.bags import layout_stamp_ns
    from hilserl.messages.conversions import action_to_msg
    msg = action_to_msg(np.array([0.1, -0.2, 0.3, 1.0]), 'human', stamp_ns=7_000_000_123)
    assert layout_stamp_ns(serialize_message(msg)) == 7_000_000_123


def test_sim_clock_recorder_waits_for_announced_transitions(tmp_path):
    """The last transition of an episode may be served after the next tick's messages and after
    the close delay: it is filed under its own tick and the bag stays open until it is in."""
    store = MessageFactory().store
    wall_ns = [0]
    recorder = EpisodeRecorder(tmp_path, close_delay_ns=100, late_limit_ns=10_000,
                               wall_clock_ns=lambda: wall_ns[0], sim_clock=True)
    tick = 10 ** 8
    recorder.on_event(json.dumps({'event': 'start', 'episode': 0, 'stamp_ns': tick}), tick)
    recorder.on_message(Topics.TRANSITIONS, _stamped_transition_cdr(store, 2 * tick), 2 * tick)
    recorder.on_event(json.dumps({'event': 'end', 'episode': 0, 'outcome': 'success',
                                  'success': True, 'transitions': 2, 'stamp_ns': 3 * tick}),
                      3 * tick)
    wall_ns[0] = 5_000
    recorder.poll()
    assert recorder.writer is not None  # one announced transition is still on its way
    recorder.on_message(Topics.TRANSITIONS, _stamped_transition_cdr(store, 3 * tick), 3 * tick)
    recorder.poll()
    assert recorder.writer is None
    episode = read_episode(tmp_path / 'episodes' / 'episode_000000')
    assert len(episode.messages[Topics.TRANSITIONS]) == 2
    assert 'missing_transitions' not in episode.metadata
    # one that never comes: closed after the late limit, and said so
    recorder.on_event(json.dumps({'event': 'start', 'episode': 1, 'stamp_ns': 5 * tick}),
                      5 * tick)
    recorder.on_event(json.dumps({'event': 'end', 'episode': 1, 'outcome': 'timeout',
                                  'transitions': 1, 'stamp_ns': 6 * tick}), 6 * tick)
    wall_ns[0] = 10_000
    recorder.poll()
    assert recorder.writer is not None
    wall_ns[0] = 20_000
    recorder.poll()
    assert recorder.writer is None and recorder.missing_transitions == 1
    assert read_episode(tmp_path / 'episodes' / 'episode_000001').metadata[
        'missing_transitions'] == 1


TICK = 10 ** 8  # one control period of simulated time, ns


def sim_clock_recorder(tmp_path):
    """A simulated-clock recorder and a serialized Float32 (no stamp of its own) to file."""
    factory = MessageFactory()
    return (EpisodeRecorder(tmp_path, sim_clock=True),
            factory.store.serialize_cdr(factory.float32(0.0), 'std_msgs/msg/Float32'))


def test_sim_clock_recorder_keeps_ticks_that_came_before_a_late_start_event(tmp_path):
    """Under load a reliable topic's retransmission can deliver the `start` event after several
    of the episode's ticks: they belong to the episode all the same (filed by their stamps)."""
    recorder, reward = sim_clock_recorder(tmp_path)
    for k in range(5, 25):  # ticks 5-9: the reset before; 10-24: the episode's first 15
        recorder.on_message(Topics.REWARD, reward, k * TICK)
    recorder.on_event(json.dumps({'event': 'start', 'episode': 0, 'stamp_ns': 10 * TICK}),
                      24 * TICK)
    recorder.on_event(json.dumps({'event': 'end', 'episode': 0, 'outcome': 'timeout',
                                  'stamp_ns': 30 * TICK}), 30 * TICK)
    recorder.finish()
    episode = read_episode(tmp_path / 'episodes' / 'episode_000000')
    stamps = [s for s, _ in episode.messages[Topics.REWARD]]
    assert stamps == [k * TICK for k in range(10, 25)]
    assert recorder.dropped == 5


def test_sim_clock_recorder_files_a_tick_that_overtook_the_end_event_in_the_next_episode(
        tmp_path):
    """The driver's next tick (after the episode's last action) may reach the recorder before
    the actor's `end` event: it is not the ended episode's, it opens the next one's preroll."""
    recorder, reward = sim_clock_recorder(tmp_path)
    recorder.on_event(json.dumps({'event': 'start', 'episode': 0, 'stamp_ns': 10 * TICK}),
                      10 * TICK)
    for k in range(10, 41):  # ticks 10-40; the episode ends at 39, tick 40 comes first
        recorder.on_message(Topics.REWARD, reward, k * TICK)
    recorder.on_event(json.dumps({'event': 'end', 'episode': 0, 'outcome': 'timeout',
                                  'stamp_ns': 39 * TICK}), 39 * TICK)
    recorder.on_message(Topics.REWARD, reward, 41 * TICK)
    recorder.on_event(json.dumps({'event': 'start', 'episode': 1, 'stamp_ns': 40 * TICK}),
                      40 * TICK)
    recorder.on_event(json.dumps({'event': 'end', 'episode': 1, 'outcome': 'timeout',
                                  'stamp_ns': 41 * TICK}), 41 * TICK)
    recorder.finish()
    first = read_episode(tmp_path / 'episodes' / 'episode_000000')
    assert [s for s, _ in first.messages[Topics.REWARD]] == [k * TICK for k in range(10, 40)]
    second = read_episode(tmp_path / 'episodes' / 'episode_000001')
    assert [s for s, _ in second.messages[Topics.REWARD]] == [40 * TICK, 41 * TICK]


def test_sim_clock_recorder_keeps_held_ticks_of_an_interrupted_episode(tmp_path):
    recorder, reward = sim_clock_recorder(tmp_path)
    recorder.on_event(json.dumps({'event': 'start', 'episode': 0, 'stamp_ns': 0}), 0)
    for k in range(5):
        recorder.on_message(Topics.REWARD, reward, k * TICK)
    recorder.finish()  # Ctrl-C: no end event
    episode = read_episode(tmp_path / 'episodes' / 'episode_000000')
    assert len(episode.messages[Topics.REWARD]) == 5
    assert episode.metadata['outcome'] == 'interrupted'


def test_sim_clock_recorder_keeps_unticked_messages_that_arrive_before_the_end(tmp_path):
    """A Bool or String has no stamp of its own: filed at its arrival (later than its tick on a
    loaded machine), it belongs to the episode that is open when it arrives, as a success key
    pressed on the episode's last tick."""
    recorder, reward = sim_clock_recorder(tmp_path)
    recorder.on_event(json.dumps({'event': 'start', 'episode': 0, 'stamp_ns': 10 * TICK}),
                      10 * TICK)
    recorder.on_message(Topics.REWARD, reward, 10 * TICK)
    recorder.on_message(Topics.REWARD, reward, 14 * TICK, ticked=False)  # arrived late
    recorder.on_event(json.dumps({'event': 'end', 'episode': 0, 'outcome': 'success',
                                  'stamp_ns': 11 * TICK}), 11 * TICK)
    recorder.on_message(Topics.REWARD, reward, 15 * TICK, ticked=False)  # after the end
    recorder.finish()
    episode = read_episode(tmp_path / 'episodes' / 'episode_000000')
    assert [s for s, _ in episode.messages[Topics.REWARD]] == [10 * TICK, 14 * TICK]


def test_sim_clock_recorder_files_an_ended_episodes_late_ticks_after_the_next_start(tmp_path):
    """A busy recorder (the first bag takes a second to open on a loaded machine) takes one
    message per topic in turn: the `end` and the next `start` can be handled before the last
    ticks of the episode. Those still go into its bag, which stays open until the driver's and
    the camera's ticks have passed its end; a reward (no stamp of its own) handled among them
    goes there too."""
    factory = MessageFactory()
    wall_ns = [0]
    recorder = EpisodeRecorder(tmp_path, close_delay_ns=100, wall_clock_ns=lambda: wall_ns[0],
                               sim_clock=True)

    def joints(k):
        state = factory._JointState(header=factory.header(k * TICK), name=['a'],
                                    position=np.zeros(1), velocity=np.zeros(1),
                                    effort=np.zeros(0))
        recorder.on_message(Topics.JOINT_STATES, factory.store.serialize_cdr(
            state, 'sensor_msgs/msg/JointState'), k * TICK)

    reward = factory.store.serialize_cdr(factory.float32(0.0), 'std_msgs/msg/Float32')
    recorder.on_event(json.dumps({'event': 'start', 'episode': 0, 'stamp_ns': 10 * TICK}),
                      10 * TICK)
    for k in range(10, 13):
        joints(k)
    recorder.on_event(json.dumps({'event': 'end', 'episode': 0, 'outcome': 'timeout',
                                  'stamp_ns': 20 * TICK}), 20 * TICK)
    recorder.on_event(json.dumps({'event': 'start', 'episode': 1, 'stamp_ns': 22 * TICK}),
                      22 * TICK)
    for k in range(13, 18):
        joints(k)
    recorder.on_message(Topics.REWARD, reward, 17 * TICK, ticked=False)
    wall_ns[0] = 1_000
    recorder.poll()
    assert len(recorder._ended) == 1  # ticks 18-20 of episode 0 are still on their way
    for k in range(18, 26):  # 21: the reset between the two episodes
        joints(k)
    recorder.poll()
    assert recorder._ended == []
    recorder.on_event(json.dumps({'event': 'end', 'episode': 1, 'outcome': 'timeout',
                                  'stamp_ns': 25 * TICK}), 25 * TICK)
    recorder.finish()
    first = read_episode(tmp_path / 'episodes' / 'episode_000000')
    second = read_episode(tmp_path / 'episodes' / 'episode_000001')
    assert [s for s, _ in first.messages[Topics.JOINT_STATES]] == \
        [k * TICK for k in range(10, 21)]
    assert len(first.messages[Topics.REWARD]) == 1 and Topics.REWARD not in second.messages
    assert [s for s, _ in second.messages[Topics.JOINT_STATES]] == \
        [k * TICK for k in range(22, 26)]
    assert first.metadata['outcome'] == second.metadata['outcome'] == 'timeout'


# --- exact behaviour the mutation run (`make mutate`) found untested ------------------------

def test_either_input_missing_still_waits_and_the_staleness_limit_is_inclusive():
    assembler = ObservationAssembler(TrainConfig(
        observation=ObservationConfig(max_staleness_s=0.25)))
    assembler.set_joints(np.zeros(6), np.zeros(6), 1.0)
    with pytest.raises(StaleObservation, match='^waiting for the first image and joint state$'):
        assembler.observe(1.0)  # joints but no image yet
    only_image = ObservationAssembler(TrainConfig())
    only_image.set_image(np.zeros((128, 128, 3), np.uint8), 1.0)
    with pytest.raises(StaleObservation, match='^waiting for the first image and joint state$'):
        only_image.observe(1.0)
    assembler.set_image(np.zeros((128, 128, 3), np.uint8), 1.0)
    assembler.observe(1.25)  # exactly at the limit: still usable
    with pytest.raises(StaleObservation, match=r'^image is 0\.50 s old \(limit 0\.25 s\)$'):
        assembler.observe(1.5)
    assembler.set_image(np.zeros((128, 128, 3), np.uint8), 1.5)
    with pytest.raises(StaleObservation,
                       match=r'^joint_states is 0\.50 s old \(limit 0\.25 s\)$'):
        assembler.observe(1.5)
    with pytest.raises(ValueError, match=r'^policy image is \(64, 64, 3\) uint8, expected '
                                         r'\(128, 128, 3\) uint8 \(check the camera'):
        assembler.set_image(np.zeros((64, 64, 3), np.uint8), 2.0)
    with pytest.raises(ValueError, match=r'^policy image is \(128, 128, 3\) float32'):
        assembler.set_image(np.zeros((128, 128, 3), np.float32), 2.0)


def test_state_is_built_from_positions_and_velocities_and_frames_are_stacked():
    from hilserl.robot.kinematics import SO101Kinematics
    from hilserl.robot.observation import build_state
    cfg = TrainConfig(observation=ObservationConfig(n_obs_steps=3))
    assembler = ObservationAssembler(cfg)
    position, velocity = np.linspace(-0.5, 0.5, 6), np.linspace(1.0, 2.0, 6)
    assembler.set_joints(position, velocity, 0.0)
    frames = [np.full((128, 128, 3), k, np.uint8) for k in range(3)]
    assembler.set_image(frames[0], 0.0)
    image, state = assembler.observe(0.0)
    expected = build_state(cfg.observation.state_features, position, velocity, SO101Kinematics())
    np.testing.assert_array_equal(state, expected)
    np.testing.assert_array_equal(state[:12],
                                  np.concatenate([position, velocity]).astype(np.float32))
    assert image.shape == (9, 128, 128)
    assert [int(image[3 * k, 0, 0]) for k in range(3)] == [0, 0, 0]  # the first frame repeated
    for k in (1, 2):
        assembler.set_image(frames[k], 0.0)
        image, _ = assembler.observe(0.0)
    assert [int(image[3 * k, 0, 0]) for k in range(3)] == [0, 1, 2]  # oldest first
    assembler.reset()
    image, _ = assembler.observe(0.0)
    assert [int(image[3 * k, 0, 0]) for k in range(3)] == [2, 2, 2]


def test_events_carry_exact_counts_and_episode_numbers():
    cfg = TrainConfig(task=TaskConfig(episode_time_s=0.3, step_penalty=0.123456))
    runner = EpisodeRunner(cfg, lambda image, state: np.zeros(4, np.float32))
    assert runner.running is False
    with pytest.raises(RuntimeError, match=r'^step\(\) outside an episode: call start\(\) first$'):
        runner.step(*obs(0), False, None, False)
    assert json.loads(runner.start()) == {
        'event': 'start', 'episode': 0, 'steps': 0, 'return': 0.0, 'interventions': 0,
        'success': False, 'outcome': 'running'}
    assert runner.running is True
    results = run(runner, 10, intervene=True)
    assert runner.running is False
    assert json.loads(results[-1].events[0]) == {
        'event': 'end', 'episode': 0, 'steps': 3, 'return': -0.3704, 'interventions': 3,
        'success': False, 'outcome': 'timeout'}
    assert runner.stats.episode_return == pytest.approx(-3 * 0.123456)
    assert json.loads(runner.start())['episode'] == 1
    assert json.loads(runner.start(7))['episode'] == 7
    assert json.loads(runner.start())['episode'] == 8


def test_step_results_hold_only_what_happened():
    runner = EpisodeRunner(CFG, lambda image, state: np.zeros(4, np.float32))
    runner.start()
    first = runner.step(*obs(0), False, None, False)
    assert first.reward is None and first.transition is None and first.events == []
    assert first.ended is False and first.intervention is False
    runner.step(*obs(1), False, None, False)
    end = runner.step(*obs(2), False, None, False, label='rerecord')
    assert end.ended is True and end.transition.truncated and not end.transition.terminated
    assert runner.stats.outcome == 'rerecord'
    assert end.policy_action is None and end.executed_action is None
    assert end.intervention is False  # nothing was executed on the ending step


def test_actions_are_clipped_and_the_human_acts_only_when_intervening():
    policy = np.array([-3.0, 3.0, 0.5, -0.5], np.float32)
    human = np.array([2.0, -2.0, 0.25, 1.0], np.float32)
    runner = EpisodeRunner(CFG, lambda image, state: policy)
    runner.start()
    # a human action without the intervention flag (the pad is idle): the policy acts
    result = runner.step(*obs(0), False, human, False)
    np.testing.assert_array_equal(result.policy_action, [-1, 1, 0.5, -0.5])
    np.testing.assert_array_equal(result.executed_action, [-1, 1, 0.5, -0.5])
    assert result.intervention is False
    # intervening: the human's action, clipped, is executed
    result = runner.step(*obs(1), False, human, True)
    np.testing.assert_array_equal(result.policy_action, [-1, 1, 0.5, -0.5])
    np.testing.assert_array_equal(result.executed_action, [1, -1, 0.25, 1])
    assert result.intervention is True
    assert result.transition.intervention is False  # the previous step was the policy's
    np.testing.assert_array_equal(result.transition.action, [-1, 1, 0.5, -0.5])
    # the intervention flag without a human action: the policy acts
    result = runner.step(*obs(2), False, None, True)
    assert result.intervention is False and result.transition.intervention is True
    np.testing.assert_array_equal(result.transition.action, [1, -1, 0.25, 1])
    np.testing.assert_array_equal(result.executed_action, [-1, 1, 0.5, -0.5])
