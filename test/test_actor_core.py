"""The actor's decisions without ROS (hilserl_policy.actor_core): every phase transition, the
simulated clock's tick answering, the human handover, post roll, the end of the run and the
refusals. Time is given, never read: nothing here depends on the wall clock."""
import dataclasses
import json

import numpy as np
import pytest

from hilserl.configuration.config import ImageConfig, TaskConfig, TrainConfig
from hilserl.messages.conventions import ActionSource
from hilserl.messages.diagnostics import OK, WARN
from hilserl.data.transition import TransitionDecoder
from hilserl_policy.actor_core import (RECORDER_MATCH_GRACE_S, ActorCore, ActorSettings,
                                       CallReset, Log, Print, PublishAction, PublishEvent,
                                       PublishProposal, PublishReward, PublishStatus,
                                       PublishTransition, ResubscribeTeleop, WriterMatch)

# 8x8 policy view, 5 steps per episode, 0.5 s settling
CFG = TrainConfig(image=ImageConfig(resize_hw_px=(8, 8)),
                  task=TaskConfig(episode_time_s=0.5, reset_delay_s=0.5))
POLICY_ACTION = np.array([0.5, -0.5, 0.25, 2.0], np.float32)  # the last clipped to 1
HUMAN_ACTION = np.array([-1.0, 0.0, 1.0, 0.5])
S = 10 ** 9  # ns per s


def fixed_policy(image, state):
    assert image.shape == (3, 8, 8) and state.shape == (18,)
    return POLICY_ACTION


class FakeGraph:
    """The node's side: service readiness, the reset call's answer, graph facts."""

    def __init__(self):
        self.service_ready = True
        self.learner = True
        self.response = None
        self.writers = [WriterMatch(True, 1, 1), WriterMatch(True, 1, 1)]
        self.asked = []

    def reset_service_ready(self):
        self.asked.append('service')
        return self.service_ready

    def reset_response(self):
        response, self.response = self.response, None
        return response

    def learner_listening(self):
        self.asked.append('learner')
        return self.learner

    def writer_matches(self):
        return iter(self.writers)


class Rig:
    """A core with its clocks: `now_ns` (the node's clock) and `monotonic_s` (wall)."""

    def __init__(self, policy=fixed_policy, reset_timeout_s=None, **settings):
        self.graph = FakeGraph()
        self.now_ns = 100 * S
        self.monotonic_s = 1000.0
        self.tick_ns = 0  # the simulated clock's last tick
        cfg = CFG if reset_timeout_s is None else dataclasses.replace(
            CFG, task=dataclasses.replace(CFG.task, reset_timeout_s=reset_timeout_s))
        self.core = ActorCore(ActorSettings(**settings), cfg, self.graph, policy=policy,
                              weights_step=42)

    def advance(self, seconds):
        self.now_ns += int(round(seconds * S))
        self.monotonic_s += seconds

    def times(self):
        return dict(now_ns=self.now_ns, monotonic_s=self.monotonic_s)

    def observe(self, stamp_ns=None):
        """Image and joint state; stamped with the node's clock unless a stamp is given."""
        stamp_ns = self.now_ns if stamp_ns is None else stamp_ns
        return (self.core.on_image(np.full((8, 8, 3), 7, np.uint8), stamp_ns, **self.times()) +
                self.core.on_joints(np.zeros(6), np.zeros(6), stamp_ns, **self.times()))

    def tick(self, seconds=0.1, fresh=True):
        """Wall clock: time passes, a fresh observation arrives, the control timer fires."""
        self.advance(seconds)
        outputs = self.observe() if fresh else []
        return outputs + self.core.tick(**self.times())

    def sim_tick(self):
        """Simulated clock: the driver's next tick (image and joint state of one stamp)."""
        self.tick_ns += S // 10
        self.advance(0.1)
        return self.observe(self.tick_ns)

    def human(self, action=HUMAN_ACTION, intervention=True, stamp_ns=None):
        stamp_ns = self.now_ns if stamp_ns is None else stamp_ns
        return self.core.on_human(np.asarray(action), intervention, stamp_ns, **self.times())

    def start_episode(self, next_tick=None):
        """need_reset -> resetting -> settling -> running; the outputs of the starting tick."""
        next_tick = next_tick or self.tick
        self.core.on_driver_ready(True)
        self.core.on_recorder_ready(True)
        assert of(next_tick(), CallReset)
        self.graph.response = (True, 'going home')
        self.core.on_driver_ready(False)   # the driver, while it drives home
        self.core.on_driver_ready(True)
        next_tick()
        assert self.core.phase == 'settling'
        while self.core.phase == 'settling':
            outputs = next_tick()
        assert self.core.phase == 'running'
        return outputs


