# hilserl: one command to set up, one to test, one to run the main job (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
# Headless rendering, localhost-only discovery, and FastDDS large-data transport for 640x480 images.
export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= osmesa
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA?max_msg_size=4MB
export OMP_NUM_THREADS ?= 2

.PHONY: setup test train eval bench bench-learner learn mutate clean

setup:
	@bash scripts/setup.sh

# Where ../shared/ros2-launch exists (tests and CI only), the real `ros2 launch` and `ros2` CLI
# are installed into the venv so the launch files run for real; elsewhere those tests skip.
ROS2_LAUNCH ?= ../shared/ros2-launch/install.sh

test: setup
	@if [ -f $(ROS2_LAUNCH) ]; then bash $(ROS2_LAUNCH) $(VENV); fi
	$(PY) -m pytest -q test

# The simulated main job uses the configuration that learned the task on a CPU (README).
train: setup
	$(VENV)/bin/hilserl train --config config/sim_learn_conv.yaml

eval: setup
	$(VENV)/bin/hilserl eval --checkpoint $(CHECKPOINT)

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

bench-learner: setup
	$(PY) bench/learner_speed.py

learn: setup
	$(PY) bench/learn_graph.py

# Mutation run over the reward/episode, replay and SAC loss logic (mutmut 2.5.1, installed on
# demand; not part of `make test`): per-module scores, survivors in build/mutate/. It mutates a
# copy of the tree (build/mutate/src_<module>), never the checkout. MUTATE=task picks modules.
MUTATE ?= task episode replay sac
mutate: setup
	@$(PY) -m mutmut version 2>/dev/null | grep -q ' 2\.5\.1$$' || $(PY) -m pip install -q mutmut==2.5.1
	nice -n 19 $(PY) scripts/mutate.py $(MUTATE)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
