"""The actor's decisions, free of ROS: the phases between and within episodes (need_reset,
resetting, settling, running, post_roll), which tick to answer on the simulated clock, the
human handover, the end of a step and of the run, counters and the diagnostics they feed.
`actor_node.py` converts messages, feeds them here with the time, and carries out what comes
back (publish, call the reset service, subscribe anew, log).

Time comes in as arguments: `now_ns`, the node's clock (stamps and phase durations; with
`sim_clock` the tick being answered stands in for it), and `monotonic_s`, wall time that
never jumps (discovery grace, the exit delay, log throttling).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import (Callable, Dict, Iterable, List, NamedTuple, Optional, Protocol, Tuple,
                    Union)

import numpy as np

from hilserl.configuration.config import DEFAULT_CAMERA, TrainConfig
from hilserl.messages.conventions import ActionSource, Topics
from hilserl.messages.diagnostics import OK, WARN, DiagnosticEntry
from hilserl.configuration.parameters import param
from hilserl.data.transition import TransitionEncoder
from hilserl_policy.episode import EpisodeRunner, ObservationAssembler, StaleObservation
from hilserl_policy.evaluation import EvalRecorder

MODES = ('train', 'eval', 'record')
LABELS = ('success', 'failure', 'rerecord')
# Lock-step: proposals in a row that the driver gave up on before the simulated human answered.
UNANSWERED_TICKS_BEFORE_RESUBSCRIBE = 3
# Discovery: how long (wall) to wait for readers the graph lists but a writer has not matched.
RECORDER_MATCH_GRACE_S = 5.0
# The last episode's `end` and `finished` events reach the recorder before the process goes.
FINISHED_EXIT_DELAY_S = 1.0
# Warnings that could repeat every tick or message are logged at most once per period (s);
# each key is one message kind (all ignored messages share one, as they always did).
THROTTLE_S = {'ignored message': 2.0, 'policy paused': 2.0, 'reset refused': 5.0,
              'weights rejected': 5.0, 'no episode': 30.0, 'episode paused': 10.0}
# The driver says not ready before it answers a reset and ready again once home; an arm that
# was home already flips back within a tick, and driver/ready keeps only its newest sample, so
# a ready driver that showed no "not ready" this long after its answer is taken as home (s).
HOME_EDGE_GRACE_S = 1.0
# A graph up for this long without an episode running says what the actor waits for (wall s).
NO_EPISODE_WARN_S = 30.0


@dataclass(frozen=True)
class ActorSettings:
    """How the actor runs; the fields are the sac_actor node's parameters of the same name."""
    mode: str = param('train', 'train (stochastic, streams transitions), eval (deterministic) '
                      'or record (the human acts: demonstrations)')
    num_episodes: int = param(0, 'stop after this many episodes (0: never)',
                              int_range=(0, 1_000_000))
    output_dir: str = param('outputs/eval', 'where eval writes eval_summary.json')
    sim_clock: bool = param(False, 'act once per observation tick and echo its stamp (the '
                            'simulation driver owns time)')
    wait_for_teleop: bool = param(False, 'sim_clock: act on a tick only with the teleop answer '
                                  'for that tick (the simulated human)')
    wait_for_recorder: bool = param(False, 'start no episode before the episode recorder says '
                                    'it hears the camera, driver and this node (a bag missing '
                                    'its first episode\'s images otherwise)')
    record_steps_after_success: int = param(6, 'record: keep the human acting (and the bag '
                                            'recording) this many steps after success: '
                                            'classifier positives', int_range=(0, 100))

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: must be 'train', 'eval' or 'record'")
        for name in ('num_episodes', 'record_steps_after_success'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f'{name}={value!r}: must be an integer >= 0')

    @property
    def waits_for_learner(self) -> bool:
        """Train: transitions are volatile, so no episode starts before the learner listens."""
        return self.mode == 'train'

    @property
    def streams_transitions(self) -> bool:
        """Train sends them to the learner, record to the recorder; eval keeps none."""
        return self.mode in ('train', 'record')