def of(outputs, kind):
    return [o for o in outputs if isinstance(o, kind)]


def only(outputs, kind):
    assert [type(o) for o in outputs] == [kind], outputs
    return outputs[0]


def events(outputs):
    return [json.loads(o.text) for o in of(outputs, PublishEvent)]


def logs(outputs, level=None):
    return [o.text for o in of(outputs, Log) if level in (None, o.level)]


def executed(outputs):
    (action,) = of(outputs, PublishAction)
    return action


# --- settings and refusals --------------------------------------------------------------------
def test_settings_refuse_a_bad_mode_and_bad_values():
    with pytest.raises(ValueError, match="mode='teach': must be 'train', 'eval' or 'record'"):
        ActorSettings(mode='teach')
    with pytest.raises(ValueError, match='num_episodes'):
        ActorSettings(num_episodes=-1)
    with pytest.raises(ValueError, match='record_steps_after_success'):
        ActorSettings(record_steps_after_success=1.5)
    with pytest.raises(ValueError, match='needs a policy'):
        ActorCore(ActorSettings(mode='eval'), CFG, FakeGraph(), policy=None)
    assert ActorSettings(mode='train').waits_for_learner
    assert not ActorSettings(mode='record').waits_for_learner
    assert not ActorSettings(mode='eval').streams_transitions


# --- need_reset -> resetting --------------------------------------------------------------------
def test_need_reset_calls_reset_once_the_service_is_ready():
    rig = Rig(mode='eval')
    rig.graph.service_ready = False
    assert rig.tick() == [] and rig.core.phase == 'need_reset'
    assert 'learner' not in rig.graph.asked  # only training waits for the learner
    rig.graph.service_ready = True
    only(rig.tick(), CallReset)
    assert rig.core.phase == 'resetting' and rig.core.counters['ticks'] == 2


def test_training_waits_for_the_learner_to_listen_before_resetting():
    rig = Rig(mode='train')
    rig.graph.learner = False
    assert rig.tick() == [] and rig.core.phase == 'need_reset'
    assert rig.core.stale_reason == 'waiting for the learner to subscribe to transitions'
    assert 'service' not in rig.graph.asked  # not even asked while the learner is away
    rig.graph.learner = True
    only(rig.tick(), CallReset)
    assert rig.core.phase == 'resetting'


# --- resetting -> settling | need_reset -----------------------------------------------------------
def test_reset_answered_settles():
    rig = Rig(mode='eval')
    rig.tick()
    assert rig.tick() == [] and rig.core.phase == 'resetting'  # no answer yet
    rig.graph.response = (True, 'going home')
    assert rig.tick() == [] and rig.core.phase == 'settling'
    assert rig.core.phase_since_s == rig.now_ns * 1e-9


def test_refused_reset_is_counted_logged_and_retried():
    rig = Rig(mode='eval')
    rig.tick()
    rig.graph.response = (False, 'emergency stop engaged')
    outputs = rig.tick()
    assert rig.core.phase == 'need_reset' and rig.core.counters['reset_failures'] == 1
    assert of(outputs, Log) == [Log('error', 'reset refused: emergency stop engaged')]
    only(rig.tick(), CallReset)  # retried
    rig.graph.response = (False, 'emergency stop engaged')
    assert rig.tick(1.0) == []  # counted, the log throttled (5 s)
    assert rig.core.counters['reset_failures'] == 2
    rig.tick()
    rig.graph.response = (False, 'again')
    assert logs(rig.tick(5.0)) == ['reset refused: again']


def test_reset_timeout_gives_up_and_retries():
    rig = Rig(mode='eval', reset_timeout_s=2.0)
    rig.tick()
    assert rig.tick(2.0) == [] and rig.core.phase == 'resetting'  # not over the limit yet
    outputs = rig.tick(0.01)
    assert of(outputs, Log) == [Log('error', 'reset timed out; retrying')]
    assert rig.core.phase == 'need_reset' and rig.core.counters['reset_failures'] == 1
    only(rig.tick(), CallReset)


