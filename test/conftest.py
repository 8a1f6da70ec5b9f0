"""Shared test set-up. ROS tests use real DDS: a random domain per test session, localhost only.

The ROS fixtures skip, with the reason, where rclpy or the built anymo_ros messages are missing
(`bash scripts/test.sh` builds them and sources scripts/env.sh first).
"""
from __future__ import annotations

import os
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

# Before anything imports rclpy; inherited by every node process a test starts. A domain of its
# own keeps parallel test runs on one machine apart, and discovery stays on this machine.
os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

try:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.msg import Log
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
except ImportError as error:
    ROS_UNAVAILABLE = f"ROS 2 Python packages are not importable ({error}); run: bash scripts/test.sh"
else:
    try:
        from anymo_ros.msg import MovingObjectArray
        from anymo_ros.ros.qos import input_qos, output_qos
        from anymo_ros.ros.segment_node import SegmentNode
        from anymo_ros.ros.spinning import ExecutorThread
        ROS_UNAVAILABLE = None
    except ImportError as error:
        ROS_UNAVAILABLE = (f"anymo_ros messages are not built ({error}); "
                           "run: bash scripts/setup_env.sh && source scripts/env.sh")

REPO_ROOT = Path(__file__).resolve().parents[1]
ROS_TIMEOUT = 20.0  # s; generous for a loaded 2-core machine, never reached when things work


def wait_until(condition: Callable[[], Any], timeout: float = ROS_TIMEOUT, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy and return its value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


class Inbox:
    """Messages received by a subscription, safe to read from the test thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list = []

    def __call__(self, msg) -> None:
        with self._lock:
            self._messages.append(msg)

    @property
    def messages(self) -> list:
        with self._lock:
            return list(self._messages)

    def wait_for_count(self, count: int, timeout: float = ROS_TIMEOUT) -> list:
        return wait_until(lambda: len(self.messages) >= count and self.messages, timeout,
                          f"{count} message(s) (have {len(self.messages)})")


class RosHarness:
    """A test's view of the ROS graph: its own namespace, a helper node for publishers and
    subscribers, and segment nodes started in this process (same executor, still real DDS). The
    executor spins in a background thread and belongs to the test."""

    def __init__(self) -> None:
        self.spinner = ExecutorThread(MultiThreadedExecutor(num_threads=4), "test_executor").start()
        self.executor = self.spinner.executor
        self.namespace = f"/test_{uuid.uuid4().hex[:8]}"
        self.image_topic = f"{self.namespace}/camera/image_raw"
        self.node = Node("harness", namespace=self.namespace)
        self._segment_nodes: list = []
        self.executor.add_node(self.node)

    def start_segment_node(self, **parameters):
        """An in-process segment_node in this test's namespace; quick diagnostics by default."""
        values = {"image_topic": self.image_topic, "diagnostics_period": 0.25,
                  "pipeline.processing_width": 320, **parameters}
        node = SegmentNode(namespace=self.namespace,
                           parameter_overrides=[Parameter(name, value=value) for name, value in values.items()])
        self._segment_nodes.append(node)
        self.executor.add_node(node)
        return node

    def subscribe(self, message_type, topic: str, qos=None) -> Inbox:
        inbox = Inbox()
        self.node.create_subscription(message_type, topic, inbox, qos or output_qos())
        return inbox

    def subscribe_masks(self) -> Inbox:
        return self.subscribe(MovingObjectArray, f"{self.namespace}/moving_objects/masks")

    def subscribe_rosout(self) -> Inbox:
        """Log lines of every node, including those logged before subscribing (transient local)."""
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        return self.subscribe(Log, "/rosout", qos)

    def subscribe_diagnostics(self) -> Inbox:
        return self.subscribe(DiagnosticArray, "/diagnostics")

    def image_publisher(self, message_type=None, topic: str | None = None, reliable: bool = False):
        """A publisher on the camera topic, returned once matched with a subscriber, and with the
        subscription of every in-process segment node (else its first messages could be lost)."""
        publisher = self.node.create_publisher(message_type or Image, topic or self.image_topic,
                                               input_qos(reliable))
        wait_until(lambda: publisher.get_subscription_count() > 0
                   and all(node.subscription.get_publisher_count() > 0 for node in self._segment_nodes),
                   what=f"publisher and subscriber on {publisher.topic_name} to match")
        return publisher

    def close(self) -> None:
        # Stopped before any node is destroyed: rclpy's executors are not safe against a node
        # destroyed while they spin. In a thread of its own, so that a callback that never ends
        # fails the test instead of hanging the run (a multi-threaded executor's shutdown joins
        # its workers).
        stopper = threading.Thread(target=self.spinner.stop, name="test_executor_stop", daemon=True)
        stopper.start()
        stopper.join(timeout=ROS_TIMEOUT)
        assert not stopper.is_alive(), \
            f"the test executor did not stop in {ROS_TIMEOUT:.0f} s: a callback is still running"
        for node in self._segment_nodes:
            node.destroy_node()
        self.node.destroy_node()
        if self.spinner.error is not None:
            raise AssertionError("a callback raised and stopped the test executor") from self.spinner.error


@pytest.fixture(scope="session")
def ros_context():
    """rclpy initialised once per session."""
    if ROS_UNAVAILABLE:
        pytest.skip(ROS_UNAVAILABLE)
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture
def ros(ros_context):
    harness = RosHarness()
    yield harness
    harness.close()

