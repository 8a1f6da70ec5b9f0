"""ExecutorThread: an executor spun in the background, stopped before its nodes are destroyed."""
import time

import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not importable; run: bash scripts/test.sh")
from conftest import wait_until  # noqa: E402
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402

from anymo_ros.ros.spinning import ExecutorThread  # noqa: E402


@pytest.mark.parametrize("executor_type", [SingleThreadedExecutor, MultiThreadedExecutor])
def test_no_callback_runs_after_stop(ros_context, executor_type):
    node = Node("spinning_test")
    calls = []
    node.create_timer(0.001, lambda: calls.append(time.monotonic()))
    executor = executor_type()
    executor.add_node(node)
    spinner = ExecutorThread(executor, "spinning_test").start()
    wait_until(lambda: len(calls) >= 5, what="the timer to fire")
    spinner.stop(timeout=5.0)
    stopped_with = len(calls)
    time.sleep(0.05)
    assert len(calls) == stopped_with and spinner.error is None
    node.destroy_node()


def test_a_raising_callback_ends_spinning_and_is_kept(ros_context):
    node = Node("spinning_test")

    def fail():
        raise ValueError("callback failed")

    node.create_timer(0.001, fail)
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    spinner = ExecutorThread(executor, "spinning_test").start()
    wait_until(lambda: spinner.error is not None, what="the callback's error")
    spinner.stop(timeout=5.0)
    assert isinstance(spinner.error, ValueError) and str(spinner.error) == "callback failed"
    node.destroy_node()


def test_stop_reports_a_callback_that_does_not_return(ros_context):
    node = Node("spinning_test")
    release = []
    node.create_timer(0.001, lambda: wait_until(lambda: release, timeout=30.0))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = ExecutorThread(executor, "spinning_test").start()
    time.sleep(0.05)
    with pytest.raises(RuntimeError, match="spinning_test: a callback did not return within 0.2 s"):
        spinner.stop(timeout=0.2)
    release.append(True)
    spinner.stop(timeout=5.0)
    node.destroy_node()
