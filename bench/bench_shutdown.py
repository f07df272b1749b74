"""How long the whole training graph takes to stop on a terminal Ctrl-C (target <= 10 s).

Starts the simulated training graph (`hilserl train`, and `ros2 launch hilserl train.launch.py`
where the launch tooling is installed), waits until two episodes have ended and a third is being
recorded while the learner trains, then sends SIGINT to every process of the group twice, as a
terminal does, and measures the wall time until no process of the group is left. Checks what the
stop must keep: every bag with metadata and episode.json, and the final checkpoint.

  python bench/bench_shutdown.py --trials 3
  python bench/bench_shutdown.py --hogs 2      # with two CPU-bound processes beside it
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
from hilserl.ros.launch_support import install_like_colcon

ROOT = Path(__file__).resolve().parents[1]
ROS2 = Path(sys.executable).parent / 'ros2'


def quick_config(work: Path) -> Path:
    config = work / 'quick.yaml'
    config.write_text((ROOT / 'config' / 'sim_learn_conv.yaml').read_text().replace(
        'episode_time_s: 10.0', 'episode_time_s: 3.0') + '\nsim:\n  min_updates_per_step: 0.0\n')
    return config


def group_members(pgid: int) -> dict:
    """pid -> short name (a node's module, or the command) of the group's live processes."""
    out = subprocess.run(['ps', '-o', 'pid=,stat=,args=', '-g', str(pgid)], capture_output=True,
                         text=True).stdout
    members = {}
    for line in out.splitlines():
        pid, stat, *args = line.split()
        if stat.startswith('Z'):
            continue
        module = next((a for a in args if '_node' in a or a.startswith('hilserl')), args[-1])
        members[int(pid)] = f'{module.split(".")[-1]}:{pid}'
    return members


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def one_stop(cmd, env, run_dir: Path, log_path: Path, timeout_s: float) -> dict:
    with open(log_path, 'w') as log:
        # default Ctrl-C handling even when this bench runs in the background (`cmd &` ignores
        # SIGINT, and children inherit that)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            episodes = sorted((run_dir / 'episodes').glob('episode_*'))
            if len(episodes) >= 3 and not (episodes[-1] / 'episode.json').exists():
                break
            time.sleep(0.2)
        if proc.poll() is not None:
            return {'error': f'graph ended by itself (exit {proc.returncode})'}
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        alive, gone_s = group_members(proc.pid), {}
        while (proc.poll() is None or group_alive(proc.pid)) and time.monotonic() - sent < 60:
            now = group_members(proc.pid)
            for pid, name in alive.items():
                if pid not in now and name not in gone_s:
                    gone_s[name] = round(time.monotonic() - sent, 1)
            alive = now
            time.sleep(0.05)
        stop_s = time.monotonic() - sent
        if group_alive(proc.pid):
            left = subprocess.run(['ps', '-o', 'pid=,args=', '-g', str(proc.pid)],
                                  capture_output=True, text=True).stdout
            print(f'still running after {stop_s:.0f} s:\n{left}', flush=True)
            os.kill(proc.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER: its threads' stacks
            time.sleep(2.0)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    episodes = sorted((run_dir / 'episodes').glob('episode_*'))
    kept = all((e / 'bag' / 'metadata.yaml').is_file() and (e / 'episode.json').is_file()
               for e in episodes)
    out = log_path.read_text()
    return {'stop_s': round(stop_s, 2), 'process_gone_s': gone_s, 'episodes': len(episodes),
            'bags_complete': kept,
            'final_checkpoint': 'final checkpoint' in out,
            'traceback': 'Traceback' in out or 'KeyboardInterrupt' in out}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--trials', type=int, default=3)
    parser.add_argument('--hogs', type=int, default=0, help='CPU-bound processes beside it')
    parser.add_argument('--domain-id', type=int, default=205)
    parser.add_argument('--only', choices=('hilserl', 'launch'), help='one of the two only')
    parser.add_argument('--keep', action='store_true', help='keep the logs and run folders')
    args = parser.parse_args()
    # the CPU-bound processes die with this bench however it ends (PR_SET_PDEATHSIG)
    hog = ('import ctypes, signal; ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))\n'
           'while True: pass')
    hogs = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(args.hogs)]
    work = Path(tempfile.mkdtemp(prefix='bench_shutdown_'))
    try:
        config = quick_config(work)
        env = {**os.environ, 'ROS_DOMAIN_ID': str(args.domain_id), 'PYTHONUNBUFFERED': '1',
               'PYTHONFAULTHANDLER': '1'}
        runners = {} if args.only == 'launch' else {'hilserl train': lambda run: [
            sys.executable, '-m', 'hilserl_tools.cli', 'train', '--config', str(config), '--demos',
            '0', '--episodes', '0', '--run-dir', str(run)]}
        launch_env = env
        if args.only == 'hilserl':
            pass
        elif ROS2.is_file():
            launch_env = {**env, **install_like_colcon(ROOT, work, sys.executable),
                          'PATH': os.pathsep.join([str(ROS2.parent), env.get('PATH', '')])}
            runners['ros2 launch'] = lambda run: [
                str(ROS2), 'launch', 'hilserl', 'train.launch.py', 'num_episodes:=0',
                f'run_dir:={run}', f'config:={config}']
        else:
            print('ros2 launch: not installed in this venv, skipped')
        print(f'{os.cpu_count()} CPUs, {args.hogs} CPU-bound processes beside the graph')
        for name, make_cmd in runners.items():
            times = []
            for trial in range(args.trials):
                run = work / f'{name.split()[0]}_{trial}'
                result = one_stop(make_cmd(run), launch_env if name == 'ros2 launch' else env,
                                  run, work / f'{name.split()[0]}_{trial}.log', 600)
                print(f'{name} trial {trial}: {result}', flush=True)
                if 'stop_s' in result:
                    times.append(result['stop_s'])
            if times:
                print(f'{name}: Ctrl-C to last process gone: median {statistics.median(times):.2f}'
                      f' s, max {max(times):.2f} s over {len(times)} trials (target <= 10 s)')
    finally:
        for hog in hogs:
            hog.kill()
        if args.keep:
            print(f'logs and runs kept in {work}')
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