# --- settling -> running ----------------------------------------------------------------------
def test_the_replace_time_starts_when_the_arm_is_home_and_is_counted_down():
    """The driver answers the reset at once and drives home, not ready until it is there: the
    person's re-place time (task.reset_delay_s) starts then, not at the answer."""
    rig = Rig(mode='eval', reset_timeout_s=5.0)
    cfg = TrainConfig(image=ImageConfig(resize_hw_px=(8, 8)),
                      task=TaskConfig(episode_time_s=0.5, reset_delay_s=2.0, reset_timeout_s=5.0))
    rig.core = ActorCore(ActorSettings(mode='eval'), cfg, rig.graph,
                         policy=fixed_policy)
    rig.core.on_driver_ready(True)             # ready before the reset (the last episode)
    rig.tick()
    rig.graph.response = (True, 'going home')
    assert rig.tick() == [] and rig.core.phase == 'settling'
    for _ in range(3):                          # its "not ready" is a moment behind the answer
        assert rig.tick() == [] and rig.core.phase == 'settling'
    assert rig.core.stale_reason == 'waiting for the arm to reach home'
    rig.core.on_driver_ready(False)            # the driver's report of the homing arrives
    for _ in range(30):                         # 3 s homing
        assert rig.tick() == [] and rig.core.phase == 'settling'
    rig.core.on_driver_ready(True)             # home
    assert logs(rig.tick(), 'info') == ['arm home: re-place the cube; episode 0 starts in 2 s']
    countdown = [text for _ in range(10) for text in logs(rig.tick(), 'info')]
    assert countdown == ['1 s'] and rig.core.phase == 'settling'   # 1.1 s after home
    while rig.core.phase == 'settling':
        outputs = rig.tick()
    assert logs(outputs, 'info') == ['episode 0 started: go']
    (start,) = events(outputs)
    assert start['event'] == 'start' and start['episode'] == 0 and 'stamp_ns' not in start
    assert [type(o) for o in outputs] == [PublishEvent, Log, PublishProposal, PublishAction,
                                          PublishStatus]
    assert np.array_equal(outputs[2].action, [0.5, -0.5, 0.25, 1.0])
    assert outputs[3].source == ActionSource.POLICY and outputs[3].stamp_ns is None
    assert 'episode 0  step 0  return 0.00' in outputs[4].text


def test_an_arm_home_already_is_taken_as_home_after_a_grace_period():
    """The driver was home when asked: its "not ready" lasted a tick and only its "ready"
    reached the actor (driver/ready keeps one sample). After HOME_EDGE_GRACE_S of ready the
    arm counts as home, rather than resetting again after reset_timeout_s."""
    from hilserl_policy.actor_core import HOME_EDGE_GRACE_S
    rig = Rig(mode='eval')
    rig.core.on_driver_ready(True)
    rig.tick()
    rig.graph.response = (True, 'going home')
    rig.tick()
    ticks = 0
    while rig.core.home_since_s is None:
        rig.tick()
        ticks += 1
        assert ticks < 100
    assert ticks == pytest.approx(HOME_EDGE_GRACE_S / 0.1, abs=1)


def test_an_arm_that_never_reaches_home_is_reset_again():
    rig = Rig(mode='eval', reset_timeout_s=2.0)
    rig.tick()
    rig.graph.response = (True, 'going home')
    rig.tick()
    rig.core.on_driver_ready(False)            # driving home ... and stuck
    for _ in range(20):
        assert rig.tick() == [] and rig.core.phase == 'settling'
    outputs = rig.tick(0.05)
    assert logs(outputs, 'error') == ['the arm did not reach home within 2 s of the reset; '
                                      'resetting again']
    assert rig.core.phase == 'need_reset' and rig.core.counters['reset_failures'] == 1


def test_a_simulated_reset_is_home_at_once():
    rig = Rig(mode='train', sim_clock=True)
    rig.core.on_driver_ready(True)
    assert of(rig.sim_tick(), CallReset)
    rig.graph.response = (True, 'placed home')
    rig.sim_tick()
    ticks = 0
    while rig.core.phase == 'settling':
        assert not logs(rig.sim_tick()), 'no count-down on the simulated clock'
        ticks += 1
    assert ticks == 5   # reset_delay_s 0.5 s of 0.1 s ticks, then the first step


def test_a_resumed_run_goes_on_with_its_episode_numbering():
    rig = Rig(mode='eval')
    rig.core = ActorCore(ActorSettings(mode='eval'), CFG, rig.graph, policy=fixed_policy,
                         first_episode_index=12)
    assert rig.core.diagnostics().values['episode'] == '11'
    assert events(rig.start_episode())[0]['episode'] == 12


def test_wait_for_recorder_waits_for_ready_and_matched_writers():
    rig = Rig(mode='record', policy=None, wait_for_recorder=True)
    rig.core.on_driver_ready(True)
    rig.tick()
    rig.graph.response = (True, 'going home')
    rig.core.on_driver_ready(False)   # driving home
    rig.core.on_driver_ready(True)    # home
    rig.tick()
    rig.tick()                        # home: the re-place time starts
    rig.graph.writers = [WriterMatch(True, 1, 1), WriterMatch(False, 1, 1)]  # no recorder yet
    assert rig.tick(1.0) == [] and rig.core.phase == 'settling'  # not ready (says the recorder)
    assert rig.core.stale_reason == 'waiting for the episode recorder to hear the graph'
    rig.core.on_recorder_ready(True)
    assert rig.tick() == [] and rig.core.phase == 'settling'  # ready, a writer not heard
    rig.graph.writers = [WriterMatch(True, 0, 1), WriterMatch(True, 1, 1)]  # events unmatched
    assert rig.tick() == [] and rig.core.phase == 'settling'
    rig.graph.writers = [WriterMatch(True, 1, 1), WriterMatch(True, 1, 1)]
    rig.tick()
    assert rig.core.phase == 'running' and rig.core.counters['partial_reader_matches'] == 0


