"""rclpy helpers shared by every node: QoS from the conventions, parameter declaration, and a
`main()` runner that shuts down cleanly on Ctrl-C / launch's SIGINT (exit code 0; 1 for a node
that cannot start)."""
from __future__ import annotations

import collections
import io
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional, Sequence

import rclpy
import rclpy.clock
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from hilserl.messages.conventions import QosSpec, qos_for
from hilserl.ros.interfaces import NodeInterface, ros_node_basics


def qos_profile(spec_or_topic) -> QoSProfile:
    """QoSProfile for a `QosSpec` or for one of the suite's topic names."""
    spec = spec_or_topic if isinstance(spec_or_topic, QosSpec) else qos_for(spec_or_topic)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=spec.depth,
        reliability=ReliabilityPolicy.RELIABLE if spec.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if spec.transient_local
                    else DurabilityPolicy.VOLATILE),
    )


def describe(description: str, *, float_range: Optional[Sequence[float]] = None,
             int_range: Optional[Sequence[int]] = None, read_only: bool = False,
             step: float = 0.0) -> ParameterDescriptor:
    """ParameterDescriptor with an optional numeric range (ROS enforces it on set)."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if float_range is not None:
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(float_range[0]), to_value=float(float_range[1]), step=float(step))]
    if int_range is not None:
        descriptor.integer_range = [IntegerRange(
            from_value=int(int_range[0]), to_value=int(int_range[1]), step=int(step))]
    return descriptor


ORPHAN_POLL_S = 0.5          # how often a node checks that its parent is still there
ORPHAN_EXTRA_GRACE_S = 10.0  # beyond the node's own close time, before an orphan exits hard


class StopFlag:
    """A stop request that a signal handler may set: one attribute assignment, no lock.
    threading.Event.set takes a lock; a second signal arriving inside the first handler's set()
    blocked on that lock for ever (seen: SIGINT from the parent's stop, then its death signal),
    and so did the orphan watchdog's set() behind it."""

    def __init__(self):
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested


class NodeStartError(RuntimeError):
    """A node that cannot start for a reason the user can act on (a bus that does not answer,
    a missing file): spin_node prints it in one line and exits 1, without a traceback."""


def check_interface(node, interface: NodeInterface) -> None:
    """Refuse a node whose publishers, subscriptions, services or clients differ from what
    hilserl/ros/interfaces.py declares for it (names resolved: namespace, remappings): the SROS2
    policy grants each node's enclave exactly that. Called at the end of a node's __init__."""
    everything = interface | ros_node_basics(node.get_parameter('use_sim_time').value)
    topic, service = node.resolve_topic_name, node.resolve_service_name
    problems = []
    for what, own, allowed, made, resolve in (
            ('publishes', interface.publish, everything.publish,
             [p.topic_name for p in node.publishers], topic),
            ('subscribes to', interface.subscribe, everything.subscribe,
             [s.topic_name for s in node.subscriptions], topic),
            ('serves', interface.serve, everything.serve, [s.srv_name for s in node.services],
             service),
            ('calls', interface.call, everything.call, [c.srv_name for c in node.clients],
             service)):
        made = {resolve(name) for name in made}
        undeclared = made - {resolve(name) for name in allowed}
        unused = {resolve(name) for name in own} - made
        if undeclared:
            problems.append(f'{what} {sorted(undeclared)} not declared')
        if unused:
            problems.append(f'declares but never {what} {sorted(unused)}')
    if problems:
        raise RuntimeError(f'{node.get_fully_qualified_name()} {"; ".join(problems)} in '
                           'hilserl/ros/interfaces.py (its SROS2 permissions come from there)')


def spin_node(node_factory: Callable[[], 'rclpy.node.Node'], args=None, executor=None) -> int:
    """Create a node, spin it, and always destroy it and shut down rclpy; returns exit code.

    SIGINT, SIGTERM and SIGHUP ask the loop to stop between callbacks: a callback is never cut
    in the middle (a bag being closed, a checkpoint being written), as rclpy's own handler
    chained to Python's KeyboardInterrupt would. While the node is still being built, SIGINT
    interrupts that as before."""
    import faulthandler
    if hasattr(signal, 'SIGUSR1'):  # `kill -USR1 PID` prints every thread's stack (a hang)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop_requested = StopFlag()
    spinning = [False]

    def request_stop(signum, _frame):
        stop_requested.set()
        if signum == signal.SIGINT and not spinning[0]:
            raise KeyboardInterrupt

    _init_without_signal_handlers(args)
    built = []  # the node, once built: the orphan watchdog reads its close_timeout_s
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, 'SIGHUP', None)):
            if sig is not None:
                signal.signal(sig, request_stop)
        _stop_when_the_parent_dies(stop_requested, built)
    node = None
    try:
        try:
            node = node_factory()
            built.append(node)
        except NodeStartError as exc:
            print(f'cannot start: {exc}', file=sys.stderr, flush=True)
            return 1
        _guard_sim_clock(node)
        executor = executor or SingleThreadedExecutor()
        executor.add_node(node)
        spinning[0] = True
        namesakes = _NamesakeWatch(node)
        # a node that sets `finished` (e.g. the actor after its last eval episode) ends the process
        while rclpy.ok() and not stop_requested.is_set() and \
                not getattr(node, 'finished', False):
            executor.spin_once(timeout_sec=0.1)
            namesakes.poll()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001
        # A callback or rclpy's own take raced a shutdown of the context (rclpy's own signal
        # handler, where spin_node could not replace it): a clean exit. Give it a moment.
        deadline = time.monotonic() + 1.0
        while rclpy.ok() and time.monotonic() < deadline:
            time.sleep(0.05)
        if rclpy.ok():
            raise
    finally:
        # Closing keeps data (the open bag, the final checkpoint, the arm's exit move): a second
        # Ctrl-C, launch's forwarded SIGINT or its SIGTERM must not cut it short with a traceback.
        # They stay ignored until the process exits (this runs as a node's main).
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, 'SIGHUP', None)):
                if sig is not None:
                    signal.signal(sig, signal.SIG_IGN)
        # A launch that died (SIGKILL, SIGTERM) took the read end of our output with it: a
        # line printed while closing must not abort the closing (BrokenPipeError).
        sys.stdout, sys.stderr = _Unbreakable(sys.stdout), _Unbreakable(sys.stderr)
        # A close that hangs must not keep the process forever (ignoring signals): after the
        # node's close_timeout_s, print where it hangs and exit.
        faulthandler.dump_traceback_later(getattr(node, 'close_timeout_s', 20.0), exit=True)
        if node is not None:
            close = getattr(node, 'close', None)
            if callable(close):
                close()
            node.destroy_node()
        rclpy.try_shutdown()
        faulthandler.cancel_dump_traceback_later()
    return 0


