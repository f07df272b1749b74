"""reward_classifier node: success probability from the policy views.

Subscribes  <name>_cam/image_crop of each camera the classifier was trained on (sensor_msgs/
            Image; gripper_cam/image_crop for the gripper camera alone).
Publishes   reward_classifier/probability (Float32), reward_classifier/success (Bool, after
            `debounce_frames` consecutive frames at or above `threshold`), diagnostics
            (reward_classifier; reward_classifier/lighting: WARN while the images have stayed
            outside the brightness/contrast the classifier was trained on for
            `lighting_drift_s`, by the images' stamps; the first such drift is also logged).
`threshold` can be changed at runtime (validated to lie in (0, 1)). The reward is not made here:
the actor's RewardTracker (hilserl/learning/task.py) turns success into reward and episode ends.
"""
from __future__ import annotations

import sys
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Float32

from hilserl.ros.interfaces import classifier_interface
from hilserl.ros.node import check_interface, declare, diagnostic_array, qos_profile, spin_node
from hilserl.messages.conventions import Topics, camera_topics
from hilserl.messages.conversions import (ConversionError, image_to_array, stamp_to_nanoseconds,
                                          stamp_to_seconds)
from hilserl.messages.diagnostics import OK, WARN, DiagnosticEntry
from reward_classifier_node.inference import SuccessDetector, ViewAligner
from reward_classifier_node.lighting import drift_tracker, unchecked_entry
from reward_classifier_node.model import check_frame_size, load_classifier


class ClassifierNode(Node):
    def __init__(self, **kwargs):
        super().__init__('reward_classifier', **kwargs)
        model_dir = declare(self, 'model_dir', '', 'classifier checkpoint directory '
                            '(config.json + model.safetensors)', read_only=True)
        threshold = declare(self, 'threshold', 0.0, 'success threshold in (0, 1); 0 uses the '
                            "checkpoint's validated threshold", float_range=(0.0, 1.0))
        debounce = declare(self, 'debounce_frames', 3, 'consecutive frames above threshold '
                           'before success is reported', int_range=(1, 100), read_only=True)
        drift_s = declare(self, 'lighting_drift_s', 5.0, 'seconds the camera images must stay '
                          'outside the brightness/contrast range the classifier was trained on '
                          '(lighting.json beside the model) before a diagnostic warning; 0 turns '
                          'the check off', float_range=(0.0, 3600.0), read_only=True)
        graph_cameras = declare(self, 'camera_names', ['gripper'], 'the graph\'s cameras '
                                '(image.cameras): the classifier must have been trained on them',
                                read_only=True)
        if not model_dir:
            raise ValueError('reward_classifier needs model_dir (train one with '
                             '`hilserl train-classifier`)')
        import torch
        torch.set_num_threads(1)
        model, saved_threshold, _ = load_classifier(model_dir)
        cameras = model.config.cameras
        if list(cameras) != list(graph_cameras):
            raise ValueError(f'classifier {model_dir} was trained with cameras {list(cameras)} '
                             f'but the graph has {list(graph_cameras)} (image.cameras); train '
                             'it with the same cameras (hilserl train-classifier --config)')
        self.aligner = ViewAligner(cameras)
        self.detector = SuccessDetector(model, threshold or saved_threshold, debounce)
        self.bad_frames = 0
        self.lighting, self.lighting_off = drift_tracker(model_dir, drift_s)
        if self.lighting_off:
            self.get_logger().info(f'lighting drift check off: {self.lighting_off}')
        self.add_on_set_parameters_callback(self._on_parameters)
        self.prob_pub = self.create_publisher(Float32, Topics.SUCCESS_PROBABILITY,
                                              qos_profile(Topics.SUCCESS_PROBABILITY))
        self.success_pub = self.create_publisher(Bool, Topics.SUCCESS, qos_profile(Topics.SUCCESS))
        self.diag_pub = self.create_publisher(DiagnosticArray, Topics.DIAGNOSTICS,
                                              qos_profile(Topics.DIAGNOSTICS))
        for camera in cameras:
            topic = camera_topics(camera)[1]
            self.create_subscription(Image, topic,
                                     lambda msg, camera=camera: self._on_image(msg, camera),
                                     qos_profile(topic))
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(f'reward_classifier up: {model_dir}, threshold '
                               f'{self.detector.threshold:.3f}, debounce {debounce}')
        check_interface(self, classifier_interface(cameras))

    def _on_parameters(self, params):
        for p in params:
            if p.name == 'threshold':
                try:
                    self.detector.set_threshold(p.value if p.value else self.detector.threshold)
                except ValueError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _on_image(self, msg: Image, camera: str):
        try:
            view = image_to_array(msg)
            if view.shape[2] != 3:
                raise ConversionError(f'expected an rgb image, got {msg.encoding}')
            check_frame_size(self.detector.model, view.shape[:2])
        except (ConversionError, ValueError) as exc:  # ValueError: not the classifier's size
            self.bad_frames += 1
            self.get_logger().warning(f'frame ignored: {exc}', throttle_duration_sec=2.0)
            return
        if self.lighting is not None and camera == self.aligner.cameras[0]:
            # the lighting range is the first camera's (the one it was measured on)
            stamp_s = stamp_to_seconds(msg.header.stamp) or \
                self.get_clock().now().nanoseconds * 1e-9  # an unstamped image: arrival time
            drift = self.lighting.update(view, stamp_s)
            if drift.log_line:
                self.get_logger().warning(drift.log_line)
            if drift.changed:
                self._publish_diagnostics()
        views = self.aligner.add(camera, stamp_to_nanoseconds(msg.header.stamp), view)
        if views is None:  # the other cameras' views of this frame are on their way
            return
        prob, success = self.detector.update(views)
        self.prob_pub.publish(Float32(data=prob))
        self.success_pub.publish(Bool(data=success))

    def _publish_diagnostics(self):
        p50, p99 = self.detector.latency_ms(0.5), self.detector.latency_ms(0.99)
        values = {'threshold': f'{self.detector.threshold:.3f}', 'bad_frames': str(self.bad_frames),
                  'latency_p50_ms': f'{p50:.2f}' if p50 else '',
                  'latency_p99_ms': f'{p99:.2f}' if p99 else ''}
        level = WARN if self.bad_frames else OK
        lighting = (self.lighting.entry() if self.lighting is not None
                    else unchecked_entry(self.lighting_off))
        self.diag_pub.publish(diagnostic_array(
            [DiagnosticEntry('reward_classifier', level, 'running', values), lighting],
            self.get_clock().now().to_msg()))


def main(args=None):
    return spin_node(ClassifierNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
