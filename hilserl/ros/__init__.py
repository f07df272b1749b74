"""The ROS glue: the nodes' rclpy helpers, the graph description and the ROS 2 launch support. The
only folder of hilserl/ that may import rclpy or launch; may import the whole ROS-free core."""
