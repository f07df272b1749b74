"""Run a graph (hilserl.ros.graph) with one process per node, as `ros2 launch` would, on machines
without a ROS 2 distro. Output lines are prefixed with the node name; Ctrl-C (or the end of an
eval, or a time limit) sends SIGINT to every node, then SIGTERM/SIGKILL to stragglers.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import yaml

from hilserl.ros.graph import NODE_ENVIRONMENT, NodeSpec, node_namespace, node_remappings


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _die_with_parent() -> None:
    """Child side of Popen (Linux): the node gets SIGINT (a clean stop: bags closed, final
    checkpoint) when the `hilserl` process that started it dies, however it dies, so no node
    is ever left running as an orphan. SIGINT is restored to its default first: a `hilserl`
    started in the background by a script (`cmd &`) ignores it, and its nodes would inherit that
    and ignore both this and stop()."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGINT))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _QuotedStrings(yaml.SafeDumper):
    """Every string quoted: ROS's parameter-file parser reads a plain `1e4`, `true` or `12` as a
    number or bool, and the node then refuses the parameter's type."""


_QuotedStrings.add_representer(
    str, lambda dumper, text: dumper.represent_scalar('tag:yaml.org,2002:str', text, style="'"))


def node_command(spec: NodeSpec, params_dir: Path, namespace: str = '') -> List[str]:
    generated = params_dir / f'{spec.label}.yaml'
    generated.parent.mkdir(parents=True, exist_ok=True)
    # '/**/name': the node in any namespace (a bare name would not match under namespace:=arm1)
    generated.write_text(yaml.dump({f'/**/{spec.name}': {'ros__parameters': spec.parameters}},
                                   Dumper=_QuotedStrings))
    cmd = [sys.executable, '-m', spec.module, '--ros-args', '-r', f'__node:={spec.name}']
    if spec.enclave:  # its SROS2 keys and permissions, where the graph runs with a keystore
        cmd += ['--enclave', spec.enclave]
    full_namespace = node_namespace(namespace, spec)
    if full_namespace:
        cmd += ['-r', f'__ns:={full_namespace}']
    for source, target in node_remappings(namespace, spec):
        cmd += ['-r', f'{source}:={target}']
    for path in spec.parameter_files:
        cmd += ['--params-file', str(path)]
    cmd += ['--params-file', str(generated)]  # last wins: the graph's values override the robot's
    return cmd


class ProcessGraph:
    def __init__(self, nodes: Sequence[NodeSpec], params_dir, namespace: str = '',
                 env: Optional[Dict[str, str]] = None, output: Callable[[str], None] = print,
                 domain_id: Optional[int] = None):
        self.nodes = list(nodes)
        self.params_dir = Path(params_dir)
        self.namespace = namespace
        self.env = dict(os.environ if env is None else env)
        for key, value in NODE_ENVIRONMENT.items():
            self.env.setdefault(key, value)
        if domain_id is not None:
            self.env['ROS_DOMAIN_ID'] = str(domain_id)
        self.output = output
        self.processes: Dict[str, subprocess.Popen] = {}
        self._threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._sigint_before_stop = None  # the Ctrl-C handler to restore once stopped

    def start(self) -> None:
        for spec in self.nodes:
            # Other nodes get their own session, so Ctrl-C reaches them only through stop();
            # a keyboard teleop keeps the terminal (and gets Ctrl-C directly, which it handles).
            terminal = spec.needs_terminal and sys.stdin.isatty()
            proc = subprocess.Popen(node_command(spec, self.params_dir, self.namespace),
                                    env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT,
                                    stdin=None if terminal else subprocess.DEVNULL,
                                    text=True, bufsize=1, start_new_session=not terminal,
                                    preexec_fn=_die_with_parent)
            self.processes[spec.label] = proc
            thread = threading.Thread(target=self._pump, args=(spec.label, proc), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self._lock:
                self.output(f'[{name}] {line.rstrip()}')

    def exited(self) -> Dict[str, int]:
        return {name: p.returncode for name, p in self.processes.items()
                if p.poll() is not None}

    def wait(self, until: Callable[['ProcessGraph'], bool], timeout_s: Optional[float] = None,
             poll_s: float = 0.2) -> str:
        """Block until `until(self)` is true, a node dies, Ctrl-C (or SIGTERM, or SIGHUP: a
        closed terminal), or the timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, _interrupt)
        try:
            while True:
                if until(self):
                    return 'done'
                died = {n: c for n, c in self.exited().items() if c != 0}
                if died:
                    return f'node exited with an error: {died}'
                if deadline is not None and time.monotonic() > deadline:
                    return 'time limit reached'
                time.sleep(poll_s)
        except KeyboardInterrupt:
            if threading.current_thread() is threading.main_thread():
                # the terminal's second Ctrl-C may come before stop() starts
                self._sigint_before_stop = signal.signal(signal.SIGINT, signal.SIG_IGN)
            return 'interrupted'
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self, grace_s: float = 30.0) -> Dict[str, int]:
        """SIGINT everyone (nodes close cleanly: bags, checkpoints), then escalate. Another
        Ctrl-C (or SIGTERM, SIGHUP) while the nodes close neither cuts that short nor prints a
        traceback: the nodes got it too and ignore it while closing."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, signal.SIG_IGN)
            if self._sigint_before_stop is not None:
                # stopped by Ctrl-C: the command is ending; the terminal's second press may come
                # after the nodes have closed, and must not turn the clean exit into a kill
                del previous[signal.SIGINT]
                self._sigint_before_stop = None
        try:
            return self._stop(grace_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, grace_s: float) -> Dict[str, int]:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for name, proc in self.processes.items():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.output(f'[{name}] did not stop in {grace_s:.0f} s: terminating')
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for thread in self._threads:
            thread.join(timeout=2)
        return {name: p.returncode for name, p in self.processes.items()}
