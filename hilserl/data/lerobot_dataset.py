"""LeRobot datasets (format v3.0, as LeRobot 0.4+ reads them) out of and into hilserl episodes.

ROS-free; written and read with pyarrow (Parquet) and PyAV (MP4), never with LeRobot itself.

Layout written by `export_lerobot` (one chunk, one file each; LeRobot's path templates):
    meta/info.json                      codebase_version v3.0, fps, robot_type, features
    meta/stats.json                     min/max/mean/std/count/quantiles per feature
    meta/tasks.parquet                  task (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, row range, video
                                        time range, per-episode stats; hilserl/* columns
    data/chunk-000/file-000.parquet     one row per transition (images embedded as PNG when
                                        exported as images)
    videos/observation.images.gripper/chunk-000/file-000.mp4   every episode's frames in a row
                                        (one such video per camera: observation.images.<name>)

One row per transition: the observation before the step (state, newest camera frame), the
executed action, and `next.*` for what followed (LeRobot's convention). The observation after an
episode's last step has no row of its own; hilserl keeps it in the episodes table
(`hilserl/final_state`, `hilserl/final_image_png`) so the transitions come back whole. Without
it (other LeRobot datasets) the last row's next observation is its own, as LeRobot's replay
buffer does.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from hilserl.data.video import VideoError, encode_mp4

CODEBASE_VERSION = 'v3.0'
ROBOT_TYPE = 'so101'
DEFAULT_TASK = 'Pick up the cube and lift it'

STATE = 'observation.state'
ACTION = 'action'
IMAGE = 'observation.images.gripper'
IMAGE_PREFIX = 'observation.images.'   # + the camera's name (image.cameras)
REWARD = 'next.reward'
DONE = 'next.done'
TRUNCATED = 'next.truncated'
INTERVENTION = 'complementary_info.is_intervention'
FINAL_STATE = 'hilserl/final_state'
FINAL_IMAGE = 'hilserl/final_image_png'

INFO_PATH = 'meta/info.json'
STATS_PATH = 'meta/stats.json'
TASKS_PATH = 'meta/tasks.parquet'
EPISODES_PATH = 'meta/episodes/chunk-000/file-000.parquet'
DATA_PATH = 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
VIDEO_PATH = 'videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4'

# Added to every frame by LeRobot's recorder; part of info.json's features.
INDEX_FEATURES = {
    'timestamp': {'dtype': 'float32', 'shape': [1], 'names': None},
    'frame_index': {'dtype': 'int64', 'shape': [1], 'names': None},
    'episode_index': {'dtype': 'int64', 'shape': [1], 'names': None},
    'index': {'dtype': 'int64', 'shape': [1], 'names': None},
    'task_index': {'dtype': 'int64', 'shape': [1], 'names': None},
}
# LeRobot's video defaults (AV1 in MP4, a key frame every 2 frames for fast random access),
# a lower CRF than LeRobot's 30: 128x128 policy views lose little.
VIDEO_CODECS = ('libsvtav1', 'libx264')
VIDEO_OPTIONS = {'libsvtav1': {'g': '2', 'crf': '23', 'preset': '10'},
                 'libx264': {'g': '2', 'crf': '23', 'preset': 'veryfast'}}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


def final_image_column(camera: str) -> str:
    """The episodes table's column of a camera's last observation: the gripper camera's under
    its name from before several cameras, another's beside it (.<name>)."""
    return FINAL_IMAGE if camera == 'gripper' else f'{FINAL_IMAGE}.{camera}'


class DatasetError(ValueError):
    """A dataset (or a source of one) that cannot be written or read; the message says why."""


def state_names(state_features: Sequence[str]) -> List[str]:
    """Names of the state vector's values, LeRobot style ('shoulder_pan.pos', ...); SI units
    (rad, rad/s, m), unlike LeRobot's SO-101 datasets (degrees or -100..100)."""
    from hilserl.messages.conventions import JOINT_NAMES
    names = {'joint_pos': [f'{j}.pos' for j in JOINT_NAMES],
             'joint_vel': [f'{j}.vel' for j in JOINT_NAMES],
             'ee_xyz': ['ee.x', 'ee.y', 'ee.z'], 'ee_euler': ['ee.roll', 'ee.pitch', 'ee.yaw'],
             'gripper_pos': ['gripper.pos']}
    return [n for feature in state_features for n in names[feature]]


# --- one episode, as written and as read ---------------------------------------------------------

