"""Parameters: config/default.yaml, the node's declarations and the launch file agree with the code."""
import ast
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not importable; run: bash scripts/test.sh")
from anymo_ros.config import SegmenterConfig  # noqa: E402
from anymo_ros.ros.parameters import PIPELINE_PREFIX, node_parameter_items, parameter_file_text  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = REPO_ROOT / "config" / "default.yaml"
LAUNCH_FILE = REPO_ROOT / "launch" / "segment.launch.py"
LAUNCH_ARGUMENTS = {"camera", "config", "device", "namespace", "overlay", "use_compressed",
                    "tracker", "classifier", "densify", "depth", "semantics", "depth_topic", "autostart"}


def all_parameter_names() -> set[str]:
    return ({name for name, _, _ in node_parameter_items()}
            | {PIPELINE_PREFIX + dotted for dotted, _, _ in SegmenterConfig().flat_items()})


def test_default_yaml_matches_the_code():
    assert DEFAULT_YAML.read_text() == parameter_file_text(), (
        "config/default.yaml is out of date: python -m anymo_ros.ros.parameters > config/default.yaml")
    assert SegmenterConfig.from_yaml(DEFAULT_YAML) == SegmenterConfig()


def test_node_declares_every_parameter_with_description(ros):
    node = ros.start_segment_node()
    described = {name: node.describe_parameter(name) for name in all_parameter_names()}
    for dotted, default, description in SegmenterConfig().flat_items():
        name = PIPELINE_PREFIX + dotted
        assert described[name].description == description
        assert described[name].read_only
        if name != "pipeline.processing_width":  # the harness overrides this one
            assert node.get_parameter(name).value == default


def test_parameter_file_configures_the_pipeline(ros, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(DEFAULT_YAML.read_text()
                      .replace("window: 16", "window: 9")
                      .replace("max_tracks: 1200", "max_tracks: 321"))
    from anymo_ros.ros.segment_node import SegmentNode

    node = SegmentNode(cli_args=["--ros-args", "--params-file", str(params)])
    try:
        assert node.get_parameter("pipeline.window").value == 9
        assert node.segmenter.config.window == 9
        assert node.segmenter.config.tracker.max_tracks == 321
    finally:
        node.destroy_node()


def launch_argument_names(tree: ast.Module) -> set[str]:
    """Names declared by DeclareLaunchArgument("name", ...) plus the OVERRIDE_ARGUMENTS keys."""
    names = {node.args[0].value for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument"
             and node.args and isinstance(node.args[0], ast.Constant)}
    return names | set(launch_overrides(tree))


def launch_overrides(tree: ast.Module) -> dict[str, tuple[str, str]]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "OVERRIDE_ARGUMENTS":
            return ast.literal_eval(node.value)
    return {}


def test_launch_file_arguments_without_launch_ros():
    source = LAUNCH_FILE.read_text()
    tree = ast.parse(source)
    compile(tree, str(LAUNCH_FILE), "exec")
    assert launch_argument_names(tree) == LAUNCH_ARGUMENTS
    overridden = {parameter for parameter, _ in launch_overrides(tree).values()}
    assert overridden <= all_parameter_names(), "launch arguments must override declared parameters"


def test_launch_description_with_launch_ros():
    pytest.importorskip("launch_ros", reason="launch and launch_ros are not on PyPI; they come with a ROS 2 install")
    import importlib.util

    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert {argument.name for argument in description.get_launch_arguments()} == LAUNCH_ARGUMENTS
