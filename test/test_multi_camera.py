"""Several cameras (image.cameras): the configuration and its older flat form, the graph's
camera nodes, the policy's per-camera encoder pass, and (acceptance) a simulated training run
with the gripper and a front camera whose learner and bags hold both cameras' views."""
import json
import os

import numpy as np
import pytest
import torch

from hilserl.configuration.config import (ConfigError, TrainConfig, check_same_cameras,
                                          from_dict, load_train_config, save_config)
from hilserl.messages.conventions import Topics, camera_topics

from conftest import TINY_TRAIN_CONFIG

TWO_CAMERAS = {'image': {'resize_hw_px': [48, 48], 'cameras': [
    {'name': 'gripper'},
    {'name': 'front', 'width_px': 640, 'height_px': 480, 'crop_tlhw_px': [60, 100, 360, 440]}]}}
FRONT_VIEW = camera_topics('front')[1]


def test_cameras_parse_validate_and_the_flat_form_is_the_gripper_camera(tmp_path):
    cfg = load_train_config(None, TWO_CAMERAS)
    assert cfg.image.camera_names == ('gripper', 'front')
    assert cfg.image.camera('front').crop_tlhw_px == (60, 100, 360, 440)
    assert cfg.image_shape() == (6, 48, 48)
    three_frames = load_train_config(None, {**TWO_CAMERAS, 'observation': {'n_obs_steps': 3}})
    assert three_frames.image_shape() == (18, 48, 48)
    # saved and loaded back (run_config.yaml, a checkpoint's config.json) the same
    save_config(cfg, tmp_path / 'c.yaml')
    assert load_train_config(tmp_path / 'c.yaml') == cfg
    # a file written before image.cameras: its flat fields are the one camera, gripper
    flat = from_dict(TrainConfig, {'image': {'width_px': 800, 'height_px': 600,
                                             'crop_tlhw_px': [0, 100, 600, 600]}})
    assert [(c.name, c.width_px, c.height_px, c.crop_tlhw_px) for c in flat.image.cameras] == \
        [('gripper', 800, 600, (0, 100, 600, 600))]
    assert TrainConfig().image.camera_names == ('gripper',)
    assert TrainConfig().image_shape() == (3, 128, 128)
    for image, words in (
            ({'cameras': [{'name': 'front'}, {'name': 'front'}]}, 'camera names must be unique'),
            ({'cameras': []}, 'needs at least one camera'),
            ({'cameras': [{'name': 'Front cam'}]}, r'image\.cameras\[Front cam\]\.name'),
            ({'cameras': [{'name': 'front', 'width_px': 320, 'height_px': 240}]},
             r'image\.cameras\[front\]\.crop_tlhw_px=.*leaves the 320x240 frame'),
            ({'crop_tlhw_px': [0, 0, 10, 10], 'cameras': [{'name': 'front'}]},
             'image.crop_tlhw_px and image.cameras are both given')):
        with pytest.raises(ConfigError, match=words):
            load_train_config(None, {'image': image})


def test_a_model_of_other_cameras_is_refused_in_one_line():
    cfg = load_train_config(None, TWO_CAMERAS)
    check_same_cameras(('gripper', 'front'), cfg, 'ckpt')
    for other in (('gripper',), ('front', 'gripper')):
        with pytest.raises(ConfigError, match=r"^ckpt was trained with cameras \[.*\] but this "
                                              r"graph's configuration has \['gripper', 'front'\]"):
            check_same_cameras(other, cfg, 'ckpt')


def test_the_graph_runs_one_camera_node_per_camera_and_records_every_view():
    from hilserl.ros.graph import GraphArgs, build_graph
    nodes = {n.name: n for n in build_graph(GraphArgs(), load_train_config(None, TWO_CAMERAS))}
    front = nodes['front_camera']
    assert front.executable == 'gripper_camera' and front.module == 'so101_driver.camera_node'
    assert front.parameters['camera_name'] == 'front'
    assert front.parameters['crop_tlhw_px'] == [60, 100, 360, 440]
    assert nodes['gripper_camera'].parameters['crop_tlhw_px'] == [0, 80, 480, 480]
    recorder = nodes['episode_recorder'].parameters
    assert recorder['camera_view_topics'] == [Topics.IMAGE_CROP, FRONT_VIEW]
    assert {Topics.IMAGE_CROP, FRONT_VIEW} <= set(recorder['required_topics'])


