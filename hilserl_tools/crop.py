"""`hilserl crop`: choose the policy's crop on one camera frame and write it into the training
config. With a display, drag the crop in an OpenCV window; without one (over SSH), a PNG of the
frame with a labelled grid and the current crop comes out, and `--crop top,left,height,width`
sets it. Either way the policy's view (crop + resize) is saved beside the config. `--camera
NAME` chooses the camera of image.cameras (default gripper): its robot-file section is
/**/NAME_camera, its crop the one of image.cameras written."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from hilserl.configuration.config import (DEFAULT_CAMERA, CameraView, ConfigError,
                                          load_train_config)
from hilserl.configuration.yaml_edit import node_parameters, set_values
from hilserl.messages.conventions import camera_node_name
from hilserl.learning.image_ops import crop_resize
from hilserl.robot.camera import CameraConfig, CameraSupervisor, OpenCVSource

GRID_PX = 40
CROP_COLOUR_BGR = (0, 255, 255)


def parse_crop(text: str) -> Tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.replace(' ', '').split(','))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f'--crop {text!r}: pass four whole numbers top,left,height,width (px)')
    return values


def camera_config(robot_config: str, device: str = '',
                  camera: str = DEFAULT_CAMERA) -> CameraConfig:
    """A camera's settings from the robot file (its /**/<camera>_camera section)."""
    node = camera_node_name(camera)
    params = node_parameters(robot_config, node)
    if params.get('backend', 'opencv') == 'sim' and not device:
        raise ValueError(f'{robot_config}: its {node} is simulated (backend: sim); the '
                         'crop is chosen on a real camera (a robot file with backend: opencv, '
                         'or --device)')
    fields = {k: params[k] for k in ('device', 'width_px', 'height_px', 'fps', 'fourcc')
              if k in params}
    if device:
        fields['device'] = device
    fields['device'] = str(fields.get('device', CameraConfig.device))
    return CameraConfig(**fields)


def grab_frame(cfg: CameraConfig, timeout_s: float = 10.0, source=None) -> np.ndarray:
    """One valid RGB frame (not blank, the configured size) or a one-line error."""
    supervisor = CameraSupervisor(source or OpenCVSource(cfg), cfg)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            frame = supervisor.poll()
            if frame is not None:
                return np.ascontiguousarray(frame)
            time.sleep(0.05)
    finally:
        supervisor.close()
    raise OSError(f'camera {cfg.device}: no valid {cfg.width_px}x{cfg.height_px} frame in '
                  f'{timeout_s:g} s ({supervisor.last_problem or "it did not open"})')


