"""Bus cycle rate: sync-read (position+speed+load of 6 servos) + sync-write (6 goals) per second,
through feetech-servo-sdk and a real pty against the simulated STS3215 bus."""
import time

import common  # noqa: F401

from so101_driver.feetech_bus import FeetechBus
from so101_driver.sts_simulator import SimulatedBus


def main(cycles: int = 2000):
    with SimulatedBus() as sim:
        bus = FeetechBus(sim.port)
        bus.open()
        ids = list(range(1, 7))
        bus.sync_write('torque_enable', {i: 1 for i in ids})
        latencies = []
        start = time.perf_counter()
        for k in range(cycles):
            t0 = time.perf_counter()
            bus.sync_read('present_position', ids,
                          ['present_position', 'present_speed', 'present_load'])
            bus.sync_write('goal_position', {i: 2048 + (k % 50) for i in ids})
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        bus.close()
    latencies.sort()
    print(f'bus cycles (sync read 6x6 bytes + sync write 6 goals): {cycles / elapsed:8.1f} /s')
    print(f'cycle latency p50 {latencies[len(latencies) // 2] * 1e3:.2f} ms, '
          f'p99 {latencies[int(len(latencies) * 0.99)] * 1e3:.2f} ms '
          f'(target: 100 Hz driver loop = 10 ms budget)')


if __name__ == '__main__':
    main()
