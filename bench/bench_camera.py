"""Per-frame cost of the camera path at 640x480: validation, crop + resize to 128x128, and the
numpy <-> sensor_msgs/Image conversions (target: crop + resize well under 2 ms)."""
import time

import common  # noqa: F401
import numpy as np

from hilserl.robot.camera import frame_problem
from hilserl.messages.conversions import array_to_image, image_to_array
from hilserl.learning.image_ops import crop_resize


def per_call_ms(fn, n=500):
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def main():
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    msg = array_to_image(frame, 'rgb8')
    cases = (('crop [0,80,480,480] + resize 128x128',
              lambda: crop_resize(frame, (0, 80, 480, 480), (128, 128))),
             ('blank/shape check', lambda: frame_problem(frame, (480, 640), 2.0)),
             ('array -> Image (640x480 rgb8)', lambda: array_to_image(frame, 'rgb8')),
             ('Image -> array (640x480 rgb8)', lambda: image_to_array(msg)))
    for label, call in cases:
        print(f'{label:<37}: {per_call_ms(call):.3f} ms')


if __name__ == '__main__':
    main()
