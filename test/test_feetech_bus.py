"""The real SDK over a real pty against the simulated STS bus, including injected faults."""
import time

import pytest

from so101_driver.feetech_bus import GRIPPER_SETTINGS, BusError, FeetechBus, ServoSettings
from so101_driver.sts_simulator import SimulatedBus


@pytest.fixture
def bus_pair():
    sim = SimulatedBus()
    bus = FeetechBus(sim.port, retries=2, backoff_s=0.001)
    bus.open()
    yield sim, bus
    bus.close()
    sim.close()


def test_ping_configure_and_gripper_protection(bus_pair):
    sim, bus = bus_pair
    assert [bus.ping(i) for i in range(1, 7)] == [777] * 6
    for i in range(1, 6):
        bus.configure(i, ServoSettings())
    bus.configure(6, GRIPPER_SETTINGS)
    assert bus.read(6, 'max_torque') == 500 and bus.read(6, 'protection_current') == 250
    assert bus.read(1, 'max_torque') == 1000  # arm servos keep full torque
    assert bus.read(1, 'return_delay') == 0 and bus.read(1, 'p_coefficient') == 16
    assert bus.read(1, 'lock') == 1  # EEPROM locked again after configuring


def test_sync_write_then_sync_read_tracks_goals(bus_pair):
    sim, bus = bus_pair
    bus.sync_write('torque_enable', {i: 1 for i in range(1, 7)})
    goals = {i: 2048 + 50 * i for i in range(1, 7)}
    bus.sync_write('goal_position', goals)
    time.sleep(0.2)
    state = bus.sync_read('present_position', range(1, 7),
                          ['present_position', 'present_speed', 'present_load'])
    assert {i: state[i]['present_position'] for i in state} == goals


def test_negative_values_cross_the_wire_sign_magnitude(bus_pair):
    sim, bus = bus_pair
    bus.write(2, 'lock', 0)
    bus.write(2, 'homing_offset', -300)
    assert bus.read(2, 'homing_offset') == -300
    assert sim.servos[2].table[31:33] == bytes([0x2C, 0x09])  # 300 | 1 << 11, little endian


def test_dropped_and_corrupted_replies_are_retried_and_counted(bus_pair):
    sim, bus = bus_pair
    sim.drop_next_replies(1)
    assert bus.read(3, 'present_temperature') == 30
    sim.corrupt_next_replies(2)
    assert bus.sync_read('present_position', range(1, 7), ['present_position'])[6]
    assert bus.stats.retries >= 2 and bus.stats.failures == 0
    assert 'Incorrect status packet' in bus.stats.last_error or bus.stats.errors_by_id


def test_a_silent_servo_raises_naming_it(bus_pair):
    sim, bus = bus_pair
    sim.silence(4)
    with pytest.raises(BusError) as info:
        bus.sync_read('present_position', range(1, 7), ['present_position'])
    assert info.value.failed_ids == (4,)
    assert bus.stats.failures == 1
    sim.silence(4, False)
    assert len(bus.sync_read('present_position', range(1, 7), ['present_position'])) == 6


def test_over_temperature_sets_the_status_error(bus_pair):
    sim, bus = bus_pair
    sim.set_temperature(6, 80)
    assert bus.read(6, 'present_temperature') == 80
    assert bus.stats.status_errors_by_id.get(6) == 1
    assert 'overheat' in bus.stats.last_error


def test_missing_port_is_a_clear_error():
    with pytest.raises(BusError, match='cannot open serial port'):
        FeetechBus('/dev/does-not-exist-hilserl').open()
