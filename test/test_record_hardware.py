"""A real-arm recording from nothing, end to end: `hilserl record --backend hardware --teleop
keyboard` with the driver on the pty STS3215 bus simulator (the real wire protocol), the camera
on a video file (OpenCV opens it like a device: the boundary, not the node, is simulated), and a
person's key presses typed into the terminal (a pty) that the keyboard teleop reads. The bags it
records must feed the learner (demo transitions) and `hilserl train-classifier` (key labels)."""
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import List

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
cv2 = pytest.importorskip('cv2')

from conftest import free_domain_id  # noqa: E402
from hilserl.messages.conventions import JOINT_NAMES  # noqa: E402
from so101_driver.calibration import default_calibration, rad_to_ticks, save_calibration  # noqa: E402,E501
from so101_driver.ee_control import TOP_DOWN_SEED_RAD  # noqa: E402
from so101_driver.sts_simulator import SimulatedBus  # noqa: E402
from terminal_session import Lines, play_episodes, write_camera_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
W, H = 160, 120
STARTUP_S = 120.0   # several Python processes importing torch / rclpy on a loaded machine
EPISODE_S = 60.0
# per episode: keys held (key, seconds), the label key, the outcome it must give
SCRIPT = ((0, (('w', 1.0), ('r', 0.6)), 'k', 'SUCCESS'),   # forward, up: success
          (1, (('a', 1.0),), 'j', 'FAILURE'),              # left: failure
          (2, (('q', 0.6), ('r', 0.6)), 'k', 'SUCCESS'))   # close the gripper, up: success


def robot_config(tmp: Path, port: str) -> Path:
    """config/so101_follower.yaml as an owner edits it: their port, calibration and camera."""
    calibration = tmp / 'follower.json'
    save_calibration(default_calibration(), calibration)
    video = tmp / 'camera.avi'
    write_camera_video(video, W, H)
    data = yaml.safe_load((ROOT / 'config' / 'so101_follower.yaml').read_text())
    driver = data['/**/so101_driver']['ros__parameters']
    driver.update(port=port, calibration_file=str(calibration), on_exit='hold',
                  bus_timeout_ms=300.0)  # the simulator shares a loaded machine
    camera = data['/**/gripper_camera']['ros__parameters']
    camera.update(device=str(video), width_px=W, height_px=H, fps=15.0)
    path = tmp / 'follower.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope='module')
def arm(tmp_path_factory):
    """A new owner's SO-101 on the simulated bus: the follower at home, their robot file (port,
    calibration, camera) and a training config (the camera's frame size and crop; an encoder a
    CPU trains from scratch)."""
    tmp = tmp_path_factory.mktemp('arm')
    cal = default_calibration()
    home = np.append(TOP_DOWN_SEED_RAD, 0.7)
    # calibrated (`hilserl calibrate` wrote the same offsets and limits to the servos and to
    # the file the robot file names), so the driver brings it up without writing EEPROM
    bus = SimulatedBus(positions={cal[n].id: rad_to_ticks(n, home[k], cal[n])
                                  for k, n in enumerate(JOINT_NAMES)}, calibration=cal)
    config = tmp / 'train.yaml'
    config.write_text(yaml.safe_dump({
        'task': {'episode_time_s': 30.0, 'random_ee_reset': False},
        'image': {'width_px': W, 'height_px': H, 'crop_tlhw_px': [0, 20, 120, 120]},
        'policy': {'encoder': 'small_conv', 'freeze_encoder': False,
                   'pretrained_encoder_path': None},
        'algorithm': {'feature_cache_shifts': 0}}))
    yield SimpleNamespace(tmp=tmp, bus=bus, config=config, robot=robot_config(tmp, bus.port))
    bus.close()