class _NamesakeWatch:
    """Warns once when another node with this node's full name is on the domain: a second
    graph started on the same domain (two `ros2 launch` in two terminals), whose driver, actor
    and recorder would take this graph's messages as their own. Checked a few times while
    discovery settles, then never again (it costs a graph query)."""

    CHECK_AFTER_S = (3.0, 10.0, 30.0)

    def __init__(self, node):
        self._node = node
        self._started = time.monotonic()
        self._checks = list(self.CHECK_AFTER_S)

    def poll(self) -> None:
        if not self._checks or time.monotonic() - self._started < self._checks[0]:
            return
        self._checks.pop(0)
        try:
            peers = self._node.get_node_names_and_namespaces()
        except Exception:  # noqa: BLE001 - a graph query racing shutdown: nothing to warn about
            return
        name, namespace = self._node.get_name(), self._node.get_namespace()
        if sum(1 for peer in peers if tuple(peer) == (name, namespace)) > 1:
            self._checks.clear()
            full = f'{namespace.rstrip("/")}/{name}'
            self._node.get_logger().warning(
                f'another node named {full} is on ROS domain {os.environ.get("ROS_DOMAIN_ID", "0")}'
                f': another graph runs there, and the two would exchange actions, episodes and '
                f'weights. Stop it, or start this graph on a domain of its own (ROS_DOMAIN_ID=N '
                f'ros2 launch ..., or `hilserl` without --domain-id: it picks a free one)')


