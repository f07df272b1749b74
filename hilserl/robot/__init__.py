"""The arm and what watches or drives it: kinematics, the state vector, camera supervision,
teleop devices, the scripted expert, the simulated clock. May import common, messages and
configuration (not learning)."""
