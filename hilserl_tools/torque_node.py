"""`hilserl torque on|off`: call the driver's `torque` service (std_srvs/SetBool) from a
short-lived node of its own context, e.g. to re-arm after a lock-out once the servo has cooled."""
from __future__ import annotations

import time
from typing import Tuple

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import SetBool


def call_torque(enable: bool, namespace: str = '', timeout_s: float = 20.0) -> Tuple[bool, str]:
    """(success, the driver's message); (False, why) when no driver answers in `timeout_s`."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node('hilserl_torque', namespace=namespace or None, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        client = node.create_client(SetBool, 'torque')
        deadline = time.monotonic() + timeout_s
        while not client.wait_for_service(timeout_sec=0.5):
            if time.monotonic() > deadline:
                where = f'{namespace}/torque' if namespace else 'torque'
                return False, (f'no driver offers the {where} service (is the graph running, '
                               'on this ROS_DOMAIN_ID and namespace?)')
        future = client.call_async(SetBool.Request(data=enable))
        while not future.done():
            if time.monotonic() > deadline:
                return False, 'the driver did not answer the torque request'
            executor.spin_once(timeout_sec=0.2)
        response = future.result()
        return bool(response.success), response.message
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
