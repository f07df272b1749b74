"""Shared pytest set-up: headless rendering and localhost-only DDS for every test."""
import os
import signal

# A suite started in the background by a script (`make test &`) inherits SIGINT ignored, and so
# would every process it starts: the Ctrl-C tests would then test nothing. Children of a process
# with a handler get the default disposition.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402

from hilserl.ros.graph import NODE_ENVIRONMENT  # noqa: E402

# In-process test nodes start as the graph's nodes do (transport, heartbeat, rendering).
for _name, _value in NODE_ENVIRONMENT.items():
    if _name not in ('OMP_NUM_THREADS', 'PYTHONUNBUFFERED'):
        os.environ.setdefault(_name, _value)

# A training config small enough for whole graphs in tests (small conv, tiny batches).
TINY_TRAIN_CONFIG = """
task:
  episode_time_s: 3.0
policy:
  encoder: small_conv
  freeze_encoder: false
  pretrained_encoder_path: null
algorithm:
  batch_size: 32
  utd_ratio: 2
replay:
  online_buffer_capacity: 2000
  offline_buffer_capacity: 2000
learner:
  learning_starts: 10
  checkpoint_every_steps: 5
  weight_push_period_s: 1.0
  device: cpu
"""

_next_domain = [40 + (os.getpid() % 50)]


def spin_for(executor, seconds, until=None, step_s=0.01):
    """Spin until `until()` holds (True) or `seconds` pass (its last value; True without one):
    generous limits, so a loaded machine is slow rather than failing."""
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=step_s)
        if until is not None and until():
            return True
    return until() if until else True


@pytest.fixture
def ros_context():
    """An isolated rclpy Context on its own domain id; shut down after the test."""
    rclpy = pytest.importorskip('rclpy')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=free_domain_id())
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


def free_domain_id() -> int:
    """A ROS domain id of its own for a graph a test starts: the next in 40..139 where no
    participant and no hilserl graph is (another test session may run beside this one)."""
    from hilserl.ros.domains import domains_with_participants, running_graphs
    busy = domains_with_participants() | {g.domain_id for g in running_graphs()}
    for _ in range(100):
        _next_domain[0] = 40 + (_next_domain[0] - 39) % 100
        if _next_domain[0] not in busy:
            break
    return _next_domain[0]


@pytest.fixture(scope='session')
def sim_episodes(tmp_path_factory):
    """Simulated episodes recorded once per test session through the record graph (`hilserl
    record`: driver, camera, simulated human, actor, recorder): expert and random behaviours,
    6 s episodes so failures stay short. Returns (run directory, [(episode dir, metadata)])."""
    pytest.importorskip('rclpy')
    from hilserl_tools import cli
    from hilserl.data.bags import complete_episodes
    root = tmp_path_factory.mktemp('sim_episodes')
    config = root / 'short.yaml'
    config.write_text('task:\n  episode_time_s: 6.0\n')
    code = cli.main(['record', '--episodes', '8', '--mix', 'expert:0.6,random:0.4', '--seed',
                     '3', '--config', str(config), '--output', str(root / 'run'),
                     '--domain-id', str(free_domain_id())])
    assert code == 0
    episodes = sorted(complete_episodes(root / 'run'), key=lambda e: e[1]['episode'])
    assert len(episodes) == 8
    return root / 'run', episodes


@pytest.fixture(scope='session')
def encoder_weights(tmp_path_factory):
    """name -> a directory of random pretrained weights for that encoder (config.json +
    model.safetensors; resnet10 in the upstream helper2424/resnet10 layout): what a frozen
    encoder needs, since none can be downloaded here."""
    made = {}

    def directory(name: str = 'resnet10', seed: int = 0) -> str:
        if (name, seed) not in made:
            import torch

            from hilserl.learning.encoders import build_encoder, save_encoder_weights
            torch.manual_seed(1234 + seed)
            made[name, seed] = str(save_encoder_weights(
                build_encoder(name), tmp_path_factory.mktemp(f'{name}_weights')))
        return made[name, seed]
    return directory


@pytest.fixture(autouse=True)
def _normal_scheduling(request):
    """Every test starts at normal scheduling on every CPU. Something in the suite has been seen
    to leave the pytest process at SCHED_FIFO on one CPU; its children inherit that, and a
    CPU-bound child then starves every process started after it (the suite hung). Reset it and
    name the test that changed it."""
    if not hasattr(os, 'sched_getscheduler'):
        yield
        return
    all_cpus = set(range(os.cpu_count() or 1))
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    if os.sched_getaffinity(0) != all_cpus:
        os.sched_setaffinity(0, all_cpus)
    yield
    policy, cpus = os.sched_getscheduler(0), os.sched_getaffinity(0)
    if policy != os.SCHED_OTHER or cpus != all_cpus:
        import warnings
        warnings.warn(f'{request.node.nodeid} left the test process at scheduling policy '
                      f'{policy}, CPUs {sorted(cpus)} (reset for the next test)')


def calibrated_arm_at_home(tmp_path):
    """A follower on the pty STS3215 simulator at home, its servos holding the same calibration
    as the file written beside it: (SimulatedBus, calibration file). The caller closes the bus."""
    import numpy as np
    from hilserl.messages.conventions import JOINT_NAMES
    from so101_driver.calibration import default_calibration, rad_to_ticks, save_calibration
    from so101_driver.ee_control import TOP_DOWN_SEED_RAD
    from so101_driver.sts_simulator import SimulatedBus
    cal = default_calibration()
    home = np.append(TOP_DOWN_SEED_RAD, 0.7)
    sim = SimulatedBus(positions={cal[n].id: rad_to_ticks(n, home[k], cal[n])
                                  for k, n in enumerate(JOINT_NAMES)}, calibration=cal)
    save_calibration(cal, tmp_path / 'cal.json')
    return sim, tmp_path / 'cal.json'
