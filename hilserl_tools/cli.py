"""The `hilserl` command: the suite's graphs and tools on machines without a ROS 2 distro.

  hilserl train                 simulated HIL-SERL: driver, camera, simulated human, actor,
                                learner, recorder (each its own process, as `ros2 launch` would)
  hilserl eval --checkpoint D   deterministic policy for N episodes; prints the success table
                                (--video: one MP4 an episode; each episode's positions are kept)
  hilserl record                demonstrations / classifier data as episode bags (the same
                                graph, the simulated human or, --teleop keyboard|gamepad|leader,
                                a person acting on every step and labelling by key)
  hilserl replay BAG            republish a bag with its original timing (--video: an MP4)
  hilserl bag-info BAG|DIR      topics, counts, duration and metadata; a folder: one line an
                                episode (outcome, steps, return, human steps)
  hilserl bag-repair PATH       make the bags a killed recorder left readable again
  hilserl convert-checkpoint P  a run's (or one checkpoint's) old pickled optimiser and RNG
                                state as safetensors + JSON, once, without running its code
  hilserl fetch-encoder [REPO]  pretrained encoder weights into the Hugging Face cache (online)
  hilserl setup-motors --port P each servo's id (1..6) and baud rate, one servo connected at a
                                time, read back at the new id and rate (--check: the chained arm)
  hilserl calibrate --port P --id NAME   homing offsets (arm mid-range, written after a yes)
                                and joint ranges swept by hand: servo EEPROM + LeRobot's JSON
  hilserl crop --robot-config F the policy crop on a camera frame, written into the config
  hilserl find-workspace ...    the end-effector box swept by hand, written into the config
  hilserl torque on|off         the running arm's torque (re-arm after a lock-out)
  hilserl security-policy MODE  the graph's SROS2 policy: one enclave per node, allowed exactly
                                the topics and services that node uses
  hilserl train-classifier      success classifier from episode bags
  hilserl eval-classifier       per-episode table: first predicted vs labelled success
  hilserl export-lerobot RUN OUT   episodes as a LeRobot v3.0 dataset (video or images)
  hilserl config                validate a training config and print it resolved
  hilserl plot RUN              PNG curves of a run and its eval's success map
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

from hilserl.common.optional_packages import OptionalPackageMissing
from hilserl.configuration.config import ConfigError, load_train_config
from hilserl.ros.domains import MAX_DOMAIN_ID, DomainBusy, claim_domain

# '[robot_0/sac_actor] ...': the arm's namespace (several arms number their episodes alike)
_EPISODE_END = re.compile(r'^\[(?:([^\]/]+)/)?[^\]]*\].*episode (\d+) ended')
_BAG_CLOSE_WAIT_S = 15.0
_BAG_CLOSED = re.compile(r'^\[(?:([^\]/]+)/)?[^\]]*\].*episode bag closed: .*episode_(\d+) ')


def _cmd_config(args) -> int:
    cfg = load_train_config(args.config)
    print(json.dumps(cfg.to_dict(), indent=2))
    print(f'# config digest {cfg.digest()}', file=sys.stderr)
    return 0


def _whole(low: int, high: Optional[int] = None):
    """argparse type: an integer in [low, high]; argparse names the flag in its error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            span = f'from {low} to {high}' if high is not None else f'>= {low}'
            raise argparse.ArgumentTypeError(f'{text!r}: pass a whole number {span}')
        return value
    return parse


def _positive(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f'{text!r}: pass a number > 0')
    return value


# --- graphs --------------------------------------------------------------------------------------

def _add_graph_arguments(parser, mode: str) -> None:
    """The graph's flags (LAUNCH_ARGUMENTS) for `hilserl train` / `eval`; mode 'policy': those
    that decide a graph's nodes and topics (security-policy)."""
    from hilserl.ros.graph import LAUNCH_ARGUMENTS
    for name, default, description in LAUNCH_ARGUMENTS:
        if mode == 'eval' and name in ('demo_dir', 'device', 'part', 'robots'):
            continue
        if mode == 'policy' and name in ('keystore', 'part', 'discovery', 'device', 'rviz',
                                         'wandb'):
            continue
        flag = '--' + name.replace('_', '-')
        if mode == 'eval' and name == 'teleop':
            default, description = 'none', description + ' (eval default: none)'
        if name in ('record', 'rviz'):
            parser.add_argument(flag, default=default, choices=('true', 'false'), help=description)
        elif mode == 'eval' and name == 'run_dir':
            parser.add_argument(flag, default='', help='the eval goes under RUN_DIR/eval '
                                '(default: the run directory of --checkpoint)')
        elif name == 'wandb':
            parser.add_argument(flag, action='store_true', help=description if mode == 'train'
                                else 'also log the evaluation (each episode, the totals and '
                                'the episode videos under RUN_DIR/eval) to a Weights & Biases '
                                'run under RUN_DIR/eval/wandb, offline unless WANDB_MODE says '
                                'otherwise')
        elif mode == 'eval' and name == 'config':
            parser.add_argument(flag, default=default, help="training YAML (empty: the "
                                "checkpoint's own pretrained_model/config.json)")
        elif name == 'num_episodes':
            parser.add_argument('--episodes', '--num-episodes', dest='num_episodes', type=_whole(0),
                                default=int(default), help=description + ' (per arm)')
        elif name == 'robots':
            parser.add_argument(flag, type=_whole(1, 64), default=int(default), help=description)
        else:
            parser.add_argument(flag, default=default, help=description)
    if mode == 'policy':
        parser.add_argument('--video', action='store_true',
                            help='eval: as `hilserl eval --video` (the bags hold the full camera '
                                 'frame too)')
        return
    parser.add_argument('--max-minutes', type=_positive, default=None,
                        help='stop the whole graph after this long')
    parser.add_argument('--domain-id', type=_whole(0, MAX_DOMAIN_ID), default=None,
                        help='ROS domain for the graph (default: ROS_DOMAIN_ID if set, else '
                        'a domain no other graph on this machine uses, printed at start)')
    if mode == 'eval':
        parser.add_argument('--video', action='store_true',
                            help='one MP4 per episode in RUN_DIR/eval/videos: gripper camera and '
                                 'policy view side by side, step, action, classifier p, result '
                                 '(the bags then hold the full camera frame too)')
    if mode == 'train':
        parser.add_argument('--demos', type=_whole(0), default=10,
                            help='sim: record this many scripted-expert demos into '
                                 '<run_dir>/demos first when --demo-dir is not given (0: none)')
        parser.add_argument('--demo-dataset', default='',
                            help='a LeRobot v3.0 dataset (directory) as the demonstrations '
                                 '(instead of --demo-dir and recorded demos)')


