"""Set values in a hand-kept YAML file without losing its comments or layout: the set-up tools
(`hilserl crop`, ...) write what they measured into the files the user edits by hand. One value
per call, on the line that holds its key inside its section; written whole or not at all."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Optional

import yaml

from hilserl.common.files import write_text_atomic


def flow(value) -> str:
    """A value in YAML flow style on one line ([0, 80, 480, 480], 0.25, true, text)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip() \
        .removesuffix('...').strip()


def set_value(text: str, section: str, key: str, value, comment: Optional[str] = None) -> str:
    """`text` with `section.key` set to `value`: the key's line is replaced in place (its
    trailing comment kept unless `comment` is given), added under the section, or a new section
    is appended. Only two levels (section: then indented key:), as the training configs are."""
    lines = text.splitlines()
    new_value = flow(value)
    start = next((i for i, line in enumerate(lines)
                  if re.match(rf'^{re.escape(section)}:\s*(#.*)?$', line)), None)
    if start is None:
        tail = f'  # {comment}' if comment else ''
        block = ['', f'{section}:', f'  {key}: {new_value}{tail}']
        return '\n'.join(lines + block).lstrip('\n') + '\n'
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].strip() and not lines[i].startswith((' ', '\t', '#'))), len(lines))
    for i in range(start + 1, end):
        match = re.match(rf'^(\s+){re.escape(key)}:(\s*)([^#]*?)(\s*)(#.*)?$', lines[i])
        if match:
            indent, gap, _old, _space, old_comment = match.groups()
            line = f'{indent}{key}:{gap or " "}{new_value}'
            if comment:
                line += f'  # {comment}'
            elif old_comment:  # the comment stays in its column where it can
                line = line.ljust(len(lines[i]) - len(old_comment) - 1) + ' ' + old_comment
            # an old value in block style (a list or mapping on the lines below) goes too
            below = i + 1
            while below < end and _continues(lines[below], len(indent)):
                below += 1
            while below > i + 1 and not lines[below - 1].strip():  # keep blank lines after it
                below -= 1
            lines[i:below] = [line]
            return '\n'.join(lines) + '\n'
    indent = next((re.match(r'^(\s+)', lines[i]).group(1) for i in range(start + 1, end)
                   if lines[i].strip() and not lines[i].lstrip().startswith('#')), '  ')
    lines.insert(start + 1, f'{indent}{key}: {new_value}' + (f'  # {comment}' if comment else ''))
    return '\n'.join(lines) + '\n'


def _continues(line: str, key_indent: int) -> bool:
    """`line` belongs to the block-style value of a key indented `key_indent`."""
    if not line.strip():
        return True
    indent = len(line) - len(line.lstrip())
    return indent > key_indent or (indent == key_indent and line.lstrip().startswith('- '))


def set_values(path, values: dict, comment: Optional[str] = None) -> Path:
    """Set {'section.key': value, ...} in the YAML file `path` (created when missing), check
    that the result parses to those values, and write it atomically."""
    path = Path(path)
    text = path.read_text() if path.exists() else ''
    for dotted, value in values.items():
        section, key = dotted.split('.')
        text = set_value(text, section, key, value, comment)
    parsed = yaml.safe_load(text) or {}
    for dotted, value in values.items():
        section, key = dotted.split('.')
        got = (parsed.get(section) or {}).get(key)
        if got != yaml.safe_load(flow(value)):
            raise ValueError(f'{path}: writing {dotted} = {value!r} read back {got!r}')
    return write_text_atomic(path, text)


def node_sections(path, node: str) -> Iterator[dict]:
    """The `ros__parameters` of every section for `node` in a ROS 2 parameters file (keys
    `/**/node`, `node`, `/node` or `ns/node`), in file order."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    for name, section in data.items():
        if str(name).rstrip('/').split('/')[-1] == node and isinstance(section, dict):
            yield dict(section.get('ros__parameters') or {})


def node_parameters(path, node: str) -> dict:
    """The `ros__parameters` of `node`'s first section in a ROS 2 parameters file, {} when the
    file has none."""
    return next(node_sections(path, node), {})