def display_available() -> bool:
    """A display to open a window on, and an OpenCV built with windows (not the headless
    wheel)."""
    if not (os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY')):
        return False
    import cv2
    return 'GUI' in cv2.getBuildInformation() and \
        'NONE' not in cv2.getBuildInformation().split('GUI:')[-1].split('\n')[0].upper()


def select_in_window(frame_rgb: np.ndarray, current: Sequence[int]) -> Tuple[int, int, int, int]:
    """Drag a rectangle in an OpenCV window (Enter or space accepts, c cancels)."""
    import cv2
    x, y, w, h = cv2.selectROI('hilserl crop: drag, then Enter (c cancels)',
                               np.ascontiguousarray(frame_rgb[:, :, ::-1]), showCrosshair=True)
    cv2.destroyAllWindows()
    if w == 0 or h == 0:
        raise ValueError('no crop chosen (the window was cancelled); the config is unchanged')
    return int(y), int(x), int(h), int(w)


def grid_picture(frame_rgb: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    """BGR picture of the frame with a labelled pixel grid and `crop` drawn, for choosing a crop
    without a display."""
    import cv2
    picture = np.ascontiguousarray(frame_rgb[:, :, ::-1]).copy()
    height, width = picture.shape[:2]
    for x in range(0, width, GRID_PX):
        cv2.line(picture, (x, 0), (x, height - 1), (200, 200, 200), 1)
        if x % (2 * GRID_PX) == 0:
            cv2.putText(picture, str(x), (x + 2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 255), 1, cv2.LINE_AA)
    for y in range(0, height, GRID_PX):
        cv2.line(picture, (0, y), (width - 1, y), (200, 200, 200), 1)
        if y % (2 * GRID_PX) == 0 and y:
            cv2.putText(picture, str(y), (2, y - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 255), 1, cv2.LINE_AA)
    top, left, h, w = (int(v) for v in crop)
    cv2.rectangle(picture, (left, top), (left + w - 1, top + h - 1), CROP_COLOUR_BGR, 2)
    cv2.putText(picture, f'crop {top},{left},{h},{w}', (left + 4, top + 32),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, CROP_COLOUR_BGR, 1, cv2.LINE_AA)
    return picture


def run_crop(robot_config: str, config: str, crop: Optional[str] = None, device: str = '',
             gui: Optional[bool] = None, out=print, source=None,
             camera: str = DEFAULT_CAMERA) -> int:
    """The command. Returns 0 when the crop was written, 1 when it only wrote the grid picture
    (rerun with --crop), 2 (raised as an error) for what cannot be done."""
    import cv2
    cfg_path = Path(config)
    train_cfg = load_train_config(cfg_path)   # refuse a broken config before the camera
    try:
        current = train_cfg.image.camera(camera).crop_tlhw_px
    except ConfigError as exc:
        raise ValueError(f'--camera {camera}: {exc} in {cfg_path}; add it there (name, '
                         'width_px, height_px, crop_tlhw_px) first') from None
    cam = camera_config(robot_config, device, camera)
    frame = grab_frame(cam, source=source)
    height, width = frame.shape[:2]
    prefix = '' if camera == DEFAULT_CAMERA else f'{camera}_'
    picture_path = cfg_path.with_name(cfg_path.stem + f'_{prefix}crop_frame.png')
    if crop is not None:
        chosen = parse_crop(crop)
    elif gui is False or (gui is None and not display_available()):
        cv2.imwrite(str(picture_path), grid_picture(frame, current))
        out(f'no display: the frame with a {GRID_PX} px grid and the current crop '
            f'{list(current)} is in {picture_path}; rerun with --crop top,left,height,width')
        return 1
    elif not display_available():
        raise OSError('no display: --gui needs a display ($DISPLAY) and an OpenCV with windows; '
                      'leave out --gui to choose the crop from a PNG')
    else:
        chosen = select_in_window(frame, current)
    try:  # the same rule the config applies on load, against this camera's frame size
        view_cfg = CameraView(name=camera, width_px=width, height_px=height,
                              crop_tlhw_px=chosen)
    except ConfigError as exc:
        raise ValueError(f'crop {list(chosen)} does not fit the camera\'s {width}x{height} '
                         f'frame ({exc})') from None
    field = _write_crop(cfg_path, train_cfg, view_cfg)
    load_train_config(cfg_path)
    view = crop_resize(frame, chosen, train_cfg.image.resize_hw_px)
    view_path = cfg_path.with_name(cfg_path.stem + f'_{prefix}policy_view.png')
    cv2.imwrite(str(view_path), np.ascontiguousarray(view[:, :, ::-1]))
    cv2.imwrite(str(picture_path), grid_picture(frame, chosen))
    out(f'crop {list(chosen)} of the {width}x{height} frame written to {cfg_path} '
        f'({field}); the policy\'s view is {view_path}')
    return 0


def _write_crop(cfg_path: Path, train_cfg, view_cfg: CameraView) -> str:
    """Write one camera's frame size and crop into the config file, in the form it has: the
    flat image.crop_tlhw_px of a file without image.cameras (the gripper camera), else the
    image.cameras list with that camera's entry replaced. Returns the field written."""
    import yaml
    image = (yaml.safe_load(cfg_path.read_text()) or {}).get('image') or {}
    if 'cameras' not in image and view_cfg.name == DEFAULT_CAMERA:
        set_values(cfg_path, {'image.width_px': view_cfg.width_px,
                              'image.height_px': view_cfg.height_px,
                              'image.crop_tlhw_px': list(view_cfg.crop_tlhw_px)})
        return 'image.crop_tlhw_px'
    cameras = [{'name': c.name, 'width_px': c.width_px, 'height_px': c.height_px,
                'crop_tlhw_px': list(c.crop_tlhw_px)}
               for c in (view_cfg if c.name == view_cfg.name else c
                         for c in train_cfg.image.cameras)]
    set_values(cfg_path, {'image.cameras': cameras})
    return f'image.cameras[{view_cfg.name}].crop_tlhw_px'
