"""FK, Jacobian and IK timings of hilserl.robot.kinematics (numpy) on this CPU."""
import time

import common  # noqa: F401
import numpy as np

from hilserl.robot.kinematics import SO101Kinematics


def timed(fn, n):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main():
    kin = SO101Kinematics()
    rng = np.random.default_rng(0)
    q = rng.uniform(kin.lower, kin.upper)
    home = np.array([0.0, 0.2408, -0.2763, 1.6063, 0.0])
    print(f'FK                     : {timed(lambda: kin.fk(q), 2000) * 1e6:8.1f} us')
    print(f'Jacobian (6x5)         : {timed(lambda: kin.jacobian(q), 2000) * 1e6:8.1f} us')
    step_target = kin.fk(home)[:3, 3] + [0.02, 0.01, -0.02]
    down = np.array([0, 0, -1.0])
    step_s = timed(lambda: kin.ik_position(step_target, home, hold_approach=down, restarts=0), 200)
    print(f'IK 2 cm step, top-down: {step_s * 1e3:8.2f} ms')
    targets = []
    for _ in range(100):
        qq = rng.uniform(kin.lower, kin.upper)
        qq[4] = 0.0
        targets.append(kin.fk(qq)[:3, 3])
    start = time.perf_counter()
    errors = [kin.ik_position(t, home).position_error_m for t in targets]
    elapsed = (time.perf_counter() - start) / len(targets)
    print(f'IK random target       : {elapsed * 1e3:8.2f} ms mean, max error '
          f'{max(errors) * 1e3:.3f} mm over {len(targets)} targets')


if __name__ == '__main__':
    main()
