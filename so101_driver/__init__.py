"""SO-101 arm: Feetech STS3215 bus, calibration, kinematics-based EE control, driver node."""
