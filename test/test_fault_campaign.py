"""Fault campaign (issue 14): the driver core survives a faulty bus and recovers when it clears.

For each fault (corrupted checksums, truncated packets, random bytes, a silent servo) at 1 %, 5 %
and 20 % of status packets, DriverCore + HardwareBackend + FeetechBus run through the pty STS
bus simulator (the real wire protocol) at the node's 100 Hz tick, with a command every 0.1 s
(EE deltas, and joint goals beyond the limits) and a health read every second, as driver_node
does. Each case runs CAMPAIGN_S seconds of faults (20 s; HILSERL_FAULT_CAMPAIGN_S changes it),
then the faults stop; the cases run in processes of their own, two at a time, so the twelve take
about two minutes. Checked per case:
- no exception escapes (BackendError from the health read is the node's documented signal);
- every goal position the servos received lies within the joint limits (simulator side);
- every faulted status packet is counted by the bus, at the instruction packet it answered
  (extra faults, timeouts where the simulator was scheduled late on a loaded machine, are
  allowed; missing ones are not);
- within 1 s of the faults stopping, reads succeed and `ready` is true again.
Rates are not asserted: a loaded machine ticks late, and the loop just skips ahead.
"""
import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest

from hilserl.messages.conventions import JOINT_NAMES
from hilserl.robot.kinematics import SO101Kinematics
from so101_driver.backend import BackendError
from so101_driver.calibration import default_calibration, rad_to_ticks
from so101_driver.driver_core import OK, DriverConfig, DriverCore
from so101_driver.ee_control import TOP_DOWN_SEED_RAD
from so101_driver.feetech_bus import FeetechBus
from so101_driver.hardware_backend import HardwareBackend
from so101_driver.sts_simulator import SimulatedBus

CAMPAIGN_S = float(os.environ.get('HILSERL_FAULT_CAMPAIGN_S', '20'))
PARALLEL_CASES = 2
TICK_HZ = 100.0
COMMAND_PERIOD_S = 0.1
HEALTH_PERIOD_S = 1.0
RECOVERY_S = 1.0
SILENT_SERVO = 3
HOME = np.append(TOP_DOWN_SEED_RAD, 0.7)


