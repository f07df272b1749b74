"""Human devices -> actions in the policy's space ([dx, dy, dz, gripper] in [-1, 1]),
an intervention flag, and episode labels. Pure: nodes feed device events and publish results.

Keyboard (works in a terminal over SSH; terminals repeat held keys, so a key counts as held for
`hold_s` after its last repeat):
    w / s   +x / -x (forward / back)      a / d   +y / -y (left / right)
    r / f   +z / -z (up / down)           q / e   close / open the gripper
    space or i   toggle intervention (human takes / returns control)
    k   episode success     j or ESC   episode failure     u or LEFT arrow   re-record episode
Gamepad (SDL layout): left stick = x/y, right stick vertical = z, LB/RB = close/open,
    hold A = intervene, B = success, X = failure, Y = re-record.
Leader arm: its TCP motion (FK) per control step becomes the EE delta; its gripper change maps
to -1/0/+1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from hilserl.robot.kinematics import SO101Kinematics

LABEL_SUCCESS, LABEL_FAILURE, LABEL_RERECORD = 'success', 'failure', 'rerecord'


@dataclass(frozen=True)
class TeleopOutput:
    action: np.ndarray            # (4,) float32 in [-1, 1]
    intervention: bool
    label: Optional[str] = None   # one-shot episode label
    torque_on: bool = False       # one-shot: re-arm the arm after a lock-out


KEY_AXES: Dict[str, Tuple[int, float]] = {
    'w': (0, 1.0), 's': (0, -1.0), 'a': (1, 1.0), 'd': (1, -1.0),
    'r': (2, 1.0), 'f': (2, -1.0), 'q': (3, -1.0), 'e': (3, 1.0),
}
KEY_LABELS = {'k': LABEL_SUCCESS, 'j': LABEL_FAILURE, 'esc': LABEL_FAILURE,
              'u': LABEL_RERECORD, 'left': LABEL_RERECORD}
TOGGLE_KEYS = {' ', 'i'}
TORQUE_ON_KEY = 't'   # after a lock-out, once the servo has cooled (as `hilserl torque on`)
KEY_HELP = ('w/s +x/-x, a/d +y/-y, r/f +z/-z, q/e close/open gripper, space or i toggle '
            'intervention, k success, j or Esc failure, u or Left re-record, t torque on '
            'after a lock-out')
ESCAPE_SEQUENCES = {'\x1b[D': 'left', '\x1b[C': 'right', '\x1b[A': 'up', '\x1b[B': 'down',
                    '\x1b': 'esc'}


def parse_terminal_keys(text: str) -> Sequence[str]:
    """Raw terminal bytes -> key names (arrow escape sequences recognised)."""
    keys, i = [], 0
    while i < len(text):
        if text[i] == '\x1b':
            for seq in sorted(ESCAPE_SEQUENCES, key=len, reverse=True):
                if text.startswith(seq, i):
                    keys.append(ESCAPE_SEQUENCES[seq])
                    i += len(seq)
                    break
        else:
            keys.append(text[i].lower())
            i += 1
    return keys


class KeyboardTeleop:
    def __init__(self, hold_s: float = 0.15):
        self.hold_s = hold_s
        self.intervention = False
        self._last_seen: Dict[str, float] = {}
        self._pending_label: Optional[str] = None
        self._torque_on = False

    def feed(self, key: str, now_s: float) -> None:
        if key in TOGGLE_KEYS:
            self.intervention = not self.intervention
        elif key == TORQUE_ON_KEY:
            self._torque_on = True
        elif key in KEY_LABELS:
            self._pending_label = KEY_LABELS[key]
            self.intervention = False  # an ended episode hands control back
        elif key in KEY_AXES:
            self._last_seen[key] = now_s

    def output(self, now_s: float) -> TeleopOutput:
        action = np.zeros(4, dtype=np.float32)
        for key, seen in self._last_seen.items():
            if now_s - seen <= self.hold_s:
                axis, sign = KEY_AXES[key]
                action[axis] += sign
        label, self._pending_label = self._pending_label, None
        torque_on, self._torque_on = self._torque_on, False
        return TeleopOutput(np.clip(action, -1, 1), self.intervention, label, torque_on)


@dataclass(frozen=True)
class GamepadLayout:
    axis_x: int = 1        # left stick vertical (up = -1 on SDL) -> forward
    axis_y: int = 0        # left stick horizontal -> left/right
    axis_z: int = 4        # right stick vertical
    button_intervene: int = 0
    button_success: int = 1
    button_failure: int = 2
    button_rerecord: int = 3
    button_close: int = 4
    button_open: int = 5
    deadzone: float = 0.15


class GamepadTeleop:
    def __init__(self, layout: GamepadLayout = GamepadLayout()):
        self.layout = layout
        self._previous_buttons: Tuple[int, ...] = ()

    def _axis(self, axes, index, sign):
        value = axes[index] if index < len(axes) else 0.0
        if abs(value) < self.layout.deadzone:
            return 0.0
        # Rescale past the deadzone so small deflections are still fine control.
        scaled = (abs(value) - self.layout.deadzone) / (1 - self.layout.deadzone)
        return sign * float(np.copysign(scaled, value))

    def output(self, axes: Sequence[float], buttons: Sequence[int]) -> TeleopOutput:
        lay = self.layout
        pressed = lambda b: b < len(buttons) and bool(buttons[b])  # noqa: E731
        rising = lambda b: pressed(b) and not (  # noqa: E731
            b < len(self._previous_buttons) and self._previous_buttons[b])
        action = np.array([self._axis(axes, lay.axis_x, -1.0), self._axis(axes, lay.axis_y, -1.0),
                           self._axis(axes, lay.axis_z, -1.0),
                           float(pressed(lay.button_open)) - float(pressed(lay.button_close))],
                          dtype=np.float32)
        label = None
        if rising(lay.button_success):
            label = LABEL_SUCCESS
        elif rising(lay.button_failure):
            label = LABEL_FAILURE
        elif rising(lay.button_rerecord):
            label = LABEL_RERECORD
        self._previous_buttons = tuple(buttons)
        return TeleopOutput(np.clip(action, -1, 1), pressed(lay.button_intervene), label)


class LeaderArmTeleop:
    """A second SO-101 moved by hand: TCP deltas between control steps become actions."""

    def __init__(self, kinematics: SO101Kinematics, ee_step_m=(0.02, 0.02, 0.02),
                 gripper_threshold_rad: float = 0.05, auto_intervene_m: float = 0.004):
        self.kin = kinematics
        self.ee_step_m = np.asarray(ee_step_m, dtype=np.float64)
        self.gripper_threshold_rad = gripper_threshold_rad
        self.auto_intervene_m = auto_intervene_m
        self._previous: Optional[np.ndarray] = None

    def output(self, leader_rad, intervention_toggle: bool = False) -> TeleopOutput:
        q = np.asarray(leader_rad, dtype=np.float64)
        if self._previous is None:
            self._previous = q
            return TeleopOutput(np.zeros(4, np.float32), intervention_toggle)
        delta = self.kin.fk(q[:5])[:3, 3] - self.kin.fk(self._previous[:5])[:3, 3]
        grip_change = q[5] - self._previous[5]
        gripper = 0.0
        if grip_change > self.gripper_threshold_rad:
            gripper = 1.0
        elif grip_change < -self.gripper_threshold_rad:
            gripper = -1.0
        self._previous = q
        moving = np.linalg.norm(delta) > self.auto_intervene_m or gripper != 0.0
        action = np.append(np.clip(delta / self.ee_step_m, -1, 1), gripper).astype(np.float32)
        return TeleopOutput(action, intervention_toggle or moving)


BEHAVIOURS = ('expert', 'noisy', 'random')


def parse_mix(text: str) -> Dict[str, float]:
    """'expert:0.6,noisy:0.3,random:0.1' -> normalised behaviour weights."""
    weights = {}
    for item in text.split(','):
        name, _, weight = item.partition(':')
        name = name.strip()
        if name not in BEHAVIOURS:
            raise ValueError(f'unknown behaviour {name!r}; choose from {BEHAVIOURS}')
        try:
            weights[name] = float(weight or 1.0)
        except ValueError:
            raise ValueError(f'behaviour weight {weight!r} is not a number') from None
        if not weights[name] >= 0:
            raise ValueError(f'behaviour weight {weight!r} must be >= 0')
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f'mix {text!r} has no positive weight')
    return {k: v / total for k, v in weights.items()}


@dataclass(frozen=True)
class SimHumanConfig:
    # A person corrects a policy that heads the wrong way, not one that moves differently from
    # how they would: a step deviates when the motion points more than this far from the
    # expert's (while the expert moves), or the gripper is driven the opposite way.
    direction_tolerance_deg: float = 90.0
    min_expert_motion: float = 0.3       # |expert xyz| below this: any direction is fine
    patience_steps: int = 3              # consecutive deviating steps before taking over
    stall_s: float = 1.0                 # no policy action this long -> take over
    min_intervention_steps: int = 8      # once in control, keep it this many steps
    behaviour_mix: str = 'expert:1'      # per episode: expert | noisy | random (demos, classifier)
    noise_std: float = 0.5               # 'noisy': Gaussian action noise
    slip_probability: float = 0.04       # 'noisy': chance per step of opening the gripper

    def __post_init__(self):
        parse_mix(self.behaviour_mix)
        if not 0.0 <= self.direction_tolerance_deg <= 180.0:
            raise ValueError(f'direction_tolerance_deg={self.direction_tolerance_deg}: '
                             'must be in [0, 180]')
        if self.patience_steps < 1 or self.min_intervention_steps < 1:
            raise ValueError('patience_steps and min_intervention_steps must be >= 1')


class SimHumanTeleop:
    """The scripted expert as the human: intervenes when the policy deviates or stalls.
    Per episode it plays one behaviour of `behaviour_mix`: the expert, a noisy expert with
    gripper slips (near-misses and failures for classifier data), or random actions."""

    def __init__(self, config: SimHumanConfig = SimHumanConfig(), seed: int = 0):
        self.cfg = config
        self.mix = parse_mix(config.behaviour_mix)
        self.rng = np.random.default_rng(seed)
        self.behaviour = 'expert'
        self.reset()

    def reset(self):
        """A new episode: nothing deviated, nobody in control, no stall carried over."""
        self._deviating = 0
        self._remaining = 0
        self._slipping = 0
        self.intervention = False

    def start_episode(self) -> str:
        self.reset()
        self.behaviour = str(self.rng.choice(list(self.mix), p=list(self.mix.values())))
        return self.behaviour

    def _human_action(self, expert: np.ndarray) -> np.ndarray:
        if self.behaviour == 'noisy':
            action = expert + self.rng.normal(0, self.cfg.noise_std, size=expert.shape)
            if self._slipping or self.rng.random() < self.cfg.slip_probability:
                self._slipping = self._slipping - 1 if self._slipping else 3
                action[3] = 1.0
            return action
        if self.behaviour == 'random':
            return self.rng.uniform(-1, 1, size=expert.shape)
        return expert

    def deviates(self, policy: np.ndarray, expert: np.ndarray) -> bool:
        """Would a person watching call this step wrong?"""
        expert_speed = float(np.linalg.norm(expert[:3]))
        if expert_speed >= self.cfg.min_expert_motion:
            policy_speed = float(np.linalg.norm(policy[:3]))
            if policy_speed < 1e-6:
                return True  # standing still where the expert moves
            cosine = float(policy[:3] @ expert[:3]) / (policy_speed * expert_speed)
            if cosine < np.cos(np.radians(self.cfg.direction_tolerance_deg)) - 1e-9:
                return True
        return abs(expert[3]) >= 0.5 and abs(policy[3]) >= 0.5 and policy[3] * expert[3] < 0

    def output(self, expert_action, policy_action, policy_age_s: Optional[float]
               ) -> TeleopOutput:
        expert = np.asarray(expert_action, dtype=np.float32)
        stalled = policy_age_s is None or policy_age_s > self.cfg.stall_s
        if not stalled:
            deviates = self.deviates(np.asarray(policy_action, dtype=np.float32), expert)
            self._deviating = self._deviating + 1 if deviates else 0
        if self._remaining > 0:
            self._remaining -= 1
        elif stalled or self._deviating >= self.cfg.patience_steps:
            self._remaining = self.cfg.min_intervention_steps - 1
            self._deviating = 0
        self.intervention = self._remaining > 0 or stalled
        action = self._human_action(expert)
        return TeleopOutput(np.clip(action, -1, 1).astype(np.float32), self.intervention)
