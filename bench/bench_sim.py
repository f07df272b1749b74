"""Simulated control steps per second (EE action -> IK -> 0.1 s physics -> 640x480 render ->
crop/resize -> state), and the scripted expert's success rate over 50 seeded episodes."""
import argparse
import time

import common  # noqa: F401
import numpy as np

from hilserl.config import TrainConfig
from hilserl.expert import ScriptedExpert
from so101_driver.sim_env import SimEnv


def run(episodes: int, render: bool, seed: int):
    env = SimEnv(TrainConfig(), render=render, seed=seed)
    expert = ScriptedExpert()
    successes = steps = 0
    lengths = []
    start = time.perf_counter()
    for episode in range(episodes):
        obs, _ = env.reset()
        for step in range(env.cfg.task.max_episode_steps):
            task = env.backend.task_state()
            action = expert.act(obs.tcp_pose, obs.joint_position_rad[5], task.cube_xyz_m,
                                task.grasped)
            obs, _r, terminated, truncated, _info = env.step(action)
            steps += 1
            if terminated or truncated:
                break
        successes += bool(terminated)
        lengths.append(step + 1)
    elapsed = time.perf_counter() - start
    env.close()
    return successes, steps, elapsed, lengths


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    for render in (True, False):
        ok, steps, elapsed, lengths = run(args.episodes, render, args.seed)
        label = 'with 640x480 render' if render else 'physics + IK only'
        print(f'{label:22s}: {steps / elapsed:7.1f} control steps/s '
              f'({steps / elapsed / 10:5.1f}x real time at 10 Hz), {steps} steps in {elapsed:.1f} s')
        print(f'{"":22s}  scripted expert success {ok}/{args.episodes} '
              f'({100 * ok / args.episodes:.0f}%), episode length median {np.median(lengths):.0f} '
              f'steps, max {max(lengths)}')


if __name__ == '__main__':
    main()
