"""The real SDK over a real pty against the simulated STS bus, including injected faults."""
import os
import time

import pytest

from so101_driver import sts_protocol as sts
from so101_driver.feetech_bus import (BAD_REPLY, CORRUPT, GRIPPER_SETTINGS, PORT, SDK, TIMEOUT,
                                      BusError, FeetechBus, ServoSettings)
from so101_driver.sts_simulator import SimulatedBus

# The simulator shares a loaded CI machine with the test (a thread here has been seen stalled
# for 0.6 s): a reply timeout far above the SDK's 34 ms and 4 tries keep a slow answer from
# failing a test; only replies a test drops wait it out.
TIMEOUT_MS = 300
RETRIES = 3
IDS = list(range(1, 7))


@pytest.fixture
def bus_pair():
    sim = SimulatedBus()
    bus = FeetechBus(sim.port, retries=RETRIES, backoff_s=0.001, timeout_ms=TIMEOUT_MS,
                     fault_log_size=10_000)
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
    deadline = time.monotonic() + 5.0  # 0.1 s of motion; polled, as the machine may be loaded
    while True:
        state = bus.sync_read('present_position', range(1, 7),
                              ['present_position', 'present_speed', 'present_load'])
        if {i: state[i]['present_position'] for i in state} == goals or \
                time.monotonic() > deadline:
            break
        time.sleep(0.02)
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
    assert bus.stats.retries == 2 and bus.stats.failures == 0
    # One failed try each: the sync read's first corrupted reply ends the try, and the second
    # (servo 2's) belongs to the same answer.
    assert bus.stats.faults_by_kind == {TIMEOUT: 1, CORRUPT: 1}
    assert bus.stats.errors_by_id == {3: 1, 1: 1}


def test_a_silent_servo_raises_naming_it(bus_pair):
    sim, bus = bus_pair
    sim.silence(4)
    with pytest.raises(BusError) as info:
        bus.sync_read('present_position', range(1, 7), ['present_position'])
    assert info.value.failed_ids == (4,)
    assert 'servo 4: timeout' in str(info.value)
    assert bus.stats.failures == 1 and bus.stats.faults == RETRIES + 1
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


def test_exceptions_inside_the_sdk_become_counted_faults(bus_pair):
    """The SDK indexes into whatever bytes arrived (issue 14: IndexError killed the node)."""
    sim, bus = bus_pair
    real = bus._packet.rxPacket
    raising = [1]

    def flaky(port):
        if raising[0] > 0:
            raising[0] -= 1
            raise IndexError('list index out of range')
        return real(port)
    bus._packet.rxPacket = flaky
    assert bus.read(2, 'present_temperature') == 30  # retried
    fault = bus.stats.last_fault
    assert (fault.kind, fault.servo_id) == (SDK, 2) and 'IndexError' in fault.detail
    raising[0] = 10**6
    with pytest.raises(BusError, match='IndexError') as info:
        bus.sync_read('present_position', IDS, ['present_position'])
    assert info.value.failed_ids == (1,) and bus.stats.faults_by_kind[SDK] == 1 + RETRIES + 1
    raising[0] = 0
    assert len(bus.sync_read('present_position', IDS, ['present_position'])) == 6


def test_replies_of_the_wrong_shape_are_faults_not_crashes(bus_pair):
    sim, bus = bus_pair
    bus.retries = 0  # each try waits out the reply timeout
    sim.inject_faults('short', 1.0)  # valid packets without their parameters
    with pytest.raises(BusError, match='bad_reply'):
        bus.ping(1)  # the SDK's own ping raised IndexError on this reply
    with pytest.raises(BusError, match='bad_reply'):
        bus.sync_read('present_position', IDS, ['present_position', 'present_speed'])
    assert bus.stats.faults_by_kind == {BAD_REPLY: 2}
    sim.stop_faults()
    assert bus.ping(1) == sts.MODEL_NUMBER_STS3215