def test_the_encoder_runs_each_camera_through_one_backbone_and_joins_their_features():
    from hilserl_policy.networks import ObservationEncoder
    from hilserl_policy.policy import build_policy
    cfg = load_train_config(None, {**TWO_CAMERAS, 'observation': {'n_obs_steps': 2},
                                   'policy': {'encoder': 'small_conv', 'freeze_encoder': False,
                                              'pretrained_encoder_path': None}})
    policy = build_policy(cfg, device='cpu')
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (5, 12, 48, 48), dtype=np.uint8))
    fmaps = policy.backbone(images)
    c, h, w = policy.backbone.fmap_shape
    assert fmaps.shape == (5, 4, c, h, w)  # 2 cameras x 2 frames, camera-major
    # each 3-channel frame of each camera is one pass of the same network
    gripper_newest = policy.backbone(images[:, 3:6])[:, 0]
    front_oldest = policy.backbone(images[:, 6:9])[:, 0]
    assert torch.allclose(fmaps[:, 1], gripper_newest, atol=1e-5)
    assert torch.allclose(fmaps[:, 2], front_oldest, atol=1e-5)
    encoder = policy.encoder
    assert encoder.spatial.kernel.shape[0] == 2 * c  # a spatial kernel per camera's channel
    assert encoder.image_proj[0].in_features == 2 * 2 * c * 8  # cameras x frames x features
    # joined features: the same as each camera's own spatial embedding, concatenated per frame
    states = torch.zeros(5, cfg.observation.state_dim)
    joined = encoder(fmaps, states)
    assert joined.shape == (5, encoder.out_dim)
    kernel = encoder.spatial.kernel
    per_camera = []
    for frame in range(2):
        for camera in range(2):
            own = ObservationEncoder((c, h, w), 1, cfg.observation.state_dim, 4)
            own.spatial.kernel.data = kernel[camera * c:(camera + 1) * c].clone()
            per_camera.append(own.spatial(fmaps[:, camera * 2 + frame]))
    assert torch.allclose(joined[:, :cfg.policy.latent_dim],
                          encoder.image_proj(torch.cat(per_camera, 1)), atol=1e-5)
    # a change in the front camera's view alone changes the features
    changed = images.clone()
    changed[:, 6:] = 255 - changed[:, 6:]
    assert not torch.allclose(encoder(policy.backbone(changed), states), joined)
    # acting on one observation works on the stacked cameras
    action = policy.act(images[0].numpy(), np.zeros(cfg.observation.state_dim, np.float32),
                        deterministic=True)
    assert action.shape == (4,) and np.all(np.abs(action) <= 1)


def test_the_actor_stacks_every_camera_of_one_tick_camera_major():
    from hilserl_policy.episode import ObservationAssembler, StaleObservation
    cfg = load_train_config(None, {**TWO_CAMERAS, 'observation': {'n_obs_steps': 2}})
    assembler = ObservationAssembler(cfg)
    views = {name: [np.full((48, 48, 3), 10 * k + i, np.uint8) for k in range(2)]
             for i, name in enumerate(('gripper', 'front'))}
    assembler.set_joints(np.zeros(6), np.zeros(6), 1.0)
    assembler.set_image(views['gripper'][0], 1.0, 'gripper')
    with pytest.raises(StaleObservation, match='waiting for the first image of camera front'):
        assembler.observe(1.0)
    with pytest.raises(ValueError, match="camera 'side' is not one of image.cameras"):
        assembler.set_image(views['front'][0], 1.0, 'side')
    assembler.set_image(views['front'][0], 1.0, 'front')
    assembler.observe(1.0)
    for name in views:
        assembler.set_image(views[name][1], 1.1, name)
    image, _ = assembler.observe(1.1)
    assert image.shape == (12, 48, 48)
    # gripper oldest, gripper newest, front oldest, front newest
    assert [int(image[3 * k, 0, 0]) for k in range(4)] == [0, 10, 1, 11]
    assembler.set_image(views['gripper'][1], 1.45, 'gripper')
    assembler.set_joints(np.zeros(6), np.zeros(6), 1.45)
    with pytest.raises(StaleObservation, match=r'front image is 0\.40 s old'):
        assembler.observe(1.5)