def test_partially_matched_writers_start_after_the_grace_period():
    rig = Rig(mode='record', policy=None, wait_for_recorder=True)
    rig.core.on_driver_ready(True)
    rig.core.on_recorder_ready(True)
    rig.tick()
    rig.graph.response = (True, 'going home')
    rig.core.on_driver_ready(False)
    rig.core.on_driver_ready(True)
    rig.tick()
    rig.tick()   # home: the re-place time starts
    # the graph lists two readers of the events, the writer has matched one
    rig.graph.writers = [WriterMatch(True, 1, 2), WriterMatch(True, 1, 1)]
    assert rig.tick(1.0) == [] and rig.core.phase == 'settling'
    assert rig.tick(RECORDER_MATCH_GRACE_S - 1.0) == []  # 4 s into the grace period
    rig.graph.writers[0] = WriterMatch(True, 0, 2)  # lost its match: the grace starts over
    rig.tick()
    rig.graph.writers[0] = WriterMatch(True, 1, 2)
    assert rig.tick(1.0) == [] and rig.tick(RECORDER_MATCH_GRACE_S - 0.5) == []
    outputs = rig.tick(0.5)
    assert rig.core.phase == 'running' and rig.core.counters['partial_reader_matches'] == 1
    assert logs(outputs, 'warning') == [
        'starting the episode with fewer matched readers than the graph lists (waited 5 s)']


# --- running ------------------------------------------------------------------------------------
def test_steps_publish_proposal_transition_reward_and_the_executed_action():
    rig = Rig(mode='train')
    rig.start_episode()
    outputs = rig.tick()
    assert [type(o) for o in outputs] == [PublishProposal, PublishTransition, PublishReward,
                                          PublishAction, PublishStatus]
    assert outputs[2].reward == -CFG.task.step_penalty
    transition, header = TransitionDecoder().decode(outputs[1].payload)
    assert (header['episode'], header['step']) == (0, 1) and outputs[1].stamp_ns is None
    assert np.array_equal(transition.action, [0.5, -0.5, 0.25, 1.0])
    assert not transition.intervention
    eval_rig = Rig(mode='eval')  # eval keeps no transitions, but rewards are published
    eval_rig.start_episode()
    assert [type(o) for o in eval_rig.tick()] == [PublishProposal, PublishReward, PublishAction,
                                                  PublishStatus]


def test_a_fresh_human_action_is_used_once_then_the_arm_holds():
    rig = Rig(mode='train')
    rig.human(stamp_ns=rig.now_ns)  # from before the episode: never carried into it
    action = executed(rig.start_episode())
    assert action.source == ActionSource.HUMAN and not action.action.any()  # the arm holds
    assert rig.core.counters['human_actions_used'] == 0
    assert rig.core.counters['human_actions_missing'] == 1
    rig.advance(0.05)
    rig.human()  # the device's own timer
    action = executed(rig.tick())
    assert action.source == ActionSource.HUMAN and np.array_equal(action.action, HUMAN_ACTION)
    assert rig.core.counters['human_actions_used'] == 1
    # intervention held, no new action: zeros (the arm holds), not the old action again
    action = executed(rig.tick())
    assert action.source == ActionSource.HUMAN and not action.action.any()
    assert rig.core.counters['human_actions_missing'] == 2
    rig.human(intervention=False)  # the human lets go: the policy acts
    action = executed(rig.tick())
    assert action.source == ActionSource.POLICY and action.action[0] == 0.5
    assert rig.core.counters['human_actions_used'] == 1


def test_record_mode_without_a_device_heard_holds_as_a_human_step():
    rig = Rig(mode='record', policy=None)
    outputs = rig.start_episode()
    assert not of(outputs, PublishProposal)[0].action.any()  # no policy: zeros proposed
    action = executed(outputs)
    assert action.source == ActionSource.HUMAN and not action.action.any()
    assert rig.core.counters['human_actions_missing'] == 1
    rig.human(intervention=False)  # in record mode the human acts whatever the button says
    action = executed(rig.tick())
    assert action.source == ActionSource.HUMAN and np.array_equal(action.action, HUMAN_ACTION)
    assert rig.core.counters['human_actions_used'] == 1


