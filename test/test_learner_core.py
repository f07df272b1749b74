"""The sac_learner node's decisions without ROS or torch: transitions messages into the learner
(one stream per arm, drops and gaps in words), when weights are pushed, and what the progress
topic, the summary line and the diagnostics say. A stand-in learner records what it is given."""
import dataclasses
import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from hilserl.messages.diagnostics import OK, WARN
from hilserl.data.transition import Transition, TransitionEncoder
from hilserl_policy.learner import SequenceTracker
from hilserl_policy.learner_core import LearnerCore, WeightPushSchedule, arm_prefix


class StandInLearner:
    """What LearnerCore reads and calls of hilserl_policy.learner.Learner, with its counting."""

    def __init__(self):
        self.counts = {'received': 0, 'stored': 0, 'dropped': 0, 'missing': 0}
        self.drop_reasons = Counter()
        self.sequences = {}
        self.submitted, self.rejected, self.ended = [], [], []
        self.pending = 0
        self.agent = SimpleNamespace(step=0)
        self.training = False
        self.episodes = (0, 0)
        self.online, self.offline = [0] * 5, [0] * 2
        self.critic_updates_per_s = 0.0
        self.last_metrics = {}

    def _observe(self, episode, step, robot):
        missing = self.sequences.setdefault(robot, SequenceTracker()).observe(episode, step)
        self.counts['missing'] += missing
        return missing

    def submit(self, transition, episode, step, robot):
        self.counts['received'] += 1
        self.submitted.append((float(transition.reward), episode, step, robot))
        return self._observe(episode, step, robot)

    def reject(self, reason, episode=-1, step=-1, robot=''):
        self.counts['received'] += 1
        self.counts['dropped'] += 1
        self.drop_reasons[reason.split(' ', 1)[0].rstrip(':')] += 1
        self.rejected.append((reason, episode, step, robot))
        return self._observe(episode, step, robot)

    def episode_ended(self, event, robot=''):
        self.ended.append((event, robot))
        missing = self.sequences.setdefault(robot, SequenceTracker()).episode_ended(
            int(event.get('episode', -1)), int(event.get('steps', -1)))
        self.counts['missing'] += missing
        return missing

    def ready(self):
        return self.training

    def episode_counts(self):
        return self.episodes

    def recent_summary(self):
        return 'no episodes yet'


def transition(i: int) -> Transition:
    image = np.full((3, 4, 4), i, np.uint8)
    state = np.zeros(18, np.float32)
    return Transition(image, state, np.zeros(4, np.float32), float(i), image + 1, state, False,
                      False, False)


def core():
    learner = StandInLearner()
    return LearnerCore(learner, weight_push_period_s=2.0), learner


def test_arm_prefix_names_only_one_of_several_arms():
    assert arm_prefix('') == '' and arm_prefix('robot_1') == 'robot_1 '


def test_transitions_are_queued_per_arm():
    c, learner = core()
    encoders = {'': TransitionEncoder(), 'robot_1': TransitionEncoder()}
    # the arms number alike: each has its own sequence and its own stream of images
    for i, (robot, step) in enumerate((('', 1), ('robot_1', 1), ('', 2), ('robot_1', 2))):
        assert c.on_transition(encoders[robot].encode(transition(i), 0, step), robot) is None
    assert learner.submitted == [(0.0, 0, 1, ''), (1.0, 0, 1, 'robot_1'), (2.0, 0, 2, ''),
                                 (3.0, 0, 2, 'robot_1')]
    assert set(c.decoders) == {('', b''), ('robot_1', b'')} and learner.counts['missing'] == 0


def test_a_gap_is_named_with_the_arm_episode_and_step():
    c, _ = core()
    c.on_transition(TransitionEncoder().encode(transition(0), 5, 1), 'robot_2')
    assert c.on_transition(TransitionEncoder().encode(transition(1), 5, 4), 'robot_2') == (
        '2 transitions missing before robot_2 episode 5 step 4 (lost between actor and learner)')
    assert c.on_transition(TransitionEncoder().encode(transition(2), 6, 3)) == (
        '2 transitions missing before episode 6 step 3 (lost between actor and learner)')


def test_a_transition_whose_image_was_lost_is_rejected_at_its_place():
    c, learner = core()
    encoder = TransitionEncoder()
    c.on_transition(encoder.encode(transition(0), 0, 1))
    encoder.encode(transition(1), 0, 2)                 # lost on the way
    follower = dataclasses.replace(transition(2), image=transition(1).next_image)
    warning = c.on_transition(encoder.encode(follower, 0, 3))   # its image was left out
    assert warning.startswith('transition dropped: ') and 'undecodable' not in warning
    reason, episode, step, robot = learner.rejected[-1]
    assert reason == 'image: ' + warning[len('transition dropped: '):]
    assert (episode, step, robot) == (0, 3, '')
    assert learner.counts['missing'] == 1 and dict(learner.drop_reasons) == {'image': 1}
    # the stream goes on from the dropped one's next image
    assert c.on_transition(encoder.encode(transition(3), 0, 4)) is None