@pytest.fixture(scope='module')
def two_camera_run(tmp_path_factory):
    import yaml

    from hilserl_tools import cli
    root = tmp_path_factory.mktemp('two_cameras')
    config = root / 'two_cameras.yaml'
    config.write_text(TINY_TRAIN_CONFIG + yaml.safe_dump(TWO_CAMERAS))
    run = root / 'run'
    code = cli.main(['train', '--config', str(config), '--run-dir', str(run), '--episodes', '2',
                     '--demos', '0', '--domain-id', str(30 + os.getpid() % 30), '--device',
                     'cpu', '--max-minutes', '5'])
    return code, run


def _views_by_stamp(data, topic):
    from hilserl.messages.conversions import image_to_array
    return {stamp: image_to_array(msg).transpose(2, 0, 1) for stamp, msg in data.messages[topic]}


def test_two_cameras_reach_the_learner_and_the_bags(two_camera_run):
    """Acceptance (#26 item 7): 2 episodes with a gripper and a front camera; every transition
    in the bags and in the learner's replay carries both cameras' views of one tick."""
    from hilserl.data.bags import list_episodes, read_episode
    from hilserl.data.transition import TransitionDecoder
    from hilserl_policy.checkpoint import latest_checkpoint
    from hilserl_policy.policy import read_pretrained
    from hilserl_policy.replay_buffer import ReplayBuffer
    code, run = two_camera_run
    assert code == 0
    episodes = list_episodes(run / 'episodes')
    assert len(episodes) == 2
    views_of_tick = {}  # (gripper view bytes, front view bytes) of every recorded tick
    for path in episodes:
        data = read_episode(path)
        gripper = _views_by_stamp(data, Topics.IMAGE_CROP)
        front = _views_by_stamp(data, FRONT_VIEW)
        assert gripper and front, f'{path.name}: a camera view is not in the bag'
        common = sorted(set(gripper) & set(front))
        assert len(common) >= 0.9 * max(len(gripper), len(front))  # one of each per tick
        for stamp in common:
            assert gripper[stamp].shape == front[stamp].shape == (3, 48, 48)
            views_of_tick[gripper[stamp].tobytes()] = front[stamp].tobytes()
        decoder = TransitionDecoder()
        transitions = [decoder.decode(np.asarray(m.data, np.uint8).tobytes())[0]
                       for _, m in data.messages[Topics.TRANSITIONS]]
        assert transitions and len(transitions) == json.loads(
            (path / 'episode.json').read_text())['steps']
        for t in transitions:
            assert t.image.shape == (6, 48, 48)
            # camera-major: the gripper's view, then the front camera's of the same tick
            assert views_of_tick.get(t.image[:3].tobytes()) == t.image[3:].tobytes()
            assert not np.array_equal(t.image[:3], t.image[3:])
    checkpoint = latest_checkpoint(run)
    assert checkpoint is not None
    _, meta, cfg = read_pretrained(checkpoint / 'pretrained_model')
    assert cfg.image.camera_names == ('gripper', 'front') and meta['image_shape'] == [6, 48, 48]
    online = ReplayBuffer.load_incremental(checkpoint / 'training_state' / 'online_buffer.json')
    assert online.image_shape == (6, 48, 48) and len(online) > 0
    images = online.all()['image']
    for image in images:
        assert views_of_tick.get(np.ascontiguousarray(image[:3]).tobytes()) == \
            np.ascontiguousarray(image[3:]).tobytes()


def test_an_eval_config_with_other_cameras_is_refused(two_camera_run, tmp_path, capsys):
    from hilserl_policy.checkpoint import latest_checkpoint
    from hilserl_tools import cli
    _, run = two_camera_run
    one_camera = tmp_path / 'one.yaml'
    one_camera.write_text(TINY_TRAIN_CONFIG + 'image:\n  resize_hw_px: [48, 48]\n')
    assert cli.main(['eval', '--config', str(one_camera), '--checkpoint',
                     str(latest_checkpoint(run)), '--run-dir', str(tmp_path / 'eval')]) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'image.cameras' in err, err