class WriterMatch(NamedTuple):
    """One of the actor's writers (events, transitions) as the graph sees it."""
    recorder_listed: bool   # the graph lists an episode_recorder reader of its topic
    matched: int            # readers the writer has matched
    listed: int             # readers the graph lists


class GraphView(Protocol):
    """What the node can tell about the ROS graph and its reset call. The core asks only when
    a decision needs the answer: graph queries are not free."""

    def reset_service_ready(self) -> bool: ...

    def reset_response(self) -> Optional[Tuple[bool, str]]:
        """(success, message) of the reset call once it answered (each answer given once)."""

    def learner_listening(self) -> bool:
        """A sac_learner (not just the recorder) subscribes to the transitions."""

    def writer_matches(self) -> Iterable[WriterMatch]: ...


# --- what the node carries out, in the order given ------------------------------------------
@dataclass(frozen=True, eq=False)
class PublishProposal:
    """policy/action: the policy's proposal for the tick (the human judges it)."""
    action: np.ndarray
    stamp_ns: Optional[int]


@dataclass(frozen=True, eq=False)
class PublishAction:
    """action: what the driver executes, labelled with who acts, echoing the tick's stamp."""
    action: np.ndarray
    source: str
    stamp_ns: Optional[int]


@dataclass(frozen=True)
class PublishTransition:
    payload: bytes
    stamp_ns: Optional[int]  # sim_clock: the tick the recorder files it under, however late


@dataclass(frozen=True)
class PublishReward:
    reward: float


@dataclass(frozen=True)
class PublishEvent:
    text: str  # one JSON object


@dataclass(frozen=True)
class PublishStatus:
    text: str  # the episode's status line for RViz


@dataclass(frozen=True)
class CallReset:
    """Call the driver's reset service; its answer comes back through GraphView."""


@dataclass(frozen=True)
class ResubscribeTeleop:
    """Destroy the teleop action subscription and subscribe anew (discovery matches again)."""


@dataclass(frozen=True)
class Log:
    level: str  # info | warning | error
    text: str


@dataclass(frozen=True)
class Print:
    text: str  # for the console (stdout), not the log


