"""The tools layer: the `hilserl` command, the process runner that starts the graph, the episode
recorder and bag replay. It may import every package below it (hilserl_policy, so101_driver,
reward_classifier_node, hilserl); nothing below imports it."""
