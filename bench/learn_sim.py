"""Learning proof on the simulated grasp-and-lift task (no ROS: the same SAC, buffers, reward
tracker and simulated human as the graph, stepped as fast as the CPU allows).

Offline buffer: scripted-expert demos. Online: the stochastic policy, with the simulated human
(the scripted expert) taking over when the policy deviates or stalls; interventions go to both
buffers. Every --eval-every episodes the deterministic policy runs --eval-episodes episodes with
no human. Writes <out>/learning_curve.csv, <out>/learning_curve.png and <out>/summary.json.

  python bench/learn_sim.py --minutes 15 --config config/sim_learn_conv.yaml --out outputs/learn
  python bench/learn_sim.py --evaluate outputs/learn/checkpoints/001719 --eval-episodes 50
"""
import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace

import common  # noqa: F401
import cv2
import numpy as np
import torch

from hilserl.config import load_train_config, save_config
from hilserl.expert import ScriptedExpert
from hilserl.teleop import SimHumanConfig, SimHumanTeleop
from hilserl_policy.learner import Learner
from hilserl_policy.replay import Transition
from so101_driver.sim_env import SimEnv


def chw(image):
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def run_episode(env, learner, expert, human=None, policy=True, deterministic=False,
                add=True, demo=False, train=None):
    """One episode; returns (success, steps, intervention steps)."""
    obs, _ = env.reset()
    if human is not None:
        human.reset()
    interventions = 0
    for step in range(env.cfg.task.max_episode_steps):
        task = env.backend.task_state()
        expert_action = expert.act(obs.tcp_pose, obs.joint_position_rad[5], task.cube_xyz_m,
                                   task.grasped)
        image, state = chw(obs.image), obs.state
        action = learner.agent.act(image, state, deterministic) if policy else expert_action
        intervened = not policy
        if human is not None:
            out = human.output(expert_action, action, 0.0)
            if out.intervention:
                action, intervened = out.action, True
        action = np.clip(action, -1, 1).astype(np.float32)
        interventions += intervened
        obs, reward, terminated, truncated, _ = env.step(action)
        if add:
            learner.add(Transition(image, state, action, reward, chw(obs.image), obs.state,
                                   terminated, truncated, intervened), demo=demo)
        if train is not None:
            train()
        if terminated or truncated:
            return bool(terminated), step + 1, interventions
    return False, env.cfg.task.max_episode_steps, interventions