def _guard_sim_clock(node) -> None:
    """With use_sim_time, rclpy's own /clock subscription raises on a time it cannot hold
    (negative seconds), and the node would die of it: any participant on the domain can publish
    on /clock. Such messages are dropped and counted (`node.bad_clock_messages`)."""
    source = getattr(node, '_time_source', None)
    subscription = getattr(source, '_clock_sub', None)
    if subscription is None:  # wall clock (or an rclpy that keeps it elsewhere)
        return
    node.bad_clock_messages = 0
    forward = source.clock_callback

    def checked(msg) -> None:
        if msg.clock.sec < 0:
            node.bad_clock_messages += 1
            node.get_logger().warning(f'/clock message with negative time ignored '
                                      f'({node.bad_clock_messages} so far)',
                                      throttle_duration_sec=5.0)
            return
        forward(msg)
    subscription.callback = checked


class _Unbreakable(io.TextIOBase):
    """A text stream whose writes never raise: output nobody can read any more is dropped."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return False


def _stop_when_the_parent_dies(stop_requested: 'StopFlag', built: list) -> None:
    """Linux: SIGINT when the process that started this node (ros2 launch, `hilserl`) dies,
    however it dies (SIGKILL, or a launch that exits on SIGTERM or SIGHUP without waiting for
    its nodes): an orphaned driver would hold the arm under torque with nobody watching.
    A watchdog thread also sees the parent go (the signal is bound to the thread that forked
    us, and a stop can hang in a callback that never returns): it asks for the stop and, if
    the process is still there after the node's close time, prints every stack and exits."""
    parent = os.getppid()
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGINT))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    threading.Thread(target=_orphan_watchdog, args=(parent, stop_requested, built),
                     name='orphan-watchdog', daemon=True).start()


def _orphan_watchdog(parent: int, stop_requested: 'StopFlag', built: list) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL_S)
    stop_requested.set()
    close_s = getattr(built[0], 'close_timeout_s', 20.0) if built else 20.0
    time.sleep(close_s + ORPHAN_EXTRA_GRACE_S)
    import faulthandler
    try:
        print(f'parent {parent} is gone and the node did not stop within '
              f'{close_s + ORPHAN_EXTRA_GRACE_S:.0f} s: exiting', file=sys.stderr, flush=True)
        faulthandler.dump_traceback(all_threads=True)
    except (OSError, ValueError):
        pass
    os._exit(1)


def _init_without_signal_handlers(args) -> None:
    """rclpy.init without rclpy's SIGINT/SIGTERM handlers (spin_node has its own); distros
    whose rclpy lacks the option keep rclpy's."""
    try:
        from rclpy.signals import SignalHandlerOptions
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except (ImportError, TypeError):
        rclpy.init(args=args)


def declare(node, name: str, default, description: str, **descriptor_kwargs):
    """Declare one parameter with a descriptor and return its value."""
    node.declare_parameter(name, default, describe(description, **descriptor_kwargs))
    return node.get_parameter(name).value


def declare_config(node, cls, read_only: bool = True) -> dict:
    """Declare every `hilserl.configuration.parameters.param` field of the dataclass `cls` as a
    parameter (default, description and range from the field) and return their values as
    keyword arguments for `cls` (lists back to tuples where the default is a tuple)."""
    from hilserl.configuration.parameters import parameter_fields
    values = {}
    for name, default, spec in parameter_fields(cls):
        ranges = {k: spec[k] for k in ('float_range', 'int_range') if spec[k] is not None}
        value = declare(node, name, list(default) if isinstance(default, tuple) else default,
                        spec['description'], read_only=read_only, **ranges)
        values[name] = tuple(value) if isinstance(default, tuple) else value
    return values


