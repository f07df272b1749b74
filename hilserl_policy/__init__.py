"""HIL-SERL policy: SAC + DrQ + RLPD learner, replay buffers, actor and learner nodes."""