def plot(rows, path):
    """Success rate (eval, deterministic) and intervention rate vs episodes, drawn with cv2."""
    w, h, m = 900, 500, 60
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.rectangle(img, (m, m // 2), (w - m // 2, h - m), (0, 0, 0), 1)
    if not rows:
        cv2.imwrite(str(path), img)
        return
    max_ep = max(r['episode'] for r in rows) or 1
    to_px = lambda ep, v: (int(m + (w - 1.5 * m) * ep / max_ep),  # noqa: E731
                           int(h - m - (h - 1.5 * m) * v))
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        y = to_px(0, frac)[1]
        cv2.line(img, (m, y), (w - m // 2, y), (220, 220, 220), 1)
        cv2.putText(img, f'{frac:.2f}', (5, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    for key, color in (('eval_success', (0, 140, 0)), ('intervention_rate', (0, 0, 200)),
                       ('train_success', (200, 120, 0))):
        pts = np.array([to_px(r['episode'], r[key]) for r in rows], np.int32)
        cv2.polylines(img, [pts], False, color, 2)
        cv2.putText(img, key, (m + 10 + 220 * ['eval_success', 'intervention_rate',
                                                'train_success'].index(key), 22),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, color, 2)
    cv2.putText(img, f'training episodes (0..{max_ep})', (w // 2 - 100, h - 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


def evaluate_checkpoint(path, episodes: int, seed: int) -> None:
    """Deterministic policy, no human, fresh seeds: success rate of a saved checkpoint."""
    from hilserl_policy.checkpoint import load_pretrained
    agent, cfg = load_pretrained(path)
    env = SimEnv(cfg, render=True, seed=seed)
    acting_only = SimpleNamespace(agent=agent)  # run_episode reads learner.agent only
    results = [run_episode(env, acting_only, ScriptedExpert(), deterministic=True, add=False)
               for _ in range(episodes)]
    successes = sum(r[0] for r in results)
    print(json.dumps({'checkpoint': str(path), 'episodes': episodes, 'successes': successes,
                      'success_rate': successes / episodes,
                      'mean_steps': float(np.mean([r[1] for r in results]))}))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='config/sim_learn_conv.yaml')
    parser.add_argument('--out', default='outputs/learn_sim')
    parser.add_argument('--minutes', type=float, default=15.0)
    parser.add_argument('--demos', type=int, default=20)
    parser.add_argument('--updates-per-step', type=int, default=1,
                        help='optimisation steps (each utd_ratio critic updates) per env step')
    parser.add_argument('--eval-every', type=int, default=20)
    parser.add_argument('--eval-episodes', type=int, default=10)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--pretrained-encoder', metavar='DIR', default=None,
                        help="sac.pretrained_encoder_path: e.g. a previous run's "
                             'checkpoints/N/pretrained_model (config/sim_learn_cached.yaml)')
    parser.add_argument('--evaluate', metavar='CHECKPOINT', default=None,
                        help='only evaluate this checkpoint for --eval-episodes episodes')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.evaluate:
        evaluate_checkpoint(args.evaluate, args.eval_episodes, args.seed + 20_000)
        return
    cfg = load_train_config(args.config)
    if args.pretrained_encoder:
        cfg = dataclasses.replace(cfg, sac=dataclasses.replace(
            cfg.sac, pretrained_encoder_path=args.pretrained_encoder))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / 'config.yaml')
    learner = Learner(cfg, out, resume_from_latest=False)
    env = SimEnv(cfg, render=True, seed=args.seed)
    eval_env = SimEnv(cfg, render=True, seed=args.seed + 10_000)
    expert = ScriptedExpert()
    human = SimHumanTeleop(SimHumanConfig())
    started = time.monotonic()
    demo_ok = sum(run_episode(env, learner, expert, policy=False, demo=True)[0]
                  for _ in range(args.demos))
    print(f'{args.demos} demos ({demo_ok} successful), {len(learner.offline)} offline '
          f'transitions [{time.monotonic() - started:.0f} s]', flush=True)

    def train():
        if learner.ready():
            for _ in range(args.updates_per_step):
                learner.train_step()

    rows, recent, episode, env_steps = [], [], 0, 0
    csv_path = out / 'learning_curve.csv'
    best = 0.0
    while time.monotonic() - started < args.minutes * 60:
        success, steps, interventions = run_episode(env, learner, expert, human, train=train)
        episode += 1
        env_steps += steps
        recent.append((success, interventions / steps))
        if episode % args.eval_every:
            continue
        results = [run_episode(eval_env, learner, expert, human=None, deterministic=True,
                               add=False) for _ in range(args.eval_episodes)]
        eval_success = float(np.mean([r[0] for r in results]))
        best = max(best, eval_success)
        row = {'episode': episode, 'env_steps': env_steps, 'optimisation_steps': learner.agent.step,
               'minutes': round((time.monotonic() - started) / 60, 2),
               'train_success': float(np.mean([r[0] for r in recent])),
               'intervention_rate': float(np.mean([r[1] for r in recent])),
               'eval_success': eval_success,
               'eval_mean_steps': float(np.mean([r[1] for r in results]))}
        recent = []
        rows.append(row)
        with open(csv_path, 'w', newline='') as f:
            writer = csv.DictWriter(f, list(row))
            writer.writeheader()
            writer.writerows(rows)
        plot(rows, out / 'learning_curve.png')
        print(' '.join(f'{k} {v}' for k, v in row.items()), flush=True)
        if eval_success >= 0.8:
            learner.checkpoint()
    summary = {'episodes': episode, 'env_steps': env_steps,
               'optimisation_steps': learner.agent.step,
               'minutes': round((time.monotonic() - started) / 60, 1),
               'final_eval_success': rows[-1]['eval_success'] if rows else None,
               'best_eval_success': best, 'config': args.config,
               'updates_per_step': args.updates_per_step, 'demos': args.demos}
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    learner.checkpoint()
    print(json.dumps(summary))


if __name__ == '__main__':
    main()