def _graph_args(args, mode: str):
    from hilserl.ros.graph import GraphArgs
    values = {name: getattr(args, name) for name in GraphArgs.__dataclass_fields__
              if hasattr(args, name)}
    values['record'] = args.record == 'true'
    values['rviz'] = getattr(args, 'rviz', 'false') == 'true'  # security-policy: none
    values['record_camera'] = bool(getattr(args, 'video', False))
    return GraphArgs(mode=mode, **values)


def _run_graph(args, mode: str) -> int:
    """Everything that can be refused is checked here, before any node (or demo) starts."""
    import dataclasses
    graph_args = _graph_args(args, mode)
    if graph_args.wandb and (mode == 'eval' or graph_args.part != 'robot'):
        from hilserl.common.optional_packages import require_wandb
        require_wandb('--wandb')
    if mode == 'eval':
        graph_args, cfg = _eval_config(graph_args)
    else:
        from hilserl.configuration.pretrained import check_encoder_weights
        from hilserl.configuration.run_dir import (check_latest_checkpoint_format,
                                                   check_run_config)
        cfg = load_train_config(graph_args.config_path())
        check_run_config(graph_args.run_dir, cfg)
        check_latest_checkpoint_format(graph_args.run_dir)  # a resume loads no pickle
        check_encoder_weights(cfg.policy)  # learner and actor load it: on this machine?
    run_dir = Path(graph_args.run_dir)
    if mode == 'train' and args.demo_dataset:
        graph_args = _demo_dataset_bags(graph_args, cfg, args.demo_dataset)
    if mode == 'train' and graph_args.backend == 'sim' and not graph_args.demo_dir and \
            args.demos > 0 and graph_args.part != 'robot':  # demos are the learner's
        demo_root = run_dir / 'demos'
        code = _record_demos(graph_args, cfg, demo_root, args)
        if code != 0:
            return code
        graph_args = dataclasses.replace(graph_args, demo_dir=str(demo_root))
    if mode == 'train' and graph_args.demo_dir and graph_args.part != 'robot':
        from hilserl.data.demos import check_demo_image_size
        view = cfg.image_shape()
        recorded = check_demo_image_size(graph_args.demo_dir, view)
        if recorded is not None:
            print(f'demos in {graph_args.demo_dir} were recorded at '
                  f'{"x".join(map(str, recorded))}: the learner resizes them to '
                  f'{"x".join(map(str, view))}', flush=True)
    return _start_graph(graph_args, cfg, args)


def _kept_episodes(root) -> int:
    """Complete episodes under `root` that were not marked re-record (what the learner and
    the classifier use)."""
    from hilserl.data.bags import complete_episodes
    return sum(meta.get('outcome') != 'rerecord' for _, meta in complete_episodes(root))


def _record_demos(graph_args, cfg, demo_root: Path, args) -> int:
    """Scripted-expert demonstrations through the record graph. An interrupted recording is
    continued on the next start (only complete episodes count), never silently used short."""
    import dataclasses

    done = _kept_episodes(demo_root)
    missing = args.demos - done
    if missing <= 0:
        return 0
    print(f'hilserl: recording {missing} scripted-expert demos in {demo_root}'
          + (f' ({done} already there)' if done else ''), flush=True)
    record_args = dataclasses.replace(graph_args, mode='record', run_dir=str(demo_root),
                                      num_episodes=missing, teleop='sim', record=True, robots=1,
                                      behaviour_mix='expert:1', demo_dir='')
    code = _start_graph(record_args, cfg, args, echo=_ProgressOnly())
    if code == 0 and _kept_episodes(demo_root) < args.demos:
        print('hilserl train: demo recording stopped early; run again to finish it',
              file=sys.stderr)
        return 1
    return code


def _demo_dataset_bags(graph_args, cfg, dataset: str):
    """--demo-dataset: a LeRobot dataset's transitions as demo bags the learner reads
    (<run_dir>/demos_lerobot, rebuilt when the dataset changes)."""
    import dataclasses

    from hilserl.data.lerobot_dataset import write_demo_bags
    if graph_args.demo_dir:
        raise ValueError('give --demo-dir or --demo-dataset, not both')
    out = write_demo_bags(dataset, Path(graph_args.run_dir) / 'demos_lerobot', cfg,
                          progress=lambda line: print(f'hilserl: {line}', flush=True))
    return dataclasses.replace(graph_args, demo_dir=str(out))