def test_stale_observations_pause_the_policy():
    rig = Rig(mode='eval')
    rig.start_episode()
    outputs = rig.tick(0.3, fresh=False)  # the last observation is 0.3 s old (limit 0.25 s)
    assert logs(outputs) == ['policy paused: image is 0.30 s old (limit 0.25 s)']
    assert len(outputs) == 1 and rig.core.counters['stale_ticks'] == 1
    assert rig.core.stale_reason == 'image is 0.30 s old (limit 0.25 s)'
    assert rig.tick(0.1, fresh=False) == []  # counted, the log throttled (2 s)
    assert rig.core.counters['stale_ticks'] == 2
    entry = rig.core.diagnostics('3 acts')
    assert entry.level == WARN and entry.message == 'running'
    assert entry.values['last_stale'] == 'image is 0.40 s old (limit 0.25 s)'
    assert entry.values['stale_ticks'] == '2' and entry.values['act_latency'] == '3 acts'
    assert entry.values['clock'] == 'wall' and entry.values['weights_step'] == '42'
    assert rig.core.diagnostics().level == OK  # each report covers the time since the last
    assert of(rig.tick(), PublishAction)  # fresh again: stepping goes on


def test_labels_are_published_as_events_before_the_step_they_end():
    rig = Rig(mode='train')
    rig.start_episode()
    rig.tick()
    assert rig.core.on_label('failure', monotonic_s=rig.monotonic_s) == []
    outputs = rig.tick()
    assert [type(o) for o in outputs] == [PublishProposal, PublishEvent, PublishTransition,
                                          PublishReward, PublishEvent, Log]
    label, end = events(outputs)
    assert label['event'] == 'label' and label['label'] == 'failure'
    assert end['event'] == 'end' and end['outcome'] == 'failure' and end['transitions'] == 2
    assert rig.core.phase == 'need_reset'
    bad = rig.core.on_label('maybe', monotonic_s=rig.monotonic_s)
    assert bad == [Log('warning', "ignored episode label: 'maybe'")]
    assert rig.core.counters['bad_messages'] == 1 and rig.core.label is None


def test_the_episode_ends_at_its_time_limit():
    rig = Rig(mode='eval')
    rig.start_episode()
    for _ in range(CFG.task.max_episode_steps - 1):
        rig.tick()
    outputs = rig.tick()
    assert not of(outputs, PublishAction)  # the ending tick executes nothing
    (end,) = events(outputs)
    assert end['outcome'] == 'timeout' and end['steps'] == 5 and end['transitions'] == 0
    assert logs(outputs, 'info') == ['episode 0 ended: TIMEOUT, 5 steps, return -0.25, 0 '
                                     'intervention steps (0% human; policy weights step 42)']
    assert rig.core.phase == 'need_reset' and rig.core.episodes_done == 1
    only(rig.tick(), CallReset)  # and the next episode is on its way


def test_record_success_rolls_on_with_the_human_before_the_episode_events():
    rig = Rig(mode='record', policy=None, record_steps_after_success=2)
    rig.start_episode()
    rig.core.on_success(True)  # ground truth: lifted
    outputs = rig.tick()
    assert rig.core.phase == 'post_roll' and not events(outputs) and not logs(outputs)
    assert of(outputs, PublishTransition) and not of(outputs, PublishAction)
    rig.human()
    outputs = rig.tick()
    action = executed(outputs)
    assert action.source == ActionSource.HUMAN and np.array_equal(action.action, HUMAN_ACTION)
    assert not events(outputs) and rig.core.phase == 'post_roll'
    outputs = rig.tick()  # the last post-roll step: no fresh action, the arm holds
    assert not executed(outputs).action.any()
    (end,) = events(outputs)
    assert end['event'] == 'end' and end['outcome'] == 'success' and end['transitions'] == 1
    assert rig.core.phase == 'need_reset'
    # the log says how much of the episode the human drove: all of it, recording
    assert '1 intervention steps (100% human;' in logs(outputs, 'info')[0]
    # without post roll the episode ends at once
    rig = Rig(mode='record', policy=None, record_steps_after_success=0)
    rig.start_episode()
    rig.core.on_success(True)
    assert events(rig.tick())[0]['outcome'] == 'success' and rig.core.phase == 'need_reset'


