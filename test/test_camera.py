"""Camera supervision against a scripted capture at the OpenCV boundary, and crop geometry."""
import numpy as np
import pytest

from hilserl.robot.camera import CameraConfig, CameraSupervisor, OpenCVSource, frame_problem
from hilserl.learning.image_ops import crop_resize

RNG = np.random.default_rng(0)


def textured():
    return RNG.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)


class ScriptedCapture:
    """Stands in for cv2.VideoCapture: plays a script of 'ok' | 'blank' | 'fail' | 'same'."""

    def __init__(self, script, opens):
        self.script = script
        self.opened = opens.pop(0) if opens else True
        self.last = textured()

    def isOpened(self):
        return self.opened

    def set(self, *_):
        return True

    def read(self):
        if not self.script:
            return True, textured()
        kind = self.script.pop(0)
        if kind == 'fail':
            return False, None
        if kind == 'blank':
            return True, np.zeros((480, 640, 3), np.uint8)
        if kind == 'same':
            return True, self.last.copy()
        self.last = textured()
        return True, self.last

    def release(self):
        self.opened = False


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def make(script, opens=None, **cfg):
    config = CameraConfig(reopen_backoff_s=0.5, max_backoff_s=2.0, **cfg)
    shared_script = list(script)
    open_results = list(opens or [])

    def factory(_device):
        return ScriptedCapture(shared_script, open_results)
    clock = FakeClock()
    return CameraSupervisor(OpenCVSource(config, factory), config, clock), clock


def test_blank_burst_is_never_published_and_is_counted():
    sup, clock = make(['ok', 'blank', 'blank', 'ok'])
    results = [sup.poll() for _ in range(4)]
    assert results[0] is not None and results[1] is None and results[2] is None
    assert results[3] is not None and results[3].std() > 10
    assert sup.counters.blank_frames == 2 and sup.counters.reopens == 0


def test_device_disappearance_reopens_with_bounded_backoff_and_recovers():
    # 3 failed reads -> reopen; the device is gone for two open attempts, then comes back.
    sup, clock = make(['ok', 'fail', 'fail', 'fail'], opens=[True, False, False, True])
    assert sup.poll() is not None
    for _ in range(3):
        assert sup.poll() is None
    assert sup.counters.reopens == 1 and not sup.is_open
    assert sup.status()[0] == 2 and 'camera closed' in sup.status()[1]
    attempts = []
    frame = None
    for _ in range(60):  # poll every 0.1 s; record when open attempts fail
        clock.t += 0.1
        before = sup.counters.open_failures
        frame = sup.poll()
        if sup.counters.open_failures != before:
            attempts.append(clock.t)
        if frame is not None:
            break
    assert frame is not None and sup.status()[0] == 0
    assert sup.counters.open_failures == 2
    gaps = np.diff(attempts + [clock.t])
    assert all(g <= 2.0 + 1e-6 for g in gaps) and gaps[-1] > gaps[0]  # grows, but bounded


def test_frozen_stream_is_detected():
    sup, _ = make(['ok'] + ['same'] * 6, frozen_frames_limit=4)
    results = [sup.poll() for _ in range(7)]
    assert all(r is not None for r in results[:3])
    assert results[3] is None and sup.counters.frozen_frames >= 1
    assert 'frozen' in sup.last_problem


def test_frame_problem_reasons():
    assert frame_problem(None, (480, 640), 2.0) == 'read failed'
    assert frame_problem(np.full((480, 640, 3), 37, np.uint8), (480, 640), 2.0) == 'blank frame'
    assert 'unexpected frame shape' in frame_problem(np.zeros((10, 10, 3), np.uint8),
                                                     (480, 640), 2.0)
    assert frame_problem(textured(), (480, 640), 2.0) is None


def test_crop_then_resize_geometry():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 80:560] = 200           # exactly the default crop window
    frame[0:240, 80:320, 0] = 255    # top-left quarter of the window: red
    view = crop_resize(frame, (0, 80, 480, 480), (128, 128))
    assert view.shape == (128, 128, 3)
    assert (view[..., 1] == 200).all()          # nothing outside the window leaked in
    assert (view[:64, :64, 0] == 255).all() and (view[64:, 64:, 0] == 200).all()
    with pytest.raises(ValueError, match='leaves'):
        crop_resize(frame, (0, 200, 480, 480), (128, 128))


def test_config_validation():
    with pytest.raises(ValueError, match='fourcc'):
        CameraConfig(fourcc='MJPEG')
    with pytest.raises(ValueError, match='fps'):
        CameraConfig(fps=0)
