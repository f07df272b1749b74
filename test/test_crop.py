"""`hilserl crop` against a video file as the camera (the OpenCV boundary is a real capture):
headless it writes a PNG with a grid and asks for --crop; with --crop it writes the crop into
the training config (comments kept) and the policy's view beside it; a wrong crop, no display
or a simulated camera is one line."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from hilserl.configuration.config import load_train_config
from hilserl_tools import cli

ROOT = Path(__file__).resolve().parents[1]
cv2 = pytest.importorskip('cv2')


@pytest.fixture()
def camera(tmp_path):
    """A 640x480 MJPG video (a textured scene, so no frame is blank), a robot file naming it,
    and a copy of the real arm's training config."""
    video = tmp_path / 'gripper.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 15, (640, 480))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(20):
        frame = np.full((480, 640, 3), 60, np.uint8)
        frame[100:300, 200 + i:400 + i] = (40, 160, 220)      # the "cube" drifts right
        frame += rng.integers(0, 20, frame.shape, dtype=np.uint8)
        writer.write(frame)
    writer.release()
    robot = tmp_path / 'robot.yaml'
    robot.write_text('/**/gripper_camera:\n  ros__parameters:\n    backend: opencv\n'
                     f'    device: {video}\n    width_px: 640\n    height_px: 480\n')
    config = tmp_path / 'train.yaml'
    shutil.copy(ROOT / 'config' / 'train.yaml', config)
    return robot, config


def test_without_a_display_a_grid_picture_and_the_config_unchanged(camera, capsys, monkeypatch):
    robot, config = camera
    monkeypatch.delenv('DISPLAY', raising=False)
    before = config.read_text()
    assert cli.main(['crop', '--robot-config', str(robot), '--config', str(config)]) == 1
    picture = config.with_name('train_crop_frame.png')
    assert cv2.imread(str(picture)).shape == (480, 640, 3)
    assert 'no display' in capsys.readouterr().out and config.read_text() == before


def test_a_crop_is_written_into_the_config_with_its_comments_and_the_view_saved(camera, capsys):
    robot, config = camera
    assert cli.main(['crop', '--robot-config', str(robot), '--config', str(config),
                     '--crop', '40,120,400,400']) == 0
    assert load_train_config(config).image.camera('gripper').crop_tlhw_px == (40, 120, 400, 400)
    line = next(x for x in config.read_text().splitlines() if 'crop_tlhw_px' in x)
    assert line.startswith('  crop_tlhw_px: [40, 120, 400, 400]') and '# crop [top, left' in line
    view = cv2.imread(str(config.with_name('train_policy_view.png')))
    assert view.shape == (128, 128, 3)
    assert 'written to' in capsys.readouterr().out


def test_what_cannot_be_done_is_one_line(camera, capsys, monkeypatch):
    robot, config = camera
    for argv, words in (
            (['--crop', '100,300,400,400'], 'does not fit the camera\'s 640x480 frame'),
            (['--crop', '1,2,3'], 'pass four whole numbers'),
            (['--gui'], 'no display'),
            (['--device', str(robot.parent / 'missing.avi'), '--crop', '0,0,10,10'],
             'no valid 640x480 frame')):
        monkeypatch.delenv('DISPLAY', raising=False)
        assert cli.main(['crop', '--robot-config', str(robot), '--config', str(config),
                         *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert '\n' not in err and words in err, (argv, err)
    assert cli.main(['crop', '--robot-config', str(ROOT / 'config' / 'sim_robot.yaml'),
                     '--config', str(config)]) == 2
    assert 'simulated' in capsys.readouterr().err


def test_yaml_values_are_set_in_place_added_or_appended_and_read_back(tmp_path):
    from hilserl.configuration.yaml_edit import node_parameters, set_value, set_values
    text = 'image:\n  width_px: 640   # px\n  # a note\n\ntask:\n  episode_time_s: 10.0\n'
    assert set_value(text, 'image', 'width_px', 800) == text.replace('640  ', '800  ')
    assert '  crop_tlhw_px: [1, 2, 3, 4]\n  width_px' in \
        set_value(text, 'image', 'crop_tlhw_px', [1, 2, 3, 4])
    appended = set_value(text, 'sim', 'x', 1)
    assert appended.endswith('task:\n  episode_time_s: 10.0\n\nsim:\n  x: 1\n')
    path = tmp_path / 'c.yaml'
    path.write_text(text)
    set_values(path, {'task.episode_time_s': 12.5, 'image.width_px': 320})
    assert '# a note' in path.read_text() and '  episode_time_s: 12.5' in path.read_text()
    robot = tmp_path / 'robot.yaml'
    robot.write_text('/**/gripper_camera:\n  ros__parameters:\n    device: /dev/video2\n'
                     'arm1/so101_driver:\n  ros__parameters:\n    port: /dev/ttyUSB0\n')
    assert node_parameters(robot, 'gripper_camera') == {'device': '/dev/video2'}
    assert node_parameters(robot, 'so101_driver') == {'port': '/dev/ttyUSB0'}
    assert node_parameters(robot, 'teleop') == {}


def test_camera_chooses_the_robot_file_section_and_the_entry_of_image_cameras(camera, capsys):
    """--camera front: the frame from /**/front_camera, the crop into image.cameras' front
    entry (a block-style list rewritten), the gripper camera's untouched."""
    robot, config = camera
    robot.write_text(robot.read_text() + robot.read_text().replace('gripper_camera',
                                                                   'front_camera'))
    config.write_text('image:  # two cameras\n  cameras:\n'
                      '    - {name: gripper, crop_tlhw_px: [0, 80, 480, 480]}\n'
                      '    - name: front\n      crop_tlhw_px: [0, 0, 480, 640]\n'
                      '  resize_hw_px: [64, 64]\n\ntask:\n  episode_time_s: 5.0\n')
    assert cli.main(['crop', '--robot-config', str(robot), '--config', str(config),
                     '--camera', 'front', '--crop', '40,120,400,400']) == 0
    cfg = load_train_config(config)
    assert cfg.image.camera('front').crop_tlhw_px == (40, 120, 400, 400)
    assert cfg.image.camera('gripper').crop_tlhw_px == (0, 80, 480, 480)
    assert cfg.image.resize_hw_px == (64, 64) and cfg.task.episode_time_s == 5.0
    assert cv2.imread(str(config.with_name('train_front_policy_view.png'))).shape == (64, 64, 3)
    assert 'image.cameras[front].crop_tlhw_px' in capsys.readouterr().out
    assert cli.main(['crop', '--robot-config', str(robot), '--config', str(config),
                     '--camera', 'side', '--crop', '0,0,10,10']) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and "camera 'side' is not configured" in err, err
