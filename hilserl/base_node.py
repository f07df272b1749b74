"""rclpy helpers shared by every node: QoS from the conventions, parameter declaration, and a
`main()` runner that shuts down cleanly on Ctrl-C / launch's SIGINT (exit code 0)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from hilserl.conventions import QosSpec, qos_for


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


def spin_node(node_factory: Callable[[], 'rclpy.node.Node'], args=None, executor=None) -> int:
    """Create a node, spin it, and always destroy it and shut down rclpy; returns exit code."""
    rclpy.init(args=args)
    node = None
    try:
        node = node_factory()
        executor = executor or SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, 'close', None)
            if callable(close):
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
