"""An SO-101 from the box to a trained policy with `hilserl` alone, in one terminal: the commands
of the README's "A real SO-101 from nothing", in its order and with its flags, each run as a
person runs it (a pseudo-terminal as its terminal, Enter, `y` and keys typed there) against two
pty STS3215 bus simulators (follower and leader, servos plugged in one at a time as the person
connects them) and a video file as the camera. Nothing is prepared for a step but what the step
before it wrote: the servos' ids and rate, the calibration JSONs (LeRobot's place), the crop
and workspace box in the training config, the recorded bags, the classifier, the checkpoint.

What the test adds to the README's commands, and why: `--bus-timeout-ms` / `bus_timeout_ms`
(the simulator shares a loaded machine), `--domain-id` (tests run side by side) and
`--max-minutes` (a hang fails instead of blocking). The training config it copies is then
shrunk for a CPU in a test (a small encoder trained from scratch: no network for
`hilserl fetch-encoder`; 64 px views; a short time limit), and `--episodes`, `--epochs` and
`--crop` take values for a short test and the simulated 160x120 camera."""
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
cv2 = pytest.importorskip('cv2')

from conftest import TINY_TRAIN_CONFIG, free_domain_id  # noqa: E402
from hilserl.configuration.config import load_train_config  # noqa: E402
from hilserl.configuration.run_dir import checkpoint_model_dir  # noqa: E402
from hilserl.configuration.yaml_edit import set_values  # noqa: E402
from hilserl.messages.conventions import JOINT_NAMES  # noqa: E402
from hilserl.robot.kinematics import SO101Kinematics  # noqa: E402
from so101_driver.calibration import load_calibration, rad_to_ticks  # noqa: E402
from so101_driver.ee_control import home_joint_goal  # noqa: E402
from so101_driver.sts_simulator import SimulatedBus  # noqa: E402
from terminal_session import TerminalSession, play_episodes, write_camera_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
W, H = 160, 120            # the camera (a video file)
CROP = '0,20,120,120'      # what the person reads off the grid picture
PORTS = {'/dev/ttyACM0': 'follower', '/dev/ttyACM1': 'leader'}
STEP_S = 90.0              # a set-up prompt, or a ROS graph's start (torch, rclpy imports)
EPISODE_S = 60.0
# where the person leaves each joint "mid-range" (encoder ticks) and how far from there they
# sweep it at calibration: wide enough for the home pose (wrist_flex ~ +1047 ticks)
MID = {'shoulder_pan': 2100, 'shoulder_lift': 1900, 'elbow_flex': 2200, 'wrist_flex': 2000,
       'wrist_roll': 3000, 'gripper': 1600}
SWEEP = {'shoulder_pan': (-1000, 1000), 'shoulder_lift': (-1100, 1100),
         'elbow_flex': (-1100, 1000), 'wrist_flex': (-1100, 1250), 'wrist_roll': (0, 0),
         'gripper': (-300, 1100)}
# the README's command lines as this test runs them (the flags above aside), in order
README_SECTION = '## A real SO-101 from nothing'
NOT_RUN_HERE = {'torque on': 'test_lockout.py (a lock-out)',
                '--success-source classifier': 'test_record_hardware.py'}
SCALED_VALUES = ('--episodes', '--epochs', '--crop')   # the README's for a real arm, ours here


def readme_commands():
    """The `hilserl` command lines of the README's section, continuation lines joined and
    comments dropped."""
    text = (ROOT / 'README.md').read_text().split(README_SECTION, 1)[1].split('\n## ', 1)[0]
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', text, re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == '.venv/bin/hilserl':
                commands.append(' '.join(['hilserl'] + words[1:]))
    return commands


def shape(command: str) -> str:
    """A command line with the values of SCALED_VALUES left out."""
    words = command.split()
    return ' '.join('...' if k and words[k - 1] in SCALED_VALUES else w
                    for k, w in enumerate(words))