class _ProgressOnly:
    """Record graphs: show episode starts and results, the keys, and problems, not every
    node's start-up lines. A node's traceback is shown whole (every line after its
    `Traceback`), so that the error it ends with is on the screen."""
    SHOWN = ('ended:', 'started: go', 'keys', 'ERROR', 'Traceback', 'Error')

    def __init__(self):
        self.failing = set()  # '[label]' prefixes of nodes that printed a traceback

    def __call__(self, line: str) -> None:
        prefix = line.split(' ', 1)[0]
        if 'Traceback' in line:
            self.failing.add(prefix)
        if (prefix in self.failing or any(text in line for text in self.SHOWN)
                or line.startswith('hilserl')):
            print(line, flush=True)


def _eval_config(graph_args):
    """(graph args, config) for eval: the checkpoint's own configuration (image size, crop,
    networks) unless --config is given, and then only one that shows the policy the same view.
    The checkpoint must exist and its config load (one-line error otherwise)."""
    import dataclasses

    from hilserl.configuration.run_dir import (checkpoint_run_dir, config_differences,
                                               load_checkpoint_config)
    checkpoint_cfg, config_path = load_checkpoint_config(graph_args.checkpoint)
    if not graph_args.run_dir:  # the checkpoint's run, not another run's eval folder
        graph_args = dataclasses.replace(graph_args, run_dir=str(checkpoint_run_dir(
            config_path.parent)))
    if not graph_args.config:
        return dataclasses.replace(graph_args, config=str(config_path)), checkpoint_cfg
    cfg = load_train_config(graph_args.config)
    differing = [p for p in config_differences(checkpoint_cfg.to_dict(), cfg.to_dict())
                 if p.split('.')[0] in ('image', 'observation', 'action')]
    if differing:
        raise ConfigError(f'--config {graph_args.config} differs from the configuration checkpoint '
                          f'{graph_args.checkpoint} was trained with in {", ".join(differing)}; '
                          f'leave --config out to use the checkpoint\'s own')
    return graph_args, cfg


def _start_graph(graph_args, cfg, args, echo=None) -> int:
    """Run the graph, holding its run directory's lock from before anything there is touched
    until its last node has stopped (the nodes share it under the graph's token)."""
    import dataclasses

    from hilserl.common.run_lock import acquire_run_lock, new_graph_token
    token = new_graph_token()
    with acquire_run_lock(graph_args.written_dir(), token) as lock:
        if lock.taken_over is not None:
            print(f'hilserl: {lock.takeover_line()}', flush=True)
        return _run_locked_graph(dataclasses.replace(graph_args, run_lock=token), cfg, args,
                                 echo)


def _run_locked_graph(graph_args, cfg, args, echo=None) -> int:
    from hilserl.ros.graph import build_graph
    from hilserl_tools.process_graph import ProcessGraph
    mode, run_dir = graph_args.mode, Path(graph_args.run_dir)
    if graph_args.rviz:
        print('hilserl: rviz needs a ROS 2 distro (ros2 launch hilserl ...); ignored here',
              file=sys.stderr)
    _repair_before_start(graph_args)
    from hilserl.ros.graph import robot_file_disagreements
    for line in robot_file_disagreements(graph_args):
        print(f'hilserl: {line}', file=sys.stderr)
    nodes = build_graph(graph_args, cfg)
    from hilserl.ros.security import check_keystore
    check_keystore(graph_args, nodes)
    episodes_ended, bags_closed = set(), set()

    def output(line: str) -> None:
        if echo is None:
            print(line, flush=True)
        else:
            echo(line)
        for pattern, seen in ((_EPISODE_END, episodes_ended), (_BAG_CLOSED, bags_closed)):
            match = pattern.search(line)
            if match:
                seen.add((match.group(1), int(match.group(2))))

    env = {**os.environ, **graph_args.environment()}  # --discovery decides over the shell's
    # a domain of its own: another graph on this machine would drive and record this one's
    domain = claim_domain(_requested_domain(args), namespace=graph_args.namespace,
                          part=graph_args.part, run_dir=str(run_dir), mode=mode)
    try:
        print(f'hilserl {mode}: {domain.announce()}', flush=True)
        graph = ProcessGraph(nodes, run_dir / 'params' / mode, graph_args.namespace, env=env,
                             output=output, domain_id=domain.domain_id)
        output(f'hilserl {mode}: {", ".join(n.label for n in nodes)} (backend '
               f'{graph_args.backend}, run {run_dir}); Ctrl-C stops')
        started = time.monotonic()
        graph.start()
        timeout = args.max_minutes * 60 if args.max_minutes else None
        # the run ends with the actors' last episodes; a learner alone runs until stopped
        enders = [n.label for n in nodes if n.name == 'sac_actor'] or [nodes[0].label]
        reason = graph.wait(lambda g: all(label in g.exited() for label in enders), timeout)
        if reason == 'done' and graph_args.record:
            # The actor's last `end` event may still be in flight to the recorder: let it close
            # that bag with its outcome rather than as `interrupted`.
            graph.wait(lambda g: len(bags_closed) >= len(episodes_ended), _BAG_CLOSE_WAIT_S)
        codes = graph.stop()
    finally:
        domain.close()
    output(f'hilserl {mode}: stopped ({reason}) after {time.monotonic() - started:.0f} s; '
           f'exit codes {codes}')
    failed = {n: c for n, c in codes.items() if c not in (0, None, -2)}
    return 1 if failed or reason.startswith('node exited') else 0


def _requested_domain(args) -> Optional[int]:
    """--domain-id, else the shell's ROS_DOMAIN_ID, else None (a free one is chosen)."""
    if getattr(args, 'domain_id', None) is not None:
        return args.domain_id
    text = os.environ.get('ROS_DOMAIN_ID', '').strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > MAX_DOMAIN_ID:
        raise ConfigError(f'ROS_DOMAIN_ID={text!r} is not a domain id (0..{MAX_DOMAIN_ID}); '
                          f'unset it to get a free one')
    return int(text)


