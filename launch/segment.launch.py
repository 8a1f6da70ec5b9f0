"""Start segment_node.

    ros2 launch anymo_ros segment.launch.py camera:=/my_camera/image_raw overlay:=true

`config` is a ROS parameter file (default: the package's config/default.yaml). The other
arguments override one parameter each; left empty, the config file's value stands.
"""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# launch argument -> (node parameter it overrides, description)
OVERRIDE_ARGUMENTS = {
    "camera": ("image_topic", "Camera image topic (sensor_msgs/Image), e.g. /camera/image_raw."),
    "use_compressed": ("use_compressed", "true: subscribe to sensor_msgs/CompressedImage on <camera>/compressed."),
    "overlay": ("publish_overlay", "true/false: publish the rgb8 overlay on moving_objects/overlay."),
    "device": ("pipeline.device", "Torch device for learned models: cpu, cuda or cuda:N."),
    "tracker": ("pipeline.tracker.backend", "Point tracker backend, e.g. lk."),
    "classifier": ("pipeline.classifier.backend", "Track classifier backend: ensemble, geometric or learned."),
    "densify": ("pipeline.densify.backend", "Dense mask backend: flow, sam2 or edgetam."),
    "depth": ("pipeline.depth.backend", "Depth source: none, sensor or depth_anything."),
    "depth_topic": ("depth_topic", "Depth image topic (16UC1 mm or 32FC1 m) to pair with the camera."),
    "autostart": ("autostart", "true: configure and activate at start; false: wait for lifecycle transitions."),
    "semantics": ("pipeline.semantics.backend", "Per-track semantics: none or dinov2."),
}


def _segment_node(context):
    overrides = {}
    for argument, (parameter, _) in OVERRIDE_ARGUMENTS.items():
        text = LaunchConfiguration(argument).perform(context)
        if text != "":
            # Typed like a parameter file value: 'true' -> bool, '2' -> int, '/topic' -> str.
            overrides[parameter] = yaml.safe_load(text)
    return [Node(
        package="anymo_ros",
        executable="segment_node",
        name="segment_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("config"), overrides],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description():
    default_config = os.path.join(get_package_share_directory("anymo_ros"), "config", "default.yaml")
    arguments = [
        DeclareLaunchArgument("config", default_value=default_config,
                              description="ROS parameter file for segment_node."),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its moving_objects/* outputs."),
    ]
    arguments += [
        DeclareLaunchArgument(argument, default_value="", description=f"{description} Empty: from config.")
        for argument, (_, description) in OVERRIDE_ARGUMENTS.items()
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_segment_node)])
