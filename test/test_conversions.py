import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray

from hilserl.messages.conversions import (ConversionError, action_from_msg, action_to_msg,
                                          array_to_image, arrays_to_joint_state, image_to_array,
                                          joint_state_to_arrays, seconds_to_stamp, stamp_to_seconds,
                                          to_rgb)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize('encoding,channels', [('rgb8', 3), ('bgr8', 3), ('mono8', 1)])
def test_image_round_trip(encoding, channels):
    array = RNG.integers(0, 256, size=(48, 64, channels), dtype=np.uint8)
    msg = array_to_image(array, encoding, frame_id='cam')
    assert isinstance(msg, Image)
    assert msg.step == 64 * channels and msg.header.frame_id == 'cam'
    np.testing.assert_array_equal(image_to_array(msg), array)


def test_image_row_padding_is_honoured():
    array = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    padded = np.zeros((5, 32), dtype=np.uint8)  # step 32 > 7*3 = 21
    padded[:, :21] = array.reshape(5, 21)
    padded[:, 21:] = 255  # junk in the padding must not leak into pixels
    msg = Image(height=5, width=7, encoding='rgb8', step=32, data=padded.tobytes())
    np.testing.assert_array_equal(image_to_array(msg), array)


def test_bgr_to_rgb_swaps_channels():
    bgr = np.zeros((2, 2, 3), dtype=np.uint8)
    bgr[..., 0] = 200  # blue
    rgb = to_rgb(image_to_array(array_to_image(bgr, 'bgr8')), 'bgr8')
    assert rgb[0, 0].tolist() == [0, 0, 200]


@pytest.mark.parametrize('kwargs,match', [
    (dict(height=4, width=4, encoding='rgb8', step=12, data=bytes(47)), 'expected step'),
    (dict(height=4, width=4, encoding='rgb8', step=10, data=bytes(40)), 'smaller than'),
    (dict(height=4, width=4, encoding='yuv422', step=8, data=bytes(32)), 'unsupported'),
    (dict(height=0, width=4, encoding='rgb8', step=12, data=b''), 'no pixels'),
])
def test_bad_images_are_rejected(kwargs, match):
    with pytest.raises(ConversionError, match=match):
        image_to_array(Image(**kwargs))


def test_array_to_image_rejects_wrong_shape_and_dtype():
    with pytest.raises(ConversionError, match='needs an'):
        array_to_image(np.zeros((4, 4, 1), np.uint8), 'rgb8')
    with pytest.raises(ConversionError, match='dtype'):
        array_to_image(np.zeros((4, 4, 3), np.float32), 'rgb8')


def test_joint_state_round_trip_and_reorder():
    names = ['a', 'b', 'c']
    msg = arrays_to_joint_state(names, [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [5, 6, 7])
    assert isinstance(msg, JointState)
    pos, vel, eff = joint_state_to_arrays(msg, ['c', 'a'])
    assert pos.tolist() == [3.0, 1.0] and vel.tolist() == [0.3, 0.1]
    assert eff.tolist() == [7.0, 5.0]


def test_joint_state_errors():
    msg = JointState(name=['a', 'b'], position=[0.0, float('nan')])
    with pytest.raises(ConversionError, match='non-finite'):
        joint_state_to_arrays(msg, ['a', 'b'])
    with pytest.raises(ConversionError, match='lacks joints'):
        joint_state_to_arrays(JointState(name=['a'], position=[0.0]), ['a', 'z'])
    with pytest.raises(ConversionError, match='positions'):
        joint_state_to_arrays(JointState(name=['a', 'b'], position=[0.0]), ['a'])
    with pytest.raises(ConversionError, match='velocity'):
        joint_state_to_arrays(JointState(name=['a', 'b'], position=[0.0, 1.0],
                                         velocity=[1.0]), ['a'])
    with pytest.raises(ConversionError, match='shape'):
        arrays_to_joint_state(['a', 'b'], [0.0])


def test_empty_velocity_effort_become_zeros():
    pos, vel, eff = joint_state_to_arrays(JointState(name=['a'], position=[0.5]), ['a'])
    assert vel.tolist() == [0.0] and eff.tolist() == [0.0]


def test_action_round_trip_and_validation():
    msg = action_to_msg([0.5, -0.25, 1.0, -1.0])
    assert isinstance(msg, Float32MultiArray)
    np.testing.assert_allclose(action_from_msg(msg, 4), [0.5, -0.25, 1.0, -1.0])
    with pytest.raises(ConversionError, match='expected 4'):
        action_from_msg(Float32MultiArray(data=[0.0, 0.0, 0.0]), 4)
    with pytest.raises(ConversionError, match='non-finite'):
        action_from_msg(Float32MultiArray(data=[0.0, float('inf'), 0.0, 0.0]), 4)
    with pytest.raises(ConversionError, match='non-finite'):
        action_to_msg([float('nan')])


def test_stamp_round_trip():
    stamp = seconds_to_stamp(12.3456789)
    assert stamp.sec == 12 and abs(stamp_to_seconds(stamp) - 12.3456789) < 1e-9
    with pytest.raises(ConversionError):
        seconds_to_stamp(float('nan'))
