"""Learning regression guard (issue #28 item 5): the seed's set-up (config/train.yaml: discount
0.97, no BC term, RLPD 50/50 mixing, UTD 20, interventions in both buffers, Polyak targets,
a frozen encoder with its feature cache) trained by the real `Learner` on a small fixed offline
dataset must value the simulated task's states as their discounted returns: states near
success above states near failure, falling by the discount per step away from success, and
never above the largest return in the data.

The dataset is built deterministically from the SO-101's own kinematics: TCP paths solved by
the URDF's IK into the 18-value state of `observation.state_features`. A success path goes
down to the cube, closes the gripper and lifts (reward 1 and terminated on its last step, as
HIL-SERL's sparse reward); a failure path drifts away from the cube and hovers there until the
time limit (reward 0, truncated, never terminated). Actions are random and the paths do not
depend on them, so Q(s, a) is the same for every action: its true value is discount ** d at d
steps before the success step, 0 on the failure path.

Only the sizes that cost time are small (32x32 images, a frozen random small conv in place of
the pretrained ResNet-10, 64-wide networks, batch 64); every algorithm setting is train.yaml's.
`python scripts/mutate.py guard` breaks the terminal mask, the discount and the target network in a
copy of the tree and shows that this test fails for each (docs/results/learning_guard_*.md).
"""
import numpy as np
import pytest
import torch

from hilserl.common.paths import share_path
from hilserl.configuration.config import load_train_config, with_fields
from hilserl.data.transition import Transition
from hilserl.robot.kinematics import SO101Kinematics
from hilserl.robot.observation import build_state
from hilserl_policy.learner import Learner

IMAGE_HW = (32, 32)
HOME_XYZ = np.array([0.25, 0.0, 0.07])
GRIPPER_OPEN_RAD, GRIPPER_CLOSED_RAD = 0.7, 0.15
FAILURE_STEPS = 24
OPTIMISATION_STEPS = 150         # x utd_ratio 20 = 3,000 critic updates
NEAR_SUCCESS_STEPS = 6           # states 0..5 steps before the success step
PROBE_ACTIONS = 16


def seed_config(encoder_dir: str):
    """config/train.yaml, the seed's set-up, with only its sizes made small."""
    cfg = load_train_config(share_path('config', 'train.yaml'),
                            {'image': {'resize_hw_px': list(IMAGE_HW)}})
    return with_fields(cfg, encoder='small_conv', pretrained_encoder_path=encoder_dir,
                       hidden_dims=(64, 64), latent_dim=32, batch_size=64,
                       online_buffer_capacity=1000, offline_buffer_capacity=1000,
                       replay_image_storage='memory', learning_starts=1,
                       checkpoint_every_steps=10 ** 6, checkpoint_every_s=10 ** 6, device='cpu')


def task_states(cfg, tcp_xyz, gripper_rad):
    """The state vector along a TCP path: joint angles from the URDF's IK, velocities from
    the differences at the control rate."""
    kinematics = SO101Kinematics()
    q = np.zeros(5)
    positions = []
    for xyz, gripper in zip(tcp_xyz, gripper_rad):
        result = kinematics.ik_position(xyz, q, hold_approach=np.array([0.0, 0.0, -1.0]))
        assert result.converged, xyz
        q = result.q
        positions.append(np.append(q, gripper))
    positions = np.array(positions)
    velocities = np.diff(positions, axis=0, prepend=positions[:1]) * cfg.task.control_rate_hz
    return [build_state(cfg.observation.state_features, p, v, kinematics)
            for p, v in zip(positions, velocities)]


CUBE_XYZ = np.array([0.27, 0.02, 0.015])
# episodes of each kind: many random actions per state keep Q(s, .) flat, so the actor's
# maximisation in the TD target finds no spurious high values
DEMOS, INTERVENTIONS, FAILURES = 8, 4, 8
STEP_M = 0.02                    # the TCP's step at action +-1 (train.yaml action.ee_step_m)


def _legs(waypoints):
    """TCP positions along straight legs of at most STEP_M per step (the first one included)."""
    points = [np.asarray(waypoints[0], float)]
    for start, end in zip(waypoints[:-1], waypoints[1:]):
        steps = max(1, int(np.ceil(np.linalg.norm(np.subtract(end, start)) / STEP_M - 1e-9)))
        points += [np.asarray(start) + (np.asarray(end) - np.asarray(start)) * k / steps
                   for k in range(1, steps + 1)]
    return points


def success_states(cfg):
    """Home -> above the cube -> down to it -> close the gripper -> lift 4 cm."""
    reach = _legs([HOME_XYZ, CUBE_XYZ + [0.0, 0.0, 0.03], CUBE_XYZ])
    lift = [CUBE_XYZ + [0.0, 0.0, 0.02], CUBE_XYZ + [0.0, 0.0, 0.04]]
    tcp = reach + [CUBE_XYZ] + lift
    gripper = [GRIPPER_OPEN_RAD] * len(reach) + [GRIPPER_CLOSED_RAD] * (1 + len(lift))
    return task_states(cfg, tcp, gripper)