def _cmd_train(args) -> int:
    return _run_graph(args, 'train')


def _cmd_eval(args) -> int:
    """The eval graph, then from this eval's episode bags: each episode's positions (cube,
    gripper start; on a real arm the gripper at the success key) into eval_summary.json, and
    with --video one MP4 per episode; with --wandb all of it as a W&B run."""
    from hilserl.data.bags import complete_episodes
    if args.video and args.record != 'true':
        raise ValueError('--video is made from the episode bags: leave --record true')
    eval_dir = Path(args.run_dir) / 'eval'
    before = {path for path, _ in complete_episodes(eval_dir / 'episodes')}
    started = time.time()
    code = _run_graph(args, 'eval')
    episodes = sorted(path for path, _ in complete_episodes(eval_dir / 'episodes')
                      if path not in before)
    videos = _eval_videos(episodes, eval_dir / 'videos') if args.video else {}
    _add_eval_positions(eval_dir / 'eval_summary.json', started, episodes, videos)
    if args.wandb:
        _log_eval_to_wandb(eval_dir / 'eval_summary.json', started)
    return code


def _eval_videos(episodes, out_dir: Path) -> dict:
    """episode dir -> its MP4 (one that cannot be made is said in one line and skipped)."""
    from hilserl.data.episode_video import write_episode_video
    videos = {}
    for path in episodes:
        try:
            video, frames = write_episode_video(path, out_dir / f'{path.name}.mp4')
        except (OSError, ValueError) as exc:
            print(f'hilserl eval: no video of {path.name}: {exc}', file=sys.stderr, flush=True)
            continue
        videos[path] = video
        print(f'hilserl eval: video {video} ({frames} frames)', flush=True)
    return videos


def _add_eval_positions(summary_path: Path, started: float, episodes, videos: dict) -> None:
    """This eval's summary (the actor wrote it when its last episode ended; an eval stopped
    early has none) gets each episode's positions, bag and video."""
    from hilserl.data.bags import write_json_atomic
    from hilserl.data.episode_positions import add_positions
    if not episodes or not summary_path.is_file() or summary_path.stat().st_mtime < started:
        return
    summary = json.loads(summary_path.read_text())
    rows = summary.get('rows', [])
    added = add_positions(rows, episodes, warn=lambda text: print(
        f'hilserl eval: {text}', file=sys.stderr, flush=True))
    for row in rows:
        video = videos.get(Path(row.get('bag', '')))
        if video is not None:
            row['video'] = str(video)
    write_json_atomic(summary_path, summary)
    print(f'hilserl eval: positions of {added} of {len(rows)} episodes in {summary_path} '
          f'(hilserl plot {summary_path.parent.parent} maps them)', flush=True)


def _log_eval_to_wandb(summary_path: Path, started: float) -> None:
    """--wandb: this eval's summary (each episode, the totals, each episode's video) as a W&B
    run beside it."""
    from hilserl_policy.metrics import log_evaluation
    if not summary_path.is_file() or summary_path.stat().st_mtime < started:
        print(f'hilserl eval: no new {summary_path}: nothing logged to W&B', file=sys.stderr)
        return
    location, videos = log_evaluation(summary_path.parent, json.loads(summary_path.read_text()))
    print(f'hilserl eval: W&B run in {location} ({videos} episode videos; upload an offline '
          'run with `wandb sync DIR`)', flush=True)


# --- bags --------------------------------------------------------------------------------------

def _cmd_record(args) -> int:
    """Episodes through the record graph. Simulated (--teleop sim, the default there): the
    simulated human plays one behaviour of --mix per episode (expert / noisy / random) and
    presses "success" when the cube is up. A person (--teleop keyboard|gamepad|leader, the only
    choice on hardware): they act on every step and end each episode by key (success, failure,
    re-record); no classifier is needed."""
    from hilserl.data.bags import complete_episodes
    from hilserl.ros.graph import HUMAN_DEVICES, GraphArgs
    from hilserl.robot.teleop import parse_mix
    teleop = args.teleop or ('sim' if args.backend == 'sim' else '')
    if not teleop:
        raise ValueError(f'--backend {args.backend} needs --teleop, one of {HUMAN_DEVICES}')
    if teleop == 'sim':
        parse_mix(args.mix)  # a bad mix is refused before any node starts
    graph_args = GraphArgs(mode='record', backend=args.backend, config=args.config or '',
                           robot_config=args.robot_config, run_dir=args.output,
                           num_episodes=args.episodes, teleop=teleop, behaviour_mix=args.mix,
                           success_source='sim' if args.backend == 'sim' else 'key',
                           seed_offset=args.seed, namespace=args.namespace)
    cfg = load_train_config(graph_args.config_path())
    started = time.monotonic()
    code = _start_graph(graph_args, cfg, args, echo=_ProgressOnly())
    episodes = complete_episodes(args.output)
    kept = [meta for _, meta in episodes if meta.get('outcome') != 'rerecord']
    successes = sum(bool(meta.get('success')) for meta in kept)
    redone = len(episodes) - len(kept)
    left_out = f', {redone} marked re-record left out' if redone else ''
    print(f'{len(kept)} episodes ({successes} successful) in '
          f'{Path(args.output) / "episodes"}{left_out} [{time.monotonic() - started:.0f} s]')
    return code


