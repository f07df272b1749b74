"""Actor and learner on two machines: two network namespaces joined by a veth pair, made by this
test (root only), the robot's half of the training graph (driver, camera, simulated human, actor,
recorder: `hilserl train --part robot`) in one and the learner (`--part learner`) in the other,
DDS discovery over the subnet (`--discovery subnet`). Transitions reach the learner and its
weights come back to the actor. The namespaces have no other interface: no traffic leaves them.
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY_TRAIN_CONFIG, free_domain_id


def _ip(*args, check=True):
    return subprocess.run(['ip', *args], capture_output=True, text=True, check=check)


@pytest.fixture
def two_machines():
    if os.geteuid() != 0:
        pytest.skip('network namespaces need root')
    tag = os.getpid() % 100000
    robot, learner = f'hil_r{tag}', f'hil_l{tag}'
    if _ip('netns', 'add', robot, check=False).returncode != 0:
        pytest.skip('cannot create network namespaces here (ip netns add failed)')
    try:
        _ip('netns', 'add', learner)
        _ip('link', 'add', f'hvr{tag}', 'type', 'veth', 'peer', 'name', f'hvl{tag}')
        for ns, dev, address in ((robot, f'hvr{tag}', '10.213.7.1/24'),
                                 (learner, f'hvl{tag}', '10.213.7.2/24')):
            _ip('link', 'set', dev, 'netns', ns)
            _ip('-n', ns, 'addr', 'add', address, 'dev', dev)
            _ip('-n', ns, 'link', 'set', 'lo', 'up')
            _ip('-n', ns, 'link', 'set', dev, 'up', 'multicast', 'on')
            _ip('-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', dev)  # SPDP multicast
        yield robot, learner, tag
    finally:
        for ns in (robot, learner):
            _ip('netns', 'del', ns, check=False)  # takes the veth pair with it


def test_actor_and_learner_on_two_machines(two_machines, tmp_path):
    robot, learner, tag = two_machines
    for ns in (robot, learner):  # each sees only its loopback and its end of the veth
        links = re.findall(r'^\d+: ([^:@]+)', _ip('-n', ns, 'link', 'show').stdout, re.M)
        assert sorted(links) == sorted(['lo', f'hvr{tag}' if ns == robot else f'hvl{tag}'])
    config = tmp_path / 'tiny.yaml'
    config.write_text(TINY_TRAIN_CONFIG)
    common = ['train', '--discovery', 'subnet', '--config', str(config),
              '--domain-id', str(free_domain_id()), '--device', 'cpu', '--max-minutes', '8']
    hilserl = [sys.executable, '-m', 'hilserl_tools.cli']
    learner_log = open(tmp_path / 'learner.log', 'w')
    learner_proc = subprocess.Popen(
        ['ip', 'netns', 'exec', learner, *hilserl, *common, '--part', 'learner',
         '--run-dir', str(tmp_path / 'learner_run'), '--demos', '0'],
        stdout=learner_log, stderr=subprocess.STDOUT)
    summary = re.compile(r'transitions received (\d+), stored (\d+), dropped (\d+), '
                         r'missing (\d+)')
    try:
        robot_run = subprocess.run(
            ['ip', 'netns', 'exec', robot, *hilserl, *common, '--part', 'robot',
             '--run-dir', str(tmp_path / 'robot_run'), '--episodes', '3'],
            capture_output=True, text=True, timeout=600)
        sent = sum(map(int, re.findall(r'episode \d+ ended: \w+, (\d+) steps', robot_run.stdout)))
        deadline = time.monotonic() + 60  # the learner's summary line comes every 10 s
        while time.monotonic() < deadline:
            found = summary.findall((tmp_path / 'learner.log').read_text())
            if found and int(found[-1][0]) >= sent:
                break
            time.sleep(1)
    finally:
        learner_proc.send_signal(signal.SIGINT)  # `ip netns exec` execs: the signal is hilserl's
        try:
            learner_proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            learner_proc.kill()
        learner_log.close()
    out = robot_run.stdout
    learner_out = (tmp_path / 'learner.log').read_text()
    assert robot_run.returncode == 0, out[-3000:] + learner_out[-3000:]
    assert 'sac_learner' not in out.split('\n')[0]  # the robot side runs no learner
    ended = re.findall(r'episode (\d+) ended: \w+, (\d+) steps.*policy weights step (-?\d+)', out)
    assert len(ended) == 3, out[-3000:]
    assert int(ended[-1][2]) >= 1, (ended, learner_out[-3000:])  # the learner's weights came back
    # every transition of the robot's episodes reached the learner, none missing
    sent = sum(int(steps) for _, steps, _ in ended)
    summaries = summary.findall(learner_out)
    assert summaries, learner_out[-3000:]
    received, stored, dropped, missing = map(int, summaries[-1])
    assert received == stored == sent and dropped == missing == 0, (summaries[-1], sent)
    assert (tmp_path / 'learner_run' / 'metrics.csv').is_file()