def test_the_classifier_takes_every_camera_of_one_tick(two_camera_run, tmp_path):
    """Classifier frames from the two-camera bags join both views of a tick; the model encodes
    each camera's view and keeps its cameras through a save; the node's aligner makes one
    frame per tick whatever order the views arrive in."""
    from reward_classifier_node.inference import ViewAligner
    from reward_classifier_node.model import (ClassifierConfig, RewardClassifier,
                                              load_classifier, save_classifier)
    from reward_classifier_node.train import load_frames, predict_proba
    _, run = two_camera_run
    episodes = load_frames(run / 'episodes', 'ground_truth', cameras=('gripper', 'front'))
    assert len(episodes) == 2
    gripper_only = load_frames(run / 'episodes', 'ground_truth')
    for both, one in zip(episodes, gripper_only):
        assert both.images.shape[1:] == (48, 48, 6) and len(both.images) >= 0.9 * len(one.images)
        assert np.array_equal(both.images[..., :3], one.images[-len(both.images):])
        assert not np.array_equal(both.images[..., :3], both.images[..., 3:])
    model = RewardClassifier(ClassifierConfig(cameras=('gripper', 'front'), image_hw_px=(48, 48),
                                              hidden_dim=8))
    probs = predict_proba(model, episodes[0].images)
    assert probs.shape == (len(episodes[0].images),)
    with pytest.raises(ValueError, match='expected 2 views, got 1'):
        model(torch.zeros(1, 3, 48, 48))
    save_classifier(model, tmp_path / 'clf', 0.5, {})
    loaded, _, _ = load_classifier(tmp_path / 'clf')
    assert loaded.config.cameras == ('gripper', 'front')
    assert np.allclose(predict_proba(loaded, episodes[0].images), probs, atol=1e-6)

    aligner = ViewAligner(('gripper', 'front'))
    g, f = np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)
    assert aligner.add('front', 100, f) is None       # the tick's front view first
    assert [v[0, 0, 0] for v in aligner.add('gripper', 100, g)] == [0, 1]
    assert aligner.add('gripper', 200, g) is None     # its front view not yet here
    assert aligner.add('front', 200, f) is not None
    assert aligner.add('front', 300, f) is None       # no new gripper view: no frame
    assert [len(ViewAligner(('gripper',)).add('gripper', 5, g))] == [1]


def test_lerobot_rows_keep_each_cameras_newest_frame_and_give_the_stack_back():
    """An episode of two cameras and two stacked frames: each row keeps every camera's newest
    frame, and the transitions come back stacked camera-major as the actor stacked them."""
    from hilserl.data.lerobot_dataset import episode_from_transitions, transitions_from_episode
    from hilserl.data.transition import Transition
    rng = np.random.default_rng(0)
    ticks = [rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8) for _ in range(5)]  # (V, 3)

    def stacked(t):  # the actor's stacking: each camera's two frames, camera-major
        return np.stack([ticks[max(t - 1, 0)], ticks[t]], 1).reshape(12, 8, 8)
    transitions = [Transition(stacked(t), np.zeros(2, np.float32), np.zeros(4, np.float32), 0.0,
                              stacked(t + 1), np.zeros(2, np.float32), False, t == 3, False)
                   for t in range(4)]
    episode = episode_from_transitions(transitions, cameras=('gripper', 'front'))
    assert episode.image.shape == (4, 8, 8, 6)
    assert np.array_equal(episode.image[2][..., 3:], ticks[2][1].transpose(1, 2, 0))
    for before, after in zip(transitions, transitions_from_episode(episode, n_obs_steps=2)):
        assert np.array_equal(before.image, after.image)
        assert np.array_equal(before.next_image, after.next_image)


def test_a_two_camera_run_exports_both_cameras_to_lerobot(two_camera_run, tmp_path):
    from hilserl.data.bags import list_episodes, read_episode
    from hilserl.data import lerobot_dataset as lrd
    _, run = two_camera_run
    root, episodes = lrd.export_lerobot(run, tmp_path / 'dataset', video=False)
    features = json.loads((root / lrd.INFO_PATH).read_text())['features']
    assert features['observation.images.gripper']['shape'] == [48, 48, 3]
    assert features['observation.images.front']['shape'] == [48, 48, 3]
    one_camera = load_train_config(None, {'image': {'resize_hw_px': [48, 48]}})
    front_views = {_views_by_stamp(read_episode(path), FRONT_VIEW)[stamp].tobytes()
                   for path in list_episodes(run / 'episodes')
                   for stamp in _views_by_stamp(read_episode(path), FRONT_VIEW)}
    read_back = lrd.labelled_frames(root, one_camera, camera='front')
    assert len(read_back) == 2
    for _, images, _ in read_back:
        for image in images:
            assert image.transpose(2, 0, 1).tobytes() in front_views
    with pytest.raises(lrd.DatasetError, match=r"one camera; this one has \['gripper', 'front'\]"):
        lrd.labelled_frames(root, load_train_config(None, TWO_CAMERAS))