Output = Union[PublishProposal, PublishAction, PublishTransition, PublishReward, PublishEvent,
               PublishStatus, CallReset, ResubscribeTeleop, Log, Print]
Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ActorCore:
    """Phases: need_reset -> resetting -> settling -> running [-> post_roll] -> need_reset.
    Every entry point returns the outputs the node carries out, in order."""

    def __init__(self, settings: ActorSettings, cfg: TrainConfig, graph: GraphView,
                 policy: Optional[Policy] = None, weights_step: int = -1,
                 first_episode_index: int = 0):
        """`policy`: (stacked image, state) -> action; None only in record mode, where the
        human acts on every step. `weights_step`: the learner step of the policy's weights.
        `first_episode_index`: a resumed run goes on with its numbering."""
        if policy is None and settings.mode != 'record':
            raise ValueError(f'mode={settings.mode} needs a policy (only record runs without)')
        self.settings = settings
        self.cfg = cfg
        self.graph = graph
        self.policy = policy
        self.assembler = ObservationAssembler(cfg)
        self.runner = EpisodeRunner(cfg, self._propose)
        self.runner.episode_index = first_episode_index - 1
        self.evaluation = EvalRecorder() if settings.mode == 'eval' else None
        # each image once on the wire
        self.transition_encoder = TransitionEncoder() if settings.streams_transitions else None
        self.phase = 'need_reset'
        self.phase_since_s: Optional[float] = None
        self.success = False
        self.success_probability = float('nan')  # the classifier's, shown in the status only
        self.driver_ready = False
        # the reset's homing: the driver reported not ready since the reset was asked for (it
        # is while it drives home), and since when the arm is home (the re-place time runs)
        self.driver_left_ready = False
        self.paused = False   # a running episode waits for the driver (see _arm_answers)
        self.pause_said = False
        self.home_since_s: Optional[float] = None
        self.countdown_shown_s: Optional[int] = None
        self.recorder_ready = False
        # Latest human output: (action, intervention, stamp_ns); each action is used once.
        self.human: Optional[tuple] = None
        self.human_used_ns = -1
        self.label: Optional[str] = None
        self.image_stamps_ns: Dict[str, int] = {}  # by camera: its newest view's stamp
        self.joints_stamp_ns: Optional[int] = None
        self.tick_ns: Optional[int] = None   # sim_clock: the tick being answered
        self.proposal: Optional[tuple] = None  # (image, state, policy action) of that tick
        self.unanswered_ticks = 0  # lock-step: proposals in a row the simulated human missed
        self.episode_transitions = 0   # published in the running episode
        self.post_roll_left = 0
        self.deferred_events: List[str] = []
        self.partial_match_since_s: Optional[float] = None
        self.weights_step = weights_step
        self.counters = {'ticks': 0, 'stale_ticks': 0, 'bad_messages': 0, 'weights_loaded': 0,
                         'weights_rejected': 0, 'reset_failures': 0, 'human_actions_used': 0,
                         'human_actions_missing': 0, 'unanswered_proposals': 0,
                         'teleop_resubscribed': 0, 'partial_reader_matches': 0, 'pauses': 0}
        self.weights_rejected_reasons: Counter = Counter()
        self.stale_reason = ''
        self.done_since_s: Optional[float] = None  # wall time the last episode ended
        self.episodes_done = 0
        self._last_logged_s: Dict[str, float] = {}
        self._no_episode_since_s: Optional[float] = None  # wall time episodes stopped running
        self._outputs: List[Output] = []
        self._clock_ns = 0
        self._monotonic_s = 0.0

    # --- inputs ---------------------------------------------------------------------------
    def on_image(self, image_hwc: np.ndarray, stamp_ns: int, *, now_ns: int,
                 monotonic_s: float, camera: str = DEFAULT_CAMERA) -> List[Output]:
        """A camera's policy view (HWC uint8) and its header stamp; with sim_clock it may
        complete a tick (every camera's view and the joint state of one stamp) and answer it."""
        self._enter(monotonic_s, now_ns)
        try:
            self.assembler.set_image(image_hwc, self._stamp_s(stamp_ns), camera)
        except ValueError as exc:
            self._ignored('image', exc)
            return self._take()
        self.image_stamps_ns[camera] = stamp_ns
        self._on_observation()
        return self._take()

    def on_joints(self, position_rad, velocity_rad_s, stamp_ns: int, *, now_ns: int,
                  monotonic_s: float) -> List[Output]:
        self._enter(monotonic_s, now_ns)
        self.assembler.set_joints(position_rad, velocity_rad_s, self._stamp_s(stamp_ns))
        self.joints_stamp_ns = stamp_ns
        self._on_observation()
        return self._take()

    def on_human(self, action: np.ndarray, intervention: bool, stamp_ns: int, *, now_ns: int,
                 monotonic_s: float) -> List[Output]:
        """The teleop device's (or simulated human's) latest output; with wait_for_teleop it
        may be the answer that finishes the tick's step."""
        self._enter(monotonic_s, now_ns)
        self.human = (action, intervention, stamp_ns)
        if self.settings.sim_clock and self.proposal is not None and stamp_ns == self.tick_ns:
            self._finish_step()
        return self._take()

    def on_label(self, label: str, *, monotonic_s: float) -> List[Output]:
        """The human's episode key; it takes effect on the next step of a running episode.
        Between episodes it applies to none: the person is told so, it is not kept for the
        next episode."""
        self._enter(monotonic_s)
        if label not in LABELS:
            self._ignored('episode label', ValueError(repr(label)))
        elif self.phase == 'running':
            self.label = label
        elif not self.settings.wait_for_teleop:  # a person pressed it (not the simulated human)
            stats = self.runner.stats
            ended = (f'episode {stats.episode} ended {stats.outcome.upper()}'
                     if stats is not None and stats.outcome != 'running' else 'no episode ran')
            resetting = self.phase in ('need_reset', 'resetting', 'settling')
            waiting = 'the arm is resetting' if resetting else 'post roll'
            self._log('warning', f'{label} key between episodes ({ended}; {waiting}): it '
                      'applies to no episode; press it while an episode runs')
        return self._take()

    def on_bad_message(self, what: str, error: Exception, *, monotonic_s: float) -> List[Output]:
        """A message the node could not convert: counted and (throttled) logged."""
        self._enter(monotonic_s)
        self._ignored(what, error)
        return self._take()

    def on_driver_ready(self, ready: bool) -> None:
        self.driver_ready = bool(ready)
        if not ready:
            self.driver_left_ready = True

    def on_recorder_ready(self, ready: bool) -> None:
        self.recorder_ready = bool(ready)

    def on_success(self, success: bool) -> None:
        self.success = bool(success)

    def on_success_probability(self, probability: float) -> None:
        self.success_probability = float(probability)

    def on_weights_loaded(self, step: int) -> None:
        self.weights_step = int(step)
        self.counters['weights_loaded'] += 1

    def on_weights_rejected(self, error: Exception, *, monotonic_s: float,
                            reason: str = 'invalid') -> List[Output]:
        """Weights not applied (the policy keeps the ones it has): counted, by `reason`."""
        self._enter(monotonic_s)
        self.counters['weights_rejected'] += 1
        self.weights_rejected_reasons[reason] += 1
        self._log_throttled('weights rejected', 'error', f'policy weights rejected: {error}')
        return self._take()

    def tick(self, *, now_ns: int, monotonic_s: float) -> List[Output]:
        """Wall clock (no sim_clock): the control-rate timer; a step when one is due."""
        self._enter(monotonic_s, now_ns)
        if self.done_since_s is None:
            self.counters['ticks'] += 1
            if self._advance_phase() and self._propose_step():
                self._finish_step()
        return self._take()

    def check_progress(self, *, monotonic_s: float) -> List[Output]:
        """Called about once a second (the node's diagnostics timer): while no episode runs
        for NO_EPISODE_WARN_S, say once every NO_EPISODE_WARN_S what the actor is waiting for
        (a graph that comes up and runs nothing is otherwise silent)."""
        self._enter(monotonic_s)
        if self.phase in ('running', 'post_roll') or self.done_since_s is not None:
            self._no_episode_since_s = None
            return self._take()
        if self._no_episode_since_s is None:
            self._no_episode_since_s = monotonic_s
        waited_s = monotonic_s - self._no_episode_since_s
        if waited_s >= NO_EPISODE_WARN_S:
            self._log_throttled('no episode', 'warning', f'no episode for {waited_s:.0f} s: '
                                f'waiting for {self._waiting_for()}')
        return self._take()

    def _waiting_for(self) -> str:
        if self.settings.sim_clock and self.tick_ns is None:
            return 'the first observation tick (image and joint state of one stamp) from the ' \
                f'driver and the camera{"s" if len(self.assembler.cameras) > 1 else ""}'
        if self.phase == 'need_reset':
            if self.settings.waits_for_learner and not self.graph.learner_listening():
                return 'the learner (sac_learner) to subscribe to the transitions'
            return 'the driver\'s reset service'
        if self.phase == 'resetting':
            return 'the driver\'s answer to the reset'
        if not self._arm_home(self._now_s() - (self.phase_since_s or self._now_s())):
            return 'the arm to reach home (driver/ready)'
        if self.settings.wait_for_recorder:
            return 'the episode recorder to hear the graph (episode_recorder/ready)'
        return 'the next observation'

    # --- reading --------------------------------------------------------------------------
    def finished(self, monotonic_s: float) -> bool:
        """True a moment after the last of num_episodes ended (the process may end then)."""
        return self.done_since_s is not None and \
            monotonic_s - self.done_since_s > FINISHED_EXIT_DELAY_S

    def diagnostics(self, act_latency: str = '') -> DiagnosticEntry:
        """The actor's entry; WARN while running with a stale reason. Each report covers the
        time since the previous one: the stale reason is cleared."""
        level = WARN if self.phase == 'running' and self.stale_reason else OK
        values = {k: str(v) for k, v in self.counters.items()}
        values.update(phase=self.phase, episode=str(self.runner.episode_index),
                      clock='simulated' if self.settings.sim_clock else 'wall',
                      weights_step=str(self.weights_step),
                      weights_rejected_reasons=json.dumps(dict(self.weights_rejected_reasons)),
                      last_stale=self.stale_reason,
                      act_latency=act_latency)
        self.stale_reason = ''
        return DiagnosticEntry('sac_actor', level, f'{self.phase}', values)

    # --- time and outputs -----------------------------------------------------------------
    def _enter(self, monotonic_s: float, now_ns: Optional[int] = None) -> None:
        """Start an entry point: its time (the node's clock only where it is used)."""
        if now_ns is not None:
            self._clock_ns = int(now_ns)
        self._monotonic_s = float(monotonic_s)
        self._outputs = []

    def _take(self) -> List[Output]:
        outputs, self._outputs = self._outputs, []
        return outputs

    def _emit(self, output: Output) -> None:
        self._outputs.append(output)

    def _now_s(self) -> float:
        """Simulated time of the tick being answered (sim_clock), else the node's clock."""
        if self.settings.sim_clock and self.tick_ns is not None:
            return self.tick_ns * 1e-9
        return self._clock_ns * 1e-9

    def _stamp_s(self, stamp_ns: int) -> float:
        """An observation's time: its stamp on the simulated clock, else when it arrived."""
        return stamp_ns * 1e-9 if self.settings.sim_clock else self._now_s()

    def _tick_stamp(self) -> Optional[int]:
        """The stamp actions carry: the tick they answer (sim_clock), else none."""
        return self.tick_ns if self.settings.sim_clock else None

    def _log(self, level: str, text: str) -> None:
        self._emit(Log(level, text))

    def _log_throttled(self, key: str, level: str, text: str) -> bool:
        """Log unless the same kind was logged within its THROTTLE_S; True when logged."""
        last = self._last_logged_s.get(key)
        if last is None or self._monotonic_s >= last + THROTTLE_S[key]:
            self._last_logged_s[key] = self._monotonic_s
            self._log(level, text)
            return True
        return False

    def _ignored(self, what: str, error: Exception) -> None:
        self.counters['bad_messages'] += 1
        self._log_throttled('ignored message', 'warning', f'ignored {what}: {error}')

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_since_s = self._now_s()

    def _propose(self, image, state) -> np.ndarray:
        if self.policy is None:  # record: the human acts on every step
            return np.zeros(self.cfg.action.dim, np.float32)
        return self.policy(image, state)

    # --- control loop ---------------------------------------------------------------------
    def _on_observation(self) -> None:
        """sim_clock: a tick's images (one per camera) and joint state have all arrived: answer
        it once."""
        if not self.settings.sim_clock or self.done_since_s is not None:
            return
        stamp_ns = self.joints_stamp_ns
        if stamp_ns is None or any(self.image_stamps_ns.get(camera) != stamp_ns
                                   for camera in self.assembler.cameras) or \
                (self.tick_ns is not None and stamp_ns <= self.tick_ns):
            return
        self.tick_ns = stamp_ns
        if self.proposal is not None and self.settings.wait_for_teleop:
            self._proposal_unanswered()
        self.proposal = None
        self.counters['ticks'] += 1
        if not self._advance_phase() or not self._propose_step():
            self._hold()
            return
        if not self.settings.wait_for_teleop or \
                (self.human is not None and self.human[2] == stamp_ns):
            self._finish_step()
        # else: the simulated human answers this tick's proposal; on_human finishes the step

    def _proposal_unanswered(self) -> None:
        """The driver moved on (its action timeout) without the simulated human's answer.
        Under heavy load a DDS reader has been seen to stay matched yet receive nothing: after
        a few ticks in a row, a fresh subscription makes discovery match it anew."""
        self.counters['unanswered_proposals'] += 1
        self.unanswered_ticks += 1
        self.stale_reason = 'no answer from the simulated human (teleop) to the proposal'
        if self.unanswered_ticks >= UNANSWERED_TICKS_BEFORE_RESUBSCRIBE:
            self._log('warning', f'{self.unanswered_ticks} proposals in a row without the '
                      f'simulated human\'s answer: subscribing to {Topics.HUMAN_ACTION} anew')
            self._emit(ResubscribeTeleop())
            self.counters['teleop_resubscribed'] += 1
            self.unanswered_ticks = 0

    def _advance_phase(self) -> bool:
        """Resets and settling between episodes; True when an episode step is due."""
        if self.phase in ('running', 'post_roll'):
            return self._arm_answers()
        if self.phase == 'need_reset':
            if self.settings.waits_for_learner and not self.graph.learner_listening():
                # transitions are volatile: do not start before the learner listens
                self.stale_reason = 'waiting for the learner to subscribe to transitions'
                return False
            if self.graph.reset_service_ready():
                self._emit(CallReset())
                self._set_phase('resetting')
                # a driver that is not ready now has left ready for this reset already
                self.driver_left_ready = not self.driver_ready
                self.home_since_s = None
                self.countdown_shown_s = None
            return False
        waited_s = self._now_s() - self.phase_since_s
        if self.phase == 'resetting':
            response = self.graph.reset_response()
            if response is not None:
                success, message = response
                if not success:
                    self.counters['reset_failures'] += 1
                    self._log_throttled('reset refused', 'error', f'reset refused: {message}')
                    self._set_phase('need_reset')
                    return False
                self._set_phase('settling')
                if self._arm_home():  # a simulated reset: home with its answer
                    self.home_since_s = self._now_s()
            elif waited_s > self.cfg.task.reset_timeout_s:
                self.counters['reset_failures'] += 1
                self._log('error', 'reset timed out; retrying')
                self._set_phase('need_reset')
            return False
        if not self._home_and_replaced(waited_s):
            return False
        if self.settings.wait_for_recorder and not (self.recorder_ready and
                                                    self._recorder_matched()):
            self.stale_reason = 'waiting for the episode recorder to hear the graph'
            return False
        self.assembler.reset()
        self.label = None
        self.success = False
        # a device's action from before the episode is not carried into it
        self.human_used_ns = self._clock_ns - 1
        self._publish_event(self.runner.start())
        self._set_phase('running')
        if not self.settings.sim_clock:  # a person at the arm: the episode is theirs from now on
            self._log('info', f'episode {self.runner.episode_index} started: go')
        return True

    def _arm_answers(self) -> bool:
        """A running episode pauses while the driver is not ready (a servo locked out by its
        protection, an e-stop, a bus that stopped answering): no step is counted and no
        transition goes out, as the arm does not move; it goes on when the driver is back."""
        if self.driver_ready:
            if self.paused:
                self.paused = False
                if self.pause_said:  # a blip of one failed read is not worth two lines
                    self._log('info', f'episode {self.runner.episode_index} goes on: the '
                              'driver is ready again')
            return True
        if self.label in ('failure', 'rerecord'):
            # the person gave up on the paused episode: it ends now, without another step
            label, self.label = self.label, None
            self._publish_event(self.runner.stats.event('label', label=label))
            self._publish_event(self.runner.end_by_label(label))
            self.paused = False
            self._log('info', f'episode {self.runner.episode_index} ended by the {label} key '
                      'while paused')
            self._episode_ended()
            return False
        if not self.paused:
            self.paused = True
            self.counters['pauses'] += 1
            self.pause_said = self._log_throttled(
                'episode paused', 'warning', f'episode {self.runner.episode_index} paused at '
                f'step {self.runner.stats.steps}: the driver is not ready (its log says why: a '
                'lock-out, an e-stop or a bus that stopped answering); after a lock-out, once '
                'the servo has cooled: hilserl torque on (or the t key); j or u ends it')
        self.stale_reason = 'episode paused: the driver is not ready'
        return False

    def _arm_home(self, settling_s: float = 0.0) -> bool:
        """The driver is ready after the reset's homing (a simulated reset: at once): it was
        seen not ready since the reset was asked for, or it stayed ready for HOME_EDGE_GRACE_S
        after its answer (it was home already: its short "not ready" was not seen)."""
        return self.driver_ready and (self.settings.sim_clock or self.driver_left_ready or
                                      settling_s >= HOME_EDGE_GRACE_S)

    def _home_and_replaced(self, settling_s: float) -> bool:
        """Settling: on hardware the arm drives home after the reset call returns, and the
        driver is not ready until it is there; only then does the person's time to re-place the
        cube (task.reset_delay_s) start, counted down at the terminal. A simulated reset puts
        the arm home at once."""
        if not self._arm_home(settling_s):
            self.home_since_s = None
            if settling_s > self.cfg.task.reset_timeout_s:
                self.counters['reset_failures'] += 1
                self._log('error', f'the arm did not reach home within '
                          f'{self.cfg.task.reset_timeout_s:g} s of the reset; resetting again')
                self._set_phase('need_reset')
            else:
                self.stale_reason = 'waiting for the arm to reach home'
            return False
        if self.home_since_s is None:
            self.home_since_s = self._now_s()
        left_s = self.cfg.task.reset_delay_s - (self._now_s() - self.home_since_s)
        if left_s > 0:
            if not self.settings.sim_clock and math.ceil(left_s) != self.countdown_shown_s:
                self.countdown_shown_s = math.ceil(left_s)
                first = self.countdown_shown_s == math.ceil(self.cfg.task.reset_delay_s)
                self._log('info', (f'arm home: re-place the cube; episode '
                                   f'{self.runner.episode_index + 1} starts in '
                                   if first else '') + f'{self.countdown_shown_s} s')
            return False
        return True

    def _recorder_matched(self) -> bool:
        """The recorder's `ready` says its readers found our writers; discovery runs on each
        side apart, so also check that our event and transition writers have found readers
        (an event sent before that is lost). The graph may list readers a writer never matches
        (seen across hosts: a reader known from the graph but not yet, or never, matched), so
        once every writer has at least one match the full count is awaited for a grace period
        only, rather than for ever."""
        complete = True
        for writer in self.graph.writer_matches():
            if not writer.recorder_listed or writer.matched < 1:
                self.partial_match_since_s = None
                return False
            complete = complete and writer.matched >= writer.listed
        if complete:
            return True
        if self.partial_match_since_s is None:
            self.partial_match_since_s = self._monotonic_s
        if self._monotonic_s - self.partial_match_since_s < RECORDER_MATCH_GRACE_S:
            return False
        self.counters['partial_reader_matches'] += 1
        self._log('warning', 'starting the episode with fewer matched readers than the graph '
                  f'lists (waited {RECORDER_MATCH_GRACE_S:.0f} s)')
        self.partial_match_since_s = None
        return True

    def _propose_step(self) -> bool:
        """Observe and publish the policy's proposal for this tick; False if stale."""
        try:
            image, state = self.assembler.observe(self._now_s())
        except StaleObservation as exc:
            # the driver's watchdog holds the arm while we publish nothing
            self.counters['stale_ticks'] += 1
            self.stale_reason = str(exc)
            self._log_throttled('policy paused', 'warning', f'policy paused: {exc}')
            return False
        action = np.clip(np.asarray(self._propose(image, state), np.float32), -1, 1)
        self.proposal = (image, state, action)
        self._emit(PublishProposal(action, self._tick_stamp()))
        return True

    def _fresh_human(self):
        """(action, intervention) of the human for this tick: an action is used once; while
        the human holds control without a new action, the arm holds (zeros)."""
        record = self.settings.mode == 'record'
        if self.human is None:  # no device heard yet: in record mode the arm holds, a human step
            if record:
                self.counters['human_actions_missing'] += 1
                return np.zeros(self.cfg.action.dim), True
            return None, False
        action, intervention, stamp_ns = self.human
        intervention = intervention or record
        # the simulated human answers this very tick; a device sends on its own timer
        fresh = stamp_ns == self.tick_ns if self.settings.wait_for_teleop else \
            stamp_ns > self.human_used_ns
        if fresh:
            self.human_used_ns = stamp_ns
            self.counters['human_actions_used'] += intervention
            return action, intervention
        if intervention:
            self.counters['human_actions_missing'] += 1
            return np.zeros(self.cfg.action.dim), True
        return None, False

    def _finish_step(self) -> None:
        image, state, policy_action = self.proposal
        self.proposal = None
        self.unanswered_ticks = 0
        human_action, intervention = self._fresh_human()
        if self.phase == 'post_roll':  # record: keep the human lifting for classifier frames
            executed = human_action if human_action is not None else \
                np.zeros(self.cfg.action.dim)
            self._emit(PublishAction(executed, ActionSource.HUMAN, self._tick_stamp()))
            self.post_roll_left -= 1
            if self.post_roll_left <= 0:
                for event in self.deferred_events:
                    self._publish_event(event)
                self.deferred_events = []
                self._episode_ended()
            return
        label, self.label = self.label, None
        if label:  # the key it acts on, on the events topic the recorder surely listens to
            self._publish_event(self.runner.stats.event('label', label=label))
        result = self.runner.step(image, state, self.success, human_action, intervention, label,
                                  policy_action=policy_action)
        if result.transition is not None:
            if self.transition_encoder is not None:
                payload = self.transition_encoder.encode(
                    result.transition, self.runner.episode_index, self.runner.stats.steps)
                self._emit(PublishTransition(payload, self._tick_stamp()))
                self.episode_transitions += 1
            self._emit(PublishReward(float(result.reward)))
        if result.ended and self.settings.mode == 'record' and self.runner.stats.success and \
                self.settings.record_steps_after_success > 0:
            self.deferred_events = list(result.events)
            self.post_roll_left = self.settings.record_steps_after_success
            self._set_phase('post_roll')
            self._hold()
            return
        for event in result.events:
            self._publish_event(event)
        if result.ended:
            self._episode_ended()
            self._hold()
            return
        source = ActionSource.HUMAN if result.intervention else ActionSource.POLICY
        self._emit(PublishAction(result.executed_action, source, self._tick_stamp()))
        self._publish_status(source)

    def _hold(self) -> None:
        """sim_clock: answer the tick with 'hold still' so simulated time goes on."""
        if self.settings.sim_clock and self.tick_ns is not None:
            self._emit(PublishAction(np.zeros(self.cfg.action.dim), ActionSource.POLICY,
                                     self.tick_ns))

    def _publish_status(self, control: str) -> None:
        stats = self.runner.stats
        if stats is None:
            return
        self._emit(PublishStatus(
            f'episode {stats.episode}  step {stats.steps}  return {stats.episode_return:.2f}'
            f'\nsuccess p {self.success_probability:.2f}  control: {control}  [{self.phase}]'))

    def _episode_ended(self) -> None:
        stats = self.runner.stats
        human_share = stats.interventions / stats.steps if stats.steps else 0.0
        self._log('info', f'episode {stats.episode} ended: {stats.outcome.upper()}, '
                  f'{stats.steps} steps, return {stats.episode_return:.2f}, '
                  f'{stats.interventions} intervention steps ({human_share:.0%} human; policy '
                  f'weights step {self.weights_step})')
        if self.evaluation is not None:
            self.evaluation.add(stats)
        if self.settings.mode == 'record' and stats.outcome == 'rerecord':
            # the person threw this one away: the next episode takes its place in the count
            kept = f'{self.episodes_done} of {self.settings.num_episodes} kept' \
                if self.settings.num_episodes else f'{self.episodes_done} kept'
            self._log('info', f're-recording episode {stats.episode} ({kept})')
            self._set_phase('need_reset')
            return
        self.episodes_done += 1
        if self.settings.num_episodes and self.episodes_done >= self.settings.num_episodes:
            self.done_since_s = self._monotonic_s
            if self.evaluation is not None:
                # eval runs no learner: the weights are the checkpoint's throughout
                path = self.evaluation.write(Path(self.settings.output_dir), {
                    'checkpoint_step': self.weights_step})
                self._emit(Print(self.evaluation.table()))
                self._log('info', f'eval summary written to {path}')
            self._publish_event(json.dumps({'event': 'finished',
                                            'episodes': self.episodes_done}))
            return
        self._set_phase('need_reset')

    def _publish_event(self, text: str) -> None:
        event = json.loads(text)
        if event.get('event') == 'start':
            self.episode_transitions = 0
        elif event.get('event') == 'end':
            # the recorder keeps the bag open until it has them all (they may come late)
            event['transitions'] = self.episode_transitions
        if self.settings.sim_clock and self.tick_ns is not None:
            # the tick it happened on: the recorder receives topics in no common order
            event['stamp_ns'] = self.tick_ns
        self._emit(PublishEvent(json.dumps(event)))