def drive(arm, args, script, last_line: str, teleop: str = 'keyboard', robot=None,
          hands=None) -> List[str]:
    """`hilserl ARGS` with a pty as its terminal, typing SCRIPT-like keys per episode (and, with
    `hands(episode)`, moving a leader arm); returns its output once it has printed `last_line`
    and exited with 0."""
    master, slave = pty.openpty()  # the person's terminal
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'hilserl_tools.cli', *args, '--backend', 'hardware', '--teleop',
         teleop, '--robot-config', str(robot or arm.robot), '--config', str(arm.config),
         '--domain-id', str(free_domain_id()), '--max-minutes', '5'],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=ROOT, start_new_session=True)
    os.close(slave)
    lines = Lines(proc.stdout)
    try:
        lines.wait_for(r'keys: w/s', STARTUP_S)  # the teleop reads this terminal
        play_episodes(lines, lambda text: os.write(master, text.encode()), script, STARTUP_S,
                      EPISODE_S, hands)
        lines.wait_for(last_line, EPISODE_S)
        assert proc.wait(timeout=EPISODE_S) == 0, '\n'.join(lines.seen[-40:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        os.close(master)
    return lines.seen


@pytest.fixture(scope='module')
def recorded(arm):
    """`hilserl record --backend hardware --teleop keyboard`: three episodes by key."""
    run = arm.tmp / 'demos'
    drive(arm, ['record', '--output', str(run), '--episodes', '3'], SCRIPT,
          r'3 episodes \(2 successful\)')
    return run


def test_keyboard_recording_on_the_simulated_bus_feeds_learner_and_classifier(arm, recorded,
                                                                              tmp_path):
    from hilserl_tools import cli
    from hilserl.data.bags import complete_episodes
    from hilserl.data.demos import load_demo_episodes
    from reward_classifier_node.train import load_frames

    bus, run = arm.bus, recorded
    # the arm moved: the follower's servos were sent goals away from home
    moved = [max(abs(g - bus.servos[k + 1].goals_received[0])
                 for g in bus.servos[k + 1].goals_received) for k in range(len(JOINT_NAMES))]
    assert max(moved) > 20, moved

    episodes = sorted(complete_episodes(run), key=lambda e: e[1]['episode'])
    assert [meta['outcome'] for _, meta in episodes] == ['success', 'failure', 'success']

    # demonstrations the learner reads: every step the human's, the keys' actions in them
    demos = {meta['episode']: transitions for _, meta, transitions in load_demo_episodes(run)}
    assert sorted(demos) == [0, 1, 2]
    for index, axis in ((0, 0), (1, 1), (2, 3)):
        steps = demos[index]
        assert steps and all(t.intervention for t in steps)
        sign = -1.0 if axis == 3 else 1.0   # w: +x, a: +y, q: close (-1)
        assert any(t.action[axis] == sign for t in steps), (index, [t.action for t in steps])
    assert demos[0][-1].terminated and demos[2][-1].terminated
    assert demos[0][-1].reward > 0 and demos[2][-1].reward > 0  # the key is the reward
    assert not demos[1][-1].terminated and demos[1][-1].truncated

    # classifier data: the success key marks positives, the failure has none
    frames = {f.name: f for f in load_frames(run, 'key')}
    labels = [frames[name].labels for name in sorted(frames)]
    assert labels[0].any() and not labels[0].all()
    assert not labels[1].any()
    assert labels[2].any()
    model = tmp_path / 'classifier'
    assert cli.main(['train-classifier', '--episodes', str(run), '--output', str(model),
                     '--epochs', '1', '--max-minutes', '2']) == 0
    assert cli.main(['eval-classifier', '--model', str(model), '--episodes', str(run)]) == 0
    assert (model / 'config.json').is_file()


@pytest.mark.parametrize('source', ['key', 'classifier'])
def test_training_on_the_simulated_bus(arm, recorded, tmp_path, source):
    """`hilserl train` on the arm, seeded with the recorded demonstrations: before any
    classifier with the human's success key as the reward (`--success-source key`), then with
    a classifier trained on the recorded bags (the key still ends an episode)."""
    from hilserl_tools import cli
    extra = []
    if source == 'classifier':
        model = tmp_path / 'classifier'
        assert cli.main(['train-classifier', '--episodes', str(recorded), '--output',
                         str(model), '--epochs', '1', '--max-minutes', '2']) == 0
        extra = ['--classifier-model', str(model)]
    run = tmp_path / 'run'
    out = drive(arm, ['train', '--success-source', source, *extra, '--demo-dir', str(recorded),
                      '--run-dir', str(run), '--episodes', '1'],
                ((0, (('w', 0.6),), 'k', 'SUCCESS'),), r'hilserl train: stopped \(done\)')
    from hilserl.data.demos import load_demo_episodes
    [(_, meta, transitions)] = list(load_demo_episodes(run))
    assert meta['success'] and transitions[-1].terminated
    assert transitions[-1].reward == 10.0  # the key's success reward (the config's default)
    assert any((run / 'checkpoints').iterdir()), out[-20:]


def test_leader_arm_recording_on_the_simulated_bus(arm, tmp_path):
    """`hilserl record --backend hardware --teleop leader`: a second SO-101 on its own simulated
    bus, limp, moved by hand (its encoders change; nothing else is simulated). Its TCP motion
    becomes the recorded actions and the follower follows from where it is, without a jump; the
    keys in the terminal give the label."""
    from hilserl.robot.kinematics import SO101Kinematics
    from hilserl.data.demos import load_demo_episodes

    cal = default_calibration()
    home = np.append(TOP_DOWN_SEED_RAD, 0.7)
    leader = SimulatedBus(positions={cal[n].id: rad_to_ticks(n, home[k], cal[n])
                                     for k, n in enumerate(JOINT_NAMES)})
    leader_cal = tmp_path / 'leader.json'
    save_calibration(cal, leader_cal)
    robot = yaml.safe_load(arm.robot.read_text())
    robot['/**/teleop'] = {'ros__parameters': {'leader_port': leader.port,
                                               'leader_calibration_file': str(leader_cal),
                                               'leader_bus_timeout_ms': 300.0}}
    robot_file = tmp_path / 'follower_and_leader.yaml'
    robot_file.write_text(yaml.safe_dump(robot))
    pan_turn_rad, pan, gripper = 0.3, JOINT_NAMES[0], JOINT_NAMES[5]

    def hands(episode):
        """Turn the leader's base by hand over 1 s, then open its gripper."""
        for k in range(1, 11):
            leader.move_by_hand(cal[pan].id, rad_to_ticks(pan, home[0] + pan_turn_rad * k / 10,
                                                          cal[pan]))
            time.sleep(0.1)
        for k in range(1, 4):
            leader.move_by_hand(cal[gripper].id, rad_to_ticks(gripper, home[5] + 0.12 * k,
                                                              cal[gripper]))
            time.sleep(0.15)

    follower_goals_before = len(arm.bus.servos[cal[pan].id].goals_received)
    run = tmp_path / 'leader_demos'
    try:
        drive(arm, ['record', '--output', str(run), '--episodes', '1'],
              ((0, (), 'k', 'SUCCESS'),), r'1 episodes? \(1 successful\)', teleop='leader',
              robot=robot_file, hands=hands)
    finally:
        leader.close()

    kin = SO101Kinematics()
    turned = home[:5].copy()
    turned[0] += 0.02
    expected_xy = kin.fk(turned)[:2, 3] - kin.fk(home[:5])[:2, 3]
    [(_, meta, steps)] = list(load_demo_episodes(run))
    assert meta['success'] and all(t.intervention for t in steps)
    moving = [t.action for t in steps if np.linalg.norm(t.action[:2]) > 0.2]
    assert len(moving) >= 5, [t.action for t in steps]
    for action in moving:  # the recorded motion is the leader TCP's direction
        cosine = action[:2] @ expected_xy / np.linalg.norm(action[:2]) / np.linalg.norm(
            expected_xy)
        assert cosine > np.cos(np.radians(25)), (action, expected_xy)
    assert any(t.action[3] == 1.0 for t in steps)  # the leader's gripper opened
    goals = arm.bus.servos[cal[pan].id].goals_received[follower_goals_before:]
    turned_ticks = goals[-1] - goals[0]  # the pan servo turned as the leader's did
    assert turned_ticks > 0.5 * pan_turn_rad / np.radians(360 / 4096), goals  # it followed
    per_goal_rad = np.abs(np.diff(goals)) * np.radians(360 / 4096)
    assert per_goal_rad.max() < 0.1, per_goal_rad.max()  # from where it is: no jump


def test_the_success_key_is_found_by_the_actor_event_when_the_label_message_is_missing():
    """The recorder may not yet have discovered the teleop's label publisher in an episode that
    starts at once; the actor's `label` event on episode/events marks the key all the same."""
    import json

    from hilserl.data.bags import EpisodeData, labelled_frames
    from hilserl.messages.conventions import Topics
    from hilserl.messages.conversions import array_to_image

    frames = [(t, array_to_image(np.full((4, 4, 3), t, np.uint8), 'rgb8')) for t in range(10)]
    event = SimpleNamespace(data=json.dumps({'event': 'label', 'label': 'success'}))
    episode = EpisodeData(Path('.'), {}, {Topics.IMAGE_CROP: frames,
                                          Topics.EPISODE_EVENTS: [(6, event)]})
    _, labels, _ = labelled_frames(episode)
    assert labels.tolist() == [0] * 6 + [1] * 4


def test_keyboard_teleop_executable_publishes_the_teleop_topics_from_its_terminal(ros_context):
    """`keyboard_teleop` in a terminal of its own (ros2 launch gives nodes no stdin): keys typed
    there arrive as teleop/action and teleop/episode_label; without a terminal it refuses."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Joy
    from std_msgs.msg import String

    from hilserl.ros.node import qos_profile
    from hilserl.messages.conventions import Topics
    command = [sys.executable, '-c', 'import sys; from so101_driver.teleop_node import '
               'keyboard_main; sys.exit(keyboard_main())']
    refused = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             cwd=ROOT, timeout=STARTUP_S)
    assert refused.returncode == 2 and 'not a terminal' in refused.stderr
    probe = Node('probe', context=ros_context)
    seen = {'actions': [], 'labels': []}
    probe.create_subscription(Joy, Topics.HUMAN_ACTION, seen['actions'].append,
                              qos_profile(Topics.HUMAN_ACTION))
    probe.create_subscription(String, Topics.EPISODE_LABEL, seen['labels'].append,
                              qos_profile(Topics.EPISODE_LABEL))
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(probe)
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, stdin=slave, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True,
                            env=dict(os.environ, ROS_DOMAIN_ID=str(ros_context.get_domain_id())))
    os.close(slave)
    try:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline and not seen['actions']:
            executor.spin_once(timeout_sec=0.1)
        assert seen['actions'], 'keyboard_teleop published nothing'
        deadline = time.monotonic() + EPISODE_S
        while time.monotonic() < deadline and not (
                seen['labels'] and any(m.axes[2] == 1.0 for m in seen['actions'])):
            os.write(master, b'r')
            if len(seen['actions']) % 20 == 19:
                os.write(master, b'k')
            executor.spin_once(timeout_sec=0.04)
        assert any(m.axes[2] == 1.0 for m in seen['actions'])   # r: up
        assert seen['labels'][0].data == 'success'                # k
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        os.close(master)
        executor.shutdown()
        probe.destroy_node()


def test_launch_leaves_the_keyboard_to_keyboard_teleop(arm):
    """`ros2 launch ... teleop:=keyboard`: no teleop node (it would have no stdin), and a line
    saying what to run; with a leader the node runs and the keys are labels only."""
    launch = pytest.importorskip('launch')
    pytest.importorskip('launch_ros')
    from hilserl.ros.graph import LAUNCH_ARGUMENTS
    from hilserl.ros.launch_support import graph_actions

    def actions(teleop):
        context = launch.LaunchContext()
        context.launch_configurations.update({name: default for name, default, _ in
                                              LAUNCH_ARGUMENTS})
        context.launch_configurations.update(mode='record', backend='hardware', teleop=teleop,
                                             success_source='key', config=str(arm.config),
                                             robot_config=str(arm.robot), namespace='arm1',
                                             run_dir=str(arm.config.parent / 'run'))
        made = graph_actions(context)  # (it checks the run directory's lock: not the default)
        return ([a.node_executable for a in made if hasattr(a, 'node_executable')],
                [a.msg for a in made if isinstance(a, launch.actions.LogInfo)])

    nodes, said = actions('keyboard')
    assert 'teleop' not in nodes and 'so101_driver' in nodes
    assert any('ros2 run hilserl keyboard_teleop --ros-args -r __ns:=/arm1' in
               ''.join(getattr(p, 'text', str(p)) for p in m) for m in said), said
    nodes, said = actions('leader')
    assert 'teleop' in nodes
    assert any('labels_only:=true' in ''.join(getattr(p, 'text', str(p)) for p in m)
               for m in said), said
