"""The demo (`bash scripts/demo.sh`): synthetic video through the node process, video and summary out."""
import subprocess
import sys

import cv2
import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not importable; run: bash scripts/test.sh")
pytest.importorskip("anymo_ros.msg", reason="anymo_ros messages are not built; run: bash scripts/setup_env.sh")


def test_demo_writes_overlay_video_and_summary(tmp_path):
    # A process of its own: the demo initialises rclpy itself (the test session's domain is inherited).
    run = subprocess.run(
        [sys.executable, "-m", "anymo_ros.tools.demo", "--frames", "16", "--width", "320", "--height", "240",
         "--objects", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("demo: ")]
    assert "16 frames at 320x240 sent" in line and "ids seen [" in line and "ids per object {1: [" in line
    (video,) = tmp_path.glob("demo_overlay.*")
    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    assert ok and frame.shape == (240, 320, 3)