class Campaign:
    def __init__(self, seed: int):
        self.cal = default_calibration()
        start = {self.cal[n].id: rad_to_ticks(n, HOME[k], self.cal[n])
                 for k, n in enumerate(JOINT_NAMES)}
        self.sim = SimulatedBus(positions=start, calibration=self.cal)  # EEPROM matches cal
        # Bring-up is not under test: patient with a simulator that this loaded machine may
        # stall for a second. The campaign then runs with 100 ms and 3 tries.
        self.bus = FeetechBus(self.sim.port, retries=4, backoff_s=0.002, timeout_ms=1000,
                              fault_log_size=1_000_000)
        self.backend = HardwareBackend(self.bus, self.cal)
        self.backend.connect()
        self.bus.retries, self.bus.timeout_ms = 2, 100
        self.core = DriverCore(self.backend, DriverConfig(), SO101Kinematics(), seed=seed)
        self.rng = np.random.default_rng(seed)
        self.period = 1.0 / TICK_HZ
        self.last_tick = self.next_tick = self.next_command = self.next_health = \
            time.monotonic()
        self.ticks = self.commands = self.health_failures = 0

    def close(self):
        self.backend.close()
        self.sim.close()

    def _command(self, now):
        if self.rng.random() < 0.8:
            self.core.ee_action(self.rng.uniform(-1, 1, 4), now)
        else:
            self.core.joint_command(self.rng.uniform(-3.2, 3.2, 6), now)  # beyond every limit
        self.commands += 1

    def step(self):
        """One tick as driver_node runs it; returns the reading (None when the read failed)."""
        now = time.monotonic()
        if now >= self.next_command:
            self._command(now)
            self.next_command = now + COMMAND_PERIOD_S
        if now >= self.next_health:
            try:
                self.backend.read_health()
            except BackendError as exc:
                self.health_failures += 1
                self.core.last_error = str(exc)
            self.next_health = now + HEALTH_PERIOD_S
        dt = min(max(now - self.last_tick, 0.0), 5 * self.period)
        self.last_tick = now
        reading = self.core.tick(now, dt)
        self.ticks += 1
        # Real tick rate, but a late tick skips ahead instead of bursting to catch up.
        self.next_tick = max(self.next_tick + self.period, time.monotonic())
        time.sleep(max(0.0, self.next_tick - time.monotonic()))
        return reading

    def run(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step()


def limit_ticks(cal, kin):
    lo = np.append(kin.lower, kin.gripper_limits[0])
    hi = np.append(kin.upper, kin.gripper_limits[1])
    return {cal[n].id: (rad_to_ticks(n, lo[k], cal[n]), rad_to_ticks(n, hi[k], cal[n]))
            for k, n in enumerate(JOINT_NAMES)}


# A transaction is up to retries + 1 = 3 packets: a reply that a starved simulator sends after
# its transaction gave up is seen during the next transaction at the latest.
LATE_REPLY_PACKETS = 6


def uncounted(faulted, counted_at, slack=LATE_REPLY_PACKETS):
    """Faulted packets without a counted fault of their own. A fault is counted at its packet,
    or, when a loaded machine delivered a reply after the bus had timed out and moved on, at
    one of the next `slack` packets (the out-of-step reply is seen there); each counted fault
    accounts for one faulted packet only."""
    available = sorted(counted_at)
    missed = []
    for packet in sorted(faulted):
        match = next((i for i, c in enumerate(available) if packet <= c <= packet + slack), None)
        if match is None:
            missed.append(packet)
        else:
            available.pop(match)
    return missed


def test_fault_accounting_matches_each_fault_once():
    assert uncounted({5, 9}, [5, 9]) == []
    assert uncounted({5}, [6]) == []            # seen one packet late
    assert uncounted({5, 6}, [6]) == [6]        # one count cannot stand for two faults
    assert uncounted({5}, [4, 12]) == [5]       # neither before nor too late


MODES = ('checksum', 'truncate', 'random', 'silent')
RATES = (0.01, 0.05, 0.20)


def run_case(mode: str, rate: float, seconds: float) -> dict:
    """One case, in a process of its own (see campaign_results): what the test checks."""
    seed = int(rate * 1000) + len(mode)
    rig = Campaign(seed)
    result = {'crash': None}
    try:
        try:
            rig.sim.inject_faults(mode, rate, ids=[SILENT_SERVO] if mode == 'silent' else None,
                                  seed=seed)
            rig.run(seconds)
            read_failures = rig.core.counters['read_failures']
            result['failure_message'] = rig.core.diagnostics(bus_stats=rig.bus.stats)[0].message \
                if rig.core.consecutive_read_failures else ''
            rig.sim.stop_faults()
            stopped = time.monotonic()
            recovered_after = None
            while time.monotonic() - stopped < RECOVERY_S + 2.0:
                reading = rig.step()
                if reading is not None and rig.core.ready:
                    recovered_after = time.monotonic() - stopped
                    break
            rig.run(0.3)
            # The final state check is not under test either: as patient as bring-up (a loaded
            # machine stalled the simulator past 3 x 100 ms several times in a row)
            rig.bus.retries, rig.bus.timeout_ms = 4, 1000
            for attempt in range(3):  # the node reads health every second: a stall may fail one
                try:
                    health = rig.backend.read_health()
                    break
                except BackendError:
                    if attempt == 2:
                        raise
            stats = rig.bus.stats
            # OK again: a read that a loaded machine scheduled past the bus timeout after
            # recovery shows as one failed read until the next tick succeeds: a few ticks
            settle_until = time.monotonic() + RECOVERY_S + 2.0
            while rig.core.diagnostics(health, stats)[0].level != OK and \
                    time.monotonic() < settle_until:
                rig.step()
        except Exception:  # noqa: BLE001 - the campaign counts crashes instead of stopping
            result['crash'] = traceback.format_exc()
            return result
        faulted = set(rig.sim.faulted_packets)
        limits = limit_ticks(rig.cal, rig.core.kin)
        goals = rig.sim.goals_received()
        final = rig.core.diagnostics(health, stats)[0]
        result.update({
            'summary': (f'{mode} {rate:.0%}: {seconds:.0f} s, {rig.ticks} ticks, {rig.commands} '
                        f'commands, {len(faulted)} faulted packets, {stats.faults} bus faults '
                        f'{stats.faults_by_kind}, {read_failures} failed reads, '
                        f'{rig.health_failures} failed health reads, recovered after '
                        f'{recovered_after} s'),
            'replies_faulted': rig.sim.replies_faulted, 'faults': stats.faults,
            'faults_logged': len(stats.recent_faults),
            'missed': uncounted(faulted, [f.packet_index for f in stats.recent_faults])[:20],
            # where a fault went uncounted: what the bus saw around it (faults, late replies)
            'around_missed': [{
                'faults': [(f.packet_index, f.kind, f.servo_id) for f in stats.recent_faults
                           if abs(f.packet_index - p) <= LATE_REPLY_PACKETS],
                'late_replies_skipped': [r for r in stats.recent_late_replies
                                         if abs(r[0] - p) <= LATE_REPLY_PACKETS],
                'sim': rig.sim.packet_log_around(p, LATE_REPLY_PACKETS)}
                for p in uncounted(faulted, [f.packet_index for f in stats.recent_faults])[:5]],
            'faulted': len(faulted),
            'servos_without_goals': [i for i in limits if not goals.get(i)],
            'goals_outside': {str(i): [g for g in goals.get(i, [])
                                       if not limits[i][0] <= g <= limits[i][1]][:10]
                              for i in limits},
            'recovered_after': recovered_after,
            'torque_lost': bool(rig.core.torque_lost),
            'torque_on': all(h.torque_on for h in health.values()),
            'final_level': int(final.level), 'final': f'{final.name}: {final.message}'})
        return result
    finally:
        rig.close()


@pytest.fixture(scope='module')
def campaign_results():
    """Every case runs CAMPAIGN_S seconds in a process of its own, two at a time (one per core
    here), so the twelve fit in about two minutes (sequentially they would take four)."""
    cases = [(mode, rate) for mode in MODES for rate in RATES]
    waiting, running, results = list(cases), {}, {}
    while waiting or running:
        while waiting and len(running) < PARALLEL_CASES:
            mode, rate = waiting.pop(0)
            running[(mode, rate)] = subprocess.Popen(
                [sys.executable, __file__, mode, str(rate), str(CAMPAIGN_S)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for case, proc in list(running.items()):
            if proc.poll() is None:
                continue
            out, err = proc.communicate()
            del running[case]
            lines = out.strip().splitlines()
            try:
                results[case] = json.loads(lines[-1])
            except (IndexError, json.JSONDecodeError):
                results[case] = {'crash': f'case process exited {proc.returncode}:\n'
                                          f'{out[-2000:]}\n{err[-3000:]}'}
        time.sleep(0.2)
    return results


@pytest.mark.parametrize('rate', RATES)
@pytest.mark.parametrize('mode', MODES)
def test_driver_survives_faults_and_recovers(campaign_results, mode, rate):
    result = campaign_results[(mode, rate)]
    assert result['crash'] is None, f'{mode} {rate:.0%}: exception escaped:\n{result["crash"]}'
    summary = result['summary']
    print(summary)
    assert result['replies_faulted'] > 0, summary
    assert result['faults'] == result['faults_logged'], 'fault log overflowed'
    assert not result['missed'], (f'{summary}: faults not counted at packets '
                                  f'{result["missed"]}; around them: {result["around_missed"]}')
    assert result['faults'] >= result['faulted']
    assert not result['servos_without_goals'], \
        f'servos {result["servos_without_goals"]} never received a goal'
    outside = {servo: goals for servo, goals in result['goals_outside'].items() if goals}
    assert not outside, f'goals outside the joint limits (servo: first ten): {outside}'
    if result['failure_message']:  # diagnostics name the servo and what went wrong
        assert '(id ' in result['failure_message'] and 'holding' in result['failure_message'], \
            result['failure_message']
    assert result['recovered_after'] is not None and \
        result['recovered_after'] <= RECOVERY_S, summary
    assert not result['torque_lost'] and result['torque_on']
    assert result['final_level'] == OK, result['final']


if __name__ == '__main__':  # one case: python test_fault_campaign.py MODE RATE SECONDS
    print(json.dumps(run_case(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))))