def _cmd_bag_info(args) -> int:
    """One episode: its topics and metadata; a run or an episodes/ folder: a table of them."""
    from hilserl.data.bags import bag_summary, episodes_table
    path = Path(args.bag)
    one = (path / 'bag' / 'metadata.yaml').is_file() or (path / 'metadata.yaml').is_file()
    print(bag_summary(path) if one else episodes_table(path))
    return 0


def _camera_name(text: str) -> str:
    from hilserl.configuration.config import CAMERA_NAME_PATTERN
    if not CAMERA_NAME_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f'{text!r}: a camera name of image.cameras (lower case '
                                         'letters, digits and _: gripper, front)')
    return text


def _cmd_crop(args) -> int:
    from hilserl.common.paths import share_path
    from hilserl_tools.crop import run_crop
    config = args.config or str(share_path('config', 'train.yaml'))
    return run_crop(args.robot_config, config, args.crop, args.device,
                    gui=True if args.gui else None, camera=args.camera)


def _cmd_find_workspace(args) -> int:
    from hilserl.common.paths import share_path
    from hilserl_tools.find_workspace import run_find_workspace
    config = args.config or str(share_path('config', 'train.yaml'))
    return run_find_workspace(args.robot_config, config, leader=args.leader,
                              seconds=args.seconds, z_floor_m=args.z_floor_m)


def _cmd_setup_motors(args) -> int:
    from hilserl_tools.setup_motors import run_setup_motors
    return run_setup_motors(args.port, leader=args.leader, baudrate=args.baudrate,
                            joints=args.joint, check=args.check,
                            timeout_ms=args.bus_timeout_ms or None)


def _cmd_calibrate(args) -> int:
    from hilserl_tools.calibrate import run_calibrate
    return run_calibrate(args.port, args.id, leader=args.leader, output=args.output,
                         baudrate=args.baudrate, timeout_ms=args.bus_timeout_ms or None)


def _cmd_torque(args) -> int:
    domain = _requested_domain(args)
    if domain is None:
        domain = _running_graph_domain(args.namespace)
    os.environ['ROS_DOMAIN_ID'] = str(domain)
    from hilserl_tools.torque_node import call_torque
    success, message = call_torque(args.state == 'on', args.namespace, args.timeout_s)
    print(message, file=sys.stdout if success else sys.stderr)
    return 0 if success else 2


def _cmd_security_policy(args) -> int:
    """The SROS2 policy of the graph these flags run (both machines' halves): one enclave per
    node, /hilserl/<mode>/<namespace>/<node>, allowed exactly what that node uses."""
    from hilserl.common.files import write_text_atomic
    from hilserl.ros.security import secured_nodes, security_policy
    graph_args = _graph_args(args, args.graph_mode)
    nodes = secured_nodes(graph_args)
    text = security_policy(nodes, graph_args.namespace,
                           f'hilserl security-policy {graph_args.mode}: one enclave per node, '
                           'each allowed exactly the topics and services its node uses')
    if not args.output:
        sys.stdout.write(text)
        return 0
    write_text_atomic(args.output, text)
    print(f'{args.output}: {len(nodes)} enclaves ({", ".join(n.enclave for n in nodes)}); '
          f'next: ros2 security generate_artifacts -k KEYSTORE -p {args.output}')
    return 0


def _running_graph_domain(namespace: str) -> int:
    """The domain of the one hilserl graph running here with this namespace."""
    from hilserl.ros.domains import running_graphs
    graphs = [g for g in running_graphs() if g.part in ('all', 'robot')
              and g.namespace.strip('/') == namespace.strip('/')]
    if len(graphs) == 1:
        return graphs[0].domain_id
    if not graphs:
        raise ConfigError('no hilserl graph with an arm is running on this machine'
                          + (f' in namespace {namespace}' if namespace else '')
                          + '; pass --domain-id for a graph elsewhere')
    raise ConfigError('several graphs run here: ' + '; '.join(
        f'{g.describe()} on domain {g.domain_id}' for g in graphs) + '; pass --domain-id')


def _cmd_fetch_encoder(args) -> int:
    from hilserl.configuration.pretrained import fetch_encoder
    folder = fetch_encoder(args.repo_id, args.local_dir or None)
    print(f'{args.repo_id}: config.json + model.safetensors in {folder}')
    return 0


def _cmd_bag_repair(args) -> int:
    """One line per episode; 0 when every bag reads (repaired or already fine), 1 when one could
    not be repaired, 2 for a path that does not exist or holds no episode bags."""
    from hilserl.data.bag_repair import repair_episodes
    results = repair_episodes(args.path, keep_original=args.keep_original)
    if not results:
        raise ValueError(f'{args.path} holds no episode bags')
    for result in results:
        print(result.line())
    return 1 if any(r.status == 'failed' for r in results) else 0


def _cmd_convert_checkpoint(args) -> int:
    """One line per checkpoint converted; 0 also when nothing needed converting."""
    from hilserl_policy.training_state import convert_checkpoint
    converted = convert_checkpoint(args.path)
    for checkpoint in converted:
        print(f'{checkpoint}: training state converted to safetensors + JSON')
    if not converted:
        print(f'{args.path}: no checkpoint in the old format (nothing to convert)')
    return 0


def _repair_before_start(graph_args) -> None:
    """Episode bags a killed recorder left where this graph records, or in the demos it trains
    from, are repaired before any node starts (the recorder node does the same on its own)."""
    from hilserl.data.bag_repair import repair_killed_episodes
    roots = [Path(graph_args.run_dir) / 'episodes'] if graph_args.record else []
    if graph_args.mode == 'train' and graph_args.demo_dir:
        roots.append(Path(graph_args.demo_dir))
    for root in roots:
        try:
            repair_killed_episodes(root, lambda line: print(f'hilserl: bag repair: {line}',
                                                            flush=True))
        except OSError as exc:  # e.g. read-only demos: they are read as they are
            print(f'hilserl: bag repair of {root} failed: {exc}', file=sys.stderr, flush=True)