def hold_run_lock(node, directory):
    """Declare `run_lock` and hold `directory`'s lock as one of the graph's nodes for the life
    of the process (hilserl.common.run_lock): before the node writes anything there. Another
    graph's lock is a NodeStartError (one line naming its PID); a stale one is taken over and
    the node says so. Returns the RunLock (the node releases it when it closes); None for an
    empty `directory` (a node that writes none)."""
    from hilserl.common.run_lock import RunDirInUse, acquire_run_lock
    graph = declare(node, 'run_lock', '', 'the graph this node belongs to (set by the graph): '
                    'its nodes share the lock of the run directory they write; empty: a graph '
                    'of this node alone', read_only=True)
    if not directory:
        return None
    try:
        lock = acquire_run_lock(directory, graph or None)
    except RunDirInUse as exc:
        raise NodeStartError(str(exc)) from None
    if lock.taken_over is not None:
        node.get_logger().warning(lock.takeover_line())
    return lock


def diagnostic_array(entries, stamp, hardware_id: str = ''):
    """hilserl DiagnosticEntry list -> diagnostic_msgs/DiagnosticArray."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    for entry in entries:
        status = DiagnosticStatus(level=bytes([entry.level]), name=entry.name,
                                  message=entry.message, hardware_id=hardware_id)
        status.values = [KeyValue(key=k, value=v) for k, v in entry.values.items()]
        msg.status.append(status)
    return msg


def pose_stamped(pose_4x4, frame_id: str, stamp):
    """4x4 homogeneous transform -> geometry_msgs/PoseStamped."""
    from geometry_msgs.msg import PoseStamped

    from hilserl.robot.kinematics import matrix_to_quaternion_xyzw
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = \
        (float(v) for v in pose_4x4[:3, 3])
    q = matrix_to_quaternion_xyzw(pose_4x4[:3, :3])
    msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, \
        msg.pose.orientation.w = (float(v) for v in q)
    return msg


def marker(marker_id: int, marker_type: int, frame_id: str, stamp, ns: str,
           position_m=(0.0, 0.0, 0.0), scale_m=(0.01, 0.01, 0.01),
           rgba=(1.0, 1.0, 1.0, 1.0), text: str = ''):
    """visualization_msgs/Marker (ADD) with an identity orientation."""
    from visualization_msgs.msg import Marker
    m = Marker()
    m.header.frame_id, m.header.stamp = frame_id, stamp
    m.ns, m.id, m.type, m.action = ns, marker_id, marker_type, Marker.ADD
    m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in position_m)
    m.pose.orientation.w = 1.0
    m.scale.x, m.scale.y, m.scale.z = (float(v) for v in scale_m)
    m.color.r, m.color.g, m.color.b, m.color.a = (float(v) for v in rgba)
    m.text = text
    return m


def message_class(type_name: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    import importlib
    package, _, name = type_name.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


# rmw's name for a publisher whose node it has not learnt yet (discovery of node names lags
# behind that of the publisher: its first messages can arrive before)
_UNKNOWN_NODE = '_NODE_NAME_UNKNOWN_'


def _gid_key(gid) -> bytes:
    """A publisher's GID as bytes, without the padding some rmw versions add."""
    return bytes(gid).rstrip(b'\0')


