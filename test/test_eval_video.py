"""What a user looks at when a run does not learn: eval videos (`hilserl eval --video`,
`hilserl replay --video`) decoded back with PyAV, each episode's positions in
eval_summary.json, the success map and the curves of `hilserl plot`."""
import json

import cv2
import numpy as np
import pytest

from hilserl.data.bags import EpisodeWriter, MessageFactory, complete_episodes, read_episode
from hilserl.data.episode_positions import read_episode_positions
from hilserl.data.episode_video import episode_steps
from hilserl.messages.conventions import Topics
from hilserl_tools import cli
from hilserl_tools.plots import MapPoint, integer_ticks, plot_run, success_map

from conftest import TINY_TRAIN_CONFIG, free_domain_id

STEP_NS = 100_000_000


def decoded_frames(path):
    import av
    with av.open(str(path)) as container:
        return [f.to_ndarray(format='rgb24') for f in container.decode(container.streams.video[0])]


def arm_episode(root, index=0, success=True, steps=6, key_step=4):
    """An episode as a real arm records it: no cube ground truth, no full camera frame, actions
    without tick stamps, the person's success key (an actor `label` event), the classifier's
    probability; the TCP moves 1 cm in x a step."""
    f = MessageFactory()
    writer = EpisodeWriter(root / 'episodes' / f'episode_{index:06d}')
    start = (1 + 10 * index) * 1_000_000_000
    writer.write(Topics.EPISODE_EVENTS, f.string(json.dumps({'event': 'start',
                                                             'episode': index})), start)
    for k in range(steps + 1):  # the last state follows the last step
        t = start + k * STEP_NS
        view = np.full((64, 64, 3), 40 * k % 255, np.uint8)
        writer.write(Topics.IMAGE_CROP, f.image(view, t, 'gripper_cam_optical_frame'), t)
        writer.write(Topics.TCP_POSE, f.pose((0.20 + 0.01 * k, -0.03, 0.05), (0, 0, 0, 1), t,
                                             'base_link'), t)
        writer.write(Topics.SUCCESS_PROBABILITY, f.float32(k / steps), t + 1)
        if k < steps:
            writer.write(Topics.EE_ACTION, f.action([0.5, -0.25, 0.0, -1.0],
                                                    'human' if k < 2 else 'policy'), t + 2)
        if success and k == key_step:
            writer.write(Topics.EPISODE_EVENTS, f.string(json.dumps(
                {'event': 'label', 'label': 'success'})), t + 3)
    end = start + steps * STEP_NS + 5
    meta = {'event': 'end', 'episode': index, 'steps': steps, 'success': success,
            'outcome': 'success' if success else 'failure', 'interventions': 2}
    writer.write(Topics.EPISODE_EVENTS, f.string(json.dumps(meta)), end)
    return writer.close(meta)