def _cmd_replay(args) -> int:
    if args.video is not None:  # a file, not a graph: no ROS needed
        from hilserl.data.episode_video import write_episode_video
        episode = Path(args.bag)
        if episode.name == 'bag' and (episode / 'metadata.yaml').is_file():
            episode = episode.parent
        video, frames = write_episode_video(episode, args.video or episode / 'episode.mp4',
                                            fps=args.fps)
        print(f'{video}: {frames} frames')
        return 0
    from hilserl_tools.bag_replay_node import main as replay_main
    ros_args = ['--ros-args', '-p', f'bag:={Path(args.bag).resolve()}', '-p',
                f'rate:={args.rate}', '-p', f'loop:={"true" if args.loop else "false"}']
    return replay_main(['hilserl_replay'] + ros_args)


# --- classifier ----------------------------------------------------------------------------------

def _cmd_train_classifier(args) -> int:
    from reward_classifier_node.model import ClassifierConfig
    from reward_classifier_node.train import TrainClassifierConfig, train_classifier
    # every camera of the training config (default: the gripper camera alone)
    model_cfg = ClassifierConfig(encoder=args.encoder,
                                 freeze_encoder=bool(args.pretrained_encoder),
                                 pretrained_encoder_path=args.pretrained_encoder or None,
                                 cameras=load_train_config(args.config).image.camera_names)
    cfg = TrainClassifierConfig(epochs=args.epochs, label_source=args.label_source,
                                frames_before_label=args.frames_before_label,
                                target_fpr=args.target_fpr, max_minutes=args.max_minutes,
                                seed=args.seed)
    episodes = None
    if args.dataset:
        episodes = _dataset_frames(args)
    elif not args.episodes:
        raise ValueError('give --episodes (episode bags) or --dataset (a LeRobot dataset)')
    result = train_classifier(args.episodes, args.output, model_cfg, cfg,
                              progress=lambda line: print(line, flush=True), episodes=episodes)
    best = result['best']
    print(json.dumps({k: best[k] for k in ('accuracy', 'precision', 'recall',
                                           'false_positive_rate', 'threshold', 'epoch')}))
    return 0


def _dataset_frames(args):
    """train-classifier --dataset: labelled frames of a LeRobot dataset, in the policy view."""
    from hilserl.data.lerobot_dataset import labelled_frames
    from reward_classifier_node.train import EpisodeFrames
    if args.episodes:
        raise ValueError('give --episodes or --dataset, not both')
    if args.label_source != 'key':
        raise ValueError('--dataset labels frames from next.reward; --label-source does not '
                         'apply')
    frames = labelled_frames(args.dataset, load_train_config(args.config), args.camera)
    return [EpisodeFrames(name, images, labels) for name, images, labels in frames]


def _cmd_export_lerobot(args) -> int:
    from hilserl.data.lerobot_dataset import export_lerobot
    out, episodes = export_lerobot(args.source, args.out_dir, fps=args.fps,
                                   video=not args.images, task=args.task,
                                   progress=lambda line: print(f'hilserl: {line}', flush=True))
    print(f'{len(episodes)} episodes, {sum(len(e) for e in episodes)} frames -> {out} '
          f'(LeRobot v3.0, {"images" if args.images else "video"})')
    return 0