class TrustedSubscription:
    """A subscription that hands `callback` only the messages of publishers in the nodes named
    `trusted` (node names, any namespace; empty: every publisher): any participant on the
    domain can publish on any topic. Others are refused and counted in `tally`. A publisher is
    known by the GID each message carries (rclpy's MessageInfo) and the graph's endpoint list;
    messages whose publisher's node is not known yet are held, in order, until it is (at most
    `UNKNOWN_GRACE_S`, then refused). An rclpy without publisher GIDs accepts every message.
    `with_publisher`: `callback(msg, publisher GID bytes)` (b'' where unknown), so that a
    stream can be kept apart per publisher."""

    UNKNOWN_GRACE_S = 5.0
    MAX_HELD = 1000          # a flood from an unknown publisher cannot grow memory
    REFRESH_PERIOD_S = 0.05  # graph queries are not free: a flood does not repeat them

    def __init__(self, node, msg_type, topic: str, callback, qos, trusted: Sequence[str],
                 tally, with_publisher: bool = False):
        self.node = node
        self.callback = callback if with_publisher else (lambda msg, _publisher: callback(msg))
        self.trusted = frozenset(name for name in trusted if name)
        self.tally = tally
        self.topic = topic
        self._names = {}   # GID bytes -> node name
        self._held = {}    # GID bytes -> deque of (message, wall time it arrived)
        self._refreshed_s = -1.0
        self.subscription = node.create_subscription(
            msg_type, topic, self._on_message if self.trusted or with_publisher else callback,
            qos)
        if self.trusted:
            node.create_timer(0.1, self._release,
                              clock=rclpy.clock.Clock(clock_type=rclpy.clock.ClockType.STEADY_TIME))

    def _on_message(self, msg, info) -> None:
        gid = info.get('publisher_gid') if isinstance(info, dict) else None
        if gid is None or not self.trusted:  # this rclpy does not say who published, or
            self.callback(msg, b'' if gid is None else _gid_key(gid['data']))  # anyone may
            return
        key = _gid_key(gid['data'])
        name = self._names.get(key)
        if name is not None and key not in self._held:
            self._deliver(key, name, msg)
            return
        if sum(map(len, self._held.values())) >= self.MAX_HELD:
            self._refuse(_UNKNOWN_NODE)  # a flood of unknown origin: the newest goes
        else:
            self._held.setdefault(key, collections.deque()).append((msg, time.monotonic()))
        self._release()

    def _deliver(self, key: bytes, name: str, msg) -> None:
        if name in self.trusted:
            self.callback(msg, key)
        else:
            self._refuse(name)

    def _refresh_names(self, now_s: float) -> None:
        if now_s - self._refreshed_s < self.REFRESH_PERIOD_S:
            return
        self._refreshed_s = now_s
        for info in self.node.get_publishers_info_by_topic(self.subscription.topic_name):
            if info.node_name != _UNKNOWN_NODE:
                self._names[_gid_key(info.endpoint_gid)] = info.node_name

    def _release(self) -> None:
        """Deliver or refuse the held messages, each publisher's in arrival order, once its
        node is known (or refuse them after UNKNOWN_GRACE_S)."""
        if not self._held:
            return
        now_s = time.monotonic()
        self._refresh_names(now_s)
        for key in list(self._held):
            held, name = self._held[key], self._names.get(key)
            while held and (name is not None or now_s - held[0][1] >= self.UNKNOWN_GRACE_S):
                self._deliver(key, name or _UNKNOWN_NODE, held.popleft()[0])
            if not held:
                del self._held[key]

    def _refuse(self, name: str) -> None:
        self.tally.count(self.topic, name)
        self.node.get_logger().warning(
            f'{self.topic}: message from node {name!r} refused (trusted_publishers: '
            f'{sorted(self.trusted)}); {self.tally.total} foreign messages so far',
            throttle_duration_sec=5.0)


TRUSTED_PUBLISHERS_DESCRIPTION = (
    'node names whose messages on {} are accepted (any namespace); others are refused and '
    'counted in diagnostics (foreign_messages). Empty: every publisher (the graph names its own '
    'nodes)')


def declare_trusted_publishers(node, topics: str) -> list:
    """The `trusted_publishers` parameter of a node that guards `topics` (words for the
    description)."""
    return list(declare(node, 'trusted_publishers', [''],
                        TRUSTED_PUBLISHERS_DESCRIPTION.format(topics), read_only=True))
