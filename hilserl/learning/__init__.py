"""What the learner and the classifier share: image encoders, DrQ augmentation, image ops, the
task's rewards and ends, the allocator. May import common, messages, configuration (not robot)."""
