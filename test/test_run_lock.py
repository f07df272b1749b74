"""One graph per run directory (hilserl.common.run_lock): a second graph is refused in one line
naming the holder's PID and the directory; the processes of one graph share the lock; a lock
left by a killed process is free and taken over, and the taker says so. The holders here are
real processes (the lock is the OS's flock)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hilserl.common.run_lock import (LOCK_FILE, RunDirInUse, acquire_run_lock, check_run_lock,
                                     new_graph_token)
from hilserl.ros.graph import GraphArgs, build_graph
from hilserl_tools import cli

ROOT = Path(__file__).resolve().parents[1]
# a graph of its own (or of the token given): prints its token once it holds the lock, lets go
# when its stdin closes
HOLDER = ('import sys\n'
          'from hilserl.common.run_lock import acquire_run_lock\n'
          'lock = acquire_run_lock(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)\n'
          'print(lock.graph, flush=True)\n'
          'sys.stdin.read()\n')


class Holder:
    def __init__(self, directory, graph=None):
        self.proc = subprocess.Popen([sys.executable, '-c', HOLDER, str(directory)]
                                     + ([graph] if graph else []), cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.graph = self.proc.stdout.readline().strip()
        assert self.graph, 'the holder did not take the lock'
        self.pid = self.proc.pid

    def exit(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=60)
        self.proc.stdin.close()
        self.proc.stdout.close()


def test_a_second_graph_is_refused_and_the_graphs_own_processes_share_the_lock(tmp_path):
    run = tmp_path / 'run'
    first = Holder(run)
    try:
        for attempt in (lambda: acquire_run_lock(run, new_graph_token()),
                        lambda: check_run_lock(run)):
            with pytest.raises(RunDirInUse) as info:
                attempt()
            message = str(info.value)
            assert '\n' not in message and f'PID {first.pid} ' in message, message
            assert f'run directory {run} is in use by another graph' in message
        member = acquire_run_lock(run, first.graph)  # another process of the first graph
        check_run_lock(run, first.graph)
    finally:
        first.exit()
    # the graph's starter has gone, its member still holds the directory
    with pytest.raises(RunDirInUse, match=f'PID {first.pid} '):
        acquire_run_lock(run, new_graph_token())
    member.release()  # the last one out empties the file: the next start is not a takeover
    assert (run / LOCK_FILE).read_text() == ''
    with acquire_run_lock(run) as lock:
        assert lock.taken_over is None and lock.takeover_line() is None


def test_the_stale_lock_of_a_killed_process_is_taken_over_and_said(tmp_path):
    run = tmp_path / 'run'
    dead = Holder(run)
    dead.kill()  # SIGKILL: nothing released by hand, the file still names it
    assert dead.graph in (run / LOCK_FILE).read_text()
    check_run_lock(run)  # free: the OS let go with the process
    with acquire_run_lock(run) as lock:
        assert lock.taken_over == dead.graph
        line = lock.takeover_line()
        assert '\n' not in line and str(run) in line
        assert f'the stale lock of PID {dead.pid} was taken over' in line, line


def test_hilserl_refuses_a_held_run_directory_and_reports_a_takeover(tmp_path, capsys,
                                                                     monkeypatch):
    run = tmp_path / 'run'
    started = []
    monkeypatch.setattr(cli, '_run_locked_graph',
                        lambda graph_args, *a, **k: started.append(graph_args) or 0)
    record = ['record', '--episodes', '1', '--output', str(run)]
    other = Holder(run)
    try:
        assert cli.main(record) == 2
    finally:
        other.kill()
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and f'PID {other.pid} ' in err and str(run) in err, err
    assert not started  # refused before anything of the graph ran
    assert cli.main(record) == 0
    out = capsys.readouterr().out
    assert f'hilserl: run directory {run}: the stale lock of PID {other.pid} was taken over' \
        in out, out
    # the graph's nodes get the token the command holds the lock under
    assert started[0].run_lock.startswith(f'{os.getpid()}@')
    # an eval writes only under <run_dir>/eval: it can run beside the run's training
    assert GraphArgs(mode='eval', checkpoint='x', run_dir=str(run)).written_dir() == run / 'eval'


def test_every_node_that_writes_the_run_directory_gets_the_graphs_token(tmp_path):
    for args in (GraphArgs(run_dir=str(tmp_path)), GraphArgs(run_dir=str(tmp_path), robots=2),
                 GraphArgs(mode='record', run_dir=str(tmp_path), run_lock='T')):
        nodes = build_graph(args)
        tokens = {n.label: n.parameters['run_lock'] for n in nodes if 'run_lock' in n.parameters}
        writers = {n.label for n in nodes if n.name in ('sac_learner', 'sac_actor',
                                                        'episode_recorder')}
        assert set(tokens) == writers and len(set(tokens.values())) == 1, tokens
        assert args.run_lock in ('', *tokens.values())


def test_a_node_is_refused_by_another_graph_and_takes_over_a_stale_lock(ros_context, tmp_path):
    """What a node does under `ros2 launch`, where it holds the lock itself."""
    from rclpy.parameter import Parameter

    from hilserl.ros.node import NodeStartError
    from hilserl_tools.recorder_node import RecorderNode
    run = tmp_path / 'run'

    def recorder(graph=''):
        return RecorderNode(context=ros_context, parameter_overrides=[
            Parameter('run_dir', value=str(run)), Parameter('run_lock', value=graph)])

    other = Holder(run)
    try:
        with pytest.raises(NodeStartError, match=f'PID {other.pid} '):
            recorder()
        joined = recorder(other.graph)  # a node of that graph
        joined.close()
        joined.destroy_node()
    finally:
        other.kill()
    node = recorder()
    try:
        assert node.run_lock.taken_over == other.graph
    finally:
        node.close()
        node.destroy_node()
    assert (run / LOCK_FILE).read_text() == ''


def test_ros2_launch_refuses_a_held_run_directory_before_any_node(tmp_path):
    launch = pytest.importorskip('launch')
    pytest.importorskip('launch_ros')
    from hilserl.ros.graph import LAUNCH_ARGUMENTS
    from hilserl.ros.launch_support import graph_actions
    run = tmp_path / 'run'
    context = launch.LaunchContext()
    context.launch_configurations.update({name: default for name, default, _ in
                                          LAUNCH_ARGUMENTS})
    context.launch_configurations.update(mode='record', run_dir=str(run))
    other = Holder(run)
    try:
        with pytest.raises(RunDirInUse, match=f'PID {other.pid} '):
            graph_actions(context)
    finally:
        other.exit()
    assert any(type(a).__name__ == 'Node' for a in graph_actions(context))
    assert not (run / 'episodes').exists()  # the launch process only looked
