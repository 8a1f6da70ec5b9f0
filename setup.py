"""pip install -e . : the pure-Python library and its command-line tools, without ROS.

The ROS build (messages, node executable, launch files) is CMakeLists.txt, run by colcon.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

# package.xml is the one place the version is written.
VERSION = re.search(r"<version>([^<]+)</version>", Path(__file__).with_name("package.xml").read_text()).group(1)

setup(
    name="anymo_ros",
    version=VERSION,
    description="Segment anything that moves in a camera stream (online Segment Any Motion).",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["anymo_ros", "anymo_ros.*"]),
    # With an explicit root, the editable install is a plain .pth to the repository root:
    # new modules import without reinstalling, and pkgutil.extend_path sees the source tree.
    package_dir={"": "."},
    entry_points={
        "console_scripts": [
            "anymo-eval = anymo_ros.tools.eval_cli:main",
            "anymo-bag = anymo_ros.tools.bag_cli:main",
            "anymo-demo = anymo_ros.tools.demo:main",
            "anymo-bench = anymo_ros.tools.benchmark:main",
            "anymo-train-classifier = anymo_ros.tools.train_classifier:main",
            "anymo-eval-classifier = anymo_ros.tools.eval_classifier:main",
        ],
    },
)
