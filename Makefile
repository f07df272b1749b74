# hilserl: one command to set up, one to test, one to run the main job (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
# Headless rendering, localhost-only discovery, and FastDDS large-data transport for 640x480 images.
export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= osmesa
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA?max_msg_size=4MB
export OMP_NUM_THREADS ?= 2

.PHONY: setup test train eval bench bench-learner bench-lerobot learn mutate clean

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

# The newest checkpoint of `make train`'s run unless CHECKPOINT names another.
CHECKPOINT ?= outputs/run/checkpoints/last
eval: setup
	@test -e $(CHECKPOINT) || { echo "make eval: no checkpoint at $(CHECKPOINT): run make train \
	first, or pass CHECKPOINT=RUN_DIR/checkpoints/NNNNNN (or RUN_DIR/checkpoints/last)" >&2; exit 2; }
	$(VENV)/bin/hilserl eval --checkpoint $(CHECKPOINT)

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

bench-learner: setup
	$(PY) bench/learner_speed.py

# The same table with LeRobot 0.6.1 measured in the same sitting (~15 min). LeRobot lives in a
# venv of its own (.venv-lerobot, ~1.5 GB), never the project's: it asks for Python >= 3.12 and
# torch < 2.12, so it is installed without its pins beside the CPU torch 2.13 and its few
# 3.12-only lines are respelled for 3.11 (bench/lerobot_sac_step.py says what and why).
LEROBOT_VENV ?= .venv-lerobot
$(LEROBOT_VENV)/.ready:
	python3 -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/pip install -q torch==2.13.0 'numpy>=2,<2.3' 'einops>=0.8,<0.9' \
	  'draccus>=0.11.6,<0.12' 'huggingface-hub>=1.6,<2' 'safetensors<1' 'packaging<26' \
	  termcolor tqdm 'gymnasium>=1.1.1,<2' opencv-python-headless 'Pillow<13' requests \
	  'datasets>=4.8,<5' 'pandas<3' 'pyarrow>=21' 'jsonlines<5' 'av>=15,<16'
	$(LEROBOT_VENV)/bin/pip install -q --no-deps --ignore-requires-python lerobot==0.6.1 \
	  torchvision==0.28.0
	$(LEROBOT_VENV)/bin/python bench/lerobot_sac_step.py --make-importable
	touch $@

bench-lerobot: setup $(LEROBOT_VENV)/.ready
	$(PY) bench/learner_speed.py --lerobot-python $(LEROBOT_VENV)/bin/python

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
	rm -rf $(VENV) $(LEROBOT_VENV) build *.egg-info .pytest_cache