def test_a_rerecorded_episode_does_not_use_up_the_count():
    """record --episodes 2: the person presses u on the second; it is recorded again (a new
    episode number: the old bag stays, marked rerecord) and the run ends after two kept."""
    rig = Rig(mode='record', policy=None, num_episodes=2, record_steps_after_success=0)
    for label, message in (('failure', None), ('rerecord', 're-recording episode 1 (1 of 2 kept)'),
                           ('failure', None)):
        rig.start_episode()
        rig.core.on_label(label, monotonic_s=rig.monotonic_s)
        outputs = rig.tick()
        end = [e for e in events(outputs) if e['event'] == 'end']
        assert end[0]['outcome'] == label
        if message:
            assert message in logs(outputs, 'info') and rig.core.phase == 'need_reset'
    assert [e['event'] for e in events(outputs)][-1] == 'finished'
    assert rig.core.episodes_done == 2 and rig.core.runner.episode_index == 2


def test_a_key_between_episodes_is_answered_not_kept_for_the_next():
    rig = Rig(mode='record', policy=None, record_steps_after_success=0)
    rig.start_episode()
    for _ in range(4):
        rig.tick()
    rig.tick()   # the time limit (5 steps)
    assert rig.core.phase == 'need_reset'
    outputs = rig.core.on_label('success', monotonic_s=rig.monotonic_s)
    assert logs(outputs, 'warning') == [
        'success key between episodes (episode 0 ended TIMEOUT; the arm is resetting): it '
        'applies to no episode; press it while an episode runs']
    rig.start_episode()
    outputs = rig.tick()
    assert not [e for e in events(outputs) if e['event'] == 'label']   # not carried over
    assert rig.core.phase == 'running'
    # the simulated human's late key after a success ending is expected: no message
    sim = Rig(mode='train', sim_clock=True, wait_for_teleop=True)
    assert sim.core.on_label('success', monotonic_s=sim.monotonic_s) == []


def test_the_last_episode_finishes_the_run_and_writes_the_eval_summary(tmp_path):
    rig = Rig(mode='eval', num_episodes=1, output_dir=str(tmp_path))
    rig.start_episode()
    rig.core.on_label('success', monotonic_s=rig.monotonic_s)
    outputs = rig.tick()
    assert [type(o) for o in outputs] == [PublishProposal, PublishEvent, PublishReward,
                                          PublishEvent, Log, Print, Log, PublishEvent]
    assert '| Episode | Steps | Reward | Result |' in of(outputs, Print)[0].text
    assert logs(outputs)[-1] == f'eval summary written to {tmp_path / "eval_summary.json"}'
    assert events(outputs)[-1] == {'event': 'finished', 'episodes': 1}
    summary = json.loads((tmp_path / 'eval_summary.json').read_text())
    assert summary['episodes'] == 1 and summary['successes'] == 1
    assert summary['checkpoint_step'] == 42
    ticks = rig.core.counters['ticks']
    assert rig.tick() == [] and rig.core.counters['ticks'] == ticks  # nothing after the end
    assert not rig.core.finished(rig.monotonic_s - 0.1)
    assert rig.core.finished(rig.monotonic_s - 0.1 + 1.01)  # a second later: the exit


def test_the_run_goes_on_without_num_episodes(tmp_path):
    rig = Rig(mode='train', output_dir=str(tmp_path))
    rig.start_episode()
    rig.core.on_label('success', monotonic_s=rig.monotonic_s)
    outputs = rig.tick()
    assert [e['event'] for e in events(outputs)] == ['label', 'end']
    assert rig.core.phase == 'need_reset' and not rig.core.finished(rig.monotonic_s + 10)
    assert not (tmp_path / 'eval_summary.json').exists()


# --- simulated clock ---------------------------------------------------------------------------
def test_sim_clock_answers_each_tick_once_with_both_observations():
    rig = Rig(mode='eval', sim_clock=True)
    rig.graph.service_ready = False
    image = np.full((8, 8, 3), 7, np.uint8)
    assert rig.core.on_image(image, 5 * S, **rig.times()) == []  # joints not there yet
    outputs = rig.core.on_joints(np.zeros(6), np.zeros(6), 5 * S, **rig.times())
    # not stepping (need_reset): the tick is answered with 'hold still' at its stamp
    action = only(outputs, PublishAction)
    assert action.stamp_ns == 5 * S and not action.action.any()
    assert rig.core.counters['ticks'] == 1
    assert rig.core.on_image(image, 5 * S, **rig.times()) == []  # the same tick again
    assert rig.core.on_joints(np.zeros(6), np.zeros(6), 4 * S, **rig.times()) == []
    assert rig.core.on_image(image, 6 * S, **rig.times()) == []  # joints of another tick
    assert rig.core.counters['ticks'] == 1
    assert rig.core.tick_ns == 5 * S


