"""`hilserl` graphs never leave a node behind: a SIGKILLed `hilserl` takes its nodes with it,
SIGHUP (a closed terminal) stops the graph cleanly, closing the open episode's bag, and so does a
terminal's Ctrl-C pressed twice (SIGINT to every process of the group, twice)."""
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip('rclpy')

from hilserl.data.bags import list_episodes  # noqa: E402

from conftest import free_domain_id  # noqa: E402


def _node_pids(marker: str):
    out = subprocess.run(['pgrep', '-f', marker], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _start_recording(run_dir, own_session: bool = False):
    proc = subprocess.Popen(
        [sys.executable, '-m', 'hilserl_tools.cli', 'record', '--episodes', '1000', '--mix',
         'random:1', '--output', str(run_dir), '--domain-id', str(free_domain_id())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'}, start_new_session=own_session)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until an episode is being recorded
        if list((run_dir / 'episodes').glob('episode_*')):
            time.sleep(1.0)  # a few ticks into the episode
            return proc
        time.sleep(0.5)
    proc.kill()
    pytest.fail('the record graph did not start an episode within 120 s')


def _describe(pids) -> str:
    """What a process left running is doing (for a failure message): its command, each thread's
    state and wait channel, and its signal masks (is the parent-death SIGINT pending, ignored?)."""
    lines = []
    for pid in pids:
        try:
            lines.append(f'{pid}: ' + open(f'/proc/{pid}/cmdline').read().replace('\0', ' ')[:160])
            lines += ['  ' + line for line in open(f'/proc/{pid}/status').read().splitlines()
                      if line.startswith(('State', 'PPid', 'SigPnd', 'ShdPnd', 'SigBlk', 'SigIgn',
                                          'SigCgt'))]
            for task in sorted(os.listdir(f'/proc/{pid}/task')):
                comm = open(f'/proc/{pid}/task/{task}/comm').read().strip()
                state = open(f'/proc/{pid}/task/{task}/stat').read().rsplit(')', 1)[1].split()[0]
                wchan = open(f'/proc/{pid}/task/{task}/wchan').read()
                lines.append(f'  thread {task} {comm}: {state} {wchan}')
        except OSError as exc:
            lines.append(f'  {exc}')
    return '\n'.join(lines)


def _wait_gone(marker: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while _node_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not _node_pids(marker)


def test_nodes_die_with_a_killed_hilserl(tmp_path):
    run_dir = tmp_path / 'killed'
    proc = _start_recording(run_dir)
    marker = str(run_dir / 'params')
    assert len(_node_pids(marker)) == 5
    proc.kill()
    proc.wait()
    assert _wait_gone(marker), f'orphaned nodes kept running:\n{_describe(_node_pids(marker))}'


def test_a_second_graph_on_a_run_directory_is_refused_and_a_killed_graphs_nodes_let_go(
        tmp_path, capsys):
    from hilserl_tools import cli
    run_dir = tmp_path / 'busy'
    proc = _start_recording(run_dir)
    try:
        assert cli.main(['record', '--episodes', '1', '--output', str(run_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count('\n') == 0 and f'PID {proc.pid} ' in err and str(run_dir) in err, err
        # a node started on its own there (as under ros2 launch) is refused as well
        alone = subprocess.run(
            [sys.executable, '-m', 'hilserl_tools.recorder_node', '--ros-args', '-p',
             f'run_dir:={run_dir}'], capture_output=True, text=True, timeout=120,
            env={**os.environ, 'ROS_DOMAIN_ID': str(free_domain_id())})
        assert alone.returncode == 1 and f'PID {proc.pid} ' in alone.stderr, alone.stderr
    finally:
        proc.kill()
        proc.wait()
    assert _wait_gone(str(run_dir / 'params'))
    # the nodes closed as on Ctrl-C and let go: the next graph finds a clean end, no stale lock
    assert (run_dir / 'run.lock').read_text() == ''


def test_sighup_stops_the_graph_and_closes_the_open_bag(tmp_path):
    run_dir = tmp_path / 'hangup'
    proc = _start_recording(run_dir)
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=90)
    assert 'stopped (interrupted)' in out, out[-2000:]
    assert _wait_gone(str(run_dir / 'params'))
    episodes = list_episodes(run_dir)  # every bag readable, the open one marked interrupted
    assert episodes and all((e / 'episode.json').is_file() for e in episodes), out[-3000:]


def test_terminal_ctrl_c_twice_stops_cleanly_without_a_traceback(tmp_path):
    run_dir = tmp_path / 'ctrl_c'
    proc = _start_recording(run_dir, own_session=True)
    os.killpg(proc.pid, signal.SIGINT)   # what a terminal sends to the foreground group
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)   # the impatient second press, while nodes close
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert 'stopped (interrupted)' in out, out[-3000:]
    assert 'Traceback' not in out and 'KeyboardInterrupt' not in out, out[-3000:]
    assert _wait_gone(str(run_dir / 'params'))
    episodes = list_episodes(run_dir)
    assert episodes and all((e / 'episode.json').is_file() for e in episodes), out[-3000:]


def test_nodes_of_a_backgrounded_hilserl_still_stop_and_die_with_it(tmp_path):
    """`hilserl ... &` from a script starts with SIGINT ignored; its nodes must not inherit
    that, or neither stop() nor the parent-death signal (SIGINT) would reach them."""
    run_dir = tmp_path / 'background'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'hilserl_tools.cli', 'record', '--episodes', '1000', '--mix',
         'random:1', '--output', str(run_dir), '--domain-id', str(free_domain_id())],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    marker = str(run_dir / 'params')
    deadline = time.monotonic() + 120
    while len(_node_pids(marker)) < 5 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(_node_pids(marker)) == 5
    proc.kill()
    proc.wait()
    assert _wait_gone(marker), 'nodes of a backgrounded hilserl outlived it'


def test_string_parameters_that_look_like_numbers_stay_strings(tmp_path):
    """ROS's parameter-file parser reads a plain `4410147259e4` as a float: a configuration
    digest of that form once stopped every record graph at start-up (the recorder refused its
    `config_digest`). Strings are written quoted, and digests never look like numbers."""
    from hilserl.configuration.config import TrainConfig
    from hilserl.ros.graph import NodeSpec
    from hilserl_tools.process_graph import node_command
    assert TrainConfig().digest()[0].isalpha()
    spec = NodeSpec('episode_recorder', 'hilserl_tools.recorder_node',
                    parameters={'run_dir': str(tmp_path / 'run'), 'config_digest': '4410147259e4',
                                'required_topics': ['12', 'true']})
    proc = subprocess.Popen(node_command(spec, tmp_path / 'params'), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, 'ROS_DOMAIN_ID': str(free_domain_id()),
                                 'PYTHONUNBUFFERED': '1'})
    seen = []
    try:
        for line in proc.stdout:  # ends when the node exits, or once it is up
            seen.append(line)
            if 'episode_recorder up' in line:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert any('episode_recorder up' in line for line in seen), ''.join(seen)[-2000:]


def test_a_burst_of_signals_never_deadlocks_a_node(tmp_path):
    """A node's stop request is set from a signal handler. It was a threading.Event: a second
    signal handled inside the first handler's set() waited on the Event's own lock for ever
    (an orphaned driver, caught with py-spy). The window is microseconds wide, so this burst of
    SIGINT, SIGTERM and SIGHUP is a smoke test of the lock-free StopFlag, not a reproduction."""
    code = ('import rclpy; from hilserl.ros.node import spin_node; '
            'print("up", flush=True); spin_node(lambda: rclpy.create_node("burst"))')
    env = {**os.environ, 'ROS_DOMAIN_ID': str(free_domain_id()), 'PYTHONUNBUFFERED': '1'}
    for attempt in range(3):
        node = subprocess.Popen([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert node.stdout.readline().strip() == 'up'
        time.sleep(2.0)  # spinning (a signal while still building it raises there instead)
        for _ in range(300):
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                try:
                    node.send_signal(sig)
                except ProcessLookupError:
                    break
        try:
            out, _ = node.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
            pytest.fail(f'attempt {attempt}: the node hangs after a burst of signals')
        assert node.returncode == 0, out[-2000:]
