"""segment_node as a managed node, driven through its real lifecycle services over DDS."""
import gc

import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not importable; run: bash scripts/test.sh")
pytest.importorskip("anymo_ros.msg", reason="anymo_ros messages are not built; run: bash scripts/setup_env.sh")
from conftest import wait_until  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from test_ros_node import HEIGHT, START, WIDTH, frame_message, logged, node_status, stream_in_lockstep  # noqa: E402

from anymo_ros.ros.segment_node import SegmentNode  # noqa: E402
from anymo_ros.tools.synthetic import render_clip  # noqa: E402

NOT_ACTIVE = "frames not processed (not active)"


class LifecycleClient:
    """The lifecycle services of one node, called from the test's harness node."""

    def __init__(self, ros, node):
        name = node.get_fully_qualified_name()
        self._change_state = ros.node.create_client(ChangeState, f"{name}/change_state")
        self._get_state = ros.node.create_client(GetState, f"{name}/get_state")
        for client in (self._change_state, self._get_state):
            wait_until(client.service_is_ready, what=f"the service {client.srv_name}")

    def change(self, transition: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition))
        return self._call(self._change_state, request).success

    def state(self) -> str:
        return self._call(self._get_state, GetState.Request()).current_state.label

    @staticmethod
    def _call(client, request):
        future = client.call_async(request)
        wait_until(future.done, what=f"a reply from {client.srv_name}")
        return future.result()


def record_calls(monkeypatch, target, method: str) -> list:
    """Calls of ``target.method`` from now on; the method still runs."""
    calls = []
    original = getattr(target, method)

    def recorded(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, method, recorded)
    return calls


def test_lifecycle_transitions_gate_outputs_and_models(ros, monkeypatch):
    clip = render_clip(seed=1, num_frames=18, width=WIDTH, height=HEIGHT, num_objects=1, camera_motion="pan", fps=15)
    frames = [frame_message(frame, START + stamp) for frame, stamp in zip(clip.frames, clip.stamps)]
    # Reliable input: every frame reaches the node, so the counts below are exact.
    node = ros.start_segment_node(autostart=False, reliable_input=True)
    masks, diagnostics = ros.subscribe_masks(), ros.subscribe_diagnostics()
    publisher = ros.image_publisher(reliable=True)
    lifecycle = LifecycleClient(ros, node)

    def not_processed(count: int) -> dict[str, str]:
        return wait_until(lambda: (s := node_status(diagnostics, node)) and s[NOT_ACTIVE] == str(count) and s,
                          what=f"diagnostics counting {count} frame(s) not processed")

    # Unconfigured: no pipeline, frames are counted, nothing comes out; activate is not a valid transition.
    assert lifecycle.state() == "unconfigured" and node.segmenter is None
    assert not lifecycle.change(Transition.TRANSITION_ACTIVATE)
    publisher.publish(frames[0])
    assert not_processed(1)["lifecycle state"] == "unconfigured"

    # Configured: the pipeline is built, still nothing comes out.
    assert lifecycle.change(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.state() == "inactive" and node.segmenter is not None
    publisher.publish(frames[1])
    assert not_processed(2)["lifecycle state"] == "inactive"

    # Active: one result per frame, the first results of the node. What exists now, models
    # included, is out of the garbage collector's full passes.
    assert gc.get_freeze_count() == 0
    assert lifecycle.change(Transition.TRANSITION_ACTIVATE)
    assert lifecycle.state() == "active" and gc.get_freeze_count() > 0
    outputs = stream_in_lockstep(publisher, masks, frames[2:6])
    assert [m.header for m in masks.messages] == [m.header for m in outputs]

    # Deactivated: the models are released and outputs stop.
    releases = record_calls(monkeypatch, node.segmenter, "release")
    loads = record_calls(monkeypatch, node.segmenter, "load")
    assert lifecycle.change(Transition.TRANSITION_DEACTIVATE)
    assert lifecycle.state() == "inactive" and len(releases) == 1 and gc.get_freeze_count() == 0
    publisher.publish(frames[6])
    assert not_processed(3)["lifecycle state"] == "inactive"
    assert len(masks.messages) == len(outputs)

    # Active again: the models are loaded again, and a new stream starts.
    assert lifecycle.change(Transition.TRANSITION_ACTIVATE)
    assert len(loads) == 1
    resumed = stream_in_lockstep(publisher, masks, frames[7:10])
    assert resumed[0].window_length == 1

    # Cleanup: back to unconfigured, models released; configure and activate bring it back.
    assert lifecycle.change(Transition.TRANSITION_DEACTIVATE) and lifecycle.change(Transition.TRANSITION_CLEANUP)
    assert lifecycle.state() == "unconfigured" and len(releases) == 3   # deactivate, then cleanup
    publisher.publish(frames[10])
    not_processed(4)
    assert lifecycle.change(Transition.TRANSITION_CONFIGURE) and lifecycle.change(Transition.TRANSITION_ACTIVATE)
    again = stream_in_lockstep(publisher, masks, frames[11:17])
    # Object ids are never reused in a run, also across cleanup.
    before = {obj.id for m in outputs + resumed for obj in m.objects}
    after = {obj.id for m in again for obj in m.objects}
    assert before and after and not before & after

    # Shutdown: finalized, nothing processed, the node still answers and reports.
    assert lifecycle.change(Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert lifecycle.state() == "finalized" and len(releases) == 4
    publisher.publish(frames[17])
    assert not_processed(5)["lifecycle state"] == "finalized"
    assert len(masks.messages) == len(outputs) + len(resumed) + len(again)


def test_autostart_failure_is_reported_and_the_node_does_not_start(ros, capfd):
    with pytest.raises(RuntimeError, match="autostart: configure failed"):
        SegmentNode(namespace=ros.namespace, parameter_overrides=[Parameter("pipeline.window", value=1)])
    # The node is gone with its /rosout publisher: the console has the reason.
    assert "configure failed: ValueError: window length must be at least 2" in capfd.readouterr().err


def test_autostart_false_node_shuts_down_from_unconfigured(ros):
    node = ros.start_segment_node(autostart=False)
    rosout = ros.subscribe_rosout()
    lifecycle = LifecycleClient(ros, node)
    assert lifecycle.change(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert lifecycle.state() == "finalized" and node.segmenter is None
    assert not logged(rosout, node, "failed")
