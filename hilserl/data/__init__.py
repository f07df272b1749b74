"""Episode data: the transition and its wire codec, rosbag2 episodes and their repair, recording,
demonstrations, LeRobot datasets. May import every core folder but ros."""