def test_an_undecodable_message_is_rejected_without_a_place():
    c, learner = core()
    assert c.on_transition(b'not a transition', 'robot_1') == (
        'transition dropped: undecodable: not a hilserl transition (bad magic)')
    assert learner.rejected == [('undecodable: not a hilserl transition (bad magic)', -1, -1,
                                 '')]
    assert dict(learner.drop_reasons) == {'undecodable': 1}


def test_episode_ends_are_checked_and_other_events_ignored():
    c, learner = core()
    encoder = TransitionEncoder()
    for step in (1, 2):
        c.on_transition(encoder.encode(transition(step), 3, step), 'robot_1')
    assert c.on_event(json.dumps({'event': 'start', 'episode': 3}), 'robot_1') is None
    # anyone can publish on the topic: what is not an actor's event is counted, never kept
    for text in ('not json', '[1]', json.dumps({'event': 'end', 'episode': 'x', 'steps': 2}),
                 json.dumps({'event': 'end', 'episode': 3}),
                 json.dumps({'event': 'end', 'episode': 3, 'steps': 2, 'return': 'NaN'})):
        assert c.on_event(text, 'robot_1').startswith('episode event ignored: ')
    assert learner.ended == [] and c.bad_events == 5
    assert c.on_event(json.dumps({'event': 'end', 'episode': 3, 'steps': 2}), 'robot_1') is None
    c.on_transition(TransitionEncoder().encode(transition(9), 4, 1), 'robot_1')
    c.on_transition(TransitionEncoder().encode(transition(10), 5, 1), 'robot_1')
    end = {'event': 'end', 'episode': 4, 'steps': 5}     # after the next episode began
    assert c.on_event(json.dumps(end), 'robot_1') == (
        'robot_1 episode 4 ended with 5 steps; its last 4 transitions did not arrive')
    assert learner.ended[-1] == (end, 'robot_1')


def test_weights_go_out_once_per_step_and_period():
    schedule = WeightPushSchedule(period_s=2.0)
    assert schedule.is_new(0)                  # nothing pushed yet: a resumed step too
    schedule.pushed(0, now_s=100.0)
    assert not schedule.is_new(0) and schedule.is_new(1)
    assert not schedule.period_elapsed(101.9)
    assert schedule.period_elapsed(102.0)


def test_progress_is_received_stored_steps_and_training():
    c, learner = core()
    learner.counts.update(received=7, stored=5)
    learner.agent.step = 3
    assert c.progress() == [7, 5, 3, 0]
    learner.training = True
    assert c.progress() == [7, 5, 3, 1]


def test_transfer_summary_shows_the_queue_only_when_there_is_one():
    c, learner = core()
    learner.counts.update(received=10, stored=7, dropped=2, missing=1)
    assert c.transfer_summary() == 'transitions received 10, stored 7, dropped 2, missing 1'
    learner.pending = 3
    assert c.transfer_summary().endswith('missing 1, queued 3')


def test_summary_line_and_diagnostics_while_training():
    c, learner = core()
    learner.counts.update(received=10, stored=10)
    learner.agent.step, learner.episodes = 42, (4, 3)
    learner.critic_updates_per_s = 12.3456
    line, entry = c.summary(run_dir_bytes=1_234_000_000)
    assert line == ('episodes 4 (3 successful; no episodes yet)  transitions received 10, '
                    'stored 10, dropped 0, missing 0  buffers 5/2  step 42  critic updates/s '
                    '12.35  run dir 1.23 GB on disk')
    assert (entry.name, entry.level, entry.message) == ('sac_learner', OK, 'training')
    assert entry.values == {'step': '42', 'error': '', 'received': '10', 'stored': '10',
                            'dropped': '0', 'missing': '0', 'queued': '0', 'drop_reasons': '{}',
                            'bad_events': '0',
                            'out_of_order': '0', 'episodes': '4', 'successes': '3',
                            'critic_updates_per_s': '12.346'}
    learner.last_metrics = {'critic_loss': 0.12345, 'alpha': 0.012345}
    assert c.summary(0)[0].endswith('0.00 GB on disk  critic_loss 0.123  alpha 0.0123')


@pytest.mark.parametrize('lost', ['dropped', 'missing'])
def test_lost_transitions_warn(lost):
    c, learner = core()
    learner.counts[lost] = 1
    learner.drop_reasons['action'] += 1
    learner.sequences = {'': SimpleNamespace(out_of_order=2),
                         'robot_1': SimpleNamespace(out_of_order=1)}
    _, entry = c.summary(0)
    assert (entry.level, entry.message) == (WARN, 'transitions lost')
    assert entry.values['drop_reasons'] == '{"action": 1}'
    assert entry.values['out_of_order'] == '3'


def test_a_stopped_thread_is_the_diagnostics_message():
    c, _ = core()
    assert c.failed('training', RuntimeError('CUDA out of memory')) == (
        'training stopped: RuntimeError: CUDA out of memory')
    _, entry = c.summary(0)
    assert (entry.level, entry.message) == (WARN, 'training stopped: RuntimeError: CUDA out of '
                                            'memory')
    assert entry.values['error'] == entry.message