def test_a_failed_serial_port_is_reopened(bus_pair):
    sim, bus = bus_pair
    bus._port.ser.close()  # as an unplugged adapter: pyserial raises on every call
    assert bus.read(5, 'present_temperature') == 30
    assert bus.stats.faults_by_kind == {PORT: 1} and bus.stats.port_reopens == 1


def test_stale_bytes_are_not_read_as_the_answer(bus_pair):
    sim, bus = bus_pair
    # A late reply of the same servo with other data, and noise, wait in the input buffer.
    os.write(sim._master, sts.packet(3, 0, b'\x07') + b'\x12\xff\x34')
    time.sleep(0.05)
    assert bus.read(3, 'present_temperature') == 30 and bus.stats.faults == 0


def test_a_late_reply_is_never_taken_for_the_next_answer(bus_pair):
    """A reply that arrives after its try gave up (here: right after the next try's input
    flush) carries old data; after a failed try reads change length, so it is skipped."""
    sim, bus = bus_pair
    flush = bus._port.ser.reset_input_buffer
    tries = [0]

    def flush_then_late_reply():
        flush()
        tries[0] += 1
        if tries[0] == 2:  # the first try's answer, late: 1 byte, temperature 99
            os.write(sim._master, sts.packet(3, 0, bytes([99])))
            time.sleep(0.02)
    bus._port.ser.reset_input_buffer = flush_then_late_reply
    sim.drop_next_replies(1)
    assert bus.read(3, 'present_temperature') == 30
    assert bus.stats.faults_by_kind == {TIMEOUT: 1}


def test_a_late_reply_of_another_read_is_never_taken_for_the_next_answer(bus_pair):
    """A failed 2-byte read's reply, late, during a 1-byte read: the next read's length must
    differ from every recent failed one's, not only from its own earlier tries'."""
    sim, bus = bus_pair
    bus.retries = 0
    sim.drop_next_replies(1)
    with pytest.raises(BusError):
        bus.read(3, 'present_position')
    bus.retries = RETRIES
    flush = bus._port.ser.reset_input_buffer

    def flush_then_late_reply():
        flush()
        bus._port.ser.reset_input_buffer = flush
        os.write(sim._master, sts.packet(3, 0, bytes([99, 0])))  # the position read's answer
        time.sleep(0.02)
    bus._port.ser.reset_input_buffer = flush_then_late_reply
    assert bus.read(3, 'present_temperature') == 30
    assert bus.stats.faults_by_kind == {TIMEOUT: 1}


def test_every_faulted_reply_is_counted_at_its_packet():
    # A shorter timeout keeps this quick; a late reply only adds a fault, never hides one.
    with SimulatedBus() as sim:
        bus = FeetechBus(sim.port, retries=2, backoff_s=0.001, timeout_ms=60,
                         fault_log_size=10_000)
        bus.open()
        for mode in ('checksum', 'truncate', 'random', 'silent'):
            sim.inject_faults(mode, 0.2, seed=7)
            for _ in range(10):
                try:
                    bus.sync_read('present_position', IDS, ['present_position'])
                except BusError:
                    pass
            sim.stop_faults()
        bus.close()
    counted = {f.packet_index for f in bus.stats.recent_faults}
    assert sim.faulted_packets and set(sim.faulted_packets) <= counted
    assert bus.stats.faults == len(bus.stats.recent_faults) >= len(sim.faulted_packets)


def test_status_error_bits_of_sync_read_replies_are_recorded(bus_pair):
    sim, bus = bus_pair
    sim.trip(2, sts.ERRBIT_OVERLOAD)
    bus.sync_read('present_position', IDS, ['present_position'])
    assert bus.stats.last_status_by_id[2] & sts.ERRBIT_OVERLOAD
    assert bus.stats.last_status_by_id[1] == 0 and bus.stats.status_errors_by_id == {2: 1}
    assert 'servo 2 reports overload' in bus.stats.last_error