def test_sim_clock_stamps_actions_events_and_transitions_with_the_tick():
    rig = Rig(mode='train', sim_clock=True)
    rig.tick_ns = 100 * S
    outputs = rig.start_episode(rig.sim_tick)
    assert not logs(outputs)  # no 'go': no person at the arm
    assert events(outputs)[0]['stamp_ns'] == rig.tick_ns
    assert of(outputs, PublishProposal)[0].stamp_ns == rig.tick_ns
    assert executed(outputs).stamp_ns == rig.tick_ns
    outputs = rig.sim_tick()
    assert of(outputs, PublishTransition)[0].stamp_ns == rig.tick_ns
    # phases are timed on the simulated clock, whatever the node's clock says
    assert rig.core.phase_since_s == pytest.approx((rig.tick_ns - 100_000_000) * 1e-9)


def test_wait_for_teleop_finishes_the_step_with_the_answer_for_that_tick():
    rig = Rig(mode='record', policy=None, sim_clock=True, wait_for_teleop=True)

    def sim_tick_answered():
        outputs = rig.sim_tick()
        if rig.core.proposal is not None:
            outputs += rig.human(stamp_ns=rig.tick_ns)
        return outputs

    rig.start_episode(sim_tick_answered)
    outputs = rig.sim_tick()
    assert [type(o) for o in outputs] == [PublishProposal]  # waits for the human's answer
    assert rig.human(stamp_ns=rig.tick_ns - S // 10) == []  # the previous tick's answer
    outputs = rig.human(stamp_ns=rig.tick_ns)
    action = executed(outputs)
    assert action.source == ActionSource.HUMAN and action.stamp_ns == rig.tick_ns
    assert np.array_equal(action.action, HUMAN_ACTION)
    assert rig.human(stamp_ns=rig.tick_ns) == []  # answered once


def test_unanswered_proposals_are_counted_and_teleop_resubscribed_after_three():
    rig = Rig(mode='eval', sim_clock=True, wait_for_teleop=True)

    def sim_tick_answered():
        outputs = rig.sim_tick()
        if rig.core.proposal is not None:
            outputs += rig.human(intervention=False, stamp_ns=rig.tick_ns)
        return outputs

    rig.start_episode(sim_tick_answered)
    rig.sim_tick()  # proposal 1 left unanswered ...
    assert not of(rig.sim_tick(), ResubscribeTeleop)  # ... seen at the next tick
    assert rig.core.counters['unanswered_proposals'] == 1
    assert rig.core.stale_reason == 'no answer from the simulated human (teleop) to the proposal'
    rig.human(intervention=False, stamp_ns=rig.tick_ns)  # answered: the count in a row restarts
    for _ in range(3):
        rig.sim_tick()
    assert rig.core.counters['teleop_resubscribed'] == 0
    outputs = rig.sim_tick()
    assert rig.core.counters['unanswered_proposals'] == 4
    assert [type(o) for o in outputs] == [Log, ResubscribeTeleop, PublishProposal]
    assert logs(outputs, 'warning') == ['3 proposals in a row without the simulated human\'s '
                                        'answer: subscribing to teleop/action anew']
    assert rig.core.counters['teleop_resubscribed'] == 1 and rig.core.unanswered_ticks == 0


def test_sim_clock_answers_the_ending_ticks_with_hold_still():
    rig = Rig(mode='record', policy=None, sim_clock=True, record_steps_after_success=1)
    rig.start_episode(rig.sim_tick)
    rig.core.on_success(True)
    outputs = rig.sim_tick()  # success: post roll begins, the tick still needs its answer
    assert rig.core.phase == 'post_roll' and not events(outputs)
    hold = executed(outputs)
    assert hold.stamp_ns == rig.tick_ns and not hold.action.any()
    assert hold.source == ActionSource.POLICY
    outputs = rig.sim_tick()  # the post roll's one step, then the deferred end
    assert events(outputs)[0]['event'] == 'end' and rig.core.phase == 'need_reset'
    rig = Rig(mode='eval', sim_clock=True)
    rig.start_episode(rig.sim_tick)
    rig.core.on_label('rerecord', monotonic_s=rig.monotonic_s)
    outputs = rig.sim_tick()
    assert events(outputs)[-1]['outcome'] == 'rerecord'
    hold = executed(outputs)
    assert hold.stamp_ns == rig.tick_ns and not hold.action.any()


# --- other inputs ---------------------------------------------------------------------------------
def test_bad_messages_and_weights_are_counted_with_throttled_logs():
    rig = Rig(mode='train')
    outputs = rig.core.on_image(np.zeros((4, 4, 3), np.uint8), rig.now_ns, **rig.times())
    assert logs(outputs, 'warning')[0].startswith('ignored image: policy image is (4, 4, 3)')
    assert rig.core.on_bad_message('teleop action', ValueError('no button'),
                                   monotonic_s=rig.monotonic_s + 1.0) == []
    assert logs(rig.core.on_bad_message('joint_states', ValueError('x'),
                                        monotonic_s=rig.monotonic_s + 2.0)) == [
        'ignored joint_states: x']
    assert rig.core.counters['bad_messages'] == 3
    assert logs(rig.core.on_weights_rejected(ValueError('digest'),
                                             monotonic_s=rig.monotonic_s), 'error') == [
        'policy weights rejected: digest']
    assert rig.core.on_weights_rejected(ValueError('digest'),
                                        monotonic_s=rig.monotonic_s + 4.9) == []
    rig.core.on_weights_loaded(17)
    assert rig.core.counters['weights_rejected'] == 2 and rig.core.counters['weights_loaded'] == 1
    assert rig.core.weights_step == 17 and rig.core.diagnostics().values['weights_step'] == '17'


def test_a_graph_that_runs_no_episode_says_what_it_waits_for():
    from hilserl_policy.actor_core import NO_EPISODE_WARN_S
    rig = Rig(mode='train')
    rig.graph.learner = False            # the learner never subscribes
    said = []
    for _ in range(int(NO_EPISODE_WARN_S) + 2):
        rig.tick(1.0)
        said += logs(rig.core.check_progress(monotonic_s=rig.monotonic_s), 'warning')
    assert said == ['no episode for 30 s: waiting for the learner (sac_learner) to subscribe '
                    'to the transitions']
    rig.graph.learner = True
    rig.start_episode()
    assert rig.core.check_progress(monotonic_s=rig.monotonic_s) == []
    sim = Rig(mode='train', sim_clock=True)   # no tick ever arrives
    sim.advance(NO_EPISODE_WARN_S)
    sim.core.check_progress(monotonic_s=sim.monotonic_s - NO_EPISODE_WARN_S)
    (line,) = logs(sim.core.check_progress(monotonic_s=sim.monotonic_s))
    assert 'waiting for the first observation tick' in line


def test_a_running_episode_pauses_while_the_driver_is_not_ready():
    """A lock-out mid-episode: no step is counted and no transition goes out until the driver
    is ready again; the pause and the resumption are each said once."""
    rig = Rig(mode='train')
    rig.start_episode()
    rig.tick()
    steps = rig.core.runner.stats.steps
    rig.core.on_driver_ready(False)         # a servo overheated and let go
    outputs = rig.tick()
    assert not of(outputs, PublishTransition) and not of(outputs, PublishProposal)
    (line,) = logs(outputs, 'warning')
    assert line.startswith(f'episode 0 paused at step {steps}') and 'hilserl torque on' in line
    for _ in range(20):
        outputs = rig.tick()
        assert not of(outputs, PublishTransition) and not logs(outputs)
    assert rig.core.runner.stats.steps == steps and rig.core.counters['pauses'] == 1
    assert rig.core.diagnostics().level == WARN
    rig.core.on_driver_ready(True)          # re-armed
    outputs = rig.tick()
    assert logs(outputs, 'info') == ['episode 0 goes on: the driver is ready again']
    assert of(outputs, PublishTransition) and rig.core.runner.stats.steps == steps + 1


@pytest.mark.parametrize('label', ['failure', 'rerecord'])
def test_a_failure_or_rerecord_key_ends_a_paused_episode(label):
    """Locked out mid-episode, the person gives up on it: the key ends the episode at once,
    with that outcome and no further step or transition, and the graph moves on to a reset."""
    rig = Rig(mode='record')
    rig.start_episode()
    rig.tick()
    steps = rig.core.runner.stats.steps
    rig.core.on_driver_ready(False)
    rig.tick()
    rig.core.on_label(label, monotonic_s=rig.monotonic_s)
    outputs = rig.tick()
    assert not of(outputs, PublishTransition)
    assert [e['event'] for e in events(outputs)] == ['label', 'end']
    assert events(outputs)[-1]['outcome'] == label and not events(outputs)[-1]['success']
    assert f'episode 0 ended by the {label} key while paused' in logs(outputs, 'info')
    assert rig.core.runner.stats.steps == steps and rig.core.phase == 'need_reset'


def test_a_success_key_waits_for_the_paused_episode_to_go_on():
    """Success is judged on the arm's next step: a paused episode keeps the key until then."""
    rig = Rig(mode='record')
    rig.start_episode()
    rig.tick()
    rig.core.on_driver_ready(False)
    rig.tick()
    rig.core.on_label('success', monotonic_s=rig.monotonic_s)
    assert not events(rig.tick())
    rig.core.on_driver_ready(True)
    assert [e.get('label') for e in events(rig.tick())] == ['success']
    assert rig.core.runner.stats.outcome == 'success'