def _cmd_eval_classifier(args) -> int:
    from reward_classifier_node.evaluate import evaluate_episodes, format_table
    rows = evaluate_episodes(args.model, args.episodes, args.label_source, args.debounce,
                             args.threshold)
    print(format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hilserl.data.lerobot_dataset import DEFAULT_TASK
    parser = argparse.ArgumentParser(prog='hilserl', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('config', help='validate a training config and print it resolved')
    p.add_argument('--config', default=None, help='YAML file (default: built-in defaults)')
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser('train', help='run the training graph (default: simulated arm)')
    _add_graph_arguments(p, 'train')
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser('eval', help='evaluate a checkpoint for N episodes')
    _add_graph_arguments(p, 'eval')
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser('record', help='record demonstrations / classifier data as bags '
                       '(simulated expert, or a person at the arm)')
    p.add_argument('--output', default='outputs/sim_episodes', help='run directory')
    p.add_argument('--episodes', type=_whole(1), default=20)
    p.add_argument('--backend', default='sim', choices=('sim', 'hardware'),
                   help='sim (MuJoCo) or hardware (the SO-101 on its Feetech bus + camera)')
    p.add_argument('--teleop', default='', choices=('', 'sim', 'keyboard', 'gamepad', 'leader'),
                   help='who acts: sim (the simulated human; sim default) or a person at '
                        'keyboard | gamepad | leader (hardware: required); episodes end by key')
    p.add_argument('--robot-config', default='',
                   help='robot parameters YAML (empty: config/sim_robot.yaml for sim, '
                        'config/so101_follower.yaml for hardware)')
    p.add_argument('--mix', default='expert:0.6,noisy:0.3,random:0.1',
                   help='--teleop sim: behaviour weights: expert, noisy, random')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--config', default=None, help='training YAML (task, image crop)')
    p.add_argument('--domain-id', type=_whole(0, MAX_DOMAIN_ID), default=None,
                   help='ROS domain for the graph (default: ROS_DOMAIN_ID if set, else a '
                   'domain no other graph on this machine uses, printed at start)')
    p.add_argument('--namespace', default='', help='namespace for every node and topic')
    p.add_argument('--max-minutes', type=_positive, default=None,
                   help='stop the whole graph after this long')
    p.set_defaults(func=_cmd_record)

    from hilserl.messages.conventions import JOINT_NAMES
    from so101_driver.sts_protocol import BAUD_RATES
    p = sub.add_parser('setup-motors', help='give each servo its id (1..6 in joint order) and '
                       'the baud rate, one servo connected at a time; read them back')
    p.add_argument('--port', required=True, help='serial port of the arm\'s board '
                   '(a /dev/serial/by-id/... path)')
    p.add_argument('--leader', action='store_true', help='the leader arm (same ids; the '
                   'prompts say leader)')
    p.add_argument('--baudrate', type=int, default=1_000_000,
                   choices=sorted(BAUD_RATES.values(), reverse=True),
                   help='bus rate to set (bit/s; default the STS3215\'s 1000000)')
    p.add_argument('--joint', action='append', choices=JOINT_NAMES, default=None,
                   help='only this joint\'s servo (repeatable; default all six)')
    p.add_argument('--check', action='store_true', help='no setting: the assembled arm\'s '
                   'servos must answer at their ids and the rate')
    p.add_argument('--bus-timeout-ms', type=_positive, default=None,
                   help='floor of a servo reply timeout (ms; default the SDK\'s ~35 ms)')
    p.set_defaults(func=_cmd_setup_motors)

    p = sub.add_parser('calibrate', help='calibrate an arm as LeRobot does (homing offsets, '
                       'joint ranges swept by hand) into its servos and LeRobot\'s JSON')
    p.add_argument('--port', required=True, help='serial port of the arm\'s board')
    p.add_argument('--id', required=True, help='the arm\'s name: the JSON is <id>.json in '
                   'LeRobot\'s calibration folder (LeRobot\'s --robot.id / --teleop.id)')
    p.add_argument('--leader', action='store_true', help='a leader arm (teleoperators/'
                   'so101_leader/ instead of robots/so101_follower/)')
    p.add_argument('--output', default='', help='write the JSON here instead')
    p.add_argument('--baudrate', type=int, default=1_000_000,
                   choices=sorted(BAUD_RATES.values(), reverse=True), help='bus rate (bit/s)')
    p.add_argument('--bus-timeout-ms', type=_positive, default=None,
                   help='floor of a servo reply timeout (ms; default the SDK\'s ~35 ms)')
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser('crop', help='choose the policy crop on one camera frame and write it '
                       'into the training config (a window with a display, else a PNG + --crop)')
    p.add_argument('--robot-config', required=True,
                   help='robot parameters YAML: the camera is its /**/<camera>_camera section '
                        '(gripper_camera)')
    p.add_argument('--config', default='',
                   help='training YAML to write image.crop_tlhw_px (or the camera\'s entry of '
                        'image.cameras) into (default: config/train.yaml, the real arm\'s)')
    p.add_argument('--camera', default='gripper', type=_camera_name,
                   help='which camera of image.cameras (default gripper)')
    p.add_argument('--crop', default=None, metavar='TOP,LEFT,HEIGHT,WIDTH',
                   help='the crop in px (no window); without it and without a display a PNG of '
                        'the frame with a grid is written to choose from')
    p.add_argument('--device', default='', help='camera device or video file instead of the '
                   'robot file\'s')
    p.add_argument('--gui', action='store_true', help='insist on the window (error without a '
                   'display)')
    p.set_defaults(func=_cmd_crop)

    p = sub.add_parser('find-workspace', help='move the limp arm through the task\'s space; '
                       'the end-effector box goes into the training config')
    p.add_argument('--robot-config', required=True,
                   help='robot parameters YAML (port, calibration_file; --leader: the teleop '
                        'section\'s leader_port, leader_calibration_file)')
    p.add_argument('--config', default='', help='training YAML to write task.workspace_min_m / '
                   'workspace_max_m into (default: config/train.yaml)')
    p.add_argument('--leader', action='store_true', help='read the leader arm instead')
    p.add_argument('--seconds', type=_positive, default=None,
                   help='sweep for this long instead of until Enter')
    p.add_argument('--z-floor-m', type=float, default=0.01,
                   help='the box bottom is no lower than this (m; 0 = the table top)')
    p.set_defaults(func=_cmd_find_workspace)

    p = sub.add_parser('torque', help='torque on or off on a running graph\'s arm (re-arm after '
                       'a lock-out, once the servo has cooled)')
    p.add_argument('state', choices=('on', 'off'))
    p.add_argument('--namespace', default='', help='the arm\'s namespace (namespace:= / '
                   '--namespace of the graph)')
    p.add_argument('--domain-id', type=_whole(0, MAX_DOMAIN_ID), default=None,
                   help='the graph\'s ROS domain (default: ROS_DOMAIN_ID if set, else the '
                   'one hilserl graph running on this machine)')
    p.add_argument('--timeout-s', type=_positive, default=20.0,
                   help='wait this long for the driver')
    p.set_defaults(func=_cmd_torque)

    p = sub.add_parser('security-policy', help='write the SROS2 policy of a graph: one enclave '
                       'per node, allowed exactly the topics and services it uses')
    p.add_argument('graph_mode', metavar='mode', choices=('train', 'eval', 'record'),
                   help='the graph: train, eval or record')
    _add_graph_arguments(p, 'policy')
    p.add_argument('--output', '-o', default='', help='policy XML file (default: stdout)')
    p.set_defaults(func=_cmd_security_policy)

    p = sub.add_parser('fetch-encoder', help='download pretrained encoder weights (the seed\'s '
                       'ResNet-10) into the Hugging Face cache; needs the network once')
    p.add_argument('repo_id', nargs='?', default='helper2424/resnet10',
                   help='Hugging Face repo id (default: helper2424/resnet10)')
    p.add_argument('--local-dir', default='',
                   help='a directory instead of the hub cache (then name it in '
                        'policy.pretrained_encoder_path)')
    p.set_defaults(func=_cmd_fetch_encoder)

    p = sub.add_parser('replay', help='republish a bag with its original timing')
    p.add_argument('bag', help='episode directory or its bag/ folder')
    p.add_argument('--rate', type=_positive, default=1.0, help='speed factor')
    p.add_argument('--loop', action='store_true')
    p.add_argument('--video', nargs='?', const='', default=None, metavar='MP4',
                   help='write the episode as a video instead (default EPISODE/episode.mp4): '
                        'camera and policy view, step, action, classifier p, result')
    p.add_argument('--fps', type=_whole(1, 120), default=None,
                   help='--video: frames per second (default: the episode\'s control rate)')
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser('bag-info', help='summarise an episode bag, or tabulate the episodes of a '
                       'run directory or episodes/ folder')
    p.add_argument('bag', help='an episode directory (or its bag/), a run or an episodes/ folder')
    p.set_defaults(func=_cmd_bag_info)

    p = sub.add_parser('bag-repair', help='repair episode bags a killed recorder left behind')
    p.add_argument('path', help='a run directory, its episodes/ folder or one episode')
    p.add_argument('--keep-original', action='store_true',
                   help='keep the cut-off files in <episode>/bag.truncated/')
    p.set_defaults(func=_cmd_bag_repair)

    p = sub.add_parser('convert-checkpoint', help='rewrite the old pickled optimiser and RNG '
                       'state (training_state/optimizers.pt) as safetensors + JSON, once')
    p.add_argument('path', help='a run directory (all its checkpoints) or one checkpoint')
    p.set_defaults(func=_cmd_convert_checkpoint)

    p = sub.add_parser('train-classifier', help='train the success classifier from bags')
    p.add_argument('--episodes', default='', help='directory holding episode bags')
    p.add_argument('--dataset', default='',
                   help='a LeRobot v3.0 dataset instead: frames labelled by next.reward')
    p.add_argument('--camera', default=None,
                   help='--dataset: its camera (default: gripper, wrist or the only one)')
    p.add_argument('--config', default=None,
                   help='training YAML: its image.cameras are the views the classifier takes '
                        '(default: the gripper camera); --dataset: its crop/resize makes the '
                        'view')
    p.add_argument('--output', default='outputs/classifier', help='checkpoint directory')
    p.add_argument('--encoder', default='small_conv', choices=('small_conv', 'resnet10'))
    p.add_argument('--pretrained-encoder', default='',
                   help='local ResNet-10 directory (model.safetensors); frozen when given')
    p.add_argument('--epochs', type=_whole(1), default=12)
    p.add_argument('--label-source', default='key', choices=('key', 'ground_truth'))
    p.add_argument('--frames-before-label', type=_whole(0), default=0)
    p.add_argument('--target-fpr', type=float, default=0.01)
    p.add_argument('--max-minutes', type=_positive, default=10.0)
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=_cmd_train_classifier)

    p = sub.add_parser('eval-classifier', help='per-episode success table of a classifier')
    p.add_argument('--model', required=True)
    p.add_argument('--episodes', required=True)
    p.add_argument('--label-source', default='key', choices=('key', 'ground_truth'))
    p.add_argument('--debounce', type=_whole(1), default=3)
    p.add_argument('--threshold', type=float, default=0.0, help="0: the checkpoint's")
    p.set_defaults(func=_cmd_eval_classifier)

    p = sub.add_parser('export-lerobot', help='episodes as a LeRobot v3.0 dataset')
    p.add_argument('source', help='a run directory, its episodes/ folder or one episode')
    p.add_argument('out_dir', help='new (or empty) dataset directory')
    p.add_argument('--fps', type=_whole(1), default=None, help="default: the run's control rate")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument('--video', action='store_true', help='frames as MP4 (default)')
    kind.add_argument('--images', action='store_true', help='frames as PNG in the Parquet')
    p.add_argument('--task', default=DEFAULT_TASK, help='the task text of every episode')
    p.set_defaults(func=_cmd_export_lerobot)

    p = sub.add_parser('plot', help='PNG charts of a run: success, interventions, return, '
                                    'losses, updates/s against episodes and wall time')
    p.add_argument('run_dir', help='a run directory (episodes/ and metrics.csv)')
    p.add_argument('--out', default='', help='where the PNGs go (default: RUN_DIR/plots)')
    p.add_argument('--window', type=_whole(1), default=10, help='episodes in the moving averages')
    p.set_defaults(func=_cmd_plot)
    return parser


def _cmd_plot(args) -> int:
    from hilserl_tools.plots import plot_run
    if args.window < 1:
        raise ValueError(f'--window {args.window}: must be >= 1')
    for path in plot_run(args.run_dir, args.out or None, args.window):
        print(path)
    return 0


def main(argv=None) -> int:
    # headless MuJoCo rendering for the commands that simulate in this process (record, demos)
    os.environ.setdefault('MUJOCO_GL', 'osmesa')
    os.environ.setdefault('PYOPENGL_PLATFORM', 'osmesa')
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DomainBusy, ValueError, OSError, OptionalPackageMissing) as exc:
        # missing files, read-only dirs, an option whose package is not installed
        print(f'hilserl {args.command}: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