def failure_states(cfg):
    """Home -> away from the cube, then hovering there until the time limit."""
    away = np.array([0.16, -0.11, 0.12])
    tcp = _legs([HOME_XYZ, away])
    tcp += [away + 0.01 * np.array([np.cos(k), np.sin(k), 0.0])
            for k in range(FAILURE_STEPS - len(tcp) + 1)]
    return task_states(cfg, tcp, [GRIPPER_OPEN_RAD] * len(tcp))


def episode(states, rng, success: bool, intervention: bool):
    """Transitions between consecutive states; random actions (the path ignores them)."""
    image = np.full((3, *IMAGE_HW), 128, np.uint8)
    last = len(states) - 2
    return [Transition(image, states[i], rng.uniform(-1, 1, 4).astype(np.float32),
                       1.0 if success and i == last else 0.0, image, states[i + 1],
                       success and i == last, not success and i == last, intervention)
            for i in range(len(states) - 1)]


@torch.no_grad()
def state_values(learner, states, rng):
    """Each state's value: the critics' mean Q over fixed random actions."""
    agent = learner.agent
    image = torch.full((len(states), 3, *IMAGE_HW), 128, dtype=torch.uint8)
    emb = agent.encoder(agent.backbone(image), torch.as_tensor(np.stack(states)))
    actions = torch.as_tensor(rng.uniform(-1, 1, (PROBE_ACTIONS, 4)), dtype=torch.float32)
    q = [agent.critic(emb, a.expand(len(states), 4)).mean(0) for a in actions]
    return torch.stack(q).mean(0).numpy()


def train_and_probe(cfg, run_dir, data_seed: int = 0, steps: int = OPTIMISATION_STEPS):
    """The learner trained `steps` optimisation steps on the fixed dataset -> (values of the
    states 0..NEAR_SUCCESS_STEPS-1 steps before success, in that order; values of the failure
    path's hovering states)."""
    rng = np.random.default_rng(data_seed)
    success, failure = success_states(cfg), failure_states(cfg)
    learner = Learner(cfg, run_dir, resume_from_latest=False)
    # demonstrations: offline only; the human's interventions: both buffers; the policy's
    # own failures: online only
    learner.add_many([t for _ in range(DEMOS) for t in episode(success, rng, True, False)],
                     demo=True)
    for t in [t for _ in range(INTERVENTIONS) for t in episode(success, rng, True, True)] + \
            [t for _ in range(FAILURES) for t in episode(failure, rng, False, False)]:
        assert learner.add(t)
    steps_of = len(success) - 1, len(failure) - 1
    assert (len(learner.offline), len(learner.online)) == (
        (DEMOS + INTERVENTIONS) * steps_of[0], INTERVENTIONS * steps_of[0] + FAILURES * steps_of[1])
    for _ in range(steps):
        metrics = learner.train_step()
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    probe_rng = np.random.default_rng(1)
    near_success = state_values(learner, success[-1 - NEAR_SUCCESS_STEPS:-1], probe_rng)[::-1]
    return near_success, state_values(learner, failure[-10:], probe_rng)


@pytest.fixture
def one_torch_thread():
    """One thread whatever the machine: the same sums in the same order, every run (and no
    OpenMP workers spinning against other jobs: two threads on a loaded 2-core machine cost
    four times the CPU time)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_seed_setup_values_states_near_success_above_states_near_failure(
        tmp_path, encoder_weights, one_torch_thread):
    cfg = seed_config(encoder_weights('small_conv'))
    algorithm = cfg.algorithm
    # the seed's set-up as train.yaml writes it: the guard follows the file
    assert (algorithm.bc_weight, cfg.replay.online_ratio, algorithm.use_backup_entropy) == \
        (0.0, 0.5, False)
    assert cfg.policy.freeze_encoder and algorithm.feature_cache_shifts > 0
    near_success, near_failure = train_and_probe(cfg, tmp_path / 'run')
    steps = np.arange(NEAR_SUCCESS_STEPS)
    report = (f'near success (0..{NEAR_SUCCESS_STEPS - 1} steps before it) '
              f'{np.round(near_success, 3)}, '
              f'true {np.round(algorithm.discount ** steps, 3)}; near failure '
              f'{np.round(near_failure, 3)}, true 0')
    # the ranking
    assert near_success.min() > near_failure.max() + 0.3, f'not ranked: {report}'
    # no value above the data's largest return (1): bootstrapping stops at the success step
    assert max(near_success.max(), near_failure.max()) < 1.15, \
        f'values above the largest return, 1: {report}'
    # the values fall by the discount per step away from success: Q(d) = discount ** d, so each
    # Q(d) ** (1 / d) estimates the discount. Values approach their fixed point from below (a
    # step further from success per target time constant): a correct critic errs low, one
    # that does not discount ends at 1.
    per_step = float(np.mean(np.clip(near_success[1:], 1e-3, None) ** (1.0 / steps[1:])))
    assert algorithm.discount - 0.03 < per_step < algorithm.discount + 0.015, \
        f'discount per step {per_step:.4f}, configured {algorithm.discount}; {report}'