@dataclass
class DatasetEpisode:
    """One episode's rows (N of them) and what hilserl keeps beside them."""
    state: np.ndarray                       # (N, S) float32
    action: np.ndarray                      # (N, A) float32
    image: np.ndarray                       # (N, H, W, 3 x cameras) uint8, each camera's
    #                                         newest frame, camera-major
    reward: np.ndarray                      # (N,) float32
    terminated: np.ndarray                  # (N,) bool
    truncated: np.ndarray                   # (N,) bool
    intervention: np.ndarray                # (N,) bool
    final_state: Optional[np.ndarray] = None    # (S,) the observation after the last step
    final_image: Optional[np.ndarray] = None    # (H, W, 3 x cameras)
    name: str = ''
    success: bool = False
    extra: Dict[str, object] = field(default_factory=dict)
    cameras: Tuple[str, ...] = ('gripper',)  # image.cameras' names, the image's order

    def __len__(self) -> int:
        return len(self.action)


def episode_from_transitions(transitions, name: str = '', success: bool = False,
                             cameras: Sequence[str] = ('gripper',)) -> DatasetEpisode:
    """Rows from an episode's transitions; images are (C, H, W) with C = 3 x stacked frames x
    cameras (camera-major): each camera's newest frame is kept."""
    views = len(cameras)
    channels = np.shape(transitions[0].image)[0]
    if channels % (3 * views):
        raise DatasetError(f'episode {name}: {channels} image channels do not hold the '
                           f'{views} cameras {list(cameras)} of its configuration')

    def newest(image):  # (V x F x 3, H, W) -> (H, W, V x 3) of each camera's last frame
        image = np.asarray(image, np.uint8)
        per_camera = image.reshape(views, -1, 3, *image.shape[1:])[:, -1]
        return np.ascontiguousarray(per_camera.reshape(-1, *image.shape[1:]).transpose(1, 2, 0))
    last = transitions[-1]
    return DatasetEpisode(
        state=np.stack([t.state for t in transitions]).astype(np.float32),
        action=np.stack([t.action for t in transitions]).astype(np.float32),
        image=np.stack([newest(t.image) for t in transitions]),
        reward=np.array([t.reward for t in transitions], np.float32),
        terminated=np.array([t.terminated for t in transitions], bool),
        truncated=np.array([t.truncated for t in transitions], bool),
        intervention=np.array([t.intervention for t in transitions], bool),
        final_state=np.asarray(last.next_state, np.float32), final_image=newest(last.next_image),
        name=name, success=success, cameras=tuple(cameras))


def transitions_from_episode(episode: DatasetEpisode, n_obs_steps: int = 1) -> Iterator:
    """Transitions of one episode; `n_obs_steps` frames stacked on the channel axis (each
    camera's, camera-major), the episode's first frame repeated before it (as the actor
    stacks them)."""
    from hilserl.data.transition import Transition
    n = len(episode)
    views = episode.image.shape[-1] // 3

    def per_camera(frame):  # (H, W, V x 3) -> (V, 3, H, W)
        return frame.transpose(2, 0, 1).reshape(views, 3, *frame.shape[:2])
    frames = [per_camera(f) for f in episode.image]
    frames.append(per_camera(episode.final_image) if episode.final_image is not None
                  else frames[-1])
    states = list(episode.state) + [episode.final_state if episode.final_state is not None
                                    else episode.state[-1]]

    def stacked(t):
        ticks = np.stack([frames[max(i, 0)] for i in range(t - n_obs_steps + 1, t + 1)], 1)
        return np.ascontiguousarray(ticks.reshape(-1, *ticks.shape[3:]))
    for t in range(n):
        yield Transition(image=stacked(t), state=np.asarray(states[t], np.float32),
                         action=np.asarray(episode.action[t], np.float32),
                         reward=float(episode.reward[t]), next_image=stacked(t + 1),
                         next_state=np.asarray(states[t + 1], np.float32),
                         terminated=bool(episode.terminated[t]),
                         truncated=bool(episode.truncated[t]),
                         intervention=bool(episode.intervention[t]))


# --- writing -------------------------------------------------------------------------------------