def test_a_video_frame_a_step_from_any_episode_bag(tmp_path, capsys):
    episode = arm_episode(tmp_path)
    steps = episode_steps(read_episode(episode))
    assert [s.step for s in steps] == [1, 2, 3, 4, 5, 6]
    assert [s.source for s in steps] == ['human'] * 2 + ['policy'] * 4
    assert steps[3].probability == pytest.approx(3 / 6) and steps[0].camera is None
    out = tmp_path / 'ep.mp4'
    assert cli.main(['replay', str(episode / 'bag'), '--video', str(out)]) == 0
    assert f'{out}: 6 frames' in capsys.readouterr().out
    frames = decoded_frames(out)
    assert len(frames) == 6
    # the policy view (right panel) shows each step's own image: 40 * k grey
    height, width = frames[0].shape[:2]
    views = [float(f[height // 3, width - 60].mean()) for f in frames]
    assert views == pytest.approx([40 * k for k in range(6)], abs=12)
    # the text band under the panels is drawn (white text on dark)
    assert (frames[0][-90:] > 200).sum() > 500
    # without --video's path it goes beside the bag; a folder with no bag is one line, exit 2
    assert cli.main(['replay', str(episode), '--video']) == 0
    assert len(decoded_frames(episode / 'episode.mp4')) == 6
    assert cli.main(['replay', str(tmp_path / 'nowhere'), '--video']) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'nowhere' in err


def test_a_real_arm_maps_the_gripper_at_the_success_key(tmp_path):
    found = read_episode_positions(arm_episode(tmp_path, key_step=4))
    assert found['cube_xyz_m'] is None and found['map_source'] == 'tcp_at_success_key'
    assert found['map_xy_m'] == pytest.approx([0.24, -0.03])
    assert found['ee_start_xyz_m'] == pytest.approx([0.20, -0.03, 0.05])
    failed = read_episode_positions(arm_episode(tmp_path, index=1, success=False))
    assert failed['map_source'] == 'tcp_at_end' and failed['map_xy_m'] == pytest.approx(
        [0.26, -0.03])


def test_plot_maps_an_eval_from_its_bags_when_the_summary_has_no_positions(tmp_path, capsys):
    """An eval under `ros2 launch`: the actor's summary only; the map reads the bags."""
    run = tmp_path / 'run'
    for index, success in enumerate((True, False, True)):
        arm_episode(run / 'eval', index, success)
    (run / 'eval' / 'eval_summary.json').write_text(json.dumps({'rows': []}))
    assert cli.main(['plot', str(run)]) == 0
    assert capsys.readouterr().out.split() == [str(run / 'plots' / 'eval_success_map.png')]
    image = cv2.imread(str(run / 'plots' / 'eval_success_map.png'))
    green = (image[..., 1] > 120) & (image[..., 0] < 60) & (image[..., 2] < 60)
    red = (image[..., 2] > 180) & (image[..., 0] < 40) & (image[..., 1] < 40)
    assert green.sum() > 50 and red.sum() > 20  # dots for successes, a cross for the failure


def test_the_success_map_puts_each_episode_where_it_played(tmp_path):
    points = [MapPoint(0.25, 0.03, True, 1, 'cube'), MapPoint(0.21, -0.03, False, 2, 'cube')]
    image = cv2.imread(str(success_map(points, tmp_path / 'map.png')))
    green = np.argwhere((image[..., 1] > 120) & (image[..., 0] < 60) & (image[..., 2] < 60))
    red = np.argwhere((image[..., 2] > 180) & (image[..., 0] < 40) & (image[..., 1] < 40))
    legend_rows = 60  # the legend's marks are above the map
    green, red = green[green[:, 0] > legend_rows], red[red[:, 0] > legend_rows]
    (gy, gx), (ry, rx) = green.mean(0), red.mean(0)
    # seen from above with the arm below: farther (x) is higher, the arm's left (+y) is left
    assert gy < ry and gx < rx


def test_curves_show_success_without_the_human_on_whole_episode_ticks(tmp_path):
    assert integer_ticks(0, 4) == [0, 1, 2, 3, 4]
    assert integer_ticks(0, 9) == [0, 2, 4, 6, 8]
    assert integer_ticks(1, 59) == [10, 20, 30, 40, 50]
    assert integer_ticks(0.2, 0.8) == []
    run = tmp_path / 'run'
    for index in range(12):  # the human drives the first half, the policy succeeds alone after
        path = run / 'episodes' / f'episode_{index:06d}'
        (path / 'bag').mkdir(parents=True)
        (path / 'bag' / 'metadata.yaml').write_text('')
        (path / 'episode.json').write_text(json.dumps({
            'episode': index, 'success': True, 'outcome': 'success', 'steps': 10,
            'interventions': 5 if index < 6 else 0, 'return': 1.0}))
    plot_run(run, window=3)
    image = cv2.imread(str(run / 'plots' / 'success_intervention_vs_episodes.png'))
    # the third line (red in BGR): 0 for the first episodes, 1 at the end
    red = np.argwhere((image[..., 2] > 150) & (image[..., 0] < 60) & (image[..., 1] < 60))
    plot_rows = red[red[:, 0] > 36]  # below the legend
    left, right = plot_rows[plot_rows[:, 1] < 200], plot_rows[plot_rows[:, 1] > 800]
    assert left[:, 0].mean() > right[:, 0].mean() + 200  # low (no solo success), then high


def test_eval_video_writes_a_playable_mp4_an_episode_and_the_positions(tmp_path, capsys):
    """Two episodes on the simulated arm with an untrained policy: every step is a frame, both
    the camera and the policy's view are in it, and the summary holds the cube's place."""
    pytest.importorskip('rclpy')
    from hilserl.configuration.config import load_train_config
    from hilserl_policy.checkpoint import build_agent, save_checkpoint
    config = tmp_path / 'tiny.yaml'
    config.write_text(TINY_TRAIN_CONFIG)
    cfg = load_train_config(config)
    run = tmp_path / 'run'
    checkpoint = save_checkpoint(run, build_agent(cfg, device='cpu'), cfg)
    assert cli.main(['eval', '--checkpoint', str(checkpoint), '--run-dir', str(run),
                     '--episodes', '2', '--video', '--record', 'false']) == 2
    assert '--video' in capsys.readouterr().err
    code = cli.main(['eval', '--checkpoint', str(checkpoint), '--run-dir', str(run),
                     '--episodes', '2', '--video', '--domain-id', str(free_domain_id()),
                     '--max-minutes', '4'])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    summary = json.loads((run / 'eval' / 'eval_summary.json').read_text())
    episodes = dict(complete_episodes(run / 'eval' / 'episodes'))
    assert summary['episodes'] == 2 and len(episodes) == 2
    for row in summary['rows']:
        positions = row['positions']
        assert positions['map_source'] == 'cube' and len(positions['cube_xyz_m']) == 3
        assert positions['map_xy_m'] == positions['cube_xyz_m'][:2]
        x, y, z = positions['ee_start_xyz_m']
        assert 0.1 < x < 0.4 and -0.2 < y < 0.2 and z > 0.0
        meta = episodes[next(p for p in episodes if str(p) == row['bag'])]
        frames = decoded_frames(row['video'])
        assert len(frames) == row['steps'] == meta['steps'] > 0
        height, width = frames[0].shape[:2]
        camera, view = frames[-1][30:300, :width // 2], frames[-1][30:300, -200:]
        assert camera.std() > 10 and view.std() > 10  # both panels hold a rendered scene
    assert cli.main(['plot', str(run)]) == 0
    assert str(run / 'plots' / 'eval_success_map.png') in capsys.readouterr().out.split()
