"""Two graphs on one machine never exchange messages: `hilserl` gives each graph a ROS domain of
its own (chosen free and printed), refuses an asked-for domain where another hilserl graph with
the same namespace runs, and every node warns when a namesake shares its domain (two `ros2
launch` on one domain)."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from hilserl.ros.domains import (DomainBusy, claim_domain, domains_with_participants,
                                 running_graphs)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# /proc/net/udp as Linux writes it: ports 7410 (domain 0, participant 0), 20666 (domain 53,
# participant 3), 53 (DNS: below every domain) and 36223 (an ephemeral port, in domain 115's range)
PROC_NET_UDP = textwrap.dedent('''\
      sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
     1: 00000000:1CF2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2
     2: 00000000:50BA 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2
     3: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2
     4: 0200A8C0:8D7F 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2
''')


@pytest.fixture
def udp(tmp_path):
    path = tmp_path / 'udp'
    path.write_text(PROC_NET_UDP)
    return [str(path), str(tmp_path / 'no_udp6')]


def test_participants_are_seen_by_their_domains_ports(udp):
    assert domains_with_participants(udp) == {0, 53, 115}


def test_a_graph_gets_the_lowest_domain_nobody_uses(tmp_path, udp):
    first = claim_domain(None, run_dir='a', mode='train', directory=tmp_path, proc_net_files=udp)
    second = claim_domain(None, run_dir='b', mode='record', directory=tmp_path,
                          proc_net_files=udp)
    assert (first.domain_id, second.domain_id) == (1, 2)
    assert first.chosen and 'ROS_DOMAIN_ID=1' in first.announce()
    assert 'domain 0 in use' in first.announce()
    assert {g.domain_id for g in running_graphs(tmp_path)} == {1, 2}
    first.close()
    assert {g.domain_id for g in running_graphs(tmp_path)} == {2}
    third = claim_domain(None, directory=tmp_path, proc_net_files=udp)
    assert third.domain_id == 1
    second.close()
    third.close()


def test_an_asked_for_domain_with_another_graph_is_refused_in_one_line(tmp_path, udp):
    running = claim_domain(7, run_dir='outputs/run', mode='train', directory=tmp_path)
    with pytest.raises(DomainBusy) as refused:
        claim_domain(7, run_dir='outputs/other', mode='record', directory=tmp_path)
    line = str(refused.value)
    assert '\n' not in line and '--domain-id' in line
    assert f'PID {os.getpid()}' in line and 'outputs/run' in line and 'hilserl train' in line
    # other namespaces (several arms on one domain), and the two halves of one graph, may share
    other_arm = claim_domain(7, namespace='arm2', directory=tmp_path)
    learner = claim_domain(7, namespace='arm3', part='learner', directory=tmp_path)
    robot = claim_domain(7, namespace='arm3', part='robot', directory=tmp_path)
    with pytest.raises(DomainBusy):
        claim_domain(7, namespace='arm3', part='robot', directory=tmp_path)
    for claim in (running, other_arm, learner, robot):
        claim.close()
    claim_domain(7, directory=tmp_path).close()  # free again


def test_a_killed_graphs_domain_is_free_again(tmp_path, udp):
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from pathlib import Path; '
         'from hilserl.ros.domains import claim_domain; '
         f'claim = claim_domain(None, directory=Path({str(tmp_path)!r}), proc_net_files={udp!r}); '
         'print("held", flush=True); time.sleep(600)'],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, 'PYTHONPATH': ROOT})
    assert holder.stdout.readline().strip() == 'held'
    assert [g.pid for g in running_graphs(tmp_path)] == [holder.pid]
    assert claim_domain(None, directory=tmp_path, proc_net_files=udp).domain_id == 2
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert all(g.pid != holder.pid for g in running_graphs(tmp_path))
    assert claim_domain(None, directory=tmp_path, proc_net_files=udp).domain_id == 1


def test_torque_finds_the_running_graphs_domain(tmp_path, monkeypatch, capsys):
    from hilserl_tools import cli
    monkeypatch.setenv('HILSERL_DOMAIN_LOCK_DIR', str(tmp_path))
    monkeypatch.delenv('ROS_DOMAIN_ID', raising=False)
    assert cli.main(['torque', 'on']) == 2
    assert 'no hilserl graph' in capsys.readouterr().err
    graph = claim_domain(None, directory=tmp_path, mode='train')
    assert cli._running_graph_domain('') == graph.domain_id
    assert cli._running_graph_domain('/') == graph.domain_id
    other = claim_domain(None, directory=tmp_path, mode='record', run_dir='outputs/two')
    with pytest.raises(cli.ConfigError, match='several graphs run here'):
        cli._running_graph_domain('')
    graph.close()
    other.close()


def test_a_bad_ros_domain_id_is_named(monkeypatch, capsys, tmp_path):
    from hilserl_tools import cli
    monkeypatch.setenv('ROS_DOMAIN_ID', 'seven')
    assert cli.main(['record', '--episodes', '1', '--output', str(tmp_path / 'r')]) == 2
    err = capsys.readouterr().err
    assert "ROS_DOMAIN_ID='seven'" in err and len(err.strip().splitlines()) == 1


def _record(run_dir, env):
    return subprocess.Popen(
        [sys.executable, '-m', 'hilserl_tools.cli', 'record', '--episodes', '2', '--mix',
         'expert:1', '--config', str(run_dir.parent / 'short.yaml'), '--output', str(run_dir)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_hilserl_graphs_on_one_machine_keep_apart(tmp_path):
    """The README's `hilserl record`, twice at once as two users would type it: each graph gets
    its own domain, says which, and records its own episodes, numbered in order."""
    pytest.importorskip('rclpy')
    from hilserl.data.bags import complete_episodes
    (tmp_path / 'short.yaml').write_text('task:\n  episode_time_s: 4.0\n')
    env = {k: v for k, v in os.environ.items() if k != 'ROS_DOMAIN_ID'}
    env.update(PYTHONUNBUFFERED='1', PYTHONPATH=ROOT)
    first = _record(tmp_path / 'first', env)
    domains = []
    for line in first.stdout:  # the second starts once the first graph holds its domain
        match = re.search(r'ROS domain (\d+) \(chosen free', line)
        if match:
            domains.append(int(match.group(1)))
            break
    second = _record(tmp_path / 'second', env)
    out_second, _ = second.communicate(timeout=600)
    out_first, _ = first.communicate(timeout=600)
    assert (first.returncode, second.returncode) == (0, 0), out_first[-2000:] + out_second[-2000:]
    domains += [int(m) for m in re.findall(r'ROS domain (\d+) \(chosen free', out_second)]
    assert len(domains) == 2 and domains[0] != domains[1], domains
    for run in ('first', 'second'):
        numbers = [meta['episode'] for _, meta in complete_episodes(tmp_path / run)]
        assert sorted(numbers) == [0, 1], (run, numbers)


def test_a_node_warns_when_a_namesake_shares_its_domain(tmp_path):
    """Two graphs on one domain under `ros2 launch` (nobody chose the domain): each node sees
    its twin and says so, naming the way out."""
    pytest.importorskip('rclpy')
    from conftest import free_domain_id
    env = {**os.environ, 'ROS_DOMAIN_ID': str(free_domain_id()), 'PYTHONPATH': ROOT,
           'PYTHONUNBUFFERED': '1', 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    code = ('import rclpy; from hilserl.ros.node import spin_node; '
            'spin_node(lambda: rclpy.create_node("sac_actor", namespace="arm"))')
    twins = [subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        line = twins[0].stdout.readline()
        deadline = time.monotonic() + 120
        while 'another node named' not in line and time.monotonic() < deadline:
            line = twins[0].stdout.readline()
        assert 'another node named /arm/sac_actor is on ROS domain' in line, line
        assert 'ROS_DOMAIN_ID' in line
    finally:
        for twin in twins:
            twin.send_signal(signal.SIGINT)
        for twin in twins:
            twin.communicate(timeout=60)
    assert [t.returncode for t in twins] == [0, 0]