def _png(image: np.ndarray) -> bytes:
    import cv2
    ok, data = cv2.imencode('.png', np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise DatasetError('PNG encoding failed')
    return data.tobytes()


def _decode_image(data: bytes) -> np.ndarray:
    import cv2
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError('an embedded image does not decode')
    return np.ascontiguousarray(image[:, :, ::-1])


def feature_stats(values: np.ndarray, image: bool = False) -> Dict[str, list]:
    """LeRobot's statistics of one feature over frames: per value (images: per channel, shape
    (3, 1, 1), on the 0-1 scale)."""
    x = values.astype(np.float64)
    if image:  # (N, H, W, 3) -> per channel
        x = x.reshape(-1, 3) / 255.0
    elif x.ndim == 1:
        x = x[:, None]
    stats = {'min': x.min(0), 'max': x.max(0), 'mean': x.mean(0), 'std': x.std(0)}
    for q in QUANTILES:
        stats[f'q{int(round(q * 100)):02d}'] = np.quantile(x, q, axis=0)
    out = {k: (v.reshape(3, 1, 1) if image else v).tolist() for k, v in stats.items()}
    out['count'] = [int(len(values))]
    return out


def _encode_video(path: Path, frames: Iterator[np.ndarray], fps: int, height: int, width: int
                  ) -> dict:
    """Frames (H, W, 3) RGB into one MP4, frame i at time i / fps; the video info LeRobot keeps
    in info.json."""
    try:
        codec = encode_mp4(path, frames, fps, height, width, VIDEO_CODECS, VIDEO_OPTIONS)
    except VideoError as exc:
        raise DatasetError(f'{exc}; export with --images') from None
    return {'video.height': height, 'video.width': width, 'video.codec': codec,
            'video.pix_fmt': 'yuv420p', 'video.is_depth_map': False, 'video.fps': fps,
            'video.channels': 3, 'has_audio': False}


def _fixed_list(values: np.ndarray, pa_type):
    import pyarrow as pa
    flat = pa.array(values.reshape(-1), type=pa_type)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def _tasks_table(tasks: Sequence[str]):
    """meta/tasks.parquet as pandas writes a DataFrame indexed by task (LeRobot reads it with
    pandas.read_parquet and looks tasks up in the index)."""
    import pyarrow as pa
    pandas_meta = {
        'index_columns': ['task'],
        'column_indexes': [{'name': None, 'field_name': None, 'pandas_type': 'unicode',
                            'numpy_type': 'object', 'metadata': {'encoding': 'UTF-8'}}],
        'columns': [{'name': 'task_index', 'field_name': 'task_index', 'pandas_type': 'int64',
                     'numpy_type': 'int64', 'metadata': None},
                    {'name': 'task', 'field_name': 'task', 'pandas_type': 'unicode',
                     'numpy_type': 'object', 'metadata': None}],
        'creator': {'library': 'pyarrow', 'version': pa.__version__},
        'pandas_version': '2.2.3'}
    table = pa.table({'task_index': pa.array(range(len(tasks)), pa.int64()),
                      'task': pa.array(list(tasks), pa.string())})
    return table.replace_schema_metadata({b'pandas': json.dumps(pandas_meta).encode()})


def write_dataset(out_dir, episodes: Sequence[DatasetEpisode], fps: int, video: bool = True,
                  task: str = DEFAULT_TASK, state_value_names: Optional[Sequence[str]] = None,
                  robot_type: str = ROBOT_TYPE, progress: Callable[[str], None] = lambda _: None
                  ) -> Path:
    """Write `episodes` as a LeRobot v3.0 dataset in `out_dir` (new or empty); built in a hidden
    folder beside it and renamed into place, so a failed export leaves nothing half-written."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DatasetError(f'{out_dir} already exists and is not empty; choose a new directory')
    if not episodes:
        raise DatasetError('no episodes to export')
    if int(fps) != fps or fps <= 0:
        raise DatasetError(f'fps={fps}: LeRobot needs a positive whole number')
    fps = int(fps)
    first = episodes[0]
    height, width = first.image.shape[1:3]
    state_dim, action_dim = first.state.shape[1], first.action.shape[1]
    # one image feature per camera, each its slice of the episodes' camera-major channels
    image_keys = [IMAGE_PREFIX + name for name in first.cameras]
    for e in episodes:
        if e.image.shape[1:] != (height, width, 3 * len(image_keys)) or \
                e.cameras != first.cameras or e.state.shape[1] != state_dim or \
                e.action.shape[1] != action_dim or len(e) == 0:
            raise DatasetError(f'episode {e.name or "?"} differs in image, state or action '
                               f'shape from the first (or is empty)')

    def camera_images(images, index):
        return images[..., 3 * index:3 * index + 3]
    names = list(state_value_names or [])
    if len(names) != state_dim:
        names = [f'state_{i}' for i in range(state_dim)]
    features = {
        STATE: {'dtype': 'float32', 'shape': [state_dim], 'names': names},
        ACTION: {'dtype': 'float32', 'shape': [action_dim],
                 'names': ['delta_x', 'delta_y', 'delta_z', 'gripper'][:action_dim]
                 if action_dim == 4 else [f'action_{i}' for i in range(action_dim)]},
        **{key: {'dtype': 'video' if video else 'image', 'shape': [height, width, 3],
                 'names': ['height', 'width', 'channels']} for key in image_keys},
        REWARD: {'dtype': 'float32', 'shape': [1], 'names': None},
        DONE: {'dtype': 'bool', 'shape': [1], 'names': None},
        TRUNCATED: {'dtype': 'bool', 'shape': [1], 'names': None},
        INTERVENTION: {'dtype': 'bool', 'shape': [1], 'names': ['is_intervention']},
        **json.loads(json.dumps(INDEX_FEATURES)),
    }
    tmp = out_dir.parent / f'.{out_dir.name}.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        lengths = np.array([len(e) for e in episodes])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        columns = {
            STATE: np.concatenate([e.state for e in episodes]).astype(np.float32),
            ACTION: np.concatenate([e.action for e in episodes]).astype(np.float32),
            REWARD: np.concatenate([e.reward for e in episodes]).astype(np.float32),
            DONE: np.concatenate([e.terminated | e.truncated for e in episodes]),
            TRUNCATED: np.concatenate([e.truncated for e in episodes]),
            INTERVENTION: np.concatenate([e.intervention for e in episodes]),
            'timestamp': np.concatenate([np.arange(n, dtype=np.float32) / fps
                                         for n in lengths]),
            'frame_index': np.concatenate([np.arange(n) for n in lengths]).astype(np.int64),
            'episode_index': np.repeat(np.arange(len(episodes)), lengths).astype(np.int64),
            'index': np.arange(int(lengths.sum()), dtype=np.int64),
            'task_index': np.zeros(int(lengths.sum()), np.int64),
        }
        arrays = {}
        for key, values in columns.items():
            dtype = features[key]['dtype']
            if values.ndim == 2:
                arrays[key] = _fixed_list(values, pa.float32())
            else:
                arrays[key] = pa.array(values, {'float32': pa.float32(), 'bool': pa.bool_(),
                                                'int64': pa.int64()}[dtype])
        if not video:
            progress('encoding PNG images')
            image_type = pa.struct([('bytes', pa.binary()), ('path', pa.string())])
            for index, key in enumerate(image_keys):
                arrays[key] = pa.array([{'bytes': _png(camera_images(f, index)), 'path': None}
                                        for e in episodes for f in e.image], image_type)
        order = [k for k in features if k in arrays]
        data_path = tmp / DATA_PATH.format(chunk_index=0, file_index=0)
        data_path.parent.mkdir(parents=True)
        table = pa.table({k: arrays[k] for k in order})
        with pq.ParquetWriter(str(data_path), table.schema, compression='snappy') as writer:
            for start, n in zip(starts, lengths):  # one row group per episode, as LeRobot
                writer.write_table(table.slice(int(start), int(n)))

        if video:
            progress(f'encoding {int(lengths.sum())} frames to MP4')
            for index, key in enumerate(image_keys):
                features[key]['info'] = _encode_video(
                    tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0),
                    (camera_images(f, index) for e in episodes for f in e.image), fps, height,
                    width)

        # statistics: global, and per episode in the episodes table
        def stats_of(rows: slice, images: np.ndarray):
            out = {k: feature_stats(columns[k][rows]) for k in columns}
            for index, key in enumerate(image_keys):
                out[key] = feature_stats(camera_images(images, index), image=True)
            return out
        all_images = np.concatenate([e.image for e in episodes])
        stats = stats_of(slice(None), all_images)
        (tmp / 'meta').mkdir(exist_ok=True)
        (tmp / STATS_PATH).write_text(json.dumps(stats, indent=2))
        pq.write_table(_tasks_table([task]), str(tmp / TASKS_PATH))

        rows: Dict[str, list] = {'episode_index': list(range(len(episodes))),
                                 'tasks': [[task]] * len(episodes),
                                 'length': lengths.tolist(),
                                 'data/chunk_index': [0] * len(episodes),
                                 'data/file_index': [0] * len(episodes),
                                 'dataset_from_index': starts.tolist(),
                                 'dataset_to_index': (starts + lengths).tolist()}
        for key in image_keys if video else ():
            rows[f'videos/{key}/chunk_index'] = [0] * len(episodes)
            rows[f'videos/{key}/file_index'] = [0] * len(episodes)
            rows[f'videos/{key}/from_timestamp'] = (starts / fps).tolist()
            rows[f'videos/{key}/to_timestamp'] = ((starts + lengths) / fps).tolist()
        rows['meta/episodes/chunk_index'] = [0] * len(episodes)
        rows['meta/episodes/file_index'] = [0] * len(episodes)
        per_episode = [stats_of(slice(int(s), int(s + n)), e.image)
                       for e, s, n in zip(episodes, starts, lengths)]
        for key in stats:
            for stat in stats[key]:
                rows[f'stats/{key}/{stat}'] = [p[key][stat] for p in per_episode]
        rows['hilserl/source_episode'] = [e.name for e in episodes]
        rows['hilserl/success'] = [bool(e.success) for e in episodes]
        if all(e.final_state is not None and e.final_image is not None for e in episodes):
            rows[FINAL_STATE] = [np.asarray(e.final_state, np.float32).tolist()
                                 for e in episodes]
            for index, name in enumerate(first.cameras):
                rows[final_image_column(name)] = \
                    [_png(camera_images(e.final_image, index)) for e in episodes]
        episodes_path = tmp / EPISODES_PATH
        episodes_path.parent.mkdir(parents=True)
        pq.write_table(pa.table(rows), str(episodes_path))

        info = {'codebase_version': CODEBASE_VERSION, 'robot_type': robot_type,
                'total_episodes': len(episodes), 'total_frames': int(lengths.sum()),
                'total_tasks': 1, 'chunks_size': 1000, 'data_files_size_in_mb': 100,
                'video_files_size_in_mb': 200, 'fps': fps,
                'splits': {'train': f'0:{len(episodes)}'}, 'data_path': DATA_PATH,
                'video_path': VIDEO_PATH if video else None, 'features': features}
        (tmp / INFO_PATH).write_text(json.dumps(info, indent=4))
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_lerobot(source, out_dir, fps: Optional[float] = None, video: bool = True,
                   task: str = DEFAULT_TASK, progress: Callable[[str], None] = lambda _: None
                   ) -> Tuple[Path, List[DatasetEpisode]]:
    """Complete episodes under `source` (a run, its episodes/ folder, or one episode; rerecorded
    and interrupted ones are left out, as for demonstrations) as a LeRobot dataset. fps: the
    run's control rate unless given; state names from the run's configuration."""
    from hilserl.configuration.config import load_train_config
    from hilserl.data.demos import load_demo_episodes
    source = Path(source)
    if not source.exists():
        raise DatasetError(f'{source} does not exist')
    cfg = _run_config(source) or load_train_config(None)
    unreadable: List[Tuple[Path, str]] = []
    episodes = [episode_from_transitions(ts, path.name, bool(meta.get('success')),
                                         cfg.image.camera_names)
                for path, meta, ts in load_demo_episodes(source, unreadable=unreadable) if ts]
    for path, reason in unreadable:
        progress(f'skipped {path}: {reason}')
    if not episodes:
        raise DatasetError(f'{source} holds no complete episode with transitions')
    fps = cfg.task.control_rate_hz if fps is None else fps
    progress(f'{len(episodes)} episodes, {sum(len(e) for e in episodes)} frames at {fps:g} fps')
    write_dataset(out_dir, episodes, fps, video, task,
                  state_names(cfg.observation.state_features), progress=progress)
    return Path(out_dir), episodes


def _run_config(source: Path):
    """The TrainConfig a run was recorded with (run_config.yaml / checkpoint), when known."""
    from hilserl.configuration.config import ConfigError, TrainConfig, from_dict
    from hilserl.configuration.run_dir import stored_run_config
    for folder in (source, *source.parents[:3]):
        try:
            data, _ = stored_run_config(folder)
        except (OSError, ValueError, KeyError):
            continue
        if data is not None:
            try:
                return from_dict(TrainConfig, data)
            except (ConfigError, TypeError):
                return None
    return None


# --- reading -------------------------------------------------------------------------------------

@dataclass
class DatasetInfo:
    root: Path
    info: dict
    episodes: List[dict]           # rows of meta/episodes, in episode order
    image_key: Optional[str]

    @property
    def features(self) -> dict:
        return self.info['features']

    @property
    def fps(self) -> float:
        return float(self.info['fps'])


def open_dataset(root, camera: Optional[str] = None) -> DatasetInfo:
    """meta/ of a LeRobot v3.0 dataset, checked; DatasetError (one line) otherwise."""
    import pyarrow.parquet as pq
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f'{root} is not a directory')
    info_path = root / INFO_PATH
    if not info_path.is_file():
        raise DatasetError(f'{root} is not a LeRobot dataset ({INFO_PATH} missing)')
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f'{info_path}: not JSON ({exc})') from None
    version = str(info.get('codebase_version', '?'))
    if not version.startswith('v3.'):
        raise DatasetError(f'{root} is a LeRobot {version} dataset; only v3.0 is read (convert '
                           f'it with LeRobot: python -m lerobot.datasets.v30.'
                           f'convert_dataset_v21_to_v30)')
    files = sorted((root / 'meta' / 'episodes').glob('*/*.parquet'))
    if not files:
        raise DatasetError(f'{root} has no meta/episodes/*/*.parquet')
    rows = [r for f in files for r in pq.read_table(str(f)).to_pylist()]
    rows.sort(key=lambda r: r['episode_index'])
    features = info.get('features', {})
    cameras = [k for k, v in features.items() if v.get('dtype') in ('image', 'video')]
    if camera:
        key = camera if camera in cameras else f'observation.images.{camera}'
        if key not in cameras:
            raise DatasetError(f'{root} has no camera {camera!r}; it has {cameras}')
    elif IMAGE in cameras:
        key = IMAGE
    else:
        preferred = [k for k in cameras if 'gripper' in k or 'wrist' in k]
        key = (preferred or cameras)[0] if len(preferred) == 1 or len(cameras) == 1 else None
        if cameras and key is None:
            raise DatasetError(f'{root} has cameras {cameras} and none is the gripper camera; '
                               f'name one (--camera)')
    return DatasetInfo(root, info, rows, key)


def _data_rows(ds: DatasetInfo) -> Iterator[Tuple[dict, dict]]:
    """(episode row, its data columns as numpy/lists) per episode, in episode order."""
    import pyarrow.parquet as pq
    tables = {}
    for ep in ds.episodes:
        chunk, file = ep.get('data/chunk_index', 0), ep.get('data/file_index', 0)
        if (chunk, file) not in tables:
            tables.clear()  # one data file in memory at a time
            path = ds.root / ds.info.get('data_path', DATA_PATH).format(chunk_index=chunk,
                                                                        file_index=file)
            if not path.is_file():
                raise DatasetError(f'{path} is missing')
            table = pq.read_table(str(path))
            tables[chunk, file] = (table, np.asarray(table.column('index')))
        table, index = tables[chunk, file]
        where = np.nonzero((index >= ep['dataset_from_index']) &
                           (index < ep['dataset_to_index']))[0]
        if len(where) != ep['length']:
            raise DatasetError(f'episode {ep["episode_index"]}: {len(where)} rows in the data, '
                               f'{ep["length"]} in meta/episodes')
        part = table.take(where)
        yield ep, {name: part.column(name) for name in part.column_names}


def _column(columns: dict, key: str) -> np.ndarray:
    col = columns[key].combine_chunks() if hasattr(columns[key], 'combine_chunks') \
        else columns[key]
    values = col.to_pylist()
    return np.asarray(values)


def _frame_mapper(ds: DatasetInfo, cfg) -> Callable[[np.ndarray], np.ndarray]:
    """A camera frame of this dataset -> hilserl's policy view (configured resize): as it is
    when it already has that size, the camera crop + resize when it has the camera frame's size
    (scaled when only the resolution differs); refused otherwise."""
    from hilserl.learning.image_ops import crop_resize
    feature = ds.features[ds.image_key]
    shape = list(feature['shape'])
    names = feature.get('names') or []
    if len(shape) == 3 and (shape[0] == 3 and (names[:1] == ['channels'] or shape[2] != 3)):
        h, w = shape[1], shape[2]
    else:
        h, w = shape[0], shape[1]
    target = tuple(cfg.image.resize_hw_px)
    if (h, w) == target:
        return lambda frame: frame
    camera = cfg.image.cameras[0]  # read_dataset takes one camera
    top, left, ch, cw = camera.crop_tlhw_px
    cam_h, cam_w = camera.height_px, camera.width_px
    if abs(h / w - cam_h / cam_w) > 0.01:
        raise DatasetError(
            f'{ds.image_key} frames are {w}x{h}; hilserl needs {target[1]}x{target[0]} or a '
            f'{cam_w}x{cam_h}-shaped camera frame to crop (set image.width_px/height_px/'
            f'crop_tlhw_px in the config)')
    s = h / cam_h
    crop = [int(round(v * s)) for v in (top, left, ch, cw)]
    return lambda frame: crop_resize(frame, crop, target)


def _episode_images(ds: DatasetInfo, columns_by_episode: Dict[int, dict],
                    mapper: Callable[[np.ndarray], np.ndarray]) -> Dict[int, np.ndarray]:
    """episode index -> (N, h, w, 3) frames of the chosen camera, mapped to the policy view."""
    key = ds.image_key
    out: Dict[int, np.ndarray] = {}
    if ds.features[key]['dtype'] == 'image':
        for index, columns in columns_by_episode.items():
            cells = columns[key].to_pylist()
            out[index] = np.stack([mapper(_decode_image(c['bytes'])) for c in cells])
        return out
    import av
    fps = ds.fps
    by_file: Dict[Tuple[int, int], List[dict]] = {}
    for ep in ds.episodes:
        if ep['episode_index'] in columns_by_episode:
            by_file.setdefault((ep[f'videos/{key}/chunk_index'], ep[f'videos/{key}/file_index']),
                               []).append(ep)
    for (chunk, file), eps in by_file.items():
        path = ds.root / ds.info.get('video_path', VIDEO_PATH).format(
            video_key=key, chunk_index=chunk, file_index=file)
        if not path.is_file():
            raise DatasetError(f'{path} is missing')
        # video frame number -> (episode, row), from each row's timestamp
        wanted: Dict[int, Tuple[int, int]] = {}
        for ep in eps:
            stamps = np.asarray(columns_by_episode[ep['episode_index']]['timestamp'])
            first = ep[f'videos/{key}/from_timestamp']
            for row, ts in enumerate(stamps):
                wanted[int(round((first + float(ts)) * fps))] = (ep['episode_index'], row)
        frames: Dict[int, list] = {ep['episode_index']: [None] * ep['length'] for ep in eps}
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                number = int(round(float(frame.pts * stream.time_base) * fps))
                if number in wanted:
                    index, row = wanted.pop(number)
                    frames[index][row] = mapper(frame.to_ndarray(format='rgb24'))
                if not wanted:
                    break
        if wanted:
            raise DatasetError(f'{path}: {len(wanted)} frames the data asks for are not in the '
                               f'video')
        for index, images in frames.items():
            out[index] = np.stack(images)
    return out


def read_dataset(root, cfg, camera: Optional[str] = None, need_state: bool = True
                 ) -> List[DatasetEpisode]:
    """A LeRobot v3.0 dataset as episodes in hilserl's terms (state, EE-delta action, policy
    view). `need_state` False (classifier frames) asks only for a camera and next.reward.
    One-line DatasetError naming what is missing when the dataset cannot be mapped."""
    if len(cfg.image.cameras) > 1:
        raise DatasetError(f'reading {root}: LeRobot datasets are read into a configuration '
                           f'with one camera; this one has {list(cfg.image.camera_names)} '
                           '(image.cameras)')
    ds = open_dataset(root, camera)
    features = ds.features
    if ds.image_key is None:
        raise DatasetError(f'{root} has no camera (no image or video feature)')
    if REWARD not in features:
        raise DatasetError(f'{root} has no {REWARD}: a LeRobot imitation dataset '
                           f'(lerobot-record) carries no reward; record with LeRobot\'s HIL-SERL '
                           f'gym_manipulator, or label it')
    if need_state:
        _check_vector(features, STATE, cfg.observation.state_dim,
                      f'hilserl\'s state ({" + ".join(cfg.observation.state_features)})', root)
        _check_vector(features, ACTION, cfg.action.dim,
                      'end-effector deltas [dx, dy, dz, gripper] in [-1, 1]', root)
    mapper = _frame_mapper(ds, cfg)
    columns = {ep['episode_index']: cols for ep, cols in _data_rows(ds)}
    images = _episode_images(ds, columns, mapper)
    episodes = []
    for ep in ds.episodes:
        cols = columns[ep['episode_index']]
        n = ep['length']
        reward = _column(cols, REWARD).reshape(n).astype(np.float32)
        done = _column(cols, DONE).reshape(n).astype(bool) if DONE in cols else \
            np.arange(n) == n - 1
        truncated = _column(cols, TRUNCATED).reshape(n).astype(bool) if TRUNCATED in cols \
            else np.zeros(n, bool)
        intervention = _column(cols, INTERVENTION).reshape(n).astype(bool) \
            if INTERVENTION in cols else np.ones(n, bool)  # demonstrations: a person drove
        state = _column(cols, STATE).astype(np.float32).reshape(n, -1) if STATE in cols \
            else np.zeros((n, 0), np.float32)
        action = _column(cols, ACTION).astype(np.float32).reshape(n, -1) if ACTION in cols \
            else np.zeros((n, 0), np.float32)
        final_state = final_image = None
        final_column = final_image_column(ds.image_key.removeprefix(IMAGE_PREFIX))
        if ep.get(FINAL_STATE) is not None and ep.get(final_column) is not None:
            final_state = np.asarray(ep[FINAL_STATE], np.float32)
            final_image = mapper(_decode_image(ep[final_column]))
        episodes.append(DatasetEpisode(
            state=state, action=action, image=images[ep['episode_index']], reward=reward,
            terminated=done & ~truncated, truncated=truncated, intervention=intervention,
            final_state=final_state, final_image=final_image,
            name=ep.get('hilserl/source_episode') or f'episode_{ep["episode_index"]:06d}',
            success=bool(ep.get('hilserl/success', bool((reward > 0).any())))))
    return episodes


def _check_vector(features: dict, key: str, size: int, what: str, root) -> None:
    feature = features.get(key)
    if feature is None:
        raise DatasetError(f'{root} has no {key}; hilserl needs {size} values: {what}')
    shape = list(feature.get('shape', []))
    if shape != [size]:
        names = feature.get('names')
        named = f' ({", ".join(map(str, names))})' if isinstance(names, list) and names else ''
        raise DatasetError(f'{root}: {key} has shape {shape}{named}; hilserl needs {size} '
                           f'values: {what}')


def read_transitions(root, cfg, camera: Optional[str] = None) -> Iterator:
    """Demonstration transitions of a LeRobot v3.0 dataset, stacked as `cfg` stacks frames."""
    for episode in read_dataset(root, cfg, camera):
        yield from transitions_from_episode(episode, cfg.observation.n_obs_steps)


def labelled_frames(root, cfg, camera: Optional[str] = None
                    ) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """(episode name, images (M, h, w, 3), labels (M,)) per episode for the success classifier:
    every observation of the episode, positive where the step that led to it was rewarded
    (next.reward > 0). Datasets without the episode's last observation (not from hilserl)
    label each row's own frame with its next.reward, as LeRobot's reward classifier does."""
    out = []
    for e in read_dataset(root, cfg, camera, need_state=False):
        positive = e.reward > 0
        if e.final_image is not None:
            images = np.concatenate([e.image, e.final_image[None]])
            labels = np.concatenate([[False], positive])
        else:
            images, labels = e.image, positive
        out.append((e.name, images, labels.astype(np.int64)))
    return out


def write_demo_bags(root, out_dir, cfg, camera: Optional[str] = None,
                    progress: Callable[[str], None] = lambda _: None) -> Path:
    """A LeRobot dataset's transitions as episode bags (the `transitions` topic, episode.json)
    in `out_dir`, which the learner reads like recorded demonstrations. Rebuilt only when the
    dataset or the view it was read with changed (a `source.json` says which)."""
    from hilserl.data.bags import EpisodeWriter, MessageFactory, write_json_atomic
    from hilserl.messages.conventions import Topics
    from hilserl.data.transition import TransitionEncoder
    root, out_dir = Path(root).resolve(), Path(out_dir)
    info_text = (root / INFO_PATH).read_text() if (root / INFO_PATH).is_file() else ''
    source = json.loads(json.dumps({  # as it reads back (tuples -> lists)
        'dataset': str(root), 'info_json': info_text, 'camera': camera or '',
        'image': cfg.to_dict()['image'], 'observation': cfg.to_dict()['observation'],
        'action_dim': cfg.action.dim}))
    marker = out_dir / 'source.json'
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == source:
                return out_dir
        except json.JSONDecodeError:
            pass
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError(f'{out_dir} exists and was not written from a LeRobot dataset; '
                           f'move it away')
    episodes = read_dataset(root, cfg, camera)
    tmp = out_dir.parent / f'.{out_dir.name}.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    factory = MessageFactory()
    for index, episode in enumerate(episodes):
        writer = EpisodeWriter(tmp / f'episode_{index:06d}',
                               {Topics.TRANSITIONS: 'std_msgs/msg/UInt8MultiArray'})
        encoder = TransitionEncoder()  # each image once, as the actor sends them
        for step, t in enumerate(transitions_from_episode(episode, cfg.observation.n_obs_steps)):
            writer.write(Topics.TRANSITIONS, factory.bytes_array(encoder.encode(t, index, step)),
                         step + 1)
        writer.close({'episode': index, 'steps': len(episode), 'success': episode.success,
                      'outcome': 'success' if episode.success else 'failure',
                      'return': float(episode.reward.sum()),
                      'interventions': int(episode.intervention.sum()),
                      'source': f'{root} {episode.name}'})
    write_json_atomic(tmp / 'source.json', source)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    progress(f'{len(episodes)} demonstration episodes from {root} in {out_dir}')
    return out_dir
