"""`hilserl setup-motors`: give each servo of an SO-101 its id (1..6 in joint order) and the bus
baud rate, one servo at a time as the owner connects each alone to the board, and read it back
at its new id and rate. `--check` reads back the assembled arm instead (all six chained)."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence, TextIO

from hilserl.messages.conventions import JOINT_NAMES
from so101_driver import sts_protocol as sts
from so101_driver.servo_setup import assign, open_bus, read_back, single_servo
from hilserl_tools.terminal import say

# LeRobot's order (gripper first), so an owner following its assembly guide meets no surprise.
SETUP_ORDER = tuple(reversed(JOINT_NAMES))


def servo_id(joint: str) -> int:
    return JOINT_NAMES.index(joint) + 1


def run_setup_motors(port: str, leader: bool = False, baudrate: int = 1_000_000,
                     joints: Optional[Sequence[str]] = None, check: bool = False,
                     timeout_ms: Optional[float] = None, stdin: Optional[TextIO] = None,
                     out: Callable[[str], None] = say,
                     scan_baudrates: Sequence[int] = sts.SCAN_BAUD_RATES) -> int:
    """0 when every servo asked for is set up (or, check: answers); 1 when the owner stops
    (q). A refusal (no servo, two servos) is said and the same servo asked for again; with the
    input at its end, the refusal is the error (ValueError)."""
    sts.baud_index(baudrate)   # a rate the servo cannot take is refused before the bus opens
    stdin = stdin or sys.stdin
    order = [j for j in SETUP_ORDER if j in joints] if joints else list(SETUP_ORDER)
    arm = 'leader' if leader else 'follower'
    bus = open_bus(port, baudrate, timeout_ms)
    try:
        if check:
            return _check(bus, order, baudrate, arm, out)
        done = []
        for joint in order:
            target = servo_id(joint)
            refusal = ''
            while True:
                out(f'connect only the {joint} servo (of the {arm} arm) and press Enter '
                    f'(q stops)')
                line = stdin.readline()
                if not line:   # the input ended: nobody to ask again
                    raise ValueError(refusal or f'input ended before the {joint} servo; '
                                     f'{len(done)} of {len(order)} set up')
                if line.strip().lower() == 'q':
                    out(f'stopped: {len(done)} of {len(order)} servos set up'
                        + (f' ({", ".join(done)})' if done else ''))
                    return 1
                try:
                    found = single_servo(bus, joint, scan_baudrates)
                except ValueError as exc:
                    refusal = str(exc)
                    out(refusal)
                    continue
                written = assign(bus, found, target, baudrate)
                was = f'was id {found.id} at {found.baudrate} baud' if written else \
                    'already set'
                out(f'{joint}: id {target} at {baudrate} baud ({was}); read back: STS3215 '
                    f'answers at id {target}')
                done.append(joint)
                break
        out(f'{len(done)} servos set up at {baudrate} baud: '
            + ', '.join(f'{j} = id {servo_id(j)}' for j in done)
            + f'. Chain them and check with: hilserl setup-motors --port {port}'
            + (' --leader' if leader else '') + ' --check')
        return 0
    finally:
        bus.close()


def _check(bus, joints: Sequence[str], baudrate: int, arm: str,
           out: Callable[[str], None]) -> int:
    """The assembled arm: each joint's servo answers at its id and at the rate."""
    bus.set_baudrate(baudrate)
    found = read_back(bus, [servo_id(j) for j in joints])
    missing = [f'{j} (id {servo_id(j)})' for j in joints if found[servo_id(j)] is None]
    if missing:
        raise ValueError(f'no reply at {baudrate} baud from {", ".join(missing)} of the {arm} '
                         f'arm on {bus.port_name}: check its cable, or set it up with '
                         f'hilserl setup-motors --port {bus.port_name} --joint NAME')
    wrong = [f'{j} is model {found[servo_id(j)][0]}' for j in joints
             if found[servo_id(j)][0] != sts.MODEL_NUMBER_STS3215]
    if wrong:
        raise ValueError(f'not STS3215 ({sts.MODEL_NUMBER_STS3215}): {", ".join(wrong)}')
    out(f'{arm} arm on {bus.port_name}: ' + ', '.join(f'{j} = id {servo_id(j)}' for j in joints)
        + f' answer at {baudrate} baud')
    return 0
