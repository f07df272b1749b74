"""Where on the table an episode played, from its bag: the cube's place after the reset (the
simulation's ground truth, `sim/cube_pose`), the gripper's (TCP's) start, and on a real arm,
which knows no cube, the gripper where the person pressed the success key. `hilserl eval`
stores them per episode in eval_summary.json; `hilserl plot` maps success over the table."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from hilserl.data.bags import EpisodeData, read_episode, success_key_stamps
from hilserl.messages.conventions import Topics

POSITION_TOPICS = (Topics.SIM_CUBE_POSE, Topics.TCP_POSE, Topics.EPISODE_LABEL,
                   Topics.EPISODE_EVENTS)
# what a map position stands for, most telling first
MAP_SOURCES = ('cube', 'tcp_at_success_key', 'tcp_at_end')


def _xyz(msg) -> List[float]:
    p = msg.pose.position
    return [round(float(p.x), 4), round(float(p.y), 4), round(float(p.z), 4)]


def _at_or_before(messages, stamp_ns: int):
    found = None
    for stamp, msg in messages:
        if stamp > stamp_ns:
            break
        found = msg
    return found if found is not None else (messages[0][1] if messages else None)


def episode_positions(episode: EpisodeData) -> Dict[str, object]:
    """{cube_xyz_m, ee_start_xyz_m, tcp_at_success_key_xyz_m, tcp_at_end_xyz_m (each [x, y, z]
    in base_link, or None), map_xy_m, map_source}: the map shows the cube where the bag has it;
    else the TCP at the success key; else (a failure on a real arm) the TCP where the episode
    ended, the nearest the bag comes to where the cube was."""
    cube = episode.messages.get(Topics.SIM_CUBE_POSE, [])
    tcp = episode.messages.get(Topics.TCP_POSE, [])
    keys = success_key_stamps(episode)
    found = {
        'cube_xyz_m': _xyz(cube[0][1]) if cube else None,  # the first tick: just after reset
        'ee_start_xyz_m': _xyz(tcp[0][1]) if tcp else None,
        'tcp_at_success_key_xyz_m': _xyz(_at_or_before(tcp, keys[0])) if tcp and keys
        else None,
        'tcp_at_end_xyz_m': _xyz(tcp[-1][1]) if tcp else None}
    source = next((s for s in MAP_SOURCES if found[f'{s}_xyz_m'] is not None), None)
    found['map_source'] = source
    found['map_xy_m'] = found[f'{source}_xyz_m'][:2] if source else None
    return found


def read_episode_positions(episode_dir) -> Dict[str, object]:
    return episode_positions(read_episode(episode_dir, POSITION_TOPICS))


def add_positions(rows: Sequence[dict], episodes: Sequence[Path],
                  warn=lambda text: None) -> int:
    """Each eval row (`episode`: 1-based, as the table shows it) gets its episode bag's
    positions (`positions`) and folder (`bag`); the bags are matched by episode.json's 0-based
    `episode`. Returns the rows that got them; an unreadable bag is named through `warn`."""
    import json
    by_index = {}
    for path in episodes:
        try:
            by_index[json.loads((path / 'episode.json').read_text()).get('episode')] = path
        except (OSError, ValueError):
            continue
    done = 0
    for row in rows:
        path: Optional[Path] = by_index.get(row.get('episode', 0) - 1)
        if path is None:
            continue
        try:
            row['positions'] = read_episode_positions(path)
        except (OSError, ValueError) as exc:
            warn(f'{path}: no positions ({exc})')
            continue
        row['bag'] = str(path)
        done += 1
    return done