class Owner:
    """The person: their terminal (cwd their working folder, HOME theirs) and their two arms."""

    def __init__(self, home: Path):
        self.folder = home / 'work'
        self.folder.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(('HF_', 'XDG_'))}
        env.update(HOME=str(home), PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
        self.transcript = home / 'terminal.log'   # the whole session, named on a failure
        self.terminal = TerminalSession(self.folder, env, self.transcript)
        self.arms = {'follower': SimulatedBus(ids=[]), 'leader': SimulatedBus(ids=[])}
        self.ran = []
        self.started_s = time.monotonic()
        print(f'the terminal: {self.transcript}')

    def run(self, command: str, *test_flags: str):
        """Type `command` (a README line; its ports name the simulated buses)."""
        self.ran.append(command)
        print(f'{time.monotonic() - self.started_s:6.1f} s  {command}')   # shown on a failure
        words = shlex.split(command)
        words = [self.arms[PORTS[w]].port if w in PORTS else w for w in words]
        return self.terminal.start([sys.executable, '-m', 'hilserl_tools.cli', *words[1:],
                                    *test_flags])

    def graph(self, command: str):
        return self.run(command, '--domain-id', str(free_domain_id()), '--max-minutes', '8')

    def close(self):
        self.terminal.close()
        for bus in self.arms.values():
            bus.close()


def connect_servos_one_at_a_time(owner: Owner, arm: str):
    """Answer each `connect only the X servo` with a new servo (id 1 at 1 Mbit/s, as they
    come) alone on the bus, then chain all six."""
    bus, term, servos = owner.arms[arm], owner.terminal, {}
    for _ in JOINT_NAMES:
        joint = re.search(r'connect only the (\w+) servo \(of the ' + arm,
                          term.wait_for('connect only the', STEP_S)).group(1)
        if servos:
            bus.unplug(list(servos.values())[-1])
        servos[joint] = bus.plug(1)
        term.enter()
        term.wait_for(rf'{joint}: id {JOINT_NAMES.index(joint) + 1} at 1000000 baud '
                      r'\((was id 1 at 1000000 baud|already set)\)', STEP_S)
    again = '--leader --check' if arm == 'leader' else '--check'
    term.finish(f'6 servos set up at 1000000 baud: .* check with: hilserl setup-motors --port '
                f'{bus.port} {again}$', STEP_S)
    for servo in list(servos.values())[:-1]:
        bus.plug(servo)
    assert sorted(bus.servos) == list(range(1, 7))


def move_by_hand(bus: SimulatedBus, encoder_ticks: dict, deadline_s: float):
    """Put the limp arm's joints there and hold until the command has read it again."""
    for joint, ticks in encoder_ticks.items():
        bus.move_by_hand(JOINT_NAMES.index(joint) + 1, ticks)
    assert bus.wait_for_packets(3, deadline_s), 'the command stopped reading the arm'


def calibrate(owner: Owner, arm: str, path: Path):
    """Mid-range, Enter, `y`, each joint through its range, Enter; the JSON holds it."""
    bus, term = owner.arms[arm], owner.terminal
    term.wait_for(f'torque is off: move every joint of the {arm} arm', STEP_S)
    deadline = time.monotonic() + STEP_S
    for joint in JOINT_NAMES:   # torque is off: each joint moves by hand
        bus.move_by_hand(JOINT_NAMES.index(joint) + 1, MID[joint])
    term.enter()
    term.wait_for(r'write homing offsets to the 6 servos .*\[y/N\]', STEP_S)
    term.type('y\r')
    term.wait_for('move every joint except wrist_roll through its whole range', STEP_S)
    for side in (0, 1, None):
        move_by_hand(bus, {j: MID[j] + (SWEEP[j][side] if side is not None else 0)
                           for j in JOINT_NAMES}, deadline)
    term.enter()
    term.finish(f"calibration of the {arm} arm '{arm}' written to {path}", STEP_S)
    saved = json.loads(path.read_text())
    for k, joint in enumerate(JOINT_NAMES):
        low, high = (0, 4095) if joint == 'wrist_roll' else \
            (2047 + SWEEP[joint][0], 2047 + SWEEP[joint][1])
        assert saved[joint] == {'id': k + 1, 'drive_mode': 0, 'homing_offset': MID[joint] - 2047,
                                'range_min': low, 'range_max': high}, joint


def edit(text: str, key: str, value) -> str:
    """The person's editor: `key:`'s value replaced on its line, the comment kept."""
    new, count = re.subn(rf'^(\s+{key}:\s*)\S+', lambda m: f'{m.group(1)}{value}', text,
                         count=1, flags=re.M)
    assert count == 1, key
    return new


@pytest.fixture()
def owner(tmp_path):
    person = Owner(tmp_path)
    yield person
    person.close()


def test_an_so101_from_the_box_to_a_trained_policy(owner):
    term, folder = owner.terminal, owner.folder
    calibration_root = Path(owner.terminal.env['HOME']) / '.cache' / 'huggingface' / 'lerobot' / \
        'calibration'
    bus_flags = ('--bus-timeout-ms', '300')

    # 1. servos: ids and rate, one at a time, then the chained arm; both arms
    owner.run('hilserl setup-motors --port /dev/ttyACM0', *bus_flags)
    connect_servos_one_at_a_time(owner, 'follower')
    owner.run('hilserl setup-motors --port /dev/ttyACM0 --check', *bus_flags)
    term.finish(r'follower arm on .*: gripper = id 6, .* answer at 1000000 baud', STEP_S)
    owner.run('hilserl setup-motors --port /dev/ttyACM1 --leader', *bus_flags)
    connect_servos_one_at_a_time(owner, 'leader')
    owner.run('hilserl setup-motors --port /dev/ttyACM1 --leader --check', *bus_flags)
    term.finish(r'leader arm on .* answer at 1000000 baud', STEP_S)

    #    calibration, into LeRobot's place for each arm's id
    follower_json = calibration_root / 'robots' / 'so101_follower' / 'follower.json'
    leader_json = calibration_root / 'teleoperators' / 'so101_leader' / 'leader.json'
    owner.run('hilserl calibrate --port /dev/ttyACM0 --id follower', *bus_flags)
    calibrate(owner, 'follower', follower_json)
    owner.run('hilserl calibrate --port /dev/ttyACM1 --id leader --leader', *bus_flags)
    calibrate(owner, 'leader', leader_json)

    # 2. the robot file, edited as the README says (the calibration file's default is where
    #    `calibrate --id follower` wrote it); the leader's section added
    video = folder / 'gripper_camera.avi'
    write_camera_video(video, W, H)
    robot = (ROOT / 'config' / 'so101_follower.yaml').read_text()
    for key, value in (('port', owner.arms['follower'].port), ('device', video),
                       ('width_px', W), ('height_px', H)):
        robot = edit(robot, key, value)
    robot = robot.replace('    baudrate:', '    bus_timeout_ms: 300.0\n    baudrate:', 1)
    robot += ('\n/**/teleop:\n  ros__parameters:\n'
              f'    leader_port: {owner.arms["leader"].port}\n'
              f'    leader_calibration_file: {leader_json}\n    leader_bus_timeout_ms: 300.0\n')
    (folder / 'my_arm.yaml').write_text(robot)
    assert yaml.safe_load(robot)['/**/so101_driver']['ros__parameters']['calibration_file'] == \
        '~/.cache/huggingface/lerobot/calibration/robots/so101_follower/follower.json'
    shutil.copy(ROOT / 'config' / 'train.yaml', folder / 'my_train.yaml')
    small = {f'{section}.{key}': value
             for section, values in yaml.safe_load(TINY_TRAIN_CONFIG).items()
             for key, value in values.items()}
    small.update({'task.episode_time_s': 8.0, 'task.random_ee_reset': False,
                  'image.resize_hw_px': [64, 64], 'algorithm.feature_cache_shifts': 0})
    set_values(folder / 'my_train.yaml', small)

    #    the crop: no display, so a grid picture first, then --crop
    owner.run('hilserl crop --robot-config my_arm.yaml --config my_train.yaml')
    term.finish('no display: the frame with a 40 px grid', STEP_S, code=1)
    assert cv2.imread(str(folder / 'my_train_crop_frame.png')).shape == (H, W, 3)
    owner.run(f'hilserl crop --robot-config my_arm.yaml --config my_train.yaml --crop {CROP}')
    term.finish(r'crop \[0, 20, 120, 120\] of the 160x120 frame written to my_train.yaml', STEP_S)
    assert cv2.imread(str(folder / 'my_train_policy_view.png')).shape == (64, 64, 3)

    #    the workspace, swept with the limp leader arm: home and two corners of the task
    owner.run('hilserl find-workspace --robot-config my_arm.yaml --config my_train.yaml '
              '--leader')
    term.wait_for('torque is off: move the leader arm through the space of the task', STEP_S)
    kin, cal = SO101Kinematics(), load_calibration(leader_json)
    poses = [home_joint_goal(kin, xyz, 0.7) for xyz in
             ((0.25, 0.0, 0.07), (0.18, -0.08, 0.04), (0.30, 0.09, 0.15))]
    deadline = time.monotonic() + STEP_S
    for q in poses:
        move_by_hand(owner.arms['leader'], {
            j: rad_to_ticks(j, q[k], cal[j]) + cal[j].homing_offset
            for k, j in enumerate(JOINT_NAMES)}, deadline)
    term.enter()
    term.finish(r'workspace box .* written to my_train.yaml', STEP_S)
    task = load_train_config(folder / 'my_train.yaml').task
    tcps = np.array([kin.fk(q[:5])[:3, 3] for q in poses])
    assert np.all(np.array(task.workspace_min_m) <= tcps.min(0) + 1e-3)
    assert np.all(np.array(task.workspace_max_m) >= tcps.max(0) - 1e-3)

    # 3. three demonstrations by key: success, failure, success
    owner.graph('hilserl record --backend hardware --teleop keyboard --robot-config my_arm.yaml '
                '--config my_train.yaml --output outputs/arm_demos --episodes 3')
    term.wait_for(r'keys: w/s', STEP_S)
    play_episodes(term.lines, term.type, (
        (0, (('w', 0.8), ('r', 0.5)), 'k', 'SUCCESS'),
        (1, (('a', 0.8),), 'j', 'FAILURE'),
        (2, (('q', 0.5), ('r', 0.5)), 'k', 'SUCCESS')), STEP_S, EPISODE_S)
    term.finish(r'3 episodes \(2 successful\) in outputs/arm_demos/episodes', EPISODE_S)
    follower = owner.arms['follower']
    assert any(len(set(s.goals_received)) > 1 for s in follower.servos.values())  # it moved

    # 4. training with the success key, from those demonstrations; Ctrl-C after two episodes
    owner.graph('hilserl train --backend hardware --teleop keyboard --success-source key '
                '--robot-config my_arm.yaml --config my_train.yaml --demo-dir outputs/arm_demos '
                '--run-dir outputs/arm_run')
    demos = term.wait_for(r'offline buffer: \d+ demo transitions from .*arm_demos', STEP_S)
    assert int(re.search(r'(\d+) demo transitions', demos).group(1)) > 10, demos
    play_episodes(term.lines, term.type, (   # space: the person takes over, then w
        (0, ((' ', 0), ('w', 1.5)), 'k', r'SUCCESS, .* [1-9]\d* intervention steps'),
        (1, (), 'j', r'FAILURE, .* 0 intervention steps')), STEP_S, EPISODE_S)
    term.type('\x03')   # Ctrl-C: every node stops cleanly, the learner saves
    term.finish(r'hilserl train: stopped \(interrupted\)', EPISODE_S)
    checkpoint = checkpoint_model_dir(folder / 'outputs' / 'arm_run' / 'checkpoints' / 'last')

    # 5. the trained policy evaluated on the arm, the person judging each episode by key
    owner.graph('hilserl eval --backend hardware --teleop keyboard --success-source key '
                '--checkpoint outputs/arm_run/checkpoints/last --robot-config my_arm.yaml '
                '--config my_train.yaml --episodes 2')
    play_episodes(term.lines, term.type, ((0, (), 'k', 'SUCCESS'), (1, (), 'j', 'FAILURE')),
                  STEP_S, EPISODE_S)
    term.finish(r'hilserl eval: stopped \(done\)', EPISODE_S)
    summary = json.loads((folder / 'outputs' / 'arm_run' / 'eval' /
                          'eval_summary.json').read_text())
    assert summary['episodes'] == 2 and summary['success_rate'] == 0.5, summary
    loaded = [re.search(r'policy from (\S+) \(step (\d+)\)', line) for line in term.lines.seen]
    assert [(m.group(1), int(m.group(2))) for m in loaded if m][-1] == \
        (str(folder / 'outputs' / 'arm_run' / 'checkpoints' / 'last'), int(checkpoint.parent.name))

    # 6. the classifier, from the recorded key labels, and its check per episode
    owner.run('hilserl train-classifier --episodes outputs/arm_demos '
              '--output outputs/arm_classifier --epochs 2')
    term.finish(r'"threshold"', STEP_S)
    owner.run('hilserl eval-classifier --model outputs/arm_classifier '
              '--episodes outputs/arm_demos')
    term.finish(r'3 episodes, \d+ with a false positive or a missed success', STEP_S)

    # the README's section is these commands, in this order, with these flags
    expected = [c for c in readme_commands() if not any(n in c for n in NOT_RUN_HERE)]
    assert [shape(c) for c in owner.ran] == [shape(c) for c in expected]
