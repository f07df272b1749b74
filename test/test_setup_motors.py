"""`hilserl setup-motors` on the pty STS3215 simulator (the real wire protocol): the owner connects
one servo at a time (the simulator's plug/unplug), presses Enter, and each servo ends at its id
and the bus rate, read back there. The simulator's side of it (EEPROM lock, new id and baud
index taking effect after the reply, the line speed deciding who hears) is tested first."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hilserl.messages.conventions import JOINT_NAMES
from hilserl_tools import cli
from hilserl_tools.setup_motors import SETUP_ORDER, run_setup_motors
from so101_driver.feetech_bus import BusError, FeetechBus
from so101_driver.sts_simulator import SimulatedBus

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 200   # the simulator shares a loaded machine; a scan waits this long per rate


@pytest.fixture()
def sim():
    bus = SimulatedBus(ids=[])   # nothing connected yet
    yield bus
    bus.close()


def test_the_simulated_servo_guards_eeprom_and_moves_to_its_new_id_and_rate(sim):
    servo = sim.plug(1)
    bus = FeetechBus(sim.port, retries=1, timeout_ms=TIMEOUT_MS)
    bus.open()
    try:
        bus.write(1, 'id', 3)                     # locked: acknowledged, ignored
        assert servo.id == 1 and bus.broadcast_ping() == ([1], 0)
        bus.write(1, 'lock', 0)
        bus.write(1, 'id', 3)                     # the reply still came from id 1
        assert servo.id == 3 and bus.ping(3) == 777
        with pytest.raises(BusError):
            bus.ping(1)
        bus.write(3, 'baud_rate', 1)              # 500000: its reply left at 1000000
        assert bus.broadcast_ping() == ([], 0)    # deaf to 1000000 now
        bus.set_baudrate(500_000)
        assert bus.broadcast_ping() == ([3], 0) and bus.read(3, 'baud_rate') == 1
        twin = sim.plug(3, baud_index=1)          # two servos with one id: both answer
        assert bus.broadcast_ping() == ([3, 3], 0)
        sim.unplug(twin)
        sim.unplug(servo)
        assert bus.broadcast_ping() == ([], 0)
    finally:
        bus.close()


class Owner:
    """A person at the board answering the prompts: before each Enter, unplugs the servo set up
    last and plugs in the next one (fresh from the box, or a used one at another id and rate).
    `first_empty`: the first Enter comes before anything is connected (a refusal, asked again)."""

    def __init__(self, sim, servos, first_empty=False):
        self.sim, self.servos = sim, dict(servos)   # joint -> (factory id, baud index)
        self.prompts = []
        self.current = None
        self.plugged = {}
        self.empty = first_empty

    def out(self, line):
        print(line)
        self.prompts.append(line)

    def readline(self):
        prompt = [p for p in self.prompts if p.startswith('connect only the ')][-1]
        joint = prompt.split()[3]
        if self.empty:
            self.empty = False
            return '\n'
        if joint not in self.plugged:   # asked again for the same joint: Enter again
            if self.current is not None:
                self.sim.unplug(self.current)
            factory_id, baud_index = self.servos[joint]
            self.current = self.plugged[joint] = self.sim.plug(factory_id, baud_index=baud_index)
        return '\n'


def test_six_servos_connected_one_at_a_time_get_ids_and_rate(sim, capsys):
    used = {'wrist_flex': (12, 1), 'shoulder_lift': (1, 4)}   # 500000 and 115200 baud
    owner = Owner(sim, {j: used.get(j, (1, 0)) for j in JOINT_NAMES}, first_empty=True)
    assert run_setup_motors(sim.port, stdin=owner, out=owner.out, timeout_ms=TIMEOUT_MS) == 0
    prompts = [p for p in owner.prompts if p.startswith('connect only')]
    assert [p.split()[3] for p in prompts] == [SETUP_ORDER[0]] + list(SETUP_ORDER)
    assert any(p.startswith('no servo answers') for p in owner.prompts)   # the first Enter
    for k, joint in enumerate(JOINT_NAMES):
        servo = owner.plugged[joint]
        assert (servo.id, servo.baud_index, servo.get('lock')) == (k + 1, 0, 1), joint
    assert any('wrist_flex: id 4 at 1000000 baud (was id 12 at 500000 baud)' in p
               for p in owner.prompts)
    # read back: the owner chains all six; --check finds each at its id and the rate
    for joint in SETUP_ORDER[:-1]:
        sim.plug(owner.plugged[joint])
    lines = []
    assert run_setup_motors(sim.port, check=True, out=lines.append, timeout_ms=TIMEOUT_MS) == 0
    assert 'answer at 1000000 baud' in lines[-1]


def test_a_servo_already_set_is_left_alone_and_another_rate_can_be_set(sim):
    servo = sim.plug(6)
    owner = Owner(sim, {'gripper': (6, 0)})
    owner.current = owner.plugged['gripper'] = servo
    assert run_setup_motors(sim.port, joints=['gripper'], stdin=owner, out=owner.out,
                            timeout_ms=TIMEOUT_MS) == 0
    assert any('already set' in p for p in owner.prompts) and servo.get('lock') == 1
    owner.prompts.clear()
    assert run_setup_motors(sim.port, joints=['gripper'], baudrate=500_000, stdin=owner,
                            out=owner.out, timeout_ms=TIMEOUT_MS) == 0
    assert (servo.id, servo.baud_index) == (6, 1)


def _cli(argv, monkeypatch, capsys, stdin_text='\n'):
    monkeypatch.setattr(sys, 'stdin', io.StringIO(stdin_text))
    code = cli.main(argv)
    return code, capsys.readouterr()


def test_no_servo_two_servos_and_a_wrong_port_are_one_line(sim, monkeypatch, capsys):
    argv = ['setup-motors', '--port', sim.port, '--bus-timeout-ms', str(TIMEOUT_MS)]
    code, output = _cli(argv, monkeypatch, capsys)
    assert code == 2 and output.err.startswith('hilserl setup-motors: no servo answers on')
    assert output.err.count('\n') == 1 and 'gripper' in output.err
    first, second = sim.plug(1), sim.plug(1)   # two new servos, both at id 1
    code, output = _cli(argv, monkeypatch, capsys)
    assert code == 2 and output.err.count('\n') == 1
    assert '2 servos answer' in output.err and 'connect only the gripper servo' in output.err
    sim.unplug(second)
    sim.plug(9, baud_index=2)                  # two at different ids and rates
    code, output = _cli(argv, monkeypatch, capsys)
    assert code == 2 and 'id 1 at 1000000 baud, id 9 at 250000 baud' in output.err
    assert first.id == 1                       # nothing was written to either
    code, output = _cli(['setup-motors', '--port', '/dev/no_such_port'], monkeypatch, capsys)
    assert code == 2 and output.err.count('\n') == 1
    assert 'cannot open serial port' in output.err
    sim.unplug(first)
    code, output = _cli(argv + ['--check'], monkeypatch, capsys)
    assert code == 2 and output.err.count('\n') == 1 and 'no reply at 1000000 baud' in output.err


def test_key_presses_through_a_pipe(sim):
    """The command as a process: its prompt read from its stdout, Enter written to its stdin."""
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, '-m', 'hilserl_tools.cli', 'setup-motors', '--port', sim.port,
         '--joint', 'elbow_flex', '--bus-timeout-ms', str(TIMEOUT_MS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=ROOT)
    try:
        prompt = process.stdout.readline()
        assert prompt.startswith('connect only the elbow_flex servo'), prompt
        servo = sim.plug(1)
        process.stdin.write('\n')
        process.stdin.flush()
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert 'elbow_flex: id 3 at 1000000 baud' in out and servo.id == 3


def test_q_stops(sim):
    lines = []
    assert run_setup_motors(sim.port, stdin=io.StringIO('q\n'), out=lines.append,
                            timeout_ms=TIMEOUT_MS) == 1
    assert lines[-1].startswith('stopped: 0 of 6')
    with pytest.raises(ValueError, match='baud rate 57600'):
        run_setup_motors(sim.port, baudrate=57_600, stdin=io.StringIO(''))
