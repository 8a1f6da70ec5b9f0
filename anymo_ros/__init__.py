"""anymo_ros: segment anything that moves in a camera stream (online Segment Any Motion).

The message classes generated from msg/ form the subpackage ``anymo_ros.msg`` in the colcon
install tree, a different directory from these sources. extend_path joins every ``anymo_ros``
directory on sys.path into this package, so ``anymo_ros.msg`` and the library modules import
together whichever copy comes first. Importing the package loads neither rclpy nor torch.
"""
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
